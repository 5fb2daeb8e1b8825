//! One poll of one device: the readings of its points at one instant.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

/// A decoded point value, as it appears in JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
}

/// The outcome of reading one point: a value, or the reason there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum Reading {
    Good(Value),
    Bad(String),
    /// The last value a device sent that has not been heard from since; the
    /// reason says for how long.
    Stale(Value, String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PointSample {
    pub name: Arc<str>,
    pub unit: Option<Arc<str>>,
    pub reading: Reading,
}

/// Everything one poll of one device produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub device: Arc<str>,
    /// Milliseconds since the Unix epoch, taken when the device was read.
    pub ts_ms: i64,
    pub points: Vec<PointSample>,
}

impl Sample {
    /// The `points` object of the telemetry message:
    /// `{"temperature":{"value":21.5,"quality":"good","unit":"degC"}}`.
    pub fn points_json(&self) -> String {
        points_json(&self.points)
    }

    pub fn good_count(&self) -> usize {
        self.points
            .iter()
            .filter(|p| matches!(p.reading, Reading::Good(_)))
            .count()
    }
}

/// The `points` object of a telemetry message for `points`, in order.
pub fn points_json(points: &[PointSample]) -> String {
    struct Points<'a>(&'a [PointSample]);
    impl Serialize for Points<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(Some(self.0.len()))?;
            for point in self.0 {
                map.serialize_entry(&*point.name, &PointJson::from(point))?;
            }
            map.end()
        }
    }
    serde_json::to_string(&Points(points)).expect("points serialize to JSON")
}

#[derive(Serialize)]
struct PointJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a Value>,
    quality: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
}

impl<'a> From<&'a PointSample> for PointJson<'a> {
    fn from(point: &'a PointSample) -> Self {
        let (value, quality, error) = match &point.reading {
            Reading::Good(value) => (Some(value), "good", None),
            Reading::Bad(reason) => (None, "bad", Some(reason.as_str())),
            Reading::Stale(value, reason) => (Some(value), "stale", Some(reason.as_str())),
        };
        PointJson {
            value,
            quality,
            error,
            unit: point.unit.as_deref(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(name: &str, unit: Option<&str>, reading: Reading) -> PointSample {
        PointSample {
            name: name.into(),
            unit: unit.map(Into::into),
            reading,
        }
    }

    #[test]
    fn points_json_carries_value_or_error() {
        let sample = Sample {
            device: "boiler-1".into(),
            ts_ms: 1,
            points: vec![
                point(
                    "temperature",
                    Some("degC"),
                    Reading::Good(Value::Float(21.5)),
                ),
                point("pressure", None, Reading::Bad("timeout".into())),
                point("on", None, Reading::Good(Value::Bool(true))),
                point(
                    "rssi",
                    Some("dBm"),
                    Reading::Stale(Value::Int(-70), "not heard for 10m".into()),
                ),
            ],
        };
        assert_eq!(
            sample.points_json(),
            r#"{"temperature":{"value":21.5,"quality":"good","unit":"degC"},"pressure":{"quality":"bad","error":"timeout"},"on":{"value":true,"quality":"good"},"rssi":{"value":-70,"quality":"stale","error":"not heard for 10m","unit":"dBm"}}"#
        );
        assert_eq!(sample.good_count(), 2);
    }
}
