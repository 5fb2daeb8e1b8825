//! The custom firmwares of Xiaomi thermometers (LYWSD03MMC and kin), both
//! on service data 0x181A (Environmental Sensing), told apart by length:
//! atc1441's format (13 bytes, big-endian, 0.1 degC and whole percent) and
//! pvvx's custom format (15 bytes, little-endian, 0.01 units).

use kite_core::Value;

use super::{bytes, DecodeError, Decoded, Format};

/// Environmental Sensing service UUID.
pub(super) const UUID: u16 = 0x181a;
/// MAC (6), temperature (2), humidity, battery %, battery mV (2), counter.
pub(super) const ATC_LEN: usize = 13;
/// MAC (6), temperature (2), humidity (2), battery mV (2), battery %,
/// counter, flags.
pub(super) const PVVX_LEN: usize = 15;

fn wrong_length(format: Format, expected: usize, data: &[u8]) -> DecodeError {
    DecodeError::malformed(
        format,
        format!(
            "service data 0x181a of {} bytes, expected {expected}",
            data.len()
        ),
    )
}

fn volts(millivolts: u16) -> Value {
    Value::Float(f64::from(millivolts) / 1000.0)
}

/// Decodes atc1441's format: the MAC in display order, then temperature
/// (i16, 0.1 degC), humidity (%), battery (%), battery (mV), a counter
/// that changes with each new reading.
pub(super) fn decode_atc(data: &[u8]) -> Result<Vec<Decoded>, DecodeError> {
    let fields: [u8; ATC_LEN] =
        bytes(data, 0).ok_or_else(|| wrong_length(Format::Atc, ATC_LEN, data))?;
    if data.len() != ATC_LEN {
        return Err(wrong_length(Format::Atc, ATC_LEN, data));
    }
    let temperature = i16::from_be_bytes([fields[6], fields[7]]);
    let millivolts = u16::from_be_bytes([fields[10], fields[11]]);
    Ok(vec![
        Decoded::good(
            "temperature",
            Some("degC"),
            Value::Float(f64::from(temperature) / 10.0),
        ),
        Decoded::good("humidity", Some("%"), Value::Float(f64::from(fields[8]))),
        Decoded::good("battery", Some("%"), Value::UInt(u64::from(fields[9]))),
        Decoded::good("voltage", Some("V"), volts(millivolts)),
        Decoded::good("packet_id", None, Value::UInt(u64::from(fields[12]))),
    ])
}

/// Decodes pvvx's custom format: the MAC reversed, then temperature (i16,
/// 0.01 degC), humidity (u16, 0.01 %), battery (mV), battery (%), the
/// measurement count, and flags (trigger and reed switch state, not
/// decoded).
pub(super) fn decode_pvvx(data: &[u8]) -> Result<Vec<Decoded>, DecodeError> {
    let fields: [u8; PVVX_LEN] =
        bytes(data, 0).ok_or_else(|| wrong_length(Format::Pvvx, PVVX_LEN, data))?;
    if data.len() != PVVX_LEN {
        return Err(wrong_length(Format::Pvvx, PVVX_LEN, data));
    }
    let temperature = i16::from_le_bytes([fields[6], fields[7]]);
    let humidity = u16::from_le_bytes([fields[8], fields[9]]);
    let millivolts = u16::from_le_bytes([fields[10], fields[11]]);
    Ok(vec![
        Decoded::good(
            "temperature",
            Some("degC"),
            Value::Float(f64::from(temperature) / 100.0),
        ),
        Decoded::good(
            "humidity",
            Some("%"),
            Value::Float(f64::from(humidity) / 100.0),
        ),
        Decoded::good("battery", Some("%"), Value::UInt(u64::from(fields[12]))),
        Decoded::good("voltage", Some("V"), volts(millivolts)),
        Decoded::good("packet_id", None, Value::UInt(u64::from(fields[13]))),
    ])
}

#[cfg(test)]
mod tests {
    use kite_core::Reading;
    use proptest::prelude::*;

    use super::super::test_support::*;
    use super::super::AdvertDecoder;
    use super::*;

    type Row = (String, Option<&'static str>, Reading);

    fn expected(values: [Reading; 5]) -> Vec<Row> {
        let names = [
            ("temperature", Some("degC")),
            ("humidity", Some("%")),
            ("battery", Some("%")),
            ("voltage", Some("V")),
            ("packet_id", None),
        ];
        names
            .into_iter()
            .zip(values)
            .map(|((name, unit), reading)| (name.to_string(), unit, reading))
            .collect()
    }

    #[test]
    fn atc1441_format() {
        // Built from the atc1441/ATC_MiThermometer README, "Advertising
        // format of the custom firmware": MAC A4:C1:38:8F:80:A5, 24.3 degC,
        // 47 %, 85 %, 3044 mV, counter 7.
        let points = decode_atc(&hex("a4c1388f80a5 00f3 2f 55 0be4 07")).unwrap();
        assert_eq!(
            table(&points),
            expected([float(24.3), float(47.0), uint(85), float(3.044), uint(7)])
        );
        // Below zero: -5.1 degC is 0xffcd.
        let points = decode_atc(&hex("a4c1388f80a5 ffcd 2f 55 0be4 08")).unwrap();
        assert_eq!(points[0].reading, float(-5.1));
    }

    #[test]
    fn pvvx_custom_format() {
        // Built from the pvvx/ATC_MiThermometer README, "Custom format (all
        // data little-endian)": the same MAC reversed, 23.48 degC, 57.92 %,
        // 3044 mV, 85 %, count 7, flags 0x04.
        let points = decode_pvvx(&hex("a5808f38c1a4 2c09 a016 e40b 55 07 04")).unwrap();
        assert_eq!(
            table(&points),
            expected([float(23.48), float(57.92), uint(85), float(3.044), uint(7)])
        );
        // Below zero: -12.34 degC is 0xfb2e.
        let points = decode_pvvx(&hex("a5808f38c1a4 2efb a016 e40b 55 08 00")).unwrap();
        assert_eq!(points[0].reading, float(-12.34));
    }

    #[test]
    fn other_lengths_are_errors() {
        for length in [0, 8, 11, 12, 14, 16, 19] {
            let data = vec![0u8; length];
            assert!(matches!(
                decode_atc(&data),
                Err(DecodeError::Malformed { format: "atc", .. })
            ));
            if length != ATC_LEN {
                assert!(matches!(
                    AdvertDecoder::new(Format::Pvvx, None).decode(&service(UUID, data)),
                    Err(DecodeError::Malformed { format: "pvvx", .. })
                ));
            }
        }
    }

    proptest! {
        #[test]
        fn any_service_data_never_panics(data in proptest::collection::vec(any::<u8>(), 0..24)) {
            let advert = service(UUID, data);
            for format in [Format::Atc, Format::Pvvx] {
                if let Ok(Some(points)) = AdvertDecoder::new(format, None).decode(&advert) {
                    assert_sane(&points);
                    prop_assert_eq!(points.len(), 5);
                }
            }
        }
    }
}
