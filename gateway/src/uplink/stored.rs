//! A telemetry row's readings, for the layouts made at publish time
//! (compact JSON, Sparkplug B): as packed rows hold them, or read from the
//! JSON `points` object of a row stored before the buffer packed them.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use kite_core::{PointSample, Reading, Value};

use crate::store::Body;

/// The readings of a telemetry row's body; why, when it has none.
pub(crate) fn readings(body: &Body) -> Result<Cow<'_, [PointSample]>, String> {
    match body {
        Body::Points(points) => Ok(Cow::Borrowed(points)),
        Body::Unreadable(why) => Err(why.clone()),
        Body::Text(json) => {
            let points: StoredPoints<'_> = serde_json::from_str(json).map_err(|e| e.to_string())?;
            points
                .0
                .into_iter()
                .map(|(name, point)| {
                    let value = point.value.and_then(|raw| value_from_json(raw.get()));
                    let error = point
                        .error
                        .map(Cow::into_owned)
                        .unwrap_or_else(|| point.quality.to_string());
                    let reading = match (point.quality.as_ref(), value) {
                        ("good", Some(value)) => Reading::Good(value),
                        ("stale", Some(value)) => Reading::Stale(value, error),
                        ("good" | "stale", None) => {
                            return Err(format!("point {name:?} has no value it can be read as"))
                        }
                        _ => Reading::Bad(error),
                    };
                    Ok(PointSample {
                        name: Arc::from(name.as_ref()),
                        unit: point.unit.map(|unit| Arc::from(unit.as_ref())),
                        reading,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Cow::Owned)
        }
    }
}

/// A stored point's value, as its JSON says; `None` for what no point
/// holds (arrays, objects, null).
pub(crate) fn value_from_json(json: &str) -> Option<Value> {
    match json.as_bytes().first()? {
        b't' | b'f' => serde_json::from_str(json).ok().map(Value::Bool),
        b'"' => serde_json::from_str(json).ok().map(Value::Text),
        b'-' | b'0'..=b'9' => {
            if let Ok(unsigned) = json.parse::<u64>() {
                Some(Value::UInt(unsigned))
            } else if let Ok(signed) = json.parse::<i64>() {
                Some(Value::Int(signed))
            } else {
                json.parse::<f64>().ok().map(Value::Float)
            }
        }
        _ => None,
    }
}

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// A point as a telemetry row holds it.
#[derive(Deserialize)]
struct StoredPoint<'a> {
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    #[serde(borrow)]
    quality: Cow<'a, str>,
    #[serde(borrow)]
    error: Option<Cow<'a, str>>,
    #[serde(borrow)]
    unit: Option<Cow<'a, str>>,
}

/// A row's `points` object, in its order.
struct StoredPoints<'a>(Vec<(Cow<'a, str>, StoredPoint<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for StoredPoints<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for InOrder<'a> {
            type Value = StoredPoints<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a points object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut points = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<Cow<'a, str>, StoredPoint<'a>>()? {
                    points.push(entry);
                }
                Ok(StoredPoints(points))
            }
        }
        deserializer.deserialize_map(InOrder(std::marker::PhantomData))
    }
}
