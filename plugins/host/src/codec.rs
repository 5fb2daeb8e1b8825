//! Codec plug-ins: components of the `codec` world that turn one frame of a
//! raw serial instrument into points, for formats a config cannot describe.
//!
//! A codec runs with the same sandbox, limits and trust check as any
//! plug-in. It is called on the instrument's own task, one frame at a time,
//! so its time limit bounds how long a frame can hold that instrument up
//! (and nothing else). A codec that traps, runs out of time or memory loses
//! that frame (the caller counts it) and its instance: the next frame gets a
//! fresh one. What a codec decodes is bounded like any plug-in's output
//! (see [`crate::bounds`]).

use std::sync::Arc;

use kite_core::{PointSample, Reading, Sample};
use wasmtime::component::Component;

use crate::bindings::codec::Codec as CodecWorld;
use crate::bindings::kite::plugin::types::Decoded;
use crate::bounds::{check_point, check_sample, one_line, MAX_REASON_BYTES};
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
        match instance.decode(frame) {
            Ok(decoded) => frame_points(&self.spec.name, decoded, self.spec.max_message_bytes),
            Err(e) => {
                // A trapped instance may be in any state: never call it again.
                self.instance = None;
                Err(format!("codec failed: {e}"))
            }
        }
    }
}

/// What a codec's `decode` returned for one frame of `device`, checked: its
/// reason for refusing the frame and its points' errors as one bounded
/// line each, at most [`MAX_POINTS_PER_FRAME`] points with bounded names and
/// units, and all of them at most `max_message_bytes` as one message.
fn frame_points(
    device: &str,
    decoded: Result<Vec<Decoded>, String>,
    max_message_bytes: usize,
) -> Result<Vec<PointSample>, String> {
    let decoded = decoded.map_err(|reason| one_line(&reason, MAX_REASON_BYTES))?;
    if decoded.len() > MAX_POINTS_PER_FRAME {
        return Err(format!(
            "{} points from one frame, at most {MAX_POINTS_PER_FRAME}",
            decoded.len()
        ));
    }
    let points = decoded
        .into_iter()
        .map(|point| {
            check_point(&point.point, point.unit.as_deref())?;
            let reading = match (point.value, point.error) {
                (Some(value), _) => to_sample_reading(value),
                (None, error) => Reading::Bad(
                    error.map_or_else(|| "no value".into(), |e| one_line(&e, MAX_REASON_BYTES)),
                ),
            };
            Ok(PointSample {
                name: Arc::from(point.point.as_str()),
                unit: point.unit.map(|u| Arc::from(u.as_str())),
                reading,
            })
        })
        .collect::<Result<_, PluginError>>()
        .map_err(|e| e.to_string())?;
    let sample = Sample {
        device: Arc::from(device),
        ts_ms: 0,
        points,
    };
    check_sample(&sample, max_message_bytes).map_err(|e| e.to_string())?;
    Ok(sample.points)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::kite::plugin::types::Value;
    use crate::bounds::{
        DEFAULT_MAX_MESSAGE_BYTES, ENVELOPE_BYTES, MAX_NAME_BYTES, MAX_UNIT_BYTES,
    };

    fn point(name: &str, unit: Option<&str>, value: Option<Value>, error: Option<&str>) -> Decoded {
        Decoded {
            point: name.into(),
            value,
            error: error.map(Into::into),
            unit: unit.map(Into::into),
        }
    }

    fn good(name: &str) -> Decoded {
        point(name, None, Some(Value::Integer(1)), None)
    }

    #[test]
    fn decoded_points_are_bounded() {
        let max = 1024;
        // The text that makes a sample of point "p" of device "meter" exactly `max` bytes.
        let text_at_limit = max
            - ENVELOPE_BYTES
            - r#"{"p":{"value":"","quality":"good"}}"#.len()
            - r#""meter""#.len();
        let text = |bytes: usize| Some(Value::Text("t".repeat(bytes)));
        let name = |bytes: usize| "n".repeat(bytes);
        /// What a codec answered, and Ok(how many points) or the refusal's text.
        type Case<'a> = (
            &'a str,
            Result<Vec<Decoded>, String>,
            Result<usize, &'a str>,
        );
        let cases: Vec<Case> = vec![
            ("two points", Ok(vec![good("flow"), good("total")]), Ok(2)),
            ("no name", Ok(vec![good("")]), Err("without a name")),
            ("longest name", Ok(vec![good(&name(MAX_NAME_BYTES))]), Ok(1)),
            (
                "name too long",
                Ok(vec![good(&name(MAX_NAME_BYTES + 1))]),
                Err("output too large: a point name of 129 bytes, at most 128"),
            ),
            (
                "longest unit",
                Ok(vec![point("p", Some(&name(MAX_UNIT_BYTES)), None, None)]),
                Ok(1),
            ),
            (
                "unit too long",
                Ok(vec![point(
                    "p",
                    Some(&name(MAX_UNIT_BYTES + 1)),
                    None,
                    None,
                )]),
                Err("a unit of 33 bytes, at most 32"),
            ),
            (
                "at the message bound",
                Ok(vec![point("p", None, text(text_at_limit), None)]),
                Ok(1),
            ),
            (
                "past the message bound",
                Ok(vec![point("p", None, text(text_at_limit + 1), None)]),
                Err("a message of 1025 bytes, at most 1024"),
            ),
            (
                "too many points",
                Ok(vec![good("p"); MAX_POINTS_PER_FRAME + 1]),
                Err("1001 points from one frame"),
            ),
            (
                "the codec's reason, on one line",
                Err("bad frame\nERROR forged".into()),
                Err(r"bad frame\nERROR forged"),
            ),
        ];
        let most: Vec<_> = (0..MAX_POINTS_PER_FRAME)
            .map(|i| good(&format!("p{i}")))
            .collect();
        assert_eq!(
            frame_points("meter", Ok(most), DEFAULT_MAX_MESSAGE_BYTES).map(|p| p.len()),
            Ok(MAX_POINTS_PER_FRAME)
        );
        for (what, decoded, expected) in cases {
            let result = frame_points("meter", decoded, max);
            match (expected, result) {
                (Ok(count), Ok(points)) if points.len() == count => {}
                (Err(expected), Err(reason)) if reason.contains(expected) => {}
                (_, result) => panic!("{what}: {result:?}"),
            }
        }
    }

    #[test]
    fn reasons_are_cut_to_one_bounded_line() {
        let long = "x".repeat(MAX_REASON_BYTES + 1);
        let cut = &long[..MAX_REASON_BYTES];
        assert_eq!(
            frame_points("meter", Err(long.clone()), DEFAULT_MAX_MESSAGE_BYTES),
            Err(cut.to_string())
        );
        let points = frame_points(
            "meter",
            Ok(vec![
                point("a", None, None, Some(&long)),
                point("b", None, None, Some("sensor\nopen")),
                point("c", None, None, None),
            ]),
            DEFAULT_MAX_MESSAGE_BYTES,
        )
        .unwrap();
        let errors: Vec<_> = points.into_iter().map(|p| p.reading).collect();
        assert_eq!(
            errors,
            [
                Reading::Bad(cut.to_string()),
                Reading::Bad(r"sensor\nopen".to_string()),
                Reading::Bad("no value".to_string()),
            ]
        );
    }
}
