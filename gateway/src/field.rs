//! What runs from the config's devices and plug-ins, and how a new config
//! is applied to it. A link (a Modbus connection or line, a raw
//! instrument) or a plug-in whose settings did not change keeps running
//! untouched; one that changed is stopped and started again with the new
//! settings; the others are stopped or started. The buffer is no part of it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use kite_core::{BusHealth, DeviceHealth, PointSample, SampleSink};
use kite_modbus::{BusMonitor, BusSpec, Link, WriteRequest};
use kite_plugins::{
    Codec, Limits, PluginCounters, PluginError, PluginHandle, PluginOutput, PluginSpec, Sandbox,
    Trust,
};
use kite_serial::decode::{DecodeError, RegexDecoder};
use kite_serial::nmea::NmeaDecoder;
use kite_serial::FrameDecoder;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{Decode, InstrumentConfig, PluginConfig};
use crate::uplink::WriteRoutes;
use crate::vitals::{Current, FieldHealth, PluginStatus};

/// Write requests queued per link.
const WRITE_QUEUE: usize = 16;

/// The plug-in engine, made when the first plug-in or codec needs it.
pub struct SandboxSlot {
    cache: PathBuf,
    sandbox: Option<Arc<Sandbox>>,
}

impl SandboxSlot {
    pub fn new(cache: PathBuf) -> Self {
        Self {
            cache,
            sandbox: None,
        }
    }

    fn get(&mut self) -> Result<Arc<Sandbox>, PluginError> {
        if let Some(sandbox) = &self.sandbox {
            return Ok(sandbox.clone());
        }
        let sandbox = Arc::new(Sandbox::new(Some(&self.cache))?);
        self.sandbox = Some(sandbox.clone());
        Ok(sandbox)
    }
}

/// Size and modification time of a plug-in's file and of its signature:
/// a new version of either is a change.
#[derive(Debug, Clone, PartialEq)]
pub struct FileStamp([Option<(u64, Option<SystemTime>)>; 2]);

impl FileStamp {
    pub fn of(wasm: &Path) -> Self {
        let stat = |path: &Path| {
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.len(), m.modified().ok()))
        };
        Self([
            stat(wasm),
            stat(&kite_plugins::signing::signature_path(wasm)),
        ])
    }
}

/// One link's settings, as far as they decide whether it must restart.
#[derive(Debug, Clone, PartialEq)]
enum LinkConfig {
    Modbus(BusSpec),
    Instrument {
        config: Box<InstrumentConfig>,
        /// A codec plug-in's file and whom it must be signed by.
        codec: Option<(FileStamp, Trust)>,
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
}

/// The links that poll the configured devices.
pub struct Field {
    links: Vec<RunningLink>,
    samples: SampleSink,
    /// Where codec plug-ins keep their state.
    codec_state: PathBuf,
}

impl Field {
    pub fn new(samples: SampleSink, codec_state: PathBuf) -> Self {
        Self {
            links: Vec::new(),
            samples,
            codec_state,
        }
    }

    /// Brings the running links in line with the config; what changed, one
    /// line each. A changed link is stopped before its successor starts, so
    /// a serial port is free again when the new settings open it.
    pub async fn apply(
        &mut self,
        modbus: &[BusSpec],
        instruments: &[InstrumentConfig],
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
            .collect();
        let mut running: HashMap<String, RunningLink> = self
            .links
            .drain(..)
            .map(|link| (link.config.label(), link))
            .collect();
        let mut changes = Vec::new();
        let mut kept = HashMap::new();
        let mut stopping = Vec::new();
        for config in &wanted {
            let label = config.label();
            match running.remove(&label) {
                Some(link) if link.config == *config => {
                    kept.insert(label, link);
                }
                Some(link) => {
                    changes.push(format!("{label}: restarted"));
                    stopping.push(link);
                }
                None => changes.push(format!("{label}: started")),
            }
        }
        for (label, link) in running {
            changes.push(format!("{label}: stopped"));
            stopping.push(link);
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
        for config in wanted {
            let link = match kept.remove(&config.label()) {
                Some(link) => link,
                None => self.start(config, sandbox).await,
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
        }
        link
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
                let spec = PluginSpec {
                    name: name.to_string(),
                    wasm: path,
                    inputs: Vec::new(),
                    limits: Limits::default(),
                    config_json,
                    state_path: self.codec_state.clone(),
                    trust,
                };
                let sandbox = sandbox.get().map_err(|e| e.to_string())?;
                // Compiling takes long: off the runtime's threads.
                let codec = tokio::task::spawn_blocking(move || Codec::start(sandbox, spec))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
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

/// The plug-ins the ingest task offers samples to.
pub type PluginHandles = Vec<Arc<PluginHandle>>;

struct RunningPlugin {
    config: PluginConfig,
    trust: Trust,
    /// None when it was refused.
    handle: Option<Arc<PluginHandle>>,
    counters: Arc<PluginCounters>,
}

/// The running plug-ins, each on a thread of its own.
pub struct Plugins {
    running: Vec<RunningPlugin>,
    outputs: mpsc::Sender<PluginOutput>,
    state_path: PathBuf,
    /// Largest message a plug-in's output may become.
    max_message_bytes: usize,
    /// What the ingest task and the file watcher see.
    pub handles: Arc<Current<PluginHandles>>,
}

impl Plugins {
    pub fn new(
        outputs: mpsc::Sender<PluginOutput>,
        state_path: PathBuf,
        max_message_bytes: usize,
    ) -> Self {
        Self {
            running: Vec::new(),
            outputs,
            state_path,
            max_message_bytes,
            handles: Arc::new(Current::new(Vec::new())),
        }
    }

    /// Brings the running plug-ins in line with the config; what changed,
    /// one line each. A plug-in that cannot be read, verified or compiled is
    /// refused, loudly and in the status, and the gateway runs on without it;
    /// when it was running with other settings, that version stays.
    pub async fn apply(
        &mut self,
        configs: &[PluginConfig],
        trust: &Trust,
        sandbox: &mut SandboxSlot,
    ) -> Vec<String> {
        let mut running: HashMap<String, RunningPlugin> = self
            .running
            .drain(..)
            .map(|plugin| (plugin.config.name.clone(), plugin))
            .collect();
        let mut changes = Vec::new();
        for config in configs {
            let name = &config.name;
            let old = match running.remove(name) {
                Some(old) if old.config == *config && old.trust == *trust => {
                    self.running.push(old);
                    continue;
                }
                old => old,
            };
            let spec = PluginSpec {
                name: name.clone(),
                wasm: config.path.clone(),
                inputs: config.inputs.clone(),
                limits: config.limits,
                config_json: config.config_json.clone(),
                state_path: self.state_path.clone(),
                trust: trust.clone(),
            };
            let outputs = self.outputs.clone();
            // Compiling takes long: off the runtime's threads.
            let started = match sandbox.get() {
                Ok(sandbox) => {
                    tokio::task::spawn_blocking(move || kite_plugins::spawn(sandbox, spec, outputs))
                        .await
                        .unwrap_or_else(|e| Err(PluginError::Load(e.to_string())))
                }
                Err(e) => Err(e),
            };
            match (started, old) {
                (Ok(handle), old) => {
                    info!(plugin = %name, path = %config.path.display(), "plug-in loaded");
                    changes.push(format!(
                        "plug-in {name}: {}",
                        if old.is_some() {
                            "restarted"
                        } else {
                            "started"
                        }
                    ));
                    self.running.push(RunningPlugin {
                        config: config.clone(),
                        trust: trust.clone(),
                        counters: handle.counters.clone(),
                        handle: Some(Arc::new(handle)),
                    });
                }
                (Err(e), Some(old)) if old.handle.is_some() => {
                    error!(plugin = %name, path = %config.path.display(), error = %e, "plug-in with new settings REFUSED; the running one stays");
                    changes.push(format!(
                        "plug-in {name}: new settings refused ({e}); the running version stays"
                    ));
                    self.running.push(old);
                }
                (Err(e), _) => {
                    error!(plugin = %name, path = %config.path.display(), error = %e, "plug-in REFUSED");
                    changes.push(format!("plug-in {name}: refused ({e})"));
                    self.running.push(RunningPlugin {
                        config: config.clone(),
                        trust: trust.clone(),
                        handle: None,
                        counters: Arc::new(PluginCounters::refused()),
                    });
                }
            }
        }
        // Dropping a handle lets its thread finish the batches it has, then end.
        for name in running.into_keys() {
            info!(plugin = %name, "plug-in stopped");
            changes.push(format!("plug-in {name}: stopped"));
        }
        self.handles.set(
            self.running
                .iter()
                .filter_map(|plugin| plugin.handle.clone())
                .collect(),
        );
        changes
    }

    /// Each plug-in's name and counters, in config order.
    pub fn status(&self) -> PluginStatus {
        self.running
            .iter()
            .map(|plugin| (plugin.config.name.clone(), plugin.counters.clone()))
            .collect()
    }
}

/// How often plug-in files are checked for a new version.
const PLUGIN_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Hot swap: when a running plug-in's file (or its signature) changes, the
/// new version is loaded beside the running one and swapped in only if it
/// loads; polling and the buffer never notice.
pub async fn watch_plugins(handles: Arc<Current<PluginHandles>>, stop: CancellationToken) {
    // The version seen of each handle; a handle replaced by a reload starts afresh.
    let mut seen: HashMap<String, (Weak<PluginHandle>, FileStamp)> = HashMap::new();
    let mut ticker = tokio::time::interval(PLUGIN_WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let current = handles.get();
        seen.retain(|name, _| current.iter().any(|h| h.spec.name == *name));
        for plugin in current.iter() {
            let stamp = FileStamp::of(&plugin.spec.wasm);
            let name = plugin.spec.name.clone();
            match seen.get_mut(&name) {
                Some((known, last)) if known.ptr_eq(&Arc::downgrade(plugin)) => {
                    if *last == stamp {
                        continue;
                    }
                    *last = stamp;
                }
                _ => {
                    seen.insert(name, (Arc::downgrade(plugin), stamp));
                    continue;
                }
            }
            let plugin = plugin.clone();
            match tokio::task::spawn_blocking(move || plugin.reload()).await {
                Ok(Ok(())) => info!(plugin = %name, "plug-in reloaded"),
                Ok(Err(e)) => {
                    error!(plugin = %name, error = %e, "new version of the plug-in failed to load; the running version stays")
                }
                Err(e) => error!(plugin = %name, error = %e, "plug-in reload panicked"),
            }
        }
    }
}
