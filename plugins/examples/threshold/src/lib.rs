//! Threshold alarm with hysteresis: an event when a value rises above
//! `threshold`, and one when it falls back below `threshold - hysteresis`.
//! Which alarms are active is kept in the plug-in's state, so a restart
//! neither repeats nor forgets them.
//!
//! config: `threshold` (required), `hysteresis` (default 0), `severity`
//! ("info", "warning" or "critical"; default "warning").

use kite_plugin_sdk::{config_f64, export_plugin, state_delete, state_get, state_set, Outputs, Plugin, Reading, Severity};

struct Threshold {
    threshold: f64,
    clear_below: f64,
    severity: Severity,
}

impl Plugin for Threshold {
    fn init(config: kite_plugin_sdk::serde_json::Value) -> Result<Self, String> {
        if config.get("threshold").is_none() {
            return Err("config.threshold is required".into());
        }
        let threshold = config_f64(&config, "threshold", 0.0)?;
        let hysteresis = config_f64(&config, "hysteresis", 0.0)?;
        if hysteresis < 0.0 {
            return Err("config.hysteresis must not be negative".into());
        }
        let severity = match config.get("severity").and_then(|s| s.as_str()).unwrap_or("warning") {
            "info" => Severity::Info,
            "warning" => Severity::Warning,
            "critical" => Severity::Critical,
            other => return Err(format!("config.severity {other:?}: expected info, warning or critical")),
        };
        Ok(Threshold {
            threshold,
            clear_below: threshold - hysteresis,
            severity,
        })
    }

    fn process(&mut self, batch: &[Reading], out: &mut Outputs) {
        for reading in batch {
            let Some(x) = reading.number() else { continue };
            let key = format!("active:{}", reading.key());
            let active = state_get(&key).is_some();
            if !active && x > self.threshold {
                out.event(self.severity, format!("{} is {x}, above {}", reading.key(), self.threshold), Some(reading));
                let _ = state_set(&key, &[1]);
            } else if active && x < self.clear_below {
                out.event(Severity::Info, format!("{} is {x}, back below {}", reading.key(), self.clear_below), Some(reading));
                state_delete(&key);
            }
        }
    }
}

export_plugin!(Threshold);
