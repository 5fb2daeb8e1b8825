//! `kite`: the gateway daemon and its command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use kite_gateway::{config, demo, pipeline};

mod plugin_cmd;

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
    let filter =
        EnvFilter::try_from_env("KITE_LOG").unwrap_or_else(|_| EnvFilter::new("info,rumqttd=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
            report(runtime().block_on(pipeline::run(checked, stop_signal())))
        }
        Command::Plugin { command } => match plugin_cmd::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Demo {
            mqtt_port,
            data_dir,
            duration,
        } => report(runtime().block_on(demo::run(mqtt_port, data_dir, duration, stop_signal()))),
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
