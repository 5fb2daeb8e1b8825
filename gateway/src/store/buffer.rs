//! The write side: one connection that appends, reads for delivery, acks,
//! sets aside and drops by the size limit (see the module header of
//! [`crate::store`]).

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::recovery::replace_if_damaged;
use super::schema::{migrate, read_counter, read_last_seq, record_from_row};
use super::{
    Appended, BufferError, Durability, NewRecord, Record, Settings, Stats, BUSY_TIMEOUT,
    ROW_OVERHEAD,
};

pub struct Buffer {
    pub(super) conn: Connection,
    pub(super) max_bytes: u64,
    pub(super) rows: u64,
    pub(super) bytes: u64,
    pub(super) dropped: u64,
    pub(super) set_aside: u64,
    pub(super) last_seq: i64,
}

impl Buffer {
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("buffer.sqlite3")
    }

    /// Opens the buffer, creating or upgrading it; a damaged file is first
    /// replaced by what can be recovered from it (see the module header).
    pub fn open(path: &Path, settings: Settings) -> Result<Self, BufferError> {
        let Settings {
            max_bytes,
            durability,
        } = settings;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::store::testing::{open, record};
    use crate::store::Kind;

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
            let mut buffer = Buffer::open(&path, Settings { max_bytes, durability: Durability::Normal }).unwrap();
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
                        buffer = Buffer::open(&path, Settings { max_bytes, durability: Durability::Normal }).unwrap();
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
        let buffer = open(&path, 1 << 20);
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
        let settings = Settings {
            max_bytes: 1 << 20,
            durability: Durability::Full,
        };
        let mut buffer = Buffer::open(&path, settings).unwrap();
        let appended = buffer.append(&[record(1, 10), record(2, 10)]).unwrap();
        buffer.ack(&[1, 2]).unwrap();
        drop(buffer);
        let mut buffer = Buffer::open(&path, settings).unwrap();
        assert_eq!(buffer.stats().unwrap().rows, 0);
        let next = buffer.append(&[record(3, 10)]).unwrap();
        assert_eq!(next.last_seq, appended.last_seq + 1);
    }
}
