//! For devices that send on their own (radio sensors): when one has gone
//! quiet for too long, its last values go out once more, marked stale.
//! Pure: time is passed in.

use std::time::Duration;

use tokio::time::Instant;

use crate::{PointSample, Reading, Sample};

/// One device's last message and when it was last heard.
#[derive(Debug)]
pub struct Freshness {
    stale_after: Duration,
    /// The points of the last message, and when it went.
    last: Option<(Vec<PointSample>, Instant)>,
    last_heard: Option<Instant>,
    stale: bool,
}

impl Freshness {
    pub fn new(stale_after: Duration) -> Self {
        Self {
            stale_after,
            last: None,
            last_heard: None,
            stale: false,
        }
    }

    /// The device was heard at `now` (with or without anything to send).
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = Some(now);
    }

    /// A message with `points` went out at `now`; the device is fresh again.
    pub fn sent(&mut self, points: &[PointSample], now: Instant) {
        self.last = Some((points.to_vec(), now));
        self.stale = false;
    }

    /// The last message's points and when it went.
    pub fn last(&self) -> Option<(&[PointSample], Instant)> {
        self.last
            .as_ref()
            .map(|(points, at)| (points.as_slice(), *at))
    }

    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// The stale message of `device`, once, when it has not been heard for
    /// `stale_after` at `now`: every point of its last message with its
    /// last value, marked stale. It comes again only after the device was
    /// heard, sent something and went quiet once more.
    pub fn check(
        &mut self,
        device: &std::sync::Arc<str>,
        now: Instant,
        ts_ms: i64,
    ) -> Option<Sample> {
        let heard = self.last_heard?;
        if self.stale || now.duration_since(heard) < self.stale_after {
            return None;
        }
        self.stale = true;
        let (last, _) = self.last.as_ref()?;
        let reason = format!("not heard for {}", human(self.stale_after));
        let points = last
            .iter()
            .map(|point| match &point.reading {
                Reading::Good(value) | Reading::Stale(value, _) => PointSample {
                    name: point.name.clone(),
                    unit: point.unit.clone(),
                    reading: Reading::Stale(value.clone(), reason.clone()),
                },
                // A point that had no value has none to go stale.
                Reading::Bad(_) => point.clone(),
            })
            .collect();
        Some(Sample {
            device: device.clone(),
            ts_ms,
            points,
        })
    }
}

/// A duration as a config writes it: `10m`, `90s`, `2h`.
fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs == 0 {
        format!("{}ms", duration.as_millis())
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::Value;

    fn point(name: &str, reading: Reading) -> PointSample {
        PointSample {
            name: name.into(),
            unit: None,
            reading,
        }
    }

    #[test]
    fn a_silent_device_goes_stale_once_with_its_last_values() {
        let device: Arc<str> = "cold-room".into();
        let mut fresh = Freshness::new(Duration::from_secs(600));
        let t0 = Instant::now();
        assert!(
            fresh
                .check(&device, t0 + Duration::from_secs(3600), 0)
                .is_none(),
            "never heard"
        );
        fresh.heard(t0);
        fresh.sent(
            &[
                point("temperature", Reading::Good(Value::Int(20))),
                point("door", Reading::Bad("no value".into())),
            ],
            t0,
        );
        assert!(fresh
            .check(&device, t0 + Duration::from_secs(599), 1)
            .is_none());
        let stale = fresh
            .check(&device, t0 + Duration::from_secs(600), 2)
            .unwrap();
        assert_eq!(stale.ts_ms, 2);
        assert_eq!(
            stale
                .points
                .iter()
                .map(|p| p.reading.clone())
                .collect::<Vec<_>>(),
            [
                Reading::Stale(Value::Int(20), "not heard for 10m".into()),
                Reading::Bad("no value".into()),
            ]
        );
        assert!(fresh.is_stale());
        assert!(
            fresh
                .check(&device, t0 + Duration::from_secs(900), 3)
                .is_none(),
            "once"
        );
        let back = t0 + Duration::from_secs(901);
        fresh.heard(back);
        fresh.sent(&[point("temperature", Reading::Good(Value::Int(21)))], back);
        assert!(!fresh.is_stale());
        assert!(fresh
            .check(&device, back + Duration::from_secs(600), 4)
            .is_some());
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(human(Duration::from_secs(600)), "10m");
        assert_eq!(human(Duration::from_secs(7200)), "2h");
        assert_eq!(human(Duration::from_secs(90)), "90s");
        assert_eq!(human(Duration::from_millis(500)), "500ms");
    }
}
