//! The edge node's side of a Sparkplug B session, pure: `bdSeq` and `seq`,
//! the metrics of each device with their aliases and datatypes, which
//! devices are born or dead on the connection, and the payload of every
//! message. The uplink feeds it buffered rows and commands and publishes
//! what it returns; it is tested without a broker.
//!
//! The metrics a device has, and the latest value of each, outlive a
//! connection, so that the births after a reconnect carry them.

use std::collections::HashMap;

use prost::Message;

use kite_core::{PointSample, Reading, Value};

use super::metric::{self, properties, Quality};
use super::proto::payload::{self, Metric};
use super::proto::{DataType, Payload};
use super::DeclaredTypes;

/// The name of the node metric a host sets to ask for every birth again.
pub const REBIRTH: &str = "Node Control/Rebirth";
/// Devices the session keeps; a row of any other device is set aside.
const MAX_DEVICES: usize = 4096;
/// Metrics a device may have; a row adding more is set aside.
const MAX_METRICS: usize = 4096;

#[derive(Debug, Default)]
pub struct Session {
    /// The birth-death sequence number of the connection.
    bd_seq: u64,
    /// The `seq` of the next message.
    seq: u8,
    /// Aliases are unique across the edge node; the next one.
    next_alias: u64,
    devices: HashMap<String, Device>,
    /// The timestamp of the newest STATE of the primary host.
    host_timestamp: Option<u64>,
}

#[derive(Debug, Default)]
struct Device {
    metrics: Vec<MetricState>,
    by_name: HashMap<String, usize>,
    /// Its DBIRTH went out on this connection (and no DDEATH since).
    born: bool,
    /// Its DDEATH went out on this connection.
    dead: bool,
}

#[derive(Debug)]
struct MetricState {
    name: String,
    alias: u64,
    datatype: DataType,
    unit: Option<String>,
    latest: Option<Latest>,
    /// The quality the host last saw, on this connection.
    sent_quality: Option<Quality>,
}

/// A point's newest reading.
#[derive(Debug, Clone)]
struct Latest {
    ts_ms: i64,
    quality: Quality,
    value: Option<Value>,
}

/// One message to publish, in order.
#[derive(Debug, PartialEq)]
pub struct Out {
    pub kind: Kind,
    pub device: String,
    pub payload: Vec<u8>,
    /// It carries the row: the row goes on its PUBACK.
    pub carries_row: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    DBirth,
    DData,
    DDeath,
}

impl Kind {
    pub fn topic_word(self) -> &'static str {
        match self {
            Kind::DBirth => "DBIRTH",
            Kind::DData => "DDATA",
            Kind::DDeath => "DDEATH",
        }
    }
}

/// A point a DCMD names, and the value to write or why there is none.
pub type Command = (String, Result<serde_json::Value, String>);

/// What a telemetry row became.
#[derive(Debug, Default)]
pub struct RowOutcome {
    pub messages: Vec<Out>,
    /// Why the row's own message could not be made; the row is set aside.
    pub refused: Option<String>,
}

impl Session {
    /// A new connection with birth-death number `bd_seq`: no device is born
    /// on it yet.
    pub fn connected(&mut self, bd_seq: u8) {
        self.bd_seq = bd_seq.into();
        self.seq = 0;
        for device in self.devices.values_mut() {
            device.unborn();
        }
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        seq.into()
    }

    fn bd_seq_metric(&self, now_ms: i64) -> Metric {
        Metric {
            name: Some("bdSeq".into()),
            timestamp: Some(now_ms as u64),
            datatype: Some(DataType::Int64 as u32),
            value: Some(payload::metric::Value::LongValue(self.bd_seq)),
            ..Metric::default()
        }
    }

    /// The NBIRTH (seq 0, then every device is born again): the `bdSeq` of
    /// the will and the node's control metric.
    pub fn node_birth(&mut self, now_ms: i64) -> Vec<u8> {
        self.seq = 0;
        for device in self.devices.values_mut() {
            device.unborn();
        }
        let metrics = vec![
            self.bd_seq_metric(now_ms),
            Metric {
                name: Some(REBIRTH.into()),
                timestamp: Some(now_ms as u64),
                datatype: Some(DataType::Boolean as u32),
                value: Some(payload::metric::Value::BooleanValue(false)),
                ..Metric::default()
            },
        ];
        let seq = self.next_seq();
        encode(now_ms, Some(seq), metrics)
    }

    /// The NDEATH of this connection: the will, and what a clean stop sends.
    pub fn node_death(&self, now_ms: i64) -> Vec<u8> {
        encode(now_ms, None, vec![self.bd_seq_metric(now_ms)])
    }

    /// A DBIRTH for every device with a reading, after an NBIRTH.
    pub fn device_births(&mut self, now_ms: i64) -> Vec<Out> {
        let mut names: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, device)| device.metrics.iter().any(|m| m.latest.is_some()))
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|name| self.device_birth(&name, now_ms, false))
            .collect()
    }

    fn device_birth(&mut self, name: &str, now_ms: i64, carries_row: bool) -> Out {
        let seq = self.next_seq();
        let device = self.devices.get_mut(name).expect("a known device");
        device.born = true;
        device.dead = false;
        let metrics = device
            .metrics
            .iter_mut()
            .map(|state| {
                let latest = state.latest.clone();
                let quality = latest.as_ref().map_or(Quality::Bad, |l| l.quality);
                state.sent_quality = Some(quality);
                let value = latest.as_ref().and_then(|l| l.value.as_ref());
                Metric {
                    name: Some(state.name.clone()),
                    alias: Some(state.alias),
                    timestamp: Some(latest.as_ref().map_or(now_ms, |l| l.ts_ms) as u64),
                    datatype: Some(state.datatype as u32),
                    is_null: value.is_none().then_some(true),
                    properties: Some(properties(quality, state.unit.as_deref())),
                    value: value.map(|v| metric::encode(state.datatype, v)),
                    ..Metric::default()
                }
            })
            .collect();
        Out {
            kind: Kind::DBirth,
            device: name.to_string(),
            payload: encode(now_ms, Some(seq), metrics),
            carries_row,
        }
    }

    /// The messages of one telemetry row of `device` read at `ts_ms`: its
    /// DDATA, after a DBIRTH when the device is not born on this
    /// connection, is dead, or has a metric new or of another datatype. A
    /// live row without one good reading means the device is down: a
    /// DDEATH carries it (or nothing, when it is dead already).
    /// `max_payload` bounds the DDATA.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn telemetry(
        &mut self,
        device_name: &str,
        ts_ms: i64,
        points: &[PointSample],
        historical: bool,
        declared: &DeclaredTypes,
        now_ms: i64,
        max_payload: usize,
    ) -> RowOutcome {
        if !self.devices.contains_key(device_name) && self.devices.len() >= MAX_DEVICES {
            return RowOutcome {
                refused: Some(format!(
                    "more than {MAX_DEVICES} devices for one Sparkplug edge node"
                )),
                ..RowOutcome::default()
            };
        }
        let declared = declared.get(device_name);
        let mut next_alias = self.next_alias;
        let device = self.devices.entry(device_name.to_string()).or_default();
        let mut readings = Vec::with_capacity(points.len());
        let mut rebirth = false;
        for point in points {
            let name = &point.name;
            let (quality, value) = match &point.reading {
                Reading::Good(value) => (Quality::Good, Some(value.clone())),
                Reading::Bad(_) => (Quality::Bad, None),
                Reading::Stale(value, _) => (Quality::Stale, Some(value.clone())),
            };
            let index = match device.by_name.get(name.as_ref()) {
                Some(&index) => index,
                None => {
                    if device.metrics.len() >= MAX_METRICS {
                        return RowOutcome {
                            refused: Some(format!(
                                "more than {MAX_METRICS} metrics for one Sparkplug device"
                            )),
                            ..RowOutcome::default()
                        };
                    }
                    let datatype = declared
                        .and_then(|points| points.get(name.as_ref()).copied())
                        .or_else(|| value.as_ref().map(metric::inferred));
                    let Some(datatype) = datatype else {
                        // Nothing says what it is until it has a value.
                        continue;
                    };
                    device.metrics.push(MetricState {
                        name: name.to_string(),
                        alias: next_alias,
                        datatype,
                        unit: None,
                        latest: None,
                        sent_quality: None,
                    });
                    next_alias += 1;
                    device
                        .by_name
                        .insert(name.to_string(), device.metrics.len() - 1);
                    rebirth = true;
                    device.metrics.len() - 1
                }
            };
            let state = &mut device.metrics[index];
            if let Some(value) = &value {
                if !metric::fits(state.datatype, value) {
                    state.datatype = metric::widened(state.datatype, value);
                    rebirth = true;
                }
            }
            if let Some(unit) = &point.unit {
                if state.unit.as_deref() != Some(unit.as_ref()) {
                    state.unit = Some(unit.to_string());
                    rebirth = true;
                }
            }
            let reading = Latest {
                ts_ms,
                quality,
                value,
            };
            if state.latest.as_ref().is_none_or(|l| l.ts_ms <= ts_ms) {
                state.latest = Some(reading.clone());
            }
            readings.push((index, reading));
        }
        self.next_alias = next_alias;
        let down = !historical && readings.iter().all(|(_, r)| r.quality != Quality::Good);
        let device = &self.devices[device_name];
        let mut outcome = RowOutcome::default();
        if down {
            if device.dead {
                return outcome;
            }
            if !device.born {
                outcome
                    .messages
                    .push(self.device_birth(device_name, now_ms, false));
            }
            let seq = self.next_seq();
            let device = self.devices.get_mut(device_name).expect("known");
            device.born = false;
            device.dead = true;
            outcome.messages.push(Out {
                kind: Kind::DDeath,
                device: device_name.to_string(),
                payload: encode(now_ms, Some(seq), Vec::new()),
                carries_row: true,
            });
            return outcome;
        }
        if !device.born || rebirth {
            outcome
                .messages
                .push(self.device_birth(device_name, now_ms, false));
        }
        let device = self.devices.get_mut(device_name).expect("known");
        let metrics = readings
            .iter()
            .map(|(index, reading)| {
                let state = &device.metrics[*index];
                let quality_changed = state.sent_quality != Some(reading.quality);
                Metric {
                    alias: Some(state.alias),
                    is_historical: historical.then_some(true),
                    is_null: reading.value.is_none().then_some(true),
                    properties: (quality_changed || reading.quality != Quality::Good)
                        .then(|| properties(reading.quality, None)),
                    value: reading
                        .value
                        .as_ref()
                        .map(|v| metric::encode(state.datatype, v)),
                    ..Metric::default()
                }
            })
            .collect();
        // The seq is taken only by a message that goes out.
        let payload = encode(ts_ms, Some(u64::from(self.seq)), metrics);
        if payload.len() > max_payload {
            outcome.refused = Some(format!(
                "a DDATA of {} bytes, over mqtt.max_message_bytes",
                payload.len()
            ));
            return outcome;
        }
        self.seq = self.seq.wrapping_add(1);
        for (index, reading) in &readings {
            device.metrics[*index].sent_quality = Some(reading.quality);
        }
        outcome.messages.push(Out {
            kind: Kind::DData,
            device: device_name.to_string(),
            payload,
            carries_row: true,
        });
        outcome
    }

    /// Whether the primary host is online, by a STATE not older than the
    /// newest one seen (older ones are ignored: `None`).
    pub fn host_state(&mut self, state: super::HostState) -> Option<bool> {
        if self
            .host_timestamp
            .is_some_and(|newest| state.timestamp < newest)
        {
            return None;
        }
        self.host_timestamp = Some(state.timestamp);
        Some(state.online)
    }

    /// The points and values a DCMD to `device` asks to write, each metric
    /// named or addressed by the alias of its birth; or why it cannot be read.
    pub fn command(&self, device: &str, payload: &[u8]) -> Result<Vec<Command>, String> {
        let payload =
            Payload::decode(payload).map_err(|e| format!("not a Sparkplug B payload: {e}"))?;
        let known = self.devices.get(device);
        Ok(payload
            .metrics
            .iter()
            .map(|metric| {
                let state = known.and_then(|device| match (&metric.name, metric.alias) {
                    (Some(name), _) if !name.is_empty() => {
                        device.by_name.get(name).map(|&i| &device.metrics[i])
                    }
                    (_, Some(alias)) => device.metrics.iter().find(|m| m.alias == alias),
                    _ => None,
                });
                match state {
                    Some(state) => (state.name.clone(), metric::decode(state.datatype, metric)),
                    None => match metric.name.as_deref().filter(|name| !name.is_empty()) {
                        Some(name) => {
                            let datatype = metric
                                .datatype
                                .and_then(|d| DataType::try_from(d as i32).ok())
                                .unwrap_or(DataType::Unknown);
                            (name.to_string(), metric::decode(datatype, metric))
                        }
                        None => {
                            let alias = metric.alias.unwrap_or_default();
                            (
                                format!("alias {alias}"),
                                Err(format!("no metric of {device:?} has alias {alias}")),
                            )
                        }
                    },
                }
            })
            .collect())
    }
}

impl Device {
    fn unborn(&mut self) {
        self.born = false;
        self.dead = false;
        for metric in &mut self.metrics {
            metric.sent_quality = None;
        }
    }
}

/// Whether an NCMD asks for a rebirth.
pub fn asks_rebirth(payload: &[u8]) -> bool {
    Payload::decode(payload).is_ok_and(|payload| {
        payload.metrics.iter().any(|metric| {
            metric.name.as_deref() == Some(REBIRTH)
                && metric.value == Some(payload::metric::Value::BooleanValue(true))
        })
    })
}

fn encode(timestamp_ms: i64, seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(timestamp_ms as u64),
        metrics,
        seq,
        uuid: None,
        body: None,
    }
    .encode_to_vec()
}
