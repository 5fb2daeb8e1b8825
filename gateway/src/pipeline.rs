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

use std::time::Duration;

use anyhow::Context as _;
use kite_core::{Backoff, Sample, SampleSink};
use kite_plugins::PluginOutput;
use serde::Serialize;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{self, Config};
use crate::field::{watch_plugins, Field, PluginHandles, Plugins, SandboxSlot};
use crate::history::History;
use crate::http::{self, LogControl};
use crate::store::{Buffer, BufferError, BufferHandle, NewRecord};
use crate::systemd;
use crate::uplink::wire::{self, Topics};
use crate::uplink::{Uplink, UplinkCounters, WriteOutcome, WriteRoutes};
use crate::vitals::{Current, IngestCounters, Vitals};

/// Samples between the pollers and the buffer; when it is full, pollers wait.
const SAMPLE_CHANNEL: usize = 1024;
/// Most samples committed in one transaction.
const MAX_BATCH: usize = 512;
/// Plug-in outputs waiting to be committed; plug-in threads wait when it is full.
const PLUGIN_OUTPUTS: usize = 64;
/// Reload requests from the HTTP API waiting for the one being applied.
const RELOAD_QUEUE: usize = 4;
/// Write results waiting to be committed; write tasks wait when it is full.
const WRITE_RESULTS: usize = 64;
/// At shutdown, how long pollers wait for room to hand over what they read,
/// plug-ins get to finish their queued batches, and a failing commit keeps
/// being tried; what still cannot be committed then is counted as lost.
const STOP_GRACE: Duration = Duration::from_secs(5);

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
    // Everything that can fail comes before any task starts.
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
    let routes = Arc::<Current<WriteRoutes>>::default();
    let (results_tx, results_rx) = mpsc::channel(WRITE_RESULTS);
    let uplink = Uplink::new(
        config.mqtt.clone(),
        &config.gateway.id,
        routes.clone(),
        results_tx.clone(),
        vitals.clone(),
    );
    let http_listener = match config.http.listen {
        Some(listen) => match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => Some(listener),
            // Observability failing must not stop the data: say so, run on.
            Err(e) => {
                error!(%listen, error = %e, "HTTP API not started");
                None
            }
        },
        None => None,
    };

    let data_dir = &config.gateway.data_dir;
    let plugin_state = data_dir.join("plugins.sqlite3");
    let (outputs_tx, outputs_rx) = mpsc::channel(PLUGIN_OUTPUTS);
    let (samples_tx, samples_rx) = mpsc::channel(SAMPLE_CHANNEL);
    let sink = SampleSink::new(samples_tx, STOP_GRACE, ingest_counters.unsent.clone());
    let mut workload = Workload {
        sandbox: SandboxSlot::new(data_dir.join("plugin-cache")),
        field: Field::new(sink, plugin_state.clone()),
        plugins: Plugins::new(outputs_tx, plugin_state, config.mqtt.max_message_bytes),
        routes,
        vitals: vitals.clone(),
    };
    workload.apply(&config).await;
    let watching = CancellationToken::new();
    let plugin_handles = workload.plugins.handles.clone();
    tokio::spawn(watch_plugins(plugin_handles.clone(), watching.clone()));
    let stopping = CancellationToken::new();
    let (quiesced_tx, quiesced) = oneshot::channel();
    let ingest = tokio::spawn(
        Ingest {
            buffer: buffer.clone(),
            counters: ingest_counters,
            history: vitals.history.clone(),
            plugins: plugin_handles,
            topics: Topics::new(&config.mqtt.topic_prefix, &config.gateway.id),
            max_message_bytes: config.mqtt.max_message_bytes,
            stopping: stopping.clone(),
            give_up_at: None,
        }
        .run(samples_rx, outputs_rx, results_rx, quiesced_tx),
    );

    let uplink_stop = CancellationToken::new();
    let uplink_task = tokio::spawn(uplink.run(uplink_stop.clone()));
    let observing = CancellationToken::new();
    // The watchdog holds the vitals, and so the buffer: shutdown waits for it.
    let observers = TaskTracker::new();
    let (reloads_tx, mut reloads) = mpsc::channel::<ReloadRequest>(RELOAD_QUEUE);
    if let Some(listener) = http_listener {
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
        results: results_tx,
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
    stopping.cancel();
    let Running {
        workload,
        uplink_task,
        uplink_stop,
        results,
        ..
    } = gateway;
    workload.stop().await;
    // Every sample read and every plug-in output is committed (or counted)
    // before the last delivery starts; write results keep being stored
    // while it runs.
    let _ = quiesced.await;
    uplink_stop.cancel();
    let uplink_result = match ended_early {
        Some(result) => result,
        None => uplink_task.await,
    }
    .context("uplink task")?;
    drop(results);
    if tokio::time::timeout(STOP_GRACE, ingest).await.is_err() {
        error!("the ingest task did not finish within {STOP_GRACE:?}; stopping without it");
    }
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
        let mut changes = self
            .plugins
            .apply(&config.plugins, &config.plugin_trust, &mut self.sandbox)
            .await;
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
    /// Stops every link and waits for it (what they read is handed to the
    /// sample channel); the plug-ins finish the batches they have, then end.
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
    /// Where every uplink sends its write results.
    results: mpsc::Sender<WriteOutcome>,
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
        let uplink = (new.mqtt != old.mqtt).then(|| {
            Uplink::new(
                new.mqtt.clone(),
                &old.gateway.id,
                self.workload.routes.clone(),
                self.results.clone(),
                self.workload.vitals.clone(),
            )
        });
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

/// Commits what the gateway takes in: samples in batches (whatever is
/// waiting, up to `MAX_BATCH`, in one transaction), then offers them to the
/// plug-ins; plug-in outputs and write results the same way. Raw samples
/// never wait for a plug-in.
///
/// A commit that fails (the database locked by another process, a full
/// disk) is tried again with back-off, the batch kept: the bounded channels
/// fill and the pollers wait, nothing is dropped. Only at shutdown, once
/// [`STOP_GRACE`] has passed, is what still cannot be committed counted as
/// lost.
struct Ingest {
    buffer: BufferHandle,
    counters: Arc<IngestCounters>,
    history: Arc<History>,
    plugins: Arc<Current<PluginHandles>>,
    topics: Topics,
    max_message_bytes: usize,
    /// Cancelled when the gateway starts to stop.
    stopping: CancellationToken,
    /// When failing commits stop being retried: [`STOP_GRACE`] after `stopping`.
    give_up_at: Option<Instant>,
}

/// Where the plug-ins are in the ingest task's shutdown.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PluginsAtStop {
    Running,
    /// Finishing their queued batches until then.
    Finishing(Instant),
    /// No more outputs are taken.
    Closed,
}

impl PluginsAtStop {
    /// Completes when the plug-ins' time to finish is up; never otherwise.
    async fn due(&self) {
        match self {
            PluginsAtStop::Finishing(due) => tokio::time::sleep_until(*due).await,
            _ => std::future::pending().await,
        }
    }
}

impl Ingest {
    /// Runs until every input is closed. `quiesced` fires once the pollers
    /// and plug-ins are done and all they produced is committed (or
    /// counted); write results are taken until the uplink is gone.
    async fn run(
        mut self,
        mut samples: mpsc::Receiver<Sample>,
        mut outputs: mpsc::Receiver<PluginOutput>,
        mut results: mpsc::Receiver<WriteOutcome>,
        quiesced: oneshot::Sender<()>,
    ) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut done = Vec::new();
        let (mut samples_open, mut outputs_open, mut results_open) = (true, true, true);
        let mut quiesced = Some(quiesced);
        let mut plugins = PluginsAtStop::Running;
        loop {
            if !samples_open && plugins == PluginsAtStop::Running {
                // Dropping the handles lets each plug-in finish its queued
                // batches and end, which closes `outputs`.
                self.plugins.set(Vec::new());
                plugins = PluginsAtStop::Finishing(Instant::now() + STOP_GRACE);
            }
            if !samples_open && !outputs_open {
                if let Some(quiesced) = quiesced.take() {
                    let _ = quiesced.send(());
                }
                if !results_open {
                    return;
                }
            }
            tokio::select! {
                received = samples.recv_many(&mut batch, MAX_BATCH), if samples_open => {
                    if received == 0 {
                        samples_open = false;
                        continue;
                    }
                    self.store_samples(&batch).await;
                    batch.clear();
                }
                output = outputs.recv(), if outputs_open => match output {
                    Some(output) => self.store_output(output).await,
                    None => outputs_open = false,
                },
                received = results.recv_many(&mut done, WRITE_RESULTS), if results_open => {
                    if received == 0 {
                        results_open = false;
                        continue;
                    }
                    let records = done
                        .drain(..)
                        .map(|o| wire::result_record(&o.device, o.ts_ms, &o.result))
                        .collect();
                    self.store(records).await;
                }
                _ = plugins.due(), if outputs_open => {
                    // Outputs already sent are still taken; plug-ins that
                    // are not done count what they could not send.
                    error!(
                        "plug-ins did not finish their queued batches within {STOP_GRACE:?}; what they had not sent is lost (counted in each plug-in's lost_batches)"
                    );
                    outputs.close();
                    plugins = PluginsAtStop::Closed;
                }
            }
        }
    }

    async fn store_samples(&mut self, batch: &[Sample]) {
        let records = self.telemetry(batch);
        if self.store(records).await {
            for plugin in self.plugins.get().iter() {
                plugin.offer(batch);
            }
        }
        // What the devices said, stored or not, for the status page.
        self.history.record(batch);
    }

    async fn store_output(&mut self, output: PluginOutput) {
        let mut records = self.telemetry(&output.samples);
        records.extend(
            output
                .events
                .iter()
                .map(|event| wire::event_record(&wire::Event::from(event))),
        );
        self.store(records).await;
        self.history.record(&output.samples);
    }

    /// The rows of `samples`, each fitting one message.
    fn telemetry(&self, samples: &[Sample]) -> Vec<NewRecord> {
        let mut records = Vec::with_capacity(samples.len());
        for sample in samples {
            let budget = self
                .topics
                .points_budget(&sample.device, self.max_message_bytes);
            let (rows, too_large) = wire::telemetry_records(sample, budget);
            if too_large > 0 {
                self.counters
                    .too_large
                    .fetch_add(too_large, Ordering::Relaxed);
                warn!(device = %sample.device, values = too_large, "values too large for one message were sent as bad readings");
            }
            records.extend(rows);
        }
        records
    }

    /// Commits `records`, retrying while the buffer fails; false when they
    /// were lost (the gateway stopped before they could be committed).
    async fn store(&mut self, records: Vec<NewRecord>) -> bool {
        let count = records.len() as u64;
        let records: Arc<[NewRecord]> = records.into();
        let counters = &self.counters;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            counters
                .storing_since_ms
                .store(kite_core::now_ms(), Ordering::Relaxed);
            let result = self.buffer.append(records.clone()).await;
            counters.storing_since_ms.store(0, Ordering::Relaxed);
            let error = match result {
                Ok(_) => {
                    counters.committed.fetch_add(count, Ordering::Relaxed);
                    let since = counters.failing_since_ms.swap(0, Ordering::Relaxed);
                    if since != 0 {
                        info!(
                            failing_for_ms = kite_core::now_ms() - since,
                            "buffer commits work again; nothing was lost"
                        );
                    }
                    return true;
                }
                Err(e) => e,
            };
            let failures = counters.commit_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if counters
                .failing_since_ms
                .compare_exchange(0, kite_core::now_ms(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
                || failures.is_multiple_of(10)
            {
                warn!(error = %error, messages = count, "buffer commit failed; keeping the messages and trying again");
            }
            let give_up = match (&error, self.stopping.is_cancelled()) {
                (BufferError::Stopped, _) => true,
                (_, true) => {
                    *self.give_up_at.get_or_insert(Instant::now() + STOP_GRACE) <= Instant::now()
                }
                (_, false) => false,
            };
            if give_up {
                counters.lost.fetch_add(count, Ordering::Relaxed);
                error!(error = %error, messages = count, "messages could not be committed before stopping: LOST");
                return false;
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stopping.cancelled(), if self.give_up_at.is_none() => {}
            }
        }
    }
}
