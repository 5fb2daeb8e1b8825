//! What an operator needs to see about a device or a bus: counters and the
//! last error, shared between the task that polls and the status reporter.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value as Json};

/// One device's health.
#[derive(Debug, Default)]
pub struct DeviceHealth {
    /// Successful transactions (Modbus requests, decoded frames).
    pub reads: AtomicU64,
    pub timeouts: AtomicU64,
    /// Exceptions, garbage, frames that did not decode.
    pub errors: AtomicU64,
    /// Bytes dropped by framing (noise, overlong or partial frames).
    pub discarded_bytes: AtomicU64,
    /// Polls (or queries) timed, and their total duration: the mean latency.
    pub polls: AtomicU64,
    pub poll_micros: AtomicU64,
    /// Not answering: polled only by occasional probes until it answers again.
    pub quarantined: AtomicBool,
    /// Not started: its configuration could not be put to work (a codec
    /// plug-in refused, say); `last_error` says why.
    pub refused: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl DeviceHealth {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_poll(&self, took: std::time::Duration) {
        self.polls.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.poll_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn state(&self) -> &'static str {
        if self.refused.load(Ordering::Relaxed) {
            "refused"
        } else if self.quarantined.load(Ordering::Relaxed) {
            "quarantined"
        } else {
            "polling"
        }
    }

    pub fn set_last_error(&self, error: impl Into<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.into());
    }

    pub fn to_json(&self) -> Json {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "state": self.state(),
            "reads": load(&self.reads),
            "timeouts": load(&self.timeouts),
            "errors": load(&self.errors),
            "discarded_bytes": load(&self.discarded_bytes),
            "last_error": self.last_error(),
        })
    }
}

/// One bus's (or link's) health.
#[derive(Debug, Default)]
pub struct BusHealth {
    /// Polls that could not start on time because the bus was busy with
    /// others: the configured intervals ask more than the line can carry.
    pub missed_polls: AtomicU64,
    /// Times the port or connection failed or could not be opened.
    pub link_failures: AtomicU64,
    pub link_up: AtomicBool,
}

impl BusHealth {
    pub fn to_json(&self) -> Json {
        json!({
            "state": if self.link_up.load(Ordering::Relaxed) { "open" } else { "closed" },
            "missed_polls": self.missed_polls.load(Ordering::Relaxed),
            "link_failures": self.link_failures.load(Ordering::Relaxed),
        })
    }
}
