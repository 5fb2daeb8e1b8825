//! Modbus TCP and RTU for Kite.
//!
//! - [`point`]: what a point is (area, address, type, byte order, scaling) and
//!   how registers decode into values and values encode into registers. Pure.
//! - [`plan`]: merging adjacent points into as few requests as possible. Pure.
//! - [`schedule`]: when each device on a link is served: earliest deadline
//!   first, silent intervals, quarantine with back-off, missed polls, a link
//!   that is down. Pure: fed with instants, tested without I/O.
//! - [`bus`]: the async task that owns one link (a Modbus TCP connection, an
//!   RS-485 line, an RTU-over-TCP converter) and serves every device on it
//!   by its schedule: every call timed out, a link reopened after any
//!   garbled reply, writes between transactions.
//! - `simulator` (feature): a simulated device, for the demo and benchmarks.

pub mod bus;
pub mod plan;
pub mod point;
pub mod schedule;
#[cfg(feature = "simulator")]
pub mod simulator;

pub use bus::{run_bus, BusMonitor, BusSpec, DeviceSpec, Link};
pub use plan::{plan_reads, ReadBlock};
pub use point::{Area, ByteOrder, DataType, PointError, PointSpec, WritePayload};
