//! Moving average and downsampling: for each series, the mean of the last
//! `window` readings, emitted once every `every` readings as
//! `<device>.<point>.avg`.
//!
//! config: `window` (default 10), `every` (default: `window`).

use std::collections::{HashMap, VecDeque};

use kite_plugin_sdk::{config_f64, export_plugin, Outputs, Plugin, Reading};

struct Average {
    window: usize,
    every: usize,
    series: HashMap<String, (VecDeque<f64>, usize)>,
}

impl Plugin for Average {
    fn init(config: kite_plugin_sdk::serde_json::Value) -> Result<Self, String> {
        let window = config_f64(&config, "window", 10.0)?;
        let every = config_f64(&config, "every", window)?;
        if !(1.0..=100_000.0).contains(&window) || !(1.0..=100_000.0).contains(&every) {
            return Err("config.window and config.every must be 1 to 100000".into());
        }
        Ok(Average {
            window: window as usize,
            every: every as usize,
            series: HashMap::new(),
        })
    }

    fn process(&mut self, batch: &[Reading], out: &mut Outputs) {
        for reading in batch {
            let Some(x) = reading.number() else { continue };
            let (values, seen) = self.series.entry(reading.key()).or_default();
            values.push_back(x);
            if values.len() > self.window {
                values.pop_front();
            }
            *seen += 1;
            if *seen % self.every == 0 {
                let mean = values.iter().sum::<f64>() / values.len() as f64;
                out.reading(format!("{}.{}.avg", reading.device, reading.point), mean, reading.unit.as_deref());
            }
        }
    }
}

export_plugin!(Average);
