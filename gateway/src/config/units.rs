//! Durations and sizes as a config writes them: `"500ms"`, `"1.5s"`, `"5m"`,
//! `"1h"`; `4096`, `"64KiB"`, `"256MiB"`.

use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// A duration written as a number and a unit: `500ms`, `1s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval(pub Duration);

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(Interval)
            .map_err(de::Error::custom)
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || {
        format!("invalid duration {text:?}: expected a number and a unit (ms, s, m, h), like \"500ms\" or \"1s\"")
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(expected)?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| expected())?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(expected()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| expected())
}

/// A size: bytes as an integer, or a string with a unit `B`, `KiB`, `MiB`, `GiB`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Bytes(u64),
            Text(String),
        }
        match Either::deserialize(deserializer)? {
            Either::Bytes(n) => Ok(ByteSize(n)),
            Either::Text(text) => parse_size(&text).map(ByteSize).map_err(de::Error::custom),
        }
    }
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let expected = || {
        format!("invalid size {text:?}: expected a number and a unit (B, KiB, MiB, GiB), like \"256MiB\"")
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| expected())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(expected()),
    };
    number.checked_mul(factor).ok_or_else(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1d").is_err());
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert!(parse_size("1TB").is_err());
    }
}
