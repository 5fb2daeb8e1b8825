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
//! # On-disk format (`<data_dir>/buffer.sqlite3`, `PRAGMA user_version = 5`)
//! ```sql
//! CREATE TABLE messages (
//!     seq    INTEGER PRIMARY KEY AUTOINCREMENT,
//!     ts     INTEGER NOT NULL,  -- ms since the Unix epoch, when the sample was read
//!     device TEXT    NOT NULL,  -- the device; for events the plug-in
//!     body   TEXT    NOT NULL,  -- telemetry: its readings packed (a BLOB,
//!                               -- `kite_core::packed`) against `schema`,
//!                               -- or from versions before 5 the JSON
//!                               -- `points` object (`schema` NULL);
//!                               -- events: the event's JSON object without `seq`;
//!                               -- write results: the result's JSON object
//!     kind   INTEGER NOT NULL DEFAULT 0  -- 0 telemetry, 1 event, 2 write result,
//!                                        -- 3 BLE discovery, 4 command result
//!                                        -- (added in version 2)
//!     stride INTEGER NOT NULL DEFAULT 1, -- telemetry: the samples of its device
//!                                        -- this row stands for after thinning
//!                                        -- (added in version 4)
//!     schema INTEGER                     -- packed telemetry: its `schemas` row
//!                                        -- (added in version 5)
//! );
//! -- The names and units of a device's points, once per shape: a row
//! -- refers to the newest one of its device when it is stored; a device
//! -- with new points or units gets a new one (added in version 5).
//! CREATE TABLE schemas (id INTEGER PRIMARY KEY, device TEXT NOT NULL, points BLOB NOT NULL);
//! -- 'dropped', 'set_aside', 'thinned', 'keep_every' (the last two added in version 4)
//! CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
//! -- Rows the broker cannot take, moved out of `messages` (added in version 3).
//! CREATE TABLE set_aside (seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL,
//!     device TEXT NOT NULL, body TEXT NOT NULL, kind INTEGER NOT NULL,
//!     reason TEXT NOT NULL, schema INTEGER);
//! ```
//! The published message is made from a row by the uplink, in whichever
//! format it sends. Version 1 to 4 files are upgraded in place when
//! opened; their rows stay as they were and are read as before.
//!
//! # Size limit
//! The size of a row is `length(device) + length(body) + ROW_OVERHEAD` (in
//! bytes, whether the body is text or packed); when
//! the sum passes `max_bytes`, room is made in the same transaction as the
//! insert that made it necessary. With [`OnFull::DropOldest`] the oldest rows
//! go. With [`OnFull::Downsample`] telemetry is thinned first, so that a long
//! outage keeps its shape: the buffer keeps one sample in `keep_every` per
//! device, and rows that stand for fewer samples (`stride`) are halved,
//! oldest first, in sweeps over the buffer (of two neighbouring rows of a
//! device the older one stays and stands for twice as many). When every row
//! is at `keep_every`, it doubles, up to [`MAX_KEEP_EVERY`]; past that, and
//! for rows other than telemetry, the oldest rows are dropped as with
//! `DropOldest`. Thinned rows are counted (`thinned`); `keep_every` goes
//! back to 1 once acknowledgements have emptied half of the buffer.
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
//! [`BufferReader`] reads a buffer file beside the daemon (`kite buffer`);
//! [`recovery`] checks a file and saves what a damaged one still holds.
//! The store knows nothing of the rest of the gateway: its settings are its
//! own types, and a row's body is text it does not interpret, or readings
//! it packs and unpacks without any wire format.

use std::path::PathBuf;
use std::time::Duration;

use kite_core::PointSample;
use serde::Deserialize;

mod buffer;
mod handle;
mod reader;
pub mod recovery;
mod schema;
pub mod zigbee;

pub use buffer::Buffer;
pub use handle::BufferHandle;
pub use reader::{BufferReader, DeviceStats, Inspection, Rows};
pub use recovery::{check, recover, unreadable_seqs, Recovered, SeqRanges};

/// Bytes counted per row on top of its text, for the row header and the index.
pub const ROW_OVERHEAD: u64 = 32;
/// Rows per query when [`BufferReader::rows`] pages through the table.
const PAGE_ROWS: usize = 512;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How the buffer is kept (`[buffer]` in the config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// The rows may take this much (see "Size limit"); the oldest go beyond it.
    pub max_bytes: u64,
    pub durability: Durability,
    pub on_full: OnFull,
}

/// What makes room when the buffer is full (`[buffer] on_full`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// The oldest rows go.
    #[default]
    DropOldest,
    /// Telemetry is thinned evenly before anything is dropped (see "Size
    /// limit").
    Downsample,
}

/// The sparsest thinning: past one sample in this many per device, the
/// oldest rows are dropped instead.
pub const MAX_KEEP_EVERY: u64 = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// WAL with synchronous=NORMAL: survives a crash of the process; a power
    /// cut may lose the last commits but never corrupts the buffer.
    Normal,
    /// WAL with synchronous=FULL: every commit is fsynced.
    Full,
}

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("buffer database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "buffer database {path} has format version {found}, this Kite knows version {}",
        schema::SCHEMA_VERSION
    )]
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
    /// A BLE device heard that is not in the config, for `ble/discovered`.
    Discovery = 3,
    /// The result of a network command (`zigbee/permit_join`), for
    /// `{device}/result` where `device` is the command's topic.
    CommandResult = 4,
}

impl Kind {
    fn from_column(value: i64) -> Self {
        match value {
            1 => Kind::Event,
            2 => Kind::WriteResult,
            3 => Kind::Discovery,
            4 => Kind::CommandResult,
            _ => Kind::Telemetry,
        }
    }
}

/// What a row holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// JSON text: events, results, discoveries, and telemetry stored before
    /// version 5.
    Text(String),
    /// A device poll's readings, packed in the buffer (see "On-disk format").
    Points(Vec<PointSample>),
    /// A stored row that cannot be read back (its schema is missing or the
    /// bytes are damaged): why.
    Unreadable(String),
}

/// A message to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    pub kind: Kind,
    pub ts_ms: i64,
    pub device: String,
    pub body: Body,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: i64,
    pub kind: Kind,
    pub ts_ms: i64,
    pub device: String,
    pub body: Body,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub rows: u64,
    pub bytes: u64,
    /// Rows dropped by the size limit over the life of the buffer.
    pub dropped: u64,
    /// Rows moved to `set_aside` because the broker cannot take them.
    pub set_aside: u64,
    /// Telemetry rows removed by downsampling over the life of the buffer.
    pub thinned: u64,
    /// Downsampling keeps one sample in this many per device (1: none).
    pub keep_every: u64,
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
    /// Telemetry rows downsampling removed to make room.
    pub thinned: u64,
}

#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;

    use super::{Body, Buffer, Durability, Kind, NewRecord, OnFull, Settings};

    /// The buffer at `path` with durability `normal`, dropping the oldest.
    pub fn open(path: &Path, max_bytes: u64) -> Buffer {
        open_with(path, max_bytes, OnFull::DropOldest)
    }

    pub fn open_with(path: &Path, max_bytes: u64, on_full: OnFull) -> Buffer {
        Buffer::open(
            path,
            Settings {
                max_bytes,
                durability: Durability::Normal,
                on_full,
            },
        )
        .unwrap()
    }

    /// The `i`th record of a test, of every kind in turn.
    pub fn record(i: usize, body_len: usize) -> NewRecord {
        NewRecord {
            kind: match i % 3 {
                0 => Kind::Event,
                1 => Kind::WriteResult,
                _ => Kind::Telemetry,
            },
            ts_ms: i as i64,
            device: "dev".into(),
            body: Body::Text("x".repeat(body_len)),
        }
    }
}
