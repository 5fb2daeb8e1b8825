//! Unit conversion: republishes each reading as `<device>.<point>` in the
//! unit `to`.
//!
//! config: `from` and `to`, one of the pairs degC/degF, degC/K, bar/psi,
//! bar/kPa, kWh/MJ, m3/l (either direction).

use kite_plugin_sdk::{export_plugin, Outputs, Plugin, Reading};

/// (from, to, factor, offset): to = from * factor + offset.
const CONVERSIONS: &[(&str, &str, f64, f64)] = &[
    ("degC", "degF", 1.8, 32.0),
    ("degC", "K", 1.0, 273.15),
    ("bar", "psi", 14.503_773_773, 0.0),
    ("bar", "kPa", 100.0, 0.0),
    ("kWh", "MJ", 3.6, 0.0),
    ("m3", "l", 1000.0, 0.0),
];

struct Convert {
    to: String,
    factor: f64,
    offset: f64,
}

impl Plugin for Convert {
    fn init(config: kite_plugin_sdk::serde_json::Value) -> Result<Self, String> {
        let unit = |key: &str| {
            config
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("config.{key} is required (a unit name)"))
        };
        let (from, to) = (unit("from")?, unit("to")?);
        for &(a, b, factor, offset) in CONVERSIONS {
            if a == from && b == to {
                return Ok(Convert { to, factor, offset });
            }
            if b == from && a == to {
                return Ok(Convert {
                    to,
                    factor: 1.0 / factor,
                    offset: -offset / factor,
                });
            }
        }
        Err(format!("no conversion from {from:?} to {to:?}"))
    }

    fn process(&mut self, batch: &[Reading], out: &mut Outputs) {
        for reading in batch {
            if let Some(x) = reading.number() {
                let converted = x * self.factor + self.offset;
                let rounded = (converted * 1e9).round() / 1e9;
                out.reading(format!("{}.{}", reading.device, reading.point), rounded, Some(&self.to));
            }
        }
    }
}

export_plugin!(Convert);
