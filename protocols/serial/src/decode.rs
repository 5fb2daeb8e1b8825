//! Decoding text frames into points with a regular expression: each point
//! takes its value from one named capture group.

use std::collections::HashSet;
use std::sync::Arc;

use kite_core::{PointSample, Reading, Value};
use regex::Regex;
use thiserror::Error;

/// How a captured text becomes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// A decimal number, scaled: `Value::Float`.
    Float,
    /// A whole number: `Value::Int`, or `Value::Float` once scaled or offset.
    Int,
    /// `1/0`, `true/false`, `on/off` or `yes/no`, in any case: `Value::Bool`.
    Bool,
    /// The text itself: `Value::Text`.
    Text,
}

/// One point read from one named capture group.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureField {
    /// Name of the point in samples.
    pub point: Arc<str>,
    /// Name of the capture group in the pattern.
    pub capture: String,
    pub field_type: FieldType,
    /// Numbers become `value * scale + offset`; must be finite.
    pub scale: f64,
    /// See `scale`; must be finite.
    pub offset: f64,
    /// Unit carried by the point's samples, e.g. `degC`.
    pub unit: Option<Arc<str>>,
}

/// A decoder configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DecodeConfigError {
    #[error("invalid pattern: {0}")]
    InvalidPattern(regex::Error),
    #[error(
        "point `{point}`: the pattern has no capture group named `{capture}` (its named groups: {})",
        list(.groups)
    )]
    UnknownCapture {
        point: Arc<str>,
        capture: String,
        /// The named groups the pattern does have.
        groups: Vec<String>,
    },
    #[error("point `{point}`: {what} must be a finite number, not {value}")]
    NotFinite {
        point: Arc<str>,
        what: &'static str,
        value: f64,
    },
    #[error("point `{point}` is decoded more than once")]
    DuplicatePoint { point: Arc<str> },
}

fn list(groups: &[String]) -> String {
    if groups.is_empty() {
        "none".to_owned()
    } else {
        groups.join(", ")
    }
}

/// Why a frame gave no points at all.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("frame is not valid UTF-8")]
    NotUtf8,
    #[error("frame does not match the pattern")]
    NoMatch,
    /// The frame breaks the rules of its format (used by [`crate::nmea`]).
    #[error("{0}")]
    Invalid(String),
}

/// Decodes a text frame with a regular expression, one point per field.
#[derive(Debug, Clone)]
pub struct RegexDecoder {
    regex: Regex,
    fields: Vec<CaptureField>,
    /// Index of each field's capture group, resolved once.
    groups: Vec<usize>,
}

impl RegexDecoder {
    /// Compiles `pattern` and checks that every field names one of its
    /// capture groups. The pattern may match anywhere in a frame: anchor it
    /// with `^…$` to match whole frames.
    pub fn new(pattern: &str, fields: Vec<CaptureField>) -> Result<Self, DecodeConfigError> {
        let regex = Regex::new(pattern).map_err(DecodeConfigError::InvalidPattern)?;
        let mut points = HashSet::new();
        let mut groups = Vec::with_capacity(fields.len());
        for spec in &fields {
            if !points.insert(spec.point.clone()) {
                return Err(DecodeConfigError::DuplicatePoint {
                    point: spec.point.clone(),
                });
            }
            for (what, value) in [("scale", spec.scale), ("offset", spec.offset)] {
                if !value.is_finite() {
                    return Err(DecodeConfigError::NotFinite {
                        point: spec.point.clone(),
                        what,
                        value,
                    });
                }
            }
            let group = regex
                .capture_names()
                .position(|name| name == Some(spec.capture.as_str()))
                .ok_or_else(|| DecodeConfigError::UnknownCapture {
                    point: spec.point.clone(),
                    capture: spec.capture.clone(),
                    groups: regex.capture_names().flatten().map(str::to_owned).collect(),
                })?;
            groups.push(group);
        }
        Ok(RegexDecoder {
            regex,
            fields,
            groups,
        })
    }

    /// The fields, in the order their points come out of [`decode`](Self::decode).
    pub fn fields(&self) -> &[CaptureField] {
        &self.fields
    }

    /// Decodes one frame: a point for every field, in the order the fields
    /// were given. A field that did not take part in the match or does not
    /// parse gives a `Reading::Bad` point; the others are still good.
    pub fn decode(&self, frame: &[u8]) -> Result<Vec<PointSample>, DecodeError> {
        // Strict: decoding lossily would turn line noise into U+FFFD text.
        let text = std::str::from_utf8(frame).map_err(|_| DecodeError::NotUtf8)?;
        let captures = self.regex.captures(text).ok_or(DecodeError::NoMatch)?;
        Ok(self
            .fields
            .iter()
            .zip(&self.groups)
            .map(|(spec, &group)| {
                let reading = match captures.get(group) {
                    Some(m) => match convert(spec, m.as_str()) {
                        Ok(value) => Reading::Good(value),
                        Err(reason) => Reading::Bad(reason),
                    },
                    None => Reading::Bad(format!("group `{}` did not match", spec.capture)),
                };
                PointSample {
                    name: spec.point.clone(),
                    unit: spec.unit.clone(),
                    reading,
                }
            })
            .collect())
    }
}

/// Captured text to a value, or why it is not one.
fn convert(spec: &CaptureField, text: &str) -> Result<Value, String> {
    let text = text.trim();
    let scaled = |value: f64| {
        let value = value * spec.scale + spec.offset;
        if value.is_finite() {
            Ok(Value::Float(value))
        } else {
            Err(format!("`{}` scales out of range", excerpt(text)))
        }
    };
    match spec.field_type {
        FieldType::Float => match text.parse::<f64>() {
            // `parse` also takes "inf" and "NaN", which no instrument means.
            Ok(value) if value.is_finite() => scaled(value),
            _ => Err(format!("`{}` is not a number", excerpt(text))),
        },
        FieldType::Int => {
            let value = text
                .parse::<i64>()
                .map_err(|_| format!("`{}` is not a 64-bit integer", excerpt(text)))?;
            if spec.scale == 1.0 && spec.offset == 0.0 {
                Ok(Value::Int(value))
            } else {
                scaled(value as f64)
            }
        }
        FieldType::Bool => {
            let is = |words: [&str; 4]| words.iter().any(|w| w.eq_ignore_ascii_case(text));
            if is(["1", "true", "on", "yes"]) {
                Ok(Value::Bool(true))
            } else if is(["0", "false", "off", "no"]) {
                Ok(Value::Bool(false))
            } else {
                Err(format!("`{}` is not a boolean", excerpt(text)))
            }
        }
        FieldType::Text => Ok(Value::Text(text.to_owned())),
    }
}

/// The start of `text`, short enough to quote in a reading's reason.
fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 32;
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{}…", text.get(..end).unwrap_or_default()),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn field(point: &str, capture: &str, field_type: FieldType) -> CaptureField {
        CaptureField {
            point: point.into(),
            capture: capture.to_owned(),
            field_type,
            scale: 1.0,
            offset: 0.0,
            unit: None,
        }
    }

    fn readings(decoder: &RegexDecoder, frame: &str) -> Vec<Reading> {
        decoder
            .decode(frame.as_bytes())
            .expect("frame decodes")
            .into_iter()
            .map(|p| p.reading)
            .collect()
    }

    fn good(value: Value) -> Reading {
        Reading::Good(value)
    }

    #[test]
    fn decodes_each_type_with_scale_offset_and_unit() {
        let temperature = CaptureField {
            scale: 0.1,
            offset: -40.0,
            unit: Some("degC".into()),
            ..field("temperature", "t", FieldType::Float)
        };
        let decoder = RegexDecoder::new(
            r"^T=(?P<t>[^;]*);C=(?P<c>[^;]*);K=(?P<k>[^;]*);R=(?P<r>[^;]*);S=(?P<s>.*)$",
            vec![
                temperature,
                field("count", "c", FieldType::Int),
                CaptureField {
                    scale: 2.0,
                    ..field("kilo", "k", FieldType::Int)
                },
                field("running", "r", FieldType::Bool),
                field("status", "s", FieldType::Text),
            ],
        )
        .unwrap();
        let points = decoder
            .decode(b"T= +612 ;C=-42;K=+3;R=ON;S= ok go ")
            .unwrap();
        let names: Vec<&str> = points.iter().map(|p| &*p.name).collect();
        assert_eq!(names, ["temperature", "count", "kilo", "running", "status"]);
        let configured: Vec<&str> = decoder.fields().iter().map(|f| &*f.point).collect();
        assert_eq!(configured, names);
        assert_eq!(points[0].unit.as_deref(), Some("degC"));
        assert_eq!(points[1].unit, None);
        let Reading::Good(Value::Float(t)) = points[0].reading else {
            panic!("temperature: {:?}", points[0].reading);
        };
        assert!((t - 21.2).abs() < 1e-9);
        assert_eq!(points[1].reading, good(Value::Int(-42)));
        assert_eq!(points[2].reading, good(Value::Float(6.0)));
        assert_eq!(points[3].reading, good(Value::Bool(true)));
        assert_eq!(points[4].reading, good(Value::Text("ok go".into())));
    }

    #[test]
    fn bad_fields_do_not_spoil_good_ones() {
        let decoder = RegexDecoder::new(
            r"^(?P<a>\w+)(?:,(?P<b>\w+))?$",
            vec![
                field("a", "a", FieldType::Float),
                field("b", "b", FieldType::Int),
            ],
        )
        .unwrap();
        assert_eq!(
            readings(&decoder, "abc"),
            [
                Reading::Bad("`abc` is not a number".into()),
                Reading::Bad("group `b` did not match".into()),
            ]
        );
        assert_eq!(
            readings(&decoder, "12,99999999999999999999"),
            [
                good(Value::Float(12.0)),
                Reading::Bad("`99999999999999999999` is not a 64-bit integer".into()),
            ]
        );
        assert!(matches!(&readings(&decoder, "inf,1")[0], Reading::Bad(_)));
        assert!(matches!(&readings(&decoder, "NaN,1")[0], Reading::Bad(_)));
    }

    #[test]
    fn scaling_out_of_range_is_bad() {
        let decoder = RegexDecoder::new(
            r"(?P<v>\S+)",
            vec![CaptureField {
                scale: 1e300,
                ..field("v", "v", FieldType::Float)
            }],
        )
        .unwrap();
        assert_eq!(readings(&decoder, "2")[0], good(Value::Float(2e300)));
        assert!(
            matches!(&readings(&decoder, "1e10")[0], Reading::Bad(r) if r.contains("out of range"))
        );
    }

    #[test]
    fn booleans_in_any_case() {
        let decoder =
            RegexDecoder::new(r"(?P<b>.*)", vec![field("b", "b", FieldType::Bool)]).unwrap();
        for (text, value) in [
            ("1", true),
            ("TRUE", true),
            ("On", true),
            ("yes", true),
            ("0", false),
            ("False", false),
            ("OFF", false),
            (" no ", false),
        ] {
            assert_eq!(
                readings(&decoder, text),
                [good(Value::Bool(value))],
                "{text}"
            );
        }
        assert!(matches!(&readings(&decoder, "2")[0], Reading::Bad(_)));
        assert!(matches!(&readings(&decoder, "")[0], Reading::Bad(_)));
    }

    #[test]
    fn frame_errors() {
        let decoder =
            RegexDecoder::new(r"^V=(?P<v>\d+)$", vec![field("v", "v", FieldType::Int)]).unwrap();
        assert_eq!(decoder.decode(b"X=1"), Err(DecodeError::NoMatch));
        assert_eq!(decoder.decode(b"V=\xff1"), Err(DecodeError::NotUtf8));
        assert_eq!(readings(&decoder, "V=7"), [good(Value::Int(7))]);
    }

    #[test]
    fn configuration_errors() {
        assert!(matches!(
            RegexDecoder::new("(", vec![]),
            Err(DecodeConfigError::InvalidPattern(_))
        ));
        let err = RegexDecoder::new(
            r"(?P<a>\d)(?P<b>\d)(\d)",
            vec![field("x", "c", FieldType::Int)],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "point `x`: the pattern has no capture group named `c` (its named groups: a, b)"
        );
        let err = RegexDecoder::new(r"(\d)", vec![field("x", "c", FieldType::Int)]).unwrap_err();
        assert!(err.to_string().ends_with("(its named groups: none)"));
        let err = RegexDecoder::new(
            r"(?P<a>\d)",
            vec![CaptureField {
                offset: f64::NAN,
                ..field("x", "a", FieldType::Float)
            }],
        )
        .unwrap_err();
        assert!(matches!(
            err,
            DecodeConfigError::NotFinite { what: "offset", .. }
        ));
        let err = RegexDecoder::new(
            r"(?P<a>\d)",
            vec![
                field("x", "a", FieldType::Float),
                field("x", "a", FieldType::Int),
            ],
        )
        .unwrap_err();
        assert_eq!(err, DecodeConfigError::DuplicatePoint { point: "x".into() });
    }

    #[test]
    fn long_texts_are_shortened_in_reasons() {
        let decoder =
            RegexDecoder::new(r"(?P<v>.*)", vec![field("v", "v", FieldType::Float)]).unwrap();
        let Reading::Bad(reason) = &readings(&decoder, &"é".repeat(100))[0] else {
            panic!("not bad");
        };
        assert_eq!(reason, &format!("`{}…` is not a number", "é".repeat(32)));
    }

    proptest! {
        #[test]
        fn integers_round_trip(value in any::<i64>(), plus in any::<bool>(), pad in " {0,3}") {
            let decoder =
                RegexDecoder::new(r"(?P<v>.*)", vec![field("v", "v", FieldType::Int)]).unwrap();
            let sign = if plus && value >= 0 { "+" } else { "" };
            let frame = format!("{pad}{sign}{value}{pad}");
            prop_assert_eq!(readings(&decoder, &frame), [good(Value::Int(value))]);
        }

        #[test]
        fn floats_scale(value in -1e12f64..1e12, scale in -1e3f64..1e3, offset in -1e3f64..1e3) {
            let decoder = RegexDecoder::new(
                r"(?P<v>.*)",
                vec![CaptureField { scale, offset, ..field("v", "v", FieldType::Float) }],
            )
            .unwrap();
            prop_assert_eq!(
                readings(&decoder, &value.to_string()),
                [good(Value::Float(value * scale + offset))]
            );
        }

        #[test]
        fn any_frame_gives_one_point_per_field_or_an_error(frame in any::<Vec<u8>>()) {
            let decoder = RegexDecoder::new(
                r"(?P<a>[^,]*),(?P<b>[^,]*)(?:,(?P<c>.*))?",
                vec![
                    field("a", "a", FieldType::Float),
                    field("b", "b", FieldType::Bool),
                    field("c", "c", FieldType::Text),
                ],
            )
            .unwrap();
            match decoder.decode(&frame) {
                Ok(points) => prop_assert_eq!(points.len(), 3),
                Err(e) => prop_assert!(matches!(e, DecodeError::NotUtf8 | DecodeError::NoMatch)),
            }
        }
    }
}
