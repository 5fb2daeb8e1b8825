//! `[[buses]]` and `[[devices]]`: serial lines, Modbus devices (TCP, RTU on a
//! bus, RTU over TCP) and raw serial instruments, validated and grouped into
//! the links that poll them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kite_core::serial::{DataBits, Parity, SerialLine, StopBits};
use kite_core::{ReportRule, ReportRules};
use kite_modbus::{Area, BusSpec, ByteOrder, DataType, DeviceSpec, Link, PointSpec};
use kite_serial::decode::CaptureField;
use kite_serial::InstrumentSpec;
use serde::Deserialize;
use toml::Spanned;

use super::file_ref::FileRef;
use super::resolve::Files;
use super::units::Interval;
use super::{check_topic_level, Report, RESERVED_DEVICE_NAMES};

mod ble;
mod instruments;
mod zigbee;

pub(super) use ble::RawBle;
pub use ble::{BleConfig, BleDecoder, BleDeviceConfig};
pub(super) use zigbee::RawZigbee;
pub use zigbee::{ZigbeeCodec, ZigbeeConfig};

/// A raw serial instrument and how its frames become points.
#[derive(Debug, Clone, PartialEq)]
pub struct InstrumentConfig {
    pub spec: InstrumentSpec,
    pub decode: Decode,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decode {
    Regex {
        pattern: String,
        fields: Vec<CaptureField>,
    },
    Nmea,
    /// A codec plug-in (the `codec` world of `plugins/wit/plugin.wit`).
    Codec {
        path: PathBuf,
        /// The `codec_config` table, as JSON for the codec's `init`.
        config_json: String,
    },
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
enum Protocol {
    ModbusTcp,
    ModbusRtu,
    ModbusRtuOverTcp,
    Serial,
    Ble,
    Zigbee,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBus {
    name: Spanned<String>,
    port: Spanned<String>,
    baud: Spanned<u32>,
    #[serde(default)]
    parity: RawParity,
    #[serde(default = "default_data_bits")]
    data_bits: Spanned<u8>,
    #[serde(default = "default_stop_bits")]
    stop_bits: Spanned<u8>,
    frame_gap: Option<Spanned<Interval>>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawParity {
    #[default]
    None,
    Even,
    Odd,
}

fn default_data_bits() -> Spanned<u8> {
    Spanned::new(0..0, 8)
}

fn default_stop_bits() -> Spanned<u8> {
    Spanned::new(0..0, 1)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDevice {
    name: Spanned<String>,
    protocol: Spanned<Protocol>,
    address: Option<Spanned<String>>,
    bus: Option<Spanned<String>>,
    unit_id: Option<Spanned<u8>>,
    #[serde(default = "default_poll_interval")]
    poll_interval: Spanned<Interval>,
    #[serde(default = "default_timeout")]
    timeout: Spanned<Interval>,
    #[serde(default)]
    max_gap: u16,
    /// Tables, or (for protocols that name their own points) bare names
    /// of the points to keep.
    #[serde(default, deserialize_with = "point_entries")]
    points: Vec<RawPoint>,
    // Raw serial instruments only.
    framing: Option<Spanned<RawFraming>>,
    delimiter: Option<Spanned<RawBytes>>,
    length: Option<Spanned<usize>>,
    start: Option<Spanned<RawBytes>>,
    end: Option<Spanned<RawBytes>>,
    length_offset: Option<Spanned<usize>>,
    length_width: Option<Spanned<u8>>,
    length_endian: Option<Spanned<Endian>>,
    length_adjust: Option<Spanned<i64>>,
    max_frame: Option<Spanned<usize>>,
    request: Option<Spanned<RawBytes>>,
    decode: Option<Spanned<RawDecode>>,
    pattern: Option<Spanned<String>>,
    codec: Option<Spanned<PathBuf>>,
    codec_config: Option<Spanned<toml::Table>>,
    // BLE only.
    decoder: Option<Spanned<String>>,
    bind_key_file: Option<Spanned<PathBuf>>,
    stale_after: Option<Spanned<Interval>>,
    min_interval: Option<Spanned<Interval>>,
    gatt: Option<Spanned<Vec<ble::RawGatt>>>,
}

/// `points = ["temperature", { name = "on", writable = true }]`: a bare
/// name is a point with nothing else said about it.
fn point_entries<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<RawPoint>, D::Error> {
    let entries = Vec::<Spanned<RawPointEntry>>::deserialize(deserializer)?;
    Ok(entries
        .into_iter()
        .map(|entry| {
            let span = entry.span();
            match entry.into_inner() {
                RawPointEntry::Table(point) => *point,
                RawPointEntry::Name(name) => RawPoint::named(Spanned::new(span, name)),
            }
        })
        .collect())
}

enum RawPointEntry {
    Name(String),
    Table(Box<RawPoint>),
}

impl<'de> Deserialize<'de> for RawPointEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = RawPointEntry;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a point name or a point table")
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<RawPointEntry, E> {
                Ok(RawPointEntry::Name(name.to_string()))
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                map: M,
            ) -> Result<RawPointEntry, M::Error> {
                let point =
                    RawPoint::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RawPointEntry::Table(Box::new(point)))
            }
        }
        deserializer.deserialize_any(Entry)
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum RawFraming {
    Line,
    Fixed,
    Markers,
    LengthPrefix,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Endian {
    Big,
    Little,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum RawDecode {
    Regex,
    Nmea,
    Codec,
}

/// Bytes written as a string (`"\r\n"`, `"\u0002"`) or as numbers (`[2, 0x83]`).
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RawBytes {
    Text(String),
    Bytes(Vec<u8>),
}

impl RawBytes {
    fn into_bytes(self) -> Vec<u8> {
        match self {
            RawBytes::Text(text) => text.into_bytes(),
            RawBytes::Bytes(bytes) => bytes,
        }
    }
}

/// Longest frame of a raw instrument unless `max_frame` says otherwise.
const DEFAULT_MAX_FRAME: usize = 256;

fn default_poll_interval() -> Spanned<Interval> {
    Spanned::new(0..0, Interval(Duration::from_secs(1)))
}

fn default_timeout() -> Spanned<Interval> {
    Spanned::new(0..0, Interval(Duration::from_secs(1)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoint {
    name: Spanned<String>,
    area: Option<Spanned<Area>>,
    address: Option<Spanned<u16>>,
    #[serde(rename = "type")]
    data_type: Option<Spanned<DataType>>,
    #[serde(default)]
    order: ByteOrder,
    #[serde(default = "default_scale")]
    scale: f64,
    #[serde(default)]
    offset: f64,
    unit: Option<String>,
    writable: Option<Spanned<bool>>,
    bit: Option<Spanned<u8>>,
    length: Option<Spanned<u16>>,
    /// Raw serial: the named capture group; the point's name by default.
    capture: Option<Spanned<String>>,
    /// Report by exception: `"change"` (or a `deadband`) sends the point
    /// only when it changed, and at least every `max_silence`.
    report: Option<Spanned<ReportMode>>,
    deadband: Option<Spanned<f64>>,
    max_silence: Option<Spanned<Interval>>,
    /// Written as a bare name in `points = [...]`, not as a table.
    #[serde(skip)]
    bare: bool,
}

fn default_scale() -> f64 {
    1.0
}

impl RawPoint {
    fn named(name: Spanned<String>) -> Self {
        Self {
            name,
            area: None,
            address: None,
            data_type: None,
            order: ByteOrder::default(),
            scale: default_scale(),
            offset: 0.0,
            unit: None,
            writable: None,
            bit: None,
            length: None,
            capture: None,
            report: None,
            deadband: None,
            max_silence: None,
            bare: true,
        }
    }

    /// The keys that place or type a point in a register map or a frame,
    /// where present: a protocol that names its own points takes none.
    fn table_keys(&self) -> [Option<std::ops::Range<usize>>; 6] {
        [
            self.address.as_ref().map(Spanned::span),
            self.area.as_ref().map(Spanned::span),
            self.data_type.as_ref().map(Spanned::span),
            self.capture.as_ref().map(Spanned::span),
            self.bit.as_ref().map(Spanned::span),
            self.length.as_ref().map(Spanned::span),
        ]
    }

    /// The point's report-by-exception rule, if it has one.
    fn report_rule(&self, report: &mut Report<'_>) -> Option<ReportRule> {
        let mode = self.report.as_ref().map(|m| *m.get_ref());
        let by_exception =
            mode == Some(ReportMode::Change) || (mode.is_none() && self.deadband.is_some());
        if !by_exception {
            let needs_change = [
                self.deadband.as_ref().map(Spanned::span),
                self.max_silence.as_ref().map(Spanned::span),
            ];
            for span in needs_change.into_iter().flatten() {
                report.push(
                    span,
                    "deadband and max_silence are for points reported by exception (report = \"change\")".into(),
                );
            }
            return None;
        }
        let deadband = self.deadband.as_ref().map_or(0.0, |d| *d.get_ref());
        if !deadband.is_finite() || deadband < 0.0 {
            report.push(
                self.deadband.as_ref().expect("set when not 0").span(),
                format!("deadband {deadband}: expected a number of at least 0"),
            );
        }
        let max_silence = self
            .max_silence
            .as_ref()
            .map_or(DEFAULT_MAX_SILENCE, |m| m.get_ref().0);
        if max_silence.is_zero() {
            report.push(
                self.max_silence.as_ref().expect("set when zero").span(),
                "max_silence must be more than 0s".into(),
            );
        }
        Some(ReportRule {
            deadband,
            max_silence,
        })
    }
}

/// `report` of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ReportMode {
    /// Every reading (the default).
    Always,
    /// Only changes, and at least every `max_silence`.
    Change,
}

/// How often a point reported by exception is sent when it does not change.
const DEFAULT_MAX_SILENCE: Duration = Duration::from_secs(600);

/// What `[[buses]]` and `[[devices]]` build into.
#[derive(Debug, Default)]
pub(super) struct Devices {
    pub modbus: Vec<BusSpec>,
    pub instruments: Vec<InstrumentConfig>,
    pub ble: Vec<BleDeviceConfig>,
    pub zigbee: Vec<(kite_zigbee::ZigbeeDevice, Option<ZigbeeCodec>)>,
    pub names: HashSet<String>,
    /// The points reported by exception, of every protocol.
    pub reports: ReportRules,
}

pub(super) fn build(
    buses: Vec<RawBus>,
    devices: Vec<RawDevice>,
    base: &Path,
    report: &mut Report<'_>,
    warnings: &mut Vec<String>,
    files: &mut Files,
) -> Devices {
    let mut lines: BTreeMap<String, (SerialLine, Spanned<u8>)> = BTreeMap::new();
    for bus in buses {
        let (name, name_span) = (bus.name.get_ref().clone(), bus.name.span());
        if name.is_empty() {
            report.push(name_span.clone(), "bus name must not be empty".into());
        }
        let data_bits = bus.data_bits.clone();
        let line = bus.build(report);
        if lines.insert(name.clone(), (line, data_bits)).is_some() {
            report.push(name_span, format!("duplicate bus name {name:?}"));
        }
    }

    let mut out = Devices::default();
    // Modbus links, keyed so that devices sharing a line or a converter share its task.
    let mut links: Vec<BusSpec> = Vec::new();
    let mut link_index: HashMap<String, usize> = HashMap::new();
    let mut bus_users: HashMap<String, (Protocol, String)> = HashMap::new();
    for device in devices {
        let name = device.name.get_ref().clone();
        if !out.names.insert(name.clone()) {
            report.push(
                device.name.span(),
                format!("duplicate device name {name:?}"),
            );
        }
        let rules: HashMap<String, ReportRule> = device
            .points
            .iter()
            .filter_map(|point| Some((point.name.get_ref().clone(), point.report_rule(report)?)))
            .collect();
        if !rules.is_empty() {
            out.reports.insert(name.clone(), rules);
        }
        let Some((link_key, link, spec)) =
            device.build(report, base, &lines, &mut bus_users, &mut out, files)
        else {
            continue;
        };
        match link_index.get(&link_key) {
            Some(&i) => links[i].devices.push(spec),
            None => {
                link_index.insert(link_key.clone(), links.len());
                let bus_name = match &link {
                    Link::Tcp { .. } => name,
                    Link::RtuOverTcp { address } => address.clone(),
                    Link::Serial(_) => link_key.trim_start_matches("bus:").to_string(),
                };
                links.push(BusSpec {
                    name: Arc::from(bus_name),
                    link,
                    devices: vec![spec],
                });
            }
        }
    }
    for name in lines.keys() {
        if !bus_users.contains_key(name) {
            warnings.push(format!("bus {name:?} has no devices"));
        }
    }
    out.modbus = links;
    out
}

impl RawBus {
    fn build(self, report: &mut Report<'_>) -> SerialLine {
        if self.port.get_ref().is_empty() {
            report.push(self.port.span(), "port must not be empty".into());
        }
        let baud = *self.baud.get_ref();
        if !(50..=4_000_000).contains(&baud) {
            report.push(
                self.baud.span(),
                format!("baud {baud}: expected 50 to 4000000"),
            );
        }
        let data_bits = match self.data_bits.get_ref() {
            5 => DataBits::Five,
            6 => DataBits::Six,
            7 => DataBits::Seven,
            8 => DataBits::Eight,
            other => {
                report.push(
                    self.data_bits.span(),
                    format!("data_bits {other}: expected 5, 6, 7 or 8"),
                );
                DataBits::Eight
            }
        };
        let stop_bits = match self.stop_bits.get_ref() {
            1 => StopBits::One,
            2 => StopBits::Two,
            other => {
                report.push(
                    self.stop_bits.span(),
                    format!("stop_bits {other}: expected 1 or 2"),
                );
                StopBits::One
            }
        };
        let frame_gap = self.frame_gap.map(|gap| {
            if gap.get_ref().0 > Duration::from_secs(1) {
                report.push(gap.span(), "frame_gap must be at most 1s".into());
            }
            gap.into_inner().0
        });
        SerialLine {
            port: self.port.into_inner(),
            baud,
            parity: match self.parity {
                RawParity::None => Parity::None,
                RawParity::Even => Parity::Even,
                RawParity::Odd => Parity::Odd,
            },
            data_bits,
            stop_bits,
            frame_gap,
        }
    }
}

impl RawDevice {
    /// Checks the device; Modbus devices come back with the key of the link
    /// they are polled through, raw instruments and BLE devices go to `found`.
    fn build(
        self,
        report: &mut Report<'_>,
        base: &Path,
        lines: &BTreeMap<String, (SerialLine, Spanned<u8>)>,
        bus_users: &mut HashMap<String, (Protocol, String)>,
        found: &mut Devices,
        files: &mut Files,
    ) -> Option<(String, Link, DeviceSpec)> {
        check_topic_level(report, &self.name, "device name");
        let name = self.name.get_ref().clone();
        if RESERVED_DEVICE_NAMES.contains(&name.as_str()) {
            report.push(
                self.name.span(),
                format!("device name {name:?} is reserved for Kite's own topics"),
            );
        }
        let protocol = *self.protocol.get_ref();
        let poll_interval = self.poll_interval.get_ref().0;
        if poll_interval < Duration::from_millis(10) {
            report.push(
                self.poll_interval.span(),
                "poll_interval must be at least 10ms".into(),
            );
        }
        let timeout = self.timeout.get_ref().0;
        if timeout < Duration::from_millis(10) {
            report.push(self.timeout.span(), "timeout must be at least 10ms".into());
        }
        self.check_keys(report, protocol);
        if protocol == Protocol::Ble {
            if let Some(device) = self.build_ble(report, base, files) {
                found.ble.push(device);
            }
            return None;
        }
        if protocol == Protocol::Zigbee {
            if let Some(device) = self.build_zigbee(report, base, files) {
                found.zigbee.push(device);
            }
            return None;
        }

        let uses_bus = matches!(protocol, Protocol::ModbusRtu | Protocol::Serial);
        let line = if uses_bus {
            let Some(bus) = &self.bus else {
                report.push(
                    self.name.span(),
                    format!(
                        "device {name:?}: protocol {} needs `bus`, the name of a [[buses]] entry",
                        protocol_name(protocol)
                    ),
                );
                return None;
            };
            let Some((line, data_bits)) = lines.get(bus.get_ref()) else {
                let known: Vec<&String> = lines.keys().collect();
                report.push(
                    bus.span(),
                    format!(
                        "no bus named {:?}; the [[buses]] are {known:?}",
                        bus.get_ref()
                    ),
                );
                return None;
            };
            match bus_users.get(bus.get_ref()) {
                Some((Protocol::Serial, owner)) => report.push(
                    bus.span(),
                    format!("bus {:?} belongs to serial instrument {owner:?}: a raw instrument needs its port to itself", bus.get_ref()),
                ),
                Some((_, owner)) if protocol == Protocol::Serial => report.push(
                    bus.span(),
                    format!("bus {:?} already carries Modbus device {owner:?}: a raw instrument needs its port to itself", bus.get_ref()),
                ),
                _ => {}
            }
            bus_users
                .entry(bus.get_ref().clone())
                .or_insert((protocol, name.clone()));
            if protocol == Protocol::ModbusRtu && *data_bits.get_ref() != 8 {
                report.push(
                    data_bits.span(),
                    format!("bus {:?}: Modbus RTU needs data_bits = 8", bus.get_ref()),
                );
            }
            Some(line.clone())
        } else {
            None
        };

        if protocol == Protocol::Serial {
            let line = line?;
            if let Some(instrument) =
                self.build_instrument(report, base, line, poll_interval, timeout, files)
            {
                found.instruments.push(instrument);
            }
            return None;
        }

        let unit_id = self.unit_id.as_ref().map_or(1, |u| *u.get_ref());
        if protocol != Protocol::ModbusTcp && !(1..=247).contains(&unit_id) {
            let span = self.unit_id.as_ref().map_or(self.name.span(), |u| u.span());
            report.push(span, format!("unit_id {unit_id}: a serial slave address is 1 to 247 (0 is broadcast, which no device answers)"));
        }
        let points = self.modbus_points(report);
        let spec = DeviceSpec {
            name: Arc::from(name.as_str()),
            unit_id,
            poll_interval,
            timeout,
            max_gap: self.max_gap,
            points,
        };
        match protocol {
            Protocol::ModbusRtu => {
                let bus = self.bus.expect("checked above").into_inner();
                Some((format!("bus:{bus}"), Link::Serial(line?), spec))
            }
            Protocol::ModbusTcp | Protocol::ModbusRtuOverTcp => {
                let address = self
                    .address
                    .as_ref()
                    .map(|a| a.get_ref().clone())
                    .unwrap_or_default();
                if let Some(written) = self.address.as_ref().filter(|a| !a.get_ref().contains(':'))
                {
                    report.push(
                        written.span(),
                        format!("address {address:?}: expected host:port, like \"10.0.0.5:502\""),
                    );
                }
                if protocol == Protocol::ModbusTcp {
                    // Each Modbus TCP device keeps its own connection.
                    Some((format!("tcp:{name}"), Link::Tcp { address }, spec))
                } else {
                    Some((
                        format!("rtu-over-tcp:{address}"),
                        Link::RtuOverTcp { address },
                        spec,
                    ))
                }
            }
            Protocol::Serial | Protocol::Ble | Protocol::Zigbee => None,
        }
    }

    /// The codec plug-in `codec` names, listed to be checked to exist, and
    /// its `codec_config` as JSON for its `init` (`{}` without one).
    fn codec_plugin(&self, base: &Path, files: &mut Files) -> Option<(PathBuf, String)> {
        let file = FileRef::at(base, self.codec.as_ref()?);
        let path = file.path.clone();
        files.components.push((file, "codec"));
        let config_json = self.codec_config.as_ref().map_or_else(
            || "{}".to_string(),
            |table| {
                serde_json::to_string(table.get_ref()).expect("a TOML table serializes to JSON")
            },
        );
        Some((path, config_json))
    }

    /// `codec` and `codec_config` where the device decodes otherwise;
    /// `selector` is the setting that asks for a codec, like
    /// `decode = "codec"`.
    fn refuse_codec_keys(&self, report: &mut Report<'_>, selector: &str) {
        refuse_keys(
            report,
            [
                self.codec.as_ref().map(Spanned::span),
                self.codec_config.as_ref().map(Spanned::span),
            ],
            &format!("`codec` and `codec_config` are for {selector}"),
        );
    }

    /// Keys that mean nothing for the device's protocol are mistakes, not
    /// silently ignored settings.
    fn check_keys(&self, report: &mut Report<'_>, protocol: Protocol) {
        let name = protocol_name(protocol);
        let takes_address = matches!(
            protocol,
            Protocol::ModbusTcp | Protocol::ModbusRtuOverTcp | Protocol::Ble | Protocol::Zigbee
        );
        if takes_address && self.address.is_none() {
            let form = match protocol {
                Protocol::Ble => "AA:BB:CC:DD:EE:FF",
                Protocol::Zigbee => "its IEEE address, like 0x00124b0012345678",
                _ => "host:port",
            };
            report.push(
                self.name.span(),
                format!(
                    "device {:?}: protocol {name} needs `address` ({form})",
                    self.name.get_ref()
                ),
            );
        }
        let mut refuse = |present: Option<std::ops::Range<usize>>, key: &str| {
            if let Some(span) = present {
                report.push(span, format!("`{key}` does not apply to protocol {name}"));
            }
        };
        let is_serial = protocol == Protocol::Serial;
        let is_ble = protocol == Protocol::Ble;
        let is_radio = is_ble || protocol == Protocol::Zigbee;
        if !is_ble {
            refuse(self.decoder.as_ref().map(Spanned::span), "decoder");
            refuse(
                self.bind_key_file.as_ref().map(Spanned::span),
                "bind_key_file",
            );
            refuse(
                self.min_interval.as_ref().map(Spanned::span),
                "min_interval",
            );
            refuse(self.gatt.as_ref().map(Spanned::span), "gatt");
        }
        if !is_radio {
            refuse(self.stale_after.as_ref().map(Spanned::span), "stale_after");
        } else {
            // A radio sensor sends when it likes; nothing is polled.
            let written = |span: std::ops::Range<usize>| (span != (0..0)).then_some(span);
            refuse(written(self.poll_interval.span()), "poll_interval");
            refuse(written(self.timeout.span()), "timeout");
            refuse(self.unit_id.as_ref().map(Spanned::span), "unit_id");
        }
        if !takes_address {
            refuse(self.address.as_ref().map(Spanned::span), "address");
        }
        if !matches!(protocol, Protocol::ModbusRtu | Protocol::Serial) {
            refuse(self.bus.as_ref().map(Spanned::span), "bus");
        }
        if is_serial {
            refuse(self.unit_id.as_ref().map(Spanned::span), "unit_id");
        } else {
            refuse(self.framing.as_ref().map(Spanned::span), "framing");
            refuse(self.delimiter.as_ref().map(Spanned::span), "delimiter");
            refuse(self.length.as_ref().map(Spanned::span), "length");
            refuse(
                self.length_offset.as_ref().map(Spanned::span),
                "length_offset",
            );
            refuse(
                self.length_width.as_ref().map(Spanned::span),
                "length_width",
            );
            refuse(
                self.length_endian.as_ref().map(Spanned::span),
                "length_endian",
            );
            refuse(
                self.length_adjust.as_ref().map(Spanned::span),
                "length_adjust",
            );
            refuse(self.max_frame.as_ref().map(Spanned::span), "max_frame");
            refuse(self.start.as_ref().map(Spanned::span), "start");
            refuse(self.end.as_ref().map(Spanned::span), "end");
            refuse(self.request.as_ref().map(Spanned::span), "request");
            refuse(self.decode.as_ref().map(Spanned::span), "decode");
            refuse(self.pattern.as_ref().map(Spanned::span), "pattern");
            if !is_radio {
                refuse(self.codec.as_ref().map(Spanned::span), "codec");
                refuse(
                    self.codec_config.as_ref().map(Spanned::span),
                    "codec_config",
                );
            }
        }
    }

    fn modbus_points(&self, report: &mut Report<'_>) -> Vec<PointSpec> {
        let mut point_names = HashSet::new();
        let mut points = Vec::new();
        for point in &self.points {
            check_point_name(report, &mut point_names, &point.name, self.name.get_ref());
            if let Some(capture) = &point.capture {
                report.push(
                    capture.span(),
                    "`capture` is for raw serial instruments".into(),
                );
            }
            let Some(address) = &point.address else {
                report.push(
                    point.name.span(),
                    format!("point {:?} needs `address`", point.name.get_ref()),
                );
                continue;
            };
            let spec = PointSpec {
                name: Arc::from(point.name.get_ref().as_str()),
                area: point.area.as_ref().map_or(Area::Holding, |a| *a.get_ref()),
                address: *address.get_ref(),
                data_type: point
                    .data_type
                    .as_ref()
                    .map_or(DataType::U16, |t| *t.get_ref()),
                order: point.order,
                scale: point.scale,
                offset: point.offset,
                unit: point.unit.as_deref().map(Arc::from),
                writable: point.writable.as_ref().is_some_and(|w| *w.get_ref()),
                bit: point.bit.as_ref().map(|b| *b.get_ref()),
                length: point.length.as_ref().map(|l| *l.get_ref()),
            };
            for problem in spec.validate() {
                report.push(
                    address.span(),
                    format!("point {:?}: {problem}", point.name.get_ref()),
                );
            }
            points.push(spec);
        }
        points
    }
}

/// Each of the keys present (their spans) is a mistake, for `why`.
fn refuse_keys(
    report: &mut Report<'_>,
    spans: impl IntoIterator<Item = Option<std::ops::Range<usize>>>,
    why: &str,
) {
    for span in spans.into_iter().flatten() {
        report.push(span, why.into());
    }
}

fn check_point_name(
    report: &mut Report<'_>,
    seen: &mut HashSet<String>,
    name: &Spanned<String>,
    device: &str,
) {
    if name.get_ref().is_empty() {
        report.push(name.span(), "point name must not be empty".into());
    }
    if !seen.insert(name.get_ref().clone()) {
        report.push(
            name.span(),
            format!(
                "duplicate point name {:?} in device {device:?}",
                name.get_ref()
            ),
        );
    }
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::ModbusTcp => "modbus-tcp",
        Protocol::ModbusRtu => "modbus-rtu",
        Protocol::ModbusRtuOverTcp => "modbus-rtu-over-tcp",
        Protocol::Serial => "serial",
        Protocol::Ble => "ble",
        Protocol::Zigbee => "zigbee",
    }
}
