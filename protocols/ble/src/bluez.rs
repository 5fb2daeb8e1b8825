//! Scanning through BlueZ over D-Bus: the task that owns the adapter, keeps
//! discovery running, and turns BlueZ's signals into advertisements.
//!
//! BlueZ announces a device's first advertisement with the device object
//! (`InterfacesAdded`) and each later one as a `PropertiesChanged` carrying
//! the signal strength and, with `DuplicateData`, the data again. Both are
//! decoded, each once. Objects already known when scanning starts are not:
//! their data is whatever BlueZ last cached, not a new advertisement.
//!
//! Signals are read by a pump task that never waits: zbus stops reading the
//! socket when a queue is full, which would also hold back the replies of
//! the scanner's own calls. What the scanner cannot take in time is dropped
//! and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kite_core::{now_ms, Backoff, DeviceHealth, SampleSink};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zbus::message::Type as MessageType;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue, Value};
use zbus::{Connection, MatchRule, Message, MessageStream};

use crate::advert::{Address, Advertisement};
use crate::decode::Format;
use crate::device::{Heard, Tracker};
use crate::monitor::{self, Pattern};

const BLUEZ: &str = "org.bluez";
const ADAPTER: &str = "org.bluez.Adapter1";
const DEVICE: &str = "org.bluez.Device1";
const MONITOR_MANAGER: &str = "org.bluez.AdvertisementMonitorManager1";
const CHARACTERISTIC: &str = "org.bluez.GattCharacteristic1";
pub(crate) const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
pub(crate) const OBJECT_MANAGER: &str = "org.freedesktop.DBus.ObjectManager";
/// Device properties that come with an advertisement.
const ADVERTISED: [&str; 3] = ["RSSI", "ManufacturerData", "ServiceData"];

/// Signals waiting for the scanner; more are dropped and counted.
const EVENT_QUEUE: usize = 1024;
/// How long one call to BlueZ may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often silence and staleness are checked.
const TICK: Duration = Duration::from_secs(1);
/// An unknown device is reported at most this often.
const DISCOVERY_REPEAT: Duration = Duration::from_secs(60);
/// Unknown devices remembered, for names and report times.
const MAX_UNKNOWN: usize = 4096;

/// How the adapter scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    Passive,
    Active,
}

/// The `[ble]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct BleSpec {
    pub adapter: String,
    pub scan: Scan,
    /// Report advertisements of unconfigured devices.
    pub discovery: bool,
    /// No advertisement at all for this long restarts discovery.
    pub restart_after: Duration,
}

/// What an operator sees of the adapter.
#[derive(Debug, Default)]
pub struct BleHealth {
    state: Mutex<&'static str>,
    /// Times discovery was started again after it had run.
    pub restarts: AtomicU64,
    /// Advertisements received (from any device).
    pub advertisements: AtomicU64,
    /// Advertisements of configured devices that could not be decoded.
    pub decode_errors: AtomicU64,
    /// Signals dropped because the gateway fell behind.
    pub dropped: AtomicU64,
    /// Unknown devices reported.
    pub discovered: AtomicU64,
}

impl BleHealth {
    /// `starting`, `scanning`, `no adapter`, `powered off`, or `offline`
    /// (no system bus or no BlueZ).
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

/// An advertisement from a device that is not in the config.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovered {
    pub address: Address,
    pub name: Option<String>,
    pub rssi: Option<i16>,
    pub service_uuids: Vec<String>,
    pub manufacturer_ids: Vec<u16>,
    /// The format Kite recognised in it.
    pub decoder: Option<Format>,
}

/// One configured device, ready to scan for.
pub struct BleDevice {
    pub address: Address,
    /// What its advertisements become; `None` for a device read only over
    /// GATT, whose advertisements only say it is there.
    pub tracker: Option<Tracker>,
    pub health: Arc<DeviceHealth>,
}

/// Where the scanner's findings go.
pub struct BleOutputs {
    pub samples: SampleSink,
    /// Reports of unknown devices, when `discovery` is on; full: dropped.
    pub discovered: Option<mpsc::Sender<Discovered>>,
}

/// Scans until `stop`; survives the system bus, BlueZ or the adapter going
/// away and coming back. `patterns`: what a passive scan listens for (see
/// [`monitor::patterns`]); `None` when some device's format has none.
pub async fn run_ble(
    spec: BleSpec,
    devices: Vec<BleDevice>,
    patterns: Option<Vec<Pattern>>,
    health: Arc<BleHealth>,
    outputs: BleOutputs,
    stop: CancellationToken,
) {
    let mut scanner = Scanner {
        adapter_path: format!("/org/bluez/{}", spec.adapter),
        spec,
        devices: devices.into_iter().map(|d| (d.address, d)).collect(),
        health,
        outputs,
        unknown: HashMap::new(),
        said_passive: false,
        ever_scanned: false,
        patterns,
        monitors_offered: false,
        monitoring: false,
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let ended = match Session::open(&scanner.health).await {
            Ok(mut session) => {
                backoff.reset();
                let ended = scanner.run(&mut session, &stop).await;
                session.pump.abort();
                ended
            }
            Err(e) => Ended::Lost(format!("cannot reach BlueZ on the system bus: {e}")),
        };
        match ended {
            Ended::Stopped => return,
            Ended::Lost(reason) => {
                warn!(adapter = %scanner.spec.adapter, "BLE scanning interrupted: {reason}");
                scanner.health.set_state("offline");
            }
        }
        // Devices still go stale while BlueZ is away.
        let retry = tokio::time::sleep(backoff.next_delay());
        tokio::pin!(retry);
        let mut tick = ticker();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut retry => break,
                _ = tick.tick() => {
                    if scanner.check_stale(&stop).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

fn ticker() -> tokio::time::Interval {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

enum Ended {
    Stopped,
    Lost(String),
}

/// What the pump makes of BlueZ's signals.
#[derive(Debug)]
pub(crate) enum Event {
    /// A device object appeared or its properties changed (an
    /// advertisement, or its connection).
    Device {
        path: OwnedObjectPath,
        props: HashMap<String, OwnedValue>,
    },
    AdapterAdded(
        OwnedObjectPath,
        HashMap<String, HashMap<String, OwnedValue>>,
    ),
    AdapterRemoved(OwnedObjectPath),
    AdapterChanged {
        path: OwnedObjectPath,
        powered: Option<bool>,
        discovering: Option<bool>,
    },
    /// BlueZ left the bus or came back (restarted).
    BluezOwner(Option<String>),
    /// A characteristic's new value: a notification.
    Value {
        path: OwnedObjectPath,
        value: Vec<u8>,
    },
}

/// One connection to the system bus.
pub(crate) struct Session {
    conn: Connection,
    pub events: mpsc::Receiver<Event>,
    pub pump: tokio::task::JoinHandle<()>,
}

impl Session {
    pub async fn open(health: &Arc<BleHealth>) -> zbus::Result<Self> {
        let conn = Connection::system().await?;
        let bluez_signals = |interface: &'static str| -> zbus::Result<MatchRule<'static>> {
            Ok(MatchRule::builder()
                .msg_type(MessageType::Signal)
                .sender(BLUEZ)?
                .interface(interface)?
                .build())
        };
        let owner_rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender("org.freedesktop.DBus")?
            .interface("org.freedesktop.DBus")?
            .member("NameOwnerChanged")?
            .arg(0, BLUEZ)?
            .build();
        let streams = [
            MessageStream::for_match_rule(bluez_signals(OBJECT_MANAGER)?, &conn, None).await?,
            MessageStream::for_match_rule(bluez_signals(PROPERTIES)?, &conn, None).await?,
            MessageStream::for_match_rule(owner_rule, &conn, None).await?,
        ];
        // Only BlueZ may speak for BlueZ: anyone on the bus can send a
        // signal with its paths.
        let owner = bluez_owner(&conn).await;
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let pump = tokio::spawn(pump(streams, owner, tx, health.clone()));
        Ok(Self { conn, events, pump })
    }

    pub async fn call<B>(
        &self,
        path: &str,
        interface: &str,
        method: &str,
        body: &B,
    ) -> zbus::Result<Message>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.call_within(CALL_TIMEOUT, path, interface, method, body)
            .await
    }

    pub async fn call_within<B>(
        &self,
        limit: Duration,
        path: &str,
        interface: &str,
        method: &str,
        body: &B,
    ) -> zbus::Result<Message>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let call = self
            .conn
            .call_method(Some(BLUEZ), path, Some(interface), method, body);
        match tokio::time::timeout(limit, call).await {
            Ok(reply) => reply,
            Err(_) => Err(zbus::Error::Failure(format!(
                "{interface}.{method} on {path}: no reply within {limit:?}"
            ))),
        }
    }
}

async fn bluez_owner(conn: &Connection) -> Option<String> {
    let dbus = zbus::fdo::DBusProxy::new(conn).await.ok()?;
    let name = zbus::names::BusName::try_from(BLUEZ).ok()?;
    let owner = dbus.get_name_owner(name).await.ok()?;
    Some(owner.to_string())
}

/// Reads every signal as it comes and passes on what matters; never waits.
async fn pump(
    streams: [MessageStream; 3],
    mut owner: Option<String>,
    events: mpsc::Sender<Event>,
    health: Arc<BleHealth>,
) {
    use futures_util::StreamExt;
    let mut signals = futures_util::stream::select_all(streams);
    while let Some(message) = signals.next().await {
        let Ok(message) = message else { continue };
        let header = message.header();
        let sender = header.sender().map(|s| s.to_string());
        let member = header.member().map(|m| m.to_string()).unwrap_or_default();
        let event = if member == "NameOwnerChanged" {
            if sender.as_deref() != Some("org.freedesktop.DBus") {
                continue;
            }
            let Ok((_, _, new)) = message.body().deserialize::<(String, String, String)>() else {
                continue;
            };
            owner = (!new.is_empty()).then_some(new);
            Some(Event::BluezOwner(owner.clone()))
        } else if sender.is_none() || sender != owner {
            None
        } else {
            let path = header.path().map(|p| OwnedObjectPath::from(p.to_owned()));
            parse(&message, &member, path)
        };
        let Some(event) = event else { continue };
        if events.try_send(event).is_err() {
            if events.is_closed() {
                return;
            }
            health.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn parse(message: &Message, member: &str, path: Option<OwnedObjectPath>) -> Option<Event> {
    let body = message.body();
    match member {
        "InterfacesAdded" => {
            let (path, mut interfaces) = body
                .deserialize::<(
                    OwnedObjectPath,
                    HashMap<String, HashMap<String, OwnedValue>>,
                )>()
                .ok()?;
            if let Some(props) = interfaces.remove(DEVICE) {
                Some(Event::Device { path, props })
            } else if interfaces.contains_key(ADAPTER) {
                Some(Event::AdapterAdded(path, interfaces))
            } else {
                None
            }
        }
        "InterfacesRemoved" => {
            let (path, interfaces) = body.deserialize::<(OwnedObjectPath, Vec<String>)>().ok()?;
            interfaces
                .iter()
                .any(|i| i == ADAPTER)
                .then_some(Event::AdapterRemoved(path))
        }
        "PropertiesChanged" => {
            let (interface, props, _) = body
                .deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>()
                .ok()?;
            let path = path?;
            match interface.as_str() {
                DEVICE
                    if ADVERTISED
                        .iter()
                        .chain(&["Connected", "ServicesResolved"])
                        .any(|k| props.contains_key(*k)) =>
                {
                    Some(Event::Device { path, props })
                }
                CHARACTERISTIC => {
                    let value = bytes(props.get("Value")?)?;
                    Some(Event::Value { path, value })
                }
                ADAPTER => Some(Event::AdapterChanged {
                    path,
                    powered: props.get("Powered").and_then(|v| bool::try_from(v).ok()),
                    discovering: props
                        .get("Discovering")
                        .and_then(|v| bool::try_from(v).ok()),
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

struct Scanner {
    spec: BleSpec,
    adapter_path: String,
    devices: HashMap<Address, BleDevice>,
    health: Arc<BleHealth>,
    outputs: BleOutputs,
    /// Unknown devices: their name, and when they were last reported.
    unknown: HashMap<Address, (Option<String>, Option<Instant>)>,
    said_passive: bool,
    ever_scanned: bool,
    /// What a passive monitor must match; `None` when a device's format
    /// has no pattern (a codec).
    patterns: Option<Vec<Pattern>>,
    monitors_offered: bool,
    /// Scanning through an advertisement monitor, not discovery.
    monitoring: bool,
}

impl Scanner {
    async fn run(&mut self, session: &mut Session, stop: &CancellationToken) -> Ended {
        let mut scanning = match self.bring_up(session).await {
            Ok(scanning) => scanning,
            Err(e) => return Ended::Lost(e.to_string()),
        };
        let mut last_advert = Instant::now();
        let mut own_stop = false;
        let mut tick = ticker();
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => {
                    if scanning {
                        // Best effort: BlueZ also stops it when we leave the bus.
                        self.stop_scanning(session).await;
                    }
                    return Ended::Stopped;
                }
                event = session.events.recv() => event,
                _ = tick.tick() => {
                    if self.check_stale(stop).await.is_err() {
                        return Ended::Stopped;
                    }
                    if scanning && last_advert.elapsed() >= self.spec.restart_after {
                        warn!(
                            adapter = %self.spec.adapter,
                            "no advertisement for {:?}: restarting the scan",
                            self.spec.restart_after
                        );
                        // Our own stop is announced too: not a reason to restart again.
                        own_stop = true;
                        self.stop_scanning(session).await;
                        scanning = match self.start_scanning(session).await {
                            Ok(()) => true,
                            Err(e) => return Ended::Lost(e.to_string()),
                        };
                        last_advert = Instant::now();
                    }
                    continue;
                }
            };
            let Some(event) = event else {
                return Ended::Lost("the system bus connection closed".into());
            };
            match event {
                Event::Device { path, props } => {
                    let advertised = ADVERTISED.iter().any(|k| props.contains_key(*k));
                    if !advertised || !under(&path, &self.adapter_path) {
                        continue;
                    }
                    let Some(address) = address_of(&path) else {
                        continue;
                    };
                    last_advert = Instant::now();
                    let advert = advertisement(address, &props);
                    if self.heard(advert, stop).await.is_err() {
                        return Ended::Stopped;
                    }
                }
                Event::AdapterAdded(path, interfaces) if path.as_str() == self.adapter_path => {
                    info!(adapter = %self.spec.adapter, "BLE adapter appeared");
                    scanning = match self.bring_up_adapter(session, &interfaces).await {
                        Ok(scanning) => scanning,
                        Err(e) => return Ended::Lost(e.to_string()),
                    };
                    last_advert = Instant::now();
                }
                Event::AdapterRemoved(path) if path.as_str() == self.adapter_path => {
                    warn!(adapter = %self.spec.adapter, "BLE adapter disappeared; waiting for it to come back");
                    self.health.set_state("no adapter");
                    scanning = false;
                }
                Event::AdapterChanged {
                    path,
                    powered,
                    discovering,
                } if path.as_str() == self.adapter_path => {
                    if discovering == Some(true) {
                        own_stop = false;
                    }
                    if powered == Some(false) {
                        warn!(adapter = %self.spec.adapter, "BLE adapter powered off; powering it on");
                        self.health.set_state("powered off");
                        scanning = false;
                        if let Err(e) = self.power_on(session).await {
                            warn!(adapter = %self.spec.adapter, "cannot power the adapter on: {e}");
                        }
                    } else if powered == Some(true) && !scanning {
                        scanning = match self.start_scanning(session).await {
                            Ok(()) => true,
                            Err(e) => return Ended::Lost(e.to_string()),
                        };
                        last_advert = Instant::now();
                    } else if discovering == Some(false) && own_stop {
                        own_stop = false;
                    } else if discovering == Some(false) && scanning && !self.monitoring {
                        // Another client or the adapter stopped it.
                        warn!(adapter = %self.spec.adapter, "discovery stopped by someone else: restarting it");
                        scanning = match self.start_scanning(session).await {
                            Ok(()) => true,
                            Err(e) => return Ended::Lost(e.to_string()),
                        };
                    }
                }
                Event::BluezOwner(owner) => {
                    scanning = false;
                    match owner {
                        None => {
                            warn!("BlueZ left the system bus; waiting for it");
                            self.health.set_state("offline");
                        }
                        Some(_) => {
                            info!("BlueZ is back on the system bus");
                            scanning = match self.bring_up(session).await {
                                Ok(scanning) => scanning,
                                Err(e) => return Ended::Lost(e.to_string()),
                            };
                            last_advert = Instant::now();
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Finds the adapter and starts discovery on it; false when there is no
    /// adapter (yet).
    async fn bring_up(&mut self, session: &Session) -> zbus::Result<bool> {
        let reply = session
            .call("/", OBJECT_MANAGER, "GetManagedObjects", &())
            .await?;
        let mut objects: HashMap<OwnedObjectPath, HashMap<String, HashMap<String, OwnedValue>>> =
            reply.body().deserialize()?;
        let adapter = objects
            .iter()
            .find(|(path, _)| path.as_str() == self.adapter_path)
            .map(|(path, _)| path.clone());
        match adapter.and_then(|path| objects.remove(&path)) {
            Some(interfaces) if interfaces.contains_key(ADAPTER) => {
                self.bring_up_adapter(session, &interfaces).await
            }
            _ => {
                warn!(adapter = %self.spec.adapter, "no BLE adapter {}; waiting for it", self.spec.adapter);
                self.health.set_state("no adapter");
                Ok(false)
            }
        }
    }

    async fn bring_up_adapter(
        &mut self,
        session: &Session,
        interfaces: &HashMap<String, HashMap<String, OwnedValue>>,
    ) -> zbus::Result<bool> {
        self.monitors_offered = interfaces
            .get(MONITOR_MANAGER)
            .and_then(|props| props.get("SupportedMonitorTypes"))
            .is_some_and(|types| match unwrap(types) {
                Value::Array(types) => types
                    .iter()
                    .any(|t| text(t).as_deref() == Some("or_patterns")),
                _ => false,
            });
        let powered = interfaces
            .get(ADAPTER)
            .and_then(|props| props.get("Powered"))
            .and_then(|v| bool::try_from(v).ok())
            .unwrap_or(false);
        if !powered {
            warn!(adapter = %self.spec.adapter, "BLE adapter is powered off; powering it on");
            self.health.set_state("powered off");
            self.power_on(session).await?;
            // Scanning starts when BlueZ says it is powered.
            return Ok(false);
        }
        self.start_scanning(session).await?;
        Ok(true)
    }

    /// Passive scanning through an advertisement monitor where the adapter
    /// offers one and every configured format has a pattern; discovery
    /// otherwise, and for `scan = "active"`.
    async fn start_scanning(&mut self, session: &Session) -> zbus::Result<()> {
        let passive = match (&self.patterns, self.spec.scan) {
            (_, Scan::Active) => None,
            (Some(patterns), Scan::Passive) if self.monitors_offered && !patterns.is_empty() => {
                Some(patterns.clone())
            }
            (patterns, Scan::Passive) => {
                if !self.said_passive {
                    self.said_passive = true;
                    let why = if !self.monitors_offered {
                        "the adapter offers no advertisement monitor"
                    } else if patterns.is_none() {
                        "a codec decodes advertisements no pattern can pick out"
                    } else {
                        "there is nothing to listen for"
                    };
                    info!(adapter = %self.spec.adapter, "passive scanning not possible ({why}): scanning with discovery");
                }
                None
            }
        };
        match passive {
            Some(patterns) => {
                monitor::export(&session.conn, patterns).await?;
                session
                    .call(
                        &self.adapter_path,
                        MONITOR_MANAGER,
                        "RegisterMonitor",
                        &(ObjectPath::from_static_str_unchecked(monitor::APP_PATH),),
                    )
                    .await?;
                self.monitoring = true;
            }
            None => {
                self.start_discovery(session).await?;
                self.monitoring = false;
            }
        }
        if self.ever_scanned {
            self.health.restarts.fetch_add(1, Ordering::Relaxed);
        }
        self.ever_scanned = true;
        self.health.set_state("scanning");
        info!(
            adapter = %self.spec.adapter,
            "BLE scanning started ({})",
            if self.monitoring { "passive, advertisement monitor" } else { "discovery" }
        );
        Ok(())
    }

    async fn stop_scanning(&mut self, session: &Session) {
        let _ = if self.monitoring {
            let app = ObjectPath::from_static_str_unchecked(monitor::APP_PATH);
            session
                .call(
                    &self.adapter_path,
                    MONITOR_MANAGER,
                    "UnregisterMonitor",
                    &(app,),
                )
                .await
        } else {
            session
                .call(&self.adapter_path, ADAPTER, "StopDiscovery", &())
                .await
        };
    }

    async fn power_on(&self, session: &Session) -> zbus::Result<()> {
        session
            .call(
                &self.adapter_path,
                PROPERTIES,
                "Set",
                &(ADAPTER, "Powered", Value::from(true)),
            )
            .await
            .map(drop)
    }

    async fn start_discovery(&mut self, session: &Session) -> zbus::Result<()> {
        let filter: HashMap<&str, Value<'_>> = HashMap::from([
            ("Transport", Value::from("le")),
            ("DuplicateData", Value::from(true)),
        ]);
        session
            .call(
                &self.adapter_path,
                ADAPTER,
                "SetDiscoveryFilter",
                &(filter,),
            )
            .await?;
        match session
            .call(&self.adapter_path, ADAPTER, "StartDiscovery", &())
            .await
        {
            Ok(_) => {}
            // Already running for us (a restart raced BlueZ's own state).
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.bluez.Error.InProgress" => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Err: the gateway is stopping and no longer takes samples.
    async fn heard(&mut self, advert: Advertisement, stop: &CancellationToken) -> Result<(), ()> {
        self.health.advertisements.fetch_add(1, Ordering::Relaxed);
        let Some(address) = advert.address else {
            return Ok(());
        };
        let Some(device) = self.devices.get_mut(&address) else {
            self.discovered(address, &advert);
            return Ok(());
        };
        let ts_ms = now_ms();
        device.health.last_seen_ms.store(ts_ms, Ordering::Relaxed);
        let Some(tracker) = &mut device.tracker else {
            return Ok(());
        };
        match tracker.heard(&advert, Instant::now(), ts_ms) {
            Heard::Sample(sample) => {
                device.health.record_read(ts_ms);
                device.health.stale.store(false, Ordering::Relaxed);
                self.outputs.samples.send(sample, stop).await.map_err(drop)
            }
            Heard::Quiet => Ok(()),
            Heard::Undecodable(error) => {
                DeviceHealth::count(&device.health.errors);
                self.health.decode_errors.fetch_add(1, Ordering::Relaxed);
                device.health.set_last_error(error);
                Ok(())
            }
        }
    }

    fn discovered(&mut self, address: Address, advert: &Advertisement) {
        let Some(reports) = &self.outputs.discovered else {
            return;
        };
        let now = Instant::now();
        if self.unknown.len() >= MAX_UNKNOWN && !self.unknown.contains_key(&address) {
            self.unknown.retain(|_, (_, reported)| {
                reported.is_some_and(|t| now.duration_since(t) < DISCOVERY_REPEAT)
            });
            if self.unknown.len() >= MAX_UNKNOWN {
                return;
            }
        }
        let (name, reported) = self.unknown.entry(address).or_default();
        if advert.name.is_some() {
            name.clone_from(&advert.name);
        }
        if reported.is_some_and(|t| now.duration_since(t) < DISCOVERY_REPEAT) {
            return;
        }
        *reported = Some(now);
        let report = Discovered {
            address,
            name: name.clone(),
            rssi: advert.rssi,
            service_uuids: advert.service_uuids.clone(),
            manufacturer_ids: advert.manufacturer_data.iter().map(|(id, _)| *id).collect(),
            decoder: Format::recognise(advert),
        };
        match reports.try_send(report) {
            Ok(()) => {
                self.health.discovered.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.health.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn check_stale(&mut self, stop: &CancellationToken) -> Result<(), ()> {
        let now = Instant::now();
        let ts_ms = now_ms();
        for device in self.devices.values_mut() {
            let Some(tracker) = &mut device.tracker else {
                continue;
            };
            if let Some(sample) = tracker.check_stale(now, ts_ms) {
                self.outputs
                    .samples
                    .send(sample, stop)
                    .await
                    .map_err(drop)?;
            }
            device
                .health
                .stale
                .store(tracker.is_stale(), Ordering::Relaxed);
        }
        Ok(())
    }
}

/// True for objects of the adapter at `adapter` (`/org/bluez/hci0/...`, not
/// `/org/bluez/hci01/...`).
fn under(path: &OwnedObjectPath, adapter: &str) -> bool {
    path.as_str()
        .strip_prefix(adapter)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// BlueZ names device objects after their address: `.../dev_AA_BB_CC_DD_EE_FF`.
fn address_of(path: &OwnedObjectPath) -> Option<Address> {
    let last = path.as_str().rsplit('/').next()?;
    last.strip_prefix("dev_")?.replace('_', ":").parse().ok()
}

/// The advertisement in a device's (changed) properties.
fn advertisement(address: Address, props: &HashMap<String, OwnedValue>) -> Advertisement {
    let get = |key: &str| props.get(key).map(|v| &**v);
    Advertisement {
        address: Some(address),
        name: get("Name").and_then(text),
        rssi: get("RSSI").and_then(|v| match unwrap(v) {
            Value::I16(rssi) => Some(*rssi),
            _ => None,
        }),
        manufacturer_data: get("ManufacturerData")
            .map(|v| {
                dict(v, |k| match k {
                    Value::U16(id) => Some(*id),
                    _ => None,
                })
            })
            .unwrap_or_default(),
        service_data: get("ServiceData")
            .map(|v| dict(v, text))
            .unwrap_or_default(),
        service_uuids: match get("UUIDs").map(unwrap) {
            Some(Value::Array(uuids)) => uuids.iter().filter_map(text).collect(),
            _ => Vec::new(),
        },
    }
}

/// The value inside any number of variants.
fn unwrap<'v>(value: &'v Value<'v>) -> &'v Value<'v> {
    match value {
        Value::Value(inner) => unwrap(inner),
        other => other,
    }
}

fn text(value: &Value<'_>) -> Option<String> {
    match unwrap(value) {
        Value::Str(s) => Some(s.to_string()),
        _ => None,
    }
}

fn bytes(value: &Value<'_>) -> Option<Vec<u8>> {
    match unwrap(value) {
        Value::Array(array) => array
            .iter()
            .map(|b| match b {
                Value::U8(b) => Some(*b),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// A BlueZ data dictionary (`a{qv}` or `a{sv}` of byte arrays).
fn dict<K>(value: &Value<'_>, key: impl Fn(&Value<'_>) -> Option<K>) -> Vec<(K, Vec<u8>)> {
    match unwrap(value) {
        Value::Dict(dict) => dict
            .iter()
            .filter_map(|(k, v)| Some((key(k)?, bytes(v)?)))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_paths_name_their_address() {
        let path = OwnedObjectPath::try_from("/org/bluez/hci0/dev_A4_C1_38_0A_1B_2C").unwrap();
        assert_eq!(address_of(&path).unwrap().to_string(), "A4:C1:38:0A:1B:2C");
        let adapter = OwnedObjectPath::try_from("/org/bluez/hci0").unwrap();
        assert_eq!(address_of(&adapter), None);
        let service =
            OwnedObjectPath::try_from("/org/bluez/hci0/dev_A4_C1_38_0A_1B_2C/service000a").unwrap();
        assert_eq!(address_of(&service), None);
    }
}
