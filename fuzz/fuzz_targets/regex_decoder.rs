//! Arbitrary bytes through a fixed pattern with one field of each type:
//! an error or one point per field, never a panic; good numbers are finite.

#![no_main]

use std::sync::LazyLock;

use kite_core::{Reading, Value};
use kite_serial::decode::{CaptureField, FieldType, RegexDecoder};
use libfuzzer_sys::fuzz_target;

fn field(point: &str, field_type: FieldType, scale: f64, offset: f64) -> CaptureField {
    CaptureField {
        point: point.into(),
        capture: point.to_owned(),
        field_type,
        scale,
        offset,
        unit: None,
    }
}

static DECODER: LazyLock<RegexDecoder> = LazyLock::new(|| {
    RegexDecoder::new(
        r"^T=(?P<temp>[^;]*);N=(?P<count>[^;]*)(?:;R=(?P<run>[^;]*))?(?:;S=(?P<status>.*))?$",
        vec![
            field("temp", FieldType::Float, 0.1, -40.0),
            field("count", FieldType::Int, 1.0, 0.0),
            field("run", FieldType::Bool, 1.0, 0.0),
            field("status", FieldType::Text, 1.0, 0.0),
        ],
    )
    .expect("valid decoder")
});

fuzz_target!(|data: &[u8]| {
    if let Ok(points) = DECODER.decode(data) {
        assert_eq!(points.len(), 4);
        for point in &points {
            match &point.reading {
                Reading::Good(Value::Float(v)) => assert!(v.is_finite(), "{point:?}"),
                Reading::Good(Value::Text(text)) => assert_eq!(text.trim(), text),
                _ => {}
            }
        }
    }
});
