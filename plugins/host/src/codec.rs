//! Codec plug-ins: components of the `codec` world that turn one frame of a
//! raw serial instrument into points, for formats a config cannot describe.
//!
//! A codec runs with the same sandbox, limits and trust check as any
//! plug-in. It is called on the instrument's own task, one frame at a time,
//! so its time limit bounds how long a frame can hold that instrument up
//! (and nothing else). A codec that traps, runs out of time or memory loses
//! that frame (the caller counts it) and its instance: the next frame gets a
//! fresh one.

use std::sync::Arc;

use kite_core::{PointSample, Reading};
use wasmtime::component::Component;

use crate::bindings::codec::Codec as CodecWorld;
use crate::runner::{load, to_sample_reading, PluginSpec};
use crate::sandbox::{Instance, PluginError, Sandbox};

/// Most points one frame may decode into.
pub const MAX_POINTS_PER_FRAME: usize = 1_000;

pub struct Codec {
    sandbox: Arc<Sandbox>,
    component: Component,
    spec: PluginSpec,
    instance: Option<Instance<CodecWorld>>,
}

impl Codec {
    /// Reads, verifies and compiles the codec, then instantiates and
    /// initialises it; any failure refuses it with the reason.
    pub fn start(sandbox: Arc<Sandbox>, spec: PluginSpec) -> Result<Self, PluginError> {
        let component = load(&sandbox, &spec.wasm, &spec.trust)?;
        let instance = instantiate(&sandbox, &component, &spec)?;
        Ok(Self {
            sandbox,
            component,
            spec,
            instance: Some(instance),
        })
    }

    /// The frame's points, or why there are none.
    pub fn decode(&mut self, frame: &[u8]) -> Result<Vec<PointSample>, String> {
        let instance = match &mut self.instance {
            Some(instance) => instance,
            empty @ None => empty.insert(
                instantiate(&self.sandbox, &self.component, &self.spec)
                    .map_err(|e| format!("codec could not restart: {e}"))?,
            ),
        };
        let decoded = match instance.decode(frame) {
            Ok(Ok(decoded)) => decoded,
            Ok(Err(reason)) => return Err(reason),
            Err(e) => {
                // A trapped instance may be in any state: never call it again.
                self.instance = None;
                return Err(format!("codec failed: {e}"));
            }
        };
        if decoded.len() > MAX_POINTS_PER_FRAME {
            return Err(format!(
                "{} points from one frame, at most {MAX_POINTS_PER_FRAME}",
                decoded.len()
            ));
        }
        decoded
            .into_iter()
            .map(|point| {
                if point.point.is_empty() {
                    return Err("a decoded point without a name".to_string());
                }
                let reading = match (point.value, point.error) {
                    (Some(value), _) => to_sample_reading(value),
                    (None, error) => Reading::Bad(error.unwrap_or_else(|| "no value".into())),
                };
                Ok(PointSample {
                    name: Arc::from(point.point.as_str()),
                    unit: point.unit.map(|u| Arc::from(u.as_str())),
                    reading,
                })
            })
            .collect()
    }
}

fn instantiate(
    sandbox: &Sandbox,
    component: &Component,
    spec: &PluginSpec,
) -> Result<Instance<CodecWorld>, PluginError> {
    let mut instance =
        sandbox.instantiate_codec(component, &spec.name, spec.limits, spec.open_state()?)?;
    instance.init(&spec.config_json)?;
    Ok(instance)
}
