//! Is the pipeline alive, and is it ready? One answer, for systemd's
//! watchdog and for `/healthz`.
//!
//! Alive means data can move end to end, judged by progress, not by a timer
//! that runs whatever happens: the buffer thread answers; the ingest task is
//! not stuck in a commit; the uplink either delivers (or has nothing to
//! deliver) or is honestly down, trying to reconnect, while the buffer
//! keeps accepting. A gateway that runs but stopped forwarding fails this,
//! so systemd restarts it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kite_core::{BusHealth, DeviceHealth};
use kite_plugins::PluginCounters;
use serde::Serialize;
use serde_json::json;

use crate::history::History;
use crate::store::{BufferHandle, Stats};
use crate::uplink::UplinkCounters;

/// How long a stage may make no progress while it has work before the
/// gateway counts as stuck, unless systemd's watchdog period says otherwise.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);
/// How long the buffer thread may take to answer.
const BUFFER_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Since when commits have been failing (ms since the epoch), 0 when the last one worked.
    pub failing_since_ms: AtomicI64,
    /// When the commit in progress started (ms since the epoch), 0 when none is.
    pub storing_since_ms: AtomicI64,
}

impl IngestCounters {
    /// Everything read or produced and never committed.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed) + self.unsent.load(Ordering::Relaxed)
    }
}

/// A value a reload replaces as a whole; readers keep the one they took.
#[derive(Debug, Default)]
pub struct Current<T>(RwLock<Arc<T>>);

impl<T> Current<T> {
    pub fn new(value: T) -> Self {
        Self(RwLock::new(Arc::new(value)))
    }

    pub fn get(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, value: T) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
    }
}

/// Each plug-in's name and counters, for the status message.
pub type PluginStatus = Vec<(String, Arc<PluginCounters>)>;

/// The buses' and devices' health, for the status message.
#[derive(Debug, Default)]
pub struct FieldHealth {
    pub buses: Vec<(String, Arc<BusHealth>)>,
    pub devices: Vec<(String, Arc<DeviceHealth>)>,
}

impl FieldHealth {
    pub fn to_json(&self) -> (serde_json::Value, serde_json::Value) {
        let buses = self
            .buses
            .iter()
            .map(|(name, h)| (name.clone(), h.to_json()))
            .collect();
        let devices = self
            .devices
            .iter()
            .map(|(name, h)| (name.clone(), h.to_json()))
            .collect();
        (
            serde_json::Value::Object(buses),
            serde_json::Value::Object(devices),
        )
    }
}

/// The pipeline's state, as the checks, the status message and the
/// metrics see it.
pub struct Vitals {
    pub buffer: BufferHandle,
    pub ingest: Arc<IngestCounters>,
    pub uplink: Arc<UplinkCounters>,
    /// Replaced when a reload starts or stops links or plug-ins.
    pub field: Current<FieldHealth>,
    pub plugins: Current<PluginStatus>,
    /// Recent readings and buffer depth, for the status page.
    pub history: Arc<History>,
    /// Set once every task is started.
    pub started: AtomicBool,
    /// The uplink may stand still this long; a commit, a quarter of it.
    stall_limit: Duration,
    seen: Mutex<Seen>,
}

/// What the last check saw, to tell progress from standing still.
struct Seen {
    acknowledged: u64,
    attempts: u64,
    uplink_progress: Instant,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub live: bool,
    pub ready: bool,
    /// Why not, when either is false.
    pub reasons: Vec<String>,
    #[serde(skip)]
    pub buffer: Option<Stats>,
}

impl Vitals {
    pub fn new(
        buffer: BufferHandle,
        ingest: Arc<IngestCounters>,
        uplink: Arc<UplinkCounters>,
    ) -> Self {
        Self {
            buffer,
            ingest,
            uplink,
            field: Current::default(),
            plugins: Current::default(),
            history: Arc::default(),
            started: AtomicBool::new(false),
            // Twice the watchdog period: stuck is noticed in time for
            // systemd to act on the next period.
            stall_limit: crate::systemd::watchdog_period().map_or(STALL_LIMIT, |period| period * 2),
            seen: Mutex::new(Seen {
                acknowledged: 0,
                attempts: 0,
                uplink_progress: Instant::now(),
            }),
        }
    }

    /// The status message's payload (README.md, "What goes on the wire").
    pub fn status_json(&self, stats: &Stats) -> serde_json::Value {
        let plugins: serde_json::Map<String, serde_json::Value> = self
            .plugins
            .get()
            .iter()
            .map(|(name, counters)| (name.clone(), counters.to_json()))
            .collect();
        let (buses, devices) = self.field.get().to_json();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        json!({
            "buses": buses,
            "devices": devices,
            "plugins": plugins,
            "state": "online",
            "ts": kite_core::now_ms(),
            "version": env!("CARGO_PKG_VERSION"),
            "buffer": {
                "rows": stats.rows,
                "bytes": stats.bytes,
                "dropped": stats.dropped,
                "oldest_ts": stats.oldest_ts_ms,
                "lost": self.ingest.lost(),
                "set_aside": stats.set_aside,
                "too_large": load(&self.ingest.too_large),
                "commit_failures": load(&self.ingest.commit_failures),
            },
            "uplink": {
                "connected": self.uplink.connected.load(Ordering::Relaxed),
                "published": load(&self.uplink.published),
                "acknowledged": load(&self.uplink.acknowledged),
                "reconnects": load(&self.uplink.reconnects),
                "writes_rejected": load(&self.uplink.writes_rejected),
                "results_dropped": load(&self.uplink.results_dropped),
            },
            "history": {
                "dropped": self.history.dropped(),
            },
        })
    }

    pub async fn check(&self) -> Verdict {
        let mut reasons = Vec::new();
        let mut live = true;
        // Read before probing the buffer: a hung commit holds the probe up too.
        let storing_since = self.ingest.storing_since_ms.load(Ordering::Relaxed);
        let storing_for = (kite_core::now_ms() - storing_since).max(0) as u64;
        if storing_since != 0 && Duration::from_millis(storing_for) > self.stall_limit / 4 {
            live = false;
            reasons.push(format!(
                "ingest: a commit has been running for {storing_for} ms"
            ));
        }
        let probe_timeout = BUFFER_PROBE_TIMEOUT.min(self.stall_limit / 4);
        let buffer = match tokio::time::timeout(probe_timeout, self.buffer.stats()).await {
            Ok(Ok(stats)) => Some(stats),
            Ok(Err(e)) => {
                live = false;
                reasons.push(format!("buffer: {e}"));
                None
            }
            Err(_) => {
                live = false;
                reasons.push(format!("buffer: no answer within {probe_timeout:?}"));
                None
            }
        };

        let connected = self.uplink.connected.load(Ordering::Relaxed);
        let acknowledged = self.uplink.acknowledged.load(Ordering::Relaxed);
        let attempts = self.uplink.attempts.load(Ordering::Relaxed);
        let backlog = buffer.as_ref().map_or(0, |stats| stats.rows);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let idle = connected && backlog == 0;
            // Progress: something delivered, nothing to deliver, or (while
            // down) a new attempt to reconnect.
            if idle
                || acknowledged != seen.acknowledged
                || (!connected && attempts != seen.attempts)
            {
                seen.uplink_progress = Instant::now();
            }
            seen.acknowledged = acknowledged;
            seen.attempts = attempts;
            let stalled = seen.uplink_progress.elapsed();
            if stalled > self.stall_limit {
                live = false;
                reasons.push(if connected {
                    format!(
                        "uplink: connected, {backlog} rows waiting, nothing acknowledged for {}s",
                        stalled.as_secs()
                    )
                } else {
                    format!(
                        "uplink: down and no attempt to reconnect for {}s",
                        stalled.as_secs()
                    )
                });
            }
        }

        // A failing commit that is being retried is progress, like an
        // uplink that is down and reconnecting: not stuck, but not ready.
        let failing_since = self.ingest.failing_since_ms.load(Ordering::Relaxed);
        let committing = failing_since == 0;
        if !committing {
            let for_ms = (kite_core::now_ms() - failing_since).max(0);
            reasons.push(format!(
                "buffer: commits failing for {for_ms} ms, retrying; samples wait in memory"
            ));
        }
        let started = self.started.load(Ordering::Relaxed);
        if !started {
            reasons.push("starting".into());
        }
        if !connected {
            reasons.push("uplink: not connected to the broker (buffering)".into());
        }
        Verdict {
            live,
            ready: live && started && connected && committing,
            reasons,
            buffer,
        }
    }
}
