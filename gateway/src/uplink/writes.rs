//! Writes from the cloud: a request on `{prefix}/{gateway}/{device}/set` is
//! checked, handed to its device's link, and answered whatever happens; the
//! answer goes to the ingest task, which commits it to the buffer, so it is
//! delivered like any message, also across an outage or a restart.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::client::Message;
use kite_core::{WriteError, WriteRequest};
use serde::Deserialize;
use tokio::sync::{mpsc, Semaphore};
use tracing::{info, warn};

use super::sparkplug::{asks_rebirth, HostState, Session, SparkplugTopics};
use super::wire::{Answer, WriteResult};
use super::{NodeEvent, Uplink};

/// How long a write waits for its device before the result says so.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Writes in progress at once; more get a "busy" result at once.
pub(super) const MAX_CONCURRENT_WRITES: usize = 32;
/// Longest request `id` a write result echoes, in bytes of JSON.
const MAX_REQUEST_ID_BYTES: usize = 256;

/// Where each device's write requests go.
pub type WriteRoutes = HashMap<String, mpsc::Sender<WriteRequest>>;

/// The result of a write request or a network command, on its way to the
/// buffer (and from there to `{device}/set/result`, or `{command}/result`
/// where `device` is the command, like `zigbee/permit_join`).
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    pub device: String,
    pub ts_ms: i64,
    pub result: Answer,
}

/// A write request as the cloud sends it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRequest {
    #[serde(default)]
    id: serde_json::Value,
    point: String,
    value: serde_json::Value,
}

impl Uplink {
    /// Checks a write request and hands it to its device; the result is
    /// stored and published whatever happens, so every request gets an answer.
    pub(super) fn on_set(&self, publish: &Message, writes: &Arc<Semaphore>) {
        let Some(device) = self.topics.set_device(&publish.topic) else {
            return;
        };
        let device = device.to_string();
        let payload = &publish.payload[..];
        if publish.retain {
            // A retained command would run again on every reconnect.
            self.reject(
                device,
                request_id(payload),
                None,
                "retained write requests are refused: publish them without retain".into(),
            );
            return;
        }
        let request: SetRequest = match serde_json::from_slice(payload) {
            Ok(request) => request,
            Err(e) => {
                self.reject(
                    device,
                    request_id(payload),
                    None,
                    format!("bad request: {e}; expected {{\"id\", \"point\", \"value\"}}"),
                );
                return;
            }
        };
        if request.id.to_string().len() > MAX_REQUEST_ID_BYTES {
            self.reject(
                device,
                serde_json::Value::Null,
                Some(request.point),
                format!("bad request: the id is longer than {MAX_REQUEST_ID_BYTES} bytes"),
            );
            return;
        }
        self.write(device, request.id, request.point, request.value, writes);
    }

    /// A message for the Sparkplug edge node: an NCMD, a DCMD (its writes
    /// go the way of `/set`, each answered), or the primary host's STATE;
    /// `None` for any other message.
    pub(super) fn on_sparkplug(
        &self,
        publish: &Message,
        session: &mut Session,
        writes: &Arc<Semaphore>,
    ) -> Option<NodeEvent> {
        let node = self.sparkplug.as_ref()?;
        if publish.topic == node.topics.node("NCMD") {
            return Some(if asks_rebirth(&publish.payload) {
                NodeEvent::Rebirth
            } else {
                NodeEvent::Handled
            });
        }
        if let Some(host) = &node.primary_host_id {
            if publish.topic == SparkplugTopics::state(host) {
                let Some(state) = HostState::parse(&publish.payload) else {
                    warn!(topic = %publish.topic, "a STATE message that is not Sparkplug 3.0 JSON; ignored");
                    return Some(NodeEvent::Handled);
                };
                return Some(match session.host_state(state) {
                    Some(true) => NodeEvent::HostOnline,
                    Some(false) => NodeEvent::HostOffline,
                    None => NodeEvent::Handled,
                });
            }
        }
        let device = node.topics.dcmd_device(&publish.topic)?.to_string();
        if publish.retain {
            self.reject(
                device,
                serde_json::Value::Null,
                None,
                "retained commands are refused: publish them without retain".into(),
            );
            return Some(NodeEvent::Handled);
        }
        match session.command(&device, &publish.payload) {
            Err(e) => self.reject(
                device,
                serde_json::Value::Null,
                None,
                format!("bad DCMD: {e}"),
            ),
            Ok(commands) => {
                for (point, value) in commands {
                    match value {
                        Ok(value) => self.write(
                            device.clone(),
                            serde_json::Value::Null,
                            point,
                            value,
                            writes,
                        ),
                        Err(e) => {
                            self.reject(device.clone(), serde_json::Value::Null, Some(point), e)
                        }
                    }
                }
            }
        }
        Some(NodeEvent::Handled)
    }

    /// Hands a checked request to its device's link; the result is stored
    /// and published whatever happens.
    fn write(
        &self,
        device: String,
        id: serde_json::Value,
        point: String,
        value: serde_json::Value,
        writes: &Arc<Semaphore>,
    ) {
        let Some(route) = self.routes.get().get(&device).cloned() else {
            self.reject(
                device.clone(),
                id,
                Some(point),
                format!("no device named {device:?}"),
            );
            return;
        };
        let Ok(permit) = writes.clone().try_acquire_owned() else {
            self.reject(
                device,
                id,
                Some(point),
                "busy: too many writes in progress".into(),
            );
            return;
        };
        let request = SetRequest { id, point, value };
        let results = self.results.clone();
        let counters = self.counters.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (reply, response) = tokio::sync::oneshot::channel();
            let write = WriteRequest {
                device: Arc::from(device.as_str()),
                point: request.point.clone(),
                value: request.value,
                reply,
            };
            let outcome = match route.try_send(write) {
                Err(mpsc::error::TrySendError::Full(_)) => {
                    Err("busy: the device has too many writes queued".to_string())
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    Err(WriteError::ShuttingDown.to_string())
                }
                Ok(()) => match tokio::time::timeout(WRITE_TIMEOUT, response).await {
                    Err(_) => Err(format!(
                        "no answer from the device within {WRITE_TIMEOUT:?}"
                    )),
                    Ok(Err(_)) => Err(WriteError::ShuttingDown.to_string()),
                    Ok(Ok(result)) => result.map_err(|e| e.to_string()),
                },
            };
            match &outcome {
                Ok(()) => info!(device = %device, point = %request.point, "write done"),
                Err(error) => {
                    counters.writes_rejected.fetch_add(1, Ordering::Relaxed);
                    warn!(device = %device, point = %request.point, %error, "write failed");
                }
            }
            let result = WriteResult {
                id: request.id,
                point: Some(request.point),
                ok: outcome.is_ok(),
                error: outcome.err(),
            };
            let outcome = WriteOutcome {
                device,
                ts_ms: kite_core::now_ms(),
                result: Answer::Write(result),
            };
            // Bounded by the write permits; waits while the buffer catches up.
            if results.send(outcome).await.is_err() {
                counters.results_dropped.fetch_add(1, Ordering::Relaxed);
                warn!("the gateway stopped before a write result could be stored");
            }
        });
    }

    fn reject(&self, device: String, id: serde_json::Value, point: Option<String>, error: String) {
        self.counters
            .writes_rejected
            .fetch_add(1, Ordering::Relaxed);
        warn!(device = %device, %error, "write rejected");
        let outcome = WriteOutcome {
            device,
            ts_ms: kite_core::now_ms(),
            result: Answer::Write(WriteResult {
                id,
                point,
                ok: false,
                error: Some(error),
            }),
        };
        if self.results.try_send(outcome).is_err() {
            self.counters
                .results_dropped
                .fetch_add(1, Ordering::Relaxed);
            warn!("write results are backing up; the result of a rejected request was dropped");
        }
    }
}

/// The `id` of a request that could not be parsed as a whole, so that its result can still be matched.
fn request_id(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .filter(|id| id.to_string().len() <= MAX_REQUEST_ID_BYTES)
        .unwrap_or_default()
}
