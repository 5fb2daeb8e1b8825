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

/// `2024-03-01T12:00:00.250Z`.
pub fn utc(ts_ms: i64) -> String {
    let (days, ms_of_day) = (ts_ms.div_euclid(86_400_000), ts_ms.rem_euclid(86_400_000));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let seconds = ms_of_day / 1000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        ms_of_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_utc() {
        for (ts, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_709_294_400_250, "2024-03-01T12:00:00.250Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(utc(ts), text);
        }
    }

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
