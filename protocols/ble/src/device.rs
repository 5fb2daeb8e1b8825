//! One configured BLE device: what its advertisements become, and when it
//! goes stale. Pure: time is passed in, so it is tested without a radio.

use std::sync::Arc;
use std::time::Duration;

use kite_core::{Freshness, PointSample, Reading, Sample, Value};
use tokio::time::Instant;

use crate::advert::{Address, Advertisement};

/// A configured BLE device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    pub name: Arc<str>,
    pub address: Address,
    /// Only these points are kept (`rssi` among them only if named); all
    /// when `None`.
    pub points: Option<Vec<String>>,
    /// An advertisement that changes nothing is sent only when this long
    /// has passed since the last message; zero: every advertisement.
    pub min_interval: Duration,
    /// Not heard for this long: its last values go out marked stale.
    pub stale_after: Duration,
}

/// Turns one device's advertisements into points: a built-in format or a
/// codec plug-in.
pub trait AdvertDecode: Send + Sync {
    /// `Ok(None)`: the advertisement carries nothing this decoder reads.
    fn decode(&mut self, advert: &Advertisement) -> Result<Option<Vec<PointSample>>, String>;
}

/// What one advertisement from a configured device came to.
#[derive(Debug, PartialEq)]
pub enum Heard {
    /// A message to send.
    Sample(Sample),
    /// Heard, but nothing to send: no data in it, or nothing new before
    /// `min_interval` has passed.
    Quiet,
    /// Its data could not be decoded: counted, never sent.
    Undecodable(String),
}

/// One device's state between advertisements.
pub struct Tracker {
    spec: Arc<DeviceSpec>,
    decoder: Box<dyn AdvertDecode>,
    freshness: Freshness,
}

const RSSI: &str = "rssi";

impl Tracker {
    pub fn new(spec: Arc<DeviceSpec>, decoder: Box<dyn AdvertDecode>) -> Self {
        Self {
            freshness: Freshness::new(spec.stale_after),
            spec,
            decoder,
        }
    }

    pub fn spec(&self) -> &DeviceSpec {
        &self.spec
    }

    pub fn is_stale(&self) -> bool {
        self.freshness.is_stale()
    }

    /// One advertisement received at `now` (`ts_ms` on the wall clock).
    pub fn heard(&mut self, advert: &Advertisement, now: Instant, ts_ms: i64) -> Heard {
        self.freshness.heard(now);
        if !advert.has_data() {
            // BlueZ reports a signal strength alone when an advertisement
            // repeats what it knows; the device is alive, nothing is new.
            return Heard::Quiet;
        }
        let decoded = match self.decoder.decode(advert) {
            Ok(Some(points)) => points,
            Ok(None) => return Heard::Quiet,
            Err(e) => return Heard::Undecodable(e),
        };
        let mut points: Vec<PointSample> = decoded
            .into_iter()
            .filter(|point| self.keeps(&point.name))
            .collect();
        if let (Some(rssi), true) = (advert.rssi, self.keeps(RSSI)) {
            points.push(PointSample {
                name: RSSI.into(),
                unit: Some("dBm".into()),
                reading: Reading::Good(Value::Int(rssi.into())),
            });
        }
        let due = match self.freshness.last() {
            None => true,
            Some(_) if self.freshness.is_stale() => true,
            Some((last, sent)) => {
                now.duration_since(sent) >= self.spec.min_interval || changed(last, &points)
            }
        };
        if !due {
            return Heard::Quiet;
        }
        self.freshness.sent(&points, now);
        Heard::Sample(Sample {
            device: self.spec.name.clone(),
            ts_ms,
            points,
        })
    }

    /// The stale message, once, when the device has not been heard for
    /// `stale_after` at `now` (see [`Freshness::check`]).
    pub fn check_stale(&mut self, now: Instant, ts_ms: i64) -> Option<Sample> {
        self.freshness.check(&self.spec.name, now, ts_ms)
    }

    fn keeps(&self, name: &str) -> bool {
        self.spec
            .points
            .as_ref()
            .is_none_or(|kept| kept.iter().any(|k| k == name))
    }
}

/// True when anything but the signal strength differs.
fn changed(last: &[PointSample], now: &[PointSample]) -> bool {
    let readings = |points: &[PointSample]| {
        points
            .iter()
            .filter(|p| &*p.name != RSSI)
            .map(|p| (p.name.clone(), p.reading.clone()))
            .collect::<Vec<_>>()
    };
    readings(last) != readings(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the first manufacturer byte as a temperature.
    struct FirstByte;

    impl AdvertDecode for FirstByte {
        fn decode(&mut self, advert: &Advertisement) -> Result<Option<Vec<PointSample>>, String> {
            let Some((_, data)) = advert.manufacturer_data.first() else {
                return Ok(None);
            };
            let byte = *data.first().ok_or("empty")?;
            Ok(Some(vec![PointSample {
                name: "temperature".into(),
                unit: Some("degC".into()),
                reading: Reading::Good(Value::Int(byte.into())),
            }]))
        }
    }

    fn tracker(min_interval: Duration, points: Option<&[&str]>) -> Tracker {
        let spec = DeviceSpec {
            name: "cold-room".into(),
            address: "AA:BB:CC:DD:EE:FF".parse().unwrap(),
            points: points.map(|p| p.iter().map(|s| s.to_string()).collect()),
            min_interval,
            stale_after: Duration::from_secs(600),
        };
        Tracker::new(Arc::new(spec), Box::new(FirstByte))
    }

    fn advert(byte: Option<u8>, rssi: i16) -> Advertisement {
        Advertisement {
            rssi: Some(rssi),
            manufacturer_data: byte.map(|b| (0xffff, vec![b])).into_iter().collect(),
            ..Default::default()
        }
    }

    fn names(heard: &Heard) -> Vec<String> {
        match heard {
            Heard::Sample(sample) => sample.points.iter().map(|p| p.name.to_string()).collect(),
            other => panic!("expected a sample, got {other:?}"),
        }
    }

    #[test]
    fn every_advertisement_is_a_message_by_default_with_its_rssi() {
        let mut device = tracker(Duration::ZERO, None);
        let t0 = Instant::now();
        for _ in 0..3 {
            let heard = device.heard(&advert(Some(20), -60), t0, 1);
            assert_eq!(names(&heard), ["temperature", "rssi"]);
        }
    }

    #[test]
    fn an_rssi_alone_keeps_the_device_alive_but_sends_nothing() {
        let mut device = tracker(Duration::ZERO, None);
        let t0 = Instant::now();
        assert_eq!(device.heard(&advert(None, -60), t0, 1), Heard::Quiet);
        let later = t0 + Duration::from_secs(599);
        assert!(device.check_stale(later, 2).is_none());
    }

    #[test]
    fn with_a_min_interval_only_changes_go_at_once() {
        let mut device = tracker(Duration::from_secs(60), None);
        let t0 = Instant::now();
        assert!(matches!(
            device.heard(&advert(Some(20), -60), t0, 1),
            Heard::Sample(_)
        ));
        // Same reading, new signal strength: nothing new.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(device.heard(&advert(Some(20), -70), t1, 2), Heard::Quiet);
        let t2 = t0 + Duration::from_secs(20);
        assert!(matches!(
            device.heard(&advert(Some(21), -70), t2, 3),
            Heard::Sample(_)
        ));
        // Unchanged, but a minute after the last message.
        let t3 = t2 + Duration::from_secs(60);
        assert!(matches!(
            device.heard(&advert(Some(21), -70), t3, 4),
            Heard::Sample(_)
        ));
    }

    #[test]
    fn points_keeps_only_the_named_ones() {
        let mut device = tracker(Duration::ZERO, Some(&["temperature"]));
        let heard = device.heard(&advert(Some(20), -60), Instant::now(), 1);
        assert_eq!(names(&heard), ["temperature"]);
    }

    #[test]
    fn a_silent_device_goes_stale_once_and_comes_back() {
        let mut device = tracker(Duration::from_secs(60), None);
        let t0 = Instant::now();
        device.heard(&advert(Some(20), -60), t0, 1);
        assert!(device
            .check_stale(t0 + Duration::from_secs(599), 2)
            .is_none());
        let stale = device
            .check_stale(t0 + Duration::from_secs(600), 3)
            .expect("stale after 10m");
        assert_eq!(stale.ts_ms, 3);
        let reason = "not heard for 10m".to_string();
        assert_eq!(
            stale
                .points
                .iter()
                .map(|p| p.reading.clone())
                .collect::<Vec<_>>(),
            [
                Reading::Stale(Value::Int(20), reason.clone()),
                Reading::Stale(Value::Int(-60), reason),
            ]
        );
        assert!(device.is_stale());
        assert!(device
            .check_stale(t0 + Duration::from_secs(900), 4)
            .is_none());
        // The next advertisement goes out at once, even unchanged.
        let back = t0 + Duration::from_secs(901);
        assert!(matches!(
            device.heard(&advert(Some(20), -60), back, 5),
            Heard::Sample(_)
        ));
        assert!(!device.is_stale());
        assert!(device
            .check_stale(back + Duration::from_secs(600), 6)
            .is_some());
    }

    #[test]
    fn a_device_never_heard_is_not_stale() {
        let mut device = tracker(Duration::ZERO, None);
        assert!(device
            .check_stale(Instant::now() + Duration::from_secs(3600), 1)
            .is_none());
    }

    #[test]
    fn undecodable_data_is_reported_not_sent() {
        let mut device = tracker(Duration::ZERO, None);
        let empty = Advertisement {
            manufacturer_data: vec![(1, vec![])],
            ..Default::default()
        };
        assert_eq!(
            device.heard(&empty, Instant::now(), 1),
            Heard::Undecodable("empty".into())
        );
    }
}
