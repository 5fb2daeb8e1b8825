//! The small core shared by Kite's field-bus crates: what a sample is, how a
//! write request looks, and how to back off between retries.
//!
//! It knows nothing about MQTT, SQLite or WASM: protocol crates depend on it,
//! and the gateway turns its types into messages.

pub mod backoff;
pub mod sample;

pub use backoff::Backoff;
pub use sample::{now_ms, PointSample, Reading, Sample, Value};
