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
//! With `format = "sparkplug"` telemetry goes as a Sparkplug B edge node
//! ([`sparkplug`]): births after every connect, a DDATA per row, and DCMD
//! writes under the rules of `/set`; everything else (status, events,
//! results) stays on Kite's JSON topics.
//!
//! [`wire`] owns every topic and payload of the JSON format.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kite_core::Backoff;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{JsonLayout, MqttConfig, Replay, SparkplugConfig};
use crate::counters::UplinkCounters;
use crate::current::Current;
use crate::store::{BufferError, BufferHandle, Kind, Record, Stats};
use client::{Client, Content, Events, Heard, Publish, Will};
use delivery::{Backlog, Delivery};
use sparkplug::{BdSeq, DeclaredTypes, Session, SparkplugTopics};
use wire::{Status, Topics};
use writes::MAX_CONCURRENT_WRITES;

mod client;
mod commands;
mod compact;
mod delivery;
pub mod sparkplug;
mod stored;
pub mod wire;
mod writes;

pub use writes::{WriteOutcome, WriteRoutes};

/// Where the uplink gets the gateway's status from.
pub trait StatusSource: Send + Sync {
    fn status(&self, buffer: &Stats) -> Status;
}

pub struct Uplink {
    config: MqttConfig,
    topics: Topics,
    routes: Arc<Current<WriteRoutes>>,
    /// Where network commands go, when a Zigbee network runs.
    zigbee: Arc<Current<Option<mpsc::Sender<kite_zigbee::ZigbeeCommand>>>>,
    /// Where write results go: to the ingest task, which stores them.
    results: mpsc::Sender<WriteOutcome>,
    gateway_id: String,
    buffer: BufferHandle,
    counters: Arc<UplinkCounters>,
    status: Arc<dyn StatusSource>,
    /// When certificates about to expire were last logged: when the config
    /// that names them was loaded, then once a day.
    certificates_warned: Mutex<Instant>,
    /// With `format = "sparkplug"`.
    sparkplug: Option<EdgeNode>,
}

/// The Sparkplug B edge node's settings and what it keeps.
struct EdgeNode {
    topics: SparkplugTopics,
    primary_host_id: Option<String>,
    bd_seq: Mutex<BdSeq>,
    /// The datatypes the config declares for points.
    declared: Arc<Current<DeclaredTypes>>,
}

/// How often certificates about to expire are logged again.
const CERTIFICATE_WARNING_INTERVAL: Duration = Duration::from_secs(86_400);

/// What the uplink works with besides its settings.
pub struct UplinkContext {
    pub routes: Arc<Current<WriteRoutes>>,
    pub zigbee: Arc<Current<Option<mpsc::Sender<kite_zigbee::ZigbeeCommand>>>>,
    pub results: mpsc::Sender<WriteOutcome>,
    pub buffer: BufferHandle,
    pub counters: Arc<UplinkCounters>,
    pub status: Arc<dyn StatusSource>,
    /// Where the Sparkplug `bdSeq` is kept.
    pub data_dir: PathBuf,
    pub declared: Arc<Current<DeclaredTypes>>,
}

/// What ended a connection.
enum Ended {
    Shutdown,
    Lost { was_connected: bool, error: String },
}

impl Uplink {
    pub fn new(config: MqttConfig, gateway_id: &str, context: UplinkContext) -> Self {
        let topics = Topics::new(&config.topic_prefix, gateway_id);
        let sparkplug = config
            .sparkplug
            .as_ref()
            .map(|sparkplug: &SparkplugConfig| EdgeNode {
                topics: SparkplugTopics::new(&sparkplug.group_id, &sparkplug.edge_node_id),
                primary_host_id: sparkplug.primary_host_id.clone(),
                bd_seq: Mutex::new(BdSeq::open(&context.data_dir)),
                declared: context.declared.clone(),
            });
        Self {
            gateway_id: gateway_id.to_string(),
            config,
            topics,
            routes: context.routes,
            zigbee: context.zigbee,
            results: context.results,
            buffer: context.buffer,
            counters: context.counters,
            status: context.status,
            certificates_warned: Mutex::new(Instant::now()),
            sparkplug,
        }
    }

    /// Runs until `shutdown`; then delivers what it can within the flush
    /// timeout, marks the gateway offline and disconnects.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let writes = Arc::new(Semaphore::new(MAX_CONCURRENT_WRITES));
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        // The metrics of each device and their latest values outlive a connection.
        let mut session = Session::default();
        loop {
            self.counters.attempts.fetch_add(1, Ordering::Relaxed);
            let will = match &self.sparkplug {
                Some(node) => {
                    let bd_seq = node.bd_seq.lock().unwrap_or_else(|e| e.into_inner()).take();
                    session.connected(bd_seq);
                    // The NDEATH is the will: the broker publishes it when the link is lost.
                    Will {
                        topic: node.topics.node("NDEATH"),
                        payload: session.node_death(kite_core::now_ms()),
                        retain: false,
                    }
                }
                None => Will {
                    topic: self.topics.status(),
                    payload: wire::offline().into_bytes(),
                    retain: true,
                },
            };
            let (client, eventloop) = client::connect(&self.config, &self.gateway_id, will);
            let ended = self
                .connection(client, eventloop, &shutdown, &writes, &mut session)
                .await;
            self.counters.connected.store(false, Ordering::Relaxed);
            match ended {
                Ended::Shutdown => return Ok(()),
                Ended::Lost {
                    was_connected,
                    error,
                } => {
                    if was_connected {
                        backoff.reset();
                        self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
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
        client: Client,
        mut eventloop: Events,
        shutdown: &CancellationToken,
        writes: &Arc<Semaphore>,
        session: &mut Session,
    ) -> Ended {
        let topics = &self.topics;
        let window = usize::from(self.config.max_inflight);
        let mut last_seq = self.buffer.last_seq();
        let mut delivery = Delivery::default();
        let mut connected = false;
        // Rows go out once connected; with Sparkplug once the node is born,
        // which waits for the primary host application when there is one.
        let mut ready = false;
        let mut flush_deadline: Option<tokio::time::Instant> = None;
        let mut status_tick = tokio::time::interval(self.config.status_interval);
        status_tick.reset();
        // A read from the buffer survives the loop's other events, so that a
        // stream of PUBACKs never cancels it half-way; `newest` is the last
        // stored seq when it started, `limit` how many rows it asked for.
        let mut pending_read: Option<(Cursor, usize, PendingRead<'_>)> = None;
        // With `replay = "live_first"`, from the CONNACK on.
        let mut backlog: Option<Backlog> = None;
        // Backlog rows replayed by the last status tick, and when.
        let mut replay_mark = (tokio::time::Instant::now(), 0);
        // With `json = "compact"`: the units each device's meta announced.
        let mut announced = compact::Announced::default();
        // With Sparkplug: the messages to publish, in order, as the window
        // has room (births, then the data of the rows read); and the rows
        // stored before the births, which go as historical.
        let mut outbox: VecDeque<Queued> = VecDeque::new();
        let mut historical_up_to = 0;
        loop {
            let newest = *last_seq.borrow();
            let mut room = window.saturating_sub(delivery.unacknowledged());
            while room > 0 {
                let Some(message) = outbox.pop_front() else {
                    break;
                };
                let publish = Publish {
                    topic: message.topic,
                    payload: message.payload,
                    retain: false,
                    content: Content::Sparkplug,
                    telemetry: message.row.is_some(),
                };
                if let Err(e) = client.publish(publish) {
                    return lost(connected, e);
                }
                if message.row.is_some() {
                    self.counters.published.fetch_add(1, Ordering::Relaxed);
                    if message.historical {
                        self.counters.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                delivery.sent(message.row);
                room -= 1;
            }
            let has_new = newest > delivery.sent_up_to;
            let backlog_left = backlog.as_mut().filter(|b| !b.done());
            if let Some(deadline) = flush_deadline {
                let drained = !has_new
                    && backlog_left.is_none()
                    && outbox.is_empty()
                    && delivery.unacknowledged() == 0;
                if drained || tokio::time::Instant::now() >= deadline {
                    self.go_offline(&client, &mut eventloop, drained, session)
                        .await;
                    return Ended::Shutdown;
                }
            }
            // Live rows first; the backlog when none waits, at its pace.
            let mut replay_wake = None;
            if pending_read.is_none() && ready && room > 0 && outbox.is_empty() {
                if has_new {
                    pending_read = Some((
                        Cursor::Live { newest },
                        room,
                        Box::pin(self.buffer.read_after(delivery.sent_up_to, room)),
                    ));
                } else if let Some(backlog) = backlog_left {
                    match backlog.allowance(room, Instant::now()) {
                        0 => replay_wake = backlog.ready_at(),
                        allowed => {
                            pending_read = Some((
                                Cursor::Backlog,
                                allowed,
                                Box::pin(self.buffer.read_after(backlog.after, allowed)),
                            ))
                        }
                    }
                }
            }
            // Set when rows may start to go: after the select, which holds
            // the loop's borrows.
            let mut start = false;
            tokio::select! {
                _ = shutdown.cancelled(), if flush_deadline.is_none() => {
                    if !connected {
                        return Ended::Shutdown;
                    }
                    if !ready {
                        // Nothing can be delivered before the host is back.
                        self.go_offline(&client, &mut eventloop, false, session).await;
                        return Ended::Shutdown;
                    }
                    flush_deadline = Some(tokio::time::Instant::now() + self.config.flush_timeout);
                    info!(timeout = ?self.config.flush_timeout, "delivering buffered messages before stopping");
                }
                _ = tokio::time::sleep_until(flush_deadline.unwrap_or_else(tokio::time::Instant::now)), if flush_deadline.is_some() => {}
                _ = tokio::time::sleep_until(replay_wake.map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std)), if replay_wake.is_some() => {}
                event = eventloop.poll() => match event {
                    Ok(Heard::ConnAck) => {
                        connected = true;
                        self.counters.connected.store(true, Ordering::Relaxed);
                        info!(broker = %format!("{}:{}", self.config.host, self.config.port), "uplink connected");
                        if let Err(e) = self.subscribe(&client) {
                            return lost(connected, e);
                        }
                        if let Err(e) = self.publish_status(&client, &mut delivery).await {
                            return lost(connected, e);
                        }
                        // With a primary host, once it says it is online.
                        start = self.sparkplug.as_ref().is_none_or(|node| node.primary_host_id.is_none());
                    }
                    Ok(Heard::Sent(pkid)) => delivery.assigned(pkid),
                    Ok(Heard::PubAck { pkid, refused }) => {
                        let seq = delivery.acknowledged(pkid);
                        let done = match (seq, refused) {
                            (Some(seq), None) => {
                                self.counters.acknowledged.fetch_add(1, Ordering::Relaxed);
                                self.buffer.ack(vec![seq]).await
                            }
                            (Some(seq), Some(refusal)) if refusal.lasting => {
                                warn!(seq, reason = refusal.reason, "the broker refused a message; it is set aside");
                                self.buffer.set_aside(seq, format!("the broker refused it: {}", refusal.reason)).await.map(|_| ())
                            }
                            (seq, Some(refusal)) => {
                                warn!(?seq, reason = refusal.reason, "the broker refused a message; a buffered one is sent again after the next connect");
                                Ok(())
                            }
                            (None, None) => Ok(()),
                        };
                        if let Err(e) = done {
                            return lost(connected, e);
                        }
                    }
                    Ok(Heard::Message(publish)) => {
                        match self.on_sparkplug(&publish, session, writes) {
                            Some(NodeEvent::Rebirth) if ready => {
                                info!("a Sparkplug host asked for a rebirth");
                                self.births(session, &mut outbox);
                            }
                            Some(NodeEvent::HostOnline) if connected && !ready => {
                                info!("the primary host application is online");
                                start = true;
                            }
                            Some(NodeEvent::HostOffline) if ready => {
                                // The node dies with the host's session and is
                                // born again on a new connection once it is back.
                                self.go_offline(&client, &mut eventloop, false, session).await;
                                return lost(true, "the primary host application went offline; holding data in the buffer");
                            }
                            Some(_) => {}
                            None => {
                                if !self.on_command(&publish) {
                                    self.on_set(&publish, writes);
                                }
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return lost(connected, e),
                },
                records = async { pending_read.as_mut().expect("guarded by is_some").2.as_mut().await }, if pending_read.is_some() => {
                    let (cursor, limit, _) = pending_read.take().expect("guarded by is_some");
                    let records = match records {
                        Ok(records) => records,
                        Err(e) => return lost(connected, e),
                    };
                    let exhausted = records.len() < limit;
                    let replayed_up_to = match (&cursor, backlog.as_mut()) {
                        (Cursor::Backlog, Some(backlog)) => {
                            let end = backlog.end;
                            backlog.read(limit, records.iter().map(|r| r.seq));
                            self.counters.backlog.store(backlog.rows_left, Ordering::Relaxed);
                            Some(end)
                        }
                        _ => None,
                    };
                    for record in records {
                        let historical = match replayed_up_to {
                            // Live rows are the live cursor's to send.
                            Some(end) if record.seq > end => break,
                            Some(_) => true,
                            None => self.sparkplug.is_some() && record.seq <= historical_up_to,
                        };
                        if let (Some(node), Kind::Telemetry) = (&self.sparkplug, record.kind) {
                            match self.sparkplug_row(node, &record, historical, session, &mut outbox) {
                                RowFate::Queued => {}
                                RowFate::Refused(reason) => {
                                    if let Err(e) = self.buffer.set_aside(record.seq, reason).await {
                                        return lost(connected, e);
                                    }
                                    delivery.skipped(record.seq);
                                }
                                RowFate::Told => {
                                    // The device's DDEATH told it already.
                                    if let Err(e) = self.buffer.ack(vec![record.seq]).await {
                                        return lost(connected, e);
                                    }
                                    delivery.skipped(record.seq);
                                }
                            }
                            continue;
                        }
                        let topic = topics.for_record(&record);
                        let payload = match self.deliverable(&topic, &record, historical, &mut announced) {
                            Ok(Deliverable { payload, meta: None }) => payload,
                            Ok(Deliverable { payload, meta: Some(meta) }) => {
                                // Retained, so that a consumer that comes later has the units too.
                                let meta = Publish {
                                    topic: topics.meta(&record.device),
                                    payload: meta.into_bytes(),
                                    retain: true,
                                    content: Content::Json,
                                    telemetry: false,
                                };
                                if let Err(e) = client.publish(meta) {
                                    return lost(connected, e);
                                }
                                delivery.sent(None);
                                payload
                            }
                            Err(reason) => {
                                if let Err(e) = self.buffer.set_aside(record.seq, reason).await {
                                    return lost(connected, e);
                                }
                                delivery.skipped(record.seq);
                                continue;
                            }
                        };
                        let publish = Publish {
                            topic,
                            payload: payload.into_bytes(),
                            retain: false,
                            content: Content::Json,
                            telemetry: record.kind == Kind::Telemetry,
                        };
                        if let Err(e) = client.publish(publish) {
                            return lost(connected, e);
                        }
                        self.counters.published.fetch_add(1, Ordering::Relaxed);
                        if historical {
                            self.counters.replayed.fetch_add(1, Ordering::Relaxed);
                        }
                        delivery.sent(Some(record.seq));
                    }
                    if let (Cursor::Live { newest }, true) = (cursor, exhausted) {
                        // Rows up to `newest` that were not returned are gone (dropped by the limit).
                        delivery.sent_up_to = delivery.sent_up_to.max(newest);
                    }
                }
                changed = last_seq.changed(), if ready && !has_new => {
                    if changed.is_err() {
                        return lost(connected, "the buffer has stopped");
                    }
                }
                _ = status_tick.tick(), if connected => {
                    let replayed = self.counters.replayed.load(Ordering::Relaxed);
                    let seconds = replay_mark.0.elapsed().as_secs_f64();
                    if seconds > 0.0 {
                        let rate = (replayed - replay_mark.1) as f64 / seconds;
                        self.counters.replay_rate.store(rate.round() as u64, Ordering::Relaxed);
                    }
                    replay_mark = (tokio::time::Instant::now(), replayed);
                    if let Err(e) = self.publish_status(&client, &mut delivery).await {
                        return lost(connected, e);
                    }
                }
            }
            if start {
                let end = *last_seq.borrow();
                match self
                    .start_delivery(session, &mut delivery, &mut outbox, end)
                    .await
                {
                    Ok(started) => {
                        if started.is_some() {
                            replay_mark = (
                                tokio::time::Instant::now(),
                                self.counters.replayed.load(Ordering::Relaxed),
                            );
                        }
                        backlog = started;
                        historical_up_to = end;
                        ready = true;
                    }
                    Err(e) => return lost(connected, e),
                }
            }
        }
    }

    /// The subscriptions of a connection: writes and network commands, and
    /// with Sparkplug the node's commands and the primary host's STATE.
    fn subscribe(&self, client: &Client) -> Result<(), String> {
        client.subscribe(self.topics.set_filter())?;
        client.subscribe(self.topics.zigbee_filter())?;
        if let Some(node) = &self.sparkplug {
            client.subscribe(node.topics.node("NCMD"))?;
            client.subscribe(node.topics.dcmd_filter())?;
            if let Some(host) = &node.primary_host_id {
                client.subscribe(SparkplugTopics::state(host))?;
            }
        }
        Ok(())
    }

    /// Rows may go from now on: with Sparkplug the births go first; with
    /// `replay = "live_first"` what is stored up to `end` is the backlog.
    async fn start_delivery(
        &self,
        session: &mut Session,
        delivery: &mut Delivery,
        outbox: &mut VecDeque<Queued>,
        end: i64,
    ) -> Result<Option<Backlog>, String> {
        self.births(session, outbox);
        let Replay::LiveFirst { rows_per_second } = self.config.replay else {
            return Ok(None);
        };
        // What is stored now is the backlog; what comes after goes out at once.
        let rows = self.buffer.stats().await.map_err(|e| e.to_string())?.rows;
        delivery.sent_up_to = end;
        let started = Backlog::new(end, rows, rows_per_second.map(f64::from), Instant::now());
        self.counters
            .backlog
            .store(started.rows_left, Ordering::Relaxed);
        self.counters.replay_rate.store(0, Ordering::Relaxed);
        Ok(Some(started))
    }

    /// With Sparkplug, queues the NBIRTH and a DBIRTH for every device the
    /// session knows.
    fn births(&self, session: &mut Session, outbox: &mut VecDeque<Queued>) {
        let Some(node) = &self.sparkplug else {
            return;
        };
        let now = kite_core::now_ms();
        outbox.push_back(Queued::control(
            node.topics.node("NBIRTH"),
            session.node_birth(now),
        ));
        for birth in session.device_births(now) {
            outbox.push_back(Queued::control(
                node.topics.device(birth.kind, &birth.device),
                birth.payload,
            ));
        }
    }

    /// A telemetry row as Sparkplug messages, queued in order.
    fn sparkplug_row(
        &self,
        node: &EdgeNode,
        record: &Record,
        historical: bool,
        session: &mut Session,
        outbox: &mut VecDeque<Queued>,
    ) -> RowFate {
        let points = match stored::readings(&record.body) {
            Ok(points) => points,
            Err(e) => return RowFate::Refused(format!("row {}: {e}", record.seq)),
        };
        let topic_len = node
            .topics
            .device(sparkplug::Kind::DData, &record.device)
            .len();
        let outcome = session.telemetry(
            &record.device,
            record.ts_ms,
            &points,
            historical,
            &node.declared.get(),
            kite_core::now_ms(),
            self.config.max_message_bytes.saturating_sub(topic_len),
        );
        let mut carried = false;
        for message in outcome.messages {
            carried |= message.carries_row;
            outbox.push_back(Queued {
                topic: node.topics.device(message.kind, &message.device),
                payload: message.payload,
                row: message.carries_row.then_some(record.seq),
                historical,
            });
        }
        match (outcome.refused, carried) {
            (Some(reason), _) => RowFate::Refused(reason),
            (None, true) => RowFate::Queued,
            (None, false) => RowFate::Told,
        }
    }

    /// The payload of `record` for `topic`, in the configured layout, with
    /// the units to announce first; or why the broker can never take it.
    fn deliverable(
        &self,
        topic: &str,
        record: &Record,
        historical: bool,
        announced: &mut compact::Announced,
    ) -> Result<Deliverable, String> {
        let (payload, meta) = match (self.config.json, record.kind) {
            (JsonLayout::Compact, Kind::Telemetry) => {
                compact::telemetry(record, historical, announced)
                    .map_err(|e| format!("row {}: {e}", record.seq))?
            }
            _ if historical => (
                wire::historical_message(record).map_err(|e| e.to_string())?,
                None,
            ),
            _ => (wire::message(record).map_err(|e| e.to_string())?, None),
        };
        let size = topic.len() + payload.len();
        if size > self.config.max_message_bytes {
            if meta.is_some() {
                // The units it announced are not published: the device's
                // next message announces them again.
                announced.forget(&record.device);
            }
            return Err(format!(
                "{size} bytes, over mqtt.max_message_bytes ({})",
                self.config.max_message_bytes
            ));
        }
        Ok(Deliverable { payload, meta })
    }

    async fn publish_status(&self, client: &Client, delivery: &mut Delivery) -> Result<(), String> {
        self.warn_of_expiring_certificates();
        let stats = self.buffer.stats().await.map_err(|e| e.to_string())?;
        let topic = self.topics.status();
        let status = self.status.status(&stats);
        let mut payload = wire::status(&status);
        if topic.len() + payload.len() > self.config.max_message_bytes {
            // The details of very many devices do not fit; the totals do,
            // and the local API shows the rest.
            payload = wire::status(&status.without_details());
        }
        client.publish(Publish {
            topic,
            payload: payload.into_bytes(),
            retain: true,
            content: Content::Json,
            telemetry: false,
        })?;
        delivery.sent(None);
        Ok(())
    }

    fn warn_of_expiring_certificates(&self) {
        let mut warned = self
            .certificates_warned
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if warned.elapsed() < CERTIFICATE_WARNING_INTERVAL {
            return;
        }
        *warned = Instant::now();
        for warning in self.config.certificate_warnings(kite_core::now_ms()) {
            warn!("{warning}");
        }
    }

    /// Marks the gateway offline (the will is not sent on a clean
    /// disconnect: with Sparkplug the NDEATH goes first) and disconnects.
    async fn go_offline(
        &self,
        client: &Client,
        eventloop: &mut Events,
        drained: bool,
        session: &Session,
    ) {
        if drained {
            info!("buffer delivered");
        } else {
            warn!("stopping with messages still buffered; they are delivered after the next start");
        }
        let death = self.sparkplug.as_ref().map(|node| Publish {
            topic: node.topics.node("NDEATH"),
            payload: session.node_death(kite_core::now_ms()),
            retain: false,
            content: Content::Sparkplug,
            telemetry: false,
        });
        let offline = Publish {
            topic: self.topics.status(),
            payload: wire::offline().into_bytes(),
            retain: true,
            content: Content::Json,
            telemetry: false,
        };
        for publish in death.into_iter().chain([offline]) {
            if client.publish(publish).is_err() {
                return;
            }
        }
        let _ = client.disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match eventloop.poll().await {
                    Ok(Heard::Disconnected) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

/// A Sparkplug message waiting for room in the window.
struct Queued {
    topic: String,
    payload: Vec<u8>,
    /// The row it carries.
    row: Option<i64>,
    historical: bool,
}

impl Queued {
    /// A birth: it carries no row.
    fn control(topic: String, payload: Vec<u8>) -> Self {
        Self {
            topic,
            payload,
            row: None,
            historical: false,
        }
    }
}

/// What became of a telemetry row with Sparkplug.
enum RowFate {
    /// Its messages wait in the outbox.
    Queued,
    /// The broker can never take it (too large, not a valid row).
    Refused(String),
    /// Nothing to publish: the DDEATH of its device already said what it says.
    Told,
}

/// A message for the Sparkplug edge node.
enum NodeEvent {
    Rebirth,
    HostOnline,
    HostOffline,
    /// A DCMD, carried out, or a message to the node that asks nothing.
    Handled,
}

/// A row's payload, and the `meta` message to publish before it.
struct Deliverable {
    payload: String,
    meta: Option<String>,
}

/// Which rows a read from the buffer is for.
enum Cursor {
    /// Rows stored since the connection came up, or all of them with
    /// `replay = "in_order"`; `newest` was the last stored seq when it
    /// started.
    Live { newest: i64 },
    /// The backlog of `replay = "live_first"`.
    Backlog,
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
