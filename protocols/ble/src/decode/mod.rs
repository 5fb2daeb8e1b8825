//! Advertisement decoders: pure functions from an advertisement's bytes to
//! named readings. No I/O; a malformed advertisement is an error value.

use std::borrow::Cow;
use std::fmt;

use kite_core::{Reading, Value};

use crate::advert::Advertisement;

mod beacon;
mod bthome;
mod ruuvi;
mod xiaomi;

/// The formats Kite decodes, as named in the config's `decoder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Bthome,
    Ruuvi,
    Pvvx,
    Atc,
    Ibeacon,
    Eddystone,
}

impl Format {
    /// Every format, in the order [`Format::recognise`] tries them.
    pub const ALL: [Format; 6] = [
        Format::Bthome,
        Format::Ruuvi,
        Format::Pvvx,
        Format::Atc,
        Format::Ibeacon,
        Format::Eddystone,
    ];

    /// Config name: "bthome" | "ruuvi" | "pvvx" | "atc" | "ibeacon" | "eddystone".
    pub fn name(self) -> &'static str {
        match self {
            Format::Bthome => "bthome",
            Format::Ruuvi => "ruuvi",
            Format::Pvvx => "pvvx",
            Format::Atc => "atc",
            Format::Ibeacon => "ibeacon",
            Format::Eddystone => "eddystone",
        }
    }

    /// The format of a config name, exactly as [`Format::name`] spells it.
    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|format| format.name() == name)
    }

    /// What a passive advertisement monitor matches to see this format:
    /// an AD structure type and the bytes its data starts with.
    pub fn pattern(self) -> (u8, &'static [u8]) {
        match self {
            Format::Bthome => (0x16, &[0xd2, 0xfc]),
            Format::Ruuvi => (0xff, &[0x99, 0x04, 0x05]),
            Format::Pvvx | Format::Atc => (0x16, &[0x1a, 0x18]),
            Format::Ibeacon => (0xff, &[0x4c, 0x00, 0x02, 0x15]),
            Format::Eddystone => (0x16, &[0xaa, 0xfe]),
        }
    }

    /// The format an advertisement carries, for reporting unknown devices;
    /// None if none. Only data this crate can decode counts: a BTHome
    /// version other than 2 or a Ruuvi data format other than 5 is None.
    pub fn recognise(advert: &Advertisement) -> Option<Format> {
        Format::ALL
            .into_iter()
            .find(|format| format.carried_by(advert))
    }

    fn carried_by(self, advert: &Advertisement) -> bool {
        match self {
            Format::Bthome => advert
                .service16(bthome::UUID)
                .is_some_and(bthome::looks_like),
            Format::Ruuvi => advert
                .manufacturer(ruuvi::COMPANY)
                .is_some_and(ruuvi::looks_like),
            Format::Pvvx => advert
                .service16(xiaomi::UUID)
                .is_some_and(|data| data.len() == xiaomi::PVVX_LEN),
            Format::Atc => advert
                .service16(xiaomi::UUID)
                .is_some_and(|data| data.len() == xiaomi::ATC_LEN),
            Format::Ibeacon => advert
                .manufacturer(beacon::APPLE)
                .is_some_and(beacon::looks_like_ibeacon),
            Format::Eddystone => advert
                .service16(beacon::EDDYSTONE_UUID)
                .is_some_and(beacon::looks_like_eddystone),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One decoded point: a name from README.md's table, its unit, its reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub name: Cow<'static, str>,
    pub unit: Option<&'static str>,
    pub reading: Reading,
}

impl Decoded {
    fn good(name: &'static str, unit: Option<&'static str>, value: Value) -> Self {
        Decoded {
            name: Cow::Borrowed(name),
            unit,
            reading: Reading::Good(value),
        }
    }

    /// A field the device marks as "not available": a point without a
    /// value, so that a sentinel is never passed on as a measurement.
    fn not_available(name: &'static str, unit: Option<&'static str>) -> Self {
        Decoded {
            name: Cow::Borrowed(name),
            unit,
            reading: Reading::Bad("not available".into()),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("{format} payload: {reason}")]
    Malformed {
        format: &'static str,
        reason: String,
    },
    #[error("BTHome payload failed authentication (wrong bind key or tampered)")]
    Unauthentic,
    #[error("BTHome payload replayed: counter {counter} is not after {last}")]
    Replayed { counter: u32, last: u32 },
    #[error("BTHome payload is encrypted and no bind_key_file is configured")]
    NoKey,
    /// A device with a bind key sent a plain packet: anyone nearby can
    /// send those, so it is refused rather than trusted.
    #[error("BTHome payload is not encrypted although a bind_key_file is configured; refused as possibly spoofed")]
    NotEncrypted,
}

impl DecodeError {
    fn malformed(format: Format, reason: impl Into<String>) -> Self {
        DecodeError::Malformed {
            format: format.name(),
            reason: reason.into(),
        }
    }
}

/// Decodes one device's advertisements; keeps what must be remembered
/// between them (BTHome's replay counter).
#[derive(Clone)]
pub struct AdvertDecoder {
    format: Format,
    bind_key: Option<[u8; 16]>,
    /// The BTHome counter of the last packet accepted, None before the first.
    last_counter: Option<u32>,
}

impl fmt::Debug for AdvertDecoder {
    // By hand so that the bind key never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdvertDecoder")
            .field("format", &self.format)
            .field("bind_key", &self.bind_key.map(|_| "<redacted>"))
            .field("last_counter", &self.last_counter)
            .finish()
    }
}

impl AdvertDecoder {
    /// `bind_key`: the BTHome AES key (16 bytes) when configured. Other
    /// formats are never encrypted and ignore it.
    pub fn new(format: Format, bind_key: Option<[u8; 16]>) -> Self {
        AdvertDecoder {
            format,
            bind_key,
            last_counter: None,
        }
    }

    /// The format this decoder reads.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Ok(None): the advertisement carries no data of this format (e.g. only
    /// an RSSI update, or another format's data).
    /// Ok(Some(points)): decoded points in a stable order.
    /// Err: malformed/unauthentic/replayed; the state (counter) is not
    /// advanced on error.
    pub fn decode(&mut self, advert: &Advertisement) -> Result<Option<Vec<Decoded>>, DecodeError> {
        match self.format {
            Format::Bthome => {
                let Some(data) = advert.service16(bthome::UUID) else {
                    return Ok(None);
                };
                let packet = bthome::decode(
                    data,
                    advert.address,
                    self.bind_key.as_ref(),
                    self.last_counter,
                )?;
                if packet.counter.is_some() {
                    self.last_counter = packet.counter;
                }
                Ok(Some(packet.points))
            }
            Format::Ruuvi => advert
                .manufacturer(ruuvi::COMPANY)
                .map(ruuvi::decode)
                .transpose(),
            Format::Pvvx => match advert.service16(xiaomi::UUID) {
                Some(data) if data.len() == xiaomi::ATC_LEN => Ok(None),
                Some(data) => xiaomi::decode_pvvx(data).map(Some),
                None => Ok(None),
            },
            Format::Atc => match advert.service16(xiaomi::UUID) {
                Some(data) if data.len() == xiaomi::PVVX_LEN => Ok(None),
                Some(data) => xiaomi::decode_atc(data).map(Some),
                None => Ok(None),
            },
            Format::Ibeacon => match advert.manufacturer(beacon::APPLE) {
                // Apple sends other kinds of manufacturer data too
                // (AirPods, Handoff...): only the iBeacon kind is ours.
                Some(data) if beacon::is_ibeacon_kind(data) => {
                    beacon::decode_ibeacon(data).map(Some)
                }
                _ => Ok(None),
            },
            Format::Eddystone => advert
                .service16(beacon::EDDYSTONE_UUID)
                .map(beacon::decode_eddystone)
                .transpose(),
        }
    }
}

/// Reads fixed-size integers from a slice without panicking: every accessor
/// returns None past the end.
fn bytes<const N: usize>(data: &[u8], at: usize) -> Option<[u8; N]> {
    data.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Lower-case hex of some bytes, as identifiers are shown.
fn lower_hex(data: &[u8]) -> String {
    use fmt::Write;
    let mut text = String::with_capacity(data.len() * 2);
    for byte in data {
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
pub(crate) mod test_support {
    use kite_core::{Reading, Value};

    use super::Decoded;
    use crate::advert::{uuid16, Advertisement};

    pub fn hex(text: &str) -> Vec<u8> {
        let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("test hex"))
            .collect()
    }

    pub fn service(uuid: u16, data: Vec<u8>) -> Advertisement {
        Advertisement {
            service_data: vec![(uuid16(uuid), data)],
            ..Default::default()
        }
    }

    pub fn manufacturer(company: u16, data: Vec<u8>) -> Advertisement {
        Advertisement {
            manufacturer_data: vec![(company, data)],
            ..Default::default()
        }
    }

    /// Name, unit and reading of each point, for compact assertions.
    pub fn table(points: &[Decoded]) -> Vec<(String, Option<&'static str>, Reading)> {
        points
            .iter()
            .map(|point| (point.name.to_string(), point.unit, point.reading.clone()))
            .collect()
    }

    pub fn float(value: f64) -> Reading {
        Reading::Good(Value::Float(value))
    }

    pub fn uint(value: u64) -> Reading {
        Reading::Good(Value::UInt(value))
    }

    pub fn int(value: i64) -> Reading {
        Reading::Good(Value::Int(value))
    }

    pub fn text(value: &str) -> Reading {
        Reading::Good(Value::Text(value.into()))
    }

    pub fn boolean(value: bool) -> Reading {
        Reading::Good(Value::Bool(value))
    }

    pub fn not_available() -> Reading {
        Reading::Bad("not available".into())
    }

    /// Numbers are finite, names are non-empty snake_case.
    pub fn assert_sane(points: &[Decoded]) {
        for point in points {
            assert!(!point.name.is_empty(), "{point:?}");
            assert!(
                point
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{point:?}"
            );
            if let Reading::Good(Value::Float(v)) = point.reading {
                assert!(v.is_finite(), "{point:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::test_support::*;
    use super::*;
    use crate::advert::{uuid16, Address};

    #[test]
    fn names_round_trip() {
        for format in Format::ALL {
            assert_eq!(Format::from_name(format.name()), Some(format));
            assert_eq!(format.to_string(), format.name());
        }
        assert_eq!(Format::from_name("BTHome"), None);
        assert_eq!(Format::from_name("xiaomi"), None);
        assert_eq!(Format::from_name(""), None);
    }

    #[test]
    fn each_format_is_recognised() {
        let cases = [
            // bthome.io, "BTHome Data format": temperature and humidity.
            (service(0xfcd2, hex("40 02C409 03BF13")), Format::Bthome),
            // docs.ruuvi.com, "Data format 5": valid data.
            (
                manufacturer(
                    0x0499,
                    hex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"),
                ),
                Format::Ruuvi,
            ),
            (
                service(0x181a, hex("a5808f38c1a4 2c09 a016 e40b 55 07 04")),
                Format::Pvvx,
            ),
            (
                service(0x181a, hex("a4c1388f80a5 00f3 2f 55 0be4 07")),
                Format::Atc,
            ),
            (
                manufacturer(
                    0x004c,
                    hex("0215 e2c56db5dffb48d2b060d0f5a71096e0 0001 0002 c5"),
                ),
                Format::Ibeacon,
            ),
            (
                service(0xfeaa, hex("10 eb 03 676f6f2e676c2f53367a543650")),
                Format::Eddystone,
            ),
        ];
        for (advert, format) in cases {
            assert_eq!(Format::recognise(&advert), Some(format), "{advert:?}");
        }
    }

    #[test]
    fn nothing_is_recognised_in_foreign_data() {
        let cases = [
            Advertisement::default(),
            Advertisement {
                rssi: Some(-70),
                ..Default::default()
            },
            // Microsoft's Swift Pair, Apple's Handoff, a Ruuvi format 3.
            manufacturer(0x0006, hex("0301 80 0100")),
            manufacturer(0x004c, hex("0c0e 00 1234 5678 9abc def0 1234 5678")),
            manufacturer(0x0499, hex("03291A1ECE1EFC18F94202CA0B53")),
            // BTHome v1 info byte in the v2 UUID, an 11-byte 0x181a.
            service(0xfcd2, hex("20 02C409")),
            service(0x181a, hex("0102030405060708090a0b")),
            service(0xfeaa, hex("")),
        ];
        for advert in cases {
            assert_eq!(Format::recognise(&advert), None, "{advert:?}");
        }
    }

    #[test]
    fn a_decoder_ignores_advertisements_without_its_data() {
        let rssi_only = Advertisement {
            rssi: Some(-60),
            ..Default::default()
        };
        let bthome = service(0xfcd2, hex("40 02C409"));
        for format in Format::ALL {
            let mut decoder = AdvertDecoder::new(format, None);
            assert_eq!(decoder.format(), format);
            assert_eq!(decoder.decode(&rssi_only), Ok(None), "{format}");
            if format != Format::Bthome {
                assert_eq!(decoder.decode(&bthome), Ok(None), "{format}");
            }
        }
        // The other custom 0x181a format is the other decoder's.
        let atc = service(0x181a, hex("a4c1388f80a5 00f3 2f 55 0be4 07"));
        let pvvx = service(0x181a, hex("a5808f38c1a4 2c09 a016 e40b 55 07 04"));
        assert_eq!(
            AdvertDecoder::new(Format::Pvvx, None).decode(&atc),
            Ok(None)
        );
        assert_eq!(
            AdvertDecoder::new(Format::Atc, None).decode(&pvvx),
            Ok(None)
        );
    }

    #[test]
    fn the_bind_key_is_not_shown() {
        let decoder = AdvertDecoder::new(Format::Bthome, Some([0x23; 16]));
        let shown = format!("{decoder:?}");
        assert!(shown.contains("redacted"), "{shown}");
        assert!(!shown.contains("35"), "{shown}");
    }

    fn any_advert() -> impl Strategy<Value = Advertisement> {
        let uuid = prop_oneof![Just(0xfcd2u16), Just(0x181a), Just(0xfeaa), any::<u16>()];
        let company = prop_oneof![Just(0x0499u16), Just(0x004c), any::<u16>()];
        (
            proptest::option::of(any::<[u8; 6]>()),
            proptest::collection::vec(
                (company, proptest::collection::vec(any::<u8>(), 0..40)),
                0..3,
            ),
            proptest::collection::vec((uuid, proptest::collection::vec(any::<u8>(), 0..40)), 0..3),
        )
            .prop_map(|(address, manufacturer_data, service_data)| Advertisement {
                address: address.map(Address),
                manufacturer_data,
                service_data: service_data
                    .into_iter()
                    .map(|(uuid, data)| (uuid16(uuid), data))
                    .collect(),
                ..Default::default()
            })
    }

    proptest! {
        #[test]
        fn any_advertisement_decodes_or_errs_with_finite_numbers(
            advert in any_advert(),
            key in proptest::option::of(any::<[u8; 16]>()),
        ) {
            let recognised = Format::recognise(&advert);
            for format in Format::ALL {
                let mut decoder = AdvertDecoder::new(format, key);
                match decoder.decode(&advert) {
                    Ok(Some(points)) => assert_sane(&points),
                    Ok(None) => prop_assert_ne!(recognised, Some(format)),
                    Err(error) => prop_assert!(!error.to_string().is_empty()),
                }
            }
        }
    }
}
