//! Kite's JSON format on the wire, in one place: every topic, and every
//! payload built with serde (telemetry, plug-in events, write results, the
//! gateway's status and its offline state), and how a sample becomes
//! buffered rows that each fit one MQTT message.

use std::collections::BTreeMap;

use kite_core::{points_json, PointSample, Reading, Sample, Value};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::store::{Body, Kind, NewRecord, Record};

/// Bytes of a telemetry message besides its topic, device name and points:
/// `{"seq":…,"ts":…,"device":…,"points":,"historical":true}` with 20-digit
/// numbers, and the MQTT header and packet id.
const ENVELOPE_BYTES: usize = 114;

/// The topics of one gateway: everything under `{prefix}/{gateway}`.
#[derive(Debug, Clone)]
pub struct Topics {
    base: String,
}

impl Topics {
    pub fn new(prefix: &str, gateway_id: &str) -> Self {
        Self {
            base: format!("{prefix}/{gateway_id}"),
        }
    }

    pub fn telemetry(&self, device: &str) -> String {
        format!("{}/{device}", self.base)
    }
    pub fn events(&self) -> String {
        format!("{}/events", self.base)
    }
    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }
    pub fn set(&self, device: &str) -> String {
        format!("{}/{device}/set", self.base)
    }
    /// The units of a device's points, with `json = "compact"`.
    pub fn meta(&self, device: &str) -> String {
        format!("{}/{device}/meta", self.base)
    }
    pub fn set_filter(&self) -> String {
        format!("{}/+/set", self.base)
    }
    pub fn set_result(&self, device: &str) -> String {
        format!("{}/{device}/set/result", self.base)
    }
    pub fn ble_discovered(&self) -> String {
        format!("{}/ble/discovered", self.base)
    }
    /// A network command: `command` is like `zigbee/permit_join`.
    pub fn command(&self, command: &str) -> String {
        format!("{}/{command}", self.base)
    }
    pub fn command_result(&self, command: &str) -> String {
        format!("{}/{command}/result", self.base)
    }
    /// The network commands Kite takes (`zigbee/permit_join`, `zigbee/remove`).
    pub fn zigbee_filter(&self) -> String {
        format!("{}/zigbee/+", self.base)
    }
    /// The command a `.../zigbee/{command}` topic carries: `zigbee/permit_join`.
    pub fn zigbee_command<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let command = topic.strip_prefix(&self.base)?.strip_prefix('/')?;
        let name = command.strip_prefix("zigbee/")?;
        (!name.is_empty() && !name.contains('/')).then_some(command)
    }

    /// The device a `.../{device}/set` topic addresses.
    pub fn set_device<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(&self.base)?
            .strip_prefix('/')?
            .strip_suffix("/set")
            .filter(|device| !device.contains('/'))
    }

    /// Where a buffered row is published.
    pub fn for_record(&self, record: &Record) -> String {
        match record.kind {
            Kind::Telemetry => self.telemetry(&record.device),
            Kind::Event => self.events(),
            Kind::WriteResult => self.set_result(&record.device),
            Kind::Discovery => self.ble_discovered(),
            Kind::CommandResult => self.command_result(&record.device),
        }
    }
}

/// How large what the gateway stores may be, so that each row fits one
/// message of at most `mqtt.max_message_bytes` on its topic.
#[derive(Debug, Clone)]
pub struct MessageRoom {
    topics: Topics,
    max_message_bytes: usize,
}

impl MessageRoom {
    pub fn new(topics: Topics, max_message_bytes: usize) -> Self {
        Self {
            topics,
            max_message_bytes,
        }
    }

    /// Room for the `points` object of a telemetry message of `device`.
    /// Called for every sample: it allocates nothing.
    pub fn points_budget(&self, device: &str) -> usize {
        let topic = self.topics.base.len() + 1 + device.len();
        self.max_message_bytes
            .saturating_sub(topic + json_string_len(device) + ENVELOPE_BYTES)
    }

    /// Bytes an output of the plug-in or codec device `device` may take
    /// besides its topic: the longest it is published on (its telemetry,
    /// or the events).
    pub fn for_device(&self, device: &str) -> usize {
        let topic = self
            .topics
            .telemetry(device)
            .len()
            .max(self.topics.events().len());
        self.max_message_bytes.saturating_sub(topic)
    }
}

/// The length of `text` as a JSON string, at most: quotes, escapes of
/// quotes and backslashes, and control characters counted at their longest.
fn json_string_len(text: &str) -> usize {
    2 + text
        .chars()
        .map(|c| match c {
            '"' | '\\' => 2,
            c if u32::from(c) < 0x20 => 6,
            c => c.len_utf8(),
        })
        .sum::<usize>()
}

/// A telemetry message; without `seq` where nothing was stored (`kite
/// plugin test`).
#[derive(Serialize)]
pub struct Telemetry<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    pub ts: i64,
    pub device: &'a str,
    pub points: &'a RawValue,
    /// Replayed from the backlog behind live data (`replay = "live_first"`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub historical: bool,
}

/// A plug-in's event as it is stored; published with `seq` first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub ts: i64,
    pub plugin: String,
    pub severity: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
}

impl From<&kite_plugins::runner::PluginEvent> for Event {
    fn from(event: &kite_plugins::runner::PluginEvent) -> Self {
        Self {
            ts: event.ts,
            plugin: event.plugin.clone(),
            severity: event.severity.to_string(),
            message: event.message.clone(),
            device: event.device.clone(),
            point: event.point.clone(),
        }
    }
}

#[derive(Serialize)]
struct Sequenced<'a, T> {
    seq: i64,
    #[serde(flatten)]
    body: &'a T,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    historical: bool,
}

/// The answer to a write request, on `{device}/set/result`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WriteResult {
    /// The request's `id`, whatever JSON it was.
    pub id: serde_json::Value,
    pub point: Option<String>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to a network command, on `{command}/result`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandResult {
    pub id: serde_json::Value,
    pub ok: bool,
    pub error: Option<String>,
}

/// A write's or a command's answer, on its way to the buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Write(WriteResult),
    Command(CommandResult),
}

/// The gateway's status: the retained message on `{prefix}/{gateway}/status`
/// while it runs, and the body of `/status` on the local API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    /// Always `"online"`; [`offline`] is the other state.
    pub state: &'static str,
    pub ts: i64,
    pub version: &'static str,
    pub buffer: BufferReport,
    pub uplink: UplinkReport,
    pub history: HistoryReport,
    /// The BLE adapter, when BLE is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ble: Option<BleReport>,
    /// The Zigbee network, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zigbee: Option<ZigbeeReport>,
    pub buses: BTreeMap<String, BusReport>,
    pub devices: BTreeMap<String, DeviceReport>,
    pub plugins: BTreeMap<String, PluginReport>,
    /// Set when the per-bus, per-device and per-plug-in details were left
    /// out to fit `mqtt.max_message_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_omitted: Option<&'static str>,
}

impl Status {
    /// The same status without its details, for a message size it does not fit.
    pub fn without_details(mut self) -> Self {
        self.buses.clear();
        self.devices.clear();
        self.plugins.clear();
        self.details_omitted =
            Some("larger than mqtt.max_message_bytes: see /status on the gateway's local API");
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BufferReport {
    pub rows: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub oldest_ts: Option<i64>,
    pub lost: u64,
    pub set_aside: u64,
    pub thinned: u64,
    pub keep_every: u64,
    pub too_large: u64,
    pub commit_failures: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UplinkReport {
    pub connected: bool,
    pub published: u64,
    pub acknowledged: u64,
    pub reconnects: u64,
    pub writes_rejected: u64,
    pub results_dropped: u64,
    /// With `replay = "live_first"`: backlog rows still to replay, rows
    /// replayed, and how many a second over the last status interval.
    pub backlog: u64,
    pub replayed: u64,
    pub replay_rate: u64,
    /// The certificates of `mqtt.ca_file` and `mqtt.cert_file`.
    pub certificates: Vec<CertificateReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CertificateReport {
    /// The config key of its file: `ca_file` or `cert_file`.
    pub file: &'static str,
    pub subject: String,
    /// Not valid after, ms since the Unix epoch.
    pub not_after: i64,
    /// Set from 14 days before it expires.
    pub warning: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryReport {
    pub dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BleReport {
    pub adapter: String,
    /// `starting`, `scanning`, `no adapter`, `powered off` or `offline`.
    pub state: &'static str,
    /// Times discovery was started again (silence, the adapter back).
    pub restarts: u64,
    pub advertisements: u64,
    pub decode_errors: u64,
    /// Unknown devices reported on `ble/discovered`.
    pub discovered: u64,
    /// Advertisements dropped because the gateway fell behind.
    pub dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZigbeeReport {
    /// `starting`, `running` or `offline` (the stick does not answer).
    pub state: &'static str,
    pub channel: u64,
    /// Like `"0x1a2b"`.
    pub pan_id: String,
    /// Devices on the network.
    pub devices: u64,
    pub joined_since_start: u64,
    /// Times the stick reset by itself or stopped answering and was started again.
    pub coordinator_resets: u64,
    pub interviews_failed: u64,
    /// Bytes on the line that were not frames (noise, bad checksums).
    pub discarded_bytes: u64,
    /// Indications dropped because the gateway fell behind.
    pub dropped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BusReport {
    /// `open` or `closed`.
    pub state: &'static str,
    pub missed_polls: u64,
    pub link_failures: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceReport {
    /// `polling`, `quarantined`, `stale`, `offline` or `refused`.
    pub state: &'static str,
    pub reads: u64,
    pub timeouts: u64,
    pub errors: u64,
    pub discarded_bytes: u64,
    pub last_error: Option<String>,
    /// When the device last answered or sent something readable, in
    /// milliseconds since the Unix epoch.
    pub last_seen: Option<i64>,
    /// The link quality (LQI, 0-255) of a Zigbee device's last message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linkquality: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PluginReport {
    pub state: &'static str,
    pub calls: u64,
    pub failures: u64,
    pub timeouts: u64,
    pub traps: u64,
    pub lost_batches: u64,
    pub skipped_batches: u64,
    /// Batches offered and not yet taken up.
    pub queued: u64,
    pub readings_in: u64,
    pub outputs: u64,
    pub busy_ms: u64,
}

/// The status message's payload.
pub fn status(status: &Status) -> String {
    serde_json::to_string(status).expect("a status serializes")
}

/// The retained status while the gateway is away (last will, clean stop).
pub fn offline() -> String {
    serde_json::json!({"state": "offline"}).to_string()
}

/// A stored row that cannot be made into a message.
#[derive(Debug, thiserror::Error)]
#[error("row {seq} is not a valid {kind:?} message: {reason}")]
pub struct BadRow {
    seq: i64,
    kind: Kind,
    reason: String,
}

/// The payload of one buffered row.
pub fn message(record: &Record) -> Result<String, BadRow> {
    encode(record, false)
}

/// The payload of a row replayed behind live data: telemetry and events
/// carry `"historical": true`.
pub fn historical_message(record: &Record) -> Result<String, BadRow> {
    encode(record, true)
}

fn encode(record: &Record, historical: bool) -> Result<String, BadRow> {
    let bad = |reason: String| BadRow {
        seq: record.seq,
        kind: record.kind,
        reason,
    };
    let text = || match &record.body {
        Body::Text(text) => Ok(text.as_str()),
        Body::Unreadable(why) => Err(bad(why.clone())),
        Body::Points(_) => Err(bad("readings where text was expected".into())),
    };
    let json = |e: serde_json::Error| bad(e.to_string());
    match record.kind {
        Kind::Telemetry => {
            let made;
            let points: &RawValue = match &record.body {
                Body::Points(points) => {
                    made = RawValue::from_string(points_json(points)).map_err(json)?;
                    &made
                }
                _ => serde_json::from_str(text()?).map_err(json)?,
            };
            serde_json::to_string(&Telemetry {
                seq: Some(record.seq),
                ts: record.ts_ms,
                device: &record.device,
                points,
                historical,
            })
            .map_err(json)
        }
        Kind::Event => {
            let event: Event = serde_json::from_str(text()?).map_err(json)?;
            serde_json::to_string(&Sequenced {
                seq: record.seq,
                body: &event,
                historical,
            })
            .map_err(json)
        }
        Kind::WriteResult | Kind::Discovery | Kind::CommandResult => {
            // Stored whole, as published.
            let result: &RawValue = serde_json::from_str(text()?).map_err(json)?;
            Ok(result.get().to_string())
        }
    }
}

/// The rows to store for one event.
pub fn event_record(event: &Event) -> NewRecord {
    NewRecord {
        kind: Kind::Event,
        ts_ms: event.ts,
        device: event.plugin.clone(),
        body: Body::Text(serde_json::to_string(event).expect("an event serializes")),
    }
}

/// The row to store for one write or command result.
pub fn result_record(device: &str, ts_ms: i64, result: &Answer) -> NewRecord {
    let (kind, body) = match result {
        Answer::Write(result) => (Kind::WriteResult, serde_json::to_string(result)),
        Answer::Command(result) => (Kind::CommandResult, serde_json::to_string(result)),
    };
    NewRecord {
        kind,
        ts_ms,
        device: device.to_string(),
        body: Body::Text(body.expect("a result serializes")),
    }
}

/// A BLE device heard that is not in the config, as published on
/// `ble/discovered`.
#[derive(Serialize, Debug)]
pub struct Discovered {
    pub address: String,
    pub name: Option<String>,
    pub rssi: Option<i16>,
    pub service_uuids: Vec<String>,
    pub manufacturer_ids: Vec<u16>,
    /// The format Kite recognised in its advertisement.
    pub decoder: Option<&'static str>,
}

/// The row to store for one report of an unknown BLE device.
pub fn discovery_record(ts_ms: i64, found: &kite_ble::Discovered) -> NewRecord {
    let message = Discovered {
        address: found.address.to_string(),
        name: found.name.clone(),
        rssi: found.rssi,
        service_uuids: found.service_uuids.clone(),
        manufacturer_ids: found.manufacturer_ids.clone(),
        decoder: found.decoder.map(kite_ble::Format::name),
    };
    NewRecord {
        kind: Kind::Discovery,
        ts_ms,
        device: message.address.clone(),
        body: Body::Text(serde_json::to_string(&message).expect("a discovery serializes")),
    }
}

/// The telemetry rows of one sample, each of which fits a message whose
/// `points` object may be `budget` bytes long: one row, or (for a device
/// with more points than one message carries) several rows with the same
/// time, the points split between them in order. A single point too large
/// for a message of its own is sent as a bad reading saying so; the second
/// value is how many were.
pub fn telemetry_records(sample: &Sample, budget: usize) -> (Vec<NewRecord>, u64) {
    let record = |points| NewRecord {
        kind: Kind::Telemetry,
        ts_ms: sample.ts_ms,
        device: sample.device.to_string(),
        body: Body::Points(points),
    };
    if points_json_bound(&sample.points) <= budget {
        return (vec![record(sample.points.clone())], 0);
    }
    let mut too_large = 0;
    let mut records = Vec::new();
    let mut chunk: Vec<PointSample> = Vec::new();
    // `{}` around the entries, a comma between them.
    let mut chunk_len = 2;
    for point in &sample.points {
        let mut point = point.clone();
        let mut len = points_json(std::slice::from_ref(&point)).len() - 2;
        if len + 2 > budget {
            too_large += 1;
            point.reading = Reading::Bad(format!(
                "value too large for one message ({len} bytes of JSON; mqtt.max_message_bytes)"
            ));
            len = points_json(std::slice::from_ref(&point)).len() - 2;
        }
        let separator = usize::from(!chunk.is_empty());
        if !chunk.is_empty() && chunk_len + separator + len > budget {
            records.push(record(std::mem::take(&mut chunk)));
            chunk_len = 2;
        }
        chunk_len += usize::from(!chunk.is_empty()) + len;
        chunk.push(point);
    }
    if !chunk.is_empty() {
        records.push(record(chunk));
    }
    (records, too_large)
}

/// The length of the `points` object of `points` in JSON, at most, without
/// making it: every value at its longest.
fn points_json_bound(points: &[PointSample]) -> usize {
    let text = |text: Option<&str>| text.map_or(0, json_string_len);
    let value = |value: Option<&Value>| match value {
        None => 0,
        Some(Value::Bool(_)) => 5,
        Some(Value::Int(_) | Value::UInt(_)) => 20,
        Some(Value::Float(_)) => 24,
        Some(Value::Text(text)) => json_string_len(text),
    };
    2 + points
        .iter()
        .map(|point| {
            let (v, error) = match &point.reading {
                Reading::Good(v) => (Some(v), None),
                Reading::Bad(error) => (None, Some(error.as_str())),
                Reading::Stale(v, error) => (Some(v), Some(error.as_str())),
            };
            // `"name":{"value":V,"quality":"stale","error":E,"unit":U},`
            json_string_len(&point.name) + 47 + value(v) + text(error) + text(point.unit.as_deref())
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(name: &str, reading: Reading) -> PointSample {
        PointSample {
            name: name.into(),
            unit: None,
            reading,
        }
    }

    fn row(seq: i64, kind: Kind, device: &str, body: &str) -> Record {
        Record {
            seq,
            kind,
            ts_ms: 1000,
            device: device.into(),
            body: Body::Text(body.into()),
        }
    }

    /// A row's body as the JSON it is published with.
    fn json(body: &Body) -> String {
        match body {
            Body::Points(points) => points_json(points),
            Body::Text(text) => text.clone(),
            Body::Unreadable(why) => panic!("{why}"),
        }
    }

    #[test]
    fn set_topics_name_exactly_one_device() {
        let topics = Topics::new("kite", "gw");
        assert_eq!(topics.set_device("kite/gw/boiler-1/set"), Some("boiler-1"));
        assert_eq!(topics.set_device("kite/gw/a/b/set"), None);
        assert_eq!(topics.set_device("kite/gw2/boiler-1/set"), None);
        assert_eq!(topics.set_device("kite/gw/boiler-1/set/result"), None);
    }

    #[test]
    fn every_kind_of_row_becomes_its_message() {
        let topics = Topics::new("k", "g");
        let telemetry = row(
            7,
            Kind::Telemetry,
            "b\"1",
            r#"{"t":{"value":1,"quality":"good"}}"#,
        );
        let parsed: serde_json::Value =
            serde_json::from_str(&message(&telemetry).unwrap()).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"seq": 7, "ts": 1000, "device": "b\"1",
                "points": {"t": {"value": 1, "quality": "good"}}})
        );
        assert_eq!(topics.for_record(&telemetry), "k/g/b\"1");

        let event = Event {
            ts: 1000,
            plugin: "overheat".into(),
            severity: "critical".into(),
            message: "hot".into(),
            device: Some("boiler".into()),
            point: None,
        };
        let stored = event_record(&event);
        let published = message(&row(8, Kind::Event, &stored.device, &json(&stored.body))).unwrap();
        assert!(published.starts_with(r#"{"seq":8,"#), "{published}");
        let parsed: serde_json::Value = serde_json::from_str(&published).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"seq": 8, "ts": 1000, "plugin": "overheat",
                "severity": "critical", "message": "hot", "device": "boiler"})
        );
        assert_eq!(
            topics.for_record(&row(8, Kind::Event, "overheat", "")),
            "k/g/events"
        );
        let replayed: serde_json::Value = serde_json::from_str(
            &historical_message(&row(8, Kind::Event, &stored.device, &json(&stored.body))).unwrap(),
        )
        .unwrap();
        assert_eq!(replayed["historical"], true, "{replayed}");
        let replayed: serde_json::Value =
            serde_json::from_str(&historical_message(&telemetry).unwrap()).unwrap();
        assert_eq!(replayed["historical"], true, "{replayed}");

        let result = WriteResult {
            id: serde_json::json!("r-1"),
            point: Some("setpoint".into()),
            ok: false,
            error: Some("busy".into()),
        };
        let stored = result_record("boiler-1", 5, &Answer::Write(result.clone()));
        let published =
            message(&row(9, Kind::WriteResult, "boiler-1", &json(&stored.body))).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&published).unwrap(),
            serde_json::json!({"id": "r-1", "point": "setpoint", "ok": false, "error": "busy"})
        );
        assert_eq!(
            topics.for_record(&row(9, Kind::WriteResult, "boiler-1", "")),
            "k/g/boiler-1/set/result"
        );
    }

    #[test]
    fn a_row_that_is_not_its_kind_is_an_error_not_a_made_up_message() {
        for (kind, body) in [
            (Kind::Telemetry, "not json"),
            (Kind::Telemetry, r#"{"t":1"#),
            (Kind::Event, "[]"),
            (Kind::Event, r#"{"ts":1}"#),
            (Kind::WriteResult, ""),
        ] {
            assert!(
                message(&row(1, kind, "d", body)).is_err(),
                "{kind:?} {body}"
            );
        }
    }

    fn sample(points: Vec<PointSample>) -> Sample {
        Sample {
            device: "meter".into(),
            ts_ms: 42,
            points,
        }
    }

    #[test]
    fn a_sample_that_fits_is_one_row() {
        let sample = sample(vec![point("a", Reading::Good(Value::Int(1)))]);
        let (rows, too_large) = telemetry_records(&sample, 1000);
        assert_eq!(too_large, 0);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].body, Body::Points(sample.points.clone()));
        assert_eq!((rows[0].ts_ms, rows[0].device.as_str()), (42, "meter"));
    }

    #[test]
    fn a_sample_too_large_for_one_message_is_split_in_order() {
        let points: Vec<PointSample> = (0..500)
            .map(|i| point(&format!("register_{i}"), Reading::Good(Value::Int(i))))
            .collect();
        let sample = sample(points.clone());
        let budget = 1000;
        let (rows, too_large) = telemetry_records(&sample, budget);
        assert_eq!(too_large, 0);
        assert!(rows.len() > 1);
        let mut names = Vec::new();
        for row in &rows {
            let body = json(&row.body);
            assert!(body.len() <= budget, "{} > {budget}", body.len());
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&body).unwrap();
            names.extend(object.keys().cloned());
            assert_eq!(row.ts_ms, 42);
        }
        let mut expected: Vec<String> = points.iter().map(|p| p.name.to_string()).collect();
        expected.sort();
        names.sort();
        assert_eq!(names, expected, "every point, once");
    }

    #[test]
    fn a_point_too_large_for_any_message_is_sent_bad() {
        let sample = sample(vec![
            point("small", Reading::Good(Value::Int(1))),
            point("huge", Reading::Good(Value::Text("x".repeat(5000)))),
        ]);
        let (rows, too_large) = telemetry_records(&sample, 1000);
        assert_eq!(too_large, 1);
        let all: String = rows.iter().map(|r| json(&r.body)).collect();
        assert!(all.contains(r#""small":{"value":1"#), "{all}");
        assert!(
            all.contains(r#""huge":{"quality":"bad","error":"value too large"#),
            "{all}"
        );
        assert!(rows.iter().all(|r| json(&r.body).len() <= 1000));
    }

    #[test]
    fn the_length_bound_of_a_points_object_is_never_short() {
        let points = [
            point(
                "t\"emp",
                Reading::Good(Value::Float(-1.234_567_890_123_456_7e-300)),
            ),
            point("n", Reading::Good(Value::Int(i64::MIN))),
            point("u", Reading::Good(Value::UInt(u64::MAX))),
            point("b", Reading::Good(Value::Bool(false))),
            point(
                "s",
                Reading::Stale(Value::Text("a\u{1}\"b".into()), "not heard for 10m".into()),
            ),
            point("x", Reading::Bad("exception \"2\"".into())),
            PointSample {
                name: "with unit".into(),
                unit: Some("°C\\".into()),
                reading: Reading::Good(Value::Float(21.5)),
            },
        ];
        for end in 0..=points.len() {
            let json = points_json(&points[..end]);
            assert!(points_json_bound(&points[..end]) >= json.len(), "{json}");
        }
    }

    #[test]
    fn json_string_lengths_are_never_short() {
        for text in ["meter", "b\"1", "a\\b", "tab\there", "\u{1}", "é€"] {
            let json = serde_json::to_string(text).unwrap();
            assert!(json_string_len(text) >= json.len(), "{text:?}: {json}");
        }
        assert_eq!(json_string_len("meter"), 7);
    }

    #[test]
    fn the_budget_leaves_room_for_the_envelope() {
        let topics = Topics::new("kite", "gw");
        let budget = MessageRoom::new(topics.clone(), 1024).points_budget("meter");
        let body = format!(r#"{{"p":{{"value":"{}"}}}}"#, "x".repeat(budget - 18));
        assert_eq!(body.len(), budget);
        let payload = historical_message(&Record {
            seq: i64::MAX,
            kind: Kind::Telemetry,
            ts_ms: i64::MIN,
            device: "meter".into(),
            body: Body::Text(body),
        })
        .unwrap();
        assert!(payload.ends_with(r#","historical":true}"#), "{payload}");
        assert!(payload.len() + topics.telemetry("meter").len() + 16 <= 1024);
    }
}
