//! `kite`: the gateway daemon and its command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use std::sync::Arc;

use kite_gateway::http::LogControl;
use kite_gateway::{config, demo, pipeline};

mod buffer_cmd;
mod plugin_cmd;
mod status_cmd;

#[derive(Parser)]
#[command(
    name = "kite",
    version,
    about = "Edge gateway: field buses to SQLite store-and-forward to MQTT"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGTERM or SIGINT.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0, or print every problem and exit 1.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show a running gateway's health, buffer, uplink, devices and plug-ins
    /// (through its local HTTP API).
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a running gateway's log filter, like "debug" or "info,kite_modbus=trace".
    LogLevel {
        #[arg(long, short)]
        config: PathBuf,
        filter: String,
    },
    /// Make a running gateway read its config file again and apply the
    /// difference (as SIGHUP does); a config with problems is refused and the
    /// running one stays.
    Reload {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The store-and-forward buffer: inspect, verify, export its rows, repair a damaged one.
    Buffer {
        #[command(subcommand)]
        command: buffer_cmd::BufferCommand,
    },
    /// Plug-ins: signing keys, signatures, and trying one out on recorded readings.
    Plugin {
        #[command(subcommand)]
        command: plugin_cmd::PluginCommand,
    },
    /// Run the whole pipeline on this machine alone: simulated Modbus devices,
    /// an embedded MQTT broker, and the telemetry printed as it arrives.
    Demo {
        /// Port of the embedded broker (on 127.0.0.1).
        #[arg(long, default_value_t = 1883)]
        mqtt_port: u16,
        /// Port of the local HTTP API and status page (on 127.0.0.1).
        #[arg(long, default_value_t = 9870)]
        http_port: u16,
        /// Where the buffer lives; a temporary directory when not given.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Stop after this long (like "30s"); runs until Ctrl-C when not given.
        #[arg(long, value_parser = config::parse_duration)]
        duration: Option<Duration>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = init_logging();
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(checked) => {
                for warning in &checked.warnings {
                    eprintln!("{}: warning: {warning}", config.display());
                }
                println!(
                    "{}: ok ({} devices)",
                    config.display(),
                    checked.device_count()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let checked = match config::load(&config) {
                Ok(checked) => checked,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            report(runtime().block_on(pipeline::run(
                checked,
                Some(config),
                stop_signal(),
                Some(log),
            )))
        }
        Command::Status { config, json } => {
            exit_code(runtime().block_on(status_cmd::status(&config, json)))
        }
        Command::LogLevel { config, filter } => {
            exit_code(runtime().block_on(status_cmd::log_level(&config, &filter)))
        }
        Command::Reload { config } => exit_code(runtime().block_on(status_cmd::reload(&config))),
        Command::Buffer { command } => {
            buffer_cmd::run(command).unwrap_or_else(|e| exit_code(Err(e)))
        }
        Command::Plugin { command } => exit_code(plugin_cmd::run(command)),
        Command::Demo {
            mqtt_port,
            http_port,
            data_dir,
            duration,
        } => report(runtime().block_on(demo::run(
            demo::Ports {
                mqtt: mqtt_port,
                http: http_port,
            },
            data_dir,
            duration,
            stop_signal(),
        ))),
    }
}

/// rumqttd, the demo's embedded broker, logs clean disconnects of its
/// clients as errors; what matters of it shows in Kite's own uplink log.
const DEFAULT_LOG: &str = "info,rumqttd=off";

/// Logs go to the journal when stderr is the journal (started by systemd,
/// with levels as priorities and fields kept), to stderr otherwise. The
/// filter (`KITE_LOG`, then `/log-level` at run time) can be changed later.
fn init_logging() -> LogControl {
    use tracing_subscriber::prelude::*;
    let filter =
        EnvFilter::try_from_env("KITE_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let journald = stderr_is_journal()
        .then(|| tracing_journald::layer().ok())
        .flatten();
    let stderr = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .init();
    Arc::new(move |text: &str| {
        let filter = EnvFilter::try_new(text).map_err(|e| format!("{text:?}: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

/// systemd sets `JOURNAL_STREAM` to the device and inode of the journal
/// stream it connected; a child that inherited the variable with another
/// stderr must not log to the journal.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", meta.dev(), meta.ino())
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
