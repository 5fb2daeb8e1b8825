//! The store-and-forward buffer: every message Kite accepts lives here until
//! the broker has acknowledged it.
//!
//! # Guarantee
//! A sample counts as accepted once the transaction that inserted it has
//! committed. From then on it is either delivered (the broker sent a QoS 1
//! PUBACK matched to its `seq`, and only then is the row deleted) or dropped
//! by the size limit, which is counted (`dropped` in the `meta` table, the
//! status message and the log), or set aside because the broker cannot take
//! it (too large for its message size limit): moved to the `set_aside`
//! table, counted (`set_aside`), logged, kept for inspection. Rows survive restarts and kill -9; with
//! `durability = "full"` every commit is fsynced and they also survive power
//! loss. With `"normal"` (WAL, synchronous=NORMAL) a power cut can lose the
//! last commits but never corrupts the file.
//!
//! # Sequence numbers
//! `seq` is the row's `INTEGER PRIMARY KEY AUTOINCREMENT`: SQLite never hands
//! out a value again, even after the rows are deleted or the file is reopened,
//! so `seq` only increases across the life of the buffer.
//!
//! # On-disk format (`<data_dir>/buffer.sqlite3`, `PRAGMA user_version = 3`)
//! ```sql
//! CREATE TABLE messages (
//!     seq    INTEGER PRIMARY KEY AUTOINCREMENT,
//!     ts     INTEGER NOT NULL,  -- ms since the Unix epoch, when the sample was read
//!     device TEXT    NOT NULL,  -- the device; for events the plug-in
//!     body   TEXT    NOT NULL,  -- telemetry: the JSON `points` object;
//!                               -- events: the event's JSON object without `seq`;
//!                               -- write results: the result's JSON object
//!     kind   INTEGER NOT NULL DEFAULT 0  -- 0 telemetry, 1 event, 2 write result
//!                                        -- (added in version 2)
//! );
//! CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);  -- 'dropped', 'set_aside'
//! -- Rows the broker cannot take, moved out of `messages` (added in version 3).
//! CREATE TABLE set_aside (seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL,
//!     device TEXT NOT NULL, body TEXT NOT NULL, kind INTEGER NOT NULL,
//!     reason TEXT NOT NULL);
//! ```
//! The published message is made from a row by `uplink::wire`. Version 1 and
//! 2 files are upgraded in place when opened.
//!
//! # Size limit
//! The size of a row is `length(device) + length(body) + ROW_OVERHEAD`; when
//! the sum passes `max_bytes`, the oldest rows go, in the same transaction
//! as the insert that made room necessary.
//!
//! # A damaged file
//! [`Buffer::open`] first runs [`check`] on an existing file. If it is not a
//! database or the check finds problems, every row that can still be read
//! is copied, with its `seq`, into a new file ([`recover`]); the damaged
//! file and its `-wal` and `-shm` are renamed to
//! `buffer.sqlite3.damaged-<unix seconds>` (plus the same suffixes), the new
//! file takes its place, and the daemon goes on, logging at ERROR level where
//! the old file went, how many rows came back and which seqs could not be
//! read. Nothing is deleted. The new file continues `seq` after the highest
//! recovered row or the damaged file's `sqlite_sequence`, whichever is
//! higher. Recovery reads through SQLite's b-trees: a damaged leaf page
//! loses its own rows, a damaged interior page every row below it. Errors
//! other than damage (permissions, a full disk) fail the open as before.
//!
//! [`Buffer`] is synchronous and owns its connection; [`BufferHandle`] runs
//! it on a thread of its own and talks to it over a bounded channel.

use std::ffi::OsString;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{
    params, Connection, ErrorCode, OpenFlags, OptionalExtension, Statement, TransactionBehavior,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, warn};

use crate::config::Durability;

/// Bytes counted per row on top of its text, for the row header and the index.
pub const ROW_OVERHEAD: u64 = 32;
const SCHEMA_VERSION: i64 = 3;
/// Rows per query when [`BufferReader::rows`] pages through the table.
const PAGE_ROWS: usize = 512;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists")]
    Exists(PathBuf),
    #[error("the buffer thread has stopped")]
    Stopped,
}

/// What a row holds, and so where it is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Telemetry = 0,
    Event = 1,
    /// The result of a write from the cloud, for `{device}/set/result`.
    WriteResult = 2,
}

impl Kind {
    fn from_column(value: i64) -> Self {
        match value {
            1 => Kind::Event,
            2 => Kind::WriteResult,
            _ => Kind::Telemetry,
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
    /// Rows moved to `set_aside` because the broker cannot take them.
    pub set_aside: u64,
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
    set_aside: u64,
    last_seq: i64,
}

impl Buffer {
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("buffer.sqlite3")
    }

    /// Opens the buffer, creating or upgrading it; a damaged file is first
    /// replaced by what can be recovered from it (see the module header).
    pub fn open(path: &Path, durability: Durability, max_bytes: u64) -> Result<Self, BufferError> {
        if path.exists() {
            replace_if_damaged(path)?;
        }
        let opened = || -> Result<Connection, rusqlite::Error> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
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
        migrate(&conn, path)?;
        let (rows, bytes): (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(length(CAST(device AS BLOB)) + length(CAST(body AS BLOB))), 0) FROM messages",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let dropped = read_counter(&conn, "dropped")?.unwrap_or(0);
        let set_aside = read_counter(&conn, "set_aside")?.unwrap_or(0);
        let last_seq = read_last_seq(&conn)?.unwrap_or(0);
        Ok(Self {
            conn,
            max_bytes,
            rows: rows as u64,
            bytes: bytes as u64 + rows as u64 * ROW_OVERHEAD,
            dropped,
            set_aside,
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
        let rows = select.query_map(params![after, limit as i64], record_from_row)?;
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

    /// Moves the row `seq` out of the messages into `set_aside`, with the
    /// reason; false when it is no longer buffered.
    pub fn set_aside(&mut self, seq: i64, reason: &str) -> Result<bool, BufferError> {
        let tx = self.conn.transaction()?;
        let moved = tx.execute(
            "INSERT INTO set_aside (seq, ts, device, body, kind, reason)
             SELECT seq, ts, device, body, kind, ?2 FROM messages WHERE seq = ?1",
            params![seq, reason],
        )?;
        if moved == 0 {
            return Ok(false);
        }
        let size: i64 = tx.query_row(
            "DELETE FROM messages WHERE seq = ?1 RETURNING length(CAST(device AS BLOB)) + length(CAST(body AS BLOB))",
            [seq],
            |r| r.get(0),
        )?;
        tx.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'set_aside'",
            [],
        )?;
        tx.commit()?;
        self.rows -= 1;
        self.bytes -= size as u64 + ROW_OVERHEAD;
        self.set_aside += 1;
        Ok(true)
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
            set_aside: self.set_aside,
            last_seq: self.last_seq,
            oldest_ts_ms,
        })
    }
}

/// Creates the tables of a new file, or upgrades an older one in place.
fn migrate(conn: &Connection, path: &Path) -> Result<(), BufferError> {
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
    if version == 2 {
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS set_aside (
                 seq INTEGER PRIMARY KEY,
                 ts INTEGER NOT NULL,
                 device TEXT NOT NULL,
                 body TEXT NOT NULL,
                 kind INTEGER NOT NULL,
                 reason TEXT NOT NULL);
             INSERT OR IGNORE INTO meta (key, value) VALUES ('set_aside', 0);
             PRAGMA user_version = 3;
             COMMIT;",
        )?;
        version = 3;
    }
    if version != SCHEMA_VERSION {
        return Err(BufferError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    Ok(())
}

/// A counter of the `meta` table (`dropped`, `set_aside`).
fn read_counter(conn: &Connection, key: &str) -> rusqlite::Result<Option<u64>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
        r.get::<_, i64>(0)
    })
    .optional()
    .map(|value| value.map(|v| v as u64))
}

/// The highest `seq` AUTOINCREMENT has handed out, if it has.
fn read_last_seq(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT seq FROM sqlite_sequence WHERE name = 'messages'",
        [],
        |r| r.get(0),
    )
    .optional()
}

/// Decodes `SELECT seq, ts, device, body, kind`.
fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        seq: r.get(0)?,
        kind: Kind::from_column(r.get(4)?),
        ts_ms: r.get(1)?,
        device: r.get(2)?,
        body: r.get(3)?,
    })
}

/// Opens `path` for reading only: its content is not changed (SQLite may
/// create an empty `-wal` and `-shm` beside a WAL file), and the daemon can
/// go on writing (WAL readers and the writer do not block each other).
fn open_read_only(path: &Path) -> Result<Connection, BufferError> {
    let open = || {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(conn)
    };
    open().map_err(|source| BufferError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs SQLite's `integrity_check` on the buffer file at `path`,
/// read-only. Returns the problems it reports, empty when the file is
/// sound; a file that is not a database at all is a problem, not an error.
///
/// The daemon runs it at every start. `quick_check` would skip only the
/// matching of index entries to rows, and the one index here is meta's
/// one-row primary key: on a 100k-row (45 MB) and a 640k-row (250 MB)
/// buffer the two took the same time (about 40 ms and 0.27 s, warm cache).
pub fn check(path: &Path) -> Result<Vec<String>, BufferError> {
    let conn = open_read_only(path)?;
    let lines = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut check| {
            check
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        });
    match lines {
        Ok(lines) if lines == ["ok"] => Ok(Vec::new()),
        Ok(lines) => Ok(lines),
        Err(e) if is_damage(&e) => Ok(vec![e.to_string()]),
        Err(source) => Err(BufferError::Open {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// What a buffer holds, for `kite buffer inspect`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspection {
    pub rows: u64,
    /// As counted against `max_bytes`.
    pub bytes: u64,
    pub dropped: u64,
    pub set_aside: u64,
    pub last_seq: i64,
    /// Read times of the oldest and newest buffered samples.
    pub oldest_ts_ms: Option<i64>,
    pub newest_ts_ms: Option<i64>,
    /// By device (for events, the plug-in), sorted by name.
    pub devices: Vec<DeviceStats>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStats {
    pub device: String,
    pub rows: u64,
    pub bytes: u64,
    pub oldest_ts_ms: i64,
    pub newest_ts_ms: i64,
}

/// A buffer file opened read-only, for the `kite buffer` tools.
pub struct BufferReader {
    conn: Connection,
}

impl BufferReader {
    pub fn open(path: &Path) -> Result<Self, BufferError> {
        Ok(Self {
            conn: open_read_only(path)?,
        })
    }

    pub fn inspect(&self) -> Result<Inspection, BufferError> {
        // One snapshot for the rows, the drop counter and the last seq.
        let snapshot = self.conn.unchecked_transaction()?;
        let devices = snapshot
            .prepare(
                "SELECT device, count(*), sum(length(CAST(device AS BLOB)) + length(CAST(body AS BLOB))), min(ts), max(ts)
                 FROM messages GROUP BY device ORDER BY device",
            )?
            .query_map([], |r| {
                let rows = r.get::<_, i64>(1)? as u64;
                Ok(DeviceStats {
                    device: r.get(0)?,
                    rows,
                    bytes: r.get::<_, i64>(2)? as u64 + rows * ROW_OVERHEAD,
                    oldest_ts_ms: r.get(3)?,
                    newest_ts_ms: r.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Inspection {
            rows: devices.iter().map(|d| d.rows).sum(),
            bytes: devices.iter().map(|d| d.bytes).sum(),
            dropped: read_counter(&snapshot, "dropped")?.unwrap_or(0),
            set_aside: read_counter(&snapshot, "set_aside")?.unwrap_or(0),
            last_seq: read_last_seq(&snapshot)?.unwrap_or(0),
            oldest_ts_ms: devices.iter().map(|d| d.oldest_ts_ms).min(),
            newest_ts_ms: devices.iter().map(|d| d.newest_ts_ms).max(),
            devices,
        })
    }

    /// Every row, oldest first, or only those of `device`. Reads
    /// [`PAGE_ROWS`] at a time, each page a short read of its own, so memory
    /// stays bounded and the daemon's checkpoints are not held back.
    pub fn rows<'r>(&'r self, device: Option<&'r str>) -> Rows<'r> {
        Rows {
            conn: &self.conn,
            device,
            after: 0,
            page: Vec::new().into_iter(),
            done: false,
        }
    }
}

/// See [`BufferReader::rows`].
pub struct Rows<'r> {
    conn: &'r Connection,
    device: Option<&'r str>,
    after: i64,
    page: std::vec::IntoIter<Record>,
    done: bool,
}

impl Rows<'_> {
    fn next_page(&self) -> Result<Vec<Record>, BufferError> {
        let mut select = self.conn.prepare_cached(
            "SELECT seq, ts, device, body, kind FROM messages
             WHERE seq > ?1 AND (?2 IS NULL OR device = ?2) ORDER BY seq LIMIT ?3",
        )?;
        let rows = select.query_map(
            params![self.after, self.device, PAGE_ROWS as i64],
            record_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Iterator for Rows<'_> {
    type Item = Result<Record, BufferError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(record) = self.page.next() {
            return Some(Ok(record));
        }
        if self.done {
            return None;
        }
        match self.next_page() {
            Ok(page) => {
                self.done = page.len() < PAGE_ROWS;
                if let Some(last) = page.last() {
                    self.after = last.seq;
                }
                self.page = page.into_iter();
                self.page.next().map(Ok)
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Ranges of `seq`, in increasing order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqRanges(pub Vec<RangeInclusive<i64>>);

impl SeqRanges {
    /// Adds a range above the others, merging it with the last one when they touch.
    fn add(&mut self, range: RangeInclusive<i64>) {
        if let Some(last) = self.0.last_mut() {
            if *range.start() <= last.end().saturating_add(1) {
                *last = *last.start()..=*range.end().max(last.end());
                return;
            }
        }
        self.0.push(range);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for SeqRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        for (i, range) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match (*range.start(), *range.end()) {
                (first, i64::MAX) => write!(f, "{first} and above")?,
                (first, last) if first == last => write!(f, "{first}")?,
                (first, last) => write!(f, "{first}-{last}")?,
            }
        }
        Ok(())
    }
}

/// What [`recover`] saved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    pub rows: u64,
    /// The new file hands out `seq` from here on.
    pub last_seq: i64,
    pub dropped: u64,
    /// Seqs whose pages could not be read: their rows, if they were still
    /// buffered, are lost.
    pub unreadable: SeqRanges,
}

/// Copies every row that can still be read from the buffer file `damaged`
/// into a new buffer file `output`, with its `seq`, `ts`, `device`, `body`
/// and `kind`, and the `dropped` counter if it can be read. `damaged` is
/// only read. `output` must not exist; it is written as `<output>.partial`
/// and renamed when complete, so it never holds half a recovery.
pub fn recover(damaged: &Path, output: &Path) -> Result<Recovered, BufferError> {
    if output.exists() {
        return Err(BufferError::Exists(output.to_path_buf()));
    }
    let partial = with_suffix(output, ".partial");
    remove_if_exists(&partial)?;
    remove_if_exists(&with_suffix(&partial, "-journal"))?;
    let mut out = Connection::open(&partial).map_err(|source| BufferError::Open {
        path: partial.clone(),
        source,
    })?;
    migrate(&out, &partial)?;

    let (source, bound) = open_damaged(damaged)?;
    let tx = out.transaction()?;
    let (mut rows, mut last_seq) = (0, 0);
    let mut unreadable = SeqRanges::default();
    {
        let mut insert = tx.prepare(
            "INSERT INTO messages (seq, ts, device, body, kind) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        salvage(&source, bound, &mut unreadable, &mut |record| {
            insert.execute(params![
                record.seq,
                record.ts_ms,
                record.device,
                record.body,
                record.kind as i64
            ])?;
            rows += 1;
            last_seq = record.seq;
            Ok(())
        })?;
    }
    let dropped = read_counter(&source, "dropped").ok().flatten().unwrap_or(0);
    let set_aside = read_counter(&source, "set_aside")
        .ok()
        .flatten()
        .unwrap_or(0);
    let last_seq = last_seq.max(bound.unwrap_or(0));
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'dropped'",
        [dropped as i64],
    )?;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'set_aside'",
        [set_aside as i64],
    )?;
    tx.execute("DELETE FROM sqlite_sequence WHERE name = 'messages'", [])?;
    tx.execute(
        "INSERT INTO sqlite_sequence (name, seq) VALUES ('messages', ?1)",
        [last_seq],
    )?;
    tx.commit()?;
    drop(out);
    rename(&partial, output)?;
    Ok(Recovered {
        rows,
        last_seq,
        dropped,
        unreadable,
    })
}

/// The seqs of the buffer file at `path` that [`recover`] could not read,
/// found the same way, without writing anything.
pub fn unreadable_seqs(path: &Path) -> Result<SeqRanges, BufferError> {
    let (source, bound) = open_damaged(path)?;
    let mut unreadable = SeqRanges::default();
    salvage(&source, bound, &mut unreadable, &mut |_| Ok(()))?;
    Ok(unreadable)
}

/// Opens a possibly damaged buffer file read-only, with the highest `seq`
/// it is known to have handed out, if that can be read.
fn open_damaged(path: &Path) -> Result<(Connection, Option<i64>), BufferError> {
    let source = open_read_only(path)?;
    // Damaged cells then fail to read instead of yielding garbage.
    source.pragma_update(None, "cell_size_check", true)?;
    // Either can be unreadable; the higher one bounds the search and is
    // where `seq` must continue, so that no seq is ever handed out twice.
    let handed_out = read_last_seq(&source).ok().flatten();
    let newest = source
        .query_row("SELECT max(seq) FROM messages", [], |r| r.get(0))
        .ok()
        .flatten();
    Ok((source, handed_out.max(newest)))
}

/// Reads the rows of `source` with `seq` up to `bound` in order and hands
/// them to `save`. A read that fails marks where damage starts; a gallop and
/// then a bisection of probes find the lowest `seq` from which reading works
/// again, and the scan resumes there. Only errors of `save` are returned.
fn salvage(
    source: &Connection,
    bound: Option<i64>,
    unreadable: &mut SeqRanges,
    save: &mut dyn FnMut(Record) -> Result<(), BufferError>,
) -> Result<(), BufferError> {
    let has_kind = source.query_row(
        "SELECT count(*) > 0 FROM pragma_table_info('messages') WHERE name = 'kind'",
        [],
        |r| r.get::<_, bool>(0),
    );
    // A version 1 file has no `kind`: its rows are all telemetry.
    let kind = if let Ok(false) = has_kind {
        "0"
    } else {
        "kind"
    };
    let statements = source
        .prepare(&format!(
            "SELECT seq, ts, device, body, {kind} FROM messages WHERE seq > ?1 AND seq <= ?2 ORDER BY seq"
        ))
        .and_then(|scan| {
            let probe = source.prepare(
                "SELECT seq FROM messages WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT 1",
            )?;
            Ok((scan, probe))
        });
    let Ok((mut scan, mut probe)) = statements else {
        // The schema itself cannot be read.
        unreadable.add(1..=i64::MAX);
        return Ok(());
    };
    let last = bound.unwrap_or(i64::MAX);
    let mut after = 0;
    while after < last && !scan_from(&mut scan, &mut after, last, save)? {
        if bound.is_none() {
            // With no known end, probes past the end of the table fail like
            // damage does: bisecting could not tell them apart.
            unreadable.add(after + 1..=i64::MAX);
            break;
        }
        let resume = readable_from(&mut probe, after, last);
        unreadable.add(after + 1..=resume);
        after = resume;
    }
    Ok(())
}

/// Saves rows with `seq` in `(after, last]` until the end (true) or a row
/// that cannot be read (false), with `after` at the last row saved.
fn scan_from(
    scan: &mut Statement<'_>,
    after: &mut i64,
    last: i64,
    save: &mut dyn FnMut(Record) -> Result<(), BufferError>,
) -> Result<bool, BufferError> {
    let Ok(mut rows) = scan.query(params![*after, last]) else {
        return Ok(false);
    };
    loop {
        let record = match rows.next() {
            Ok(None) => return Ok(true),
            Ok(Some(row)) => match record_from_row(row) {
                // Out of order means a damaged page that still parsed.
                Ok(record) if record.seq > *after && record.seq <= last => record,
                _ => return Ok(false),
            },
            Err(_) => return Ok(false),
        };
        *after = record.seq;
        save(record)?;
    }
}

/// The lowest `x` in `(after, last]` such that reading `seq > x` works,
/// given that it fails from `after`.
fn readable_from(probe: &mut Statement<'_>, after: i64, last: i64) -> i64 {
    let mut readable = |x: i64| {
        x >= last
            || probe
                .query_row(params![x, last], |_| Ok(()))
                .optional()
                .is_ok()
    };
    let (mut bad, mut step) = (after, 1_i64);
    let mut good = loop {
        let x = after.saturating_add(step).min(last);
        if readable(x) {
            break x;
        }
        bad = x;
        step = step.saturating_mul(2);
    };
    while good - bad > 1 {
        let middle = bad + (good - bad) / 2;
        if readable(middle) {
            good = middle;
        } else {
            bad = middle;
        }
    }
    good
}

/// The start-up check: see "A damaged file" in the module header.
fn replace_if_damaged(path: &Path) -> Result<(), BufferError> {
    let problems = check(path)?;
    if problems.is_empty() {
        return Ok(());
    }
    error!(
        path = %path.display(),
        problems = %problems.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
        problem_count = problems.len(),
        "the buffer is damaged: recovering the rows that can still be read"
    );
    let recovered_path = with_suffix(path, ".recovered");
    // Left by a start that stopped half-way; the damaged file is still in place.
    remove_if_exists(&recovered_path)?;
    let recovered = recover(path, &recovered_path)?;
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = with_suffix(path, &format!(".damaged-{seconds}"));
    if aside.exists() {
        return Err(BufferError::Exists(aside));
    }
    // The WAL first: one left beside the new file would be replayed into it.
    for suffix in ["-wal", "-shm"] {
        let journal = with_suffix(path, suffix);
        if journal.exists() {
            rename(&journal, &with_suffix(&aside, suffix))?;
        }
    }
    rename(path, &aside)?;
    rename(&recovered_path, path)?;
    error!(
        damaged = %aside.display(),
        recovered_rows = recovered.rows,
        unreadable_seqs = %recovered.unreadable,
        last_seq = recovered.last_seq,
        "the buffer was damaged: moved it aside and continuing with the rows recovered from it"
    );
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

fn rename(from: &Path, to: &Path) -> Result<(), BufferError> {
    std::fs::rename(from, to).map_err(|source| BufferError::Io {
        path: from.to_path_buf(),
        source,
    })
}

fn remove_if_exists(path: &Path) -> Result<(), BufferError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BufferError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn record(i: usize, body_len: usize) -> NewRecord {
        NewRecord {
            kind: match i % 3 {
                0 => Kind::Event,
                1 => Kind::WriteResult,
                _ => Kind::Telemetry,
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
        SetAside(usize),
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => proptest::collection::vec(0usize..400, 1..8).prop_map(Op::Append),
            2 => (1usize..10).prop_map(Op::Read),
            2 => (1usize..6).prop_map(Op::AckOldest),
            1 => Just(Op::AckEveryOther),
            1 => (0usize..4).prop_map(Op::SetAside),
            1 => Just(Op::Crash),
        ]
    }

    /// The in-memory model: what the buffer must hold.
    #[derive(Default)]
    struct Model {
        rows: BTreeMap<i64, NewRecord>,
        next_seq: i64,
        dropped: u64,
        set_aside: BTreeMap<i64, NewRecord>,
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
                    Op::SetAside(nth) => {
                        let seq = model.rows.keys().nth(nth).copied();
                        let moved = buffer.set_aside(seq.unwrap_or(i64::MAX), "too large").unwrap();
                        prop_assert_eq!(moved, seq.is_some());
                        if let Some(seq) = seq {
                            let row = model.rows.remove(&seq).unwrap();
                            model.set_aside.insert(seq, row);
                        }
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
                prop_assert_eq!(stats.set_aside, model.set_aside.len() as u64);
                prop_assert_eq!(stats.last_seq, model.next_seq);
                let all = buffer.read_after(0, usize::MAX >> 1).unwrap();
                let stored: Vec<(i64, NewRecord)> = all.into_iter().map(|r| (r.seq, NewRecord { kind: r.kind, ts_ms: r.ts_ms, device: r.device, body: r.body })).collect();
                let expected: Vec<(i64, NewRecord)> = model.rows.iter().map(|(s, r)| (*s, r.clone())).collect();
                prop_assert_eq!(stored, expected);
                let aside: Vec<i64> = buffer
                    .conn
                    .prepare("SELECT seq FROM set_aside ORDER BY seq")
                    .unwrap()
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                prop_assert_eq!(aside, model.set_aside.keys().copied().collect::<Vec<_>>());
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

    /// Fills a new buffer at `path` with `count` rows from two devices, with
    /// a size limit that drops the first ones; returns what it holds, closed.
    fn filled(path: &Path, count: usize) -> (Vec<Record>, Stats) {
        let max_bytes = (count as u64 - count as u64 / 10) * 200;
        let mut buffer = Buffer::open(path, Durability::Normal, max_bytes).unwrap();
        let records: Vec<_> = (0..count)
            .map(|i| NewRecord {
                kind: if i % 7 == 0 {
                    Kind::Event
                } else {
                    Kind::Telemetry
                },
                ts_ms: 1_700_000_000_000 + i as i64,
                device: if i % 2 == 0 { "boiler" } else { "meter" }.into(),
                body: format!(r#"{{"i":{i},"pad":"{}"}}"#, "p".repeat(130)),
            })
            .collect();
        for batch in records.chunks(100) {
            buffer.append(batch).unwrap();
        }
        let stored = buffer.read_after(0, count).unwrap();
        let stats = buffer.stats().unwrap();
        assert!(stats.dropped > 0, "the size limit dropped the oldest rows");
        (stored, stats)
    }

    /// Overwrites `pages` whole pages in the middle of the file.
    fn damage_middle(path: &Path, pages: u64) {
        use std::io::{Seek, SeekFrom, Write};
        let len = std::fs::metadata(path).unwrap().len();
        let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        file.seek(SeekFrom::Start(len / 2 / 4096 * 4096)).unwrap();
        file.write_all(&vec![0xA5; pages as usize * 4096]).unwrap();
    }

    fn all_rows(path: &Path) -> Vec<Record> {
        let reader = BufferReader::open(path).unwrap();
        reader.rows(None).collect::<Result<_, _>>().unwrap()
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_healthy_buffer_passes_the_check_and_opens_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite3");
        let (stored, stats) = filled(&path, 500);
        assert_eq!(check(&path).unwrap(), Vec::<String>::new());
        let buffer = Buffer::open(&path, Durability::Normal, 1 << 20).unwrap();
        assert_eq!(buffer.read_after(0, 1000).unwrap(), stored);
        assert_eq!(buffer.stats().unwrap(), stats);
        assert_eq!(
            files_in(dir.path()),
            ["b.sqlite3", "b.sqlite3-shm", "b.sqlite3-wal"]
        );
    }

    #[test]
    fn recovery_skips_damaged_pages_and_keeps_every_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite3");
        let (stored, stats) = filled(&path, 3000);
        damage_middle(&path, 3);
        let damaged = std::fs::read(&path).unwrap();
        assert!(!check(&path).unwrap().is_empty());

        let output = dir.path().join("new.sqlite3");
        let recovered = recover(&path, &output).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), damaged, "only read");
        assert!(!recovered.unreadable.is_empty());
        assert_eq!(unreadable_seqs(&path).unwrap(), recovered.unreadable);
        let rows = all_rows(&output);
        assert_eq!(recovered.rows, rows.len() as u64);
        assert!(
            rows.len() < stored.len() && rows.len() >= stored.len() * 9 / 10,
            "{} of {} rows recovered",
            rows.len(),
            stored.len()
        );
        // Every row that came back is the row that had its seq; every one
        // that did not lies in a range reported unreadable.
        let by_seq: BTreeMap<i64, &Record> = stored.iter().map(|r| (r.seq, r)).collect();
        for row in &rows {
            assert_eq!(Some(&row), by_seq.get(&row.seq));
        }
        let lost: Vec<i64> = stored
            .iter()
            .map(|r| r.seq)
            .filter(|seq| rows.binary_search_by_key(seq, |r| r.seq).is_err())
            .collect();
        assert!(
            lost.iter()
                .all(|seq| recovered.unreadable.0.iter().any(|r| r.contains(seq))),
            "lost {lost:?}, reported {}",
            recovered.unreadable
        );
        assert_eq!(recovered.dropped, stats.dropped);
        assert_eq!(recovered.last_seq, stats.last_seq);
        assert_eq!(check(&output).unwrap(), Vec::<String>::new());

        let mut buffer = Buffer::open(&output, Durability::Normal, 1 << 30).unwrap();
        assert_eq!(buffer.stats().unwrap().dropped, stats.dropped);
        let next = buffer.append(&[record(1, 10)]).unwrap();
        assert_eq!(next.last_seq, stats.last_seq + 1);
    }

    #[test]
    fn recovery_continues_seq_after_a_damaged_newest_page() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite3");
        let (stored, stats) = filled(&path, 1000);
        // The last page of the file holds the newest rows.
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::write(
            &path,
            [
                &std::fs::read(&path).unwrap()[..(len - 4096) as usize],
                &[0xA5; 4096],
            ]
            .concat(),
        )
        .unwrap();
        let output = dir.path().join("new.sqlite3");
        let recovered = recover(&path, &output).unwrap();
        assert!(
            recovered.rows < stored.len() as u64 && recovered.rows > 0,
            "{recovered:?}"
        );
        assert_eq!(recovered.last_seq, stats.last_seq);
        let mut buffer = Buffer::open(&output, Durability::Normal, 1 << 30).unwrap();
        let next = buffer.append(&[record(1, 10)]).unwrap();
        assert_eq!(
            next.last_seq,
            stats.last_seq + 1,
            "no seq is handed out twice"
        );
    }

    #[test]
    fn a_file_with_a_garbage_header_is_replaced_by_an_empty_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite3");
        let garbage: Vec<u8> = (0..16384u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &garbage).unwrap();
        assert!(!check(&path).unwrap().is_empty());
        let recovered = recover(&path, &dir.path().join("new.sqlite3")).unwrap();
        assert_eq!((recovered.rows, recovered.last_seq), (0, 0));
        assert_eq!(recovered.unreadable.to_string(), "1 and above");

        let mut buffer = Buffer::open(&path, Durability::Normal, 1 << 20).unwrap();
        assert_eq!(buffer.append(&[record(1, 10)]).unwrap().last_seq, 1);
        let aside: Vec<_> = files_in(dir.path())
            .into_iter()
            .filter(|name| name.starts_with("b.sqlite3.damaged-"))
            .collect();
        assert_eq!(aside.len(), 1, "{:?}", files_in(dir.path()));
        assert_eq!(std::fs::read(dir.path().join(&aside[0])).unwrap(), garbage);
    }

    #[test]
    fn a_damaged_buffer_is_moved_aside_and_its_rows_kept_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite3");
        let (stored, stats) = filled(&path, 2000);
        damage_middle(&path, 2);
        let damaged = std::fs::read(&path).unwrap();

        let mut buffer = Buffer::open(&path, Durability::Normal, 1 << 30).unwrap();
        let after = buffer.stats().unwrap();
        assert!(
            after.rows < stored.len() as u64 && after.rows >= stored.len() as u64 * 9 / 10,
            "{after:?}"
        );
        assert_eq!(after.dropped, stats.dropped);
        assert_eq!(
            buffer.append(&[record(1, 10)]).unwrap().last_seq,
            stats.last_seq + 1
        );
        drop(buffer);
        let names = files_in(dir.path());
        // The damaged file, with its -wal and -shm beside it.
        let aside: Vec<_> = names
            .iter()
            .filter(|name| {
                name.starts_with("b.sqlite3.damaged-")
                    && !name.ends_with("-wal")
                    && !name.ends_with("-shm")
            })
            .collect();
        assert_eq!(aside.len(), 1, "{names:?}");
        assert!(
            !names.iter().any(|n| n.starts_with("b.sqlite3-")),
            "{names:?}"
        );
        assert_eq!(std::fs::read(dir.path().join(aside[0])).unwrap(), damaged);
        assert!(
            !names
                .iter()
                .any(|n| n.contains("recovered") || n.contains("partial")),
            "{names:?}"
        );
        assert_eq!(check(&path).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn the_reader_sees_what_the_buffer_holds_while_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite3");
        let mut buffer = Buffer::open(&path, Durability::Normal, 1 << 30).unwrap();
        let records: Vec<_> = (0..1500)
            .map(|i| NewRecord {
                kind: Kind::Telemetry,
                ts_ms: 1000 + i,
                device: if i < 1000 { "a" } else { "bb" }.into(),
                body: "{}".into(),
            })
            .collect();
        buffer.append(&records).unwrap();
        buffer.ack(&[1, 2, 3]).unwrap();
        let reader = BufferReader::open(&path).unwrap();

        let inspection = reader.inspect().unwrap();
        let stats = buffer.stats().unwrap();
        assert_eq!(
            (inspection.rows, inspection.bytes, inspection.last_seq),
            (stats.rows, stats.bytes, stats.last_seq)
        );
        assert_eq!(
            (inspection.oldest_ts_ms, inspection.newest_ts_ms),
            (Some(1003), Some(2499))
        );
        assert_eq!(
            inspection.devices,
            [
                DeviceStats {
                    device: "a".into(),
                    rows: 997,
                    bytes: 997 * (3 + ROW_OVERHEAD),
                    oldest_ts_ms: 1003,
                    newest_ts_ms: 1999,
                },
                DeviceStats {
                    device: "bb".into(),
                    rows: 500,
                    bytes: 500 * (4 + ROW_OVERHEAD),
                    oldest_ts_ms: 2000,
                    newest_ts_ms: 2499,
                },
            ]
        );
        let every: Vec<Record> = reader.rows(None).collect::<Result<_, _>>().unwrap();
        assert_eq!(every, buffer.read_after(0, 2000).unwrap());
        let seqs: Vec<i64> = reader.rows(Some("bb")).map(|r| r.unwrap().seq).collect();
        assert_eq!(seqs, (1001..=1500).collect::<Vec<_>>());
    }

    #[test]
    fn seq_ranges_merge_and_read_naturally() {
        let mut ranges = SeqRanges::default();
        assert_eq!(ranges.to_string(), "none");
        ranges.add(3..=3);
        ranges.add(4..=9);
        ranges.add(12..=12);
        ranges.add(40..=i64::MAX);
        assert_eq!(ranges.to_string(), "3-9, 12, 40 and above");
    }
}
