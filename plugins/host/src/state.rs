//! The key-value state of plug-ins, in `<data_dir>/plugins.sqlite3`:
//! `state(plugin, key, value)`. Each plug-in sees only its own keys and may
//! keep at most its configured number of bytes (keys plus values).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

pub struct StateStore {
    conn: Connection,
    plugin: String,
    limit: u64,
}

/// Plug-ins start on threads of their own, often at once. Switching a new
/// file to WAL needs it to itself and fails at once (no busy wait) when
/// another connection is opening it: opens take turns.
static OPENING: Mutex<()> = Mutex::new(());

impl StateStore {
    pub fn open(path: &Path, plugin: &str, limit: u64) -> rusqlite::Result<Self> {
        let _turn = OPENING.lock().unwrap_or_else(|e| e.into_inner());
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS state (
                 plugin TEXT NOT NULL,
                 key TEXT NOT NULL,
                 value BLOB NOT NULL,
                 PRIMARY KEY (plugin, key))",
        )?;
        Ok(Self {
            conn,
            plugin: plugin.to_string(),
            limit,
        })
    }

    pub fn get(&self, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
        self.conn
            .query_row(
                "SELECT value FROM state WHERE plugin = ?1 AND key = ?2",
                params![self.plugin, key],
                |r| r.get(0),
            )
            .optional()
    }

    /// Stores `value`, unless that would take the plug-in past its limit.
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        // Immediate: a read that later writes could not wait for another
        // plug-in's write and would fail at once.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())?;
        let others: i64 = tx
            .query_row(
                "SELECT coalesce(sum(length(CAST(key AS BLOB)) + length(value)), 0) FROM state WHERE plugin = ?1 AND key != ?2",
                params![self.plugin, key],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        let needed = others as u64 + key.len() as u64 + value.len() as u64;
        if needed > self.limit {
            return Err(format!(
                "state limit of {} bytes reached ({needed} bytes would be needed)",
                self.limit
            ));
        }
        tx.execute(
            "INSERT INTO state (plugin, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value",
            params![self.plugin, key, value],
        )
        .map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())
    }

    pub fn delete(&self, key: &str) -> rusqlite::Result<()> {
        self.conn
            .execute(
                "DELETE FROM state WHERE plugin = ?1 AND key = ?2",
                params![self.plugin, key],
            )
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_per_plugin_bounded_and_persistent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugins.sqlite3");
        let mut a = StateStore::open(&path, "a", 20).unwrap();
        let mut b = StateStore::open(&path, "b", 20).unwrap();
        a.set("k", b"0123456789").unwrap();
        assert_eq!(
            b.get("k").unwrap(),
            None,
            "plug-ins do not see each other's keys"
        );
        b.set("k", b"x").unwrap();
        assert!(a.set("k2", b"0123456789").is_err(), "past the limit");
        a.set("k", b"0123456789abcdefghij").unwrap_err();
        a.set("k", b"short").unwrap();
        drop(a);
        let a = StateStore::open(&path, "a", 20).unwrap();
        assert_eq!(a.get("k").unwrap().as_deref(), Some(&b"short"[..]));
        a.delete("k").unwrap();
        assert_eq!(a.get("k").unwrap(), None);
    }

    #[test]
    fn plug_ins_opening_and_writing_at_once_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugins.sqlite3");
        let writers: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut store = StateStore::open(&path, &format!("p{i}"), 1 << 20).unwrap();
                    for key in 0..50 {
                        store.set(&format!("k{key}"), &[i; 16]).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let store = StateStore::open(&path, "p7", 1 << 20).unwrap();
        assert_eq!(store.get("k49").unwrap(), Some(vec![7; 16]));
    }
}
