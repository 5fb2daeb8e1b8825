//! The compact JSON layout (`[mqtt] json = "compact"`), for metered links:
//! `{"seq","ts","device","values":{name: value},"bad":{name: error}}`, and
//! the units announced once in a retained `{device}/meta` message instead of
//! in every message. Made at publish time from the readings the buffer
//! holds, so a backlog goes out in whichever layout is configured.

use std::collections::{BTreeMap, HashMap};

use kite_core::{Reading, Value};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use super::stored::readings;
use crate::store::Record;

/// Name-value pairs serialized as a JSON object, in order.
struct Entries<'a, V>(Vec<(&'a str, V)>);

impl<V: Serialize> Serialize for Entries<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl<V> Entries<'_, V> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Serialize)]
struct CompactTelemetry<'a> {
    seq: i64,
    ts: i64,
    device: &'a str,
    values: Entries<'a, &'a Value>,
    #[serde(skip_serializing_if = "Entries::is_empty")]
    bad: Entries<'a, &'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    historical: bool,
}

/// A telemetry row in the compact layout: good values under `values`; a
/// bad or stale point under `bad`, with its error. With it, the `meta`
/// payload to publish first when the row's units are not all announced yet.
pub fn telemetry(
    record: &Record,
    historical: bool,
    announced: &mut Announced,
) -> Result<(String, Option<String>), String> {
    let points = readings(&record.body)?;
    let mut values = Vec::new();
    let mut bad = Vec::new();
    let mut units = Vec::new();
    for point in points.iter() {
        match &point.reading {
            Reading::Good(value) => values.push((&*point.name, value)),
            Reading::Bad(error) | Reading::Stale(_, error) => {
                bad.push((&*point.name, error.as_str()))
            }
        }
        if let Some(unit) = &point.unit {
            units.push((&*point.name, &**unit));
        }
    }
    let meta = announced.meta(&record.device, &units);
    let payload = serde_json::to_string(&CompactTelemetry {
        seq: record.seq,
        ts: record.ts_ms,
        device: &record.device,
        values: Entries(values),
        bad: Entries(bad),
        historical,
    })
    .map_err(|e| e.to_string())?;
    Ok((payload, meta))
}

/// The units each device's `meta` message announced on this connection, so
/// that it is sent before the device's first compact message and again
/// only when a point's unit is new or changed. Bounded by the devices and
/// points the gateway has.
#[derive(Debug, Default)]
pub struct Announced {
    units: HashMap<String, BTreeMap<String, String>>,
}

impl Announced {
    /// The `meta` payload to publish (retained) before a message of
    /// `device` with `units`, if the units announced so far lack any.
    /// Allocates only for what is new.
    fn meta(&mut self, device: &str, units: &[(&str, &str)]) -> Option<String> {
        if units.is_empty() {
            return None;
        }
        if !self.units.contains_key(device) {
            self.units.insert(device.to_string(), BTreeMap::new());
        }
        let known = self.units.get_mut(device).expect("inserted above");
        let mut changed = false;
        for &(name, unit) in units {
            if known.get(name).map(String::as_str) != Some(unit) {
                known.insert(name.to_string(), unit.to_string());
                changed = true;
            }
        }
        changed.then(|| serde_json::json!({ "units": known }).to_string())
    }

    /// Forgets what `device` announced, so that its next message announces
    /// all its units again.
    pub fn forget(&mut self, device: &str) {
        self.units.remove(device);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Body, Kind};

    fn row(body: &str) -> Record {
        Record {
            seq: 12,
            kind: Kind::Telemetry,
            ts_ms: 1000,
            device: "boiler-1".into(),
            body: Body::Text(body.into()),
        }
    }

    #[test]
    fn values_go_under_values_and_errors_under_bad_in_their_order() {
        let record = row(
            r#"{"z":{"value":21.5,"quality":"good","unit":"degC"},"p":{"quality":"bad","error":"timeout"},"a":{"value":7,"quality":"stale","error":"not heard for 10m","unit":"%"},"n":{"value":"on\"","quality":"good"}}"#,
        );
        let mut announced = Announced::default();
        let (payload, meta) = telemetry(&record, false, &mut announced).unwrap();
        assert_eq!(
            payload,
            r#"{"seq":12,"ts":1000,"device":"boiler-1","values":{"z":21.5,"n":"on\""},"bad":{"p":"timeout","a":"not heard for 10m"}}"#
        );
        assert_eq!(meta.as_deref(), Some(r#"{"units":{"a":"%","z":"degC"}}"#));
        let (replayed, meta) = telemetry(
            &row(r#"{"x":{"value":1,"quality":"good"}}"#),
            true,
            &mut announced,
        )
        .unwrap();
        assert_eq!(
            replayed,
            r#"{"seq":12,"ts":1000,"device":"boiler-1","values":{"x":1},"historical":true}"#
        );
        assert_eq!(meta, None, "no unit to announce");
        assert!(telemetry(&row("[1]"), false, &mut announced).is_err());
    }

    #[test]
    fn units_are_announced_once_and_again_when_they_change() {
        let mut announced = Announced::default();
        assert_eq!(
            announced.meta("b", &[("t", "degC")]).as_deref(),
            Some(r#"{"units":{"t":"degC"}}"#)
        );
        assert_eq!(announced.meta("b", &[("t", "degC")]), None);
        assert_eq!(
            announced.meta("b", &[("p", "bar")]).as_deref(),
            Some(r#"{"units":{"p":"bar","t":"degC"}}"#),
            "a split poll's other points join the announcement"
        );
        assert_eq!(
            announced.meta("b", &[("t", "K")]).as_deref(),
            Some(r#"{"units":{"p":"bar","t":"K"}}"#)
        );
        assert_eq!(announced.meta("c", &[]), None);
        announced.forget("b");
        assert_eq!(
            announced.meta("b", &[("t", "K")]).as_deref(),
            Some(r#"{"units":{"t":"K"}}"#),
            "announced again once forgotten"
        );
    }
}
