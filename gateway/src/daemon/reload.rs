//! A reload (SIGHUP, `kite reload`, `POST /reload`) reads the config file
//! again and applies the difference to the running workload; the buffer and
//! the ingest task go on as they were, and a new uplink starts only when
//! its settings changed. A config with problems changes nothing.

use std::path::PathBuf;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::uplink_context;
use super::workload::Workload;
use crate::config::{self, Config};
use crate::control::{Applied, ReloadOutcome};
use crate::ops::systemd;
use crate::uplink::{Uplink, WriteOutcome};

/// What a reload may change while the gateway runs.
pub(super) struct Running {
    /// As applied: settings that wait for a restart keep their running values.
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub workload: Workload,
    pub uplink_task: JoinHandle<anyhow::Result<()>>,
    pub uplink_stop: CancellationToken,
    /// Where every uplink sends its write results.
    pub results: mpsc::Sender<WriteOutcome>,
}

impl Running {
    /// Reads the config file again and applies the difference. A config
    /// that does not load, or uplink settings that cannot be used, change
    /// nothing: the running config stays.
    pub async fn reload(&mut self) -> ReloadOutcome {
        systemd::reloading();
        let outcome = self.try_reload().await;
        systemd::ready();
        match &outcome {
            Ok(applied) if applied.changes.is_empty() && applied.restart_needed.is_empty() => {
                info!("config reloaded: nothing changed")
            }
            Ok(applied) => info!(
                changes = ?applied.changes,
                restart_needed = ?applied.restart_needed,
                "config reloaded"
            ),
            Err(e) => error!("new config REFUSED; the running one stays:\n{e}"),
        }
        outcome
    }

    async fn try_reload(&mut self) -> ReloadOutcome {
        let Some(path) = &self.config_path else {
            return Err("this gateway was not started from a config file".into());
        };
        let mut new = config::load(path).map_err(|e| e.to_string())?;
        let old = &self.config;
        let uplink = (new.mqtt != old.mqtt).then(|| {
            Uplink::new(
                new.mqtt.clone(),
                &old.gateway.id,
                uplink_context(
                    &self.workload.vitals,
                    &self.workload,
                    self.results.clone(),
                    &old.gateway.data_dir,
                ),
            )
        });
        for warning in &new.warnings {
            tracing::warn!("{warning}");
        }
        let mut applied = Applied::default();
        // These are fixed for the life of the process: the buffer's file
        // and limits, the topics' identity, the API's socket.
        if new.gateway != old.gateway {
            applied.restart_needed.push("[gateway]".into());
            new.gateway = old.gateway.clone();
        }
        if new.buffer != old.buffer {
            applied.restart_needed.push("[buffer]".into());
            new.buffer = old.buffer;
        }
        if new.http != old.http {
            applied.restart_needed.push("[http]".into());
            new.http = old.http.clone();
        }
        applied.changes.extend(self.workload.apply(&new).await);
        if let Some(uplink) = uplink {
            // Rows the old connection did not get acknowledged stay in the
            // buffer and go out again on the new one.
            self.uplink_stop.cancel();
            if let Ok(Err(e)) = (&mut self.uplink_task).await {
                error!(error = %e, "uplink stopped with an error");
            }
            self.uplink_stop = CancellationToken::new();
            self.workload
                .vitals
                .certificates
                .set(new.mqtt.certificates());
            self.uplink_task = tokio::spawn(uplink.run(self.uplink_stop.clone()));
            applied.changes.push(format!(
                "uplink: reconnecting to {}:{}",
                new.mqtt.host, new.mqtt.port
            ));
        }
        self.config = new;
        Ok(applied)
    }
}
