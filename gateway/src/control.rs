//! What the local API asks of the running daemon: reloads and their
//! outcomes, and the log filter. A leaf both import, so that neither
//! imports the other.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::oneshot;

/// What a reload did: one line per link or plug-in started, stopped or
/// restarted, or uplink reconnected; the settings that wait for a restart.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Applied {
    pub changes: Vec<String>,
    pub restart_needed: Vec<String>,
}

/// The answer to a reload: what was applied, or why the new config was
/// refused (the same text `kite check` prints).
pub type ReloadOutcome = Result<Applied, String>;

/// A reload asked for through the HTTP API; the outcome goes back on the sender.
pub type ReloadRequest = oneshot::Sender<ReloadOutcome>;

/// Changes the log filter (`info,kite_modbus=debug`); an error says why not.
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
