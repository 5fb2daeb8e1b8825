//! Where logs go: the journal when stderr is the journal (started by
//! systemd, with levels as priorities and fields kept), stderr otherwise.
//! The filter (`KITE_LOG`, then `/log-level` at run time) can be changed
//! while the gateway runs.

use std::sync::Arc;

use kite_gateway::control::LogControl;
use tracing_subscriber::EnvFilter;

/// rumqttd, the demo's embedded broker, logs clean disconnects of its
/// clients as errors; what matters of it shows in Kite's own uplink log.
const DEFAULT_LOG: &str = "info,rumqttd=off";

pub fn init() -> LogControl {
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
