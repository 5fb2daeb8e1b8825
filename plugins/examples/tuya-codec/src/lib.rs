//! A codec for Tuya Zigbee devices, whose readings come as "datapoints" on
//! the manufacturer-specific cluster 0xEF00 rather than on the standard
//! clusters. Kite gives a Zigbee codec the cluster id (little-endian) and
//! then the whole ZCL frame.
//!
//! A datapoint report (cluster-specific commands 0x01, 0x02 or 0x06) is a
//! big-endian sequence number, then datapoints: id, type, big-endian
//! length, value (bool 0x01, big-endian i32 0x02, string 0x03, enum 0x04).
//!
//! `codec_config`: `{"dps": {"1": {"name": "temperature", "scale": 0.1, "unit": "degC"}}}`;
//! datapoints without an entry are published as `dp<N>`, unscaled.

use std::collections::HashMap;

use kite_plugin_sdk::{export_codec, serde_json, Codec, Points};

const TUYA: u16 = 0xEF00;

struct Datapoint {
    name: String,
    scale: f64,
    unit: Option<String>,
}

struct TuyaCodec {
    dps: HashMap<u8, Datapoint>,
}

impl Codec for TuyaCodec {
    fn init(config: serde_json::Value) -> Result<Self, String> {
        let mut dps = HashMap::new();
        if let Some(table) = config.get("dps") {
            let table = table.as_object().ok_or("config.dps must be a table")?;
            for (id, def) in table {
                let id: u8 = id.parse().map_err(|_| format!("config.dps: {id:?} is not a datapoint 0 to 255"))?;
                let name = def
                    .get("name")
                    .and_then(|n| n.as_str())
                    .ok_or_else(|| format!("config.dps.{id}.name must be a string"))?;
                let scale = kite_plugin_sdk::config_f64(def, "scale", 1.0)?;
                let unit = def.get("unit").and_then(|u| u.as_str()).map(str::to_string);
                dps.insert(id, Datapoint { name: name.to_string(), scale, unit });
            }
        }
        Ok(TuyaCodec { dps })
    }

    fn decode(&mut self, frame: &[u8], out: &mut Points) -> Result<(), String> {
        let [c0, c1, control, rest @ ..] = frame else {
            return Err(format!("a frame of {} bytes", frame.len()));
        };
        if u16::from_le_bytes([*c0, *c1]) != TUYA {
            // Another manufacturer's cluster: not ours to read.
            return Ok(());
        }
        // A manufacturer code follows the frame control when its bit 2 is set.
        let rest = if control & 0x04 != 0 { rest.get(2..).ok_or("short header")? } else { rest };
        let [_zcl_seq, command, _tuya_seq_hi, _tuya_seq_lo, datapoints @ ..] = rest else {
            return Err("short datapoint report".into());
        };
        let mut dps: &[u8] = datapoints;
        if !matches!(command, 0x01 | 0x02 | 0x06) {
            return Ok(());
        }
        while let [dp, kind, len_hi, len_lo, tail @ ..] = dps {
            let len = usize::from(u16::from_be_bytes([*len_hi, *len_lo]));
            let Some((value, next)) = tail.split_at_checked(len) else {
                return Err(format!("datapoint {dp}: {len} bytes announced, {} left", tail.len()));
            };
            let def = self.dps.get(dp);
            let name = def.map_or_else(|| format!("dp{dp}"), |d| d.name.clone());
            let unit = def.and_then(|d| d.unit.as_deref());
            match (kind, value) {
                (0x01, [b]) => out.good(name, *b != 0, unit),
                (0x02, [a, b, c, d]) => {
                    let raw = i32::from_be_bytes([*a, *b, *c, *d]);
                    match def {
                        Some(d) if d.scale != 1.0 => out.good(name, f64::from(raw) * d.scale, unit),
                        _ => out.good(name, i64::from(raw), unit),
                    }
                }
                (0x03, text) => out.good(name, String::from_utf8_lossy(text).into_owned(), unit),
                (0x04, [e]) => out.good(name, i64::from(*e), unit),
                _ => out.bad(name, format!("datapoint type {kind:#04x} with {len} bytes")),
            }
            dps = next;
        }
        if !dps.is_empty() {
            return Err(format!("{} trailing bytes after the datapoints", dps.len()));
        }
        Ok(())
    }
}

export_codec!(TuyaCodec);
