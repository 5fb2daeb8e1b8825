//! Recent history for the status page: each point's latest reading and its
//! last [`RECENT_VALUES`] numeric values, and the buffer's depth and the age
//! of its oldest row over the last [`BUFFER_SAMPLES`] samples.
//!
//! Memory is bounded whatever arrives: a fixed ring per series, at most
//! [`POINTS_PER_DEVICE`] series per device, and besides the devices and
//! plug-ins of the running config (see [`History::follow`]) at most
//! [`OTHER_DEVICES`] devices. Readings that do not fit here are counted in
//! `dropped` (they are in the buffer all the same). The ingest task records each batch under one
//! short lock; readers render under the same lock and never await in it.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use kite_core::{Reading, Sample, Value};
use serde_json::json;

/// Numeric values kept per point, for its sparkline.
pub const RECENT_VALUES: usize = 120;
/// Buffer samples kept; the HTTP API takes one every 5 s.
pub const BUFFER_SAMPLES: usize = 120;
/// Series kept per device; a device reporting more points has the rest dropped.
pub const POINTS_PER_DEVICE: usize = 256;
/// Devices kept beyond the configured ones and the plug-ins: nothing stops
/// a sample from naming any device.
pub const OTHER_DEVICES: usize = 16;

#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Devices that always fit: those the running config names.
    known: BTreeSet<Arc<str>>,
    devices: BTreeMap<Arc<str>, Points>,
    /// Devices admitted that the config did not name.
    others: usize,
    buffer: VecDeque<BufferSample>,
    /// Readings not kept because their device or point did not fit.
    dropped: u64,
}

type Points = BTreeMap<Arc<str>, Series>;

#[derive(Debug)]
struct Series {
    reading: Reading,
    unit: Option<Arc<str>>,
    ts_ms: i64,
    recent: VecDeque<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct BufferSample {
    ts_ms: i64,
    rows: u64,
    oldest_age_ms: i64,
}

impl History {
    /// Makes room for every device in `known` (the configured devices and
    /// plug-ins); a device a reload took out of the config leaves the history.
    /// Called when the gateway starts its links and plug-ins and after every
    /// reload.
    pub fn follow<'a>(&self, known: impl IntoIterator<Item = &'a str>) {
        let known: BTreeSet<Arc<str>> = known.into_iter().map(Arc::from).collect();
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.known == known {
            return;
        }
        let before = std::mem::replace(&mut inner.known, known);
        inner
            .devices
            .retain(|name, _| inner.known.contains(name) || !before.contains(name));
        inner.others = inner
            .devices
            .keys()
            .filter(|name| !inner.known.contains(*name))
            .count();
    }

    /// Records a batch of samples under one lock.
    pub fn record(&self, samples: &[Sample]) {
        let mut inner = self.lock();
        for sample in samples {
            inner.record(sample);
        }
    }

    /// Records the buffer's depth and the age of its oldest row (`None`: empty).
    pub fn record_buffer(&self, ts_ms: i64, rows: u64, oldest_ts_ms: Option<i64>) {
        let mut inner = self.lock();
        if inner.buffer.len() == BUFFER_SAMPLES {
            inner.buffer.pop_front();
        }
        inner.buffer.push_back(BufferSample {
            ts_ms,
            rows,
            oldest_age_ms: oldest_ts_ms.map_or(0, |oldest| (ts_ms - oldest).max(0)),
        });
    }

    /// The `/history` document (README.md, "Local HTTP API").
    pub fn to_json(&self, interval_ms: u64) -> serde_json::Value {
        let inner = self.lock();
        let devices: serde_json::Map<String, serde_json::Value> = inner
            .devices
            .iter()
            .map(|(device, points)| {
                let points: serde_json::Map<String, serde_json::Value> = points
                    .iter()
                    .map(|(point, series)| (point.to_string(), series.to_json()))
                    .collect();
                (device.to_string(), json!({ "points": points }))
            })
            .collect();
        let column = |f: fn(&BufferSample) -> serde_json::Value| {
            inner.buffer.iter().map(f).collect::<Vec<_>>()
        };
        json!({
            "ts": kite_core::now_ms(),
            "devices": devices,
            "dropped": inner.dropped,
            "buffer": {
                "interval_ms": interval_ms,
                "ts": column(|s| json!(s.ts_ms)),
                "rows": column(|s| json!(s.rows)),
                "oldest_age_ms": column(|s| json!(s.oldest_age_ms)),
            },
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere while holding it leaves data that is still valid.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn record(&mut self, sample: &Sample) {
        let points = match self.devices.entry(sample.device.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) if self.known.contains(&*sample.device) => {
                entry.insert(Points::new())
            }
            Entry::Vacant(entry) if self.others < OTHER_DEVICES => {
                self.others += 1;
                entry.insert(Points::new())
            }
            Entry::Vacant(_) => {
                self.dropped += sample.points.len() as u64;
                return;
            }
        };
        for point in &sample.points {
            let count = points.len();
            let series = match points.entry(point.name.clone()) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) if count < POINTS_PER_DEVICE => entry.insert(Series {
                    reading: point.reading.clone(),
                    unit: None,
                    ts_ms: sample.ts_ms,
                    recent: VecDeque::with_capacity(RECENT_VALUES),
                }),
                Entry::Vacant(_) => {
                    self.dropped += 1;
                    continue;
                }
            };
            series.update(sample.ts_ms, point);
        }
    }
}

impl Series {
    fn update(&mut self, ts_ms: i64, point: &kite_core::PointSample) {
        self.ts_ms = ts_ms;
        self.unit.clone_from(&point.unit);
        self.reading.clone_from(&point.reading);
        // Only good numbers draw the line; a bad reading shows as such, not as a value.
        if let Reading::Good(value) = &point.reading {
            let number = match value {
                Value::Bool(b) => Some(f64::from(u8::from(*b))),
                Value::Int(i) => Some(*i as f64),
                Value::UInt(u) => Some(*u as f64),
                Value::Float(f) => f.is_finite().then_some(*f),
                Value::Text(_) => None,
            };
            if let Some(number) = number {
                if self.recent.len() == RECENT_VALUES {
                    self.recent.pop_front();
                }
                self.recent.push_back(number);
            }
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let (value, quality, error) = match &self.reading {
            Reading::Good(value) => (Some(value), "good", None),
            Reading::Bad(reason) => (None, "bad", Some(reason)),
        };
        json!({
            "value": value,
            "quality": quality,
            "error": error,
            "unit": self.unit.as_deref(),
            "ts": self.ts_ms,
            "recent": self.recent,
        })
    }
}

#[cfg(test)]
mod tests {
    use kite_core::PointSample;

    use super::*;

    fn sample(device: &str, points: &[(&str, Reading)]) -> Sample {
        Sample {
            device: device.into(),
            ts_ms: 1_000,
            points: points
                .iter()
                .map(|(name, reading)| PointSample {
                    name: (*name).into(),
                    unit: None,
                    reading: reading.clone(),
                })
                .collect(),
        }
    }

    fn good(x: f64) -> Reading {
        Reading::Good(Value::Float(x))
    }

    /// Records `batches` into a history knowing `known`; returns its document.
    fn check(known: &[&str], batches: &[Vec<Sample>]) -> serde_json::Value {
        let history = History::default();
        history.follow(known.iter().copied());
        for batch in batches {
            history.record(batch);
        }
        history.to_json(5_000)
    }

    #[test]
    fn latest_reading_and_recent_numbers() {
        let doc = check(
            &["plc"],
            &[
                vec![sample(
                    "plc",
                    &[
                        ("level", good(1.0)),
                        ("on", Reading::Good(Value::Bool(true))),
                    ],
                )],
                vec![sample(
                    "plc",
                    &[
                        ("level", good(2.5)),
                        ("on", Reading::Good(Value::Bool(false))),
                    ],
                )],
                vec![sample("plc", &[("level", Reading::Bad("timeout".into()))])],
                vec![sample(
                    "plc",
                    &[("name", Reading::Good(Value::Text("x".into())))],
                )],
            ],
        );
        let points = &doc["devices"]["plc"]["points"];
        assert_eq!(points["level"]["quality"], "bad");
        assert_eq!(points["level"]["error"], "timeout");
        assert_eq!(points["level"]["value"], serde_json::Value::Null);
        assert_eq!(points["level"]["recent"], json!([1.0, 2.5]));
        assert_eq!(points["on"]["value"], false);
        assert_eq!(points["on"]["recent"], json!([1.0, 0.0]));
        assert_eq!(points["name"]["value"], "x");
        assert_eq!(points["name"]["recent"], json!([]));
        assert_eq!(doc["dropped"], 0);
    }

    #[test]
    fn the_ring_keeps_the_newest_values() {
        let batch: Vec<Sample> = (0..RECENT_VALUES + 30)
            .map(|i| sample("plc", &[("level", good(i as f64))]))
            .collect();
        let doc = check(&["plc"], &[batch]);
        let recent = doc["devices"]["plc"]["points"]["level"]["recent"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(recent.len(), RECENT_VALUES);
        assert_eq!(recent[0], 30.0);
        assert_eq!(recent[RECENT_VALUES - 1], (RECENT_VALUES + 29) as f64);
    }

    #[test]
    fn unknown_devices_and_points_beyond_the_caps_are_counted_not_kept() {
        let strangers: Vec<Sample> = (0..OTHER_DEVICES + 5)
            .map(|i| {
                sample(
                    &format!("derived-{i}"),
                    &[("x", good(1.0)), ("y", good(2.0))],
                )
            })
            .collect();
        let names: Vec<String> = (0..POINTS_PER_DEVICE + 3)
            .map(|i| format!("p{i}"))
            .collect();
        let wide: Vec<(&str, Reading)> = names.iter().map(|n| (n.as_str(), good(0.0))).collect();
        let known = sample("plc-2", &[("x", good(1.0))]);
        let doc = check(
            &["plc", "plc-2"],
            &[strangers, vec![sample("plc", &wide), known]],
        );
        let devices = doc["devices"].as_object().unwrap();
        assert_eq!(devices.len(), 2 + OTHER_DEVICES);
        assert!(devices.contains_key("plc-2"));
        assert_eq!(
            devices["plc"]["points"].as_object().unwrap().len(),
            POINTS_PER_DEVICE
        );
        assert_eq!(doc["dropped"], 5 * 2 + 3);
    }

    #[test]
    fn the_history_follows_the_config() {
        let history = History::default();
        let strangers: Vec<Sample> = (0..OTHER_DEVICES)
            .map(|i| sample(&format!("derived-{i}"), &[("x", good(1.0))]))
            .collect();
        history.record(&strangers);
        let reading = |device: &str| sample(device, &[("level", good(1.0))]);
        history.record(&[reading("plc"), reading("gone")]);
        let doc = history.to_json(5_000);
        assert!(
            doc["devices"]["plc"].is_null(),
            "no room before the config is known"
        );
        assert_eq!(doc["dropped"], 2);

        history.follow(["plc", "gone"]);
        history.record(&[reading("plc"), reading("gone")]);
        history.follow(["plc"]);
        let doc = history.to_json(5_000);
        let devices = doc["devices"].as_object().unwrap();
        assert!(devices.contains_key("plc"));
        assert!(!devices.contains_key("gone"), "taken out of the config");
        assert_eq!(devices.len(), 1 + OTHER_DEVICES);
    }

    #[test]
    fn buffer_samples_are_a_bounded_ring() {
        let history = History::default();
        history.record_buffer(1_000, 0, None);
        history.record_buffer(6_000, 4, Some(2_500));
        let doc = history.to_json(5_000);
        assert_eq!(
            doc["buffer"],
            json!({"interval_ms": 5000, "ts": [1000, 6000], "rows": [0, 4], "oldest_age_ms": [0, 3500]})
        );
        for i in 0..BUFFER_SAMPLES as u64 + 7 {
            history.record_buffer(i as i64, i, None);
        }
        let doc = history.to_json(5_000);
        let rows = doc["buffer"]["rows"].as_array().unwrap();
        assert_eq!(rows.len(), BUFFER_SAMPLES);
        assert_eq!(rows[0], 7);
    }
}
