//! What the network task needs of a coordinator stick, whatever its stack:
//! Texas Instruments Z-Stack ([`crate::zstack::ZStack`]) implements it, and
//! Silicon Labs EZSP can. Everything above it (interviews, clusters,
//! writes, commands, the devices' memory) is shared.

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::mpsc;

/// The network Kite runs: from the config, or chosen at random once and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    pub channel: u8,
    pub pan_id: u16,
    pub extended_pan_id: u64,
    pub network_key: [u8; 16],
}

/// One endpoint of a device, from its simple descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: u8,
    pub profile: u16,
    pub device_id: u16,
    pub in_clusters: Vec<u16>,
    pub out_clusters: Vec<u16>,
}

/// Why a call to the stick failed, and whether the stick itself is gone
/// (it is then opened and started again).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CoordinatorError {
    pub message: String,
    /// The stick did not answer, or its line failed: not one request.
    pub link: bool,
}

/// How the network came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// The stick held the network and resumed it: devices stay joined.
    Resumed,
    /// The network was formed now: devices must join it.
    Formed,
}

/// The stick as it came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stick {
    pub ieee: u64,
    pub started: Started,
}

/// What the stick says without being asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Indication {
    /// A device joined or rejoined, at `nwk`.
    Joined { ieee: u64, nwk: u16 },
    /// A device left (`rejoin`: it will be back).
    Left { ieee: u64, rejoin: bool },
    /// A ZCL frame from a device.
    Message {
        nwk: u16,
        cluster: u16,
        lqi: u8,
        data: Vec<u8>,
    },
    /// The stick reset by itself: the network must be started again.
    Reset,
}

/// What the line saw that was not a frame the driver understood.
#[derive(Debug, Default)]
pub struct LineCounters {
    /// Bytes dropped by the deframer: noise, bad checksums, overlong frames.
    pub discarded_bytes: AtomicU64,
    /// Frames that did not parse as the command they claim to be.
    pub bad_frames: AtomicU64,
    /// Indications dropped because the network task fell behind.
    pub dropped: AtomicU64,
}

type Answer<T> = Result<T, CoordinatorError>;

/// A coordinator stick on its line. Every call is bounded in time.
pub trait Coordinator: Send + Sync + Sized + 'static {
    /// Opens the stick's port; what it says unasked comes on the receiver,
    /// which closes when the line does.
    fn open(
        port: &str,
        baud: u32,
        counters: Arc<LineCounters>,
    ) -> Answer<(Self, mpsc::Receiver<Indication>)>;
    /// Resets the stick and brings `network` up: resumed when the stick
    /// holds it and `formed_before` says the gateway formed exactly it,
    /// formed otherwise.
    fn start(
        &self,
        network: &NetworkSettings,
        formed_before: bool,
    ) -> impl Future<Output = Answer<Stick>> + Send;
    /// Is the stick still there?
    fn ping(&self) -> impl Future<Output = Answer<()>> + Send;
    /// Opens joining for `seconds` (0 closes it).
    fn permit_join(&self, seconds: u8) -> impl Future<Output = Answer<()>> + Send;
    /// Asks the device at `nwk` to leave the network.
    fn leave(&self, nwk: u16, ieee: u64) -> impl Future<Output = Answer<()>> + Send;
    /// Checks the device answers for its node descriptor.
    fn node_descriptor(&self, nwk: u16) -> impl Future<Output = Answer<()>> + Send;
    fn active_endpoints(&self, nwk: u16) -> impl Future<Output = Answer<Vec<u8>>> + Send;
    fn simple_descriptor(
        &self,
        nwk: u16,
        endpoint: u8,
    ) -> impl Future<Output = Answer<Endpoint>> + Send;
    /// Binds the device's `cluster` on `endpoint` to the coordinator.
    fn bind(
        &self,
        nwk: u16,
        ieee: u64,
        endpoint: u8,
        cluster: u16,
        coordinator: u64,
    ) -> impl Future<Output = Answer<()>> + Send;
    /// Sends a ZCL frame; done when the stick confirms its delivery.
    fn send_zcl(
        &self,
        nwk: u16,
        endpoint: u8,
        cluster: u16,
        frame: Vec<u8>,
    ) -> impl Future<Output = Answer<()>> + Send;
    /// Sends a global ZCL request and returns the payload of the device's
    /// answer (global command `answer`, same sequence number).
    fn ask_zcl(
        &self,
        nwk: u16,
        endpoint: u8,
        cluster: u16,
        frame: Vec<u8>,
        answer: u8,
    ) -> impl Future<Output = Answer<Vec<u8>>> + Send;
}
