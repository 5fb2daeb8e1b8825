//! One thread per plug-in: it takes batches from a bounded channel, calls
//! the plug-in, and sends what it produced on. A failed call loses that
//! batch's outputs (counted) and the instance; the next batch after a
//! back-off gets a fresh one. After [`MAX_CONSECUTIVE_FAILURES`] the plug-in
//! is disabled, loudly. Nothing a plug-in does reaches the raw data flow:
//! the gateway buffers readings before they get here, and offers batches
//! with `try_send`, so a slow plug-in skips batches (counted) instead of
//! holding anything up.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use kite_core::{Backoff, PointSample, Reading as SampleReading, Sample, Value as SampleValue};
use tracing::{error, info, warn};
use wasmtime::component::Component;

use crate::bindings::kite::plugin::types::{Derived, Output, Reading, Severity, Value};
use crate::bounds::{check_event, check_message, check_point, check_sample};
use crate::pattern::Pattern;
use crate::sandbox::{Instance, Limits, PluginError, Sandbox};
use crate::state::StateStore;

pub const MAX_CONSECUTIVE_FAILURES: u64 = 5;
/// Most derived readings plus events one batch may produce.
pub const MAX_OUTPUTS_PER_BATCH: usize = 10_000;
/// Batches waiting for one plug-in; more are skipped and counted.
pub const BATCH_QUEUE: usize = 16;

/// A configured plug-in.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    pub name: String,
    pub wasm: PathBuf,
    pub inputs: Vec<Pattern>,
    pub limits: Limits,
    /// The `config` table, as JSON.
    pub config_json: String,
    /// Where plug-in state lives (`plugins.sqlite3`).
    pub state_path: PathBuf,
    pub trust: Trust,
    /// Largest message (a sample of derived readings, an event, a codec's
    /// points) the gateway publishes; one that would be larger is refused
    /// as the plug-in's failure. [`crate::DEFAULT_MAX_MESSAGE_BYTES`] when
    /// the gateway has no bound of its own.
    pub max_message_bytes: usize,
}

/// Which signatures a gateway accepts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trust {
    pub keys: Arc<[ed25519_dalek::VerifyingKey]>,
    pub require_signed: bool,
}

impl PluginSpec {
    /// The plug-in's own key-value state, bounded by its limit.
    pub fn open_state(&self) -> Result<StateStore, PluginError> {
        StateStore::open(&self.state_path, &self.name, self.limits.state_bytes)
            .map_err(|e| PluginError::State(e.to_string()))
    }

    pub fn wants(&self, device: &str, point: &str) -> bool {
        self.inputs.iter().any(|p| p.matches(device, point))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RunState {
    Starting = 0,
    Running = 1,
    BackingOff = 2,
    Disabled = 3,
    /// Never loaded: its file could not be read, verified or compiled.
    Refused = 4,
}

impl RunState {
    pub fn name(self) -> &'static str {
        match self {
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::BackingOff => "backing-off",
            RunState::Disabled => "disabled",
            RunState::Refused => "refused",
        }
    }
}

/// What an operator can read about one plug-in.
#[derive(Debug, Default)]
pub struct PluginCounters {
    state: AtomicU8,
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    pub timeouts: AtomicU64,
    pub traps: AtomicU64,
    /// Batches whose outputs were lost: the call failed, or the gateway
    /// stopped before it took them.
    pub lost_batches: AtomicU64,
    /// Batches not offered to the plug-in: it was busy, backing off or disabled.
    pub skipped_batches: AtomicU64,
    /// Batches offered and not yet taken by the plug-in's thread (a gauge):
    /// what is still waiting when the gateway stops.
    pub queued: AtomicU64,
    pub readings_in: AtomicU64,
    pub outputs: AtomicU64,
    pub busy_nanos: AtomicU64,
}

impl PluginCounters {
    pub fn state(&self) -> RunState {
        match self.state.load(Ordering::Relaxed) {
            0 => RunState::Starting,
            1 => RunState::Running,
            2 => RunState::BackingOff,
            3 => RunState::Disabled,
            _ => RunState::Refused,
        }
    }

    /// Counters of a plug-in that was refused at load.
    pub fn refused() -> Self {
        let counters = Self::default();
        counters.set_state(RunState::Refused);
        counters
    }

    fn set_state(&self, state: RunState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }
}

/// What one batch produced, ready for the buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginOutput {
    pub plugin: Arc<str>,
    /// Derived readings, as samples of a device named after the plug-in.
    pub samples: Vec<Sample>,
    pub events: Vec<PluginEvent>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PluginEvent {
    pub ts: i64,
    pub plugin: String,
    pub severity: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
}

/// What the plug-in's thread receives.
enum Message {
    Batch(Vec<Reading>),
    /// A new version, already compiled, instantiated and initialised.
    Replace(Component, Box<Instance>),
}

/// The gateway's side of a running plug-in.
pub struct PluginHandle {
    pub spec: Arc<PluginSpec>,
    pub counters: Arc<PluginCounters>,
    sandbox: Arc<Sandbox>,
    messages: std::sync::mpsc::SyncSender<Message>,
}

impl PluginHandle {
    /// Offers the readings of `samples` that the plug-in subscribed to, as one batch.
    pub fn offer(&self, samples: &[Sample]) {
        let batch = readings_for(&self.spec, samples);
        if batch.is_empty() {
            return;
        }
        if self.counters.state() != RunState::Disabled {
            // Counted before it is sent, so the thread never takes a batch
            // the gauge does not hold yet.
            self.counters.queued.fetch_add(1, Ordering::Relaxed);
            if self.messages.try_send(Message::Batch(batch)).is_ok() {
                return;
            }
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
        }
        self.counters
            .skipped_batches
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Loads the plug-in's file again and swaps the new version in once it
    /// is verified, compiled, instantiated and initialised; if any of that
    /// fails, the running version stays. A disabled plug-in comes back with
    /// a new version. Blocks while the plug-in finishes its current batch.
    pub fn reload(&self) -> Result<(), PluginError> {
        let component = load(&self.sandbox, &self.spec.wasm, &self.spec.trust)?;
        let instance = start_instance(&self.sandbox, &component, &self.spec)?;
        self.messages
            .send(Message::Replace(component, Box::new(instance)))
            .map_err(|_| PluginError::Load("the plug-in's thread has stopped".into()))
    }
}

/// A ready instance of `component` for `spec`: its state store opened,
/// instantiated under its limits, and `init` called with its config.
pub fn start_instance(
    sandbox: &Sandbox,
    component: &Component,
    spec: &PluginSpec,
) -> Result<Instance, PluginError> {
    let mut instance =
        sandbox.instantiate(component, &spec.name, spec.limits, spec.open_state()?)?;
    instance.init(&spec.config_json)?;
    Ok(instance)
}

/// Reads the plug-in's file, checks its signature against `trust`, and
/// compiles it (or takes it from the compile cache).
pub fn load(
    sandbox: &Sandbox,
    wasm: &std::path::Path,
    trust: &Trust,
) -> Result<Component, PluginError> {
    let bytes =
        std::fs::read(wasm).map_err(|e| PluginError::Load(format!("{}: {e}", wasm.display())))?;
    let precompiled = Sandbox::is_precompiled(&bytes);
    // Precompiled code is trusted native code: it always needs a signature,
    // and with `require_signed` `verify` accepts only a trusted one.
    let require_signed = trust.require_signed || precompiled;
    if let crate::signing::Verified::By(key) =
        crate::signing::verify(wasm, &bytes, &trust.keys, require_signed)?
    {
        info!(plugin = %wasm.display(), key, "signature verified");
    }
    if precompiled {
        sandbox.load_signed_precompiled(&bytes)
    } else {
        sandbox.compile(&bytes)
    }
}

/// Loads and starts a plug-in on a thread of its own. A plug-in that cannot
/// be read, verified or compiled is refused here, with the reason.
pub fn spawn(
    sandbox: Arc<Sandbox>,
    spec: PluginSpec,
    outputs: tokio::sync::mpsc::Sender<PluginOutput>,
) -> Result<PluginHandle, PluginError> {
    let component = load(&sandbox, &spec.wasm, &spec.trust)?;
    let spec = Arc::new(spec);
    let counters = Arc::new(PluginCounters::default());
    let (messages, receiver) = std::sync::mpsc::sync_channel(BATCH_QUEUE);
    let worker = Worker {
        sandbox: sandbox.clone(),
        component,
        spec: spec.clone(),
        counters: counters.clone(),
        outputs,
    };
    thread::Builder::new()
        .name(format!("kite-plugin-{}", spec.name))
        .spawn(move || worker.run(receiver))
        .map_err(|e| PluginError::Load(e.to_string()))?;
    Ok(PluginHandle {
        spec,
        counters,
        sandbox,
        messages,
    })
}

struct Worker {
    sandbox: Arc<Sandbox>,
    component: Component,
    spec: Arc<PluginSpec>,
    counters: Arc<PluginCounters>,
    outputs: tokio::sync::mpsc::Sender<PluginOutput>,
}

impl Worker {
    fn run(mut self, messages: std::sync::mpsc::Receiver<Message>) {
        let name = self.spec.name.as_str();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut retry_at = Instant::now();
        let mut instance = None;
        let mut consecutive = 0u64;
        while let Ok(message) = messages.recv() {
            let batch = match message {
                Message::Batch(batch) => {
                    self.counters.queued.fetch_sub(1, Ordering::Relaxed);
                    batch
                }
                Message::Replace(component, ready) => {
                    self.component = component;
                    instance = Some(*ready);
                    consecutive = 0;
                    backoff.reset();
                    self.counters.set_state(RunState::Running);
                    info!(plugin = name, "new version of the plug-in running");
                    continue;
                }
            };
            if self.counters.state() == RunState::Disabled {
                self.counters
                    .skipped_batches
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if instance.is_none() {
                if Instant::now() < retry_at {
                    self.counters
                        .skipped_batches
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match start_instance(&self.sandbox, &self.component, &self.spec) {
                    Ok(started) => {
                        info!(plugin = name, "plug-in started");
                        instance = Some(started);
                    }
                    Err(e) => {
                        self.counters.lost_batches.fetch_add(1, Ordering::Relaxed);
                        if self.fail(&e, &mut consecutive, &mut backoff, &mut retry_at) {
                            self.disable(&e);
                        }
                        continue;
                    }
                }
            }
            let running = instance.as_mut().expect("started above");
            self.counters.set_state(RunState::Running);
            self.counters.calls.fetch_add(1, Ordering::Relaxed);
            self.counters
                .readings_in
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            let started = Instant::now();
            let result = running
                .process(&batch)
                .and_then(|output| convert(&self.spec, output, &batch));
            self.counters
                .busy_nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            match result {
                Ok(output) => {
                    consecutive = 0;
                    backoff.reset();
                    let produced = output.samples.iter().map(|s| s.points.len()).sum::<usize>()
                        + output.events.len();
                    self.counters
                        .outputs
                        .fetch_add(produced as u64, Ordering::Relaxed);
                    if produced > 0 && self.outputs.blocking_send(output).is_err() {
                        // The gateway dropped its end: it is stopping.
                        self.counters.lost_batches.fetch_add(1, Ordering::Relaxed);
                        error!(
                            plugin = name,
                            "the plug-in's output is lost: the gateway is stopping"
                        );
                        return;
                    }
                }
                Err(e) => {
                    // The instance may be in any state after a trap: start afresh.
                    instance = None;
                    self.counters.lost_batches.fetch_add(1, Ordering::Relaxed);
                    if self.fail(&e, &mut consecutive, &mut backoff, &mut retry_at) {
                        self.disable(&e);
                    }
                }
            }
        }
    }

    /// Counts a failure and schedules the retry; true when the plug-in must be disabled.
    fn fail(
        &self,
        error: &PluginError,
        consecutive: &mut u64,
        backoff: &mut Backoff,
        retry_at: &mut Instant,
    ) -> bool {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        match error {
            PluginError::Timeout(_) => self.counters.timeouts.fetch_add(1, Ordering::Relaxed),
            _ => self.counters.traps.fetch_add(1, Ordering::Relaxed),
        };
        *consecutive += 1;
        if *consecutive >= MAX_CONSECUTIVE_FAILURES
            || matches!(error, PluginError::Import(_) | PluginError::Init(_))
        {
            return true;
        }
        let delay = backoff.next_delay();
        *retry_at = Instant::now() + delay;
        self.counters.set_state(RunState::BackingOff);
        warn!(plugin = %self.spec.name, %error, retry_in = ?delay, "plug-in failed; its outputs for this batch are lost");
        false
    }

    fn disable(&self, error: &PluginError) {
        self.counters.set_state(RunState::Disabled);
        error!(
            plugin = %self.spec.name,
            %error,
            failures = self.counters.failures.load(Ordering::Relaxed),
            "plug-in DISABLED: it keeps failing; raw data flows on without it"
        );
        // The thread stays, counting skipped batches, until a new version arrives.
    }
}

/// Checks a plug-in's output for one batch against the bounds of
/// [`crate::bounds`] and `spec.max_message_bytes`, and turns it into
/// samples (of a device named after the plug-in) and events.
pub fn convert(
    spec: &PluginSpec,
    output: Output,
    batch: &[Reading],
) -> Result<PluginOutput, PluginError> {
    let count = output.readings.len() + output.events.len();
    if count > MAX_OUTPUTS_PER_BATCH {
        return Err(PluginError::OutputTooLarge(format!(
            "{count} outputs from one batch, at most {MAX_OUTPUTS_PER_BATCH}"
        )));
    }
    let newest = batch
        .iter()
        .map(|r| r.timestamp)
        .max()
        .unwrap_or_else(kite_core::now_ms);
    let plugin: Arc<str> = Arc::from(spec.name.as_str());
    // One sample per timestamp; a point repeated at one timestamp keeps its last value.
    let mut by_time: BTreeMap<i64, BTreeMap<String, Derived>> = BTreeMap::new();
    for derived in output.readings {
        check_point(&derived.point, derived.unit.as_deref())?;
        by_time
            .entry(derived.timestamp.unwrap_or(newest))
            .or_default()
            .insert(derived.point.clone(), derived);
    }
    let samples = by_time
        .into_iter()
        .map(|(ts_ms, points)| {
            let sample = Sample {
                device: plugin.clone(),
                ts_ms,
                points: points
                    .into_values()
                    .map(|d| PointSample {
                        name: Arc::from(d.point.as_str()),
                        unit: d.unit.map(|u| Arc::from(u.as_str())),
                        reading: to_sample_reading(d.value),
                    })
                    .collect(),
            };
            check_sample(&sample, spec.max_message_bytes)?;
            Ok(sample)
        })
        .collect::<Result<_, PluginError>>()?;
    let events = output
        .events
        .into_iter()
        .map(|e| {
            check_event(&e.message, e.device.as_deref(), e.point.as_deref())?;
            let event = PluginEvent {
                ts: e.timestamp.unwrap_or(newest),
                plugin: spec.name.clone(),
                severity: match e.severity {
                    Severity::Info => "info",
                    Severity::Warning => "warning",
                    Severity::Critical => "critical",
                },
                message: e.message,
                device: e.device,
                point: e.point,
            };
            let json = serde_json::to_string(&event).expect("an event serializes");
            check_message("an event", json.len(), spec.max_message_bytes)?;
            Ok(event)
        })
        .collect::<Result<_, PluginError>>()?;
    Ok(PluginOutput {
        plugin,
        samples,
        events,
    })
}

pub(crate) fn to_sample_reading(value: Value) -> SampleReading {
    match value {
        Value::Boolean(b) => SampleReading::Good(SampleValue::Bool(b)),
        Value::Integer(i) => SampleReading::Good(SampleValue::Int(i)),
        Value::Unsigned(u) => SampleReading::Good(SampleValue::UInt(u)),
        Value::Float(f) if f.is_finite() => SampleReading::Good(SampleValue::Float(f)),
        Value::Float(f) => {
            SampleReading::Bad(format!("plug-in produced a non-finite number ({f})"))
        }
        Value::Text(t) => SampleReading::Good(SampleValue::Text(t)),
    }
}

/// The readings of `samples` that `spec` subscribed to.
pub fn readings_for(spec: &PluginSpec, samples: &[Sample]) -> Vec<Reading> {
    let mut batch = Vec::new();
    for sample in samples {
        for point in &sample.points {
            if !spec.wants(&sample.device, &point.name) {
                continue;
            }
            let (value, error) = match &point.reading {
                SampleReading::Good(v) => (
                    Some(match v {
                        SampleValue::Bool(b) => Value::Boolean(*b),
                        SampleValue::Int(i) => Value::Integer(*i),
                        SampleValue::UInt(u) => Value::Unsigned(*u),
                        SampleValue::Float(f) => Value::Float(*f),
                        SampleValue::Text(t) => Value::Text(t.clone()),
                    }),
                    None,
                ),
                // A stale value is old news: a plug-in must not act on it
                // as if it were just read.
                SampleReading::Bad(reason) | SampleReading::Stale(_, reason) => {
                    (None, Some(reason.clone()))
                }
            };
            batch.push(Reading {
                device: sample.device.to_string(),
                point: point.name.to_string(),
                value,
                error,
                timestamp: sample.ts_ms,
                unit: point.unit.as_deref().map(str::to_string),
            });
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::kite::plugin::types::Event;
    use crate::bounds::{
        DEFAULT_MAX_MESSAGE_BYTES, ENVELOPE_BYTES, MAX_EVENT_MESSAGE_BYTES, MAX_NAME_BYTES,
        MAX_UNIT_BYTES,
    };

    fn spec(max_message_bytes: usize) -> PluginSpec {
        PluginSpec {
            name: "p".into(),
            wasm: PathBuf::new(),
            inputs: Vec::new(),
            limits: Limits::default(),
            config_json: "{}".into(),
            state_path: PathBuf::new(),
            trust: Trust::default(),
            max_message_bytes,
        }
    }

    fn derived(point: &str, unit: Option<&str>, value: Value) -> Output {
        Output {
            readings: vec![Derived {
                point: point.into(),
                value,
                unit: unit.map(Into::into),
                timestamp: Some(1),
            }],
            events: Vec::new(),
        }
    }

    fn events(count: usize, message: &str, device: Option<&str>, point: Option<&str>) -> Output {
        let event = Event {
            severity: Severity::Info,
            message: message.into(),
            device: device.map(Into::into),
            point: point.map(Into::into),
            timestamp: Some(1),
        };
        Output {
            readings: Vec::new(),
            events: vec![event; count],
        }
    }

    #[test]
    fn convert_refuses_outputs_past_their_bounds() {
        let small = 1024;
        // The text that makes a sample of point "p" exactly `small` bytes as a message.
        let text_at_limit = small
            - ENVELOPE_BYTES
            - r#"{"p":{"value":"","quality":"good"}}"#.len()
            - r#""p""#.len();
        let empty_event = PluginEvent {
            ts: 1,
            plugin: "p".into(),
            severity: "info",
            message: String::new(),
            device: None,
            point: None,
        };
        let message_at_limit =
            small - ENVELOPE_BYTES - serde_json::to_string(&empty_event).unwrap().len();
        let name = |bytes: usize| "n".repeat(bytes);
        let one = Value::Float(1.0);
        let text = |bytes: usize| Value::Text("t".repeat(bytes));
        // (what, output, the message bound, None if accepted or what the refusal names)
        let cases: Vec<(&str, Output, usize, Option<&str>)> = vec![
            (
                "a short name",
                derived("flow", Some("m3/h"), one.clone()),
                small,
                None,
            ),
            (
                "no name",
                derived("", None, one.clone()),
                small,
                Some("without a name"),
            ),
            (
                "longest name",
                derived(&name(MAX_NAME_BYTES), None, one.clone()),
                small,
                None,
            ),
            (
                "name too long",
                derived(&name(MAX_NAME_BYTES + 1), None, one.clone()),
                small,
                Some("point name of 129 bytes"),
            ),
            (
                "longest unit",
                derived("p", Some(&name(MAX_UNIT_BYTES)), one.clone()),
                small,
                None,
            ),
            (
                "unit too long",
                derived("p", Some(&name(MAX_UNIT_BYTES + 1)), one.clone()),
                small,
                Some("unit of 33 bytes"),
            ),
            (
                "sample at the message bound",
                derived("p", None, text(text_at_limit)),
                small,
                None,
            ),
            (
                "sample past the message bound",
                derived("p", None, text(text_at_limit + 1)),
                small,
                Some("a sample that would be a message of 1025 bytes, at most 1024"),
            ),
            (
                "longest event message",
                events(1, &name(MAX_EVENT_MESSAGE_BYTES), None, None),
                DEFAULT_MAX_MESSAGE_BYTES,
                None,
            ),
            (
                "event message too long",
                events(1, &name(MAX_EVENT_MESSAGE_BYTES + 1), None, None),
                DEFAULT_MAX_MESSAGE_BYTES,
                Some("event message of 4097 bytes"),
            ),
            (
                "longest device and point of an event",
                events(
                    1,
                    "m",
                    Some(&name(MAX_NAME_BYTES)),
                    Some(&name(MAX_NAME_BYTES)),
                ),
                small,
                None,
            ),
            (
                "device of an event too long",
                events(1, "m", Some(&name(MAX_NAME_BYTES + 1)), None),
                small,
                Some("event's device of 129 bytes"),
            ),
            (
                "point of an event too long",
                events(1, "m", None, Some(&name(MAX_NAME_BYTES + 1))),
                small,
                Some("event's point of 129 bytes"),
            ),
            (
                "event at the message bound",
                events(1, &name(message_at_limit), None, None),
                small,
                None,
            ),
            (
                "event past the message bound",
                events(1, &name(message_at_limit + 1), None, None),
                small,
                Some("an event that would be a message of 1025 bytes"),
            ),
            (
                "most outputs",
                events(MAX_OUTPUTS_PER_BATCH, "m", None, None),
                small,
                None,
            ),
            (
                "too many outputs",
                events(MAX_OUTPUTS_PER_BATCH + 1, "m", None, None),
                small,
                Some("10001 outputs from one batch"),
            ),
        ];
        for (what, output, max_message_bytes, refusal) in cases {
            let result = convert(&spec(max_message_bytes), output, &[]);
            match (refusal, result) {
                (None, Ok(_)) => {}
                (Some(expected), Err(PluginError::OutputTooLarge(reason)))
                    if reason.contains(expected) => {}
                (_, result) => panic!("{what}: {result:?}"),
            }
        }
    }
}
