//! RuuviTag data format 5 (RAWv2): manufacturer data of Ruuvi Innovations
//! (0x0499), 24 big-endian bytes. Each field has a "not available" value,
//! which becomes a Bad reading rather than a number.

use kite_core::Value;

use super::{bytes, DecodeError, Decoded, Format};

/// Ruuvi Innovations' company identifier.
pub(super) const COMPANY: u16 = 0x0499;

const RAWV2: u8 = 5;
/// Format byte, 17 bytes of measurements, the MAC.
const RAWV2_LEN: usize = 24;

/// True when manufacturer data is in the format this module decodes.
pub(super) fn looks_like(data: &[u8]) -> bool {
    data.first() == Some(&RAWV2) && data.len() >= RAWV2_LEN
}

fn malformed(reason: impl Into<String>) -> DecodeError {
    DecodeError::malformed(Format::Ruuvi, reason)
}

/// Decodes Ruuvi manufacturer data (the bytes after the company id).
pub(super) fn decode(data: &[u8]) -> Result<Vec<Decoded>, DecodeError> {
    match data.first() {
        None => return Err(malformed("empty manufacturer data")),
        Some(&RAWV2) => {}
        Some(other) => {
            return Err(malformed(format!(
                "data format {other} is not supported (only 5, RAWv2)"
            )))
        }
    }
    if data.len() < RAWV2_LEN {
        return Err(malformed(format!(
            "RAWv2 needs {RAWV2_LEN} bytes, got {}",
            data.len()
        )));
    }
    // The length check above makes every read below succeed; the
    // fallbacks only keep this free of panics.
    let u16_at = |at| {
        bytes::<2>(data, at)
            .map(u16::from_be_bytes)
            .unwrap_or(u16::MAX)
    };
    let i16_at = |at| {
        bytes::<2>(data, at)
            .map(i16::from_be_bytes)
            .unwrap_or(i16::MIN)
    };

    let mut points = Vec::with_capacity(10);
    let temperature = i16_at(1);
    points.push(if temperature == i16::MIN {
        Decoded::not_available("temperature", Some("degC"))
    } else {
        // 0.005 degC steps.
        Decoded::good(
            "temperature",
            Some("degC"),
            Value::Float(f64::from(i32::from(temperature) * 5) / 1000.0),
        )
    });
    let humidity = u16_at(3);
    points.push(if humidity == u16::MAX {
        Decoded::not_available("humidity", Some("%"))
    } else {
        // 0.0025 % steps.
        Decoded::good(
            "humidity",
            Some("%"),
            Value::Float(f64::from(u32::from(humidity) * 25) / 10_000.0),
        )
    });
    let pressure = u16_at(5);
    points.push(if pressure == u16::MAX {
        Decoded::not_available("pressure", Some("hPa"))
    } else {
        // Pa above 50 000 Pa.
        Decoded::good(
            "pressure",
            Some("hPa"),
            Value::Float(f64::from(u32::from(pressure) + 50_000) / 100.0),
        )
    });
    for (name, at) in [
        ("acceleration_x", 7),
        ("acceleration_y", 9),
        ("acceleration_z", 11),
    ] {
        let milli_g = i16_at(at);
        points.push(if milli_g == i16::MIN {
            Decoded::not_available(name, Some("g"))
        } else {
            Decoded::good(name, Some("g"), Value::Float(f64::from(milli_g) / 1000.0))
        });
    }
    // 11 bits of battery voltage (mV above 1600), 5 bits of transmit power
    // (2 dBm steps above -40 dBm).
    let power = u16_at(13);
    let millivolts = power >> 5;
    points.push(if millivolts == 0x7ff {
        Decoded::not_available("voltage", Some("V"))
    } else {
        Decoded::good(
            "voltage",
            Some("V"),
            Value::Float(f64::from(millivolts + 1600) / 1000.0),
        )
    });
    let tx_power = power & 0x1f;
    points.push(if tx_power == 0x1f {
        Decoded::not_available("tx_power", Some("dBm"))
    } else {
        Decoded::good(
            "tx_power",
            Some("dBm"),
            Value::Int(i64::from(tx_power) * 2 - 40),
        )
    });
    let movements = data.get(15).copied().unwrap_or(u8::MAX);
    points.push(if movements == u8::MAX {
        Decoded::not_available("count", None)
    } else {
        Decoded::good("count", None, Value::UInt(u64::from(movements)))
    });
    let sequence = u16_at(16);
    points.push(if sequence == u16::MAX {
        Decoded::not_available("packet_id", None)
    } else {
        Decoded::good("packet_id", None, Value::UInt(u64::from(sequence)))
    });
    Ok(points)
}

#[cfg(test)]
mod tests {
    use kite_core::Reading;
    use proptest::prelude::*;

    use super::super::test_support::*;
    use super::super::AdvertDecoder;
    use super::*;

    type Row = (String, Option<&'static str>, Reading);

    fn points(data: &str) -> Vec<Row> {
        let points = decode(&hex(data)).expect(data);
        assert_sane(&points);
        table(&points)
    }

    fn expected(values: [Reading; 10]) -> Vec<Row> {
        let names = [
            ("temperature", Some("degC")),
            ("humidity", Some("%")),
            ("pressure", Some("hPa")),
            ("acceleration_x", Some("g")),
            ("acceleration_y", Some("g")),
            ("acceleration_z", Some("g")),
            ("voltage", Some("V")),
            ("tx_power", Some("dBm")),
            ("count", None),
            ("packet_id", None),
        ];
        names
            .into_iter()
            .zip(values)
            .map(|((name, unit), reading)| (name.to_string(), unit, reading))
            .collect()
    }

    // The four test vectors of Ruuvi's "Data format 5 (RAWv2)" page.

    #[test]
    fn valid_data() {
        assert_eq!(
            points("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"),
            expected([
                float(24.3),
                float(53.49),
                float(1000.44),
                float(0.004),
                float(-0.004),
                float(1.036),
                float(2.977),
                int(4),
                uint(66),
                uint(205),
            ])
        );
    }

    #[test]
    fn maximum_values() {
        assert_eq!(
            points("057FFFFFFEFFFE7FFF7FFF7FFFFFDEFEFFFECBB8334C884F"),
            expected([
                float(163.835),
                float(163.835),
                float(1155.34),
                float(32.767),
                float(32.767),
                float(32.767),
                float(3.646),
                int(20),
                uint(254),
                uint(65534),
            ])
        );
    }

    #[test]
    fn minimum_values() {
        assert_eq!(
            points("058001000000008001800180010000000000CBB8334C884F"),
            expected([
                float(-163.835),
                float(0.0),
                float(500.0),
                float(-32.767),
                float(-32.767),
                float(-32.767),
                float(1.6),
                int(-40),
                uint(0),
                uint(0),
            ])
        );
    }

    #[test]
    fn invalid_values_are_all_not_available() {
        assert_eq!(
            points("058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF"),
            expected(std::array::from_fn(|_| not_available()))
        );
    }

    #[test]
    fn other_formats_and_short_data_are_errors() {
        for data in [
            "",
            // Ruuvi's "Data format 3 (RAWv1)" example.
            "03291A1ECE1EFC18F94202CA0B53",
            "0512FC5394C37C0004FFFC040CAC364200CD",
        ] {
            assert!(
                matches!(
                    decode(&hex(data)),
                    Err(DecodeError::Malformed {
                        format: "ruuvi",
                        ..
                    })
                ),
                "{data}"
            );
        }
    }

    #[test]
    fn the_decoder_reads_ruuvi_manufacturer_data() {
        let advert = manufacturer(
            COMPANY,
            hex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"),
        );
        let points = AdvertDecoder::new(Format::Ruuvi, None)
            .decode(&advert)
            .unwrap()
            .unwrap();
        assert_eq!(points.len(), 10);
    }

    proptest! {
        #[test]
        fn any_manufacturer_data_never_panics(data in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(points) = decode(&data) {
                assert_sane(&points);
                prop_assert_eq!(points.len(), 10);
            }
        }

        #[test]
        fn any_rawv2_fields_decode(fields in proptest::collection::vec(any::<u8>(), 23)) {
            let mut data = vec![RAWV2];
            data.extend_from_slice(&fields);
            let points = decode(&data).unwrap();
            assert_sane(&points);
        }
    }
}
