//! Zigbee for Kite through a Texas Instruments Z-Stack coprocessor (ZNP).
//!
//! Pure, bounded, with no I/O (a malformed frame is an error value, never a
//! panic): the MT frames on the stick's UART ([`mt`]), the ZNP commands
//! Kite sends and the responses and indications it reads ([`znp`]), Zigbee
//! Cluster Library frames ([`zcl`]) and what the clusters Kite knows become
//! ([`clusters`]).
//!
//! On top of them: the stick on its serial port ([`driver`]), bringing the
//! network up ([`startup`]), and the task that runs it ([`network`]); what
//! it remembers is kept by the embedding application ([`store`]).

pub mod clusters;
pub mod driver;
pub mod mt;
pub mod network;
pub mod startup;
pub mod store;
pub mod zcl;
pub mod znp;

pub use network::{
    run_zigbee, ZigbeeCommand, ZigbeeDevice, ZigbeeHealth, ZigbeeInputs, ZigbeeSpec,
    DEFAULT_STALE_AFTER,
};
pub use startup::NetworkSettings;
pub use store::{DeviceRecord, Endpoint, ZigbeeStore};
