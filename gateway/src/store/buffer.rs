//! The write side: one connection that appends, reads for delivery, acks,
//! sets aside, and thins or drops by the size limit (see the module header
//! of [`crate::store`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kite_core::packed::{self, Schema};
use kite_core::PointSample;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::recovery::replace_if_damaged;
use super::schema::{migrate, read_counter, read_last_seq, stored_row, SchemaCache, ROW_COLUMNS};
use super::{
    Appended, Body, BufferError, Durability, Kind, NewRecord, OnFull, Record, Settings, Stats,
    BUSY_TIMEOUT, MAX_KEEP_EVERY, ROW_OVERHEAD,
};

/// The schema of `device` that holds `points`, its id, and where each
/// point is in it: the device's newest schema, or a new one that extends
/// it with the points it lacks (inserted in `tx`, and listed in `fresh`).
fn schema_for(
    tx: &Transaction<'_>,
    newest: &mut HashMap<String, (i64, Arc<Schema>)>,
    fresh: &mut Vec<(String, i64, Arc<Schema>)>,
    device: &str,
    points: &[PointSample],
) -> rusqlite::Result<(i64, Arc<Schema>, Vec<usize>)> {
    let mut current = fresh
        .iter()
        .rev()
        .find(|(d, ..)| d == device)
        .map(|(_, id, schema)| (*id, schema.clone()))
        .or_else(|| newest.get(device).cloned());
    if current.is_none() {
        let stored: Option<(i64, Vec<u8>)> = tx
            .query_row(
                "SELECT id, points FROM schemas WHERE device = ?1 ORDER BY id DESC LIMIT 1",
                [device],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        // A schema that does not decode is not extended: a new one is made.
        current = stored.and_then(|(id, bytes)| {
            let schema = Arc::new(Schema::decode(&bytes).ok()?);
            newest.insert(device.to_string(), (id, schema.clone()));
            Some((id, schema))
        });
    }
    if let Some((id, schema)) = &current {
        if let Some(indices) = schema.indices(points) {
            return Ok((*id, schema.clone(), indices));
        }
    }
    let next = Arc::new(match &current {
        Some((_, schema)) => schema.extended(points),
        None => Schema::default().extended(points),
    });
    tx.prepare_cached("INSERT INTO schemas (device, points) VALUES (?1, ?2)")?
        .execute(params![device, next.encode()])?;
    let id = tx.last_insert_rowid();
    fresh.push((device.to_string(), id, next.clone()));
    let indices = next.indices(points).unwrap_or_default();
    Ok((id, next, indices))
}

/// Rows looked at per query when making room.
const CHUNK_ROWS: i64 = 512;

pub struct Buffer {
    pub(super) conn: Connection,
    pub(super) max_bytes: u64,
    on_full: OnFull,
    pub(super) rows: u64,
    pub(super) bytes: u64,
    pub(super) dropped: u64,
    pub(super) set_aside: u64,
    thinning: Thinning,
    pub(super) last_seq: i64,
    /// Each device's newest schema, which new rows are packed against.
    newest_schema: HashMap<String, (i64, Arc<Schema>)>,
    schemas: SchemaCache,
}

/// Where downsampling stands.
#[derive(Debug, Default)]
struct Thinning {
    /// Rows removed, over the life of the buffer.
    thinned: u64,
    /// One sample in this many per device is kept (1: nothing thinned).
    keep_every: u64,
    /// The sweep goes on after this seq; it starts again from the oldest
    /// row once it has reached the newest.
    after: i64,
    /// Whether a device's next row in this sweep goes: its rows alternate.
    removes_next: HashMap<String, bool>,
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
            on_full,
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
        let thinning = Thinning {
            thinned: read_counter(&conn, "thinned")?.unwrap_or(0),
            keep_every: read_counter(&conn, "keep_every")?.unwrap_or(1).max(1),
            ..Thinning::default()
        };
        let last_seq = read_last_seq(&conn)?.unwrap_or(0);
        Ok(Self {
            conn,
            max_bytes,
            on_full,
            rows: rows as u64,
            bytes: bytes as u64 + rows as u64 * ROW_OVERHEAD,
            dropped,
            set_aside,
            thinning,
            last_seq,
            newest_schema: HashMap::new(),
            schemas: SchemaCache::default(),
        })
    }

    /// Stores `records` in one transaction, in order, then thins or drops
    /// the oldest rows while the buffer is over its limit.
    pub fn append(&mut self, records: &[NewRecord]) -> Result<Appended, BufferError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut last_seq = self.last_seq;
        let mut added = 0;
        // Schemas this append creates: cached once it has committed.
        let mut fresh = Vec::new();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (ts, device, body, kind, schema) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for record in records {
                let (body, body_len, schema) = match &record.body {
                    Body::Text(text) | Body::Unreadable(text) => (
                        ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
                        text.len(),
                        None,
                    ),
                    Body::Points(points) => {
                        let (id, schema, indices) = schema_for(
                            &tx,
                            &mut self.newest_schema,
                            &mut fresh,
                            &record.device,
                            points,
                        )?;
                        let packed = packed::encode(points, &indices, schema.points.len());
                        let len = packed.len();
                        (ToSqlOutput::from(packed), len, Some(id))
                    }
                };
                insert.execute(params![
                    record.ts_ms,
                    record.device,
                    body,
                    record.kind as i64,
                    schema
                ])?;
                last_seq = tx.last_insert_rowid();
                added += (record.device.len() + body_len) as u64 + ROW_OVERHEAD;
            }
        }
        let mut room = Room {
            max_bytes: self.max_bytes,
            bytes: self.bytes + added,
            rows: self.rows + records.len() as u64,
        };
        let mut thinning = None;
        if room.over() && self.on_full == OnFull::Downsample {
            // Applied to `self` only once the transaction has committed.
            let mut next = Thinning {
                thinned: 0,
                keep_every: self.thinning.keep_every,
                after: self.thinning.after,
                removes_next: std::mem::take(&mut self.thinning.removes_next),
            };
            thin(&tx, &mut room, &mut next)?;
            thinning = Some(next);
        }
        let dropped = if room.over() {
            drop_oldest(&tx, &mut room)?
        } else {
            0
        };
        tx.commit()?;
        for (device, id, schema) in fresh {
            self.schemas.insert(id, schema.clone());
            self.newest_schema.insert(device, (id, schema));
        }
        self.last_seq = last_seq;
        self.bytes = room.bytes;
        self.rows = room.rows;
        self.dropped += dropped;
        let thinned = thinning.as_ref().map_or(0, |t| t.thinned);
        if let Some(next) = thinning {
            self.thinning = Thinning {
                thinned: self.thinning.thinned + next.thinned,
                ..next
            };
        }
        Ok(Appended {
            last_seq,
            dropped,
            thinned,
        })
    }

    /// Up to `limit` rows with `seq > after`, oldest first.
    pub fn read_after(&mut self, after: i64, limit: usize) -> Result<Vec<Record>, BufferError> {
        let rows: Vec<_> = {
            let mut select = self.conn.prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM messages WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            let rows = select.query_map(params![after, limit as i64], stored_row)?;
            rows.collect::<Result<_, _>>()?
        };
        Ok(rows
            .into_iter()
            .map(|row| self.schemas.record(&self.conn, row))
            .collect())
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
        // Once the backlog has drained this far, the next outage starts
        // again from every sample.
        let relaxed = self.thinning.keep_every > 1 && self.bytes - freed <= self.max_bytes / 2;
        if relaxed {
            tx.execute("UPDATE meta SET value = 1 WHERE key = 'keep_every'", [])?;
        }
        tx.commit()?;
        self.bytes -= freed;
        self.rows -= gone;
        if relaxed {
            self.thinning.keep_every = 1;
            self.thinning.after = 0;
            self.thinning.removes_next.clear();
        }
        Ok(())
    }

    /// Moves the row `seq` out of the messages into `set_aside`, with the
    /// reason; false when it is no longer buffered.
    pub fn set_aside(&mut self, seq: i64, reason: &str) -> Result<bool, BufferError> {
        let tx = self.conn.transaction()?;
        let moved = tx.execute(
            "INSERT INTO set_aside (seq, ts, device, body, kind, reason, schema)
             SELECT seq, ts, device, body, kind, ?2, schema FROM messages WHERE seq = ?1",
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

    /// Rows thinned over the life of the buffer, and one sample in how many
    /// is kept now.
    pub fn thinning(&self) -> (u64, u64) {
        (self.thinning.thinned, self.thinning.keep_every)
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
            thinned: self.thinning.thinned,
            keep_every: self.thinning.keep_every,
            last_seq: self.last_seq,
            oldest_ts_ms,
        })
    }
}

/// The buffer's size as an append changes it.
struct Room {
    max_bytes: u64,
    bytes: u64,
    rows: u64,
}

impl Room {
    fn over(&self) -> bool {
        self.bytes > self.max_bytes && self.rows > 0
    }

    fn remove(&mut self, size: i64) {
        self.bytes -= size as u64 + ROW_OVERHEAD;
        self.rows -= 1;
    }
}

/// Halves the telemetry rows that stand for fewer than `keep_every`
/// samples, sweeping from the oldest, until there is room; raises
/// `keep_every` when a sweep finds nothing left to halve, and gives up at
/// [`MAX_KEEP_EVERY`]. Counts what it removed in `thinning.thinned`.
fn thin(tx: &Transaction<'_>, room: &mut Room, thinning: &mut Thinning) -> rusqlite::Result<()> {
    let mut select = tx.prepare_cached(
        "SELECT seq, device, stride, length(CAST(device AS BLOB)) + length(CAST(body AS BLOB))
         FROM messages WHERE seq > ?1 AND kind = ?2 AND stride < ?3 ORDER BY seq LIMIT ?4",
    )?;
    let mut delete = tx.prepare_cached("DELETE FROM messages WHERE seq = ?1")?;
    let mut widen = tx.prepare_cached("UPDATE messages SET stride = ?2 WHERE seq = ?1")?;
    let raised_from = thinning.keep_every;
    while room.over() {
        let chunk = select
            .query_map(
                params![
                    thinning.after,
                    Kind::Telemetry as i64,
                    thinning.keep_every as i64,
                    CHUNK_ROWS
                ],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        if chunk.is_empty() {
            if thinning.after > 0 {
                thinning.after = 0;
                thinning.removes_next.clear();
            } else if thinning.keep_every < MAX_KEEP_EVERY {
                thinning.keep_every *= 2;
            } else {
                break;
            }
            continue;
        }
        for (seq, device, stride, size) in chunk {
            thinning.after = seq;
            let removes = thinning.removes_next.entry(device).or_insert(false);
            if *removes {
                delete.execute([seq])?;
                room.remove(size);
                thinning.thinned += 1;
            } else {
                widen.execute([seq, stride * 2])?;
            }
            *removes = !*removes;
            if !room.over() {
                break;
            }
        }
    }
    if thinning.thinned > 0 {
        tx.execute(
            "UPDATE meta SET value = value + ?1 WHERE key = 'thinned'",
            [thinning.thinned as i64],
        )?;
    }
    if thinning.keep_every != raised_from {
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'keep_every'",
            [thinning.keep_every as i64],
        )?;
    }
    Ok(())
}

/// Deletes the oldest rows until there is room; the number deleted.
fn drop_oldest(tx: &Transaction<'_>, room: &mut Room) -> rusqlite::Result<u64> {
    let mut select = tx.prepare_cached(
        "SELECT seq, length(CAST(device AS BLOB)) + length(CAST(body AS BLOB)) FROM messages ORDER BY seq LIMIT ?1",
    )?;
    let mut delete = tx.prepare_cached("DELETE FROM messages WHERE seq <= ?1")?;
    let mut dropped = 0;
    while room.over() {
        let mut cut = None;
        let oldest = select.query_map([CHUNK_ROWS], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in oldest {
            let (seq, size) = row?;
            room.remove(size);
            dropped += 1;
            cut = Some(seq);
            if !room.over() {
                break;
            }
        }
        match cut {
            Some(seq) => delete.execute([seq])?,
            None => break,
        };
    }
    if dropped > 0 {
        tx.execute(
            "UPDATE meta SET value = value + ?1 WHERE key = 'dropped'",
            [dropped as i64],
        )?;
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::store::testing::{open, open_with, record};
    use crate::store::Kind;

    fn sample(device: &str, ts_ms: i64) -> NewRecord {
        NewRecord {
            kind: Kind::Telemetry,
            ts_ms,
            device: device.into(),
            body: Body::Text(format!("{{\"t\":{{\"value\":{ts_ms}}}}}")),
        }
    }

    /// The read times of a device's buffered telemetry, oldest first.
    fn times(buffer: &mut Buffer, device: &str) -> Vec<i64> {
        buffer
            .read_after(0, usize::MAX >> 1)
            .unwrap()
            .into_iter()
            .filter(|r| r.kind == Kind::Telemetry && r.device == device)
            .map(|r| r.ts_ms)
            .collect()
    }

    #[test]
    fn downsampling_keeps_the_whole_outage_evenly_and_counts_what_it_thins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite3");
        let max_bytes = 64 << 10;
        let mut buffer = open_with(&path, max_bytes, OnFull::Downsample);
        let event = NewRecord {
            kind: Kind::Event,
            ..sample("plugin", 0)
        };
        buffer.append(&[event]).unwrap();
        let devices = ["boiler", "chiller", "pump"];
        let samples = 10_000;
        for ts in 1..=samples {
            let batch: Vec<_> = devices.iter().map(|d| sample(d, ts)).collect();
            buffer.append(&batch).unwrap();
        }
        let stats = buffer.stats().unwrap();
        assert!(stats.bytes <= max_bytes, "{stats:?}");
        assert_eq!(
            stats.dropped, 0,
            "nothing dropped while thinning can make room"
        );
        assert_eq!(
            stats.rows + stats.thinned,
            1 + devices.len() as u64 * samples as u64,
            "every row is buffered or counted as thinned"
        );
        assert!(stats.keep_every >= 8, "{stats:?}");
        assert!(
            buffer.read_after(0, 1).unwrap()[0].kind == Kind::Event,
            "only telemetry is thinned"
        );
        for device in devices {
            let kept = times(&mut buffer, device);
            assert_eq!(kept[0], 1, "{device}: the outage's first sample stays");
            assert!(*kept.last().unwrap() > samples - 2 * stats.keep_every as i64);
            let widest = kept.windows(2).map(|w| w[1] - w[0]).max().unwrap();
            assert!(
                widest <= 2 * stats.keep_every as i64,
                "{device}: a gap of {widest} samples, keeping one in {}",
                stats.keep_every
            );
        }
        drop(buffer);
        let buffer = open_with(&path, max_bytes, OnFull::Downsample);
        let reopened = buffer.stats().unwrap();
        assert_eq!(
            (reopened.thinned, reopened.keep_every),
            (stats.thinned, stats.keep_every),
            "the counters survive a restart"
        );
    }

    #[test]
    fn a_drained_buffer_keeps_every_sample_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut buffer = open_with(&dir.path().join("b.sqlite3"), 64 << 10, OnFull::Downsample);
        for ts in 1..=2_000 {
            buffer.append(&[sample("boiler", ts)]).unwrap();
        }
        assert!(buffer.stats().unwrap().keep_every > 1);
        let seqs: Vec<i64> = buffer
            .read_after(0, 10_000)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        buffer.ack(&seqs[..seqs.len() * 3 / 4]).unwrap();
        assert_eq!(buffer.stats().unwrap().keep_every, 1);
        let before = buffer.stats().unwrap().rows;
        for ts in 2_001..=2_010 {
            buffer.append(&[sample("boiler", ts)]).unwrap();
        }
        assert_eq!(buffer.stats().unwrap().rows, before + 10, "nothing thinned");
    }

    #[test]
    fn downsampling_drops_the_oldest_when_nothing_can_be_thinned() {
        let dir = tempfile::tempdir().unwrap();
        let mut buffer = open_with(&dir.path().join("b.sqlite3"), 64 << 10, OnFull::Downsample);
        for i in 0..2_000 {
            buffer.append(&[record(i * 3, 100)]).unwrap();
        }
        let stats = buffer.stats().unwrap();
        assert!(stats.bytes <= 64 << 10);
        assert!(stats.dropped > 0, "events are not thinned but dropped");
        assert_eq!(stats.thinned, 0);
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

    /// What a row of text is counted for.
    fn size(record: &NewRecord) -> u64 {
        match &record.body {
            Body::Text(text) => (record.device.len() + text.len()) as u64 + ROW_OVERHEAD,
            other => panic!("the model stores text, not {other:?}"),
        }
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
            self.rows.values().map(size).sum()
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
            let mut buffer = Buffer::open(&path, Settings { max_bytes, durability: Durability::Normal, on_full: OnFull::DropOldest }).unwrap();
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
                        buffer = Buffer::open(&path, Settings { max_bytes, durability: Durability::Normal, on_full: OnFull::DropOldest }).unwrap();
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

    fn reading(name: &str, value: u64) -> PointSample {
        PointSample {
            name: name.into(),
            unit: Some("kWh".into()),
            reading: kite_core::Reading::Good(kite_core::Value::UInt(value)),
        }
    }

    fn poll(device: &str, points: Vec<PointSample>) -> NewRecord {
        NewRecord {
            kind: Kind::Telemetry,
            ts_ms: 1,
            device: device.into(),
            body: Body::Points(points),
        }
    }

    #[test]
    fn polls_are_packed_with_their_names_stored_once_per_shape() {
        let dir = tempfile::tempdir().unwrap();
        let mut buffer = open(&dir.path().join("b.sqlite3"), 1 << 20);
        let full: Vec<PointSample> = (0..100)
            .map(|i| reading(&format!("register_{i}"), i))
            .collect();
        let polls = [
            poll("meter", full.clone()),
            poll("meter", full.clone()),
            // Reported by exception: some of the points.
            poll("meter", vec![full[7].clone(), full[3].clone()]),
            poll("boiler", full[..2].to_vec()),
            // A new point: a new schema that extends the old one.
            poll("meter", vec![full[0].clone(), reading("new", 5)]),
            poll("meter", full.clone()),
        ];
        buffer.append(&polls).unwrap();
        let schemas: i64 = buffer
            .conn
            .query_row("SELECT count(*) FROM schemas", [], |r| r.get(0))
            .unwrap();
        assert_eq!(schemas, 3, "meter twice, boiler once");
        let stored: Vec<Body> = buffer
            .read_after(0, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.body)
            .collect();
        let expected: Vec<Body> = polls.iter().map(|p| p.body.clone()).collect();
        assert_eq!(stored, expected);
        let body_bytes: i64 = buffer
            .conn
            .query_row("SELECT length(body) FROM messages WHERE seq = 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(
            body_bytes <= 1 + 100 * 2,
            "{body_bytes} bytes for 100 small values"
        );
        // Reopened, the newest schema of each device is extended, not duplicated.
        drop(buffer);
        let mut buffer = open(&dir.path().join("b.sqlite3"), 1 << 20);
        buffer.append(&[poll("meter", full.clone())]).unwrap();
        let schemas: i64 = buffer
            .conn
            .query_row("SELECT count(*) FROM schemas", [], |r| r.get(0))
            .unwrap();
        assert_eq!(schemas, 3);
        assert_eq!(buffer.read_after(6, 1).unwrap()[0].body, Body::Points(full));
    }

    #[test]
    fn a_version_4_buffer_is_upgraded_and_its_rows_read_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite3");
        let v4 = Connection::open(&path).unwrap();
        v4.execute_batch(
            "CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, device TEXT NOT NULL, body TEXT NOT NULL,
                 kind INTEGER NOT NULL DEFAULT 0, stride INTEGER NOT NULL DEFAULT 1);
             CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             INSERT INTO meta VALUES ('dropped', 0), ('set_aside', 1), ('thinned', 0), ('keep_every', 1);
             CREATE TABLE set_aside (seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, device TEXT NOT NULL, body TEXT NOT NULL, kind INTEGER NOT NULL, reason TEXT NOT NULL);
             INSERT INTO messages (ts, device, body) VALUES (5, 'meter', '{\"t\":{\"value\":1,\"quality\":\"good\"}}');
             PRAGMA user_version = 4;",
        )
        .unwrap();
        drop(v4);
        let mut buffer = open(&path, 1 << 20);
        buffer
            .append(&[poll("meter", vec![reading("t", 2)])])
            .unwrap();
        let rows = buffer.read_after(0, 10).unwrap();
        assert_eq!(
            rows[0].body,
            Body::Text(r#"{"t":{"value":1,"quality":"good"}}"#.into()),
            "a row stored before stays as it was"
        );
        assert_eq!(rows[1].body, Body::Points(vec![reading("t", 2)]));
        assert!(
            buffer.set_aside(2, "test").unwrap(),
            "a packed row can be set aside"
        );
        let version: i64 = buffer
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 5);
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
        let mut buffer = open(&path, 1 << 20);
        let rows = buffer.read_after(0, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].seq, rows[0].kind, rows[0].ts_ms),
            (1, Kind::Telemetry, 5)
        );
        assert_eq!(buffer.stats().unwrap().dropped, 3);
        assert_eq!(buffer.stats().unwrap().keep_every, 1);
    }

    #[test]
    fn seq_is_never_reused_even_when_everything_was_acked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.sqlite3");
        let settings = Settings {
            max_bytes: 1 << 20,
            durability: Durability::Full,
            on_full: OnFull::DropOldest,
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
