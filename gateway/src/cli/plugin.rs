//! `kite plugin ...`: keys and signatures for plug-in files, and running a
//! plug-in against recorded readings without a gateway.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use kite_gateway::config::parse_duration;
use kite_gateway::uplink::wire;
use kite_plugins::bindings::kite::plugin::types::{Reading, Value};
use kite_plugins::sandbox::{Limits, Sandbox};
use kite_plugins::signing;
use kite_plugins::{start_instance, PluginSpec, Trust};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Create a signing key pair: PREFIX.key (secret, mode 0600) and PREFIX.pub.
    Keygen { prefix: PathBuf },
    /// Sign a plug-in: writes FILE.sig beside it.
    Sign {
        file: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
    /// Check a plug-in's signature against public keys; exit 1 if it does not verify.
    Verify {
        file: PathBuf,
        /// Trusted public key files (PREFIX.pub); repeat for several.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
    },
    /// Compile a plug-in ahead of time for a gateway's target; sign the result
    /// (precompiled plug-ins load only with a trusted signature).
    Compile {
        file: PathBuf,
        /// pulley32 (32-bit ARM gateways), pulley64, or a target triple such as aarch64-unknown-linux-gnu.
        #[arg(long)]
        target: String,
        /// Default: FILE with the extension .cwasm.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a plug-in on readings from a JSON-lines file and print what it produces.
    Test {
        file: PathBuf,
        /// One reading per line: {"device", "point", "value", "ts", "unit", "error"}.
        #[arg(long)]
        input: PathBuf,
        /// The plug-in's config, as JSON.
        #[arg(long, default_value = "{}")]
        config: String,
        /// Readings per batch.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        #[arg(long, default_value = "5ms", value_parser = parse_duration)]
        time_limit: Duration,
    },
}

pub fn run(command: PluginCommand) -> ExitCode {
    super::exit_code(plugin(command))
}

fn plugin(command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::Keygen { prefix } => {
            let (secret, public) = signing::keygen(&prefix)?;
            println!(
                "secret key: {} (keep it off the gateways)",
                secret.display()
            );
            println!(
                "public key: {} (list it in plugin_trust.trusted_keys)",
                public.display()
            );
        }
        PluginCommand::Sign { file, key } => {
            let signature = signing::sign(&file, &key)?;
            println!("signed: {}", signature.display());
        }
        PluginCommand::Verify { file, keys } => {
            let trusted: Vec<_> = keys
                .iter()
                .map(|k| signing::read_public_key(k))
                .collect::<Result<_, _>>()?;
            let bytes = std::fs::read(&file).with_context(|| file.display().to_string())?;
            match signing::verify(&file, &bytes, &trusted, true)? {
                signing::Verified::By(i) => {
                    println!("{}: signed by {}", file.display(), keys[i].display())
                }
                signing::Verified::Unchecked => bail!("{}: not verified", file.display()),
            }
        }
        PluginCommand::Compile { file, target, out } => {
            let bytes = std::fs::read(&file).with_context(|| file.display().to_string())?;
            let compiled = kite_plugins::sandbox::precompile(&bytes, &target)?;
            let out = out.unwrap_or_else(|| file.with_extension("cwasm"));
            std::fs::write(&out, compiled).with_context(|| out.display().to_string())?;
            println!(
                "compiled for {target}: {} (sign it before shipping)",
                out.display()
            );
        }
        PluginCommand::Test {
            file,
            input,
            config,
            batch,
            time_limit,
        } => test(&file, &input, &config, batch.max(1), time_limit)?,
    }
    Ok(())
}

fn test(
    file: &Path,
    input: &Path,
    config: &str,
    batch_size: usize,
    time: Duration,
) -> anyhow::Result<()> {
    serde_json::from_str::<serde_json::Value>(config).context("--config must be JSON")?;
    let sandbox = Sandbox::new(None)?;
    let component = kite_plugins::load(&sandbox, file, &Trust::default())?;
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .to_string();
    let spec = PluginSpec {
        name: name.clone(),
        wasm: file.to_path_buf(),
        inputs: Vec::new(),
        limits: Limits {
            time,
            ..Limits::default()
        },
        config_json: config.to_string(),
        state_path: PathBuf::from(":memory:"),
        trust: Trust::default(),
        max_message_bytes: kite_plugins::DEFAULT_MAX_MESSAGE_BYTES,
    };
    let start = || start_instance(&sandbox, &component, &spec);
    let mut instance = start()?;
    let lines = std::io::BufReader::new(
        std::fs::File::open(input).with_context(|| input.display().to_string())?,
    );
    let mut readings = Vec::new();
    for (number, line) in lines.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        readings.push(
            parse_reading(&line).with_context(|| format!("{}:{}", input.display(), number + 1))?,
        );
    }
    let mut out = std::io::stdout().lock();
    let mut failures = 0;
    for batch in readings.chunks(batch_size) {
        let result = instance
            .process(batch)
            .and_then(|output| kite_plugins::runner::convert(&spec, output, batch));
        match result {
            Ok(output) => {
                for sample in &output.samples {
                    let points = serde_json::value::RawValue::from_string(sample.points_json())?;
                    let telemetry = wire::Telemetry {
                        historical: false,
                        seq: None,
                        ts: sample.ts_ms,
                        device: &sample.device,
                        points: &points,
                    };
                    writeln!(out, "{}", serde_json::to_string(&telemetry)?)?;
                }
                for event in &output.events {
                    let event = wire::Event::from(event);
                    writeln!(out, "{}", serde_json::json!({ "event": event }))?;
                }
            }
            Err(e) => {
                failures += 1;
                eprintln!("batch of {} readings failed: {e}", batch.len());
                instance = start()?;
            }
        }
    }
    if failures > 0 {
        bail!("{failures} batches failed");
    }
    Ok(())
}

fn parse_reading(line: &str) -> anyhow::Result<Reading> {
    let json: serde_json::Value = serde_json::from_str(line)?;
    let text = |key: &str| json.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let value = match json.get("value") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Bool(b)) => Some(Value::Boolean(*b)),
        Some(serde_json::Value::String(s)) => Some(Value::Text(s.clone())),
        Some(serde_json::Value::Number(n)) => Some(if let Some(i) = n.as_i64() {
            Value::Integer(i)
        } else if let Some(u) = n.as_u64() {
            Value::Unsigned(u)
        } else {
            Value::Float(n.as_f64().unwrap_or(f64::NAN))
        }),
        Some(other) => bail!("value must be a number, bool, string or null, not {other}"),
    };
    Ok(Reading {
        device: text("device").context("missing \"device\"")?,
        point: text("point").context("missing \"point\"")?,
        value,
        error: text("error"),
        timestamp: json
            .get("ts")
            .and_then(|v| v.as_i64())
            .unwrap_or_else(kite_core::now_ms),
        unit: text("unit"),
    })
}
