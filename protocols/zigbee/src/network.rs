//! The Zigbee network task: it owns the coordinator stick, brings the
//! network up (and again after the stick resets or stops answering),
//! interviews devices that join, turns their reports into samples, and
//! carries out writes and network commands, one request at a time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kite_core::{
    now_ms, Backoff, DeviceHealth, Freshness, PointSample, Reading, Sample, SampleSink, Value,
    WriteError, WriteRequest,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clusters::{self, Scaling};
use crate::coordinator::Endpoint;
use crate::coordinator::NetworkSettings;
use crate::coordinator::{Coordinator, CoordinatorError, Indication, LineCounters, Started, Stick};
use crate::store::{DeviceRecord, ZigbeeStore};
use crate::zcl;
use crate::znp::ieee_to_string;
use crate::zstack::ZStack;

/// How long a device that joined but is not configured may stay silent
/// before it goes stale; configured devices say their own.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(2 * 3600);
/// Longest a permit join lasts: Zigbee's own limit (255 would mean "for ever").
const MAX_PERMIT_JOIN: u8 = 254;
/// A stick that said nothing for this long is asked whether it is there.
const PING_AFTER: Duration = Duration::from_secs(10);
/// Jobs waiting for the stick; more writes are refused at once.
const MAX_JOBS: usize = 64;
const BASIC: u16 = 0x0000;
const ON_OFF: u16 = 0x0006;
const LEVEL: u16 = 0x0008;
const IAS_ZONE: u16 = 0x0500;

/// The `[zigbee]` section and its devices.
#[derive(Debug, Clone, PartialEq)]
pub struct ZigbeeSpec {
    pub port: String,
    pub baud: u32,
    pub network: NetworkSettings,
    /// Open joining for [`MAX_PERMIT_JOIN`] seconds at every start.
    pub permit_join: bool,
    pub devices: Vec<ZigbeeDevice>,
    /// For devices that joined but are not configured.
    pub stale_after: Duration,
}

/// A configured device.
#[derive(Debug, Clone, PartialEq)]
pub struct ZigbeeDevice {
    pub name: Arc<str>,
    pub ieee: u64,
    /// Only these points are kept; all when `None`.
    pub points: Option<Vec<String>>,
    /// Points the cloud may write (`on`, `level`).
    pub writable: Vec<String>,
    pub stale_after: Duration,
}

/// What an operator sees of the network.
#[derive(Debug, Default)]
pub struct ZigbeeHealth {
    state: Mutex<&'static str>,
    pub channel: AtomicU64,
    pub pan_id: AtomicU64,
    /// Devices on the network (joined and known).
    pub devices: AtomicU64,
    pub joined_since_start: AtomicU64,
    /// Times the stick reset by itself, or stopped answering and was reopened.
    pub coordinator_resets: AtomicU64,
    pub interviews_failed: AtomicU64,
    /// Reports from devices no one knows (not joined through this gateway).
    pub unknown_reports: AtomicU64,
    pub line: Arc<LineCounters>,
}

impl ZigbeeHealth {
    /// `starting`, `running` or `offline` (the stick does not answer).
    pub fn state(&self) -> &'static str {
        let state = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.is_empty() {
            "starting"
        } else {
            state
        }
    }

    fn set_state(&self, state: &'static str) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }
}

/// A network command from the cloud; the answer goes back on `reply`.
#[derive(Debug)]
pub enum ZigbeeCommand {
    PermitJoin {
        seconds: u64,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Remove {
        ieee: u64,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// Where the task's inputs come from.
pub struct ZigbeeInputs {
    pub writes: mpsc::Receiver<WriteRequest>,
    pub commands: mpsc::Receiver<ZigbeeCommand>,
}

/// Decodes what the clusters Kite knows do not say (manufacturer-specific
/// clusters and commands): a codec plug-in. It is given the cluster id
/// (little-endian) followed by the whole ZCL frame.
pub trait ClusterDecode: Send {
    fn decode(&mut self, frame: &[u8]) -> Result<Vec<PointSample>, String>;
}

/// A configured device's own parts.
pub struct DeviceParts {
    pub health: Arc<DeviceHealth>,
    pub codec: Option<Box<dyn ClusterDecode>>,
}

/// One device as the task knows it.
struct Known {
    record: DeviceRecord,
    /// Its name: configured, or `zigbee-<ieee>`.
    name: Arc<str>,
    config: Option<ZigbeeDevice>,
    health: Option<Arc<DeviceHealth>>,
    freshness: Freshness,
    scaling: Scaling,
    /// The next interview attempt, while it is not interviewed.
    interview_due: Option<Instant>,
    backoff: Backoff,
}

/// Work for the stick, done one at a time.
enum Job {
    /// Is the stick still there? Asked when it has been quiet for a while.
    Ping,
    /// An IAS zone device asked to be enrolled: it is.
    Enroll {
        nwk: u16,
        endpoint: u8,
    },
    Interview(u64),
    Write(WriteRequest),
    Command(ZigbeeCommand),
}

/// Runs the network until `stop`.
pub async fn run_zigbee(
    spec: ZigbeeSpec,
    store: Arc<dyn ZigbeeStore>,
    health: Arc<ZigbeeHealth>,
    devices: HashMap<u64, DeviceParts>,
    samples: SampleSink,
    mut inputs: ZigbeeInputs,
    stop: CancellationToken,
) {
    let mut device_health = HashMap::new();
    let mut codecs = HashMap::new();
    for (ieee, parts) in devices {
        device_health.insert(ieee, parts.health);
        if let Some(codec) = parts.codec {
            codecs.insert(ieee, codec);
        }
    }
    health
        .channel
        .store(spec.network.channel.into(), Ordering::Relaxed);
    health
        .pan_id
        .store(spec.network.pan_id.into(), Ordering::Relaxed);
    let mut net = Network {
        devices: HashMap::new(),
        spec,
        store,
        health,
        samples,
        jobs: VecDeque::new(),
        seq: Arc::new(AtomicU8::new(0)),
        device_health,
        codecs,
    };
    net.load();
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut first = true;
    loop {
        if !first {
            net.health
                .coordinator_resets
                .fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        net.health.set_state("starting");
        let ended = net.session::<ZStack>(&mut inputs, &stop).await;
        match ended {
            Err(()) => return,
            Ok(reason) => {
                warn!(port = %net.spec.port, "Zigbee coordinator: {reason}; starting it again");
                net.health.set_state("offline");
            }
        }
        let pause = backoff.next_delay();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = net.refuse_while_offline(&mut inputs, pause) => {}
        }
    }
}

struct Network {
    spec: ZigbeeSpec,
    store: Arc<dyn ZigbeeStore>,
    health: Arc<ZigbeeHealth>,
    samples: SampleSink,
    devices: HashMap<u64, Known>,
    jobs: VecDeque<Job>,
    /// ZCL sequence numbers of Kite's own frames.
    seq: Arc<AtomicU8>,
    /// The health of each configured device, by IEEE address.
    device_health: HashMap<u64, Arc<DeviceHealth>>,
    /// Codecs of configured devices, by IEEE address.
    codecs: HashMap<u64, Box<dyn ClusterDecode>>,
}

impl Network {
    fn load(&mut self) {
        let records = self.store.devices().unwrap_or_else(|e| {
            warn!("cannot read the Zigbee device database: {e}");
            Vec::new()
        });
        for record in records {
            self.know(record);
        }
        self.count_devices();
    }

    fn count_devices(&self) {
        self.health
            .devices
            .store(self.devices.len() as u64, Ordering::Relaxed);
    }

    fn know(&mut self, record: DeviceRecord) {
        let config = self
            .spec
            .devices
            .iter()
            .find(|d| d.ieee == record.ieee)
            .cloned();
        let name = config.as_ref().map_or_else(
            || Arc::from(format!("zigbee-{:016x}", record.ieee)),
            |c| c.name.clone(),
        );
        let stale_after = config
            .as_ref()
            .map_or(self.spec.stale_after, |c| c.stale_after);
        let interview_due = (!record.interviewed).then(Instant::now);
        self.devices.insert(
            record.ieee,
            Known {
                health: self.device_health.get(&record.ieee).cloned(),
                name,
                config,
                freshness: Freshness::new(stale_after),
                scaling: Scaling::default(),
                interview_due,
                backoff: Backoff::new(Duration::from_secs(5), Duration::from_secs(300)),
                record,
            },
        );
    }
}

/// How a job ended, for the network task to take in.
enum Done {
    Interviewed {
        ieee: u64,
        result: Result<Interview, CoordinatorError>,
    },
    Removed {
        ieee: u64,
        result: Result<(), CoordinatorError>,
    },
    /// A write or permit join: answered inside the job.
    Other(Result<(), CoordinatorError>),
}

/// What an interview learned.
struct Interview {
    endpoints: Vec<Endpoint>,
    manufacturer: Option<String>,
    model: Option<String>,
    /// Scaling attributes read (multipliers, divisors), by cluster.
    scaling: Vec<(u16, Vec<(u16, zcl::ZclValue)>)>,
}

type JobFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Done> + Send>>;

impl Network {
    /// One run of the stick, from opening the port until it fails (the
    /// reason) or the gateway stops (`Err`).
    async fn session<C: Coordinator>(
        &mut self,
        inputs: &mut ZigbeeInputs,
        stop: &CancellationToken,
    ) -> Result<String, ()> {
        let (stick, mut indications) =
            match C::open(&self.spec.port, self.spec.baud, self.health.line.clone()) {
                Ok(opened) => opened,
                Err(e) => return Ok(e.to_string()),
            };
        let stick = Arc::new(stick);
        let formed_before = self.store.formed().ok().flatten().as_ref() == Some(&self.spec.network);
        let coordinator = tokio::select! {
            _ = stop.cancelled() => return Err(()),
            started = stick.start(&self.spec.network, formed_before) => match started {
                Ok(coordinator) => coordinator,
                Err(e) => return Ok(format!("start-up failed: {e}")),
            },
        };
        if coordinator.started == Started::Formed {
            if let Err(e) = self.store.set_formed(&self.spec.network) {
                warn!("cannot keep the Zigbee network settings: {e}");
            }
        }
        info!(
            channel = self.spec.network.channel,
            pan_id = format_args!("{:#06x}", self.spec.network.pan_id),
            coordinator = %ieee_to_string(coordinator.ieee),
            started = ?coordinator.started,
            "Zigbee network running"
        );
        self.health.set_state("running");
        if self.spec.permit_join {
            info!(seconds = MAX_PERMIT_JOIN, "Zigbee: permit join");
            let opened = stick.permit_join(MAX_PERMIT_JOIN).await;
            if let Err(e) = opened {
                return Ok(format!("permit join failed: {e}"));
            }
        }
        let mut running: Option<JobFuture> = None;
        let mut heard = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            if running.is_none() {
                running = self.next_job(&stick, &coordinator);
            }
            tokio::select! {
                _ = stop.cancelled() => break Err(()),
                incoming = indications.recv() => match incoming {
                    None => break Ok("the serial line closed".to_string()),
                    Some(Indication::Reset) => break Ok("the stick reset by itself".to_string()),
                    Some(incoming) => {
                        heard = Instant::now();
                        if self.indication(incoming, stop).await.is_err() {
                            break Err(());
                        }
                    }
                },
                Some(write) = inputs.writes.recv() => self.queue(Job::Write(write)),
                Some(command) = inputs.commands.recv() => self.queue(Job::Command(command)),
                done = async { running.as_mut().expect("guarded").await }, if running.is_some() => {
                    running = None;
                    heard = Instant::now();
                    if let Some(failure) = self.done(done) {
                        break Ok(failure);
                    }
                }
                _ = tick.tick() => {
                    if self.tick(stop).await.is_err() {
                        break Err(());
                    }
                    // A hung stick says nothing: ask it, now and then.
                    if running.is_none() && self.jobs.is_empty() && heard.elapsed() >= PING_AFTER {
                        self.jobs.push_back(Job::Ping);
                        heard = Instant::now();
                    }
                }
            }
        };
        // What waits for the stick is answered, not left hanging.
        for job in self.jobs.drain(..) {
            refuse(job, "the Zigbee coordinator is restarting");
        }
        ended
    }

    fn queue(&mut self, job: Job) {
        if self.jobs.len() >= MAX_JOBS {
            refuse(
                job,
                "the Zigbee coordinator is busy: too many requests waiting",
            );
            return;
        }
        self.jobs.push_back(job);
    }

    /// The next job as a future that owns what it needs.
    fn next_job<C: Coordinator>(
        &mut self,
        stick: &Arc<C>,
        coordinator: &Stick,
    ) -> Option<JobFuture> {
        let job = self.jobs.pop_front()?;
        let znp = stick.clone();
        let seq = self.seq.clone();
        Some(match job {
            Job::Ping => Box::pin(async move { Done::Other(znp.ping().await) }),
            Job::Enroll { nwk, endpoint } => Box::pin(async move {
                let frame = zcl::zone_enroll_response(next_seq(&seq), 0, 1);
                Done::Other(znp.send_zcl(nwk, endpoint, IAS_ZONE, frame).await)
            }),
            Job::Interview(ieee) => {
                let nwk = self.devices.get(&ieee)?.record.nwk;
                let coordinator = coordinator.ieee;
                Box::pin(async move {
                    let result = interview(&*znp, &seq, ieee, nwk, coordinator).await;
                    Done::Interviewed { ieee, result }
                })
            }
            Job::Write(request) => {
                let target = self.write_target(&request);
                Box::pin(async move {
                    let (nwk, endpoint, cluster, frame) = match target {
                        Ok(target) => target,
                        Err(e) => {
                            let _ = request.reply.send(Err(e));
                            return Done::Other(Ok(()));
                        }
                    };
                    let frame = frame(next_seq(&seq));
                    let result = znp.send_zcl(nwk, endpoint, cluster, frame).await;
                    let answer = result
                        .as_ref()
                        .map(drop)
                        .map_err(|e| WriteError::Device(e.to_string()));
                    let _ = request.reply.send(answer);
                    Done::Other(result)
                })
            }
            Job::Command(ZigbeeCommand::PermitJoin { seconds, reply }) => Box::pin(async move {
                let duration = u8::try_from(seconds.min(u64::from(MAX_PERMIT_JOIN)))
                    .unwrap_or(MAX_PERMIT_JOIN);
                info!(seconds = duration, "Zigbee: permit join");
                let result = znp.permit_join(duration).await;
                let _ = reply.send(result.as_ref().map(drop).map_err(ToString::to_string));
                Done::Other(result)
            }),
            Job::Command(ZigbeeCommand::Remove { ieee, reply }) => {
                let Some(nwk) = self.devices.get(&ieee).map(|d| d.record.nwk) else {
                    let _ = reply.send(Err(format!(
                        "no device {} on the network",
                        ieee_to_string(ieee)
                    )));
                    return self.next_job(stick, coordinator);
                };
                Box::pin(async move {
                    let result = znp.leave(nwk, ieee).await;
                    let _ = reply.send(result.as_ref().map(drop).map_err(ToString::to_string));
                    Done::Removed { ieee, result }
                })
            }
        })
    }

    /// Where a write goes and the ZCL frame that carries it (given its
    /// sequence number), or why it cannot go.
    #[allow(clippy::type_complexity)]
    fn write_target(
        &self,
        request: &WriteRequest,
    ) -> Result<(u16, u8, u16, Box<dyn FnOnce(u8) -> Vec<u8> + Send>), WriteError> {
        let known = self
            .devices
            .values()
            .find(|d| d.config.as_ref().is_some_and(|c| c.name == request.device))
            .ok_or_else(|| WriteError::Device("the device has not joined the network".into()))?;
        let config = known.config.as_ref().expect("found by its config");
        if !config.writable.contains(&request.point) {
            return Err(match request.point.as_str() {
                "on" | "level" => WriteError::NotWritable(request.point.clone()),
                _ => WriteError::UnknownPoint(request.point.clone()),
            });
        }
        let (cluster, frame): (u16, Box<dyn FnOnce(u8) -> Vec<u8> + Send>) =
            match request.point.as_str() {
                "on" => {
                    let command = match &request.value {
                        serde_json::Value::Bool(true) => 1,
                        serde_json::Value::Bool(false) => 0,
                        serde_json::Value::String(s) if s == "toggle" => 2,
                        other => {
                            return Err(WriteError::Type(
                                "true, false or \"toggle\"",
                                other.to_string(),
                            ))
                        }
                    };
                    (ON_OFF, Box::new(move |seq| zcl::on_off(seq, command)))
                }
                "level" => {
                    let level = request.value.as_u64().ok_or_else(|| {
                        WriteError::Type("a whole number", request.value.to_string())
                    })?;
                    let level =
                        u8::try_from(level)
                            .ok()
                            .filter(|l| *l <= 254)
                            .ok_or_else(|| {
                                WriteError::Range(format!("level {level}: expected 0 to 254"))
                            })?;
                    (
                        LEVEL,
                        Box::new(move |seq| zcl::move_to_level_with_on_off(seq, level, 0)),
                    )
                }
                other => return Err(WriteError::UnknownPoint(other.to_string())),
            };
        let endpoint = known.record.endpoint_with(cluster).ok_or_else(|| {
            WriteError::Device(format!(
                "the device has no endpoint with cluster {cluster:#06x}"
            ))
        })?;
        Ok((known.record.nwk, endpoint, cluster, frame))
    }

    /// Takes in a finished job; a failure of the stick itself ends the session.
    fn done(&mut self, done: Done) -> Option<String> {
        let failure = |e: &CoordinatorError| e.link.then(|| e.to_string());
        match done {
            Done::Other(result) => result.err().as_ref().and_then(failure),
            Done::Removed { ieee, result } => match result {
                Ok(()) => {
                    self.forget(ieee);
                    None
                }
                Err(e) => failure(&e),
            },
            Done::Interviewed { ieee, result } => {
                let known = self.devices.get_mut(&ieee)?;
                match result {
                    Ok(interview) => {
                        known.record.endpoints = interview.endpoints;
                        known.record.manufacturer = interview.manufacturer;
                        known.record.model = interview.model;
                        known.record.interviewed = true;
                        known.interview_due = None;
                        known.backoff.reset();
                        for (cluster, attributes) in interview.scaling {
                            clusters::attribute_points(cluster, &attributes, &mut known.scaling);
                        }
                        info!(
                            device = %known.name,
                            manufacturer = known.record.manufacturer.as_deref().unwrap_or("?"),
                            model = known.record.model.as_deref().unwrap_or("?"),
                            "Zigbee device interviewed"
                        );
                        if let Err(e) = self.store.save_device(&known.record) {
                            warn!("cannot keep Zigbee device {}: {e}", known.name);
                        }
                        None
                    }
                    Err(e) => {
                        self.health
                            .interviews_failed
                            .fetch_add(1, Ordering::Relaxed);
                        let delay = known.backoff.next_delay();
                        warn!(device = %known.name, "Zigbee interview failed: {e}; trying again in {delay:?}");
                        if let Some(health) = &known.health {
                            health.set_last_error(format!("interview failed: {e}"));
                        }
                        known.interview_due = Some(Instant::now() + delay);
                        failure(&e)
                    }
                }
            }
        }
    }

    fn forget(&mut self, ieee: u64) {
        if let Some(known) = self.devices.remove(&ieee) {
            info!(device = %known.name, "Zigbee device left the network");
        }
        if let Err(e) = self.store.remove_device(ieee) {
            warn!("cannot forget Zigbee device {}: {e}", ieee_to_string(ieee));
        }
        self.count_devices();
    }

    /// An indication nobody waited for. Err: the gateway no longer takes samples.
    async fn indication(
        &mut self,
        incoming: Indication,
        stop: &CancellationToken,
    ) -> Result<(), ()> {
        match incoming {
            Indication::Joined { ieee, nwk } => {
                self.joined(ieee, nwk);
                Ok(())
            }
            Indication::Left { ieee, rejoin } => {
                if !rejoin {
                    self.forget(ieee);
                }
                Ok(())
            }
            Indication::Message {
                nwk,
                cluster,
                lqi,
                data,
            } => self.message(nwk, cluster, lqi, &data, stop).await,
            Indication::Reset => Ok(()),
        }
    }

    fn joined(&mut self, ieee: u64, nwk: u16) {
        match self.devices.get_mut(&ieee) {
            Some(known) => {
                if known.record.nwk != nwk {
                    known.record.nwk = nwk;
                    if let Err(e) = self.store.save_device(&known.record) {
                        warn!("cannot keep Zigbee device {}: {e}", known.name);
                    }
                }
            }
            None => {
                let record = DeviceRecord {
                    ieee,
                    nwk,
                    manufacturer: None,
                    model: None,
                    endpoints: Vec::new(),
                    interviewed: false,
                };
                if let Err(e) = self.store.save_device(&record) {
                    warn!("cannot keep Zigbee device {}: {e}", ieee_to_string(ieee));
                }
                self.know(record);
                self.health
                    .joined_since_start
                    .fetch_add(1, Ordering::Relaxed);
                self.count_devices();
                info!(device = %ieee_to_string(ieee), nwk = format_args!("{nwk:#06x}"), "Zigbee device joined");
            }
        }
    }

    /// A ZCL message from a device: reports become a sample.
    async fn message(
        &mut self,
        nwk: u16,
        cluster: u16,
        lqi: u8,
        data: &[u8],
        stop: &CancellationToken,
    ) -> Result<(), ()> {
        let Some(known) = self.devices.values_mut().find(|d| d.record.nwk == nwk) else {
            self.health.unknown_reports.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let Ok((header, payload)) = zcl::parse_frame(data) else {
            if let Some(health) = &known.health {
                DeviceHealth::count(&health.errors);
                health.set_last_error("a ZCL frame that does not parse");
            }
            return Ok(());
        };
        // What the clusters Kite knows cannot say goes to the device's
        // codec, if it has one: the cluster id, then the whole ZCL frame.
        let foreign = header.manufacturer.is_some() || !clusters::KNOWN_CLUSTERS.contains(&cluster);
        let codec = self.codecs.get_mut(&known.record.ieee).filter(|_| foreign);
        let points = |decoded: Vec<clusters::ClusterPoint>| {
            decoded
                .into_iter()
                .map(|p| PointSample {
                    name: p.name.into(),
                    unit: p.unit.map(Into::into),
                    reading: p.reading,
                })
                .collect::<Vec<_>>()
        };
        let decoded: Result<Vec<PointSample>, String> =
            match (codec, header.cluster_specific, header.command) {
                (Some(codec), _, _) => {
                    let mut frame = cluster.to_le_bytes().to_vec();
                    frame.extend_from_slice(data);
                    codec.decode(&frame)
                }
                (None, false, 0x0a) => zcl::parse_report_attributes(payload)
                    .map(|attributes| {
                        let attributes: Vec<_> =
                            attributes.into_iter().map(|(id, _, v)| (id, v)).collect();
                        points(clusters::attribute_points(
                            cluster,
                            &attributes,
                            &mut known.scaling,
                        ))
                    })
                    .map_err(|e| e.to_string()),
                (None, false, 0x01) => zcl::parse_read_attributes_response(payload)
                    .map(|attributes| {
                        let attributes: Vec<_> = attributes
                            .into_iter()
                            .filter_map(|(id, result)| result.ok().map(|(_, v)| (id, v)))
                            .collect();
                        points(clusters::attribute_points(
                            cluster,
                            &attributes,
                            &mut known.scaling,
                        ))
                    })
                    .map_err(|e| e.to_string()),
                (None, true, zcl::ZONE_ENROLL_REQUEST) if cluster == IAS_ZONE => {
                    let endpoint = known.record.endpoint_with(IAS_ZONE).unwrap_or(1);
                    self.jobs.push_back(Job::Enroll {
                        nwk: known.record.nwk,
                        endpoint,
                    });
                    return Ok(());
                }
                (None, true, 0x00) if cluster == IAS_ZONE => match payload.get(..2) {
                    Some(status) => Ok(points(clusters::zone_status_points(u16::from_le_bytes([
                        status[0], status[1],
                    ])))),
                    None => return Ok(()),
                },
                _ => return Ok(()),
            };
        let decoded = match decoded {
            Ok(points) => points,
            Err(e) => {
                if let Some(health) = &known.health {
                    DeviceHealth::count(&health.errors);
                    health.set_last_error(e);
                }
                return Ok(());
            }
        };
        let now = Instant::now();
        let ts_ms = now_ms();
        known.freshness.heard(now);
        if let Some(health) = &known.health {
            health.record_read(ts_ms);
            health.set_linkquality(lqi);
            health.stale.store(false, Ordering::Relaxed);
        }
        let keeps = |name: &str| {
            known
                .config
                .as_ref()
                .and_then(|c| c.points.as_ref())
                .is_none_or(|kept| kept.iter().any(|k| k == name))
        };
        let mut points: Vec<PointSample> = decoded.into_iter().filter(|p| keeps(&p.name)).collect();
        if points.is_empty() {
            return Ok(());
        }
        if keeps("linkquality") {
            points.push(PointSample {
                name: "linkquality".into(),
                unit: None,
                reading: Reading::Good(Value::UInt(lqi.into())),
            });
        }
        known.freshness.sent(&points, now);
        let sample = Sample {
            device: known.name.clone(),
            ts_ms,
            points,
        };
        self.samples.send(sample, stop).await.map_err(drop)
    }

    /// Once a second: stale devices, and interviews that are due.
    async fn tick(&mut self, stop: &CancellationToken) -> Result<(), ()> {
        let now = Instant::now();
        let ts_ms = now_ms();
        let mut stale = Vec::new();
        for known in self.devices.values_mut() {
            if let Some(sample) = known.freshness.check(&known.name, now, ts_ms) {
                stale.push(sample);
            }
            if let Some(health) = &known.health {
                health
                    .stale
                    .store(known.freshness.is_stale(), Ordering::Relaxed);
            }
            if known.interview_due.is_some_and(|due| due <= now) {
                known.interview_due = None;
                self.jobs.push_back(Job::Interview(known.record.ieee));
            }
        }
        for sample in stale {
            self.samples.send(sample, stop).await.map_err(drop)?;
        }
        Ok(())
    }

    /// Between sessions: writes and commands are answered at once.
    async fn refuse_while_offline(&mut self, inputs: &mut ZigbeeInputs, pause: Duration) {
        let until = Instant::now() + pause;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                Some(write) = inputs.writes.recv() => refuse(Job::Write(write), "the Zigbee coordinator is offline"),
                Some(command) = inputs.commands.recv() => refuse(Job::Command(command), "the Zigbee coordinator is offline"),
            }
        }
    }
}

fn refuse(job: Job, why: &str) {
    match job {
        Job::Ping | Job::Enroll { .. } | Job::Interview(_) => {}
        Job::Write(request) => {
            let _ = request.reply.send(Err(WriteError::Device(why.to_string())));
        }
        Job::Command(
            ZigbeeCommand::PermitJoin { reply, .. } | ZigbeeCommand::Remove { reply, .. },
        ) => {
            let _ = reply.send(Err(why.to_string()));
        }
    }
}

fn next_seq(seq: &AtomicU8) -> u8 {
    seq.fetch_add(1, Ordering::Relaxed)
}

/// Asks a device what it is, and, for the clusters Kite knows, binds them
/// to the coordinator and configures their reports. Describing itself must
/// succeed; binding and reporting are asked for, and a device that refuses
/// is still used (some report on their own).
async fn interview<C: Coordinator>(
    stick: &C,
    seq: &AtomicU8,
    ieee: u64,
    nwk: u16,
    coordinator: u64,
) -> Result<Interview, CoordinatorError> {
    stick.node_descriptor(nwk).await?;
    let mut endpoints = Vec::new();
    for id in stick.active_endpoints(nwk).await? {
        endpoints.push(stick.simple_descriptor(nwk, id).await?);
    }
    let record = DeviceRecord {
        ieee,
        nwk,
        manufacturer: None,
        model: None,
        endpoints: endpoints.clone(),
        interviewed: false,
    };
    let (mut manufacturer, mut model) = (None, None);
    if let Some(endpoint) = record.endpoint_with(BASIC) {
        let frame = zcl::read_attributes(next_seq(seq), &[0x0004, 0x0005]);
        let payload = stick.ask_zcl(nwk, endpoint, BASIC, frame, 0x01).await?;
        let read = zcl::parse_read_attributes_response(&payload).map_err(|e| CoordinatorError {
            message: format!("Basic cluster: {e}"),
            link: false,
        })?;
        for (id, result) in read {
            if let Ok((_, zcl::ZclValue::Str(text))) = result {
                match id {
                    0x0004 => manufacturer = Some(text),
                    0x0005 => model = Some(text),
                    _ => {}
                }
            }
        }
    }
    let mut scaling = Vec::new();
    for endpoint in &endpoints {
        for &cluster in &endpoint.in_clusters {
            if cluster == BASIC || !clusters::KNOWN_CLUSTERS.contains(&cluster) {
                continue;
            }
            if let Err(e) = stick
                .bind(nwk, ieee, endpoint.id, cluster, coordinator)
                .await
            {
                if e.link {
                    return Err(e);
                }
                warn!(device = %ieee_to_string(ieee), cluster = format_args!("{cluster:#06x}"), "bind refused: {e}");
            }
            if cluster == IAS_ZONE {
                // The zone reports to its CIE, the coordinator, once it has
                // its address; it then asks to be enrolled.
                let cie = vec![(0x0010, 0xf0, coordinator.to_le_bytes().to_vec())];
                let frame = zcl::write_attributes(next_seq(seq), &cie);
                let written = stick
                    .ask_zcl(
                        nwk,
                        endpoint.id,
                        cluster,
                        frame,
                        zcl::WRITE_ATTRIBUTES_RESPONSE,
                    )
                    .await;
                if let Err(e) = written {
                    if e.link {
                        return Err(e);
                    }
                    warn!(device = %ieee_to_string(ieee), "IAS CIE address not written: {e}");
                }
            }
            let reporting = clusters::reporting(cluster);
            if !reporting.is_empty() {
                let frame = zcl::configure_reporting(next_seq(seq), &reporting);
                if let Err(e) = stick.ask_zcl(nwk, endpoint.id, cluster, frame, 0x07).await {
                    if e.link {
                        return Err(e);
                    }
                    warn!(device = %ieee_to_string(ieee), cluster = format_args!("{cluster:#06x}"), "reporting not configured: {e}");
                }
            }
            let wanted = clusters::scaling_attributes(cluster);
            if !wanted.is_empty() {
                let frame = zcl::read_attributes(next_seq(seq), wanted);
                if let Ok(payload) = stick.ask_zcl(nwk, endpoint.id, cluster, frame, 0x01).await {
                    if let Ok(read) = zcl::parse_read_attributes_response(&payload) {
                        let values = read
                            .into_iter()
                            .filter_map(|(id, r)| r.ok().map(|(_, v)| (id, v)))
                            .collect();
                        scaling.push((cluster, values));
                    }
                }
            }
        }
    }
    Ok(Interview {
        endpoints,
        manufacturer,
        model,
        scaling,
    })
}
