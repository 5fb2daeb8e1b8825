//! systemd integration: `READY=1` once the pipeline is up, `RELOADING=1`
//! while a reload is applied, `STOPPING=1` at shutdown once the buffer is flushed, and the watchdog fed only while the pipeline is
//! alive (see [`crate::ops::vitals`]), so that a gateway that runs but stopped
//! forwarding is restarted rather than kept alive by a timer. Without
//! `NOTIFY_SOCKET` (not started by systemd) every call does nothing.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use crate::ops::vitals::Vitals;

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        debug!(error = %e, "systemd notification not sent");
    }
}

pub fn ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("running")]);
}

/// A reload starts; `ready` again when it is done.
pub fn reloading() {
    let mut states = vec![
        NotifyState::Reloading,
        NotifyState::Status("reloading the config"),
    ];
    // systemd pairs RELOADING=1 with the time it was sent.
    states.extend(NotifyState::monotonic_usec_now().ok());
    notify(&states);
}

pub fn status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

/// Shutdown, once the buffer is flushed: `rows` stay for the next start.
pub fn stopping(rows: Option<u64>) {
    let status = match rows {
        Some(0) => "stopping: buffer delivered".to_string(),
        Some(rows) => format!("stopping: {rows} rows kept for the next start"),
        None => "stopping".to_string(),
    };
    notify(&[NotifyState::Stopping, NotifyState::Status(&status)]);
}

/// `WatchdogSec`, when systemd set a watchdog for this process.
pub fn watchdog_period() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec))
}

/// Checks the pipeline twice per watchdog period and pings systemd only
/// when it is alive. Returns at once when systemd set no watchdog.
pub async fn watchdog(vitals: Arc<Vitals>, stop: CancellationToken) {
    let Some(period) = watchdog_period() else {
        return;
    };
    let period = period / 2;
    info!(every = ?period, "feeding the systemd watchdog while data flows");
    let mut ticker = tokio::time::interval(period);
    let mut was_live = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let verdict = vitals.check().await;
        if verdict.live {
            notify(&[NotifyState::Watchdog]);
            if !was_live {
                info!("pipeline moving again; watchdog fed");
            }
        } else if was_live {
            error!(reasons = ?verdict.reasons, "pipeline stuck: the watchdog is no longer fed");
        }
        was_live = verdict.live;
    }
}
