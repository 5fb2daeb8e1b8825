//! Report by exception: a point configured with `report = "change"` (or a
//! `deadband`) is sent only when its value moved by more than its deadband,
//! its quality or error changed, or `max_silence` has passed since it was
//! last sent. Pure: the caller gives the time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{Reading, Sample, Value};

/// When a point is sent again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportRule {
    /// A number is sent when it differs from the last one sent by more than
    /// this; any other value when it differs at all.
    pub deadband: f64,
    /// Sent at least this often, changed or not.
    pub max_silence: Duration,
}

/// The rules of a gateway's points, by device and point name.
pub type ReportRules = HashMap<String, HashMap<String, ReportRule>>;

/// The rules in force, and what was last sent of each point that has one.
/// Bounded by the configured points.
#[derive(Debug, Default)]
pub struct Exceptions {
    rules: Arc<ReportRules>,
    last: HashMap<(Arc<str>, Arc<str>), (Reading, Instant)>,
}

impl Exceptions {
    pub fn new(rules: Arc<ReportRules>) -> Self {
        Self {
            rules,
            last: HashMap::new(),
        }
    }

    /// Takes the rules a reload made; points that lost theirs are forgotten.
    pub fn follow(&mut self, rules: &Arc<ReportRules>) {
        if Arc::ptr_eq(&self.rules, rules) {
            return;
        }
        self.rules = rules.clone();
        self.last.retain(|(device, point), _| {
            rules
                .get(&**device)
                .is_some_and(|points| points.contains_key(&**point))
        });
    }

    /// Whether some point of `device` is reported by exception.
    pub fn covers(&self, device: &str) -> bool {
        self.rules.contains_key(device)
    }

    /// Removes from `sample` the points its rules say need not be sent at
    /// `now`; remembers the others as sent. False when nothing is left.
    pub fn filter(&mut self, sample: &mut Sample, now: Instant) -> bool {
        let Some(device_rules) = self.rules.get(&*sample.device) else {
            return true;
        };
        sample.points.retain(|point| {
            let Some(rule) = device_rules.get(&*point.name) else {
                return true;
            };
            let key = (sample.device.clone(), point.name.clone());
            let due = match self.last.get(&key) {
                None => true,
                Some((last, sent_at)) => {
                    now.saturating_duration_since(*sent_at) >= rule.max_silence
                        || changed(last, &point.reading, rule.deadband)
                }
            };
            if due {
                self.last.insert(key, (point.reading.clone(), now));
            }
            due
        });
        !sample.points.is_empty()
    }
}

fn changed(last: &Reading, now: &Reading, deadband: f64) -> bool {
    match (last, now) {
        (Reading::Good(a), Reading::Good(b)) => moved(a, b, deadband),
        (Reading::Stale(a, e), Reading::Stale(b, f)) => e != f || moved(a, b, deadband),
        (Reading::Bad(e), Reading::Bad(f)) => e != f,
        // A change of quality is always sent.
        _ => true,
    }
}

fn moved(a: &Value, b: &Value, deadband: f64) -> bool {
    match (number(a), number(b)) {
        (Some(a), Some(b)) => (a - b).abs() > deadband || (a.is_nan() != b.is_nan()),
        _ => a != b,
    }
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Int(v) => Some(*v as f64),
        Value::UInt(v) => Some(*v as f64),
        Value::Float(v) => Some(*v),
        Value::Bool(_) | Value::Text(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PointSample;

    fn sample(readings: &[(&str, Reading)]) -> Sample {
        Sample {
            device: "boiler".into(),
            ts_ms: 0,
            points: readings
                .iter()
                .map(|(name, reading)| PointSample {
                    name: (*name).into(),
                    unit: None,
                    reading: reading.clone(),
                })
                .collect(),
        }
    }

    fn names(sample: &Sample) -> Vec<&str> {
        sample.points.iter().map(|p| &*p.name).collect()
    }

    #[test]
    fn a_point_goes_when_it_moves_past_its_deadband_changes_quality_or_was_silent_too_long() {
        let rule = ReportRule {
            deadband: 0.5,
            max_silence: Duration::from_secs(60),
        };
        let rules: ReportRules = [(
            "boiler".to_string(),
            [("t".to_string(), rule)].into_iter().collect(),
        )]
        .into_iter()
        .collect();
        let mut exceptions = Exceptions::new(Arc::new(rules));
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let good = |v: f64| Reading::Good(Value::Float(v));
        let mut send = |reading: Reading, now: Instant| {
            let mut s = sample(&[("t", reading), ("other", Reading::Good(Value::Int(1)))]);
            exceptions.filter(&mut s, now);
            names(&s).contains(&"t")
        };
        assert!(send(good(20.0), at(0)), "the first value goes");
        assert!(!send(good(20.4), at(1)), "within the deadband");
        assert!(!send(good(19.6), at(2)), "within the deadband, downwards");
        assert!(send(good(20.6), at(3)), "past it, from the last value sent");
        assert!(
            send(Reading::Bad("timeout".into()), at(4)),
            "quality changed"
        );
        assert!(
            !send(Reading::Bad("timeout".into()), at(5)),
            "the same error"
        );
        assert!(
            send(Reading::Bad("exception 2".into()), at(6)),
            "another error"
        );
        assert!(send(good(20.6), at(7)), "good again, same value");
        assert!(!send(good(20.6), at(66)), "silent for 59 s");
        assert!(send(good(20.6), at(67)), "silent for max_silence");

        let mut unruled = sample(&[("other", Reading::Good(Value::Int(1)))]);
        assert!(exceptions.filter(&mut unruled, at(68)));
        assert_eq!(
            names(&unruled),
            ["other"],
            "points without a rule always go"
        );
        let mut only = sample(&[("t", good(20.6))]);
        assert!(
            !exceptions.filter(&mut only, at(69)),
            "nothing left to send"
        );
    }

    #[test]
    fn text_and_booleans_go_when_they_differ_and_forgotten_rules_free_their_memory() {
        let rule = ReportRule {
            deadband: 10.0,
            max_silence: Duration::from_secs(3600),
        };
        let rules: ReportRules = [(
            "boiler".to_string(),
            [("on".to_string(), rule), ("mode".to_string(), rule)]
                .into_iter()
                .collect(),
        )]
        .into_iter()
        .collect();
        let mut exceptions = Exceptions::new(Arc::new(rules));
        let now = Instant::now();
        let mut s = sample(&[
            ("on", Reading::Good(Value::Bool(true))),
            ("mode", Reading::Good(Value::Text("auto".into()))),
        ]);
        exceptions.filter(&mut s, now);
        let mut s = sample(&[
            ("on", Reading::Good(Value::Bool(false))),
            ("mode", Reading::Good(Value::Text("auto".into()))),
        ]);
        exceptions.filter(&mut s, now);
        assert_eq!(names(&s), ["on"]);
        exceptions.follow(&Arc::new(ReportRules::new()));
        assert!(exceptions.last.is_empty());
    }
}
