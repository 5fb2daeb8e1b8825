//! The ingest task: everything the gateway takes in is committed here.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kite_ble::Discovered;
use kite_core::{Backoff, Exceptions, ReportRules, Sample};
use kite_plugins::PluginOutput;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::plugins::PluginHandles;
use super::{STOP_GRACE, WRITE_RESULTS};
use crate::counters::IngestCounters;
use crate::current::Current;
use crate::ops::history::History;
use crate::store::{BufferError, BufferHandle, NewRecord};
use crate::uplink::wire::{self, MessageRoom};
use crate::uplink::WriteOutcome;

/// Most samples committed in one transaction.
const MAX_BATCH: usize = 512;

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
pub(super) struct Ingest {
    pub buffer: BufferHandle,
    pub counters: Arc<IngestCounters>,
    pub history: Arc<History>,
    pub plugins: Arc<Current<PluginHandles>>,
    /// Follows reloads of `[mqtt]`, like the uplink it feeds.
    pub room: Arc<Current<MessageRoom>>,
    /// The points reported by exception, following reloads; what was last
    /// stored of each. Plug-ins and the status page still see every
    /// reading.
    pub reports: Arc<Current<ReportRules>>,
    pub exceptions: Exceptions,
    /// Cancelled when the gateway starts to stop.
    pub stopping: CancellationToken,
    /// When failing commits stop being retried: [`STOP_GRACE`] after `stopping`.
    pub give_up_at: Option<Instant>,
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

/// What the ingest task takes in.
pub(super) struct Inputs {
    pub samples: mpsc::Receiver<Sample>,
    pub outputs: mpsc::Receiver<PluginOutput>,
    pub results: mpsc::Receiver<WriteOutcome>,
    /// Reports of unknown BLE devices.
    pub discovered: mpsc::Receiver<Discovered>,
}

impl Ingest {
    /// Runs until every input is closed. `quiesced` fires once the pollers
    /// and plug-ins are done and all they produced is committed (or
    /// counted); write results are taken until the uplink is gone.
    pub async fn run(mut self, inputs: Inputs, quiesced: oneshot::Sender<()>) {
        let Inputs {
            mut samples,
            mut outputs,
            mut results,
            mut discovered,
        } = inputs;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut done = Vec::new();
        let (mut samples_open, mut outputs_open, mut results_open) = (true, true, true);
        let mut discovered_open = true;
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
                found = discovered.recv(), if discovered_open => match found {
                    Some(found) => {
                        let record = wire::discovery_record(kite_core::now_ms(), &found);
                        self.store(vec![record]).await;
                    }
                    None => discovered_open = false,
                },
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

    /// The rows of `samples`, each fitting one message, without the points
    /// reported by exception that need not be sent.
    fn telemetry(&mut self, samples: &[Sample]) -> Vec<NewRecord> {
        let mut records = Vec::with_capacity(samples.len());
        let room = self.room.get();
        self.exceptions.follow(&self.reports.get());
        let now = std::time::Instant::now();
        for sample in samples {
            let reported;
            let sample = if self.exceptions.covers(&sample.device) {
                let mut kept = sample.clone();
                if !self.exceptions.filter(&mut kept, now) {
                    continue;
                }
                reported = kept;
                &reported
            } else {
                sample
            };
            let budget = room.points_budget(&sample.device);
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
            counters.storing_since.set(std::time::Instant::now());
            let result = self.buffer.append(records.clone()).await;
            counters.storing_since.take();
            let error = match result {
                Ok(_) => {
                    counters.committed.fetch_add(count, Ordering::Relaxed);
                    if let Some(since) = counters.failing_since.take() {
                        info!(
                            failing_for = ?since.elapsed(),
                            "buffer commits work again; nothing was lost"
                        );
                    }
                    return true;
                }
                Err(e) => e,
            };
            let failures = counters.commit_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if counters
                .failing_since
                .set_if_unset(std::time::Instant::now())
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
