//! The on-disk format: the tables of version 5, the upgrade of older files
//! in place, and reading its counters and rows.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use kite_core::packed::{self, Schema};
use rusqlite::types::Value as Column;
use rusqlite::{Connection, OptionalExtension};

use super::{Body, BufferError, Kind, Record};

pub(super) const SCHEMA_VERSION: i64 = 5;

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
    if version == 4 {
        // Rows stored before keep their JSON text (`schema` NULL) and are
        // read as they were; new telemetry is packed.
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS schemas (
                 id INTEGER PRIMARY KEY,
                 device TEXT NOT NULL,
                 points BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS schemas_by_device ON schemas (device, id);
             ALTER TABLE messages ADD COLUMN schema INTEGER;
             ALTER TABLE set_aside ADD COLUMN schema INTEGER;
             PRAGMA user_version = 5;
             COMMIT;",
        )?;
        version = 5;
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

/// The columns a row is stored with, not decoded: what recovery copies.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct StoredRow {
    pub seq: i64,
    pub ts_ms: i64,
    pub device: String,
    /// Text, or the packed readings of a telemetry row with a `schema`.
    pub body: Column,
    pub kind: i64,
    pub schema: Option<i64>,
}

/// The columns of [`StoredRow`], in its order.
pub(super) const ROW_COLUMNS: &str = "seq, ts, device, body, kind, schema";

/// Reads `SELECT seq, ts, device, body, kind, schema`.
pub(super) fn stored_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRow> {
    Ok(StoredRow {
        seq: r.get(0)?,
        ts_ms: r.get(1)?,
        device: r.get(2)?,
        body: r.get(3)?,
        kind: r.get(4)?,
        schema: r.get(5)?,
    })
}

/// Schemas by id, read from the `schemas` table once each.
#[derive(Debug, Default)]
pub(super) struct SchemaCache {
    by_id: HashMap<i64, Arc<Schema>>,
}

impl SchemaCache {
    pub fn get(&mut self, conn: &Connection, id: i64) -> Result<Arc<Schema>, String> {
        if let Some(schema) = self.by_id.get(&id) {
            return Ok(schema.clone());
        }
        let bytes: Vec<u8> = conn
            .query_row("SELECT points FROM schemas WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| format!("schema {id}: {e}"))?
            .ok_or_else(|| format!("schema {id} is missing"))?;
        let schema = Arc::new(Schema::decode(&bytes).map_err(|e| format!("schema {id}: {e}"))?);
        self.by_id.insert(id, schema.clone());
        Ok(schema)
    }

    /// Remembers a schema written by this connection.
    pub fn insert(&mut self, id: i64, schema: Arc<Schema>) {
        self.by_id.insert(id, schema);
    }

    /// A stored row as a record: a packed one decoded against its schema;
    /// one that cannot be is [`Body::Unreadable`], never made up.
    pub fn record(&mut self, conn: &Connection, row: StoredRow) -> Record {
        let body = match (row.body, row.schema) {
            (Column::Text(text), None) => Body::Text(text),
            (Column::Blob(bytes), Some(id)) => match self
                .get(conn, id)
                .and_then(|schema| packed::decode(&schema, &bytes).map_err(|e| e.to_string()))
            {
                Ok(points) => Body::Points(points),
                Err(e) => Body::Unreadable(e),
            },
            (Column::Blob(bytes), None) => match String::from_utf8(bytes) {
                Ok(text) => Body::Text(text),
                Err(_) => Body::Unreadable("a body that is neither text nor packed".into()),
            },
            (other, _) => Body::Unreadable(format!("a body of the wrong type ({other:?})")),
        };
        Record {
            seq: row.seq,
            kind: Kind::from_column(row.kind),
            ts_ms: row.ts_ms,
            device: row.device,
            body,
        }
    }
}
