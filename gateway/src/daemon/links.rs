//! The links that poll the configured devices (a Modbus connection or
//! line, a raw instrument), and how a new config is applied to them: a link
//! whose settings did not change keeps running untouched; one that changed
//! is stopped and awaited before its successor opens the same port.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use kite_ble::{
    AdvertDecode, AdvertDecoder, Advertisement, BleDevice, BleHealth, BleOutputs, Discovered,
    Format, GattDevice, Tracker,
};
use kite_core::WriteRequest;
use kite_core::{BusHealth, DeviceHealth, PointSample, SampleSink};
use kite_modbus::{BusMonitor, BusSpec, Link};
use kite_plugins::{Codec, Limits, PluginSpec, Trust};
use kite_serial::decode::{DecodeError, RegexDecoder};
use kite_serial::nmea::NmeaDecoder;
use kite_serial::FrameDecoder;
use kite_zigbee::{ClusterDecode, DeviceParts, ZigbeeCommand, ZigbeeHealth, ZigbeeInputs};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::error;

use super::reconcile::{reconcile, Step};
use super::sandbox::{FileStamp, SandboxSlot};
use super::zigbee;
use crate::config::{BleConfig, BleDecoder, Decode, InstrumentConfig, ZigbeeConfig};
use crate::current::Current;
use crate::ops::vitals::FieldHealth;
use crate::uplink::wire::MessageRoom;
use crate::uplink::WriteRoutes;

/// Write requests queued per link.
const WRITE_QUEUE: usize = 16;

/// One link's settings, as far as they decide whether it must restart.
#[derive(Debug, Clone, PartialEq)]
enum LinkConfig {
    Modbus(BusSpec),
    Instrument {
        config: Box<InstrumentConfig>,
        /// A codec plug-in's file and whom it must be signed by.
        codec: Option<(FileStamp, Trust)>,
    },
    /// The Zigbee coordinator and its devices.
    Zigbee {
        config: Box<ZigbeeConfig>,
        /// The codec plug-ins' files, and whom they must be signed by.
        codecs: Vec<FileStamp>,
        trust: Trust,
    },
    /// The BLE adapter and every sensor it listens for.
    Ble {
        config: Box<BleConfig>,
        /// The codec plug-ins' files, and whom they must be signed by.
        codecs: Vec<FileStamp>,
        trust: Trust,
    },
}

impl LinkConfig {
    /// Names the link, for the log and the reload report; unique in a config.
    fn label(&self) -> String {
        match self {
            LinkConfig::Modbus(bus) => match bus.link {
                Link::Tcp { .. } => format!("device {}", bus.name),
                _ => format!("bus {}", bus.name),
            },
            LinkConfig::Instrument { config, .. } => format!("device {}", config.spec.name),
            LinkConfig::Ble { config, .. } => format!("BLE adapter {}", config.spec.adapter),
            LinkConfig::Zigbee { config, .. } => format!("Zigbee coordinator {}", config.port),
        }
    }
}

struct RunningLink {
    config: LinkConfig,
    stop: CancellationToken,
    /// None when the link was refused (an instrument whose decoder failed).
    task: Option<JoinHandle<()>>,
    routes: Vec<(String, mpsc::Sender<WriteRequest>)>,
    bus: Option<(String, Arc<BusHealth>)>,
    devices: Vec<(String, Arc<DeviceHealth>)>,
    ble: Option<(String, Arc<BleHealth>)>,
    zigbee: Option<(Arc<ZigbeeHealth>, mpsc::Sender<ZigbeeCommand>)>,
}

/// The links that poll the configured devices.
pub struct Field {
    links: Vec<RunningLink>,
    samples: SampleSink,
    /// Reports of BLE devices that are not configured.
    discovered: mpsc::Sender<Discovered>,
    /// Where the Zigbee network keeps its memory and key.
    data_dir: PathBuf,
    /// Where codec plug-ins keep their state.
    codec_state: PathBuf,
    /// How large a codec's output may become.
    room: Arc<Current<MessageRoom>>,
}

impl Field {
    pub fn new(
        samples: SampleSink,
        discovered: mpsc::Sender<Discovered>,
        data_dir: PathBuf,
        codec_state: PathBuf,
        room: Arc<Current<MessageRoom>>,
    ) -> Self {
        Self {
            links: Vec::new(),
            samples,
            discovered,
            data_dir,
            codec_state,
            room,
        }
    }

    /// Brings the running links in line with the config; what changed, one
    /// line each. A changed link is stopped before its successor starts, so
    /// a serial port is free again when the new settings open it.
    pub async fn apply(
        &mut self,
        modbus: &[BusSpec],
        instruments: &[InstrumentConfig],
        ble: Option<&BleConfig>,
        zigbee: Option<&ZigbeeConfig>,
        trust: &Trust,
        sandbox: &mut SandboxSlot,
    ) -> Vec<String> {
        let wanted: Vec<LinkConfig> = modbus
            .iter()
            .cloned()
            .map(LinkConfig::Modbus)
            .chain(instruments.iter().map(|config| {
                let codec = match &config.decode {
                    Decode::Codec { path, .. } => Some((FileStamp::of(path), trust.clone())),
                    _ => None,
                };
                LinkConfig::Instrument {
                    config: Box::new(config.clone()),
                    codec,
                }
            }))
            .chain(ble.map(|ble| {
                LinkConfig::Ble {
                    codecs: ble
                        .devices
                        .iter()
                        .filter_map(|device| match &device.decoder {
                            Some(BleDecoder::Codec { path, .. }) => Some(FileStamp::of(path)),
                            _ => None,
                        })
                        .collect(),
                    config: Box::new(ble.clone()),
                    trust: trust.clone(),
                }
            }))
            .chain(zigbee.map(|zigbee| {
                LinkConfig::Zigbee {
                    codecs: zigbee
                        .codecs
                        .iter()
                        .map(|c| FileStamp::of(&c.path))
                        .collect(),
                    config: Box::new(zigbee.clone()),
                    trust: trust.clone(),
                }
            }))
            .collect();
        let steps = reconcile(
            std::mem::take(&mut self.links),
            wanted,
            |link| link.config.label(),
            LinkConfig::label,
            |link, config| link.config == *config,
        );
        let mut changes = Vec::new();
        let mut stopping = Vec::new();
        // Each link as it will run: kept, or the settings to start it with.
        let mut plan = Vec::new();
        for step in steps {
            match step {
                Step::Keep(link) => plan.push(Ok(link)),
                Step::Change(link, config) => {
                    changes.push(format!("{}: restarted", config.label()));
                    stopping.push(link);
                    plan.push(Err(config));
                }
                Step::Start(config) => {
                    changes.push(format!("{}: started", config.label()));
                    plan.push(Err(config));
                }
                Step::Stop(link) => {
                    changes.push(format!("{}: stopped", link.config.label()));
                    stopping.push(link);
                }
            }
        }
        for link in &stopping {
            link.stop.cancel();
        }
        for link in stopping {
            if let Some(task) = link.task {
                if let Err(e) = task.await {
                    error!(link = %link.config.label(), error = %e, "link task failed while stopping");
                }
            }
        }
        for link in plan {
            let link = match link {
                Ok(kept) => kept,
                Err(config) => self.start(config, sandbox).await,
            };
            self.links.push(link);
        }
        changes
    }

    async fn start(&self, config: LinkConfig, sandbox: &mut SandboxSlot) -> RunningLink {
        let stop = CancellationToken::new();
        let mut link = RunningLink {
            config: config.clone(),
            stop: stop.clone(),
            task: None,
            routes: Vec::new(),
            bus: None,
            devices: Vec::new(),
            ble: None,
            zigbee: None,
        };
        match config {
            LinkConfig::Modbus(bus) => {
                let (writes_tx, writes_rx) = mpsc::channel(WRITE_QUEUE);
                let monitor = BusMonitor::new(&bus);
                link.bus = Some((bus.name.to_string(), monitor.bus.clone()));
                for (device, health) in bus.devices.iter().zip(&monitor.devices) {
                    link.routes
                        .push((device.name.to_string(), writes_tx.clone()));
                    link.devices.push((device.name.to_string(), health.clone()));
                }
                link.task = Some(tokio::spawn(kite_modbus::run_bus(
                    bus,
                    monitor,
                    self.samples.clone(),
                    writes_rx,
                    stop,
                )));
            }
            LinkConfig::Instrument { config, codec } => {
                let InstrumentConfig { spec, decode } = *config;
                let name = spec.name.to_string();
                let health = Arc::new(DeviceHealth::default());
                link.devices.push((name.clone(), health.clone()));
                let trust = codec.map(|(_, trust)| trust).unwrap_or_default();
                match self.decoder(&name, decode, trust, sandbox).await {
                    Ok(decoder) => {
                        link.task = Some(tokio::spawn(kite_serial::run_instrument(
                            spec,
                            decoder,
                            health,
                            self.samples.clone(),
                            stop,
                        )));
                    }
                    Err(e) => refuse(&name, &health, &e),
                }
            }
            LinkConfig::Zigbee { config, trust, .. } => {
                self.start_zigbee(*config, trust, sandbox, &mut link, stop)
                    .await
            }
            LinkConfig::Ble { config, trust, .. } => {
                let BleConfig { spec, devices } = *config;
                let health = Arc::new(BleHealth::default());
                link.ble = Some((spec.adapter.clone(), health.clone()));
                let formats: Option<Vec<Format>> = devices
                    .iter()
                    .filter_map(|device| match &device.decoder {
                        Some(BleDecoder::Format { format, .. }) => Some(Some(*format)),
                        Some(BleDecoder::Codec { .. }) => Some(None),
                        None => None,
                    })
                    .chain(
                        spec.discovery
                            .then(|| Format::ALL.map(Some))
                            .into_iter()
                            .flatten(),
                    )
                    .collect();
                let patterns = formats.map(kite_ble::monitor::patterns);
                let mut scanned = Vec::new();
                let mut read = Vec::new();
                for device in devices {
                    let name = device.spec.name.to_string();
                    let device_health = Arc::new(DeviceHealth::default());
                    link.devices.push((name.clone(), device_health.clone()));
                    let decoder: Option<Box<dyn AdvertDecode>> = match device.decoder {
                        None => None,
                        Some(BleDecoder::Format { format, bind_key }) => {
                            Some(Box::new(AdvertDecoder::new(format, bind_key)))
                        }
                        Some(BleDecoder::Codec { path, config_json }) => {
                            let codec = self
                                .codec(&name, path, config_json, trust.clone(), sandbox)
                                .await;
                            match codec {
                                Ok(codec) => Some(Box::new(AdvertCodec(Mutex::new(codec)))),
                                Err(e) => {
                                    refuse(&name, &device_health, &e);
                                    None
                                }
                            }
                        }
                    };
                    if !device.gatt.is_empty() {
                        read.push(GattDevice {
                            name: device.spec.name.clone(),
                            address: device.spec.address,
                            points: device.gatt,
                            health: device_health.clone(),
                        });
                    }
                    scanned.push(BleDevice {
                        address: device.spec.address,
                        tracker: decoder.map(|d| Tracker::new(Arc::new(device.spec), d)),
                        health: device_health,
                    });
                }
                let outputs = BleOutputs {
                    samples: self.samples.clone(),
                    discovered: spec.discovery.then(|| self.discovered.clone()),
                };
                let adapter = spec.adapter.clone();
                let samples = self.samples.clone();
                link.task = Some(tokio::spawn(async move {
                    let scanning =
                        kite_ble::run_ble(spec, scanned, patterns, health, outputs, stop.clone());
                    if read.is_empty() {
                        scanning.await;
                    } else {
                        let reading = kite_ble::run_gatt(adapter, read, samples, stop);
                        tokio::join!(scanning, reading);
                    }
                }));
            }
        }
        link
    }

    /// Starts the Zigbee network: its settings completed from its memory
    /// (PAN ids chosen once) and its key file (created once).
    async fn start_zigbee(
        &self,
        config: ZigbeeConfig,
        trust: Trust,
        sandbox: &mut SandboxSlot,
        link: &mut RunningLink,
        stop: CancellationToken,
    ) {
        let health = Arc::new(ZigbeeHealth::default());
        let mut parts = HashMap::new();
        let (writes_tx, writes_rx) = mpsc::channel(WRITE_QUEUE);
        for device in &config.devices {
            let h = Arc::new(DeviceHealth::default());
            link.devices.push((device.name.to_string(), h.clone()));
            link.routes
                .push((device.name.to_string(), writes_tx.clone()));
            let codec = match config.codecs.iter().find(|c| c.ieee == device.ieee) {
                None => None,
                Some(codec) => {
                    let started = self
                        .codec(
                            &device.name,
                            codec.path.clone(),
                            codec.config_json.clone(),
                            trust.clone(),
                            sandbox,
                        )
                        .await;
                    match started {
                        Ok(codec) => Some(Box::new(ClusterCodec(codec)) as Box<dyn ClusterDecode>),
                        // The device's own clusters still work.
                        Err(e) => {
                            refuse(&device.name, &h, &e);
                            None
                        }
                    }
                }
            };
            parts.insert(device.ieee, DeviceParts { health: h, codec });
        }
        let (commands_tx, commands_rx) = mpsc::channel(WRITE_QUEUE);
        link.zigbee = Some((health.clone(), commands_tx));
        let prepared = zigbee::prepare(&config, &self.data_dir);
        let (spec, store) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                error!(port = %config.port, error = %e, "Zigbee network REFUSED");
                for (_, h) in &link.devices {
                    h.refused.store(true, Ordering::Relaxed);
                    h.set_last_error(e.clone());
                }
                return;
            }
        };
        let inputs = ZigbeeInputs {
            writes: writes_rx,
            commands: commands_rx,
        };
        link.task = Some(tokio::spawn(kite_zigbee::run_zigbee(
            spec,
            store,
            health,
            parts,
            self.samples.clone(),
            inputs,
            stop,
        )));
    }

    /// Where network commands go, while a Zigbee network runs.
    pub fn zigbee_commands(&self) -> Option<mpsc::Sender<ZigbeeCommand>> {
        self.links
            .iter()
            .find_map(|l| l.zigbee.as_ref().map(|(_, commands)| commands.clone()))
    }

    /// Starts a codec plug-in for `device`, off the runtime's threads:
    /// compiling takes long.
    async fn codec(
        &self,
        device: &str,
        path: PathBuf,
        config_json: String,
        trust: Trust,
        sandbox: &mut SandboxSlot,
    ) -> Result<Codec, String> {
        let spec = PluginSpec {
            name: device.to_string(),
            wasm: path,
            inputs: Vec::new(),
            limits: Limits::default(),
            config_json,
            state_path: self.codec_state.clone(),
            trust,
            max_message_bytes: self.room.get().for_device(device),
        };
        let sandbox = sandbox.get().map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || Codec::start(sandbox, spec))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn decoder(
        &self,
        name: &str,
        decode: Decode,
        trust: Trust,
        sandbox: &mut SandboxSlot,
    ) -> Result<Box<dyn FrameDecoder>, String> {
        Ok(match decode {
            Decode::Regex { pattern, fields } => {
                Box::new(RegexDecoder::new(&pattern, fields).map_err(|e| e.to_string())?)
            }
            Decode::Nmea => Box::new(NmeaDecoder),
            Decode::Codec { path, config_json } => {
                let codec = self.codec(name, path, config_json, trust, sandbox).await?;
                Box::new(CodecDecoder(Mutex::new(codec)))
            }
        })
    }

    /// Where each device's writes go.
    pub fn routes(&self) -> WriteRoutes {
        self.links
            .iter()
            .flat_map(|link| link.routes.iter().cloned())
            .collect()
    }

    /// The buses' and devices' health, in config order.
    pub fn health(&self) -> FieldHealth {
        FieldHealth {
            buses: self.links.iter().filter_map(|l| l.bus.clone()).collect(),
            ble: self.links.iter().find_map(|l| l.ble.clone()),
            zigbee: self
                .links
                .iter()
                .find_map(|l| l.zigbee.as_ref().map(|(health, _)| health.clone())),
            devices: self
                .links
                .iter()
                .flat_map(|l| l.devices.iter().cloned())
                .collect(),
        }
    }

    /// Stops every link and waits for them: what they read is in the channel.
    pub async fn stop(self) {
        for link in &self.links {
            link.stop.cancel();
        }
        for link in self.links {
            if let Some(task) = link.task {
                let _ = task.await;
            }
        }
    }
}

/// An instrument whose frames cannot be decoded is not started; the
/// gateway runs on, and says so in the log and the status.
fn refuse(device: &str, health: &DeviceHealth, error: &str) {
    error!(device, error, "instrument REFUSED");
    health.refused.store(true, Ordering::Relaxed);
    health.set_last_error(error.to_string());
}

/// A codec plug-in as a frame decoder. The lock is only ever taken by the
/// instrument's own task; it makes the store shareable, as the trait asks.
struct CodecDecoder(Mutex<Codec>);

impl FrameDecoder for CodecDecoder {
    fn decode(&mut self, frame: &[u8]) -> Result<Vec<PointSample>, DecodeError> {
        self.0
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .decode(frame)
            .map_err(DecodeError::Invalid)
    }
}

/// A codec plug-in as a BLE decoder: it is given the advertisement's data
/// as the AD structures it came in (length, type, payload), service data
/// and manufacturer data in the order BlueZ reported them. The lock is
/// only taken by the scanner's task, as for [`CodecDecoder`].
struct AdvertCodec(Mutex<Codec>);

impl AdvertDecode for AdvertCodec {
    fn decode(&mut self, advert: &Advertisement) -> Result<Option<Vec<PointSample>>, String> {
        let structures = kite_ble::advert::ad_structures(advert);
        let codec = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
        // No points: the advertisement carries nothing the codec reads.
        let points = codec.decode(&structures)?;
        Ok((!points.is_empty()).then_some(points))
    }
}

/// A codec plug-in decoding a Zigbee device's manufacturer-specific
/// clusters: given the cluster id and the ZCL frame.
struct ClusterCodec(Codec);

impl ClusterDecode for ClusterCodec {
    fn decode(&mut self, frame: &[u8]) -> Result<Vec<PointSample>, String> {
        self.0.decode(frame)
    }
}
