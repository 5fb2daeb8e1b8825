//! NMEA 0183 sentences from GNSS receivers: RMC, GGA and VTG become
//! position, speed and fix points.
//!
//! Points: RMC gives `latitude`, `longitude` (decimal degrees, south and west
//! negative), `speed` (m/s), `course` (degrees) and `fix_valid`; GGA gives
//! `latitude`, `longitude`, `fix_quality`, `satellites`, `hdop` and
//! `altitude` (m); VTG gives `course` and `speed`. When the sentence itself
//! says there is no fix (RMC status `V`, GGA quality 0, VTG mode `N`), the
//! position and motion points are bad rather than stale values marked good.

use std::sync::Arc;

use kite_core::{PointSample, Reading, Value};

use crate::decode::DecodeError;

/// Longest sentence NMEA 0183 allows: 82 characters counting `$` and the
/// `\r\n` that ends it, so 80 without the line ending.
pub const MAX_SENTENCE_LEN: usize = 80;

const KNOTS_TO_M_S: f64 = 1852.0 / 3600.0;
const KM_H_TO_M_S: f64 = 1000.0 / 3600.0;
const NO_FIX: &str = "no fix";
const EMPTY: &str = "empty field";

/// Decodes one NMEA 0183 sentence per frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NmeaDecoder;

impl NmeaDecoder {
    /// Decodes one sentence (`$GPRMC,…*6A`, with or without its line
    /// ending). A missing or wrong checksum, a malformed sentence and a
    /// sentence type other than RMC, GGA and VTG are errors; empty or
    /// malformed fields of a good sentence are bad points.
    pub fn decode(&self, frame: &[u8]) -> Result<Vec<PointSample>, DecodeError> {
        // Tolerate line endings a `\n`-delimited framer leaves in place.
        let frame = frame.strip_suffix(b"\n").unwrap_or(frame);
        let frame = frame.strip_suffix(b"\r").unwrap_or(frame);
        if frame.len() > MAX_SENTENCE_LEN {
            return Err(invalid(format!(
                "sentence is {} characters long, NMEA 0183 allows {MAX_SENTENCE_LEN}",
                frame.len()
            )));
        }
        let text = std::str::from_utf8(frame).map_err(|_| DecodeError::NotUtf8)?;
        let body = text
            .strip_prefix('$')
            .ok_or_else(|| invalid("sentence does not start with `$`".into()))?;
        let (body, checksum) = body
            .split_once('*')
            .ok_or_else(|| invalid("sentence has no checksum".into()))?;
        if !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(invalid("sentence has non-printable characters".into()));
        }
        let stated = match checksum.as_bytes() {
            [hi, lo] if hi.is_ascii_hexdigit() && lo.is_ascii_hexdigit() => {
                u8::from_str_radix(checksum, 16).ok()
            }
            _ => None,
        }
        .ok_or_else(|| invalid(format!("bad checksum field `{checksum}`")))?;
        let computed = body.bytes().fold(0, |sum, b| sum ^ b);
        if stated != computed {
            return Err(invalid(format!(
                "checksum mismatch: sentence says {stated:02X}, computed {computed:02X}"
            )));
        }

        let fields: Vec<&str> = body.split(',').collect();
        let address = fields.first().copied().unwrap_or_default();
        if address.starts_with('P') {
            return Err(invalid(format!("unsupported sentence {address}")));
        }
        let sentence = match address.as_bytes() {
            [_, _, _, _, _] if address.bytes().all(|b| b.is_ascii_uppercase()) => {
                address.get(2..).unwrap_or_default()
            }
            _ => return Err(invalid(format!("bad address field `{address}`"))),
        };
        let (min_fields, points): (usize, SentenceDecoder) = match sentence {
            "RMC" => (9, rmc),
            "GGA" => (11, gga),
            "VTG" => (8, vtg),
            _ => return Err(invalid(format!("unsupported sentence {sentence}"))),
        };
        if fields.len() < min_fields {
            return Err(invalid(format!(
                "{sentence} sentence has {} fields, expected at least {min_fields}",
                fields.len()
            )));
        }
        Ok(points(&fields))
    }
}

/// Turns the fields of one sentence type (address first) into points.
type SentenceDecoder = fn(&[&str]) -> Vec<PointSample>;

fn invalid(reason: String) -> DecodeError {
    DecodeError::Invalid(reason)
}

/// `$--RMC,time,status,lat,N/S,lon,E/W,speed kn,course,date,…`
fn rmc(fields: &[&str]) -> Vec<PointSample> {
    let status = field(fields, 2);
    let fix_valid = match status {
        "A" => Reading::Good(Value::Bool(true)),
        "V" => Reading::Good(Value::Bool(false)),
        "" => Reading::Bad(EMPTY.into()),
        other => Reading::Bad(format!("unknown status `{other}`")),
    };
    let fix = status == "A";
    vec![
        point("latitude", Some("deg"), gate(fix, latitude(fields, 3))),
        point("longitude", Some("deg"), gate(fix, longitude(fields, 5))),
        point(
            "speed",
            Some("m/s"),
            gate(fix, unsigned(field(fields, 7), KNOTS_TO_M_S)),
        ),
        point(
            "course",
            Some("deg"),
            gate(fix, unsigned(field(fields, 8), 1.0)),
        ),
        point("fix_valid", None, fix_valid),
    ]
}

/// `$--GGA,time,lat,N/S,lon,E/W,quality,satellites,hdop,altitude,M,…`
fn gga(fields: &[&str]) -> Vec<PointSample> {
    let quality = integer(field(fields, 6));
    let fix = matches!(quality, Reading::Good(Value::Int(q)) if q > 0);
    let altitude = match field(fields, 10) {
        "M" | "" => signed(field(fields, 9)),
        unit => Reading::Bad(format!("altitude in `{unit}`, not metres")),
    };
    vec![
        point("latitude", Some("deg"), gate(fix, latitude(fields, 2))),
        point("longitude", Some("deg"), gate(fix, longitude(fields, 4))),
        point("fix_quality", None, quality),
        point("satellites", None, integer(field(fields, 7))),
        point("hdop", None, gate(fix, unsigned(field(fields, 8), 1.0))),
        point("altitude", Some("m"), gate(fix, altitude)),
    ]
}

/// `$--VTG,course T,T,course M,M,speed kn,N,speed km/h,K[,mode]`
fn vtg(fields: &[&str]) -> Vec<PointSample> {
    // The mode field came with NMEA 2.3; older sentences lack it.
    let fix = field(fields, 9) != "N";
    vec![
        point(
            "course",
            Some("deg"),
            gate(fix, unsigned(field(fields, 1), 1.0)),
        ),
        point(
            "speed",
            Some("m/s"),
            gate(fix, unsigned(field(fields, 7), KM_H_TO_M_S)),
        ),
    ]
}

fn field<'a>(fields: &[&'a str], index: usize) -> &'a str {
    fields.get(index).copied().unwrap_or_default()
}

fn point(name: &str, unit: Option<&str>, reading: Reading) -> PointSample {
    PointSample {
        name: Arc::from(name),
        unit: unit.map(Arc::from),
        reading,
    }
}

/// Without a fix, a receiver's numbers are stale or made up.
fn gate(fix: bool, reading: Reading) -> Reading {
    if fix {
        reading
    } else {
        Reading::Bad(NO_FIX.into())
    }
}

fn latitude(fields: &[&str], index: usize) -> Reading {
    coordinate(
        field(fields, index),
        field(fields, index + 1),
        ('N', 'S'),
        90.0,
    )
}

fn longitude(fields: &[&str], index: usize) -> Reading {
    coordinate(
        field(fields, index),
        field(fields, index + 1),
        ('E', 'W'),
        180.0,
    )
}

/// `ddmm.mmmm` (`dddmm.mmmm` for longitude) and a hemisphere letter to
/// signed decimal degrees.
fn coordinate(value: &str, hemisphere: &str, (plus, minus): (char, char), max: f64) -> Reading {
    if value.is_empty() && hemisphere.is_empty() {
        return Reading::Bad(NO_FIX.into());
    }
    let sign = match hemisphere.chars().next() {
        Some(h) if h == plus && hemisphere.len() == 1 => 1.0,
        Some(h) if h == minus && hemisphere.len() == 1 => -1.0,
        _ => return Reading::Bad(format!("bad hemisphere `{hemisphere}`")),
    };
    let Some(raw) = decimal(value).filter(|v| *v >= 0.0) else {
        return Reading::Bad(format!("bad coordinate `{value}`"));
    };
    let degrees = (raw / 100.0).trunc();
    let minutes = raw - degrees * 100.0;
    let angle = degrees + minutes / 60.0;
    if minutes >= 60.0 || angle > max {
        return Reading::Bad(format!("bad coordinate `{value}`"));
    }
    Reading::Good(Value::Float(sign * angle))
}

/// A non-negative decimal field times `factor`.
fn unsigned(text: &str, factor: f64) -> Reading {
    if text.is_empty() {
        return Reading::Bad(EMPTY.into());
    }
    match decimal(text) {
        Some(value) if value >= 0.0 => Reading::Good(Value::Float(value * factor)),
        _ => Reading::Bad(format!("bad number `{text}`")),
    }
}

fn signed(text: &str) -> Reading {
    if text.is_empty() {
        return Reading::Bad(EMPTY.into());
    }
    match decimal(text) {
        Some(value) => Reading::Good(Value::Float(value)),
        None => Reading::Bad(format!("bad number `{text}`")),
    }
}

fn integer(text: &str) -> Reading {
    if text.is_empty() {
        return Reading::Bad(EMPTY.into());
    }
    match text.parse::<i64>() {
        Ok(value) if text.bytes().all(|b| b.is_ascii_digit()) => Reading::Good(Value::Int(value)),
        _ => Reading::Bad(format!("bad integer `{text}`")),
    }
}

/// NMEA numbers are plain decimals: an optional `-`, digits and at most one
/// `.`. Stricter than `f64::from_str`, which also takes `inf`, `1e5` and `+1`.
fn decimal(text: &str) -> Option<f64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let plain = digits.bytes().any(|b| b.is_ascii_digit())
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && digits.bytes().filter(|&b| b == b'.').count() <= 1;
    if plain {
        text.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `$body*HH` with the right checksum.
    fn sentence(body: &str) -> String {
        let sum = body.bytes().fold(0, |s, b| s ^ b);
        format!("${body}*{sum:02X}")
    }

    fn decode(text: &str) -> Result<Vec<PointSample>, DecodeError> {
        NmeaDecoder.decode(text.as_bytes())
    }

    fn reading<'a>(points: &'a [PointSample], name: &str) -> &'a Reading {
        &points
            .iter()
            .find(|p| &*p.name == name)
            .unwrap_or_else(|| panic!("no point {name}"))
            .reading
    }

    fn float(points: &[PointSample], name: &str) -> f64 {
        match reading(points, name) {
            Reading::Good(Value::Float(v)) => *v,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn is_bad(points: &[PointSample], name: &str) -> bool {
        matches!(reading(points, name), Reading::Bad(_))
    }

    #[test]
    fn real_rmc_sentence() {
        let points =
            decode("$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n")
                .unwrap();
        let names: Vec<&str> = points.iter().map(|p| &*p.name).collect();
        assert_eq!(
            names,
            ["latitude", "longitude", "speed", "course", "fix_valid"]
        );
        assert!((float(&points, "latitude") - 48.1173).abs() < 1e-6);
        assert!((float(&points, "longitude") - 11.516667).abs() < 1e-6);
        assert!((float(&points, "speed") - 11.5236).abs() < 1e-4);
        assert!((float(&points, "course") - 84.4).abs() < 1e-9);
        assert_eq!(
            reading(&points, "fix_valid"),
            &Reading::Good(Value::Bool(true))
        );
        assert_eq!(points[0].unit.as_deref(), Some("deg"));
        assert_eq!(points[2].unit.as_deref(), Some("m/s"));
    }

    #[test]
    fn real_gga_sentence() {
        let points =
            decode("$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47").unwrap();
        assert!((float(&points, "latitude") - 48.1173).abs() < 1e-6);
        assert!((float(&points, "longitude") - 11.516667).abs() < 1e-6);
        assert_eq!(
            reading(&points, "fix_quality"),
            &Reading::Good(Value::Int(1))
        );
        assert_eq!(
            reading(&points, "satellites"),
            &Reading::Good(Value::Int(8))
        );
        assert!((float(&points, "hdop") - 0.9).abs() < 1e-9);
        assert!((float(&points, "altitude") - 545.4).abs() < 1e-9);
    }

    #[test]
    fn real_vtg_sentence() {
        let points = decode("$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48").unwrap();
        assert!((float(&points, "course") - 54.7).abs() < 1e-9);
        assert!((float(&points, "speed") - 10.2 / 3.6).abs() < 1e-9);
    }

    #[test]
    fn southern_and_western_hemispheres_are_negative() {
        let points = decode(&sentence(
            "GNRMC,000000,A,3351.000,S,15112.600,W,0.0,,010125,,",
        ))
        .unwrap();
        assert!((float(&points, "latitude") + 33.85).abs() < 1e-9);
        assert!((float(&points, "longitude") + 151.21).abs() < 1e-9);
        assert_eq!(float(&points, "speed"), 0.0);
        // Receivers leave the course empty when they stand still.
        assert_eq!(
            reading(&points, "course"),
            &Reading::Bad("empty field".into())
        );
    }

    #[test]
    fn no_fix_gives_bad_readings_not_errors() {
        let points = decode(&sentence("GPRMC,,V,,,,,,,,,,N")).unwrap();
        assert_eq!(points.len(), 5);
        for name in ["latitude", "longitude", "speed", "course"] {
            assert_eq!(reading(&points, name), &Reading::Bad("no fix".into()));
        }
        assert_eq!(
            reading(&points, "fix_valid"),
            &Reading::Good(Value::Bool(false))
        );

        let points = decode(&sentence("GPGGA,123519,,,,,0,00,99.99,,,,,,")).unwrap();
        assert_eq!(
            reading(&points, "fix_quality"),
            &Reading::Good(Value::Int(0))
        );
        assert_eq!(
            reading(&points, "satellites"),
            &Reading::Good(Value::Int(0))
        );
        for name in ["latitude", "longitude", "hdop", "altitude"] {
            assert!(is_bad(&points, name), "{name}");
        }

        let points = decode(&sentence("GPVTG,,T,,M,,N,,K,N")).unwrap();
        assert!(is_bad(&points, "course") && is_bad(&points, "speed"));
    }

    #[test]
    fn a_stale_position_without_fix_is_not_good() {
        let points = decode(&sentence(
            "GPRMC,123519,V,4807.038,N,01131.000,E,022.4,084.4,230394,,",
        ))
        .unwrap();
        assert!(is_bad(&points, "latitude"));
    }

    #[test]
    fn malformed_fields_are_bad_points() {
        let points = decode(&sentence("GPGGA,1,4867.0,N,1e3,E,1,x8,-1,,F,,,,")).unwrap();
        assert_eq!(
            reading(&points, "latitude"),
            &Reading::Bad("bad coordinate `4867.0`".into())
        );
        assert!(is_bad(&points, "longitude"));
        assert!(is_bad(&points, "satellites"));
        assert!(is_bad(&points, "hdop"));
        assert_eq!(
            reading(&points, "altitude"),
            &Reading::Bad("altitude in `F`, not metres".into())
        );
        assert_eq!(
            reading(&points, "fix_quality"),
            &Reading::Good(Value::Int(1))
        );
        let points = decode(&sentence("GPRMC,1,A,4807.038,X,09959.0,E,,,,,")).unwrap();
        assert_eq!(
            reading(&points, "latitude"),
            &Reading::Bad("bad hemisphere `X`".into())
        );
        assert!((float(&points, "longitude") - 99.983333).abs() < 1e-6);
    }

    #[test]
    fn sentence_errors() {
        let invalid = |text: &str| match decode(text) {
            Err(DecodeError::Invalid(reason)) => reason,
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(
            invalid("$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6B"),
            "checksum mismatch: sentence says 6B, computed 6A"
        );
        assert_eq!(
            invalid("$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"),
            "sentence has no checksum"
        );
        assert_eq!(invalid("$GPRMC,1*+A"), "bad checksum field `+A`");
        assert_eq!(invalid("GPRMC,1*00"), "sentence does not start with `$`");
        assert_eq!(
            invalid(&sentence("GPGSV,3,1,11")),
            "unsupported sentence GSV"
        );
        assert_eq!(invalid(&sentence("PUBX,00")), "unsupported sentence PUBX");
        assert_eq!(invalid(&sentence("G1RMC,1")), "bad address field `G1RMC`");
        assert_eq!(invalid(&sentence("GPRMCX,1")), "bad address field `GPRMCX`");
        assert_eq!(
            invalid(&sentence("GPRMC,1,A")),
            "RMC sentence has 3 fields, expected at least 9"
        );
        assert_eq!(
            invalid(&sentence("GPRMC,\t")),
            "sentence has non-printable characters"
        );
        assert_eq!(
            invalid("$GPRMC,\u{e9}*00"),
            "sentence has non-printable characters"
        );
        assert_eq!(
            NmeaDecoder.decode(b"$GP\xffRMC*00"),
            Err(DecodeError::NotUtf8)
        );
    }

    #[test]
    fn length_limit_is_the_standards() {
        // 80 characters without the line ending is the most NMEA 0183 allows.
        let body = format!("GPRMC,{}", "0".repeat(MAX_SENTENCE_LEN - 10));
        let longest = sentence(&body);
        assert_eq!(longest.len(), MAX_SENTENCE_LEN);
        assert!(matches!(decode(&longest), Err(DecodeError::Invalid(r)) if r.contains("fields")));
        assert!(
            matches!(decode(&format!("{longest}\r\n")), Err(DecodeError::Invalid(r)) if r.contains("fields"))
        );
        let too_long = sentence(&format!("{body}0"));
        assert_eq!(
            decode(&too_long),
            Err(DecodeError::Invalid(
                "sentence is 81 characters long, NMEA 0183 allows 80".into()
            ))
        );
    }

    proptest! {
        #[test]
        fn coordinates_round_trip(
            (lat_deg, lat_min) in (0u32..90, 0u32..600_000),
            (lon_deg, lon_min) in (0u32..180, 0u32..600_000),
            south in any::<bool>(),
            west in any::<bool>(),
        ) {
            // Minutes with four decimals, as receivers send them.
            let minutes = |m: u32| format!("{:02}.{:04}", m / 10_000, m % 10_000);
            let angle = |d: u32, m: u32, negative: bool| {
                let a = f64::from(d) + f64::from(m) / 10_000.0 / 60.0;
                if negative { -a } else { a }
            };
            let points = decode(&sentence(&format!(
                "GNGGA,000000,{lat_deg:02}{},{},{lon_deg:03}{},{},2,12,0.8,10.0,M,0.0,M,,",
                minutes(lat_min),
                if south { "S" } else { "N" },
                minutes(lon_min),
                if west { "W" } else { "E" },
            )))
            .unwrap();
            prop_assert!((float(&points, "latitude") - angle(lat_deg, lat_min, south)).abs() < 1e-9);
            prop_assert!((float(&points, "longitude") - angle(lon_deg, lon_min, west)).abs() < 1e-9);
        }

        #[test]
        fn any_input_decodes_or_errors_without_panicking(frame in any::<Vec<u8>>()) {
            if let Ok(points) = NmeaDecoder.decode(&frame) {
                prop_assert!(!points.is_empty());
            }
        }

        #[test]
        fn any_fields_of_a_good_sentence_decode(
            kind in prop_oneof![Just("RMC"), Just("GGA"), Just("VTG")],
            fields in proptest::collection::vec("[-0-9.NSEWAVM]{0,6}", 14),
        ) {
            let body = format!("GP{kind},{}", fields.join(","));
            prop_assume!(body.len() + 4 <= MAX_SENTENCE_LEN);
            let points = decode(&sentence(&body)).unwrap();
            prop_assert!(points.len() >= 2);
            for p in &points {
                if let Reading::Good(Value::Float(v)) = p.reading {
                    prop_assert!(v.is_finite());
                }
            }
        }
    }
}
