//! The small core shared by Kite's field-bus crates: what a sample is, how to
//! back off between retries, what health a device and a bus report, how a
//! serial line is set up, how a poller hands over what it read, what a
//! write to a point is, and when a point is reported by exception.
//!
//! It knows nothing about MQTT, SQLite or WASM: protocol crates depend on it,
//! and the gateway turns its types into messages.

pub mod backoff;
pub mod exception;
pub mod freshness;
pub mod health;
pub mod packed;
pub mod sample;
pub mod serial;
pub mod sink;
pub mod write;

pub use backoff::Backoff;
pub use exception::{Exceptions, ReportRule, ReportRules};
pub use freshness::Freshness;
pub use health::{truncate, BusHealth, DeviceHealth, MAX_ERROR_BYTES};
pub use sample::{now_ms, points_json, utc, PointSample, Reading, Sample, Value};
pub use sink::{SampleSink, Unsent};
pub use write::{WriteError, WriteRequest};
