//! Zigbee for Kite through a Texas Instruments Z-Stack coprocessor (ZNP).
//!
//! Pure, bounded, with no I/O (a malformed frame is an error value, never a
//! panic): the MT frames on the stick's UART ([`mt`]), the ZNP commands
//! Kite sends and the responses and indications it reads ([`znp`]), Zigbee
//! Cluster Library frames ([`zcl`]) and what the clusters Kite knows become
//! ([`clusters`]).
//!
//! On top of them: what the network needs of a coordinator stick
//! ([`coordinator`]), and Z-Stack's answer to it ([`zstack`]: the stick on
//! its serial port in [`driver`], bringing the network up in [`startup`]);
//! the task that runs the network, whatever the stick ([`network`]); what
//! it remembers, kept by the embedding application ([`store`]).

pub mod clusters;
pub mod coordinator;
pub mod driver;
pub mod mt;
pub mod network;
pub mod startup;
pub mod store;
pub mod zcl;
pub mod znp;
pub mod zstack;

pub use coordinator::Endpoint;
pub use coordinator::NetworkSettings;
pub use network::{
    run_zigbee, ClusterDecode, DeviceParts, ZigbeeCommand, ZigbeeDevice, ZigbeeHealth,
    ZigbeeInputs, ZigbeeSpec, DEFAULT_STALE_AFTER,
};
pub use store::{DeviceRecord, ZigbeeStore};
