//! Write a Kite plug-in in Rust: implement [`Plugin`] and call
//! [`export_plugin!`]. Build with `cargo build --release --target wasm32-wasip2`;
//! the `.wasm` in `target/wasm32-wasip2/release/` is the plug-in.
//!
//! ```ignore
//! use kite_plugin_sdk::{export_plugin, Outputs, Plugin, Reading};
//!
//! struct Double;
//! impl Plugin for Double {
//!     fn init(_config: serde_json::Value) -> Result<Self, String> { Ok(Double) }
//!     fn process(&mut self, batch: &[Reading], out: &mut Outputs) {
//!         for r in batch {
//!             if let Some(x) = r.number() { out.reading(format!("{}.{}_x2", r.device, r.point), x * 2.0, None); }
//!         }
//!     }
//! }
//! export_plugin!(Double);
//! ```
//!
//! A codec plug-in decodes the frames of a raw serial instrument instead:
//! implement [`Codec`] and call [`export_codec!`].

use std::any::Any;
use std::cell::RefCell;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../wit",
        pub_export_macro: true,
        default_bindings_module: "kite_plugin_sdk::bindings",
    });
}

#[doc(hidden)]
pub mod codec_bindings {
    wit_bindgen::generate!({
        world: "codec",
        path: "../wit",
        with: {
            "kite:plugin/types@0.1.0": crate::bindings::kite::plugin::types,
            "kite:plugin/host@0.1.0": crate::bindings::kite::plugin::host,
        },
        pub_export_macro: true,
        default_bindings_module: "kite_plugin_sdk::codec_bindings",
    });
}

pub use bindings::kite::plugin::host::{log, now_ms, state_delete, state_get, state_set, Level};
pub use bindings::kite::plugin::types::{
    Decoded, Derived, Event, Output, Reading, Severity, Value,
};
pub use serde_json;

/// A plug-in: built once from its configuration, then fed batches.
pub trait Plugin: Sized + 'static {
    /// `config` is the plug-in's `config` table from Kite's TOML. An error
    /// refuses the plug-in with that message.
    fn init(config: serde_json::Value) -> Result<Self, String>;

    /// One batch of subscribed readings, oldest first.
    fn process(&mut self, batch: &[Reading], out: &mut Outputs);
}

/// What a batch produces.
#[derive(Default)]
pub struct Outputs {
    output: Output,
}

impl Default for Output {
    fn default() -> Self {
        Output {
            readings: Vec::new(),
            events: Vec::new(),
        }
    }
}

impl Outputs {
    /// A derived reading, published under the plug-in's name, stamped with
    /// the batch's newest reading time.
    pub fn reading(&mut self, point: impl Into<String>, value: impl Into<Value>, unit: Option<&str>) {
        self.output.readings.push(Derived {
            point: point.into(),
            value: value.into(),
            unit: unit.map(str::to_string),
            timestamp: None,
        });
    }

    /// An event about `reading` (or about nothing in particular, with `None`).
    pub fn event(&mut self, severity: Severity, message: impl Into<String>, about: Option<&Reading>) {
        self.output.events.push(Event {
            severity,
            message: message.into(),
            device: about.map(|r| r.device.clone()),
            point: about.map(|r| r.point.clone()),
            timestamp: about.map(|r| r.timestamp),
        });
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Boolean(b)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Integer(i)
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Value::Text(text)
    }
}

impl Reading {
    /// The value as a number, if it is one (booleans count as 0 and 1).
    pub fn number(&self) -> Option<f64> {
        match self.value.as_ref()? {
            Value::Float(x) => Some(*x),
            Value::Integer(i) => Some(*i as f64),
            Value::Unsigned(u) => Some(*u as f64),
            Value::Boolean(b) => Some(f64::from(u8::from(*b))),
            Value::Text(_) => None,
        }
    }

    /// `device/point`, a handy key for per-series state.
    pub fn key(&self) -> String {
        format!("{}/{}", self.device, self.point)
    }
}

/// A number from the config, or `default`.
pub fn config_f64(config: &serde_json::Value, key: &str, default: f64) -> Result<f64, String> {
    match config.get(key) {
        None => Ok(default),
        Some(v) => v.as_f64().ok_or_else(|| format!("config.{key} must be a number")),
    }
}

thread_local! {
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

#[doc(hidden)]
pub fn __init<P: Plugin>(config: &str) -> Result<(), String> {
    install(config, P::init)
}

/// Builds the instance from its JSON config and keeps it for later calls.
fn install<T: 'static>(
    config: &str,
    build: impl FnOnce(serde_json::Value) -> Result<T, String>,
) -> Result<(), String> {
    let config = serde_json::from_str(config).map_err(|e| format!("config is not JSON: {e}"))?;
    let instance = build(config)?;
    INSTANCE.with(|slot| *slot.borrow_mut() = Some(Box::new(instance)));
    Ok(())
}

#[doc(hidden)]
pub fn __process<P: Plugin>(batch: Vec<Reading>) -> Output {
    let mut out = Outputs::default();
    INSTANCE.with(|slot| {
        if let Some(plugin) = slot.borrow_mut().as_mut().and_then(|p| p.downcast_mut::<P>()) {
            plugin.process(&batch, &mut out);
        }
    });
    out.output
}

/// Exports `$plugin` (a type implementing [`Plugin`]) as the component's world.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        struct __KitePluginExport;
        impl $crate::bindings::Guest for __KitePluginExport {
            fn init(config: String) -> Result<(), String> {
                $crate::__init::<$plugin>(&config)
            }
            fn process(batch: Vec<$crate::Reading>) -> $crate::Output {
                $crate::__process::<$plugin>(batch)
            }
        }
        $crate::bindings::export!(__KitePluginExport with_types_in $crate::bindings);
    };
}

/// A codec: built once from the device's `codec_config`, then given frames.
pub trait Codec: Sized + 'static {
    /// `config` is the device's `codec_config` table. An error refuses the
    /// codec with that message.
    fn init(config: serde_json::Value) -> Result<Self, String>;

    /// One frame, without delimiters or markers. Push its points to `out`;
    /// an error drops the frame (Kite counts it).
    fn decode(&mut self, frame: &[u8], out: &mut Points) -> Result<(), String>;
}

/// The points of one frame.
#[derive(Default)]
pub struct Points {
    points: Vec<Decoded>,
}

impl Points {
    pub fn good(&mut self, point: impl Into<String>, value: impl Into<Value>, unit: Option<&str>) {
        self.points.push(Decoded {
            point: point.into(),
            value: Some(value.into()),
            error: None,
            unit: unit.map(str::to_string),
        });
    }

    /// A point the frame carries but marks as not valid.
    pub fn bad(&mut self, point: impl Into<String>, reason: impl Into<String>) {
        self.points.push(Decoded {
            point: point.into(),
            value: None,
            error: Some(reason.into()),
            unit: None,
        });
    }
}

#[doc(hidden)]
pub fn __decode<C: Codec>(frame: Vec<u8>) -> Result<Vec<Decoded>, String> {
    let mut out = Points::default();
    INSTANCE.with(|slot| match slot.borrow_mut().as_mut().and_then(|c| c.downcast_mut::<C>()) {
        Some(codec) => codec.decode(&frame, &mut out),
        None => Err("codec not initialised".to_string()),
    })?;
    Ok(out.points)
}

#[doc(hidden)]
pub fn __init_codec<C: Codec>(config: &str) -> Result<(), String> {
    install(config, C::init)
}

/// Exports `$codec` (a type implementing [`Codec`]) as the component's world.
#[macro_export]
macro_rules! export_codec {
    ($codec:ty) => {
        struct __KiteCodecExport;
        impl $crate::codec_bindings::Guest for __KiteCodecExport {
            fn init(config: String) -> Result<(), String> {
                $crate::__init_codec::<$codec>(&config)
            }
            fn decode(frame: Vec<u8>) -> Result<Vec<$crate::Decoded>, String> {
                $crate::__decode::<$codec>(frame)
            }
        }
        $crate::codec_bindings::export!(__KiteCodecExport with_types_in $crate::codec_bindings);
    };
}
