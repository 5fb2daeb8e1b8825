//! Beacons: Apple's iBeacon (manufacturer data of Apple, 0x004C) and
//! Google's Eddystone (service data 0xFEAA: UID, URL, TLM and EID frames).
//! All multi-byte fields are big-endian.

use kite_core::Value;

use super::{bytes, lower_hex, DecodeError, Decoded, Format};

/// Apple's company identifier.
pub(super) const APPLE: u16 = 0x004c;
/// iBeacon's type and length bytes at the start of Apple's data.
const IBEACON_PREFIX: [u8; 2] = [0x02, 0x15];
/// Prefix, UUID (16), major (2), minor (2), measured power (1).
const IBEACON_LEN: usize = 23;

/// The Eddystone service UUID.
pub(super) const EDDYSTONE_UUID: u16 = 0xfeaa;
const UID: u8 = 0x00;
const URL: u8 = 0x10;
const TLM: u8 = 0x20;
const EID: u8 = 0x30;
/// Frame type, tx power, namespace (10), instance (6); two reserved bytes
/// may follow.
const UID_LEN: usize = 18;
/// Frame type, version, voltage (2), temperature (2), PDU count (4),
/// uptime (4).
const TLM_LEN: usize = 14;
/// Frame type, tx power, ephemeral id (8).
const EID_LEN: usize = 10;

/// True when Apple's manufacturer data is of the iBeacon kind.
pub(super) fn is_ibeacon_kind(data: &[u8]) -> bool {
    data.starts_with(&IBEACON_PREFIX)
}

/// True when Apple's manufacturer data is a whole iBeacon.
pub(super) fn looks_like_ibeacon(data: &[u8]) -> bool {
    is_ibeacon_kind(data) && data.len() == IBEACON_LEN
}

/// True when service data 0xFEAA starts with a known frame type.
pub(super) fn looks_like_eddystone(data: &[u8]) -> bool {
    matches!(data.first(), Some(&(UID | URL | TLM | EID)))
}

fn tx_power(power: u8) -> Decoded {
    Decoded::good("tx_power", Some("dBm"), Value::Int(i64::from(power as i8)))
}

/// Decodes iBeacon manufacturer data: proximity UUID, major, minor and the
/// measured power at 1 m.
pub(super) fn decode_ibeacon(data: &[u8]) -> Result<Vec<Decoded>, DecodeError> {
    let fields: [u8; IBEACON_LEN] = match bytes(data, 0) {
        Some(fields) if data.len() == IBEACON_LEN && is_ibeacon_kind(data) => fields,
        _ => {
            return Err(DecodeError::malformed(
                Format::Ibeacon,
                format!(
                    "iBeacon data of {} bytes, expected {IBEACON_LEN}",
                    data.len()
                ),
            ))
        }
    };
    let uuid = lower_hex(&fields[2..18]);
    // 8-4-4-4-12, as UUIDs are written.
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &uuid[..8],
        &uuid[8..12],
        &uuid[12..16],
        &uuid[16..20],
        &uuid[20..]
    );
    let major = u16::from_be_bytes([fields[18], fields[19]]);
    let minor = u16::from_be_bytes([fields[20], fields[21]]);
    Ok(vec![
        Decoded::good("uuid", None, Value::Text(uuid)),
        Decoded::good("major", None, Value::UInt(u64::from(major))),
        Decoded::good("minor", None, Value::UInt(u64::from(minor))),
        tx_power(fields[22]),
    ])
}

fn eddystone_error(reason: impl Into<String>) -> DecodeError {
    DecodeError::malformed(Format::Eddystone, reason)
}

/// Decodes one Eddystone frame. Tx power is calibrated at 0 m here, unlike
/// iBeacon's 1 m.
pub(super) fn decode_eddystone(data: &[u8]) -> Result<Vec<Decoded>, DecodeError> {
    let too_short = |frame: &str, needed: usize| {
        eddystone_error(format!(
            "{frame} frame of {} bytes, needs {needed}",
            data.len()
        ))
    };
    match data.first() {
        None => Err(eddystone_error("empty service data")),
        Some(&UID) => {
            let fields: [u8; UID_LEN] = bytes(data, 0).ok_or_else(|| too_short("UID", UID_LEN))?;
            Ok(vec![
                Decoded::good("namespace", None, Value::Text(lower_hex(&fields[2..12]))),
                Decoded::good("instance", None, Value::Text(lower_hex(&fields[12..18]))),
                tx_power(fields[1]),
            ])
        }
        Some(&URL) => {
            let [_, power, scheme] = bytes(data, 0).ok_or_else(|| too_short("URL", 3))?;
            let url = url(scheme, &data[3..])?;
            Ok(vec![
                Decoded::good("url", None, Value::Text(url)),
                tx_power(power),
            ])
        }
        Some(&TLM) => {
            let fields: [u8; TLM_LEN] = bytes(data, 0).ok_or_else(|| too_short("TLM", TLM_LEN))?;
            match fields[1] {
                0 => Ok(telemetry(&fields)),
                1 => Err(eddystone_error(
                    "encrypted TLM frame (eTLM), which needs the beacon's identity key",
                )),
                version => Err(eddystone_error(format!("TLM version {version} is unknown"))),
            }
        }
        Some(&EID) => {
            let fields: [u8; EID_LEN] = bytes(data, 0).ok_or_else(|| too_short("EID", EID_LEN))?;
            Ok(vec![
                Decoded::good("eid", None, Value::Text(lower_hex(&fields[2..10]))),
                tx_power(fields[1]),
            ])
        }
        Some(other) => Err(eddystone_error(format!("unknown frame type 0x{other:02x}"))),
    }
}

/// The points of a plain TLM frame. A beacon without a battery sends 0 mV,
/// one without a thermometer 0x8000: both are "not available".
fn telemetry(fields: &[u8; TLM_LEN]) -> Vec<Decoded> {
    let millivolts = u16::from_be_bytes([fields[2], fields[3]]);
    let temperature = i16::from_be_bytes([fields[4], fields[5]]);
    let pdus = u32::from_be_bytes([fields[6], fields[7], fields[8], fields[9]]);
    let tenths = u32::from_be_bytes([fields[10], fields[11], fields[12], fields[13]]);
    vec![
        if millivolts == 0 {
            Decoded::not_available("voltage", Some("V"))
        } else {
            Decoded::good(
                "voltage",
                Some("V"),
                Value::Float(f64::from(millivolts) / 1000.0),
            )
        },
        if temperature == i16::MIN {
            Decoded::not_available("temperature", Some("degC"))
        } else {
            // Signed 8.8 fixed point: exact in binary floating point.
            Decoded::good(
                "temperature",
                Some("degC"),
                Value::Float(f64::from(temperature) / 256.0),
            )
        },
        Decoded::good("count", None, Value::UInt(u64::from(pdus))),
        Decoded::good("uptime", Some("s"), Value::Float(f64::from(tenths) / 10.0)),
    ]
}

/// Expands an Eddystone-URL: the scheme prefix code, then printable ASCII
/// with the codes 0x00-0x0D standing for common domain endings.
fn url(scheme: u8, encoded: &[u8]) -> Result<String, DecodeError> {
    const SCHEMES: [&str; 4] = ["http://www.", "https://www.", "http://", "https://"];
    const ENDINGS: [&str; 14] = [
        ".com/", ".org/", ".edu/", ".net/", ".info/", ".biz/", ".gov/", ".com", ".org", ".edu",
        ".net", ".info", ".biz", ".gov",
    ];
    let mut url = SCHEMES
        .get(usize::from(scheme))
        .ok_or_else(|| eddystone_error(format!("URL scheme code 0x{scheme:02x} is reserved")))?
        .to_string();
    for &byte in encoded {
        if let Some(ending) = ENDINGS.get(usize::from(byte)) {
            url.push_str(ending);
        } else if byte.is_ascii_graphic() {
            url.push(char::from(byte));
        } else {
            return Err(eddystone_error(format!(
                "URL byte 0x{byte:02x} is reserved"
            )));
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use kite_core::Reading;
    use proptest::prelude::*;

    use super::super::test_support::*;
    use super::super::AdvertDecoder;
    use super::*;

    type Row = (String, Option<&'static str>, Reading);

    fn row(name: &str, unit: Option<&'static str>, reading: Reading) -> Row {
        (name.to_string(), unit, reading)
    }

    fn eddystone(data: &str) -> Vec<Row> {
        let points = decode_eddystone(&hex(data)).expect(data);
        assert_sane(&points);
        table(&points)
    }

    #[test]
    fn ibeacon() {
        // Layout of Apple's "Proximity Beacon Specification"; the UUID is
        // the one of Apple's AirLocate sample, major 1, minor 2, -59 dBm.
        let data = hex("0215 e2c56db5dffb48d2b060d0f5a71096e0 0001 0002 c5");
        let points = decode_ibeacon(&data).unwrap();
        assert_eq!(
            table(&points),
            [
                row("uuid", None, text("e2c56db5-dffb-48d2-b060-d0f5a71096e0")),
                row("major", None, uint(1)),
                row("minor", None, uint(2)),
                row("tx_power", Some("dBm"), int(-59)),
            ]
        );
        let decoded = AdvertDecoder::new(Format::Ibeacon, None).decode(&manufacturer(APPLE, data));
        assert_eq!(decoded.unwrap().unwrap(), points);
    }

    #[test]
    fn other_apple_data_is_not_an_ibeacon() {
        let mut decoder = AdvertDecoder::new(Format::Ibeacon, None);
        // Handoff (type 0x0c) and Nearby Info (0x10).
        for data in ["0c0e0012345678", "1005031c0e3f1a"] {
            assert_eq!(
                decoder.decode(&manufacturer(APPLE, hex(data))),
                Ok(None),
                "{data}"
            );
        }
        let short = decoder.decode(&manufacturer(APPLE, hex("0215 e2c56db5")));
        assert!(matches!(
            short,
            Err(DecodeError::Malformed {
                format: "ibeacon",
                ..
            })
        ));
        let long = hex("0215 e2c56db5dffb48d2b060d0f5a71096e0 0001 0002 c5 00");
        assert!(decode_ibeacon(&long).is_err());
    }

    #[test]
    fn eddystone_uid() {
        // google/eddystone, "Eddystone-UID": the namespace of its "Elided
        // Version 4 UUID" example, instance 1, -18 dBm at 0 m (its tx power
        // example 0xEE), with and without the reserved bytes.
        let expected = [
            row("namespace", None, text("8b0ca750095477cb3e77")),
            row("instance", None, text("000000000001")),
            row("tx_power", Some("dBm"), int(-18)),
        ];
        assert_eq!(
            eddystone("00 ee 8b0ca750095477cb3e77 000000000001 0000"),
            expected
        );
        assert_eq!(
            eddystone("00 ee 8b0ca750095477cb3e77 000000000001"),
            expected
        );
    }

    #[test]
    fn eddystone_url() {
        // google/eddystone, "Eddystone-URL": its example URL
        // https://goo.gl/S6zT6P, +18 dBm (its example 0x12).
        assert_eq!(
            eddystone("10 12 03 676f6f2e676c2f53367a543650"),
            [
                row("url", None, text("https://goo.gl/S6zT6P")),
                row("tx_power", Some("dBm"), int(18)),
            ]
        );
        // Each scheme and expansion code.
        assert_eq!(
            eddystone("10 00 00 6578616d706c65 07")[0],
            row("url", None, text("http://www.example.com"))
        );
        assert_eq!(
            eddystone("10 00 01 61 00 61 01 61 02 61 03 61 04 61 05 61 06")[0],
            row(
                "url",
                None,
                text("https://www.a.com/a.org/a.edu/a.net/a.info/a.biz/a.gov/")
            )
        );
        assert_eq!(
            eddystone("10 00 02 61 08 61 09 61 0a 61 0b 61 0c 61 0d")[0],
            row("url", None, text("http://a.orga.edua.neta.infoa.biza.gov"))
        );
        for reserved in [
            "10 00 04 61",
            "10 00 03 61 0e",
            "10 00 03 20",
            "10 00 03 7f",
            "10 00 03 ff",
            "10 00",
        ] {
            assert!(decode_eddystone(&hex(reserved)).is_err(), "{reserved}");
        }
    }

    #[test]
    fn eddystone_tlm() {
        // google/eddystone, "Unencrypted TLM Frame Specification": 3.0 V,
        // 24.5 degC (0x1880 in 8.8), 1 000 000 PDUs, 123 456.7 s.
        assert_eq!(
            eddystone("20 00 0bb8 1880 000f4240 0012d687"),
            [
                row("voltage", Some("V"), float(3.0)),
                row("temperature", Some("degC"), float(24.5)),
                row("count", None, uint(1_000_000)),
                row("uptime", Some("s"), float(123456.7)),
            ]
        );
        // Below zero: -1.25 degC is 0xfec0.
        assert_eq!(
            eddystone("20 00 0bb8 fec0 00000000 00000000")[1],
            row("temperature", Some("degC"), float(-1.25))
        );
        // USB powered and without a thermometer: 0 mV, 0x8000.
        let rows = eddystone("20 00 0000 8000 00000001 00000002");
        assert_eq!(rows[0], row("voltage", Some("V"), not_available()));
        assert_eq!(rows[1], row("temperature", Some("degC"), not_available()));
        // Encrypted (version 1), unknown versions, short frames.
        for bad in [
            "20 01 0bb8 1880 000f4240 0012d687",
            "20 02 0bb8 1880 000f4240 0012d687",
            "20 00 0bb8 1880",
        ] {
            assert!(decode_eddystone(&hex(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn eddystone_eid_and_unknown_frames() {
        // google/eddystone, "Eddystone-EID": frame 0x30, tx power, 8-byte id.
        assert_eq!(
            eddystone("30 ee 0123456789abcdef"),
            [
                row("eid", None, text("0123456789abcdef")),
                row("tx_power", Some("dBm"), int(-18)),
            ]
        );
        for bad in ["", "40 00", "30 ee 01", "00 ee 8b0ca750"] {
            assert!(
                matches!(
                    decode_eddystone(&hex(bad)),
                    Err(DecodeError::Malformed {
                        format: "eddystone",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_data_never_panics(data in proptest::collection::vec(any::<u8>(), 0..32)) {
            if let Ok(Some(points)) = AdvertDecoder::new(Format::Ibeacon, None).decode(&manufacturer(APPLE, data.clone())) {
                assert_sane(&points);
                prop_assert_eq!(points.len(), 4);
            }
            if let Ok(Some(points)) = AdvertDecoder::new(Format::Eddystone, None).decode(&service(EDDYSTONE_UUID, data)) {
                assert_sane(&points);
            }
        }

        #[test]
        fn any_url_decodes_to_ascii(scheme in 0u8..4, encoded in proptest::collection::vec(any::<u8>(), 0..18)) {
            if let Ok(url) = url(scheme, &encoded) {
                prop_assert!(url.is_ascii() && url.starts_with("http"));
            }
        }
    }
}
