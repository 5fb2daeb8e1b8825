//! Wiring of the daemon: device pollers feed a bounded channel, the ingest
//! task commits samples to the buffer in batches and only then offers them
//! to the plug-ins, whose outputs come back to the ingest task to be
//! committed like any sample; the uplink delivers from the buffer. Shutdown
//! runs in that order too: stop polling, commit what was read, deliver what
//! the flush timeout allows, close the buffer.
//!
//! A reload (SIGHUP, `POST /reload`) reads the config file again and hands
//! the differences to [`crate::field`]; the buffer and the ingest task go on
//! as they were, and a new uplink starts only when its settings changed.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context as _;
use kite_core::Sample;
use kite_plugins::PluginOutput;
use serde::Serialize;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::buffer::{Buffer, BufferHandle, Kind, NewRecord};
use crate::config::{self, Config};
use crate::field::{watch_plugins, Field, PluginHandles, Plugins, SandboxSlot};
use crate::history::History;
use crate::http::{self, LogControl};
use crate::systemd;
use crate::uplink::{Uplink, UplinkCounters, WriteRoutes};
use crate::vitals::{Current, IngestCounters, Vitals};

/// Samples between the pollers and the buffer; when it is full, pollers wait.
const SAMPLE_CHANNEL: usize = 1024;
/// Most samples committed in one transaction.
const MAX_BATCH: usize = 512;
/// Plug-in outputs waiting to be committed; plug-in threads wait when it is full.
const PLUGIN_OUTPUTS: usize = 64;
/// Reload requests from the HTTP API waiting for the one being applied.
const RELOAD_QUEUE: usize = 4;

/// What a reload did: one line per link or plug-in started, stopped or
/// restarted, or uplink reconnected; the settings that wait for a restart.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Applied {
    pub changes: Vec<String>,
    pub restart_needed: Vec<String>,
}

/// The answer to a reload: what was applied, or why the new config was
/// refused (the same text `kite check` prints).
pub type ReloadOutcome = Result<Applied, String>;

/// A reload asked for through the HTTP API; the outcome goes back on the sender.
pub type ReloadRequest = oneshot::Sender<ReloadOutcome>;

/// Runs the gateway until `stop` completes, then shuts down cleanly.
/// `config_path` is the file a reload reads again (SIGHUP, `POST /reload`).
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
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
    let ingest_counters = Arc::new(IngestCounters::default());
    let vitals = Arc::new(Vitals::new(
        buffer.clone(),
        ingest_counters.clone(),
        Arc::new(UplinkCounters::default()),
    ));

    let data_dir = &config.gateway.data_dir;
    let plugin_state = data_dir.join("plugins.sqlite3");
    let (outputs_tx, outputs_rx) = mpsc::channel(PLUGIN_OUTPUTS);
    let (samples_tx, samples_rx) = mpsc::channel(SAMPLE_CHANNEL);
    let mut workload = Workload {
        sandbox: SandboxSlot::new(data_dir.join("plugin-cache")),
        field: Field::new(samples_tx, plugin_state.clone()),
        plugins: Plugins::new(outputs_tx, plugin_state),
        routes: Arc::default(),
        vitals: vitals.clone(),
    };
    workload.apply(&config).await;
    let watching = CancellationToken::new();
    let plugin_handles = workload.plugins.handles.clone();
    tokio::spawn(watch_plugins(plugin_handles.clone(), watching.clone()));
    let ingest = tokio::spawn(ingest(
        samples_rx,
        outputs_rx,
        plugin_handles,
        buffer.clone(),
        ingest_counters,
        vitals.history.clone(),
    ));

    let uplink = Uplink::new(
        config.mqtt.clone(),
        config.gateway.id.clone(),
        workload.routes.clone(),
        vitals.clone(),
    )?;
    let uplink_stop = CancellationToken::new();
    let uplink_task = tokio::spawn(uplink.run(uplink_stop.clone()));
    let observing = CancellationToken::new();
    // The watchdog holds the vitals, and so the buffer: shutdown waits for it.
    let observers = TaskTracker::new();
    let (reloads_tx, mut reloads) = mpsc::channel::<ReloadRequest>(RELOAD_QUEUE);
    if let Some(listen) = config.http.listen {
        match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => {
                tokio::spawn(http::serve(
                    listener,
                    http::Api::new(
                        &vitals,
                        config.gateway.id.clone(),
                        config.http.token.clone(),
                        log,
                        reloads_tx,
                    ),
                    observing.clone(),
                ));
            }
            // Observability failing must not stop the data: say so, run on.
            Err(e) => error!(%listen, error = %e, "HTTP API not started"),
        }
    }
    observers.spawn(systemd::watchdog(vitals.clone(), observing.clone()));
    observers.close();
    vitals.started.store(true, Ordering::Relaxed);
    systemd::ready();
    info!(gateway = %config.gateway.id, devices = config.device_count(), "kite running");

    let mut gateway = Running {
        config,
        config_path,
        workload,
        uplink_task,
        uplink_stop,
    };
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            error!(error = %e, "no SIGHUP handler; reload through the HTTP API");
            None
        }
    };
    let mut stop = std::pin::pin!(stop);
    // The uplink only returns early on a fatal error.
    let ended_early = loop {
        tokio::select! {
            _ = &mut stop => { info!("stopping"); break None; }
            result = &mut gateway.uplink_task => break Some(result),
            Some(()) = hangup_received(&mut hangup) => {
                info!("SIGHUP: reloading the config");
                let _ = gateway.reload().await;
            }
            Some(reply) = reloads.recv() => {
                let _ = reply.send(gateway.reload().await);
            }
        }
    };
    systemd::status("stopping: committing what was read, delivering the buffer");
    observing.cancel();
    watching.cancel();
    let Running {
        workload,
        uplink_task,
        uplink_stop,
        ..
    } = gateway;
    workload.stop().await;
    ingest.await.context("ingest task")?;
    uplink_stop.cancel();
    let uplink_result = match ended_early {
        Some(result) => result,
        None => uplink_task.await,
    }
    .context("uplink task")?;
    // Everything read is committed and the delivery is over.
    systemd::stopping(buffer.stats().await.map(|stats| stats.rows).ok());
    observers.wait().await;
    drop(vitals);
    drop(buffer);
    let _ = tokio::task::spawn_blocking(move || buffer_thread.join()).await;
    info!("stopped");
    uplink_result
}

async fn hangup_received(hangup: &mut Option<Signal>) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// What a config runs (links and plug-ins, and the engine they share), and
/// where what they are is published: health and plug-in status in the
/// vitals, the devices the history keeps, the write routes of the uplink.
struct Workload {
    sandbox: SandboxSlot,
    field: Field,
    plugins: Plugins,
    routes: Arc<Current<WriteRoutes>>,
    vitals: Arc<Vitals>,
}

impl Workload {
    /// Brings links and plug-ins in line with `config` (at start, and at
    /// every reload) and publishes the result; what changed, a line each.
    async fn apply(&mut self, config: &Config) -> Vec<String> {
        let mut changes =
            self.plugins
                .apply(&config.plugins, &config.plugin_trust, &mut self.sandbox);
        changes.extend(
            self.field
                .apply(
                    &config.modbus,
                    &config.instruments,
                    &config.plugin_trust,
                    &mut self.sandbox,
                )
                .await,
        );
        let (health, plugins) = (self.field.health(), self.plugins.status());
        let devices = health.devices.iter().map(|(name, _)| name.as_str());
        let plugin_names = plugins.iter().map(|(name, _)| name.as_str());
        self.vitals.history.follow(devices.chain(plugin_names));
        self.vitals.field.set(health);
        self.vitals.plugins.set(plugins);
        self.routes.set(self.field.routes());
        changes
    }
    /// Stops every link and waits for it (what they read is in the sample
    /// channel); the plug-ins finish the batches they have, then end.
    async fn stop(self) {
        self.field.stop().await;
    }
}

/// What a reload may change while the gateway runs.
struct Running {
    /// As applied: settings that wait for a restart keep their running values.
    config: Config,
    config_path: Option<PathBuf>,
    workload: Workload,
    uplink_task: JoinHandle<anyhow::Result<()>>,
    uplink_stop: CancellationToken,
}

impl Running {
    /// Reads the config file again and applies the difference. A config
    /// that does not load, or uplink settings that cannot be used, change
    /// nothing: the running config stays.
    async fn reload(&mut self) -> ReloadOutcome {
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
        let uplink = if new.mqtt != old.mqtt {
            Some(
                Uplink::new(
                    new.mqtt.clone(),
                    old.gateway.id.clone(),
                    self.workload.routes.clone(),
                    self.workload.vitals.clone(),
                )
                .map_err(|e| format!("{}: mqtt: {e:#}", path.display()))?,
            )
        } else {
            None
        };
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

/// Commits samples to the buffer in batches (whatever is waiting, up to
/// `MAX_BATCH`, in one transaction), then offers them to the plug-ins;
/// commits plug-in outputs the same way. Raw samples never wait for a plug-in.
async fn ingest(
    mut samples: mpsc::Receiver<Sample>,
    mut outputs: mpsc::Receiver<PluginOutput>,
    plugins: Arc<Current<PluginHandles>>,
    buffer: BufferHandle,
    counters: Arc<IngestCounters>,
    history: Arc<History>,
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
                    for plugin in plugins.get().iter() {
                        plugin.offer(&batch);
                    }
                }
                // What the devices said, stored or not, for the status page.
                history.record(&batch);
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
                history.record(&output.samples);
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
