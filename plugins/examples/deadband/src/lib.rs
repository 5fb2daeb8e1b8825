//! Deadband and rate-of-change filtering: republishes a series as
//! `<device>.<point>` only when it moved by at least `deadband` since the
//! last value sent, and publishes `<device>.<point>.rate` (change per second)
//! alongside.
//!
//! config: `deadband` (default 0: every change).

use std::collections::HashMap;

use kite_plugin_sdk::{config_f64, export_plugin, Outputs, Plugin, Reading};

struct Deadband {
    deadband: f64,
    /// Last value and time sent, per series.
    sent: HashMap<String, (f64, i64)>,
}

impl Plugin for Deadband {
    fn init(config: kite_plugin_sdk::serde_json::Value) -> Result<Self, String> {
        let deadband = config_f64(&config, "deadband", 0.0)?;
        if deadband < 0.0 {
            return Err("config.deadband must not be negative".into());
        }
        Ok(Deadband {
            deadband,
            sent: HashMap::new(),
        })
    }

    fn process(&mut self, batch: &[Reading], out: &mut Outputs) {
        for reading in batch {
            let Some(x) = reading.number() else { continue };
            let name = format!("{}.{}", reading.device, reading.point);
            let changed = match self.sent.get(&reading.key()) {
                None => true,
                Some(&(last, _)) => (x - last).abs() >= self.deadband && x != last,
            };
            if !changed {
                continue;
            }
            if let Some(&(last, at)) = self.sent.get(&reading.key()) {
                let seconds = (reading.timestamp - at) as f64 / 1000.0;
                if seconds > 0.0 {
                    out.reading(format!("{name}.rate"), (x - last) / seconds, None);
                }
            }
            out.reading(name, x, reading.unit.as_deref());
            self.sent.insert(reading.key(), (x, reading.timestamp));
        }
    }
}

export_plugin!(Deadband);
