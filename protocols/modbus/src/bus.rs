//! The task that owns one Modbus link: a Modbus TCP connection, an RS-485
//! line, or an RTU-over-TCP converter, and every device reached through it.
//!
//! Exactly one task owns each link, so requests on a shared line never
//! collide. It serves the devices earliest deadline first, keeps the silent
//! interval between frames, bounds every call with the device's timeout, and
//! applies writes between transactions.
//!
//! Failures are kept where they belong:
//! - an exception marks only the points it answered for;
//! - a timeout or a garbled reply costs that one device one timeout: it is
//!   quarantined and probed with growing back-off while the others keep
//!   their rate. The link is reopened before the next request, so a late
//!   reply cannot be paired with another request (a reused TCP context can
//!   do exactly that, and a late RTU reply would be read as the next one's);
//! - the link itself failing (port gone, connection refused) marks every
//!   device's points bad and the link is reopened with back-off.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kite_core::serial::SerialLine;
use kite_core::{
    now_ms, BusHealth, DeviceHealth, PointSample, Reading, Sample, SampleSink, WriteError,
    WriteRequest,
};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn};

use crate::plan::{plan_reads, ReadBlock};
use crate::point::{Area, PointSpec, WritePayload};
use crate::schedule::Schedule;

/// How the gateway reaches the devices of one bus.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// Modbus TCP (MBAP framing); `host:port`, resolved at every connect.
    Tcp { address: String },
    /// Modbus RTU frames over a TCP socket, as serial-to-Ethernet converters
    /// carry them.
    RtuOverTcp { address: String },
    /// Modbus RTU on a serial line.
    Serial(SerialLine),
}

impl Link {
    fn describe(&self) -> &str {
        match self {
            Link::Tcp { address } | Link::RtuOverTcp { address } => address,
            Link::Serial(line) => &line.port,
        }
    }

    /// The silence a line needs between frames; converters and Modbus TCP
    /// servers keep their own.
    fn frame_gap(&self) -> Duration {
        match self {
            Link::Serial(line) => line.frame_gap(),
            Link::Tcp { .. } | Link::RtuOverTcp { .. } => Duration::ZERO,
        }
    }

    async fn open(&self, limit: Duration) -> Result<Context, CallError> {
        let attempt = async {
            match self {
                Link::Tcp { address } => {
                    let addr = resolve(address).await?;
                    tokio_modbus::client::tcp::connect_slave(addr, Slave::broadcast()).await
                }
                Link::RtuOverTcp { address } => {
                    let stream = tokio::net::TcpStream::connect(resolve(address).await?).await?;
                    stream.set_nodelay(true)?;
                    Ok(tokio_modbus::client::rtu::attach_slave(
                        stream,
                        Slave::broadcast(),
                    ))
                }
                Link::Serial(line) => Ok(tokio_modbus::client::rtu::attach_slave(
                    line.open()?,
                    Slave::broadcast(),
                )),
            }
        };
        let verb = match self {
            Link::Serial(_) => "open",
            Link::Tcp { .. } | Link::RtuOverTcp { .. } => "connect to",
        };
        timeout(limit, attempt)
            .await
            .map_err(|_| {
                CallError::Link(format!(
                    "{verb} {}: no answer within {limit:?}",
                    self.describe()
                ))
            })?
            .map_err(|e| CallError::Link(format!("{verb} {}: {e}", self.describe())))
    }
}

async fn resolve(address: &str) -> io::Result<std::net::SocketAddr> {
    tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "address did not resolve"))
}

/// One device, ready to poll.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    pub name: Arc<str>,
    pub unit_id: u8,
    pub poll_interval: Duration,
    pub timeout: Duration,
    pub max_gap: u16,
    pub points: Vec<PointSpec>,
}

/// A link and the devices behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct BusSpec {
    pub name: Arc<str>,
    pub link: Link,
    pub devices: Vec<DeviceSpec>,
}

/// The health a bus task reports, shared with whoever shows it.
#[derive(Debug, Clone)]
pub struct BusMonitor {
    pub bus: Arc<BusHealth>,
    /// In the order of [`BusSpec::devices`].
    pub devices: Vec<Arc<DeviceHealth>>,
}

impl BusMonitor {
    pub fn new(spec: &BusSpec) -> Self {
        Self {
            bus: Arc::default(),
            devices: spec.devices.iter().map(|_| Arc::default()).collect(),
        }
    }
}

/// Why a call failed, and so what it costs.
#[derive(Debug, Clone, thiserror::Error)]
enum CallError {
    /// The device answered; the link is fine.
    #[error("modbus exception: {0}")]
    Exception(ExceptionCode),
    /// The device did not answer: it is quarantined, the link reopened.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The reply was garbage (CRC, wrong unit, wrong function): the link is
    /// reopened to drop whatever else is in flight.
    #[error("bad response: {0}")]
    Garbled(String),
    /// The port or connection failed: every device on it is affected.
    #[error("{0}")]
    Link(String),
}

fn classify(
    result: Result<tokio_modbus::Result<Response>, tokio::time::error::Elapsed>,
    limit: Duration,
) -> Result<Response, CallError> {
    match result {
        Err(_) => Err(CallError::Timeout(limit)),
        Ok(Err(tokio_modbus::Error::Protocol(e))) => Err(CallError::Garbled(e.to_string())),
        Ok(Err(tokio_modbus::Error::Transport(e))) if e.kind() == io::ErrorKind::InvalidData => {
            Err(CallError::Garbled(e.to_string()))
        }
        Ok(Err(tokio_modbus::Error::Transport(e))) => Err(CallError::Link(e.to_string())),
        Ok(Ok(Err(code))) => Err(CallError::Exception(code)),
        Ok(Ok(Ok(response))) => Ok(response),
    }
}

enum Words {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

/// One device on the link.
struct Slot {
    spec: DeviceSpec,
    blocks: Vec<ReadBlock>,
    health: Arc<DeviceHealth>,
}

impl Slot {
    fn sample(&self, ts_ms: i64, readings: Vec<Option<Reading>>, missing: &str) -> Sample {
        let points = self
            .spec
            .points
            .iter()
            .zip(readings)
            .map(|(point, reading)| PointSample {
                name: point.name.clone(),
                unit: point.unit.clone(),
                reading: reading.unwrap_or_else(|| Reading::Bad(missing.to_string())),
            })
            .collect();
        Sample {
            device: self.spec.name.clone(),
            ts_ms,
            points,
        }
    }

    fn all_bad(&self, reason: &str) -> Sample {
        self.sample(now_ms(), vec![None; self.spec.points.len()], reason)
    }
}

struct Bus {
    name: Arc<str>,
    link: Link,
    health: Arc<BusHealth>,
    slots: Vec<Slot>,
    schedule: Schedule,
    context: Option<Context>,
    connect_timeout: Duration,
}

impl Bus {
    fn new(spec: BusSpec, monitor: BusMonitor) -> Self {
        let connect_timeout = spec
            .devices
            .iter()
            .map(|d| d.timeout)
            .max()
            .unwrap_or(Duration::from_secs(1));
        let intervals: Vec<Duration> = spec.devices.iter().map(|d| d.poll_interval).collect();
        let slots = spec
            .devices
            .into_iter()
            .zip(monitor.devices)
            .map(|(spec, health)| {
                let blocks = plan_reads(&spec.points, spec.max_gap);
                debug!(device = %spec.name, requests = blocks.len(), points = spec.points.len(), "read plan");
                Slot {
                    blocks,
                    health,
                    spec,
                }
            })
            .collect();
        Self {
            name: spec.name,
            link: spec.link,
            health: monitor.bus,
            slots,
            schedule: Schedule::new(&intervals, Instant::now()),
            context: None,
            connect_timeout,
        }
    }

    /// Opens the link unless it is open; a failure takes it down for a
    /// back-off.
    async fn ensure_open(&mut self) -> Result<(), CallError> {
        if self.context.is_some() {
            return Ok(());
        }
        match self.link.open(self.connect_timeout).await {
            Ok(context) => {
                let now = Instant::now();
                let was_down = self.schedule.link_opened(now);
                if was_down || !self.health.link_up.load(Ordering::Relaxed) {
                    info!(bus = %self.name, link = %self.link.describe(), "link open");
                }
                self.health.link_up.store(true, Ordering::Relaxed);
                self.set_offline(false);
                self.context = Some(context);
                // Whatever was on the line before we opened it is not ours.
                self.schedule.line_used(now, self.link.frame_gap());
                Ok(())
            }
            Err(e) => {
                self.link_failed(&e);
                Err(e)
            }
        }
    }

    fn link_failed(&mut self, error: &CallError) {
        self.context = None;
        self.health.link_up.store(false, Ordering::Relaxed);
        self.set_offline(true);
        self.health.link_failures.fetch_add(1, Ordering::Relaxed);
        let delay = self.schedule.link_failed(Instant::now());
        warn!(bus = %self.name, %error, retry_in = ?delay, "link failed");
    }

    /// Every device on the link is offline while the link is down.
    fn set_offline(&self, offline: bool) {
        for slot in &self.slots {
            slot.health.offline.store(offline, Ordering::Relaxed);
        }
    }

    /// A reply that does not fit its request: whatever else is in flight on
    /// the connection or line is dropped with it, so that a late answer
    /// cannot be paired with the next request.
    fn garbled(&mut self, reason: String) -> CallError {
        self.context = None;
        CallError::Garbled(reason)
    }

    /// One request to one unit, after the line's silent interval.
    async fn call(
        &mut self,
        unit: u8,
        limit: Duration,
        request: Request<'_>,
    ) -> Result<Response, CallError> {
        self.ensure_open().await?;
        sleep_until(self.schedule.quiet_until()).await;
        let context = self.context.as_mut().expect("opened above");
        context.set_slave(Slave(unit));
        let result = classify(timeout(limit, context.call(request)).await, limit);
        self.schedule
            .line_used(Instant::now(), self.link.frame_gap());
        match &result {
            Err(CallError::Timeout(_) | CallError::Garbled(_)) => self.context = None,
            Err(e @ CallError::Link(_)) => self.link_failed(e),
            Err(CallError::Exception(_)) | Ok(_) => {}
        }
        result
    }

    async fn read(
        &mut self,
        unit: u8,
        limit: Duration,
        block: &ReadBlock,
    ) -> Result<Words, CallError> {
        let (start, count) = (block.start, block.count);
        let request = match block.area {
            Area::Holding => Request::ReadHoldingRegisters(start, count),
            Area::Input => Request::ReadInputRegisters(start, count),
            Area::Coil => Request::ReadCoils(start, count),
            Area::Discrete => Request::ReadDiscreteInputs(start, count),
        };
        let words = match self.call(unit, limit, request).await? {
            Response::ReadHoldingRegisters(r) | Response::ReadInputRegisters(r) => {
                Words::Registers(r)
            }
            Response::ReadCoils(b) | Response::ReadDiscreteInputs(b) => Words::Bits(b),
            other => return Err(self.garbled(format!("unexpected response {other:?}"))),
        };
        let got = match &words {
            Words::Registers(r) => r.len(),
            Words::Bits(b) => b.len(),
        };
        // Bit reads come back padded to whole bytes.
        if got < usize::from(count) {
            return Err(self.garbled(format!("asked for {count} values, device sent {got}")));
        }
        Ok(words)
    }

    /// Polls (or probes) the device in `index`; returns the samples to send:
    /// one, or one per device when the link failed.
    async fn poll(&mut self, index: usize) -> Vec<Sample> {
        let now = Instant::now();
        self.schedule_next(index, now);
        if let Err(e) = self.ensure_open().await {
            let reason = e.to_string();
            return self
                .slots
                .iter()
                .map(|slot| slot.all_bad(&reason))
                .collect();
        }
        let ts_ms = now_ms();
        let slot = &self.slots[index];
        let (unit, limit) = (slot.spec.unit_id, slot.spec.timeout);
        let blocks = std::mem::take(&mut self.slots[index].blocks);
        let mut readings: Vec<Option<Reading>> = vec![None; self.slots[index].spec.points.len()];
        let mut failure = None;
        for block in &blocks {
            match self.read(unit, limit, block).await {
                Ok(words) => {
                    let slot = &self.slots[index];
                    slot.health.record_read(ts_ms);
                    for &i in &block.points {
                        let point = &slot.spec.points[i];
                        readings[i] = Some(decode(point, block, &words));
                    }
                }
                Err(e @ CallError::Exception(_)) => {
                    let slot = &self.slots[index];
                    DeviceHealth::count(&slot.health.errors);
                    slot.health.set_last_error(e.to_string());
                    for &i in &block.points {
                        readings[i] = Some(Reading::Bad(e.to_string()));
                    }
                }
                Err(e) => {
                    // One timeout is all a silent device may cost the bus.
                    failure = Some(e);
                    break;
                }
            }
        }
        self.slots[index].blocks = blocks;
        let took = now.elapsed();
        self.slots[index].health.record_poll(took);
        trace!(device = %self.slots[index].spec.name, ?took, failed = failure.is_some(), "polled");
        match failure {
            None => {
                self.answered(index);
                vec![self.slots[index].sample(ts_ms, readings, "not read")]
            }
            Some(CallError::Link(reason)) => {
                let mut samples: Vec<Sample> = self
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != index)
                    .map(|(_, slot)| slot.all_bad(&reason))
                    .collect();
                samples.push(self.slots[index].sample(ts_ms, readings, &reason));
                samples
            }
            Some(e) => {
                self.not_answering(index, &e);
                vec![self.slots[index].sample(ts_ms, readings, &e.to_string())]
            }
        }
    }

    /// Moves the slot's deadline on, counting the polls that could not
    /// happen because the bus was busy.
    fn schedule_next(&mut self, index: usize, now: Instant) {
        let missed = self.schedule.poll_started(index, now);
        if missed.polls > 0 {
            self.health
                .missed_polls
                .fetch_add(missed.polls, Ordering::Relaxed);
        }
        if let Some(missed_polls) = missed.report {
            warn!(
                bus = %self.name,
                missed_polls,
                device = %self.slots[index].spec.name,
                "bus oversubscribed: polls start late; lengthen poll intervals or split the bus"
            );
        }
    }

    fn answered(&mut self, index: usize) {
        if self.schedule.answered(index) {
            let slot = &self.slots[index];
            info!(bus = %self.name, device = %slot.spec.name, "device answering again");
            slot.health.quarantined.store(false, Ordering::Relaxed);
        }
    }

    fn not_answering(&mut self, index: usize, error: &CallError) {
        let slot = &self.slots[index];
        let counter = match error {
            CallError::Timeout(_) => &slot.health.timeouts,
            _ => &slot.health.errors,
        };
        DeviceHealth::count(counter);
        slot.health.set_last_error(error.to_string());
        let probe = self.schedule.not_answering(index, Instant::now());
        let delay = probe.delay;
        if probe.newly_quarantined {
            warn!(bus = %self.name, device = %slot.spec.name, %error, probe_in = ?delay, "device quarantined");
            slot.health.quarantined.store(true, Ordering::Relaxed);
        } else {
            debug!(bus = %self.name, device = %slot.spec.name, %error, probe_in = ?delay, "probe failed");
        }
    }

    async fn write(&mut self, request: &WriteRequest) -> Result<(), WriteError> {
        let Some(index) = self
            .slots
            .iter()
            .position(|s| s.spec.name == request.device)
        else {
            return Err(WriteError::UnknownPoint(format!(
                "{}/{}",
                request.device, request.point
            )));
        };
        let slot = &self.slots[index];
        let point = slot
            .spec
            .points
            .iter()
            .find(|p| *p.name == *request.point)
            .ok_or_else(|| WriteError::UnknownPoint(request.point.clone()))?;
        let (address, payload) = (point.address, point.encode(&request.value)?);
        let (unit, limit) = (slot.spec.unit_id, slot.spec.timeout);
        let call = match &payload {
            WritePayload::Coil(on) => Request::WriteSingleCoil(address, *on),
            WritePayload::Registers(words) if words.len() == 1 => {
                Request::WriteSingleRegister(address, words[0])
            }
            WritePayload::Registers(words) => {
                Request::WriteMultipleRegisters(address, words.as_slice().into())
            }
        };
        self.call(unit, limit, call)
            .await
            .map(drop)
            .map_err(|e| WriteError::Device(e.to_string()))
    }
}

fn decode(point: &PointSpec, block: &ReadBlock, words: &Words) -> Reading {
    let offset = usize::from(point.address - block.start);
    match words {
        Words::Bits(bits) => point.decode_bit(bits[offset]),
        Words::Registers(regs) => {
            point.decode_registers(&regs[offset..offset + usize::from(point.width())])
        }
    }
}

/// Serves every device of one bus until `shutdown`, handing one sample per
/// poll to `samples` (waiting when it is full: backpressure, not loss; what
/// was read before `shutdown` is handed over too).
pub async fn run_bus(
    spec: BusSpec,
    monitor: BusMonitor,
    samples: SampleSink,
    mut writes: mpsc::Receiver<WriteRequest>,
    shutdown: CancellationToken,
) {
    if spec.devices.is_empty() {
        return;
    }
    let mut bus = Bus::new(spec, monitor);
    loop {
        let (index, at) = bus.schedule.next();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(request) = writes.recv() => {
                let result = bus.write(&request).await;
                // The requester may have given up waiting; nothing to do then.
                let _ = request.reply.send(result);
                continue;
            }
            _ = sleep_until(at) => {}
        }
        let read = bus.poll(index).await;
        if samples.send_all(read, &shutdown).await.is_err() {
            break;
        }
    }
    while let Ok(request) = writes.try_recv() {
        let _ = request.reply.send(Err(WriteError::ShuttingDown));
    }
    if let Some(mut context) = bus.context.take() {
        let _ = timeout(Duration::from_millis(200), context.disconnect()).await;
    }
}

#[cfg(test)]
mod tests {
    //! Edge cases of one link, against a Modbus TCP peer of the test's own
    //! that misbehaves on purpose (interoperability is proven against
    //! pymodbus in the end-to-end tests).

    use std::sync::atomic::{AtomicU64, AtomicUsize};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::point::{ByteOrder, DataType};

    /// How the peer answers one read of holding registers.
    #[derive(Clone, Copy)]
    enum Answer {
        Correct,
        /// One register fewer than asked for.
        Short,
    }

    /// A Modbus TCP peer answering reads of holding registers (value: the
    /// address). `answer(connection, request)` decides each reply, both
    /// counted from 0; `on_request` runs before each reply.
    async fn peer(
        answer: impl Fn(usize, usize) -> Answer + Send + Sync + 'static,
        on_request: impl Fn() + Send + Sync + 'static,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let (answer, on_request) = (Arc::new(answer), Arc::new(on_request));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let connection = counted.fetch_add(1, Ordering::SeqCst);
                let (answer, on_request) = (answer.clone(), on_request.clone());
                tokio::spawn(async move {
                    let mut request = 0;
                    let mut frame = [0u8; 12];
                    while stream.read_exact(&mut frame).await.is_ok() {
                        on_request();
                        let start = u16::from_be_bytes([frame[8], frame[9]]);
                        let mut count = u16::from_be_bytes([frame[10], frame[11]]);
                        if let Answer::Short = answer(connection, request) {
                            count -= 1;
                        }
                        let mut pdu = vec![frame[7], (count * 2) as u8];
                        for register in start..start + count {
                            pdu.extend_from_slice(&register.to_be_bytes());
                        }
                        let mut reply = frame[..4].to_vec();
                        reply.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
                        reply.push(frame[6]);
                        reply.extend_from_slice(&pdu);
                        if stream.write_all(&reply).await.is_err() {
                            return;
                        }
                        request += 1;
                    }
                });
            }
        });
        (address, connections)
    }

    fn bus(address: String) -> BusSpec {
        let point = |name: &str, address| PointSpec {
            name: name.into(),
            area: Area::Holding,
            address,
            data_type: DataType::U16,
            order: ByteOrder::Abcd,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            writable: false,
            bit: None,
            length: None,
        };
        BusSpec {
            name: "plc".into(),
            link: Link::Tcp { address },
            devices: vec![DeviceSpec {
                name: "plc".into(),
                unit_id: 1,
                poll_interval: Duration::from_millis(20),
                timeout: Duration::from_secs(5),
                max_gap: 0,
                points: vec![point("a", 3), point("b", 4)],
            }],
        }
    }

    fn good(sample: &Sample) -> bool {
        sample.good_count() == sample.points.len()
    }

    /// A running bus task for one device at `address`, handing its samples
    /// to `samples`: the device's health, and the task.
    fn start(
        address: String,
        samples: mpsc::Sender<Sample>,
        unsent: Arc<AtomicU64>,
        stop: &CancellationToken,
    ) -> (Arc<DeviceHealth>, tokio::task::JoinHandle<()>) {
        let spec = bus(address);
        let monitor = BusMonitor::new(&spec);
        let health = monitor.devices[0].clone();
        let sink = SampleSink::new(samples, Duration::from_secs(60), unsent);
        let task = tokio::spawn(run_bus(
            spec,
            monitor,
            sink,
            mpsc::channel(1).1,
            stop.clone(),
        ));
        (health, task)
    }

    #[tokio::test]
    async fn a_short_reply_reopens_the_connection() {
        let (address, connections) = peer(
            |connection, request| match (connection, request) {
                (0, 0) => Answer::Short,
                _ => Answer::Correct,
            },
            || {},
        )
        .await;
        let (tx, mut rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let (health, task) = start(address, tx, Arc::default(), &stop);
        let first = rx.recv().await.unwrap();
        assert!(!good(&first), "{first:?}");
        let second = rx.recv().await.unwrap();
        assert!(good(&second), "{second:?}");
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "the read after the short reply came on a new connection"
        );
        assert_eq!(health.errors.load(Ordering::Relaxed), 1);
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_sample_read_when_the_stop_comes_is_still_handed_over() {
        let stop = CancellationToken::new();
        // The stop arrives while the device is being read.
        let stopping = stop.clone();
        let (address, _) = peer(|_, _| Answer::Correct, move || stopping.cancel()).await;
        let (tx, mut rx) = mpsc::channel(1);
        // The channel is full: handing over has to wait for room.
        tx.send(Sample {
            device: "earlier".into(),
            ts_ms: 0,
            points: Vec::new(),
        })
        .await
        .unwrap();
        let unsent = Arc::new(AtomicU64::new(0));
        let (_, task) = start(address, tx, unsent.clone(), &stop);
        stop.cancelled().await;
        assert_eq!(&*rx.recv().await.unwrap().device, "earlier");
        let read = rx.recv().await.expect("the sample read before the stop");
        assert!(good(&read), "{read:?}");
        task.await.unwrap();
        assert!(rx.recv().await.is_none(), "one poll, one sample");
        assert_eq!(unsent.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn devices_behind_a_link_that_is_down_are_offline() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = closed.local_addr().unwrap().to_string();
        drop(closed);
        let (tx, mut rx) = mpsc::channel(16);
        let stop = CancellationToken::new();
        let (health, task) = start(address, tx, Arc::default(), &stop);
        let sample = rx.recv().await.unwrap();
        assert!(!good(&sample));
        assert_eq!(health.state(), "offline");
        stop.cancel();
        task.await.unwrap();
    }
}
