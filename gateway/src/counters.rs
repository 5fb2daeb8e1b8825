//! What the pipeline's stages count, read by the status message, `/metrics`
//! and the health check: a leaf that the uplink, the daemon and the
//! operations room all import, and that imports none of them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// What the uplink reports.
#[derive(Debug, Default)]
pub struct UplinkCounters {
    pub published: AtomicU64,
    pub acknowledged: AtomicU64,
    pub reconnects: AtomicU64,
    pub writes_rejected: AtomicU64,
    /// Write results that could not be handed to the buffer (it was not
    /// keeping up with a flood of requests); logged.
    pub results_dropped: AtomicU64,
    /// Connections tried, successful or not: progress while the broker is away.
    pub attempts: AtomicU64,
    /// Between the broker's CONNACK and the loss of the connection.
    pub connected: AtomicBool,
    /// With `replay = "live_first"`: backlog rows still to replay, those
    /// replayed, and how many a second over the last status interval.
    pub backlog: AtomicU64,
    pub replayed: AtomicU64,
    pub replay_rate: AtomicU64,
}

/// What the ingest task reports.
#[derive(Debug, Default)]
pub struct IngestCounters {
    /// Samples, plug-in outputs and write results committed to the buffer.
    pub committed: AtomicU64,
    /// Messages that were read or produced but never committed: the buffer
    /// kept failing until the gateway had to stop. Logged, and counted here.
    pub lost: AtomicU64,
    /// Samples pollers read but could not hand over before they stopped
    /// (shared with their [`kite_core::SampleSink`]s).
    pub unsent: Arc<AtomicU64>,
    /// Point values too large for any message, sent as bad readings instead.
    pub too_large: AtomicU64,
    /// Commits that failed (the database locked by another process, a full
    /// disk, an I/O error) and were tried again.
    pub commit_failures: AtomicU64,
    /// Since when commits have been failing; unset once one works.
    pub failing_since: Moment,
    /// When the commit in progress started; unset when none is.
    pub storing_since: Moment,
}

impl IngestCounters {
    /// Everything read or produced and never committed.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed) + self.unsent.load(Ordering::Relaxed)
    }
}

/// A moment of the monotonic clock that one task sets and others read,
/// or none. Timed by the monotonic clock, so a change of the wall clock
/// cannot make a commit look stuck.
#[derive(Debug, Default)]
pub struct Moment(AtomicU64);

/// The origin of [`Moment`]s; 0 stands for none.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl Moment {
    pub fn set(&self, at: Instant) {
        let nanos = at.saturating_duration_since(origin()).as_nanos();
        self.0.store(
            u64::try_from(nanos).unwrap_or(u64::MAX).max(1),
            Ordering::Relaxed,
        );
    }

    /// Sets it to `at` unless it is set; true if it was not.
    pub fn set_if_unset(&self, at: Instant) -> bool {
        let nanos = u64::try_from(at.saturating_duration_since(origin()).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        self.0
            .compare_exchange(0, nanos, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Unsets it; what it was.
    pub fn take(&self) -> Option<Instant> {
        Self::at(self.0.swap(0, Ordering::Relaxed))
    }

    pub fn get(&self) -> Option<Instant> {
        Self::at(self.0.load(Ordering::Relaxed))
    }

    fn at(nanos: u64) -> Option<Instant> {
        (nanos != 0).then(|| origin() + std::time::Duration::from_nanos(nanos))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_moment_keeps_its_instant_to_the_nanosecond() {
        let moment = Moment::default();
        assert_eq!(moment.get(), None);
        let at = Instant::now() + Duration::from_millis(1500);
        moment.set(at);
        assert_eq!(moment.get(), Some(at));
        assert!(!moment.set_if_unset(at + Duration::from_secs(1)));
        assert_eq!(moment.take(), Some(at));
        assert_eq!(moment.get(), None);
        assert!(moment.set_if_unset(at));
        assert_eq!(moment.get(), Some(at));
    }
}
