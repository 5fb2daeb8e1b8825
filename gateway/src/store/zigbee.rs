//! The Zigbee network's memory (`<data_dir>/zigbee.sqlite3`): the network
//! Kite formed on its stick, the PAN ids it chose, and the devices on it,
//! so that a restart resumes the same network with the same devices and
//! interviews nobody again.
//!
//! ```sql
//! CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
//!   -- 'pan_id', 'extended_pan_id': chosen at random on the first start;
//!   -- 'formed': the network last formed on the stick (JSON)
//! CREATE TABLE devices (ieee TEXT PRIMARY KEY, record TEXT NOT NULL);  -- JSON
//! ```

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kite_zigbee::{DeviceRecord, Endpoint, NetworkSettings, ZigbeeStore};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// The database, opened once; its calls are short and rare (joins,
/// interviews), so they run on the caller's thread.
pub struct ZigbeeDb {
    conn: Mutex<Connection>,
}

impl ZigbeeDb {
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("zigbee.sqlite3")
    }

    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS devices (ieee TEXT PRIMARY KEY, record TEXT NOT NULL);",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>, String> {
        self.conn()
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| e.to_string())
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), String> {
        self.conn()
            .execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

#[derive(Serialize, Deserialize)]
struct StoredNetwork {
    channel: u8,
    pan_id: u16,
    extended_pan_id: u64,
    network_key: [u8; 16],
}

#[derive(Serialize, Deserialize)]
struct StoredDevice {
    nwk: u16,
    manufacturer: Option<String>,
    model: Option<String>,
    endpoints: Vec<StoredEndpoint>,
    interviewed: bool,
}

#[derive(Serialize, Deserialize)]
struct StoredEndpoint {
    id: u8,
    profile: u16,
    device_id: u16,
    in_clusters: Vec<u16>,
    out_clusters: Vec<u16>,
}

impl ZigbeeStore for ZigbeeDb {
    fn devices(&self) -> Result<Vec<DeviceRecord>, String> {
        let conn = self.conn();
        let mut query = conn
            .prepare("SELECT ieee, record FROM devices")
            .map_err(|e| e.to_string())?;
        let rows = query
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| e.to_string())?;
        let mut devices = Vec::new();
        for row in rows {
            let (ieee, record) = row.map_err(|e| e.to_string())?;
            let ieee = u64::from_str_radix(&ieee, 16).map_err(|e| format!("ieee {ieee:?}: {e}"))?;
            let stored: StoredDevice =
                serde_json::from_str(&record).map_err(|e| format!("device {ieee:016x}: {e}"))?;
            devices.push(DeviceRecord {
                ieee,
                nwk: stored.nwk,
                manufacturer: stored.manufacturer,
                model: stored.model,
                endpoints: stored
                    .endpoints
                    .into_iter()
                    .map(|e| Endpoint {
                        id: e.id,
                        profile: e.profile,
                        device_id: e.device_id,
                        in_clusters: e.in_clusters,
                        out_clusters: e.out_clusters,
                    })
                    .collect(),
                interviewed: stored.interviewed,
            });
        }
        Ok(devices)
    }

    fn save_device(&self, device: &DeviceRecord) -> Result<(), String> {
        let stored = StoredDevice {
            nwk: device.nwk,
            manufacturer: device.manufacturer.clone(),
            model: device.model.clone(),
            endpoints: device
                .endpoints
                .iter()
                .map(|e| StoredEndpoint {
                    id: e.id,
                    profile: e.profile,
                    device_id: e.device_id,
                    in_clusters: e.in_clusters.clone(),
                    out_clusters: e.out_clusters.clone(),
                })
                .collect(),
            interviewed: device.interviewed,
        };
        let record = serde_json::to_string(&stored).map_err(|e| e.to_string())?;
        self.conn()
            .execute(
                "INSERT INTO devices (ieee, record) VALUES (?1, ?2)
                 ON CONFLICT (ieee) DO UPDATE SET record = excluded.record",
                params![format!("{:016x}", device.ieee), record],
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn remove_device(&self, ieee: u64) -> Result<(), String> {
        self.conn()
            .execute(
                "DELETE FROM devices WHERE ieee = ?1",
                [format!("{ieee:016x}")],
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn formed(&self) -> Result<Option<NetworkSettings>, String> {
        let Some(text) = self.setting("formed")? else {
            return Ok(None);
        };
        let stored: StoredNetwork = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        Ok(Some(NetworkSettings {
            channel: stored.channel,
            pan_id: stored.pan_id,
            extended_pan_id: stored.extended_pan_id,
            network_key: stored.network_key,
        }))
    }

    fn set_formed(&self, network: &NetworkSettings) -> Result<(), String> {
        let stored = StoredNetwork {
            channel: network.channel,
            pan_id: network.pan_id,
            extended_pan_id: network.extended_pan_id,
            network_key: network.network_key,
        };
        let text = serde_json::to_string(&stored).map_err(|e| e.to_string())?;
        self.set_setting("formed", &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_and_the_network_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = ZigbeeDb::path_in(dir.path());
        let network = NetworkSettings {
            channel: 15,
            pan_id: 0x1a2b,
            extended_pan_id: 0xdddd_dddd_dddd_dddd,
            network_key: [7; 16],
        };
        let device = DeviceRecord {
            ieee: 0x0012_4b00_1234_5678,
            nwk: 0x4f21,
            manufacturer: Some("LUMI".into()),
            model: Some("lumi.weather".into()),
            endpoints: vec![Endpoint {
                id: 1,
                profile: 0x0104,
                device_id: 0x0302,
                in_clusters: vec![0x0000, 0x0402],
                out_clusters: vec![],
            }],
            interviewed: true,
        };
        {
            let db = ZigbeeDb::open(&path).unwrap();
            assert_eq!(db.formed().unwrap(), None);
            db.set_formed(&network).unwrap();
            db.save_device(&device).unwrap();
            db.set_setting("pan_id", "6699").unwrap();
        }
        let db = ZigbeeDb::open(&path).unwrap();
        assert_eq!(db.formed().unwrap(), Some(network));
        assert_eq!(db.devices().unwrap(), std::slice::from_ref(&device));
        assert_eq!(db.setting("pan_id").unwrap().as_deref(), Some("6699"));
        db.remove_device(device.ieee).unwrap();
        assert!(db.devices().unwrap().is_empty());
    }
}
