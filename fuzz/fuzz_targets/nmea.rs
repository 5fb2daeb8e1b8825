//! Arbitrary bytes as an NMEA sentence: an error or points, never a panic;
//! a decoded sentence gives the points of its type, with finite numbers.

#![no_main]

use kite_core::{Reading, Value};
use kite_serial::decode::DecodeError;
use kite_serial::nmea::NmeaDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match NmeaDecoder.decode(data) {
        Ok(points) => {
            // VTG, RMC, GGA.
            assert!(matches!(points.len(), 2 | 5 | 6), "{points:?}");
            for point in &points {
                if let Reading::Good(Value::Float(v)) = point.reading {
                    assert!(v.is_finite(), "{point:?}");
                }
            }
        }
        Err(DecodeError::Invalid(reason)) => assert!(!reason.is_empty()),
        Err(DecodeError::NotUtf8) => assert!(std::str::from_utf8(data).is_err()),
        Err(DecodeError::NoMatch) => panic!("NMEA has no pattern to miss"),
    }
});
