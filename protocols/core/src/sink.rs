//! Where a poller hands what it read: the gateway's bounded sample channel.
//!
//! A sample that was read is sent. While the gateway runs, a full channel
//! makes the poller wait (backpressure, never loss). Once the poller is told
//! to stop, it still hands over what it holds, waiting at most the sink's
//! grace period for room; a sample that cannot go even then is counted in
//! [`SampleSink::unsent`], never dropped silently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Sample;

#[derive(Debug, Clone)]
pub struct SampleSink {
    samples: mpsc::Sender<Sample>,
    grace: Duration,
    unsent: Arc<AtomicU64>,
}

/// The sample was not handed over (and is counted); the poller should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the gateway no longer takes samples")]
pub struct Unsent;

impl SampleSink {
    /// `unsent` counts the samples that could not be handed over.
    pub fn new(samples: mpsc::Sender<Sample>, grace: Duration, unsent: Arc<AtomicU64>) -> Self {
        Self {
            samples,
            grace,
            unsent,
        }
    }

    /// Hands `sample` over: waits for room while `stop` is not cancelled,
    /// then at most the grace period.
    pub async fn send(&self, sample: Sample, stop: &CancellationToken) -> Result<(), Unsent> {
        // `reserve` keeps the sample out of any future that a cancelled
        // branch would drop.
        let permit = tokio::select! {
            biased;
            permit = self.samples.reserve() => permit.ok(),
            _ = stop.cancelled() => tokio::time::timeout(self.grace, self.samples.reserve())
                .await
                .ok()
                .and_then(Result::ok),
        };
        match permit {
            Some(permit) => {
                permit.send(sample);
                Ok(())
            }
            None => {
                self.count_unsent(1);
                Err(Unsent)
            }
        }
    }

    /// Hands over every sample in order; after the first that cannot go,
    /// the rest are counted without waiting again.
    pub async fn send_all(
        &self,
        samples: impl IntoIterator<Item = Sample>,
        stop: &CancellationToken,
    ) -> Result<(), Unsent> {
        let mut samples = samples.into_iter();
        while let Some(sample) = samples.next() {
            if self.send(sample, stop).await.is_err() {
                self.count_unsent(samples.count() as u64);
                return Err(Unsent);
            }
        }
        Ok(())
    }

    fn count_unsent(&self, count: u64) {
        if count > 0 {
            self.unsent.fetch_add(count, Ordering::Relaxed);
            tracing::error!(
                samples = count,
                "samples read but not handed to the buffer before stopping: lost"
            );
        }
    }

    /// Samples that could not be handed over, over the life of this counter.
    pub fn unsent(&self) -> u64 {
        self.unsent.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ts_ms: i64) -> Sample {
        Sample {
            device: "d".into(),
            ts_ms,
            points: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_stopped_poller_still_hands_over_what_it_read_when_there_is_room() {
        let (tx, mut rx) = mpsc::channel(4);
        let sink = SampleSink::new(tx, Duration::from_secs(1), Arc::default());
        let stop = CancellationToken::new();
        stop.cancel();
        sink.send_all([sample(1), sample(2)], &stop).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().ts_ms, 1);
        assert_eq!(rx.recv().await.unwrap().ts_ms, 2);
        assert_eq!(sink.unsent(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_poller_waits_the_grace_for_room_then_counts_what_is_left() {
        let (tx, mut rx) = mpsc::channel(1);
        let sink = SampleSink::new(tx, Duration::from_secs(5), Arc::default());
        let stop = CancellationToken::new();
        sink.send(sample(1), &stop).await.unwrap();
        stop.cancel();
        // Room appears within the grace: the sample goes.
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            let first = rx.recv().await.unwrap().ts_ms;
            (first, rx)
        });
        sink.send(sample(2), &stop).await.unwrap();
        let (first, mut rx) = reader.await.unwrap();
        assert_eq!(first, 1);
        // No room within the grace: this one and the rest are counted.
        assert_eq!(
            sink.send_all([sample(3), sample(4), sample(5)], &stop)
                .await,
            Err(Unsent)
        );
        assert_eq!(sink.unsent(), 3);
        assert_eq!(rx.recv().await.unwrap().ts_ms, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn while_running_a_full_channel_means_waiting_not_loss() {
        let (tx, mut rx) = mpsc::channel(1);
        let sink = SampleSink::new(tx, Duration::from_millis(1), Arc::default());
        let stop = CancellationToken::new();
        sink.send(sample(1), &stop).await.unwrap();
        let sending = tokio::spawn({
            let (sink, stop) = (sink.clone(), stop.clone());
            async move { sink.send(sample(2), &stop).await }
        });
        // Far longer than the grace: a running poller keeps waiting.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!sending.is_finished());
        assert_eq!(rx.recv().await.unwrap().ts_ms, 1);
        assert_eq!(sending.await.unwrap(), Ok(()));
        assert_eq!(rx.recv().await.unwrap().ts_ms, 2);
        assert_eq!(sink.unsent(), 0);
    }
}
