//! End-to-end tests of the `kite` binary against real peers: Mosquitto
//! brokers and pymodbus devices started on free loopback ports, serial port
//! pairs from socat, and headless Chromium rendering the status page.
//! Grouped like the gateway's own rooms.

mod architecture;
mod cli;
mod daemon;
mod field;
mod ops;
#[path = "../../plugins/host/tests/common/mod.rs"]
mod plugin_builds;
mod uplink;

mod support {
    //! The peers (`kite-test-support`, shared with the benchmarks), and the
    //! binary under test.
    pub use kite_test_support::*;

    pub fn kite_bin() -> &'static std::path::Path {
        std::path::Path::new(env!("CARGO_BIN_EXE_kite"))
    }
}
