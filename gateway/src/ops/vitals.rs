//! Is the pipeline alive, and is it ready? One answer, for systemd's
//! watchdog and for `/healthz`; and the gateway's status, for the status
//! message, `/status` and `/metrics`.
//!
//! Alive means data can move end to end, judged by progress, not by a timer
//! that runs whatever happens: the buffer thread answers; the ingest task is
//! not stuck in a commit; the uplink either delivers (or has nothing to
//! deliver) or is honestly down, trying to reconnect, while the buffer
//! keeps accepting. A gateway that runs but stopped forwarding fails this,
//! so systemd restarts it. The judgement itself ([`Judge`]) is pure: it is
//! fed what was observed and the instant it was.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kite_core::{BusHealth, DeviceHealth};
use kite_plugins::PluginCounters;
use serde::Serialize;

use crate::config::Certificate;
use crate::counters::{IngestCounters, UplinkCounters};
use crate::current::Current;
use crate::ops::history::History;
use crate::store::{BufferHandle, Stats};
use crate::uplink::wire::{
    BleReport, BufferReport, BusReport, CertificateReport, DeviceReport, HistoryReport,
    PluginReport, Status, UplinkReport, ZigbeeReport,
};
use crate::uplink::StatusSource;

/// How long a stage may make no progress while it has work before the
/// gateway counts as stuck, unless systemd's watchdog period says otherwise.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);
/// How long the buffer thread may take to answer.
const BUFFER_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Each plug-in's name and counters, in config order.
pub type PluginList = Vec<(String, Arc<PluginCounters>)>;

/// The buses' and devices' health, in config order.
#[derive(Debug, Default)]
pub struct FieldHealth {
    pub buses: Vec<(String, Arc<BusHealth>)>,
    pub devices: Vec<(String, Arc<DeviceHealth>)>,
    /// The BLE adapter, when BLE is configured.
    pub ble: Option<(String, Arc<kite_ble::BleHealth>)>,
    /// The Zigbee network, when configured.
    pub zigbee: Option<Arc<kite_zigbee::ZigbeeHealth>>,
}

/// The pipeline's state, as the checks, the status message and the
/// metrics see it.
pub struct Vitals {
    pub buffer: BufferHandle,
    pub ingest: Arc<IngestCounters>,
    pub uplink: Arc<UplinkCounters>,
    /// Replaced when a reload starts or stops links or plug-ins.
    pub field: Current<FieldHealth>,
    pub plugins: Current<PluginList>,
    /// Recent readings and buffer depth, for the status page.
    pub history: Arc<History>,
    /// The certificates of the uplink's TLS files, for their expiry;
    /// replaced with the uplink.
    pub certificates: Current<Vec<Certificate>>,
    /// Set once every task is started.
    pub started: AtomicBool,
    /// How long the buffer thread may take to answer a check.
    probe_timeout: Duration,
    judge: Mutex<Judge>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub live: bool,
    pub ready: bool,
    /// Why not, when either is false.
    pub reasons: Vec<String>,
    #[serde(skip)]
    pub buffer: Option<Stats>,
}

impl Vitals {
    /// `stall_limit`: how long the uplink may stand still with work to do
    /// (a commit, a quarter of it) before the gateway counts as stuck.
    pub fn new(
        buffer: BufferHandle,
        ingest: Arc<IngestCounters>,
        uplink: Arc<UplinkCounters>,
        stall_limit: Duration,
    ) -> Self {
        Self {
            buffer,
            ingest,
            uplink,
            field: Current::default(),
            plugins: Current::default(),
            history: Arc::default(),
            certificates: Current::default(),
            started: AtomicBool::new(false),
            probe_timeout: BUFFER_PROBE_TIMEOUT.min(stall_limit / 4),
            judge: Mutex::new(Judge::new(stall_limit, Instant::now())),
        }
    }

    pub async fn check(&self) -> Verdict {
        // Read before probing the buffer: a hung commit holds the probe up too.
        let storing_since = self.ingest.storing_since.get();
        let probe_timeout = self.probe_timeout;
        let buffer = match tokio::time::timeout(probe_timeout, self.buffer.stats()).await {
            Ok(Ok(stats)) => Ok(stats),
            Ok(Err(e)) => Err(format!("buffer: {e}")),
            Err(_) => Err(format!("buffer: no answer within {probe_timeout:?}")),
        };
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let observed = Observation {
            now: Instant::now(),
            started: self.started.load(Ordering::Relaxed),
            connected: self.uplink.connected.load(Ordering::Relaxed),
            acknowledged: load(&self.uplink.acknowledged),
            attempts: load(&self.uplink.attempts),
            buffer,
            storing_since,
            failing_since: self.ingest.failing_since.get(),
        };
        self.judge
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .judge(observed)
    }
}

impl StatusSource for Vitals {
    /// The status message (README.md, "What goes on the wire").
    fn status(&self, stats: &Stats) -> Status {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let field = self.field.get();
        let buses = field
            .buses
            .iter()
            .map(|(name, bus)| {
                let report = BusReport {
                    state: if bus.link_up.load(Ordering::Relaxed) {
                        "open"
                    } else {
                        "closed"
                    },
                    missed_polls: load(&bus.missed_polls),
                    link_failures: load(&bus.link_failures),
                };
                (name.clone(), report)
            })
            .collect();
        let devices = field
            .devices
            .iter()
            .map(|(name, device)| {
                let report = DeviceReport {
                    state: device.state(),
                    reads: load(&device.reads),
                    timeouts: load(&device.timeouts),
                    errors: load(&device.errors),
                    discarded_bytes: load(&device.discarded_bytes),
                    last_error: device.last_error(),
                    last_seen: Some(device.last_seen_ms.load(Ordering::Relaxed))
                        .filter(|ms| *ms > 0),
                    linkquality: device.linkquality(),
                };
                (name.clone(), report)
            })
            .collect();
        let plugins = self
            .plugins
            .get()
            .iter()
            .map(|(name, plugin)| {
                let report = PluginReport {
                    state: plugin.state().name(),
                    calls: load(&plugin.calls),
                    failures: load(&plugin.failures),
                    timeouts: load(&plugin.timeouts),
                    traps: load(&plugin.traps),
                    lost_batches: load(&plugin.lost_batches),
                    skipped_batches: load(&plugin.skipped_batches),
                    queued: load(&plugin.queued),
                    readings_in: load(&plugin.readings_in),
                    outputs: load(&plugin.outputs),
                    busy_ms: load(&plugin.busy_nanos) / 1_000_000,
                };
                (name.clone(), report)
            })
            .collect();
        let now_ms = kite_core::now_ms();
        Status {
            state: "online",
            ts: now_ms,
            version: env!("CARGO_PKG_VERSION"),
            buffer: BufferReport {
                rows: stats.rows,
                bytes: stats.bytes,
                dropped: stats.dropped,
                oldest_ts: stats.oldest_ts_ms,
                lost: self.ingest.lost(),
                set_aside: stats.set_aside,
                thinned: stats.thinned,
                keep_every: stats.keep_every,
                too_large: load(&self.ingest.too_large),
                commit_failures: load(&self.ingest.commit_failures),
            },
            uplink: UplinkReport {
                connected: self.uplink.connected.load(Ordering::Relaxed),
                published: load(&self.uplink.published),
                acknowledged: load(&self.uplink.acknowledged),
                reconnects: load(&self.uplink.reconnects),
                writes_rejected: load(&self.uplink.writes_rejected),
                results_dropped: load(&self.uplink.results_dropped),
                backlog: load(&self.uplink.backlog),
                replayed: load(&self.uplink.replayed),
                replay_rate: load(&self.uplink.replay_rate),
                certificates: self
                    .certificates
                    .get()
                    .iter()
                    .map(|certificate| CertificateReport {
                        file: certificate.file.key(),
                        subject: certificate.subject.clone(),
                        not_after: certificate.not_after_ms,
                        warning: certificate.warning(now_ms),
                    })
                    .collect(),
            },
            history: HistoryReport {
                dropped: self.history.dropped(),
            },
            ble: field.ble.as_ref().map(|(adapter, ble)| BleReport {
                adapter: adapter.clone(),
                state: ble.state(),
                restarts: load(&ble.restarts),
                advertisements: load(&ble.advertisements),
                decode_errors: load(&ble.decode_errors),
                discovered: load(&ble.discovered),
                dropped: load(&ble.dropped),
            }),
            zigbee: field.zigbee.as_ref().map(|zigbee| ZigbeeReport {
                state: zigbee.state(),
                channel: load(&zigbee.channel),
                pan_id: format!("{:#06x}", load(&zigbee.pan_id)),
                devices: load(&zigbee.devices),
                joined_since_start: load(&zigbee.joined_since_start),
                coordinator_resets: load(&zigbee.coordinator_resets),
                interviews_failed: load(&zigbee.interviews_failed),
                discarded_bytes: load(&zigbee.line.discarded_bytes),
                dropped: load(&zigbee.line.dropped),
            }),
            buses,
            devices,
            plugins,
            details_omitted: None,
        }
    }
}

/// What one check saw.
#[derive(Debug, Clone)]
pub struct Observation {
    pub now: Instant,
    pub started: bool,
    pub connected: bool,
    /// Publishes the broker acknowledged, over the life of the process.
    pub acknowledged: u64,
    /// Connections tried, over the life of the process.
    pub attempts: u64,
    /// The buffer's answer to a probe, or why there was none.
    pub buffer: Result<Stats, String>,
    /// When the commit in progress started, if one is.
    pub storing_since: Option<Instant>,
    /// Since when commits have been failing (and are being retried), if they are.
    pub failing_since: Option<Instant>,
}

/// Tells progress from standing still, check after check.
#[derive(Debug, Clone)]
pub struct Judge {
    stall_limit: Duration,
    acknowledged: u64,
    attempts: u64,
    /// When the uplink last made progress.
    uplink_progress: Instant,
}

impl Judge {
    pub fn new(stall_limit: Duration, now: Instant) -> Self {
        Self {
            stall_limit,
            acknowledged: 0,
            attempts: 0,
            uplink_progress: now,
        }
    }

    pub fn judge(&mut self, seen: Observation) -> Verdict {
        let mut reasons = Vec::new();
        let mut live = true;
        if let Some(since) = seen.storing_since {
            let running = seen.now.saturating_duration_since(since);
            if running > self.stall_limit / 4 {
                live = false;
                reasons.push(format!(
                    "ingest: a commit has been running for {} ms",
                    running.as_millis()
                ));
            }
        }
        let buffer = match seen.buffer {
            Ok(stats) => Some(stats),
            Err(problem) => {
                live = false;
                reasons.push(problem);
                None
            }
        };
        let backlog = buffer.as_ref().map_or(0, |stats| stats.rows);
        let idle = seen.connected && backlog == 0;
        // Progress: something delivered, nothing to deliver, or (while
        // down) a new attempt to reconnect.
        if idle
            || seen.acknowledged != self.acknowledged
            || (!seen.connected && seen.attempts != self.attempts)
        {
            self.uplink_progress = seen.now;
        }
        self.acknowledged = seen.acknowledged;
        self.attempts = seen.attempts;
        let stalled = seen.now.saturating_duration_since(self.uplink_progress);
        if stalled > self.stall_limit {
            live = false;
            reasons.push(if seen.connected {
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
        // A failing commit that is being retried is progress, like an
        // uplink that is down and reconnecting: not stuck, but not ready.
        if let Some(since) = seen.failing_since {
            reasons.push(format!(
                "buffer: commits failing for {} ms, retrying; samples wait in memory",
                seen.now.saturating_duration_since(since).as_millis()
            ));
        }
        if !seen.started {
            reasons.push("starting".into());
        }
        if !seen.connected {
            reasons.push("uplink: not connected to the broker (buffering)".into());
        }
        Verdict {
            live,
            ready: live && seen.started && seen.connected && seen.failing_since.is_none(),
            reasons,
            buffer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(60);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A gateway that has started, connected, acknowledged `acked`, with
    /// `rows` waiting, at `at` after the start.
    fn seen(start: Instant, at: Duration, rows: u64, acked: u64) -> Observation {
        Observation {
            now: start + at,
            started: true,
            connected: true,
            acknowledged: acked,
            attempts: 1,
            buffer: Ok(Stats {
                rows,
                ..Stats::default()
            }),
            storing_since: None,
            failing_since: None,
        }
    }

    /// Runs `checks` (each an observation made from the start instant)
    /// through one judge; the last verdict's live, ready and reasons.
    fn check(checks: &[&dyn Fn(Instant) -> Observation]) -> (bool, bool, Vec<String>) {
        let start = Instant::now();
        let mut judge = Judge::new(LIMIT, start);
        let mut verdict = None;
        for observe in checks {
            verdict = Some(judge.judge(observe(start)));
        }
        let verdict = verdict.expect("at least one check");
        (verdict.live, verdict.ready, verdict.reasons)
    }

    #[test]
    fn progress_is_judged_by_what_moves() {
        type Case<'a> = (
            &'a str,
            Vec<&'a dyn Fn(Instant) -> Observation>,
            bool,
            bool,
            &'a str,
        );
        let idle = |s| seen(s, secs(600), 0, 0);
        let delivering = [
            &(|s| seen(s, secs(50), 100, 10)) as &dyn Fn(Instant) -> Observation,
            &|s| seen(s, secs(100), 100, 20),
            &|s| seen(s, secs(150), 100, 30),
        ];
        let stuck = [
            &(|s| seen(s, secs(10), 100, 10)) as &dyn Fn(Instant) -> Observation,
            &|s| seen(s, secs(80), 100, 10),
        ];
        let reconnecting = |attempts: u64, at: u64| {
            move |s| Observation {
                connected: false,
                attempts,
                ..seen(s, secs(at), 100, 0)
            }
        };
        let (r1, r2, r3) = (
            reconnecting(2, 50),
            reconnecting(3, 100),
            reconnecting(3, 170),
        );
        let hung_commit = |s: Instant| Observation {
            storing_since: Some(s + secs(10)),
            ..seen(s, secs(26), 0, 0)
        };
        let long_but_fine_commit = |s: Instant| Observation {
            storing_since: Some(s + secs(10)),
            ..seen(s, secs(24), 0, 0)
        };
        let failing = |s: Instant| Observation {
            failing_since: Some(s + secs(5)),
            ..seen(s, secs(30), 0, 0)
        };
        let no_buffer = |s: Instant| Observation {
            buffer: Err("buffer: no answer within 10s".into()),
            ..seen(s, secs(1), 0, 0)
        };
        let starting = |s: Instant| Observation {
            started: false,
            ..seen(s, secs(1), 0, 0)
        };
        let cases: Vec<Case> = vec![
            ("idle and connected", vec![&idle], true, true, ""),
            ("delivering a backlog", delivering.to_vec(), true, true, ""),
            (
                "connected, nothing acknowledged",
                stuck.to_vec(),
                false,
                false,
                "nothing acknowledged for 70s",
            ),
            (
                "down, reconnecting",
                vec![&r1, &r2],
                true,
                false,
                "not connected",
            ),
            (
                "down, no attempts",
                vec![&r1, &r2, &r3],
                false,
                false,
                "no attempt to reconnect for 70s",
            ),
            (
                "a commit hanging",
                vec![&hung_commit],
                false,
                false,
                "a commit has been running for 16000 ms",
            ),
            ("a long commit", vec![&long_but_fine_commit], true, true, ""),
            (
                "commits failing, retried",
                vec![&failing],
                true,
                false,
                "commits failing for 25000 ms",
            ),
            (
                "the buffer not answering",
                vec![&no_buffer],
                false,
                false,
                "no answer within",
            ),
            ("starting", vec![&starting], true, false, "starting"),
        ];
        for (name, checks, live, ready, reason) in cases {
            let (got_live, got_ready, reasons) = check(&checks);
            assert_eq!((got_live, got_ready), (live, ready), "{name}: {reasons:?}");
            if reason.is_empty() {
                assert!(reasons.is_empty(), "{name}: {reasons:?}");
            } else {
                assert!(
                    reasons.iter().any(|r| r.contains(reason)),
                    "{name}: {reasons:?}"
                );
            }
        }
    }
}
