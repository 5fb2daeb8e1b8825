//! The buffer on a thread of its own, reached over a bounded channel: the
//! async side of the gateway never waits on SQLite.

use std::sync::Arc;
use std::thread;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

use super::{Appended, Buffer, BufferError, NewRecord, Record, Stats};

enum Command {
    Append(
        Arc<[NewRecord]>,
        oneshot::Sender<Result<Appended, BufferError>>,
    ),
    SetAside(i64, String, oneshot::Sender<Result<bool, BufferError>>),
    ReadAfter(
        i64,
        usize,
        oneshot::Sender<Result<Vec<Record>, BufferError>>,
    ),
    Ack(Vec<i64>),
    Stats(oneshot::Sender<Result<Stats, BufferError>>),
}

/// The buffer, running on its own thread. Cloneable; the thread ends when
/// the last handle is dropped, after finishing every queued command.
#[derive(Clone)]
pub struct BufferHandle {
    commands: mpsc::Sender<Command>,
    last_seq: watch::Receiver<i64>,
}

impl BufferHandle {
    /// Starts the buffer thread; `join` it (via the returned handle) after
    /// dropping every `BufferHandle` to be sure the last commit is done.
    pub fn spawn(buffer: Buffer) -> (Self, thread::JoinHandle<()>) {
        let (commands, receiver) = mpsc::channel(256);
        let (seq_tx, last_seq) = watch::channel(buffer.last_seq);
        let thread = thread::Builder::new()
            .name("kite-buffer".into())
            .spawn(move || serve(buffer, receiver, seq_tx))
            .expect("spawn the buffer thread");
        (Self { commands, last_seq }, thread)
    }

    async fn call<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, BufferError>>) -> Command,
    ) -> Result<T, BufferError> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| BufferError::Stopped)?;
        response.await.map_err(|_| BufferError::Stopped)?
    }

    /// Stores `records` in one transaction; on an error nothing is stored
    /// and the caller still holds the records to try again.
    pub async fn append(&self, records: Arc<[NewRecord]>) -> Result<Appended, BufferError> {
        self.call(|reply| Command::Append(records, reply)).await
    }

    /// See [`Buffer::set_aside`].
    pub async fn set_aside(&self, seq: i64, reason: String) -> Result<bool, BufferError> {
        self.call(|reply| Command::SetAside(seq, reason, reply))
            .await
    }

    pub async fn read_after(&self, after: i64, limit: usize) -> Result<Vec<Record>, BufferError> {
        self.call(|reply| Command::ReadAfter(after, limit, reply))
            .await
    }

    pub async fn ack(&self, seqs: Vec<i64>) -> Result<(), BufferError> {
        self.commands
            .send(Command::Ack(seqs))
            .await
            .map_err(|_| BufferError::Stopped)
    }

    pub async fn stats(&self) -> Result<Stats, BufferError> {
        self.call(Command::Stats).await
    }

    /// The newest stored `seq`; changes wake `changed()` waiters.
    pub fn last_seq(&self) -> watch::Receiver<i64> {
        self.last_seq.clone()
    }
}

fn serve(mut buffer: Buffer, mut commands: mpsc::Receiver<Command>, last_seq: watch::Sender<i64>) {
    // The `keep_every` last logged; none yet by this process.
    let mut thinning_logged = 0;
    let mut next = commands.blocking_recv();
    while let Some(command) = next.take() {
        match command {
            Command::Append(records, reply) => {
                let result = buffer.append(&records);
                match &result {
                    Ok(appended) => {
                        if appended.thinned > 0 {
                            let (thinned_total, keep_every) = buffer.thinning();
                            // Once per doubling: thinning goes on with every
                            // append while the outage lasts.
                            if keep_every != thinning_logged {
                                warn!(
                                    keep_every,
                                    thinned_total,
                                    max_bytes = buffer.max_bytes,
                                    "buffer full: thinning the oldest samples (on_full = \"downsample\")"
                                );
                                thinning_logged = keep_every;
                            }
                        }
                        if appended.dropped > 0 {
                            warn!(
                                dropped = appended.dropped,
                                dropped_total = buffer.dropped,
                                max_bytes = buffer.max_bytes,
                                "buffer full: dropped the oldest messages"
                            );
                        }
                        last_seq.send_replace(appended.last_seq);
                    }
                    Err(e) => warn!(error = %e, rows = records.len(), "buffer write failed"),
                }
                let _ = reply.send(result);
            }
            Command::SetAside(seq, reason, reply) => {
                let result = buffer.set_aside(seq, &reason);
                if let Ok(true) = result {
                    error!(
                        seq,
                        reason,
                        set_aside_total = buffer.set_aside,
                        "a message the broker cannot take was SET ASIDE (kept in the buffer's set_aside table)"
                    );
                }
                let _ = reply.send(result);
            }
            Command::ReadAfter(after, limit, reply) => {
                let _ = reply.send(buffer.read_after(after, limit));
            }
            Command::Stats(reply) => {
                let _ = reply.send(buffer.stats());
            }
            Command::Ack(mut seqs) => {
                // Acks arrive one PUBACK burst at a time: delete them together.
                loop {
                    match commands.try_recv() {
                        Ok(Command::Ack(more)) => seqs.extend(more),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if let Err(e) = buffer.ack(&seqs) {
                    // The rows stay and are sent again: duplicates, never loss.
                    error!(error = %e, rows = seqs.len(), "buffer could not delete acknowledged rows");
                }
            }
        }
        if next.is_none() {
            next = commands.blocking_recv();
        }
    }
}
