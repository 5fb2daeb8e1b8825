//! A codec for a BLE sensor whose advertisement no built-in decoder reads:
//! its manufacturer data (under one company id) is a little-endian i16
//! temperature in 0.01 degC, a humidity byte in percent and a battery byte
//! in percent. Kite gives a BLE codec the advertisement's data as the AD
//! structures it came in: a length byte, a type byte, the payload; the
//! manufacturer data structure (type `0xFF`) starts with the company id.
//!
//! `codec_config`: `{"company": 65535}` (the company id, `0xFFFF` by default).

use kite_plugin_sdk::{export_codec, serde_json, Codec, Points};

const MANUFACTURER_DATA: u8 = 0xFF;

struct SensorCodec {
    company: u16,
}

/// The AD structures in `data`: (type, payload). A length that runs past
/// the end is an error, not a short read.
fn structures(mut data: &[u8]) -> Result<Vec<(u8, &[u8])>, String> {
    let mut found = Vec::new();
    while let [length, rest @ ..] = data {
        let length = usize::from(*length);
        if length == 0 {
            break;
        }
        let Some((structure, next)) = rest.split_at_checked(length) else {
            return Err(format!("an AD structure of {length} bytes runs past the end"));
        };
        found.push((structure[0], &structure[1..]));
        data = next;
    }
    Ok(found)
}

impl Codec for SensorCodec {
    fn init(config: serde_json::Value) -> Result<Self, String> {
        let company = kite_plugin_sdk::config_f64(&config, "company", 65535.0)?;
        if !(0.0..=65535.0).contains(&company) || company.fract() != 0.0 {
            return Err(format!("config.company {company}: expected a company id, 0 to 65535"));
        }
        Ok(SensorCodec { company: company as u16 })
    }

    fn decode(&mut self, frame: &[u8], out: &mut Points) -> Result<(), String> {
        let company = self.company.to_le_bytes();
        let data = structures(frame)?
            .into_iter()
            .find_map(|(kind, payload)| {
                (kind == MANUFACTURER_DATA && payload.starts_with(&company)).then(|| &payload[2..])
            });
        // Another sensor's advertisement, or one without readings: nothing to say.
        let Some(data) = data else { return Ok(()) };
        let [t0, t1, humidity, battery, ..] = *data else {
            return Err(format!("manufacturer data of {} bytes, 4 needed", data.len()));
        };
        out.good("temperature", f64::from(i16::from_le_bytes([t0, t1])) / 100.0, Some("degC"));
        out.good("humidity", i64::from(humidity), Some("%"));
        out.good("battery", i64::from(battery), Some("%"));
        Ok(())
    }
}

export_codec!(SensorCodec);
