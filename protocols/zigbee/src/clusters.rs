//! What the attributes of the clusters Kite knows become: named points with
//! units, scaled as the ZCL specifies; what Kite asks devices to report; and
//! which scaling attributes it reads once.
//!
//! Point names and units (a contract with the readers of Kite's messages):
//!
//! | point | unit | from |
//! | --- | --- | --- |
//! | `temperature` | degC | 0x0402 attr 0x0000, int16 / 100 |
//! | `humidity` | % | 0x0405 attr 0x0000, uint16 / 100 |
//! | `pressure` | hPa | 0x0403 attr 0x0000, int16 (kPa × 10 is hPa) |
//! | `battery` | % | 0x0001 attr 0x0021, uint8 / 2 |
//! | `battery_voltage` | V | 0x0001 attr 0x0020, uint8 / 10 |
//! | `occupancy` | | 0x0406 attr 0x0000, bit 0 |
//! | `contact`, `ias_alarm` | | IAS Zone (0x0500) zone status (attr 0x0002 or a status change notification): `ias_alarm` is bit 0 (alarm 1), `contact` its opposite (a door sensor's bit 0 is set while open) |
//! | `on` | | 0x0006 attr 0x0000 |
//! | `level` | | 0x0008 attr 0x0000, 0..254 |
//! | `power` | W | 0x0B04 attr 0x050B (active power, int16) × 0x0604 / 0x0605; or 0x0702 attr 0x0400 (instantaneous demand, int24, kW) × 0x0301 / 0x0302 × 1000 |
//! | `energy` | kWh | 0x0702 attr 0x0000 (summation delivered, uint48) × 0x0301 / 0x0302 |
//! | `voltage` | V | 0x0B04 attr 0x0505 (RMS voltage, uint16) × 0x0600 / 0x0601 |
//! | `current` | A | 0x0B04 attr 0x0508 (RMS current, uint16) × 0x0602 / 0x0603 |
//! | `illuminance` | lx | 0x0400 attr 0x0000, uint16 v: 10^((v − 1) / 10000), 0 is 0 |
//! | `linkquality` | | the LQI of the message that carried the attributes, 0..255 ([`linkquality_point`]) |
//!
//! A device may have both `power` sources (a plug with Metering and
//! Electrical Measurement); each report updates the same point. Metering's
//! values are taken as kW and kWh, Zigbee's default unit of measure; once
//! the device says it measures something else (attribute 0x0300 not 0 or
//! 0x80), they become raw points. Any other attribute is a raw point named
//! `cluster_0x0402_attr_0x0000` (lower-case hex), its value as decoded:
//! numbers as numbers, strings as text, bytes and undecoded types as hex
//! text. The scaling attributes themselves are remembered, not sent.
//!
//! A value the ZCL calls invalid (0x8000 for an int16 measurement, 0xFFFF
//! for a uint16 one, 0xFF for a uint8 one, NaN) is `Reading::Bad("invalid
//! value")`. A scaled point is bad until its multiplier and divisor are
//! known (learned from a read or a report, or found unsupported).

use std::collections::BTreeMap;
use std::fmt::Write;

use kite_core::{Reading, Value};

use crate::zcl::{ReadRecord, Reporting, ZclValue};

pub const BASIC: u16 = 0x0000;
pub const POWER_CONFIGURATION: u16 = 0x0001;
pub const ON_OFF: u16 = 0x0006;
pub const LEVEL_CONTROL: u16 = 0x0008;
pub const ILLUMINANCE_MEASUREMENT: u16 = 0x0400;
pub const TEMPERATURE_MEASUREMENT: u16 = 0x0402;
pub const PRESSURE_MEASUREMENT: u16 = 0x0403;
pub const RELATIVE_HUMIDITY: u16 = 0x0405;
pub const OCCUPANCY_SENSING: u16 = 0x0406;
pub const IAS_ZONE: u16 = 0x0500;
pub const METERING: u16 = 0x0702;
pub const ELECTRICAL_MEASUREMENT: u16 = 0x0B04;

/// The clusters whose attributes Kite names.
pub const KNOWN_CLUSTERS: &[u16] = &[
    BASIC,
    POWER_CONFIGURATION,
    ON_OFF,
    LEVEL_CONTROL,
    ILLUMINANCE_MEASUREMENT,
    TEMPERATURE_MEASUREMENT,
    PRESSURE_MEASUREMENT,
    RELATIVE_HUMIDITY,
    OCCUPANCY_SENSING,
    IAS_ZONE,
    METERING,
    ELECTRICAL_MEASUREMENT,
];

/// IAS Zone attribute: ZoneStatus (bitmap16).
pub const IAS_ZONE_STATUS: u16 = 0x0002;

const INVALID: &str = "invalid value";
const NO_SCALING: &str = "waiting for the multiplier and divisor";

/// One point an attribute became.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterPoint {
    pub name: String,
    pub unit: Option<&'static str>,
    pub reading: Reading,
}

impl ClusterPoint {
    fn new(name: impl Into<String>, unit: Option<&'static str>, reading: Reading) -> Self {
        ClusterPoint {
            name: name.into(),
            unit,
            reading,
        }
    }
}

/// Metering's unit of measure (0x0300), multiplier and divisor.
const METERING_SCALING: &[u16] = &[0x0300, 0x0301, 0x0302];
/// Electrical Measurement's AC voltage, current and power multipliers and
/// divisors.
const ELECTRICAL_SCALING: &[u16] = &[0x0600, 0x0601, 0x0602, 0x0603, 0x0604, 0x0605];

/// The scaling attributes to read once for `cluster` (Metering,
/// Electrical Measurement; none for the others).
pub fn scaling_attributes(cluster: u16) -> &'static [u16] {
    match cluster {
        METERING => METERING_SCALING,
        ELECTRICAL_MEASUREMENT => ELECTRICAL_SCALING,
        _ => &[],
    }
}

/// One device endpoint's memory of its scaling attributes (multipliers,
/// divisors, Metering's unit), learned from reports or reads. Keep one per
/// endpoint: a multi-channel device may scale each differently.
#[derive(Debug, Clone, Default)]
pub struct Scaling {
    /// A value, or None for an attribute the device does not support (so
    /// its default applies: 1 for multipliers and divisors, kW for the
    /// unit).
    known: BTreeMap<(u16, u16), Option<u64>>,
}

impl Scaling {
    /// Remembers `value` if it is a scaling attribute of `cluster`; says
    /// whether it was.
    pub fn learn(&mut self, cluster: u16, attribute: u16, value: &ZclValue) -> bool {
        if !scaling_attributes(cluster).contains(&attribute) {
            return false;
        }
        let value = match value {
            ZclValue::Uint(v) => Some(*v),
            ZclValue::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        };
        if let Some(value) = value {
            self.known.insert((cluster, attribute), Some(value));
        }
        true
    }

    /// Records that the device does not have scaling attribute `attribute`
    /// of `cluster` (its read came back with an error status), so its
    /// default applies.
    pub fn unsupported(&mut self, cluster: u16, attribute: u16) {
        if scaling_attributes(cluster).contains(&attribute) {
            self.known.insert((cluster, attribute), None);
        }
    }

    /// Learns from a Read Attributes Response: values, and error statuses
    /// as unsupported.
    pub fn read_response(&mut self, cluster: u16, records: &[ReadRecord]) {
        for (attribute, record) in records {
            match record {
                Ok((_, value)) => {
                    self.learn(cluster, *attribute, value);
                }
                Err(_) => self.unsupported(cluster, *attribute),
            }
        }
    }

    /// The multiplier and divisor, once both are known.
    fn factor(
        &self,
        cluster: u16,
        multiplier: u16,
        divisor: u16,
    ) -> Result<(f64, f64), &'static str> {
        let get = |attribute| match self.known.get(&(cluster, attribute)) {
            Some(Some(value)) => Ok(*value as f64),
            Some(None) => Ok(1.0),
            None => Err(NO_SCALING),
        };
        let (multiplier, divisor) = (get(multiplier)?, get(divisor)?);
        if multiplier == 0.0 {
            return Err("the multiplier is 0");
        }
        if divisor == 0.0 {
            return Err("the divisor is 0");
        }
        Ok((multiplier, divisor))
    }

    /// Whether Metering's unit is known to be something other than kW/kWh.
    fn metering_not_kw(&self) -> bool {
        matches!(self.known.get(&(METERING, 0x0300)), Some(Some(unit)) if unit & 0x7F != 0)
    }
}

/// The points the attributes of one report or read response of `cluster`
/// become, in order; scaling attributes among them are learned first (a
/// device may send a value and its divisor together) and give no point.
pub fn attribute_points(
    cluster: u16,
    attributes: &[(u16, ZclValue)],
    scaling: &mut Scaling,
) -> Vec<ClusterPoint> {
    let scaling_attribute: Vec<bool> = attributes
        .iter()
        .map(|(attribute, value)| scaling.learn(cluster, *attribute, value))
        .collect();
    let mut points = Vec::new();
    for ((attribute, value), is_scaling) in attributes.iter().zip(scaling_attribute) {
        if !is_scaling {
            points.extend(point(cluster, *attribute, value, scaling));
        }
    }
    points
}

/// A number from an integer of the expected type (or, from a device that
/// sends the wrong type, any integer); None for anything else.
fn integer(value: &ZclValue) -> Option<i128> {
    match value {
        ZclValue::Uint(v) => Some(i128::from(*v)),
        ZclValue::Int(v) => Some(i128::from(*v)),
        _ => None,
    }
}

/// A measurement: `value` unless it is `invalid`, through `convert`.
fn measured(
    value: &ZclValue,
    invalid: i128,
    convert: impl FnOnce(f64) -> Result<f64, &'static str>,
) -> Reading {
    match integer(value) {
        Some(v) if v == invalid => Reading::Bad(INVALID.into()),
        Some(v) => match convert(v as f64) {
            Ok(x) if x.is_finite() => Reading::Good(Value::Float(x)),
            Ok(_) => Reading::Bad(INVALID.into()),
            Err(reason) => Reading::Bad(reason.into()),
        },
        None => Reading::Bad(format!("unexpected value {value:?}")),
    }
}

fn point(cluster: u16, attribute: u16, value: &ZclValue, scaling: &Scaling) -> Vec<ClusterPoint> {
    let named = |name: &str, unit, reading| vec![ClusterPoint::new(name, unit, reading)];
    // Multiplied, then divided: exact where the result can be (2301 / 10).
    let scaled = |multiplier, divisor| {
        move |v: f64| {
            let (multiplier, divisor) = scaling.factor(cluster, multiplier, divisor)?;
            Ok(v * multiplier / divisor)
        }
    };
    match (cluster, attribute) {
        (TEMPERATURE_MEASUREMENT, 0x0000) => named(
            "temperature",
            Some("degC"),
            measured(value, -0x8000, |v| Ok(v / 100.0)),
        ),
        (RELATIVE_HUMIDITY, 0x0000) => named(
            "humidity",
            Some("%"),
            measured(value, 0xFFFF, |v| Ok(v / 100.0)),
        ),
        (PRESSURE_MEASUREMENT, 0x0000) => {
            named("pressure", Some("hPa"), measured(value, -0x8000, Ok))
        }
        (POWER_CONFIGURATION, 0x0021) => {
            named("battery", Some("%"), measured(value, 0xFF, |v| Ok(v / 2.0)))
        }
        (POWER_CONFIGURATION, 0x0020) => named(
            "battery_voltage",
            Some("V"),
            measured(value, 0xFF, |v| Ok(v / 10.0)),
        ),
        (OCCUPANCY_SENSING, 0x0000) => {
            let reading = match integer(value) {
                Some(bits) => Reading::Good(Value::Bool(bits & 1 != 0)),
                None => Reading::Bad(format!("unexpected value {value:?}")),
            };
            named("occupancy", None, reading)
        }
        (IAS_ZONE, IAS_ZONE_STATUS) => match integer(value).and_then(|v| u16::try_from(v).ok()) {
            Some(status) => zone_status_points(status),
            None => vec![
                ClusterPoint::new("contact", None, Reading::Bad(INVALID.into())),
                ClusterPoint::new("ias_alarm", None, Reading::Bad(INVALID.into())),
            ],
        },
        (ON_OFF, 0x0000) => {
            let reading = match value {
                ZclValue::Bool(on) => Reading::Good(Value::Bool(*on)),
                _ => Reading::Bad(INVALID.into()),
            };
            named("on", None, reading)
        }
        (LEVEL_CONTROL, 0x0000) => {
            let reading = match integer(value) {
                Some(0xFF) => Reading::Bad(INVALID.into()),
                Some(level) => u64::try_from(level)
                    .map(|level| Reading::Good(Value::UInt(level)))
                    .unwrap_or_else(|_| Reading::Bad(INVALID.into())),
                None => Reading::Bad(format!("unexpected value {value:?}")),
            };
            named("level", None, reading)
        }
        (ELECTRICAL_MEASUREMENT, 0x050B) => named(
            "power",
            Some("W"),
            measured(value, -0x8000, scaled(0x0604, 0x0605)),
        ),
        (ELECTRICAL_MEASUREMENT, 0x0505) => named(
            "voltage",
            Some("V"),
            measured(value, 0xFFFF, scaled(0x0600, 0x0601)),
        ),
        (ELECTRICAL_MEASUREMENT, 0x0508) => named(
            "current",
            Some("A"),
            measured(value, 0xFFFF, scaled(0x0602, 0x0603)),
        ),
        (METERING, 0x0000) if !scaling.metering_not_kw() => named(
            "energy",
            Some("kWh"),
            measured(value, 0xFFFF_FFFF_FFFF, scaled(0x0301, 0x0302)),
        ),
        (METERING, 0x0400) if !scaling.metering_not_kw() => {
            let kw = scaled(0x0301, 0x0302);
            named(
                "power",
                Some("W"),
                measured(value, -0x80_0000, |v| Ok(kw(v)? * 1000.0)),
            )
        }
        (ILLUMINANCE_MEASUREMENT, 0x0000) => named(
            "illuminance",
            Some("lx"),
            measured(value, 0xFFFF, |v| {
                Ok(if v == 0.0 {
                    0.0
                } else {
                    10f64.powf((v - 1.0) / 10000.0)
                })
            }),
        ),
        _ => vec![raw_point(cluster, attribute, value)],
    }
}

/// The point of an attribute Kite does not name.
pub fn raw_point(cluster: u16, attribute: u16, value: &ZclValue) -> ClusterPoint {
    let reading = match value {
        ZclValue::Bool(b) => Reading::Good(Value::Bool(*b)),
        ZclValue::Uint(v) => Reading::Good(Value::UInt(*v)),
        ZclValue::Int(v) => Reading::Good(Value::Int(*v)),
        ZclValue::Float(v) if v.is_finite() => Reading::Good(Value::Float(*v)),
        ZclValue::Float(_) => Reading::Bad(INVALID.into()),
        ZclValue::Str(text) => Reading::Good(Value::Text(text.clone())),
        ZclValue::Bytes(bytes) | ZclValue::Raw(_, bytes) => Reading::Good(Value::Text(hex(bytes))),
    };
    ClusterPoint::new(
        format!("cluster_0x{cluster:04x}_attr_0x{attribute:04x}"),
        None,
        reading,
    )
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// The points of an IAS Zone status (attribute 0x0002, or the first field
/// of a status change notification): `contact` (true while bit 0, alarm 1,
/// is clear: a door sensor's closed contact) and `ias_alarm` (bit 0).
pub fn zone_status_points(zone_status: u16) -> Vec<ClusterPoint> {
    let alarm = zone_status & 1 != 0;
    vec![
        ClusterPoint::new("contact", None, Reading::Good(Value::Bool(!alarm))),
        ClusterPoint::new("ias_alarm", None, Reading::Good(Value::Bool(alarm))),
    ]
}

/// The `linkquality` point of the message that carried the attributes.
pub fn linkquality_point(lqi: u8) -> ClusterPoint {
    ClusterPoint::new(
        "linkquality",
        None,
        Reading::Good(Value::UInt(u64::from(lqi))),
    )
}

fn reporting_entry(
    attribute: u16,
    type_id: u8,
    min_interval: u16,
    max_interval: u16,
    reportable_change: Option<ZclValue>,
) -> Reporting {
    Reporting {
        attribute,
        type_id,
        min_interval,
        max_interval,
        reportable_change,
    }
}

/// What Kite asks a device to report for `cluster`: at most every
/// `min_interval` seconds, at least every `max_interval`, and on a change
/// of the given size (in raw units) in between. Empty for clusters that
/// report otherwise (IAS Zone sends status change notifications) or not at
/// all (Basic).
pub fn reporting(cluster: u16) -> Vec<Reporting> {
    use ZclValue::{Int, Uint};
    match cluster {
        // 0.1 V and 1 %, at most hourly: batteries drain slowly.
        POWER_CONFIGURATION => vec![
            reporting_entry(0x0020, 0x20, 3600, 43200, Some(Uint(1))),
            reporting_entry(0x0021, 0x20, 3600, 43200, Some(Uint(2))),
        ],
        ON_OFF => vec![reporting_entry(0x0000, 0x10, 0, 3600, None)],
        LEVEL_CONTROL => vec![reporting_entry(0x0000, 0x20, 1, 3600, Some(Uint(1)))],
        // 500 in 10000·log10(lx) units is a change of about 12 %.
        ILLUMINANCE_MEASUREMENT => vec![reporting_entry(0x0000, 0x21, 10, 3600, Some(Uint(500)))],
        // 0.1 degC.
        TEMPERATURE_MEASUREMENT => vec![reporting_entry(0x0000, 0x29, 10, 3600, Some(Int(10)))],
        // 1 hPa.
        PRESSURE_MEASUREMENT => vec![reporting_entry(0x0000, 0x29, 10, 3600, Some(Int(1)))],
        // 1 %.
        RELATIVE_HUMIDITY => vec![reporting_entry(0x0000, 0x21, 10, 3600, Some(Uint(100)))],
        OCCUPANCY_SENSING => vec![reporting_entry(0x0000, 0x18, 0, 3600, None)],
        // The smallest change the device can see; the minimum interval
        // bounds the traffic.
        METERING => vec![
            reporting_entry(0x0000, 0x25, 10, 3600, Some(Uint(1))),
            reporting_entry(0x0400, 0x2A, 10, 3600, Some(Int(1))),
        ],
        ELECTRICAL_MEASUREMENT => vec![
            reporting_entry(0x050B, 0x29, 10, 3600, Some(Int(1))),
            reporting_entry(0x0505, 0x21, 10, 3600, Some(Uint(1))),
            reporting_entry(0x0508, 0x21, 10, 3600, Some(Uint(1))),
        ],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn good(name: &str, unit: Option<&'static str>, value: Value) -> ClusterPoint {
        ClusterPoint::new(name, unit, Reading::Good(value))
    }

    fn bad(name: &str, unit: Option<&'static str>, reason: &str) -> ClusterPoint {
        ClusterPoint::new(name, unit, Reading::Bad(reason.into()))
    }

    fn points(cluster: u16, attributes: &[(u16, ZclValue)]) -> Vec<ClusterPoint> {
        attribute_points(cluster, attributes, &mut Scaling::default())
    }

    #[test]
    fn environmental_measurements() {
        use ZclValue::{Int, Uint};
        assert_eq!(
            points(TEMPERATURE_MEASUREMENT, &[(0, Int(2150))]),
            [good("temperature", Some("degC"), Value::Float(21.5))]
        );
        assert_eq!(
            points(TEMPERATURE_MEASUREMENT, &[(0, Int(-510))]),
            [good("temperature", Some("degC"), Value::Float(-5.1))]
        );
        assert_eq!(
            points(TEMPERATURE_MEASUREMENT, &[(0, Int(-0x8000))]),
            [bad("temperature", Some("degC"), "invalid value")]
        );
        assert_eq!(
            points(RELATIVE_HUMIDITY, &[(0, Uint(5792))]),
            [good("humidity", Some("%"), Value::Float(57.92))]
        );
        assert_eq!(
            points(RELATIVE_HUMIDITY, &[(0, Uint(0xFFFF))]),
            [bad("humidity", Some("%"), "invalid value")]
        );
        // 1013 hPa is 101.3 kPa, sent as 1013 tenths of a kPa.
        assert_eq!(
            points(PRESSURE_MEASUREMENT, &[(0, Int(1013))]),
            [good("pressure", Some("hPa"), Value::Float(1013.0))]
        );
        assert_eq!(
            points(ILLUMINANCE_MEASUREMENT, &[(0, Uint(30001))]),
            [good(
                "illuminance",
                Some("lx"),
                Value::Float(10f64.powf(3.0))
            )]
        );
        assert_eq!(
            points(ILLUMINANCE_MEASUREMENT, &[(0, Uint(0))]),
            [good("illuminance", Some("lx"), Value::Float(0.0))]
        );
        assert_eq!(
            points(ILLUMINANCE_MEASUREMENT, &[(0, Uint(1))]),
            [good("illuminance", Some("lx"), Value::Float(1.0))]
        );
        assert_eq!(
            points(OCCUPANCY_SENSING, &[(0, Uint(0b01))]),
            [good("occupancy", None, Value::Bool(true))]
        );
        assert_eq!(
            points(OCCUPANCY_SENSING, &[(0, Uint(0b10))]),
            [good("occupancy", None, Value::Bool(false))]
        );
    }

    #[test]
    fn battery() {
        use ZclValue::Uint;
        assert_eq!(
            points(
                POWER_CONFIGURATION,
                &[(0x0021, Uint(200)), (0x0020, Uint(30))]
            ),
            [
                good("battery", Some("%"), Value::Float(100.0)),
                good("battery_voltage", Some("V"), Value::Float(3.0)),
            ]
        );
        assert_eq!(
            points(
                POWER_CONFIGURATION,
                &[(0x0021, Uint(0xFF)), (0x0020, Uint(0xFF))]
            ),
            [
                bad("battery", Some("%"), "invalid value"),
                bad("battery_voltage", Some("V"), "invalid value"),
            ]
        );
    }

    #[test]
    fn switches_and_zones() {
        assert_eq!(
            points(ON_OFF, &[(0, ZclValue::Bool(true))]),
            [good("on", None, Value::Bool(true))]
        );
        assert_eq!(
            points(ON_OFF, &[(0, ZclValue::Raw(0x10, vec![0xFF]))]),
            [bad("on", None, "invalid value")]
        );
        assert_eq!(
            points(LEVEL_CONTROL, &[(0, ZclValue::Uint(254))]),
            [good("level", None, Value::UInt(254))]
        );
        assert_eq!(
            points(LEVEL_CONTROL, &[(0, ZclValue::Uint(255))]),
            [bad("level", None, "invalid value")]
        );
        // A door sensor: closed (bit 0 clear), then open.
        assert_eq!(
            zone_status_points(0x0020),
            [
                good("contact", None, Value::Bool(true)),
                good("ias_alarm", None, Value::Bool(false)),
            ]
        );
        assert_eq!(
            points(IAS_ZONE, &[(IAS_ZONE_STATUS, ZclValue::Uint(0x0021))]),
            [
                good("contact", None, Value::Bool(false)),
                good("ias_alarm", None, Value::Bool(true)),
            ]
        );
    }

    #[test]
    fn metering_waits_for_its_scaling() {
        use ZclValue::{Int, Uint};
        let mut scaling = Scaling::default();
        assert_eq!(
            attribute_points(METERING, &[(0x0000, Uint(123_456))], &mut scaling),
            [bad("energy", Some("kWh"), NO_SCALING)]
        );
        // Multiplier 1, divisor 1000: Wh; the scaling gives no points.
        let read = [
            (0x0300, Ok((0x30, Uint(0)))),
            (0x0301, Ok((0x22, Uint(1)))),
            (0x0302, Ok((0x22, Uint(1000)))),
        ];
        scaling.read_response(METERING, &read);
        assert_eq!(
            attribute_points(
                METERING,
                &[(0x0000, Uint(123_456)), (0x0400, Int(-250))],
                &mut scaling
            ),
            [
                good("energy", Some("kWh"), Value::Float(123.456)),
                good("power", Some("W"), Value::Float(-250.0)),
            ]
        );
        assert_eq!(
            attribute_points(METERING, &[(0x0400, Int(-0x80_0000))], &mut scaling),
            [bad("power", Some("W"), "invalid value")]
        );
        // Gas, in m³: not energy.
        assert_eq!(
            attribute_points(
                METERING,
                &[(0x0300, Uint(1)), (0x0000, Uint(5))],
                &mut scaling
            ),
            [good("cluster_0x0702_attr_0x0000", None, Value::UInt(5))]
        );
    }

    #[test]
    fn electrical_measurement_scales_each_quantity() {
        use ZclValue::{Int, Uint};
        let mut scaling = Scaling::default();
        // Learned in the same report as the values; the current divisor
        // unsupported, so 1.
        scaling.read_response(ELECTRICAL_MEASUREMENT, &[(0x0603, Err(0x86))]);
        let attributes = [
            (0x0600, Uint(1)),
            (0x0601, Uint(10)),
            (0x0602, Uint(1)),
            (0x0604, Uint(1)),
            (0x0605, Uint(0)),
            (0x0505, Uint(2301)),
            (0x0508, Uint(3)),
            (0x050B, Int(120)),
        ];
        assert_eq!(
            attribute_points(ELECTRICAL_MEASUREMENT, &attributes, &mut scaling),
            [
                good("voltage", Some("V"), Value::Float(230.1)),
                good("current", Some("A"), Value::Float(3.0)),
                bad("power", Some("W"), "the divisor is 0"),
            ]
        );
        assert_eq!(
            attribute_points(
                ELECTRICAL_MEASUREMENT,
                &[(0x0605, Uint(1)), (0x050B, Int(-5))],
                &mut scaling
            ),
            [good("power", Some("W"), Value::Float(-5.0))]
        );
    }

    #[test]
    fn unknown_attributes_are_raw_points() {
        let attributes = [
            (0x0005, ZclValue::Str("lumi.sensor_ht".into())),
            (0x0007, ZclValue::Uint(3)),
            (0xff01, ZclValue::Bytes(vec![0x01, 0xab])),
            (0x0010, ZclValue::Raw(0x48, vec![0x20, 0x00, 0x00])),
            (0x0011, ZclValue::Float(f64::NAN)),
            (0x0012, ZclValue::Int(-3)),
        ];
        assert_eq!(
            points(BASIC, &attributes),
            [
                good(
                    "cluster_0x0000_attr_0x0005",
                    None,
                    Value::Text("lumi.sensor_ht".into())
                ),
                good("cluster_0x0000_attr_0x0007", None, Value::UInt(3)),
                good(
                    "cluster_0x0000_attr_0xff01",
                    None,
                    Value::Text("01ab".into())
                ),
                good(
                    "cluster_0x0000_attr_0x0010",
                    None,
                    Value::Text("200000".into())
                ),
                bad("cluster_0x0000_attr_0x0011", None, "invalid value"),
                good("cluster_0x0000_attr_0x0012", None, Value::Int(-3)),
            ]
        );
        assert_eq!(
            points(0xFC00, &[(0x0000, ZclValue::Bool(true))]),
            [good("cluster_0xfc00_attr_0x0000", None, Value::Bool(true))]
        );
        assert_eq!(
            linkquality_point(87),
            good("linkquality", None, Value::UInt(87))
        );
    }

    #[test]
    fn a_wrong_type_is_bad_not_misread() {
        assert_eq!(
            points(TEMPERATURE_MEASUREMENT, &[(0, ZclValue::Str("21".into()))]),
            [bad(
                "temperature",
                Some("degC"),
                "unexpected value Str(\"21\")"
            )]
        );
    }

    #[test]
    fn reporting_covers_the_measured_clusters() {
        for &cluster in KNOWN_CLUSTERS {
            let entries = reporting(cluster);
            let expect_none = matches!(cluster, BASIC | IAS_ZONE);
            assert_eq!(entries.is_empty(), expect_none, "cluster 0x{cluster:04x}");
            for entry in entries {
                assert!(entry.min_interval <= entry.max_interval);
                // Analog attributes carry a change that fits their type.
                if crate::zcl::is_analog(entry.type_id) {
                    let change = entry.reportable_change.as_ref().unwrap();
                    assert!(crate::zcl::encode_value(entry.type_id, change).is_some());
                } else {
                    assert!(entry.reportable_change.is_none());
                }
            }
        }
        assert_eq!(
            reporting(TEMPERATURE_MEASUREMENT),
            [Reporting {
                attribute: 0,
                type_id: 0x29,
                min_interval: 10,
                max_interval: 3600,
                reportable_change: Some(ZclValue::Int(10))
            }]
        );
        assert_eq!(scaling_attributes(METERING), [0x0300, 0x0301, 0x0302]);
        assert!(scaling_attributes(TEMPERATURE_MEASUREMENT).is_empty());
    }

    fn arb_value() -> impl Strategy<Value = ZclValue> {
        prop_oneof![
            any::<bool>().prop_map(ZclValue::Bool),
            any::<u64>().prop_map(ZclValue::Uint),
            any::<i64>().prop_map(ZclValue::Int),
            any::<f64>().prop_map(ZclValue::Float),
            ".{0,8}".prop_map(ZclValue::Str),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(ZclValue::Bytes),
        ]
    }

    proptest! {
        #[test]
        fn any_attributes_become_sane_points(
            cluster in prop_oneof![proptest::sample::select(KNOWN_CLUSTERS.to_vec()), any::<u16>()],
            attributes in proptest::collection::vec(
                (prop_oneof![0u16..0x30, 0x0300u16..0x0303, 0x0400u16..0x0401, 0x0500u16..0x0510, 0x0600u16..0x0606], arb_value()),
                0..8,
            ),
        ) {
            let mut scaling = Scaling::default();
            for point in attribute_points(cluster, &attributes, &mut scaling) {
                prop_assert!(!point.name.is_empty());
                if let Reading::Good(Value::Float(v)) = point.reading {
                    prop_assert!(v.is_finite(), "{:?}", point);
                }
            }
        }
    }
}
