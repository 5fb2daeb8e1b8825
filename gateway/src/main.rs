//! `kite`: the gateway daemon and its command line. This file parses the
//! command line and hands each verb to its file in `cli/`.

use std::path::PathBuf;
use std::process::ExitCode;
#[cfg(feature = "demo")]
use std::time::Duration;

use clap::{Parser, Subcommand};

mod cli;

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
        command: cli::buffer::BufferCommand,
    },
    /// Plug-ins: signing keys, signatures, and trying one out on recorded readings.
    Plugin {
        #[command(subcommand)]
        command: cli::plugin::PluginCommand,
    },
    /// Run the whole pipeline on this machine alone: simulated Modbus devices,
    /// an embedded MQTT broker, and the telemetry printed as it arrives.
    #[cfg(feature = "demo")]
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
        #[arg(long, value_parser = kite_gateway::config::parse_duration)]
        duration: Option<Duration>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = cli::logging::init();
    match cli.command {
        Command::Run { config } => cli::run::run(&config, log),
        Command::Check { config } => cli::check::check(&config),
        Command::Status { config, json } => cli::status::status(&config, json),
        Command::LogLevel { config, filter } => cli::status::log_level(&config, &filter),
        Command::Reload { config } => cli::status::reload(&config),
        Command::Buffer { command } => cli::buffer::run(command),
        Command::Plugin { command } => cli::plugin::run(command),
        #[cfg(feature = "demo")]
        Command::Demo {
            mqtt_port,
            http_port,
            data_dir,
            duration,
        } => cli::demo::demo(
            cli::demo::Ports {
                mqtt: mqtt_port,
                http: http_port,
            },
            data_dir,
            duration,
        ),
    }
}
