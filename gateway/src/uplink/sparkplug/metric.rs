//! Point values as Sparkplug metrics: which datatype a point gets, how a
//! stored value goes into a metric of that datatype, and how the value of a
//! command's metric becomes a value to write.
//!
//! Signed integers narrower than 64 bits go in `int_value` (uint32) as
//! their two's complement at their own width: an Int8 of -1 is sent as 255,
//! an Int16 of -1 as 65535, an Int32 of -1 as 4294967295. Decoders that
//! take the low bits (Eclipse Tahu) and those that check the width
//! (pysparkplug) both read them back; commands are read either way.

use kite_core::Value;
use kite_modbus::{DataType as RegisterType, PointSpec};

use super::proto::payload::{metric, property_value, Metric, PropertySet, PropertyValue};
use super::proto::DataType;

/// The integer a value is, if it is one.
fn as_i128(value: &Value) -> Option<i128> {
    match *value {
        Value::Int(v) => Some(v.into()),
        Value::UInt(v) => Some(v.into()),
        _ => None,
    }
}

/// The number a value is, if it is one.
fn as_f64(value: &Value) -> Option<f64> {
    match *value {
        Value::Int(v) => Some(v as f64),
        Value::UInt(v) => Some(v as f64),
        Value::Float(v) => Some(v),
        _ => None,
    }
}

/// The datatype of a Modbus point as configured: its register type, or
/// Float (16-bit registers) or Double (wider ones) once it is scaled.
pub(super) fn declared(point: &PointSpec) -> DataType {
    let scaled = point.scale != 1.0 || point.offset != 0.0;
    match point.data_type {
        RegisterType::Bool => DataType::Boolean,
        RegisterType::String => DataType::String,
        RegisterType::U16 | RegisterType::I16 if scaled => DataType::Float,
        _ if scaled => DataType::Double,
        RegisterType::U16 => DataType::UInt16,
        RegisterType::I16 => DataType::Int16,
        RegisterType::U32 => DataType::UInt32,
        RegisterType::I32 => DataType::Int32,
        RegisterType::U64 => DataType::UInt64,
        RegisterType::I64 => DataType::Int64,
        RegisterType::F32 => DataType::Float,
        RegisterType::F64 => DataType::Double,
    }
}

/// The datatype of a point nothing declares, from its first value.
pub(super) fn inferred(value: &Value) -> DataType {
    match value {
        Value::Bool(_) => DataType::Boolean,
        Value::Int(_) => DataType::Int64,
        Value::UInt(v) if i64::try_from(*v).is_ok() => DataType::Int64,
        Value::UInt(_) => DataType::UInt64,
        Value::Float(_) => DataType::Double,
        Value::Text(_) => DataType::String,
    }
}

/// Whether `value` can be sent as `datatype` without changing it.
pub(super) fn fits(datatype: DataType, value: &Value) -> bool {
    let integer = |min: i128, max: i128| as_i128(value).is_some_and(|v| (min..=max).contains(&v));
    match datatype {
        DataType::Int8 => integer(i8::MIN.into(), i8::MAX.into()),
        DataType::Int16 => integer(i16::MIN.into(), i16::MAX.into()),
        DataType::Int32 => integer(i32::MIN.into(), i32::MAX.into()),
        DataType::Int64 => integer(i64::MIN.into(), i64::MAX.into()),
        DataType::UInt8 => integer(0, u8::MAX.into()),
        DataType::UInt16 => integer(0, u16::MAX.into()),
        DataType::UInt32 => integer(0, u32::MAX.into()),
        DataType::UInt64 => integer(0, u64::MAX.into()),
        DataType::Float | DataType::Double => as_f64(value).is_some(),
        DataType::Boolean => matches!(value, Value::Bool(_)),
        DataType::String | DataType::Text => matches!(value, Value::Text(_)),
        DataType::Unknown | DataType::DateTime => false,
    }
}

/// The datatype a point whose value no longer fits `datatype` changes to:
/// Double for a number, else what the value is.
pub(super) fn widened(datatype: DataType, value: &Value) -> DataType {
    match inferred(value) {
        DataType::Int64 | DataType::UInt64 | DataType::Double if is_numeric(datatype) => {
            DataType::Double
        }
        other => other,
    }
}

fn is_numeric(datatype: DataType) -> bool {
    !matches!(
        datatype,
        DataType::Boolean
            | DataType::String
            | DataType::Text
            | DataType::Unknown
            | DataType::DateTime
    )
}

/// `value` as `datatype` (which it [`fits`]).
pub(super) fn encode(datatype: DataType, value: &Value) -> metric::Value {
    use metric::Value as M;
    let signed = as_i128(value).unwrap_or_default();
    match (datatype, value) {
        (DataType::Int8, _) => M::IntValue(u32::from(signed as i8 as u8)),
        (DataType::Int16, _) => M::IntValue(u32::from(signed as i16 as u16)),
        (DataType::Int32, _) => M::IntValue(signed as i32 as u32),
        (DataType::Int64, _) => M::LongValue(signed as i64 as u64),
        (DataType::UInt8 | DataType::UInt16 | DataType::UInt32, _) => M::IntValue(signed as u32),
        (DataType::UInt64, _) => M::LongValue(signed as u64),
        (DataType::Float, _) => M::FloatValue(as_f64(value).unwrap_or_default() as f32),
        (DataType::Double, _) => M::DoubleValue(as_f64(value).unwrap_or_default()),
        (_, Value::Bool(b)) => M::BooleanValue(*b),
        (_, Value::Text(text)) => M::StringValue(text.clone()),
        (_, other) => M::StringValue(format!("{other:?}")),
    }
}

/// The value a command's metric carries, for the write path, read as
/// `datatype` (the point's datatype at birth).
pub(super) fn decode(datatype: DataType, metric: &Metric) -> Result<serde_json::Value, String> {
    use metric::Value as M;
    if metric.is_null() {
        return Err("the metric is null: there is no value to write".into());
    }
    Ok(match metric.value.as_ref() {
        None => return Err("the metric has no value".into()),
        Some(M::IntValue(v)) => match datatype {
            DataType::Int8 => i64::from(*v as u8 as i8).into(),
            DataType::Int16 => i64::from(*v as u16 as i16).into(),
            DataType::Int32 => i64::from(*v as i32).into(),
            _ => (*v).into(),
        },
        Some(M::LongValue(v)) => match datatype {
            DataType::Int64 => (*v as i64).into(),
            _ => (*v).into(),
        },
        Some(M::FloatValue(v)) => number(f64::from(*v))?,
        Some(M::DoubleValue(v)) => number(*v)?,
        Some(M::BooleanValue(v)) => (*v).into(),
        Some(M::StringValue(v)) => v.clone().into(),
        Some(M::BytesValue(_)) => return Err("bytes values cannot be written to a point".into()),
    })
}

fn number(value: f64) -> Result<serde_json::Value, String> {
    serde_json::Number::from_f64(value)
        .map(serde_json::Value::Number)
        .ok_or_else(|| format!("{value} is not a number a point can take"))
}

/// A reading's quality, as the `Quality` property carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Quality {
    Good = 192,
    Bad = 0,
    Stale = 500,
}

/// The properties of a metric: its `Quality` (Int32) and, in births, its
/// unit as `engUnit`.
pub(super) fn properties(quality: Quality, unit: Option<&str>) -> PropertySet {
    let mut set = PropertySet {
        keys: vec!["Quality".into()],
        values: vec![PropertyValue {
            r#type: Some(DataType::Int32 as u32),
            is_null: None,
            value: Some(property_value::Value::IntValue(quality as u32)),
        }],
    };
    if let Some(unit) = unit {
        set.keys.push("engUnit".into());
        set.values.push(PropertyValue {
            r#type: Some(DataType::String as u32),
            is_null: None,
            value: Some(property_value::Value::StringValue(unit.into())),
        });
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_signed_integers_go_as_their_own_width_and_come_back() {
        let cases = [
            (DataType::Int8, -1, 255),
            (DataType::Int8, -128, 128),
            (DataType::Int16, -1, 65535),
            (DataType::Int16, -32768, 32768),
            (DataType::Int32, -1, u32::MAX),
            (DataType::Int16, 300, 300),
        ];
        for (datatype, value, wire) in cases {
            let value = Value::Int(value);
            assert!(fits(datatype, &value));
            let encoded = encode(datatype, &value);
            assert_eq!(encoded, metric::Value::IntValue(wire), "{datatype:?}");
            let metric = Metric {
                value: Some(encoded),
                ..Metric::default()
            };
            let expected: serde_json::Value = as_i128(&value).map(|v| v as i64).unwrap().into();
            assert_eq!(decode(datatype, &metric).unwrap(), expected);
        }
        let long = encode(DataType::Int64, &Value::Int(-2));
        assert_eq!(long, metric::Value::LongValue(u64::MAX - 1));
    }

    #[test]
    fn a_value_that_does_not_fit_widens_its_datatype() {
        assert!(!fits(DataType::Int16, &Value::UInt(40_000)));
        assert!(!fits(DataType::UInt16, &Value::Int(-1)));
        assert!(!fits(DataType::Int64, &Value::Float(0.5)));
        assert!(fits(DataType::Float, &Value::UInt(3)));
        assert_eq!(
            widened(DataType::Int16, &Value::UInt(40_000)),
            DataType::Double
        );
        assert_eq!(
            widened(DataType::Int64, &Value::Text("x".into())),
            DataType::String
        );
        assert_eq!(inferred(&Value::UInt(u64::MAX)), DataType::UInt64);
    }

    #[test]
    fn a_command_without_a_value_is_refused() {
        let null = Metric {
            is_null: Some(true),
            ..Metric::default()
        };
        assert!(decode(DataType::Int16, &null).is_err());
        assert!(decode(DataType::Int16, &Metric::default()).is_err());
        let nan = Metric {
            value: Some(metric::Value::DoubleValue(f64::NAN)),
            ..Metric::default()
        };
        assert!(decode(DataType::Double, &nan).is_err());
    }
}
