//! Wiring of the daemon: device pollers feed a bounded channel, the ingest
//! task commits samples to the buffer in batches and only then offers them
//! to the plug-ins, whose outputs come back to the ingest task to be
//! committed like any sample; the uplink delivers from the buffer. Shutdown
//! runs in that order too: stop polling, commit what was read, deliver what
//! the flush timeout allows, close the buffer.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use kite_core::{DeviceHealth, PointSample, Sample};
use kite_modbus::{BusMonitor, BusSpec};
use kite_serial::decode::{DecodeError, RegexDecoder};
use kite_serial::nmea::NmeaDecoder;
use kite_serial::FrameDecoder;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use kite_plugins::{
    Codec, Limits, PluginCounters, PluginHandle, PluginOutput, PluginSpec, Sandbox, Trust,
};

use crate::buffer::{Buffer, BufferHandle, Kind, NewRecord};
use crate::config::{Config, Decode, InstrumentConfig};
use crate::http::{self, LogControl};
use crate::systemd;
use crate::uplink::{Uplink, UplinkCounters, WriteRoutes};
use crate::vitals::{FieldHealth, IngestCounters, PluginStatus, Vitals};

/// Samples between the pollers and the buffer; when it is full, pollers wait.
const SAMPLE_CHANNEL: usize = 1024;
/// Most samples committed in one transaction.
const MAX_BATCH: usize = 512;
/// Write requests queued per device.
const WRITE_QUEUE: usize = 16;
/// Plug-in outputs waiting to be committed; plug-in threads wait when it is full.
const PLUGIN_OUTPUTS: usize = 64;

/// Runs the gateway until `stop` completes, then shuts down cleanly.
pub async fn run(
    config: Config,
    stop: impl Future<Output = ()>,
    log: Option<LogControl>,
) -> anyhow::Result<()> {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    std::fs::create_dir_all(&config.gateway.data_dir)
        .with_context(|| format!("creating data_dir {}", config.gateway.data_dir.display()))?;
    let buffer = Buffer::open(
        &Buffer::path_in(&config.gateway.data_dir),
        config.buffer.durability,
        config.buffer.max_bytes,
    )?;
    let stats = buffer.stats()?;
    info!(
        rows = stats.rows,
        bytes = stats.bytes,
        last_seq = stats.last_seq,
        "buffer opened"
    );
    let (buffer, buffer_thread) = BufferHandle::spawn(buffer);

    let codecs = config
        .instruments
        .iter()
        .any(|i| matches!(i.decode, Decode::Codec { .. }));
    let sandbox = if config.plugins.is_empty() && !codecs {
        None
    } else {
        let cache = config.gateway.data_dir.join("plugin-cache");
        Some(Arc::new(Sandbox::new(Some(&cache))?))
    };
    let codec_spec = CodecSpec {
        state_path: config.gateway.data_dir.join("plugins.sqlite3"),
        trust: config.plugin_trust.clone(),
    };
    let (outputs_tx, outputs_rx) = mpsc::channel(PLUGIN_OUTPUTS);
    let (plugins, plugin_counters) = start_plugins(&config, sandbox.as_ref(), outputs_tx);
    let (samples_tx, samples_rx) = mpsc::channel(SAMPLE_CHANNEL);
    let polling = CancellationToken::new();
    let pollers = TaskTracker::new();
    let (routes, health) = start_field(
        config.modbus,
        config.instruments,
        sandbox.as_ref(),
        &codec_spec,
        &samples_tx,
        &polling,
        &pollers,
    );
    pollers.close();
    drop(samples_tx);
    let plugins: Arc<[PluginHandle]> = plugins.into();
    let watching = CancellationToken::new();
    if !plugins.is_empty() {
        tokio::spawn(watch_plugins(plugins.clone(), watching.clone()));
    }
    let ingest_counters = Arc::new(IngestCounters::default());
    let ingest = tokio::spawn(ingest(
        samples_rx,
        outputs_rx,
        plugins,
        buffer.clone(),
        ingest_counters.clone(),
    ));

    let vitals = Arc::new(Vitals::new(
        buffer.clone(),
        ingest_counters,
        Arc::new(UplinkCounters::default()),
        health,
        plugin_counters,
    ));
    let uplink_stop = CancellationToken::new();
    let uplink = Uplink::new(
        config.mqtt,
        config.gateway.id.clone(),
        routes,
        vitals.clone(),
    );
    let mut uplink = tokio::spawn(uplink.run(uplink_stop.clone()));
    let observing = CancellationToken::new();
    // The watchdog holds the vitals, and so the buffer: shutdown waits for it.
    let observers = TaskTracker::new();
    if let Some(listen) = config.http.listen {
        match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => {
                tokio::spawn(http::serve(
                    listener,
                    vitals.clone(),
                    config.gateway.id.clone(),
                    config.http.token.clone(),
                    log,
                    observing.clone(),
                ));
            }
            // Observability failing must not stop the data: say so, run on.
            Err(e) => error!(%listen, error = %e, "HTTP API not started"),
        }
    }
    observers.spawn(systemd::watchdog(vitals.clone(), observing.clone()));
    observers.close();
    vitals
        .started
        .store(true, std::sync::atomic::Ordering::Relaxed);
    systemd::ready();
    info!(gateway = %config.gateway.id, devices = pollers.len(), "kite running");

    // The uplink only returns early on a fatal error (a TLS file it cannot use, say).
    let ended_early = tokio::select! {
        _ = stop => { info!("stopping"); None }
        result = &mut uplink => Some(result),
    };
    systemd::stopping();
    observing.cancel();
    polling.cancel();
    watching.cancel();
    pollers.wait().await;
    ingest.await.context("ingest task")?;
    uplink_stop.cancel();
    let uplink_result = match ended_early {
        Some(result) => result,
        None => uplink.await,
    }
    .context("uplink task")?;
    observers.wait().await;
    drop(vitals);
    drop(buffer);
    let _ = tokio::task::spawn_blocking(move || buffer_thread.join()).await;
    info!("stopped");
    uplink_result
}

/// Compiles and starts every configured plug-in. One that cannot be read,
/// verified or compiled is refused, loudly and in the status, and the
/// gateway runs on without it.
fn start_plugins(
    config: &Config,
    sandbox: Option<&Arc<Sandbox>>,
    outputs: mpsc::Sender<PluginOutput>,
) -> (Vec<PluginHandle>, PluginStatus) {
    let Some(sandbox) = sandbox.filter(|_| !config.plugins.is_empty()) else {
        return (Vec::new(), Vec::new());
    };
    let data_dir = &config.gateway.data_dir;
    let mut handles = Vec::new();
    let mut status = Vec::new();
    for plugin in &config.plugins {
        let spec = PluginSpec {
            name: plugin.name.clone(),
            wasm: plugin.path.clone(),
            inputs: plugin.inputs.clone(),
            limits: plugin.limits,
            config_json: plugin.config_json.clone(),
            state_path: data_dir.join("plugins.sqlite3"),
            trust: config.plugin_trust.clone(),
        };
        match kite_plugins::spawn(sandbox.clone(), spec, outputs.clone()) {
            Ok(handle) => {
                info!(plugin = %plugin.name, path = %plugin.path.display(), "plug-in loaded");
                status.push((plugin.name.clone(), handle.counters.clone()));
                handles.push(handle);
            }
            Err(e) => {
                error!(plugin = %plugin.name, path = %plugin.path.display(), error = %e, "plug-in REFUSED");
                status.push((plugin.name.clone(), Arc::new(PluginCounters::refused())));
            }
        }
    }
    (handles, status)
}

/// What every codec plug-in shares: where its state lives, whom to trust.
struct CodecSpec {
    state_path: PathBuf,
    trust: Trust,
}

/// Starts one task per Modbus link and per raw instrument; returns where
/// each device's writes go and the health they report.
fn start_field(
    modbus: Vec<BusSpec>,
    instruments: Vec<InstrumentConfig>,
    sandbox: Option<&Arc<Sandbox>>,
    codec_spec: &CodecSpec,
    samples: &mpsc::Sender<Sample>,
    polling: &CancellationToken,
    pollers: &TaskTracker,
) -> (WriteRoutes, FieldHealth) {
    let mut routes = HashMap::new();
    let mut health = FieldHealth::default();
    for bus in modbus {
        let (writes_tx, writes_rx) = mpsc::channel(WRITE_QUEUE);
        let monitor = BusMonitor::new(&bus);
        health
            .buses
            .push((bus.name.to_string(), monitor.bus.clone()));
        for (device, device_health) in bus.devices.iter().zip(&monitor.devices) {
            routes.insert(device.name.to_string(), writes_tx.clone());
            health
                .devices
                .push((device.name.to_string(), device_health.clone()));
        }
        pollers.spawn(kite_modbus::run_bus(
            bus,
            monitor,
            samples.clone(),
            writes_rx,
            polling.clone(),
        ));
    }
    for instrument in instruments {
        let name = instrument.spec.name.to_string();
        let device_health = Arc::new(DeviceHealth::default());
        health.devices.push((name.clone(), device_health.clone()));
        let decoder: Box<dyn FrameDecoder> = match instrument.decode {
            Decode::Regex { pattern, fields } => match RegexDecoder::new(&pattern, fields) {
                Ok(decoder) => Box::new(decoder),
                Err(e) => {
                    refuse(&name, &device_health, &e);
                    continue;
                }
            },
            Decode::Nmea => Box::new(NmeaDecoder),
            Decode::Codec { path, config_json } => {
                let spec = PluginSpec {
                    name: name.clone(),
                    wasm: path,
                    inputs: Vec::new(),
                    limits: Limits::default(),
                    config_json,
                    state_path: codec_spec.state_path.clone(),
                    trust: codec_spec.trust.clone(),
                };
                let sandbox = sandbox.expect("a sandbox exists when a codec is configured");
                match Codec::start(sandbox.clone(), spec) {
                    Ok(codec) => Box::new(CodecDecoder(Mutex::new(codec))),
                    Err(e) => {
                        refuse(&name, &device_health, &e);
                        continue;
                    }
                }
            }
        };
        pollers.spawn(kite_serial::run_instrument(
            instrument.spec,
            decoder,
            device_health,
            samples.clone(),
            polling.clone(),
        ));
    }
    (routes, health)
}

/// An instrument whose frames cannot be decoded is not started; the
/// gateway runs on, and says so in the log and the status.
fn refuse(device: &str, health: &DeviceHealth, error: &dyn std::fmt::Display) {
    error!(device, %error, "instrument REFUSED");
    health
        .refused
        .store(true, std::sync::atomic::Ordering::Relaxed);
    health.set_last_error(error.to_string());
}

/// A codec plug-in as a frame decoder. The lock is only ever taken by the
/// instrument's own task; it makes the store shareable, as the trait asks.
struct CodecDecoder(Mutex<Codec>);

impl FrameDecoder for CodecDecoder {
    fn decode(&mut self, frame: &[u8]) -> Result<Vec<PointSample>, DecodeError> {
        self.0
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .decode(frame)
            .map_err(DecodeError::Invalid)
    }
}

/// Commits samples to the buffer in batches (whatever is waiting, up to
/// `MAX_BATCH`, in one transaction), then offers them to the plug-ins;
/// commits plug-in outputs the same way. Raw samples never wait for a plug-in.
async fn ingest(
    mut samples: mpsc::Receiver<Sample>,
    mut outputs: mpsc::Receiver<PluginOutput>,
    plugins: Arc<[PluginHandle]>,
    buffer: BufferHandle,
    counters: Arc<IngestCounters>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            received = samples.recv_many(&mut batch, MAX_BATCH) => {
                if received == 0 {
                    break;
                }
                let records = batch.iter().map(telemetry).collect();
                if store(&buffer, records, &counters).await {
                    for plugin in plugins.iter() {
                        plugin.offer(&batch);
                    }
                }
                batch.clear();
            }
            Some(output) = outputs.recv() => {
                let mut records: Vec<NewRecord> = output.samples.iter().map(telemetry).collect();
                records.extend(output.events.iter().map(|event| NewRecord {
                    kind: Kind::Event,
                    ts_ms: event.ts,
                    device: output.plugin.to_string(),
                    body: serde_json::to_string(event).expect("an event serializes"),
                }));
                store(&buffer, records, &counters).await;
            }
        }
    }
}

/// How often plug-in files are checked for a new version.
const PLUGIN_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Hot swap: when a plug-in's file (or its signature) changes, or on
/// SIGHUP, the new version is loaded beside the running one and swapped in
/// only if it loads; polling and the buffer never notice.
async fn watch_plugins(plugins: Arc<[PluginHandle]>, stop: CancellationToken) {
    let fingerprint = |plugin: &PluginHandle| {
        let stat = |path: &std::path::Path| {
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.len(), m.modified().ok()))
        };
        (
            stat(&plugin.spec.wasm),
            stat(&kite_plugins::signing::signature_path(&plugin.spec.wasm)),
        )
    };
    let mut seen: Vec<_> = plugins.iter().map(fingerprint).collect();
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            error!(error = %e, "no SIGHUP handler; plug-in files are still watched");
            None
        }
    };
    let mut ticker = tokio::time::interval(PLUGIN_WATCH_INTERVAL);
    loop {
        let all = tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        if all {
            info!("SIGHUP: reloading plug-ins");
        }
        for (index, plugin) in plugins.iter().enumerate() {
            let now = fingerprint(plugin);
            if !all && now == seen[index] {
                continue;
            }
            seen[index] = now;
            let (plugins, name) = (plugins.clone(), plugin.spec.name.clone());
            match tokio::task::spawn_blocking(move || plugins[index].reload()).await {
                Ok(Ok(())) => info!(plugin = %name, "plug-in reloaded"),
                Ok(Err(e)) => {
                    error!(plugin = %name, error = %e, "new version of the plug-in failed to load; the running version stays")
                }
                Err(e) => error!(plugin = %name, error = %e, "plug-in reload panicked"),
            }
        }
    }
}

fn telemetry(sample: &Sample) -> NewRecord {
    NewRecord {
        kind: Kind::Telemetry,
        ts_ms: sample.ts_ms,
        device: sample.device.to_string(),
        body: sample.points_json(),
    }
}

/// Appends `records`; false (and a loud log line) when they could not be stored.
async fn store(buffer: &BufferHandle, records: Vec<NewRecord>, counters: &IngestCounters) -> bool {
    let count = records.len() as u64;
    counters
        .storing_since_ms
        .store(kite_core::now_ms(), Ordering::Relaxed);
    let result = buffer.append(records).await;
    counters.storing_since_ms.store(0, Ordering::Relaxed);
    match result {
        Ok(_) => {
            counters.committed.fetch_add(count, Ordering::Relaxed);
            true
        }
        Err(e) => {
            counters.lost.fetch_add(count, Ordering::Relaxed);
            error!(error = %e, messages = count, "messages could not be stored and are lost");
            false
        }
    }
}
