//! The small core shared by Kite's field-bus crates: what a sample is, how to
//! back off between retries, what health a device and a bus report, and how a
//! serial line is set up.
//!
//! It knows nothing about MQTT, SQLite or WASM: protocol crates depend on it,
//! and the gateway turns its types into messages.

pub mod backoff;
pub mod health;
pub mod sample;
pub mod serial;

pub use backoff::Backoff;
pub use health::{BusHealth, DeviceHealth};
pub use sample::{now_ms, PointSample, Reading, Sample, Value};
