//! The MQTT uplink: delivers buffered messages, publishes the gateway's
//! status, and takes write requests back down to devices.
//!
//! Each connection is a fresh rumqttc client and event loop with a clean
//! session, so no state of a lost connection survives into the next: after
//! every (re)connect, delivery restarts from the oldest row still in the
//! buffer. The buffer is the source of truth; a row is deleted only when a
//! PUBACK arrives whose packet id was assigned to that row's publish on the
//! current connection. Duplicates after a reconnect are possible (consumers
//! drop them by `seq`); loss is not.

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
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::buffer::{BufferError, Kind, Record};
use crate::config::{MqttConfig, TlsFiles};
use crate::vitals::{Current, Vitals};

/// How long a write waits for its device before the result says so.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Writes in progress at once; more get a "busy" result at once.
const MAX_CONCURRENT_WRITES: usize = 32;

/// Where each device's write requests go.
pub type WriteRoutes = HashMap<String, mpsc::Sender<WriteRequest>>;

/// Counters an operator (and the status message) can read.
#[derive(Debug, Default)]
pub struct UplinkCounters {
    pub published: AtomicU64,
    pub acknowledged: AtomicU64,
    pub reconnects: AtomicU64,
    pub writes_rejected: AtomicU64,
    /// Connections tried, successful or not: progress while the broker is away.
    pub attempts: AtomicU64,
    /// Between the broker's CONNACK and the loss of the connection.
    pub connected: AtomicBool,
}

pub struct Uplink {
    config: MqttConfig,
    gateway_id: String,
    routes: Arc<Current<WriteRoutes>>,
    /// Built (TLS files read) when the uplink is made, so a reload can refuse bad settings.
    options: MqttOptions,
    /// Also the uplink's way to the buffer (`vitals.buffer`) and its counters.
    vitals: Arc<Vitals>,
}

/// The topics of one gateway.
struct Topics {
    base: String,
}

impl Topics {
    fn new(config: &MqttConfig, gateway_id: &str) -> Self {
        Self {
            base: format!("{}/{gateway_id}", config.topic_prefix),
        }
    }

    /// Where a buffered row is published.
    fn for_record(&self, record: &Record) -> String {
        match record.kind {
            Kind::Telemetry => format!("{}/{}", self.base, record.device),
            Kind::Event => format!("{}/events", self.base),
        }
    }
    fn status(&self) -> String {
        format!("{}/status", self.base)
    }
    fn set_topic(&self, device: &str) -> String {
        format!("{}/{device}/set", self.base)
    }
    fn set_filter(&self) -> String {
        format!("{}/+/set", self.base)
    }
    /// The device a `.../{device}/set` topic addresses.
    fn set_device<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(&self.base)?
            .strip_prefix('/')?
            .strip_suffix("/set")
            .filter(|device| !device.contains('/'))
    }
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

/// A result on its way to `.../set/result`.
struct SetResult {
    device: String,
    payload: String,
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
    /// Fails when the TLS files cannot be used.
    pub fn new(
        config: MqttConfig,
        gateway_id: String,
        routes: Arc<Current<WriteRoutes>>,
        vitals: Arc<Vitals>,
    ) -> anyhow::Result<Self> {
        let options = options(&config, &Topics::new(&config, &gateway_id))?;
        Ok(Self {
            config,
            gateway_id,
            routes,
            options,
            vitals,
        })
    }

    fn topics(&self) -> Topics {
        Topics::new(&self.config, &self.gateway_id)
    }

    /// Runs until `shutdown`; then delivers what it can within the flush
    /// timeout, marks the gateway offline and disconnects.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let options = self.options.clone();
        let (results_tx, mut results_rx) = mpsc::channel(64);
        let writes = Arc::new(Semaphore::new(MAX_CONCURRENT_WRITES));
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            self.vitals.uplink.attempts.fetch_add(1, Ordering::Relaxed);
            let (client, eventloop) =
                AsyncClient::new(options.clone(), usize::from(self.config.max_inflight) + 64);
            let ended = self
                .connection(
                    client,
                    eventloop,
                    &shutdown,
                    &results_tx,
                    &mut results_rx,
                    &writes,
                )
                .await;
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
        results_tx: &mpsc::Sender<SetResult>,
        results_rx: &mut mpsc::Receiver<SetResult>,
        writes: &Arc<Semaphore>,
    ) -> Ended {
        let topics = self.topics();
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
                        if let Err(e) = self.publish_status(&client, &topics, &mut delivery).await {
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
                        self.on_set(&topics, &publish, results_tx, writes);
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
                        let payload = message(&record);
                        if let Err(e) = client.try_publish(topics.for_record(&record), QoS::AtLeastOnce, false, payload) {
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
                Some(result) = results_rx.recv(), if connected => {
                    let topic = format!("{}/result", topics.set_topic(&result.device));
                    if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, result.payload) {
                        return lost(connected, e);
                    }
                    delivery.sent(None);
                }
                _ = status_tick.tick(), if connected => {
                    if let Err(e) = self.publish_status(&client, &topics, &mut delivery).await {
                        return lost(connected, e);
                    }
                }
            }
        }
    }

    async fn publish_status(
        &self,
        client: &AsyncClient,
        topics: &Topics,
        delivery: &mut Delivery,
    ) -> Result<(), String> {
        let stats = self
            .vitals
            .buffer
            .stats()
            .await
            .map_err(|e| e.to_string())?;
        let payload = self.vitals.status_json(&stats);
        client
            .try_publish(topics.status(), QoS::AtLeastOnce, true, payload.to_string())
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
        let offline = json!({"state": "offline"}).to_string();
        if client
            .try_publish(self.topics().status(), QoS::AtLeastOnce, true, offline)
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
    /// published whatever happens, so every request gets an answer.
    fn on_set(
        &self,
        topics: &Topics,
        publish: &Publish,
        results: &mpsc::Sender<SetResult>,
        writes: &Arc<Semaphore>,
    ) {
        let Some(device) = topics.set_device(&publish.topic) else {
            return;
        };
        let device = device.to_string();
        let payload = &publish.payload[..];
        if publish.retain {
            // A retained command would run again on every reconnect.
            self.reject(
                results,
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
                    results,
                    device,
                    request_id(payload),
                    None,
                    format!("bad request: {e}; expected {{\"id\", \"point\", \"value\"}}"),
                );
                return;
            }
        };
        let Some(route) = self.routes.get().get(&device).cloned() else {
            self.reject(
                results,
                device.clone(),
                request.id,
                Some(request.point),
                format!("no device named {device:?}"),
            );
            return;
        };
        let Ok(permit) = writes.clone().try_acquire_owned() else {
            self.reject(
                results,
                device,
                request.id,
                Some(request.point),
                "busy: too many writes in progress".into(),
            );
            return;
        };
        let results = results.clone();
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
                Err(_) => Err("busy: the device has too many writes queued".to_string()),
                Ok(()) => match tokio::time::timeout(WRITE_TIMEOUT, response).await {
                    Err(_) => Err(format!(
                        "no answer from the device within {WRITE_TIMEOUT:?}"
                    )),
                    Ok(Err(_)) => Err(WriteError::ShuttingDown.to_string()),
                    Ok(Ok(result)) => result.map_err(|e| e.to_string()),
                },
            };
            let payload = match &outcome {
                Ok(()) => json!({"id": request.id, "point": request.point, "ok": true}),
                Err(error) => {
                    counters.writes_rejected.fetch_add(1, Ordering::Relaxed);
                    warn!(device = %device, point = %request.point, %error, "write failed");
                    json!({"id": request.id, "point": request.point, "ok": false, "error": error})
                }
            };
            if outcome.is_ok() {
                info!(device = %device, point = %request.point, "write done");
            }
            let _ = results
                .send(SetResult {
                    device,
                    payload: payload.to_string(),
                })
                .await;
        });
    }

    fn reject(
        &self,
        results: &mpsc::Sender<SetResult>,
        device: String,
        id: serde_json::Value,
        point: Option<String>,
        error: String,
    ) {
        self.vitals
            .uplink
            .writes_rejected
            .fetch_add(1, Ordering::Relaxed);
        warn!(device = %device, %error, "write rejected");
        let payload = json!({"id": id, "point": point, "ok": false, "error": error}).to_string();
        if results.try_send(SetResult { device, payload }).is_err() {
            warn!("write results are backing up; a result was not sent");
        }
    }
}

/// The `id` of a request that could not be parsed as a whole, so that its result can still be matched.
fn request_id(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("id").cloned())
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

/// rumqttc's options for `config`; the TLS files are read here.
fn options(config: &MqttConfig, topics: &Topics) -> anyhow::Result<MqttOptions> {
    let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_session(true)
        .set_inflight(config.max_inflight.saturating_add(16))
        .set_request_channel_capacity(usize::from(config.max_inflight) + 64)
        .set_max_packet_size(256 << 10, 64 << 20)
        .set_last_will(LastWill::new(
            topics.status(),
            json!({"state": "offline"}).to_string(),
            QoS::AtLeastOnce,
            true,
        ));
    if let Some(username) = &config.username {
        options.set_credentials(username, config.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &config.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(tls)?),
        )));
    }
    Ok(options)
}

/// The message of one buffered row.
pub fn message(record: &Record) -> String {
    match record.kind {
        Kind::Telemetry => {
            let device = serde_json::to_string(&record.device).expect("a string serializes");
            format!(
                r#"{{"seq":{},"ts":{},"device":{},"points":{}}}"#,
                record.seq, record.ts_ms, device, record.body
            )
        }
        // The body is the event's own object; `seq` goes first.
        Kind::Event => match record.body.strip_prefix('{') {
            Some(rest) if rest.trim_start().starts_with('}') => {
                format!(r#"{{"seq":{}}}"#, record.seq)
            }
            Some(rest) => format!(r#"{{"seq":{},{rest}"#, record.seq),
            None => format!(r#"{{"seq":{}}}"#, record.seq),
        },
    }
}

fn tls_config(files: &TlsFiles) -> anyhow::Result<rustls::ClientConfig> {
    use anyhow::Context as _;
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca_file {
        Some(path) => {
            let pem =
                std::fs::read(path).with_context(|| format!("mqtt.ca_file {}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots
                    .add(cert.with_context(|| format!("mqtt.ca_file {}", path.display()))?)
                    .with_context(|| format!("mqtt.ca_file {}", path.display()))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        anyhow::bail!("no trusted CA certificates for mqtts://: set mqtt.ca_file");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match &files.client_auth {
        None => builder.with_no_client_auth(),
        Some((cert_path, key_path)) => {
            let cert_pem = std::fs::read(cert_path)
                .with_context(|| format!("mqtt.cert_file {}", cert_path.display()))?;
            let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("mqtt.cert_file {}", cert_path.display()))?;
            let key_pem = std::fs::read(key_path)
                .with_context(|| format!("mqtt.key_file {}", key_path.display()))?;
            let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
                .with_context(|| format!("mqtt.key_file {}", key_path.display()))?
                .with_context(|| {
                    format!("mqtt.key_file {}: no private key found", key_path.display())
                })?;
            builder.with_client_auth_cert(certs, key)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_topics_name_exactly_one_device() {
        let topics = Topics {
            base: "kite/gw".into(),
        };
        assert_eq!(topics.set_device("kite/gw/boiler-1/set"), Some("boiler-1"));
        assert_eq!(topics.set_device("kite/gw/a/b/set"), None);
        assert_eq!(topics.set_device("kite/gw2/boiler-1/set"), None);
        assert_eq!(topics.set_device("kite/gw/boiler-1/set/result"), None);
    }

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

    #[test]
    fn message_wraps_the_stored_points() {
        let record = Record {
            seq: 7,
            kind: Kind::Telemetry,
            ts_ms: 1000,
            device: "b\"1".into(),
            body: r#"{"t":{"value":1,"quality":"good"}}"#.into(),
        };
        let parsed: serde_json::Value = serde_json::from_str(&message(&record)).unwrap();
        assert_eq!(parsed["seq"], 7);
        assert_eq!(parsed["ts"], 1000);
        assert_eq!(parsed["device"], "b\"1");
        assert_eq!(parsed["points"]["t"]["value"], 1);
        let event = Record {
            seq: 8,
            kind: Kind::Event,
            ts_ms: 1000,
            device: "overheat".into(),
            body: r#"{"ts":1000,"plugin":"overheat","severity":"critical","message":"hot"}"#.into(),
        };
        let parsed: serde_json::Value = serde_json::from_str(&message(&event)).unwrap();
        assert_eq!(parsed["seq"], 8);
        assert_eq!(parsed["severity"], "critical");
        assert_eq!(
            Topics { base: "k/g".into() }.for_record(&event),
            "k/g/events"
        );
    }
}
