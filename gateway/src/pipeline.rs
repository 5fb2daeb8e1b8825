//! Wiring of the daemon: device pollers feed a bounded channel, the ingest
//! task commits samples to the buffer in batches, and the uplink delivers
//! from the buffer. Shutdown runs in that order too: stop polling, commit
//! what was read, deliver what the flush timeout allows, close the buffer.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use kite_core::Sample;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::buffer::{Buffer, BufferHandle, NewRecord};
use crate::config::{Config, DeviceConfig};
use crate::uplink::{Uplink, UplinkCounters};

/// Samples between the pollers and the buffer; when it is full, pollers wait.
const SAMPLE_CHANNEL: usize = 1024;
/// Most samples committed in one transaction.
const MAX_BATCH: usize = 512;
/// Write requests queued per device.
const WRITE_QUEUE: usize = 16;

/// Runs the gateway until `stop` completes, then shuts down cleanly.
pub async fn run(config: Config, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
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

    let (samples_tx, samples_rx) = mpsc::channel(SAMPLE_CHANNEL);
    let polling = CancellationToken::new();
    let pollers = TaskTracker::new();
    let mut routes = HashMap::new();
    for device in config.devices {
        let (writes_tx, writes_rx) = mpsc::channel(WRITE_QUEUE);
        routes.insert(device.name().to_string(), writes_tx);
        match device {
            DeviceConfig::ModbusTcp(spec) => {
                pollers.spawn(kite_modbus::run_device(
                    spec,
                    samples_tx.clone(),
                    writes_rx,
                    polling.clone(),
                ));
            }
        }
    }
    pollers.close();
    drop(samples_tx);
    let ingest = tokio::spawn(ingest(samples_rx, buffer.clone()));

    let uplink_stop = CancellationToken::new();
    let counters = Arc::new(UplinkCounters::default());
    let uplink = Uplink::new(
        config.mqtt,
        config.gateway.id.clone(),
        buffer.clone(),
        routes,
        counters,
    );
    let mut uplink = tokio::spawn(uplink.run(uplink_stop.clone()));
    info!(gateway = %config.gateway.id, devices = pollers.len(), "kite running");

    // The uplink only returns early on a fatal error (a TLS file it cannot use, say).
    let ended_early = tokio::select! {
        _ = stop => { info!("stopping"); None }
        result = &mut uplink => Some(result),
    };
    polling.cancel();
    pollers.wait().await;
    ingest.await.context("ingest task")?;
    uplink_stop.cancel();
    let uplink_result = match ended_early {
        Some(result) => result,
        None => uplink.await,
    }
    .context("uplink task")?;
    drop(buffer);
    let _ = tokio::task::spawn_blocking(move || buffer_thread.join()).await;
    info!("stopped");
    uplink_result
}

/// Commits samples to the buffer in batches: whatever is waiting, up to
/// `MAX_BATCH`, goes in one transaction.
async fn ingest(mut samples: mpsc::Receiver<Sample>, buffer: BufferHandle) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while samples.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let records: Vec<NewRecord> = batch
            .drain(..)
            .map(|sample| NewRecord {
                ts_ms: sample.ts_ms,
                device: sample.device.to_string(),
                body: sample.points_json(),
            })
            .collect();
        let count = records.len();
        if let Err(e) = buffer.append(records).await {
            error!(error = %e, samples = count, "samples could not be stored and are lost");
        }
    }
}
