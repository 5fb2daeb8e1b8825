//! Sparkplug B (`[mqtt] format = "sparkplug"`): Kite as an edge node. The
//! node is `sparkplug.edge_node_id` in `sparkplug.group_id`, each device a
//! Sparkplug device of the same name, each point a metric of the same name.
//!
//! Topics are `spBv1.0/{group}/{NBIRTH|NDEATH|DBIRTH|DDATA|DDEATH|NCMD|DCMD}/{node}[/{device}]`,
//! payloads the Sparkplug B protobuf generated from `sparkplug_b.proto`.
//! The buffer stays the source of truth: a DDATA (or the DDEATH of a
//! device found down) carries one buffered row, made at publish time, and
//! the row goes only on its PUBACK. Births carry no row.
//!
//! `bdSeq` is kept in `<data_dir>/sparkplug-bdseq`, so that a gateway
//! back from a power cut never reuses the `bdSeq` of a will the broker may
//! still publish.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use tracing::warn;

mod metric;
mod session;

pub use session::{asks_rebirth, Kind, Out, RowOutcome, Session};

/// The payload types generated from `sparkplug_b.proto`.
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/sparkplug_b.rs"));
}

/// The datatype each configured point is given, by device and point; the
/// points of other devices get theirs from their first value.
pub type DeclaredTypes = HashMap<String, HashMap<String, proto::DataType>>;

/// The datatypes the Modbus points of a config declare.
pub fn declared_types(buses: &[kite_modbus::BusSpec]) -> DeclaredTypes {
    buses
        .iter()
        .flat_map(|bus| &bus.devices)
        .map(|device| {
            let points = device
                .points
                .iter()
                .map(|point| (point.name.to_string(), metric::declared(point)))
                .collect();
            (device.name.to_string(), points)
        })
        .collect()
}

/// The topics of one edge node.
#[derive(Debug, Clone)]
pub struct SparkplugTopics {
    group: String,
    node: String,
}

impl SparkplugTopics {
    pub fn new(group_id: &str, edge_node_id: &str) -> Self {
        Self {
            group: group_id.into(),
            node: edge_node_id.into(),
        }
    }

    /// `NBIRTH`, `NDEATH` or `NCMD` of the node.
    pub fn node(&self, word: &str) -> String {
        format!("spBv1.0/{}/{word}/{}", self.group, self.node)
    }

    pub fn device(&self, kind: Kind, device: &str) -> String {
        self.device_topic(kind.topic_word(), device)
    }

    fn device_topic(&self, word: &str, device: &str) -> String {
        format!("spBv1.0/{}/{word}/{}/{device}", self.group, self.node)
    }

    pub fn dcmd_filter(&self) -> String {
        self.device_topic("DCMD", "+")
    }

    /// The device a DCMD topic addresses.
    pub fn dcmd_device<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let prefix = self.device_topic("DCMD", "");
        topic
            .strip_prefix(&prefix)
            .filter(|device| !device.is_empty() && !device.contains('/'))
    }

    /// Where a host application says whether it is online (Sparkplug 3.0).
    pub fn state(host_id: &str) -> String {
        format!("spBv1.0/STATE/{host_id}")
    }
}

/// A primary host application's STATE: `{"online": bool, "timestamp": ms}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct HostState {
    pub online: bool,
    pub timestamp: u64,
}

impl HostState {
    pub fn parse(payload: &[u8]) -> Option<Self> {
        serde_json::from_slice(payload).ok()
    }
}

/// The `bdSeq` of each new connection, 0 to 255 and on, kept across
/// restarts in `<data_dir>/sparkplug-bdseq`.
#[derive(Debug)]
pub struct BdSeq {
    path: PathBuf,
    last: Option<u8>,
}

impl BdSeq {
    pub fn open(data_dir: &Path) -> Self {
        let path = data_dir.join("sparkplug-bdseq");
        let last = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse().ok());
        Self { path, last }
    }

    /// Takes the next `bdSeq`, written down before it is used (a failure to write
    /// is logged: the sequence goes on in memory).
    pub fn take(&mut self) -> u8 {
        let next = self.last.map_or(0, |last| last.wrapping_add(1));
        self.last = Some(next);
        if let Err(e) = self.store(next) {
            warn!(path = %self.path.display(), error = %e, "cannot keep the Sparkplug bdSeq; a restart starts it again from 0");
        }
        next
    }

    fn store(&self, value: u8) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        writeln!(file, "{value}")?;
        file.as_file().sync_all()?;
        file.persist(&self.path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
