//! What an operator needs to see about a device or a bus: counters and the
//! last error, shared between the task that polls and the status reporter.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU16, AtomicU64, Ordering};
use std::sync::Mutex;

/// Longest `last_error` kept, in bytes.
pub const MAX_ERROR_BYTES: usize = 256;

/// Cuts `text` to at most `max` bytes, on a character boundary.
pub fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

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
    /// Its link is down: the connection, port or line it is reached through
    /// failed or cannot be opened, and is being reopened.
    pub offline: AtomicBool,
    /// Not started: its configuration could not be put to work (a codec
    /// plug-in refused, say); `last_error` says why.
    pub refused: AtomicBool,
    /// Not heard from for longer than it should be (a radio sensor that
    /// sends on its own); its last values went out marked stale.
    pub stale: AtomicBool,
    /// When it last answered or sent something that could be read, in
    /// milliseconds since the Unix epoch; 0: never.
    pub last_seen_ms: AtomicI64,
    /// The link quality of its last message (a Zigbee LQI) plus one; 0: none.
    linkquality: AtomicU16,
    last_error: Mutex<Option<String>>,
}

impl DeviceHealth {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A successful read (a reply, a decoded frame or advertisement) at
    /// `ts_ms`.
    pub fn record_read(&self, ts_ms: i64) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.last_seen_ms.store(ts_ms, Ordering::Relaxed);
    }

    pub fn set_linkquality(&self, lqi: u8) {
        self.linkquality
            .store(u16::from(lqi) + 1, Ordering::Relaxed);
    }

    pub fn linkquality(&self) -> Option<u8> {
        let stored = self.linkquality.load(Ordering::Relaxed);
        stored.checked_sub(1).map(|lqi| lqi as u8)
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
        } else if self.offline.load(Ordering::Relaxed) {
            "offline"
        } else if self.stale.load(Ordering::Relaxed) {
            "stale"
        } else if self.quarantined.load(Ordering::Relaxed) {
            "quarantined"
        } else {
            "polling"
        }
    }

    /// Keeps the error, cut to [`MAX_ERROR_BYTES`]: its text may come from
    /// a device or a codec.
    pub fn set_last_error(&self, error: impl Into<String>) {
        let mut error = error.into();
        truncate(&mut error, MAX_ERROR_BYTES);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_says_the_worst_that_is_true() {
        let health = DeviceHealth::default();
        assert_eq!(health.state(), "polling");
        health.quarantined.store(true, Ordering::Relaxed);
        assert_eq!(health.state(), "quarantined");
        health.stale.store(true, Ordering::Relaxed);
        assert_eq!(health.state(), "stale");
        health.offline.store(true, Ordering::Relaxed);
        assert_eq!(health.state(), "offline");
        health.refused.store(true, Ordering::Relaxed);
        assert_eq!(health.state(), "refused");
    }

    #[test]
    fn last_error_is_bounded_on_a_character_boundary() {
        let health = DeviceHealth::default();
        health.set_last_error("é".repeat(MAX_ERROR_BYTES));
        let kept = health.last_error().unwrap();
        assert_eq!(kept.len(), MAX_ERROR_BYTES);
        health.set_last_error(format!("x{}", "é".repeat(MAX_ERROR_BYTES)));
        assert_eq!(health.last_error().unwrap().len(), MAX_ERROR_BYTES - 1);
    }
}
