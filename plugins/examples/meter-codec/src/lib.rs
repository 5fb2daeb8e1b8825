//! A codec for a binary meter protocol that no config can describe: each
//! frame is `0xA5`, a length byte, records of one id byte and a big-endian
//! i32, and an XOR checksum of everything before it. Pair it with
//! `framing = "length-prefix"`, `length_offset = 1`, `length_adjust = 1`.
//!
//! `codec_config`: `{"points": {"1": {"name": "flow", "scale": 0.01, "unit": "m3/h"}}}`;
//! ids without an entry are published as `id<N>`, unscaled.

use std::collections::HashMap;

use kite_plugin_sdk::{export_codec, serde_json, Codec, Points};

struct PointDef {
    name: String,
    scale: f64,
    unit: Option<String>,
}

struct MeterCodec {
    points: HashMap<u8, PointDef>,
}

impl Codec for MeterCodec {
    fn init(config: serde_json::Value) -> Result<Self, String> {
        let mut points = HashMap::new();
        if let Some(table) = config.get("points") {
            let table = table.as_object().ok_or("config.points must be a table")?;
            for (id, def) in table {
                let id: u8 = id.parse().map_err(|_| format!("config.points: {id:?} is not an id 0 to 255"))?;
                let name = def
                    .get("name")
                    .and_then(|n| n.as_str())
                    .ok_or_else(|| format!("config.points.{id}.name must be a string"))?;
                let scale = kite_plugin_sdk::config_f64(def, "scale", 1.0)?;
                let unit = def.get("unit").and_then(|u| u.as_str()).map(str::to_string);
                points.insert(id, PointDef { name: name.to_string(), scale, unit });
            }
        }
        Ok(MeterCodec { points })
    }

    fn decode(&mut self, frame: &[u8], out: &mut Points) -> Result<(), String> {
        let [0xA5, length, body @ .., checksum] = frame else {
            return Err(format!("not a meter frame ({} bytes)", frame.len()));
        };
        let computed = frame[..frame.len() - 1].iter().fold(0u8, |x, b| x ^ b);
        if computed != *checksum {
            return Err(format!("checksum {checksum:#04x}, computed {computed:#04x}"));
        }
        if usize::from(*length) != body.len() || body.len() % 5 != 0 {
            return Err(format!("length {length} does not hold whole records"));
        }
        for record in body.chunks_exact(5) {
            let raw = i32::from_be_bytes([record[1], record[2], record[3], record[4]]);
            match self.points.get(&record[0]) {
                Some(def) => out.good(def.name.as_str(), f64::from(raw) * def.scale, def.unit.as_deref()),
                None => out.good(format!("id{}", record[0]), i64::from(raw), None),
            }
        }
        Ok(())
    }
}

export_codec!(MeterCodec);
