//! Modbus for Kite.
//!
//! - [`point`]: what a point is (area, address, type, byte order, scaling) and
//!   how registers decode into values and values encode into registers. Pure.
//! - [`plan`]: merging adjacent points into as few requests as possible. Pure.
//! - [`poller`]: the async task that owns one device's connection: polls on
//!   its interval, times out every call, reconnects with back-off, and applies
//!   writes between polls.
//! - `simulator` (feature): a simulated device, for the demo and benchmarks.

pub mod plan;
pub mod point;
pub mod poller;
#[cfg(feature = "simulator")]
pub mod simulator;

pub use plan::{plan_reads, ReadBlock};
pub use point::{Area, ByteOrder, DataType, PointError, PointSpec, WriteError, WritePayload};
pub use poller::{run_device, DeviceSpec, WriteRequest};
