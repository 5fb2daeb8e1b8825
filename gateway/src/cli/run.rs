//! `kite run`: the daemon, until SIGTERM or SIGINT.

use std::path::Path;
use std::process::ExitCode;

use kite_gateway::control::LogControl;
use kite_gateway::{config, daemon};

use super::{report, runtime, stop_signal};

pub fn run(path: &Path, log: LogControl) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    report(runtime().block_on(daemon::run(
        config,
        Some(path.to_path_buf()),
        stop_signal(),
        Some(log),
    )))
}
