//! A buffer file opened read-only beside the daemon, for the `kite buffer`
//! tools: what it holds per device, and its rows page by page.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags};

use super::schema::{read_counter, read_last_seq, stored_row, SchemaCache, ROW_COLUMNS};
use super::{BufferError, Record, Stats, BUSY_TIMEOUT, PAGE_ROWS, ROW_OVERHEAD};

/// Opens `path` for reading only: its content is not changed (SQLite may
/// create an empty `-wal` and `-shm` beside a WAL file), and the daemon can
/// go on writing (WAL readers and the writer do not block each other).
pub(super) fn open_read_only(path: &Path) -> Result<Connection, BufferError> {
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

/// What a buffer holds, for `kite buffer inspect`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspection {
    /// The same totals the daemon keeps.
    pub totals: Stats,
    /// Read time of the newest buffered sample.
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
            totals: Stats {
                rows: devices.iter().map(|d| d.rows).sum(),
                bytes: devices.iter().map(|d| d.bytes).sum(),
                dropped: read_counter(&snapshot, "dropped")?.unwrap_or(0),
                set_aside: read_counter(&snapshot, "set_aside")?.unwrap_or(0),
                thinned: read_counter(&snapshot, "thinned")?.unwrap_or(0),
                keep_every: read_counter(&snapshot, "keep_every")?.unwrap_or(1),
                last_seq: read_last_seq(&snapshot)?.unwrap_or(0),
                oldest_ts_ms: devices.iter().map(|d| d.oldest_ts_ms).min(),
            },
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
            schemas: SchemaCache::default(),
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
    schemas: SchemaCache,
}

impl Rows<'_> {
    fn next_page(&mut self) -> Result<Vec<Record>, BufferError> {
        let mut select = self.conn.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM messages
             WHERE seq > ?1 AND (?2 IS NULL OR device = ?2) ORDER BY seq LIMIT ?3"
        ))?;
        let rows = select.query_map(
            params![self.after, self.device, PAGE_ROWS as i64],
            stored_row,
        )?;
        let rows: Vec<_> = rows.collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .map(|row| self.schemas.record(self.conn, row))
            .collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::open;
    use crate::store::{Body, Kind, NewRecord};

    #[test]
    fn the_reader_sees_what_the_buffer_holds_while_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite3");
        let mut buffer = open(&path, 1 << 30);
        let records: Vec<_> = (0..1500)
            .map(|i| NewRecord {
                kind: Kind::Telemetry,
                ts_ms: 1000 + i,
                device: if i < 1000 { "a" } else { "bb" }.into(),
                body: Body::Text("{}".into()),
            })
            .collect();
        buffer.append(&records).unwrap();
        buffer.ack(&[1, 2, 3]).unwrap();
        let reader = BufferReader::open(&path).unwrap();

        let inspection = reader.inspect().unwrap();
        assert_eq!(inspection.totals, buffer.stats().unwrap());
        assert_eq!(
            (inspection.totals.oldest_ts_ms, inspection.newest_ts_ms),
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
}
