//! Generates the Sparkplug B payload types from the schema kept beside them
//! (`src/uplink/sparkplug/sparkplug_b.proto`), with a protobuf compiler
//! written in Rust, so that building Kite needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schema = "src/uplink/sparkplug/sparkplug_b.proto";
    println!("cargo:rerun-if-changed={schema}");
    let descriptors = protox::compile([schema], ["src/uplink/sparkplug"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
