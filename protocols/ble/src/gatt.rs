//! GATT for connectable sensors: characteristics read on an interval or
//! taken as notifications, through BlueZ.
//!
//! One task per adapter connects to one device at a time: a connection
//! attempt is never in flight beside another, since radios and BlueZ
//! handle parallel attempts badly. A device that cannot be reached is
//! tried again with back-off; a device read on an interval is disconnected
//! after the read, sparing its battery, and one with notifications is kept
//! connected and reconnected when it drops.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kite_core::{now_ms, Backoff, DeviceHealth, PointSample, Reading, Sample, SampleSink, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

use crate::advert::{uuid16, Address};
use crate::bluez::{Event, Session, OBJECT_MANAGER, PROPERTIES};

const DEVICE: &str = "org.bluez.Device1";
const SERVICE: &str = "org.bluez.GattService1";
const CHARACTERISTIC: &str = "org.bluez.GattCharacteristic1";

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long BlueZ may take to discover a connected device's services.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a characteristic's bytes become a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GattType {
    Bool,
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    String,
}

impl GattType {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "bool" => GattType::Bool,
            "u8" => GattType::U8,
            "i8" => GattType::I8,
            "u16" => GattType::U16,
            "i16" => GattType::I16,
            "u32" => GattType::U32,
            "i32" => GattType::I32,
            "u64" => GattType::U64,
            "i64" => GattType::I64,
            "f32" => GattType::F32,
            "f64" => GattType::F64,
            "string" => GattType::String,
            _ => return None,
        })
    }

    fn size(self) -> Option<usize> {
        Some(match self {
            GattType::Bool | GattType::U8 | GattType::I8 => 1,
            GattType::U16 | GattType::I16 => 2,
            GattType::U32 | GattType::I32 | GattType::F32 => 4,
            GattType::U64 | GattType::I64 | GattType::F64 => 8,
            GattType::String => return None,
        })
    }
}

/// When a characteristic is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GattMode {
    Interval(Duration),
    Notify,
}

/// One point read from a characteristic.
#[derive(Debug, Clone, PartialEq)]
pub struct GattPoint {
    pub name: Arc<str>,
    /// 128-bit lower-case UUIDs, as BlueZ writes them.
    pub service: String,
    pub characteristic: String,
    pub data_type: GattType,
    /// GATT values are little-endian unless the profile says otherwise.
    pub big_endian: bool,
    pub scale: f64,
    pub offset: f64,
    pub unit: Option<Arc<str>>,
    pub mode: GattMode,
}

/// A UUID as written in a config (`2a6e`, `0x2A6E` or 128-bit) in the
/// 128-bit lower-case form BlueZ uses; `None` if it is neither.
pub fn full_uuid(text: &str) -> Option<String> {
    let short = text.strip_prefix("0x").unwrap_or(text);
    if short.len() == 4 {
        return u16::from_str_radix(short, 16).ok().map(uuid16);
    }
    let lower = text.to_ascii_lowercase();
    let groups: Vec<&str> = lower.split('-').collect();
    let shape = groups.iter().map(|g| g.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12];
    (shape && lower.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(lower)
}

/// A characteristic's value as the point's reading.
pub fn decode_value(point: &GattPoint, bytes: &[u8]) -> Reading {
    if point.data_type == GattType::String {
        return match std::str::from_utf8(bytes) {
            Ok(text) => Reading::Good(Value::Text(text.trim_end_matches('\0').to_string())),
            Err(_) => Reading::Bad("characteristic value is not UTF-8".into()),
        };
    }
    let size = point.data_type.size().unwrap_or(0);
    let Some(raw) = bytes.get(..size) else {
        return Reading::Bad(format!(
            "characteristic value has {} bytes, {size} needed",
            bytes.len()
        ));
    };
    let mut word = [0u8; 8];
    if point.big_endian {
        word[8 - size..].copy_from_slice(raw);
        word.reverse();
    } else {
        word[..size].copy_from_slice(raw);
    }
    let unsigned = u64::from_le_bytes(word);
    // Sign-extends the value from its width.
    let signed = ((unsigned << (64 - 8 * size)) as i64) >> (64 - 8 * size);
    let unscaled = point.scale == 1.0 && point.offset == 0.0;
    let number = match point.data_type {
        GattType::Bool => return Reading::Good(Value::Bool(unsigned != 0)),
        GattType::U8 | GattType::U16 | GattType::U32 | GattType::U64 if unscaled => {
            return Reading::Good(Value::UInt(unsigned))
        }
        GattType::I8 | GattType::I16 | GattType::I32 | GattType::I64 if unscaled => {
            return Reading::Good(Value::Int(signed))
        }
        GattType::U8 | GattType::U16 | GattType::U32 | GattType::U64 => unsigned as f64,
        GattType::I8 | GattType::I16 | GattType::I32 | GattType::I64 => signed as f64,
        GattType::F32 => f64::from(f32::from_bits(unsigned as u32)),
        GattType::F64 => f64::from_bits(unsigned),
        GattType::String => return Reading::Bad("unreachable".into()),
    };
    let value = number * point.scale + point.offset;
    if value.is_finite() {
        Reading::Good(Value::Float(value))
    } else {
        Reading::Bad(format!(
            "characteristic value is not a finite number ({value})"
        ))
    }
}

/// One device with GATT points.
pub struct GattDevice {
    pub name: Arc<str>,
    pub address: Address,
    pub points: Vec<GattPoint>,
    pub health: Arc<DeviceHealth>,
}

struct Link {
    device: GattDevice,
    path: String,
    connected: bool,
    /// The object path of each point's characteristic, once resolved.
    chars: HashMap<usize, String>,
    notifying: bool,
    /// When each interval point is read next.
    due: Vec<Option<Instant>>,
    /// No connection attempt before this.
    retry_at: Instant,
    backoff: Backoff,
}

impl Link {
    fn has_notify(&self) -> bool {
        self.device
            .points
            .iter()
            .any(|p| p.mode == GattMode::Notify)
    }

    /// When this link next needs work.
    fn next_work(&self) -> Option<Instant> {
        let reads = self.due.iter().flatten().min().copied();
        let reconnect = (self.has_notify() && !self.notifying).then_some(self.retry_at);
        let work = reads.into_iter().chain(reconnect).min()?;
        Some(work.max(self.retry_at))
    }
}

/// Reads the GATT points of `devices` through `adapter` until `stop`.
pub async fn run_gatt(
    adapter: String,
    devices: Vec<GattDevice>,
    samples: SampleSink,
    stop: CancellationToken,
) {
    let now = Instant::now();
    let mut links: Vec<Link> = devices
        .into_iter()
        .map(|device| Link {
            path: format!(
                "/org/bluez/{adapter}/dev_{}",
                device.address.to_string().replace(':', "_")
            ),
            connected: false,
            chars: HashMap::new(),
            notifying: false,
            due: device
                .points
                .iter()
                .map(|p| matches!(p.mode, GattMode::Interval(_)).then_some(now))
                .collect(),
            retry_at: now,
            backoff: Backoff::new(Duration::from_secs(5), Duration::from_secs(300)),
            device,
        })
        .collect();
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let health = Arc::default();
    loop {
        let mut session = match Session::open(&health).await {
            Ok(session) => session,
            Err(e) => {
                warn!(adapter, "GATT: cannot reach BlueZ on the system bus: {e}");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                }
            }
        };
        backoff.reset();
        for link in &mut links {
            link.connected = false;
            link.notifying = false;
            link.chars.clear();
        }
        let closed = serve(&mut session, &mut links, &samples, &stop).await;
        session.pump.abort();
        if !closed {
            for link in links.iter().filter(|l| l.connected) {
                let _ = session.call(&link.path, DEVICE, "Disconnect", &()).await;
            }
            return;
        }
    }
}

/// Serves the links on one bus connection; true when it closed (to be
/// opened again), false when stopped.
async fn serve(
    session: &mut Session,
    links: &mut [Link],
    samples: &SampleSink,
    stop: &CancellationToken,
) -> bool {
    loop {
        let next = links
            .iter()
            .enumerate()
            .filter_map(|(i, link)| Some((link.next_work()?, i)))
            .min();
        let sleep = async {
            match next {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return false,
            event = session.events.recv() => match event {
                None => return true,
                Some(event) => {
                    if handle(event, links, samples, stop).await.is_err() {
                        return false;
                    }
                }
            },
            _ = sleep => {
                let Some((_, i)) = next else { continue };
                if work(session, &mut links[i], samples, stop).await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// Notifications and dropped connections. Err: the gateway no longer takes samples.
async fn handle(
    event: Event,
    links: &mut [Link],
    samples: &SampleSink,
    stop: &CancellationToken,
) -> Result<(), ()> {
    match event {
        Event::Value { path, value } => {
            for link in links.iter_mut() {
                let found = link
                    .chars
                    .iter()
                    .find(|(_, p)| **p == path.as_str())
                    .map(|(i, _)| *i);
                let Some(i) = found else { continue };
                let point = &link.device.points[i];
                if point.mode != GattMode::Notify {
                    continue;
                }
                let reading = decode_value(point, &value);
                return send(link, vec![(i, reading)], samples, stop).await;
            }
            Ok(())
        }
        Event::Device { path, props } => {
            let connected = props.get("Connected").and_then(|v| bool::try_from(v).ok());
            if connected == Some(false) {
                if let Some(link) = links.iter_mut().find(|l| l.path == path.as_str()) {
                    if link.notifying {
                        warn!(device = %link.device.name, "GATT connection dropped; reconnecting");
                    }
                    link.connected = false;
                    link.notifying = false;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Connects if need be, reads what is due and starts notifications.
/// Err: the gateway no longer takes samples.
async fn work(
    session: &Session,
    link: &mut Link,
    samples: &SampleSink,
    stop: &CancellationToken,
) -> Result<(), ()> {
    let now = Instant::now();
    let due: Vec<usize> = (0..link.device.points.len())
        .filter(|&i| link.due[i].is_some_and(|at| at <= now))
        .collect();
    let started = Instant::now();
    let result = connect_and_read(session, link, &due).await;
    link.device.health.record_poll(started.elapsed());
    let readings = match result {
        Ok(readings) => {
            link.backoff.reset();
            link.retry_at = Instant::now();
            readings
        }
        Err(e) => {
            let health = &link.device.health;
            DeviceHealth::count(if e.timed_out {
                &health.timeouts
            } else {
                &health.errors
            });
            health.set_last_error(e.message.clone());
            let delay = link.backoff.next_delay();
            warn!(device = %link.device.name, "GATT: {}; trying again in {delay:?}", e.message);
            link.retry_at = Instant::now() + delay;
            health.offline.store(true, Ordering::Relaxed);
            due.iter()
                .map(|&i| (i, Reading::Bad(e.message.clone())))
                .collect()
        }
    };
    let after = Instant::now();
    for &i in &due {
        if let GattMode::Interval(every) = link.device.points[i].mode {
            // Late reads are not caught up: the next one is an interval on.
            let next = link.due[i].map_or(after, |at| at + every);
            link.due[i] = Some(if next <= after { after + every } else { next });
        }
    }
    if readings.is_empty() {
        return Ok(());
    }
    send(link, readings, samples, stop).await
}

async fn send(
    link: &Link,
    readings: Vec<(usize, Reading)>,
    samples: &SampleSink,
    stop: &CancellationToken,
) -> Result<(), ()> {
    let points = readings
        .into_iter()
        .map(|(i, reading)| {
            let point = &link.device.points[i];
            PointSample {
                name: point.name.clone(),
                unit: point.unit.clone(),
                reading,
            }
        })
        .collect();
    let sample = Sample {
        device: link.device.name.clone(),
        ts_ms: now_ms(),
        points,
    };
    samples.send(sample, stop).await.map_err(drop)
}

struct Failure {
    message: String,
    timed_out: bool,
}

impl From<zbus::Error> for Failure {
    fn from(e: zbus::Error) -> Self {
        let timed_out = e.to_string().contains("no reply within");
        Self {
            message: e.to_string(),
            timed_out,
        }
    }
}

async fn connect_and_read(
    session: &Session,
    link: &mut Link,
    due: &[usize],
) -> Result<Vec<(usize, Reading)>, Failure> {
    if !link.connected {
        session
            .call_within(CONNECT_TIMEOUT, &link.path, DEVICE, "Connect", &())
            .await?;
        link.connected = true;
        link.device.health.offline.store(false, Ordering::Relaxed);
        info!(device = %link.device.name, "GATT connected");
    }
    if link.chars.len() < link.device.points.len() {
        resolve(session, link).await?;
    }
    let mut readings = Vec::new();
    for &i in due {
        let path = link.chars[&i].clone();
        let reply = session
            .call(
                &path,
                CHARACTERISTIC,
                "ReadValue",
                &(HashMap::<&str, OwnedValue>::new(),),
            )
            .await?;
        let bytes: Vec<u8> = reply.body().deserialize()?;
        readings.push((i, decode_value(&link.device.points[i], &bytes)));
        link.device.health.record_read(now_ms());
    }
    if link.has_notify() {
        if !link.notifying {
            for (i, point) in link.device.points.iter().enumerate() {
                if point.mode == GattMode::Notify {
                    session
                        .call(&link.chars[&i], CHARACTERISTIC, "StartNotify", &())
                        .await?;
                }
            }
            link.notifying = true;
        }
    } else {
        // Read on an interval: the sensor's battery is spared between reads.
        session.call(&link.path, DEVICE, "Disconnect", &()).await?;
        link.connected = false;
    }
    Ok(readings)
}

/// Waits for BlueZ to discover the device's services, then finds each
/// point's characteristic.
async fn resolve(session: &Session, link: &mut Link) -> Result<(), Failure> {
    let deadline = Instant::now() + RESOLVE_TIMEOUT;
    loop {
        let reply = session
            .call(&link.path, PROPERTIES, "Get", &(DEVICE, "ServicesResolved"))
            .await?;
        let resolved: OwnedValue = reply.body().deserialize()?;
        if bool::try_from(&resolved).unwrap_or(false) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Failure {
                message: format!("services not resolved within {RESOLVE_TIMEOUT:?}"),
                timed_out: true,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = session
        .call("/", OBJECT_MANAGER, "GetManagedObjects", &())
        .await?;
    let objects: HashMap<OwnedObjectPath, HashMap<String, HashMap<String, OwnedValue>>> =
        reply.body().deserialize()?;
    let uuid = |path: &str, interface: &str| -> Option<String> {
        let props = objects
            .iter()
            .find(|(p, _)| p.as_str() == path)?
            .1
            .get(interface)?;
        let value = props.get("UUID")?;
        String::try_from(value.try_clone().ok()?)
            .ok()
            .map(|u| u.to_ascii_lowercase())
    };
    let prefix = format!("{}/", link.path);
    for (i, point) in link.device.points.iter().enumerate() {
        let found = objects.iter().find_map(|(path, interfaces)| {
            let props = interfaces.get(CHARACTERISTIC)?;
            if !path.as_str().starts_with(&prefix) {
                return None;
            }
            let char_uuid = String::try_from(props.get("UUID")?.try_clone().ok()?).ok()?;
            let service =
                OwnedObjectPath::try_from(props.get("Service")?.try_clone().ok()?).ok()?;
            let matches = char_uuid.eq_ignore_ascii_case(&point.characteristic)
                && uuid(service.as_str(), SERVICE).as_deref() == Some(point.service.as_str());
            matches.then(|| path.to_string())
        });
        match found {
            Some(path) => {
                link.chars.insert(i, path);
            }
            None => {
                return Err(Failure {
                    message: format!(
                        "no characteristic {} in service {} for point {}",
                        point.characteristic, point.service, point.name
                    ),
                    timed_out: false,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(data_type: GattType, big_endian: bool, scale: f64) -> GattPoint {
        GattPoint {
            name: "t".into(),
            service: uuid16(0x181a),
            characteristic: uuid16(0x2a6e),
            data_type,
            big_endian,
            scale,
            offset: 0.0,
            unit: None,
            mode: GattMode::Notify,
        }
    }

    #[test]
    fn values_decode_by_type_order_and_scale() {
        // Environmental Sensing temperature: sint16, 0.01 degC, little-endian.
        let temperature = point(GattType::I16, false, 0.01);
        assert_eq!(
            decode_value(&temperature, &[0x2c, 0xf6]),
            Reading::Good(Value::Float(-25.16))
        );
        assert_eq!(
            decode_value(&point(GattType::U16, true, 1.0), &[0x01, 0x02]),
            Reading::Good(Value::UInt(0x0102))
        );
        assert_eq!(
            decode_value(&point(GattType::I8, false, 1.0), &[0xff]),
            Reading::Good(Value::Int(-1))
        );
        assert_eq!(
            decode_value(&point(GattType::F32, false, 1.0), &1.5f32.to_le_bytes()),
            Reading::Good(Value::Float(1.5))
        );
        assert_eq!(
            decode_value(&point(GattType::Bool, false, 1.0), &[2]),
            Reading::Good(Value::Bool(true))
        );
        assert_eq!(
            decode_value(&point(GattType::String, false, 1.0), b"v1.2\0"),
            Reading::Good(Value::Text("v1.2".into()))
        );
        assert!(matches!(
            decode_value(&point(GattType::U32, false, 1.0), &[1, 2]),
            Reading::Bad(_)
        ));
        assert!(matches!(
            decode_value(&point(GattType::F64, false, 1.0), &f64::NAN.to_le_bytes()),
            Reading::Bad(_)
        ));
    }

    #[test]
    fn uuids_are_written_as_bluez_does() {
        assert_eq!(
            full_uuid("2a6e").as_deref(),
            Some("00002a6e-0000-1000-8000-00805f9b34fb")
        );
        assert_eq!(
            full_uuid("0x2A6E").as_deref(),
            Some("00002a6e-0000-1000-8000-00805f9b34fb")
        );
        assert_eq!(
            full_uuid("6E400001-B5A3-F393-E0A9-E50E24DCCA9E").as_deref(),
            Some("6e400001-b5a3-f393-e0a9-e50e24dcca9e")
        );
        for bad in [
            "",
            "2a6",
            "zz6e",
            "6e400001b5a3f393e0a9e50e24dcca9e",
            "6e400001-b5a3-f393-e0a9-e50e24dcca9g",
        ] {
            assert_eq!(full_uuid(bad), None, "{bad}");
        }
    }
}
