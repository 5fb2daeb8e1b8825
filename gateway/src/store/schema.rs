//! The on-disk format: the tables of version 4, the upgrade of older files
//! in place, and reading its counters and rows.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::{BufferError, Kind, Record};

pub(super) const SCHEMA_VERSION: i64 = 4;

/// Creates the tables of a new file, or upgrades an older one in place.
pub(super) fn migrate(conn: &Connection, path: &Path) -> Result<(), BufferError> {
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
    if version == 3 {
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE messages ADD COLUMN stride INTEGER NOT NULL DEFAULT 1;
             INSERT OR IGNORE INTO meta (key, value) VALUES ('thinned', 0);
             INSERT OR IGNORE INTO meta (key, value) VALUES ('keep_every', 1);
             PRAGMA user_version = 4;
             COMMIT;",
        )?;
        version = 4;
    }
    if version != SCHEMA_VERSION {
        return Err(BufferError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    Ok(())
}

/// A counter of the `meta` table (`dropped`, `set_aside`, `thinned`,
/// `keep_every`).
pub(super) fn read_counter(conn: &Connection, key: &str) -> rusqlite::Result<Option<u64>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
        r.get::<_, i64>(0)
    })
    .optional()
    .map(|value| value.map(|v| v as u64))
}

/// The highest `seq` AUTOINCREMENT has handed out, if it has.
pub(super) fn read_last_seq(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT seq FROM sqlite_sequence WHERE name = 'messages'",
        [],
        |r| r.get(0),
    )
    .optional()
}

/// Decodes `SELECT seq, ts, device, body, kind`.
pub(super) fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        seq: r.get(0)?,
        kind: Kind::from_column(r.get(4)?),
        ts_ms: r.get(1)?,
        device: r.get(2)?,
        body: r.get(3)?,
    })
}
