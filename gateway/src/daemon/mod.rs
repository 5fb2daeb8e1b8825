//! The daemon: it starts the pipeline, runs it until it is told to stop,
//! applies reloads, and stops it in order.
//!
//! Device pollers feed a bounded channel; the ingest task commits samples
//! to the buffer in batches and only then offers them to the plug-ins,
//! whose outputs come back to the ingest task to be committed like any
//! sample; so do write results; the uplink delivers from the buffer.
//! Shutdown runs in that order too: stop polling, commit what was read, let
//! the plug-ins finish, deliver what the flush timeout allows, close the
//! buffer.
//!
//! - [`ingest`]: the ingest task, and its retries when commits fail.
//! - [`workload`]: what a config runs, and how a config is applied to it.
//! - [`links`], [`plugins`]: the running links and plug-ins.
//! - [`reload`]: reading the config again and applying the difference.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kite_core::{Exceptions, SampleSink};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::config::Config;
use crate::control::{LogControl, ReloadRequest};
use crate::counters::{IngestCounters, UplinkCounters};
use crate::current::Current;
use crate::ops::vitals::{Vitals, STALL_LIMIT};
use crate::ops::{http, systemd};
use crate::store::{Buffer, BufferHandle};
use crate::uplink::{Uplink, UplinkContext};
use ingest::{Ingest, Inputs};
use links::Field;
use plugins::{watch_plugins, Plugins};
use reload::Running;
use sandbox::SandboxSlot;
use workload::Workload;

mod ingest;
mod links;
mod plugins;
mod reconcile;
mod reload;
mod sandbox;
mod workload;
mod zigbee;

/// Samples between the pollers and the buffer; when it is full, pollers wait.
const SAMPLE_CHANNEL: usize = 1024;
/// Plug-in outputs waiting to be committed; plug-in threads wait when it is full.
const PLUGIN_OUTPUTS: usize = 64;
/// Reload requests from the HTTP API waiting for the one being applied.
const RELOAD_QUEUE: usize = 4;
/// Write results waiting to be committed; write tasks wait when it is full.
const WRITE_RESULTS: usize = 64;
/// Reports of unknown BLE devices waiting to be committed; more are dropped
/// and counted (they repeat every minute).
const DISCOVERED_QUEUE: usize = 64;
/// At shutdown, how long pollers wait for room to hand over what they read,
/// plug-ins get to finish their queued batches, and a failing commit keeps
/// being tried; what still cannot be committed then is counted as lost.
const STOP_GRACE: Duration = Duration::from_secs(5);

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
    let buffer = Buffer::open(&Buffer::path_in(&config.gateway.data_dir), config.buffer)?;
    let stats = buffer.stats()?;
    info!(
        rows = stats.rows,
        bytes = stats.bytes,
        last_seq = stats.last_seq,
        "buffer opened"
    );
    let (buffer, buffer_thread) = BufferHandle::spawn(buffer);
    let ingest_counters = Arc::new(IngestCounters::default());
    // Twice the watchdog period: stuck is noticed in time for systemd to
    // act on the next period.
    let stall_limit = systemd::watchdog_period().map_or(STALL_LIMIT, |period| period * 2);
    let vitals = Arc::new(Vitals::new(
        buffer.clone(),
        ingest_counters.clone(),
        Arc::new(UplinkCounters::default()),
        stall_limit,
    ));
    let (results_tx, results_rx) = mpsc::channel(WRITE_RESULTS);
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
    let (discovered_tx, discovered_rx) = mpsc::channel(DISCOVERED_QUEUE);
    let sink = SampleSink::new(samples_tx, STOP_GRACE, ingest_counters.unsent.clone());
    let room = Arc::new(Current::new(workload::message_room(&config)));
    let reports = Arc::new(Current::new(config.reports.clone()));
    let mut workload = Workload {
        sandbox: SandboxSlot::new(data_dir.join("plugin-cache")),
        field: Field::new(
            sink,
            discovered_tx,
            data_dir.clone(),
            plugin_state.clone(),
            room.clone(),
        ),
        plugins: Plugins::new(outputs_tx, plugin_state, room.clone()),
        routes: Arc::default(),
        declared: Arc::default(),
        zigbee: Arc::default(),
        vitals: vitals.clone(),
        room: room.clone(),
        reports: reports.clone(),
    };
    let uplink = Uplink::new(
        config.mqtt.clone(),
        &config.gateway.id,
        uplink_context(&vitals, &workload, results_tx.clone(), data_dir),
    );
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
            room,
            exceptions: Exceptions::new(reports.get()),
            reports,
            stopping: stopping.clone(),
            give_up_at: None,
        }
        .run(
            Inputs {
                samples: samples_rx,
                outputs: outputs_rx,
                results: results_rx,
                discovered: discovered_rx,
            },
            quiesced_tx,
        ),
    );

    let uplink_stop = CancellationToken::new();
    vitals.certificates.set(config.mqtt.certificates());
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
                config.http.token.as_ref().map(|t| t.expose().to_string()),
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
    let mut refused_plugins = tokio::time::interval(plugins::PLUGIN_WATCH_INTERVAL);
    // The uplink only returns early on a fatal error.
    let ended_early = loop {
        tokio::select! {
            _ = &mut stop => { info!("stopping"); break None; }
            _ = refused_plugins.tick() => gateway.workload.retry_refused_plugins().await,
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

/// What every uplink of this gateway works with: the first, and each one a
/// reload starts.
fn uplink_context(
    vitals: &Arc<Vitals>,
    workload: &Workload,
    results: mpsc::Sender<crate::uplink::WriteOutcome>,
    data_dir: &std::path::Path,
) -> UplinkContext {
    UplinkContext {
        routes: workload.routes.clone(),
        zigbee: workload.zigbee.clone(),
        results,
        buffer: vitals.buffer.clone(),
        counters: vitals.uplink.clone(),
        status: vitals.clone(),
        data_dir: data_dir.to_path_buf(),
        declared: workload.declared.clone(),
    }
}
