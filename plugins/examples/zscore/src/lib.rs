//! Anomaly detection by z-score: an event when a reading lies more than
//! `threshold` standard deviations from the mean of the previous `window`
//! readings of its series.
//!
//! config: `window` (default 30, at least 5), `threshold` (default 3.0).

use std::collections::{HashMap, VecDeque};

use kite_plugin_sdk::{config_f64, export_plugin, Outputs, Plugin, Reading, Severity};

struct ZScore {
    window: usize,
    threshold: f64,
    series: HashMap<String, VecDeque<f64>>,
}

impl Plugin for ZScore {
    fn init(config: kite_plugin_sdk::serde_json::Value) -> Result<Self, String> {
        let window = config_f64(&config, "window", 30.0)?;
        let threshold = config_f64(&config, "threshold", 3.0)?;
        if !(5.0..=100_000.0).contains(&window) || threshold <= 0.0 {
            return Err("config.window must be 5 to 100000 and config.threshold positive".into());
        }
        Ok(ZScore {
            window: window as usize,
            threshold,
            series: HashMap::new(),
        })
    }

    fn process(&mut self, batch: &[Reading], out: &mut Outputs) {
        for reading in batch {
            let Some(x) = reading.number() else { continue };
            let history = self.series.entry(reading.key()).or_default();
            if history.len() >= 5 {
                let n = history.len() as f64;
                let mean = history.iter().sum::<f64>() / n;
                let variance = history.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
                let std = variance.sqrt();
                let z = if std > 0.0 { (x - mean) / std } else if x != mean { f64::INFINITY } else { 0.0 };
                if z.abs() > self.threshold {
                    let z_text = if z.is_finite() { format!("{z:.1}") } else { "inf".into() };
                    out.event(
                        Severity::Warning,
                        format!("{} = {x} is an outlier (z = {z_text}, mean {mean:.3})", reading.key()),
                        Some(reading),
                    );
                }
            }
            history.push_back(x);
            if history.len() > self.window {
                history.pop_front();
            }
        }
    }
}

export_plugin!(ZScore);
