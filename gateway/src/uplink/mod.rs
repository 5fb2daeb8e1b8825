//! The MQTT uplink: delivers buffered messages, publishes the gateway's
//! status, and takes write requests back down to devices.
//!
//! Each connection is a fresh rumqttc client and event loop with a clean
//! session, so no state of a lost connection survives into the next: after
//! every (re)connect, delivery restarts from the oldest row still in the
//! buffer. The buffer is the source of truth; a row is deleted only when a
//! PUBACK arrives whose packet id was assigned to that row's publish on the
//! current connection. Duplicates after a reconnect are possible (consumers
//! drop them by `seq`); loss is not. A row the broker can never take (larger
//! than `mqtt.max_message_bytes`, or not a valid message) is set aside in
//! the buffer, counted, so that no single row can block delivery.
//!
//! Write requests from the cloud are checked here and handed to their
//! device's link; every result goes through the buffer like any message
//! (see [`WriteOutcome`]), so a result is not lost in an outage.
//!
//! [`wire`] owns every topic and payload.

pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kite_core::Backoff;
use kite_modbus::{WriteError, WriteRequest};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing,
    Publish, QoS, TlsConfiguration, Transport,
};
use serde::Deserialize;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::MqttConfig;
use crate::store::{BufferError, Record};
use crate::vitals::{Current, Vitals};
use wire::{Topics, WriteResult};

/// How long a write waits for its device before the result says so.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Writes in progress at once; more get a "busy" result at once.
const MAX_CONCURRENT_WRITES: usize = 32;

/// Where each device's write requests go.
pub type WriteRoutes = HashMap<String, mpsc::Sender<WriteRequest>>;

/// Longest request `id` a write result echoes, in bytes of JSON.
const MAX_REQUEST_ID_BYTES: usize = 256;

/// Counters an operator (and the status message) can read.
#[derive(Debug, Default)]
pub struct UplinkCounters {
    pub published: AtomicU64,
    pub acknowledged: AtomicU64,
    pub reconnects: AtomicU64,
    pub writes_rejected: AtomicU64,
    /// Write results that could not be handed to the buffer (it was not
    /// keeping up with a flood of requests); logged.
    pub results_dropped: AtomicU64,
    /// Connections tried, successful or not: progress while the broker is away.
    pub attempts: AtomicU64,
    /// Between the broker's CONNACK and the loss of the connection.
    pub connected: AtomicBool,
}

/// The result of a write request, on its way to the buffer (and from
/// there to `{device}/set/result`).
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOutcome {
    pub device: String,
    pub ts_ms: i64,
    pub result: WriteResult,
}

pub struct Uplink {
    config: MqttConfig,
    topics: Topics,
    routes: Arc<Current<WriteRoutes>>,
    /// Where write results go: to the ingest task, which stores them.
    results: mpsc::Sender<WriteOutcome>,
    options: MqttOptions,
    /// Also the uplink's way to the buffer (`vitals.buffer`) and its counters.
    vitals: Arc<Vitals>,
}

/// What ended a connection.
enum Ended {
    Shutdown,
    Lost { was_connected: bool, error: String },
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

/// Which buffered row each publish of one connection carries. Pure state:
/// the connection loop feeds it rumqttc's events.
#[derive(Debug, Default)]
struct Delivery {
    /// One entry per publish handed to rumqttc, in order: the row's seq for
    /// telemetry, `None` for status and results. rumqttc reports each
    /// publish's packet id in the same order.
    awaiting_pkid: VecDeque<Option<i64>>,
    /// Telemetry entries in `awaiting_pkid`.
    unassigned: usize,
    /// Packet id to seq, for telemetry on the wire.
    inflight: HashMap<u16, i64>,
    /// Highest seq handed to rumqttc on this connection.
    sent_up_to: i64,
}

impl Delivery {
    /// A publish was handed to rumqttc; `seq` when it carries a row.
    fn sent(&mut self, seq: Option<i64>) {
        self.awaiting_pkid.push_back(seq);
        if let Some(seq) = seq {
            self.unassigned += 1;
            self.sent_up_to = self.sent_up_to.max(seq);
        }
    }

    /// The row `seq` was not published (it was set aside); reading goes on after it.
    fn skipped(&mut self, seq: i64) {
        self.sent_up_to = self.sent_up_to.max(seq);
    }

    /// rumqttc wrote the next publish with packet id `pkid`.
    fn assigned(&mut self, pkid: u16) {
        if let Some(Some(seq)) = self.awaiting_pkid.pop_front() {
            self.unassigned -= 1;
            self.inflight.insert(pkid, seq);
        }
    }

    /// The broker acknowledged `pkid`: the seq of the row it carried, if any.
    fn acknowledged(&mut self, pkid: u16) -> Option<i64> {
        self.inflight.remove(&pkid)
    }

    /// Rows handed to rumqttc and not yet acknowledged.
    fn unacknowledged(&self) -> usize {
        self.inflight.len() + self.unassigned
    }
}

impl Uplink {
    pub fn new(
        config: MqttConfig,
        gateway_id: &str,
        routes: Arc<Current<WriteRoutes>>,
        results: mpsc::Sender<WriteOutcome>,
        vitals: Arc<Vitals>,
    ) -> Self {
        let topics = Topics::new(&config.topic_prefix, gateway_id);
        Self {
            options: options(&config, &topics),
            config,
            topics,
            routes,
            results,
            vitals,
        }
    }

    /// Runs until `shutdown`; then delivers what it can within the flush
    /// timeout, marks the gateway offline and disconnects.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let writes = Arc::new(Semaphore::new(MAX_CONCURRENT_WRITES));
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            self.vitals.uplink.attempts.fetch_add(1, Ordering::Relaxed);
            let (client, eventloop) = AsyncClient::new(
                self.options.clone(),
                usize::from(self.config.max_inflight) + 64,
            );
            let ended = self.connection(client, eventloop, &shutdown, &writes).await;
            self.vitals.uplink.connected.store(false, Ordering::Relaxed);
            match ended {
                Ended::Shutdown => return Ok(()),
                Ended::Lost {
                    was_connected,
                    error,
                } => {
                    if was_connected {
                        backoff.reset();
                        self.vitals
                            .uplink
                            .reconnects
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    let delay = backoff.next_delay();
                    warn!(broker = %format!("{}:{}", self.config.host, self.config.port), %error, retry_in = ?delay, "uplink down; buffering");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn connection(
        &self,
        client: AsyncClient,
        mut eventloop: EventLoop,
        shutdown: &CancellationToken,
        writes: &Arc<Semaphore>,
    ) -> Ended {
        let topics = &self.topics;
        let window = usize::from(self.config.max_inflight);
        let mut last_seq = self.vitals.buffer.last_seq();
        let mut delivery = Delivery::default();
        let mut connected = false;
        let mut flush_deadline: Option<tokio::time::Instant> = None;
        let mut status_tick = tokio::time::interval(self.config.status_interval);
        status_tick.reset();
        // A read from the buffer survives the loop's other events, so that a
        // stream of PUBACKs never cancels it half-way; `newest` is the last
        // stored seq when it started, `limit` how many rows it asked for.
        let mut pending_read: Option<(i64, usize, PendingRead<'_>)> = None;
        loop {
            let newest = *last_seq.borrow();
            let room = window.saturating_sub(delivery.unacknowledged());
            let has_new = newest > delivery.sent_up_to;
            if let Some(deadline) = flush_deadline {
                let drained = !has_new && delivery.unacknowledged() == 0;
                if drained || tokio::time::Instant::now() >= deadline {
                    self.go_offline(&client, &mut eventloop, drained).await;
                    return Ended::Shutdown;
                }
            }
            if pending_read.is_none() && connected && has_new && room > 0 {
                pending_read = Some((
                    newest,
                    room,
                    Box::pin(self.vitals.buffer.read_after(delivery.sent_up_to, room)),
                ));
            }
            tokio::select! {
                _ = shutdown.cancelled(), if flush_deadline.is_none() => {
                    if !connected {
                        return Ended::Shutdown;
                    }
                    flush_deadline = Some(tokio::time::Instant::now() + self.config.flush_timeout);
                    info!(timeout = ?self.config.flush_timeout, "delivering buffered messages before stopping");
                }
                _ = tokio::time::sleep_until(flush_deadline.unwrap_or_else(tokio::time::Instant::now)), if flush_deadline.is_some() => {}
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        connected = true;
                        self.vitals.uplink.connected.store(true, Ordering::Relaxed);
                        info!(broker = %format!("{}:{}", self.config.host, self.config.port), "uplink connected");
                        if let Err(e) = client.try_subscribe(topics.set_filter(), QoS::AtLeastOnce) {
                            return lost(connected, e);
                        }
                        if let Err(e) = self.publish_status(&client, &mut delivery).await {
                            return lost(connected, e);
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => delivery.assigned(pkid),
                    Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                        if let Some(seq) = delivery.acknowledged(ack.pkid) {
                            self.vitals.uplink.acknowledged.fetch_add(1, Ordering::Relaxed);
                            if self.vitals.buffer.ack(vec![seq]).await.is_err() {
                                return lost(connected, "the buffer has stopped");
                            }
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(publish))) => {
                        self.on_set(&publish, writes);
                    }
                    Ok(_) => {}
                    Err(e) => return lost(connected, connection_error(e)),
                },
                records = async { pending_read.as_mut().expect("guarded by is_some").2.as_mut().await }, if pending_read.is_some() => {
                    let (newest_at_read, limit, _) = pending_read.take().expect("guarded by is_some");
                    let records = match records {
                        Ok(records) => records,
                        Err(e) => return lost(connected, e),
                    };
                    let exhausted = records.len() < limit;
                    for record in records {
                        let topic = topics.for_record(&record);
                        let payload = match self.deliverable(&topic, &record) {
                            Ok(payload) => payload,
                            Err(reason) => {
                                if let Err(e) = self.vitals.buffer.set_aside(record.seq, reason).await {
                                    return lost(connected, e);
                                }
                                delivery.skipped(record.seq);
                                continue;
                            }
                        };
                        if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
                            return lost(connected, e);
                        }
                        self.vitals.uplink.published.fetch_add(1, Ordering::Relaxed);
                        delivery.sent(Some(record.seq));
                    }
                    if exhausted {
                        // Rows up to `newest_at_read` that were not returned are gone (dropped by the limit).
                        delivery.sent_up_to = delivery.sent_up_to.max(newest_at_read);
                    }
                }
                changed = last_seq.changed(), if connected && !has_new => {
                    if changed.is_err() {
                        return lost(connected, "the buffer has stopped");
                    }
                }
                _ = status_tick.tick(), if connected => {
                    if let Err(e) = self.publish_status(&client, &mut delivery).await {
                        return lost(connected, e);
                    }
                }
            }
        }
    }

    /// The payload of `record` for `topic`, or why the broker can never take it.
    fn deliverable(&self, topic: &str, record: &Record) -> Result<String, String> {
        let payload = wire::message(record).map_err(|e| e.to_string())?;
        let size = topic.len() + payload.len();
        if size > self.config.max_message_bytes {
            return Err(format!(
                "{size} bytes, over mqtt.max_message_bytes ({})",
                self.config.max_message_bytes
            ));
        }
        Ok(payload)
    }

    async fn publish_status(
        &self,
        client: &AsyncClient,
        delivery: &mut Delivery,
    ) -> Result<(), String> {
        let stats = self
            .vitals
            .buffer
            .stats()
            .await
            .map_err(|e| e.to_string())?;
        let topic = self.topics.status();
        let mut payload = self.vitals.status_json(&stats).to_string();
        if topic.len() + payload.len() > self.config.max_message_bytes {
            // The details of very many devices do not fit; the totals do,
            // and the local API shows the rest.
            let mut status = self.vitals.status_json(&stats);
            for details in ["devices", "buses", "plugins"] {
                status[details] = serde_json::json!({});
            }
            status["details_omitted"] =
                "larger than mqtt.max_message_bytes: see /status on the gateway's local API".into();
            payload = status.to_string();
        }
        client
            .try_publish(topic, QoS::AtLeastOnce, true, payload)
            .map_err(|e| e.to_string())?;
        delivery.sent(None);
        Ok(())
    }

    /// Marks the gateway offline (the will is not sent on a clean disconnect) and disconnects.
    async fn go_offline(&self, client: &AsyncClient, eventloop: &mut EventLoop, drained: bool) {
        if drained {
            info!("buffer delivered");
        } else {
            warn!("stopping with messages still buffered; they are delivered after the next start");
        }
        if client
            .try_publish(
                self.topics.status(),
                QoS::AtLeastOnce,
                true,
                wire::offline(),
            )
            .is_err()
        {
            return;
        }
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    /// Checks a write request and hands it to its device; the result is
    /// stored and published whatever happens, so every request gets an answer.
    fn on_set(&self, publish: &Publish, writes: &Arc<Semaphore>) {
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
        let Some(route) = self.routes.get().get(&device).cloned() else {
            self.reject(
                device.clone(),
                request.id,
                Some(request.point),
                format!("no device named {device:?}"),
            );
            return;
        };
        let Ok(permit) = writes.clone().try_acquire_owned() else {
            self.reject(
                device,
                request.id,
                Some(request.point),
                "busy: too many writes in progress".into(),
            );
            return;
        };
        let results = self.results.clone();
        let counters = self.vitals.uplink.clone();
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
                result,
            };
            // Bounded by the write permits; waits while the buffer catches up.
            if results.send(outcome).await.is_err() {
                counters.results_dropped.fetch_add(1, Ordering::Relaxed);
                warn!("the gateway stopped before a write result could be stored");
            }
        });
    }

    fn reject(&self, device: String, id: serde_json::Value, point: Option<String>, error: String) {
        self.vitals
            .uplink
            .writes_rejected
            .fetch_add(1, Ordering::Relaxed);
        warn!(device = %device, %error, "write rejected");
        let outcome = WriteOutcome {
            device,
            ts_ms: kite_core::now_ms(),
            result: WriteResult {
                id,
                point,
                ok: false,
                error: Some(error),
            },
        };
        if self.results.try_send(outcome).is_err() {
            self.vitals
                .uplink
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

type PendingRead<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<Record>, BufferError>> + Send + 'a>,
>;

fn lost(was_connected: bool, error: impl ToString) -> Ended {
    Ended::Lost {
        was_connected,
        error: error.to_string(),
    }
}

fn connection_error(error: ConnectionError) -> String {
    debug!(?error, "connection error");
    error.to_string()
}

/// rumqttc's options for `config`.
fn options(config: &MqttConfig, topics: &Topics) -> MqttOptions {
    let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_session(true)
        .set_inflight(config.max_inflight.saturating_add(16))
        .set_request_channel_capacity(usize::from(config.max_inflight) + 64)
        .set_max_packet_size(256 << 10, 64 << 20)
        .set_last_will(LastWill::new(
            topics.status(),
            wire::offline(),
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(username) = &config.username {
        options.set_credentials(username, config.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &config.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.client.clone(),
        )));
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_map_to_the_rows_their_publish_carried() {
        let mut delivery = Delivery::default();
        delivery.sent(None); // status
        delivery.sent(Some(10));
        delivery.sent(Some(11));
        assert_eq!(delivery.unacknowledged(), 2);
        for pkid in 1..=3 {
            delivery.assigned(pkid);
        }
        delivery.sent(None); // a write result between telemetry
        delivery.sent(Some(12));
        delivery.assigned(4);
        delivery.assigned(5);
        assert_eq!(delivery.sent_up_to, 12);
        assert_eq!(
            delivery.acknowledged(1),
            None,
            "the status publish carries no row"
        );
        assert_eq!(delivery.acknowledged(5), Some(12));
        assert_eq!(delivery.acknowledged(2), Some(10));
        assert_eq!(
            delivery.acknowledged(2),
            None,
            "a duplicate PUBACK acks nothing"
        );
        assert_eq!(delivery.acknowledged(4), None);
        assert_eq!(
            delivery.unacknowledged(),
            1,
            "row 11 still awaits its PUBACK"
        );
        assert_eq!(delivery.acknowledged(3), Some(11));
        assert_eq!(delivery.unacknowledged(), 0);
    }
}
