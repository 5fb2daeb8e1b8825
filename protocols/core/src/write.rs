//! A write from the cloud (or a plug-in) to one device's point, and why it
//! can fail: the same for every protocol, so the uplink needs to know none.

use std::sync::Arc;

use tokio::sync::oneshot;

/// A write for a device's link; the result goes back on `reply`.
#[derive(Debug)]
pub struct WriteRequest {
    pub device: Arc<str>,
    pub point: String,
    pub value: serde_json::Value,
    pub reply: oneshot::Sender<Result<(), WriteError>>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("no point named {0:?} on this device")]
    UnknownPoint(String),
    #[error("point {0:?} is not writable")]
    NotWritable(String),
    #[error("expected a {0}, got {1}")]
    Type(&'static str, String),
    #[error("{0}")]
    Range(String),
    #[error("device error: {0}")]
    Device(String),
    #[error("the device is shutting down")]
    ShuttingDown,
}
