//! What the network task remembers across restarts: the network it formed
//! and the devices on it. Kept by the embedding application (the gateway
//! keeps it in SQLite beside its buffer); this crate only says what.

use crate::coordinator::{Endpoint, NetworkSettings};

/// A device on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub ieee: u64,
    /// Its short address, which changes when it rejoins.
    pub nwk: u16,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub endpoints: Vec<Endpoint>,
    /// Interviewed (and bound, and configured to report): not asked again.
    pub interviewed: bool,
}

impl DeviceRecord {
    /// The first endpoint serving `cluster`.
    pub fn endpoint_with(&self, cluster: u16) -> Option<u8> {
        self.endpoints
            .iter()
            .find(|e| e.in_clusters.contains(&cluster))
            .map(|e| e.id)
    }
}

/// Where the network and its devices are kept.
pub trait ZigbeeStore: Send + Sync {
    fn devices(&self) -> Result<Vec<DeviceRecord>, String>;
    fn save_device(&self, device: &DeviceRecord) -> Result<(), String>;
    fn remove_device(&self, ieee: u64) -> Result<(), String>;
    /// The network this gateway last formed on its stick.
    fn formed(&self) -> Result<Option<NetworkSettings>, String>;
    fn set_formed(&self, network: &NetworkSettings) -> Result<(), String>;
}
