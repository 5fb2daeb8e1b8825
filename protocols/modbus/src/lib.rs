//! Modbus TCP and RTU for Kite.
//!
//! - [`point`]: what a point is (area, address, type, byte order, scaling) and
//!   how registers decode into values and values encode into registers. Pure.
//! - [`plan`]: merging adjacent points into as few requests as possible. Pure.
//! - [`bus`]: the async task that owns one link (a Modbus TCP connection, an
//!   RS-485 line, an RTU-over-TCP converter) and serves every device on it:
//!   earliest deadline first, silent intervals kept, every call timed out,
//!   silent devices quarantined, writes between transactions.
//! - `simulator` (feature): a simulated device, for the demo and benchmarks.

pub mod bus;
pub mod plan;
pub mod point;
#[cfg(feature = "simulator")]
pub mod simulator;

pub use bus::{run_bus, BusMonitor, BusSpec, DeviceSpec, Link, WriteRequest};
pub use plan::{plan_reads, ReadBlock};
pub use point::{Area, ByteOrder, DataType, PointError, PointSpec, WriteError, WritePayload};
