//! `kite check`: loads a config exactly as `kite run` does (parsed, and the
//! files it names resolved), and says ok or prints every problem.

use std::path::Path;
use std::process::ExitCode;

use kite_gateway::config;

pub fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(checked) => {
            for warning in &checked.warnings {
                eprintln!("{}: warning: {warning}", path.display());
            }
            println!(
                "{}: ok ({} devices)",
                path.display(),
                checked.device_count()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
