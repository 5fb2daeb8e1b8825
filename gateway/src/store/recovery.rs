//! A damaged buffer file: the integrity check, and the recovery of every
//! row that can still be read (see "A damaged file" in [`crate::store`]).

use std::ffi::OsString;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Statement};
use tracing::error;

use super::reader::open_read_only;
use super::schema::{migrate, read_counter, read_last_seq, stored_row, StoredRow};
use super::BufferError;

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
/// into a new buffer file `output`, with its `seq`, `ts`, `device`, `body`,
/// `kind` and `schema`, the schemas that can be read, and the `dropped`
/// counter if it can be read. `damaged` is
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
            "INSERT INTO messages (seq, ts, device, body, kind, schema) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        salvage(&source, bound, &mut unreadable, &mut |row| {
            insert.execute(params![
                row.seq, row.ts_ms, row.device, row.body, row.kind, row.schema
            ])?;
            rows += 1;
            last_seq = row.seq;
            Ok(())
        })?;
        // The schemas packed rows are read with; a row whose schema is lost
        // is kept, and set aside as unreadable when it comes to be sent.
        let mut insert =
            tx.prepare("INSERT INTO schemas (id, device, points) VALUES (?1, ?2, ?3)")?;
        if let Ok(mut schemas) = source.prepare("SELECT id, device, points FROM schemas") {
            if let Ok(mut found) = schemas.query([]) {
                while let Ok(Some(schema)) = found.next() {
                    let columns: rusqlite::Result<(i64, String, Vec<u8>)> =
                        (|| Ok((schema.get(0)?, schema.get(1)?, schema.get(2)?)))();
                    if let Ok((id, device, points)) = columns {
                        insert.execute(params![id, device, points])?;
                    }
                }
            }
        }
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
    save: &mut dyn FnMut(StoredRow) -> Result<(), BufferError>,
) -> Result<(), BufferError> {
    let has = |column: &str| {
        source.query_row(
            "SELECT count(*) > 0 FROM pragma_table_info('messages') WHERE name = ?1",
            [column],
            |r| r.get::<_, bool>(0),
        )
    };
    // A version 1 file has no `kind`: its rows are all telemetry; before
    // version 5 none has a `schema`: their bodies are text.
    let kind = if let Ok(false) = has("kind") {
        "0"
    } else {
        "kind"
    };
    let schema = if let Ok(false) = has("schema") {
        "NULL"
    } else {
        "schema"
    };
    let statements = source
        .prepare(&format!(
            "SELECT seq, ts, device, body, {kind}, {schema} FROM messages WHERE seq > ?1 AND seq <= ?2 ORDER BY seq"
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
    save: &mut dyn FnMut(StoredRow) -> Result<(), BufferError>,
) -> Result<bool, BufferError> {
    let Ok(mut rows) = scan.query(params![*after, last]) else {
        return Ok(false);
    };
    loop {
        let record = match rows.next() {
            Ok(None) => return Ok(true),
            Ok(Some(row)) => match stored_row(row) {
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
pub(super) fn replace_if_damaged(path: &Path) -> Result<(), BufferError> {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::store::testing::{open, record};
    use kite_core::{PointSample, Reading, Value};

    use crate::store::{Body, BufferReader, Kind, NewRecord, Record, Stats};

    /// Fills a new buffer at `path` with `count` rows from two devices, with
    /// a size limit that drops the first ones; returns what it holds, closed.
    fn filled(path: &Path, count: usize) -> (Vec<Record>, Stats) {
        let max_bytes = (count as u64 - count as u64 / 10) * 160;
        let mut buffer = open(path, max_bytes);
        let records: Vec<_> = (0..count)
            .map(|i| NewRecord {
                kind: if i % 7 == 0 {
                    Kind::Event
                } else {
                    Kind::Telemetry
                },
                ts_ms: 1_700_000_000_000 + i as i64,
                device: if i % 2 == 0 { "boiler" } else { "meter" }.into(),
                // Telemetry packed against its device's schema, events as text.
                body: if i % 7 == 0 {
                    Body::Text(format!(r#"{{"i":{i},"pad":"{}"}}"#, "p".repeat(130)))
                } else {
                    Body::Points(vec![
                        PointSample {
                            name: "i".into(),
                            unit: Some("kWh".into()),
                            reading: Reading::Good(Value::UInt(i as u64)),
                        },
                        PointSample {
                            name: "pad".into(),
                            unit: None,
                            reading: Reading::Good(Value::Text("p".repeat(130))),
                        },
                    ])
                },
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
        let mut buffer = open(&path, 1 << 20);
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

        let mut buffer = open(&output, 1 << 30);
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
        let mut buffer = open(&output, 1 << 30);
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

        let mut buffer = open(&path, 1 << 20);
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

        let mut buffer = open(&path, 1 << 30);
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
