//! Recent history for the status page: each point's latest reading and its
//! last [`RECENT_VALUES`] numeric values, and the buffer's depth and the age
//! of its oldest row over the last [`BUFFER_SAMPLES`] samples.
//!
//! Memory is bounded whatever arrives: a fixed ring per series, at most
//! [`POINTS_PER_DEVICE`] series per device, and besides the devices and
//! plug-ins of the running config (see [`History::follow`]) at most
//! [`OTHER_DEVICES`] devices; in bytes, names longer than [`MAX_NAME_BYTES`]
//! are not kept, units, texts and errors are cut to [`MAX_UNIT_BYTES`] and
//! [`MAX_TEXT_BYTES`], and all series together stay under [`MAX_BYTES`]. Readings that do not fit here are counted in
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
/// Longest device or point name kept; readings of longer ones are dropped.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest unit kept; longer ones are cut.
pub const MAX_UNIT_BYTES: usize = 32;
/// Longest text value or error kept; longer ones are cut.
pub const MAX_TEXT_BYTES: usize = 256;
/// What all series together may hold, counted as each series' name plus
/// its fullest unit, text and ring.
pub const MAX_BYTES: usize = 16 << 20;

/// The bytes a series of `name` is counted for.
fn series_cost(name: &str) -> usize {
    name.len() + MAX_UNIT_BYTES + MAX_TEXT_BYTES + RECENT_VALUES * 8 + 64
}

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
    /// What the series are counted for (see [`series_cost`]).
    bytes: usize,
}

/// A device's series, in the order they first came, found by name through
/// `index`. A poller sends its points in the same order every time, with
/// the same names: the series at a point's position is tried first, and a
/// pointer comparison of the names spares the lookup.
#[derive(Debug, Default)]
struct Points {
    series: Vec<Series>,
    index: BTreeMap<Arc<str>, usize>,
}

impl Points {
    fn len(&self) -> usize {
        self.series.len()
    }

    /// The series of `name`, the `position`th point of its sample.
    fn find(&mut self, position: usize, name: &Arc<str>) -> Option<&mut Series> {
        let at = match self.series.get(position) {
            Some(series) if Arc::ptr_eq(&series.name, name) => position,
            _ => *self.index.get(name)?,
        };
        self.series.get_mut(at)
    }

    fn insert(&mut self, series: Series) -> &mut Series {
        self.index.insert(series.name.clone(), self.series.len());
        self.series.push(series);
        self.series.last_mut().expect("just pushed")
    }

    /// The series, by name.
    fn sorted(&self) -> impl Iterator<Item = &Series> {
        self.index.values().map(|&at| &self.series[at])
    }
}

#[derive(Debug)]
struct Series {
    name: Arc<str>,
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
        let mut freed = 0;
        inner.devices.retain(|name, points| {
            let keep = inner.known.contains(name) || !before.contains(name);
            if !keep {
                freed += points
                    .series
                    .iter()
                    .map(|s| series_cost(&s.name))
                    .sum::<usize>();
            }
            keep
        });
        inner.bytes -= freed;
        inner.others = inner
            .devices
            .keys()
            .filter(|name| !inner.known.contains(*name))
            .count();
    }

    /// Readings not kept since the start.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
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
                    .sorted()
                    .map(|series| (series.name.to_string(), series.to_json()))
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
        if sample.device.len() > MAX_NAME_BYTES {
            self.dropped += sample.points.len() as u64;
            return;
        }
        let points = match self.devices.entry(sample.device.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) if self.known.contains(&*sample.device) => {
                entry.insert(Points::default())
            }
            Entry::Vacant(entry) if self.others < OTHER_DEVICES => {
                self.others += 1;
                entry.insert(Points::default())
            }
            Entry::Vacant(_) => {
                self.dropped += sample.points.len() as u64;
                return;
            }
        };
        for (position, point) in sample.points.iter().enumerate() {
            let count = points.len();
            let series = match points.find(position, &point.name) {
                Some(series) => series,
                None => {
                    let cost = series_cost(&point.name);
                    if count >= POINTS_PER_DEVICE
                        || point.name.len() > MAX_NAME_BYTES
                        || self.bytes + cost > MAX_BYTES
                    {
                        self.dropped += 1;
                        continue;
                    }
                    self.bytes += cost;
                    points.insert(Series {
                        name: point.name.clone(),
                        reading: Reading::Bad(String::new()),
                        unit: None,
                        ts_ms: sample.ts_ms,
                        recent: VecDeque::new(),
                    })
                }
            };
            series.update(sample.ts_ms, point);
        }
    }
}

impl Series {
    fn update(&mut self, ts_ms: i64, point: &kite_core::PointSample) {
        self.ts_ms = ts_ms;
        self.unit = match &point.unit {
            Some(unit) if unit.len() > MAX_UNIT_BYTES => {
                let mut cut = unit.to_string();
                kite_core::truncate(&mut cut, MAX_UNIT_BYTES);
                Some(Arc::from(cut))
            }
            unit => unit.clone(),
        };
        self.reading = match &point.reading {
            Reading::Good(Value::Text(text)) if text.len() > MAX_TEXT_BYTES => {
                let mut cut = text.clone();
                kite_core::truncate(&mut cut, MAX_TEXT_BYTES);
                Reading::Good(Value::Text(cut))
            }
            Reading::Bad(error) if error.len() > MAX_TEXT_BYTES => {
                let mut cut = error.clone();
                kite_core::truncate(&mut cut, MAX_TEXT_BYTES);
                Reading::Bad(cut)
            }
            reading => reading.clone(),
        };
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
            Reading::Stale(value, reason) => (Some(value), "stale", Some(reason)),
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
    fn names_units_and_texts_are_bounded_in_bytes() {
        let history = History::default();
        history.follow(["plc"]);
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        let mut batch = vec![sample(
            "plc",
            &[
                (long.as_str(), good(1.0)),
                ("text", Reading::Good(Value::Text("t".repeat(10_000)))),
                ("bad", Reading::Bad("e".repeat(10_000))),
                ("unit", good(2.0)),
            ],
        )];
        batch[0].points[3].unit = Some("u".repeat(10_000).into());
        batch.push(sample(&long, &[("x", good(1.0))]));
        history.record(&batch);
        let doc = history.to_json(5_000);
        let points = &doc["devices"]["plc"]["points"];
        assert!(points[long.as_str()].is_null());
        assert_eq!(
            points["text"]["value"].as_str().unwrap().len(),
            MAX_TEXT_BYTES
        );
        assert_eq!(
            points["bad"]["error"].as_str().unwrap().len(),
            MAX_TEXT_BYTES
        );
        assert_eq!(
            points["unit"]["unit"].as_str().unwrap().len(),
            MAX_UNIT_BYTES
        );
        assert_eq!(doc["dropped"], 2);

        // However many devices the config names, the series stay within MAX_BYTES.
        let devices: Vec<String> = (0..100).map(|i| format!("d{i:03}")).collect();
        history.follow(devices.iter().map(String::as_str));
        let names: Vec<String> = (0..POINTS_PER_DEVICE)
            .map(|i| format!("{i:0>128}"))
            .collect();
        for device in &devices {
            let points: Vec<(&str, Reading)> = names
                .iter()
                .map(|name| (name.as_str(), good(1.0)))
                .collect();
            history.record(&[sample(device, &points)]);
        }
        let inner = history.lock();
        let kept: usize = inner.devices.values().map(Points::len).sum();
        assert!(inner.bytes <= MAX_BYTES);
        assert_eq!(inner.bytes, kept * series_cost(&names[0]));
        assert_eq!(
            inner.dropped,
            2 + (devices.len() * POINTS_PER_DEVICE - kept) as u64
        );
        assert!(kept < devices.len() * POINTS_PER_DEVICE);
    }

    #[test]
    fn points_in_another_order_or_with_other_names_find_their_own_series() {
        let doc = check(
            &["plc"],
            &[
                vec![sample("plc", &[("a", good(1.0)), ("b", good(2.0))])],
                vec![sample("plc", &[("b", good(20.0)), ("a", good(10.0))])],
                vec![sample("plc", &[("c", good(3.0)), ("a", good(100.0))])],
            ],
        );
        let points = &doc["devices"]["plc"]["points"];
        assert_eq!(points["a"]["recent"], json!([1.0, 10.0, 100.0]));
        assert_eq!(points["b"]["recent"], json!([2.0, 20.0]));
        assert_eq!(points["c"]["recent"], json!([3.0]));
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
