//! The store-and-forward buffer: every message Kite accepts lives here until
//! the broker has acknowledged it.
//!
//! # Guarantee
//! A sample counts as accepted once the transaction that inserted it has
//! committed. From then on it is either delivered (the broker sent a QoS 1
//! PUBACK matched to its `seq`, and only then is the row deleted) or dropped
//! by the size limit, which is counted (`dropped` in the `meta` table, the
//! status message and the log). Rows survive restarts and kill -9; with
//! `durability = "full"` every commit is fsynced and they also survive power
//! loss. With `"normal"` (WAL, synchronous=NORMAL) a power cut can lose the
//! last commits but never corrupts the file.
//!
//! # Sequence numbers
//! `seq` is the row's `INTEGER PRIMARY KEY AUTOINCREMENT`: SQLite never hands
//! out a value again, even after the rows are deleted or the file is reopened,
//! so `seq` only increases across the life of the buffer.
//!
//! # On-disk format (`<data_dir>/buffer.sqlite3`, `PRAGMA user_version = 2`)
//! ```sql
//! CREATE TABLE messages (
//!     seq    INTEGER PRIMARY KEY AUTOINCREMENT,
//!     ts     INTEGER NOT NULL,  -- ms since the Unix epoch, when the sample was read
//!     device TEXT    NOT NULL,  -- the device, or for events the plug-in
//!     body   TEXT    NOT NULL,  -- telemetry: the JSON `points` object;
//!                               -- events: the event's JSON object without `seq`
//!     kind   INTEGER NOT NULL DEFAULT 0  -- 0 telemetry, 1 event (added in version 2)
//! );
//! CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);  -- 'dropped'
//! ```
//! The published message is assembled from a row: `{"seq", "ts", "device",
//! "points"}` for telemetry, the event's object with `seq` first for events.
//! A version 1 file is upgraded in place when opened.
//!
//! # Size limit
//! The size of a row is `length(device) + length(body) + ROW_OVERHEAD`; when
//! the sum passes `max_bytes`, the oldest rows go, in the same transaction
//! as the insert that made room necessary.
//!
//! [`Buffer`] is synchronous and owns its connection; [`BufferHandle`] runs
//! it on a thread of its own and talks to it over a bounded channel.

use std::path::{Path, PathBuf};
use std::thread;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

use crate::config::Durability;

/// Bytes counted per row on top of its text, for the row header and the index.
pub const ROW_OVERHEAD: u64 = 32;
const SCHEMA_VERSION: i64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("buffer database {path} has format version {found}, this Kite knows version {SCHEMA_VERSION}")]
    Version { path: PathBuf, found: i64 },
    #[error("buffer: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the buffer thread has stopped")]
    Stopped,
}

/// What a row holds, and so where it is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Telemetry = 0,
    Event = 1,
}

impl Kind {
    fn from_column(value: i64) -> Self {
        if value == Kind::Event as i64 {
            Kind::Event
        } else {
            Kind::Telemetry
        }
    }
}

/// A message to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    pub kind: Kind,
    pub ts_ms: i64,
    pub device: String,
    pub body: String,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: i64,
    pub kind: Kind,
    pub ts_ms: i64,
    pub device: String,
    pub body: String,
}

impl NewRecord {
    fn size(&self) -> u64 {
        record_size(&self.device, &self.body)
    }
}

fn record_size(device: &str, body: &str) -> u64 {
    (device.len() + body.len()) as u64 + ROW_OVERHEAD
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub rows: u64,
    pub bytes: u64,
    /// Rows dropped by the size limit over the life of the buffer.
    pub dropped: u64,
    /// The `seq` of the newest row ever stored (0 if none).
    pub last_seq: i64,
    /// Read time of the oldest row still buffered.
    pub oldest_ts_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    pub last_seq: i64,
    /// Rows the size limit dropped to make room.
    pub dropped: u64,
}

pub struct Buffer {
    conn: Connection,
    max_bytes: u64,
    rows: u64,
    bytes: u64,
    dropped: u64,
    last_seq: i64,
}

impl Buffer {
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("buffer.sqlite3")
    }

    pub fn open(path: &Path, durability: Durability, max_bytes: u64) -> Result<Self, BufferError> {
        let opened = || -> Result<Connection, rusqlite::Error> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            let synchronous = match durability {
                Durability::Normal => "NORMAL",
                Durability::Full => "FULL",
            };
            conn.pragma_update(None, "synchronous", synchronous)?;
            Ok(conn)
        };
        let conn = opened().map_err(|source| BufferError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version == 0 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS messages (
                     seq INTEGER PRIMARY KEY AUTOINCREMENT,
                     ts INTEGER NOT NULL,
                     device TEXT NOT NULL,
                     body TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0);
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
            version = 1;
        }
        if version == 1 {
            conn.execute_batch(
                "BEGIN;
                 ALTER TABLE messages ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
            version = 2;
        }
        if version != SCHEMA_VERSION {
            return Err(BufferError::Version {
                path: path.to_path_buf(),
                found: version,
            });
        }
        let (rows, bytes): (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(length(CAST(device AS BLOB)) + length(CAST(body AS BLOB))), 0) FROM messages",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let dropped: i64 =
            conn.query_row("SELECT value FROM meta WHERE key = 'dropped'", [], |r| {
                r.get(0)
            })?;
        let last_seq: i64 = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'messages'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        Ok(Self {
            conn,
            max_bytes,
            rows: rows as u64,
            bytes: bytes as u64 + rows as u64 * ROW_OVERHEAD,
            dropped: dropped as u64,
            last_seq,
        })
    }

    /// Stores `records` in one transaction, in order, then drops the oldest
    /// rows while the buffer is over its limit.
    pub fn append(&mut self, records: &[NewRecord]) -> Result<Appended, BufferError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut last_seq = self.last_seq;
        let mut added = 0;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (ts, device, body, kind) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for record in records {
                insert.execute(params![
                    record.ts_ms,
                    record.device,
                    record.body,
                    record.kind as i64
                ])?;
                last_seq = tx.last_insert_rowid();
                added += record.size();
            }
        }
        let mut bytes = self.bytes + added;
        let mut rows = self.rows + records.len() as u64;
        let mut dropped = 0;
        if bytes > self.max_bytes {
            let mut select = tx.prepare_cached(
                "SELECT seq, length(CAST(device AS BLOB)) + length(CAST(body AS BLOB)) FROM messages ORDER BY seq LIMIT 512",
            )?;
            let mut delete = tx.prepare_cached("DELETE FROM messages WHERE seq <= ?1")?;
            while bytes > self.max_bytes && rows > 0 {
                let mut cut = None;
                let oldest =
                    select.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
                for row in oldest {
                    let (seq, size) = row?;
                    bytes -= size as u64 + ROW_OVERHEAD;
                    rows -= 1;
                    dropped += 1;
                    cut = Some(seq);
                    if bytes <= self.max_bytes {
                        break;
                    }
                }
                match cut {
                    Some(seq) => delete.execute([seq])?,
                    None => break,
                };
            }
            tx.execute(
                "UPDATE meta SET value = value + ?1 WHERE key = 'dropped'",
                [dropped as i64],
            )?;
        }
        tx.commit()?;
        self.last_seq = last_seq;
        self.bytes = bytes;
        self.rows = rows;
        self.dropped += dropped;
        Ok(Appended { last_seq, dropped })
    }

    /// Up to `limit` rows with `seq > after`, oldest first.
    pub fn read_after(&self, after: i64, limit: usize) -> Result<Vec<Record>, BufferError> {
        let mut select = self.conn.prepare_cached(
            "SELECT seq, ts, device, body, kind FROM messages WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = select.query_map(params![after, limit as i64], |r| {
            Ok(Record {
                seq: r.get(0)?,
                kind: Kind::from_column(r.get(4)?),
                ts_ms: r.get(1)?,
                device: r.get(2)?,
                body: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes acknowledged rows; seqs already gone (dropped, or acked
    /// twice after a resend) are ignored.
    pub fn ack(&mut self, seqs: &[i64]) -> Result<(), BufferError> {
        let tx = self.conn.transaction()?;
        let mut freed = 0;
        let mut gone = 0;
        {
            let mut delete = tx.prepare_cached(
                "DELETE FROM messages WHERE seq = ?1 RETURNING length(CAST(device AS BLOB)) + length(CAST(body AS BLOB))",
            )?;
            for seq in seqs {
                if let Some(size) = delete.query_row([seq], |r| r.get::<_, i64>(0)).optional()? {
                    freed += size as u64 + ROW_OVERHEAD;
                    gone += 1;
                }
            }
        }
        tx.commit()?;
        self.bytes -= freed;
        self.rows -= gone;
        Ok(())
    }

    pub fn stats(&self) -> Result<Stats, BufferError> {
        let oldest_ts_ms = self
            .conn
            .query_row("SELECT ts FROM messages ORDER BY seq LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(Stats {
            rows: self.rows,
            bytes: self.bytes,
            dropped: self.dropped,
            last_seq: self.last_seq,
            oldest_ts_ms,
        })
    }
}

enum Command {
    Append(
        Vec<NewRecord>,
        oneshot::Sender<Result<Appended, BufferError>>,
    ),
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

    pub async fn append(&self, records: Vec<NewRecord>) -> Result<Appended, BufferError> {
        self.call(|reply| Command::Append(records, reply)).await
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
    let mut next = commands.blocking_recv();
    while let Some(command) = next.take() {
        match command {
            Command::Append(records, reply) => {
                let result = buffer.append(&records);
                match &result {
                    Ok(appended) => {
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
                    Err(e) => error!(error = %e, rows = records.len(), "buffer write failed"),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn record(i: usize, body_len: usize) -> NewRecord {
        NewRecord {
            kind: if i.is_multiple_of(3) {
                Kind::Event
            } else {
                Kind::Telemetry
            },
            ts_ms: i as i64,
            device: "dev".into(),
            body: "x".repeat(body_len),
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(Vec<usize>),
        Read(usize),
        AckOldest(usize),
        AckEveryOther,
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => proptest::collection::vec(0usize..400, 1..8).prop_map(Op::Append),
            2 => (1usize..10).prop_map(Op::Read),
            2 => (1usize..6).prop_map(Op::AckOldest),
            1 => Just(Op::AckEveryOther),
            1 => Just(Op::Crash),
        ]
    }

    /// The in-memory model: what the buffer must hold.
    #[derive(Default)]
    struct Model {
        rows: BTreeMap<i64, NewRecord>,
        next_seq: i64,
        dropped: u64,
    }

    impl Model {
        fn bytes(&self) -> u64 {
            self.rows.values().map(NewRecord::size).sum()
        }

        fn append(&mut self, records: &[NewRecord], max_bytes: u64) {
            for record in records {
                self.next_seq += 1;
                self.rows.insert(self.next_seq, record.clone());
            }
            while self.bytes() > max_bytes {
                let (&seq, _) = self.rows.iter().next().unwrap();
                self.rows.remove(&seq);
                self.dropped += 1;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn buffer_matches_model_through_crashes(ops in proptest::collection::vec(op(), 1..40)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("b.sqlite3");
            let max_bytes = 2_000;
            let mut buffer = Buffer::open(&path, Durability::Normal, max_bytes).unwrap();
            let mut model = Model::default();
            let mut counter = 0;
            for op in ops {
                match op {
                    Op::Append(sizes) => {
                        let records: Vec<_> = sizes.iter().map(|&s| { counter += 1; record(counter, s) }).collect();
                        let appended = buffer.append(&records).unwrap();
                        model.append(&records, max_bytes);
                        prop_assert_eq!(appended.last_seq, model.next_seq);
                    }
                    Op::Read(limit) => {
                        let after = model.rows.keys().next().copied().unwrap_or(0);
                        let got = buffer.read_after(after, limit).unwrap();
                        let want: Vec<i64> = model.rows.range(after + 1..).take(limit).map(|(s, _)| *s).collect();
                        prop_assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), want);
                    }
                    Op::AckOldest(n) => {
                        let seqs: Vec<i64> = model.rows.keys().take(n).copied().collect();
                        buffer.ack(&seqs).unwrap();
                        for seq in seqs { model.rows.remove(&seq); }
                    }
                    Op::AckEveryOther => {
                        let seqs: Vec<i64> = model.rows.keys().step_by(2).copied().collect();
                        // Acking twice (a duplicate PUBACK after a resend) changes nothing.
                        buffer.ack(&seqs).unwrap();
                        buffer.ack(&seqs).unwrap();
                        for seq in seqs { model.rows.remove(&seq); }
                    }
                    Op::Crash => {
                        drop(buffer);
                        buffer = Buffer::open(&path, Durability::Normal, max_bytes).unwrap();
                    }
                }
                let stats = buffer.stats().unwrap();
                prop_assert_eq!(stats.rows, model.rows.len() as u64);
                prop_assert_eq!(stats.bytes, model.bytes());
                prop_assert_eq!(stats.dropped, model.dropped);
                prop_assert_eq!(stats.last_seq, model.next_seq);
                let all = buffer.read_after(0, usize::MAX >> 1).unwrap();
                let stored: Vec<(i64, NewRecord)> = all.into_iter().map(|r| (r.seq, NewRecord { kind: r.kind, ts_ms: r.ts_ms, device: r.device, body: r.body })).collect();
                let expected: Vec<(i64, NewRecord)> = model.rows.iter().map(|(s, r)| (*s, r.clone())).collect();
                prop_assert_eq!(stored, expected);
            }
        }
    }

    #[test]
    fn a_version_1_buffer_is_upgraded_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite3");
        let v1 = Connection::open(&path).unwrap();
        v1.execute_batch(
            "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, device TEXT NOT NULL, body TEXT NOT NULL);
             CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT INTO meta VALUES ('dropped', 3);
             INSERT INTO messages (ts, device, body) VALUES (5, 'd', '{}');
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(v1);
        let buffer = Buffer::open(&path, Durability::Normal, 1 << 20).unwrap();
        let rows = buffer.read_after(0, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].seq, rows[0].kind, rows[0].ts_ms),
            (1, Kind::Telemetry, 5)
        );
        assert_eq!(buffer.stats().unwrap().dropped, 3);
    }

    #[test]
    fn seq_is_never_reused_even_when_everything_was_acked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite3");
        let mut buffer = Buffer::open(&path, Durability::Full, 1 << 20).unwrap();
        let appended = buffer.append(&[record(1, 10), record(2, 10)]).unwrap();
        buffer.ack(&[1, 2]).unwrap();
        drop(buffer);
        let mut buffer = Buffer::open(&path, Durability::Full, 1 << 20).unwrap();
        assert_eq!(buffer.stats().unwrap().rows, 0);
        let next = buffer.append(&[record(3, 10)]).unwrap();
        assert_eq!(next.last_seq, appended.last_seq + 1);
    }
}
