//! A device poll packed for the buffer, in no wire format: the names and
//! units of a device's points go once, in its [`Schema`], and each row
//! holds only the readings, a tag byte and the value's few bytes each.
//! The uplink makes whatever goes on the wire (JSON, compact JSON,
//! Sparkplug B) from the decoded readings at publish time.
//!
//! Values, one per present point:
//! - a tag byte: bits 0-1 the quality (0 good, 1 bad, 2 stale), bits 2-4
//!   the value (0 none, 1 false, 2 true, 3 a signed integer as a zigzag
//!   varint, 4 an unsigned one as a varint, 5 an f64, 6 text as a varint
//!   length and UTF-8, 7 an f64 that an f32 holds exactly, in 4 bytes),
//!   bit 5 an error follows (varint length, UTF-8);
//! - a row of every point of its schema in order is dense; a row of some
//!   of them (report by exception, a split poll) is sparse: each reading
//!   is preceded by its point's index in the schema, as a varint. The
//!   first byte of a row says which (0 dense, 1 sparse).

use std::sync::Arc;

use crate::sample::{PointSample, Reading, Value};

/// The names and units of a device's points, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    pub points: Vec<(Arc<str>, Option<Arc<str>>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("packed row: {0}")]
pub struct PackedError(&'static str);

impl Schema {
    /// The schema bytes: each point's name (varint length, UTF-8) and unit
    /// (0, or its length plus one and UTF-8).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, unit) in &self.points {
            put_bytes(&mut out, name.as_bytes());
            match unit {
                None => put_varint(&mut out, 0),
                Some(unit) => {
                    put_varint(&mut out, unit.len() as u64 + 1);
                    out.extend_from_slice(unit.as_bytes());
                }
            }
        }
        out
    }

    pub fn decode(mut bytes: &[u8]) -> Result<Self, PackedError> {
        let mut points = Vec::new();
        while !bytes.is_empty() {
            let name = take_str(&mut bytes)?;
            let unit = match take_varint(&mut bytes)? {
                0 => None,
                len => Some(Arc::from(take_utf8(&mut bytes, len - 1)?)),
            };
            points.push((Arc::from(name), unit));
        }
        Ok(Self { points })
    }

    /// Where each of `points` is in this schema, if every one is there
    /// with its unit.
    pub fn indices(&self, points: &[PointSample]) -> Option<Vec<usize>> {
        let mut indices = Vec::with_capacity(points.len());
        // Points mostly come in their schema's order: look on from the last.
        let mut from = 0;
        for point in points {
            let matches = |(name, unit): &(Arc<str>, Option<Arc<str>>)| {
                *name == point.name && *unit == point.unit
            };
            let at = self.points[from..]
                .iter()
                .position(matches)
                .map(|i| i + from)
                .or_else(|| self.points[..from].iter().position(matches))?;
            indices.push(at);
            from = at + 1;
        }
        Some(indices)
    }

    /// This schema with the points of `points` it lacks added at the end
    /// (a point whose unit changed takes its new unit).
    pub fn extended(&self, points: &[PointSample]) -> Schema {
        let mut next = self.clone();
        for point in points {
            match next.points.iter_mut().find(|(name, _)| *name == point.name) {
                Some(entry) => entry.1 = point.unit.clone(),
                None => next.points.push((point.name.clone(), point.unit.clone())),
            }
        }
        next
    }
}

const GOOD: u8 = 0;
const BAD: u8 = 1;
const STALE: u8 = 2;
const HAS_ERROR: u8 = 1 << 5;

/// Packs `points`, which are at `indices` of their schema of `schema_len` points.
pub fn encode(points: &[PointSample], indices: &[usize], schema_len: usize) -> Vec<u8> {
    let dense = points.len() == schema_len && indices.iter().enumerate().all(|(i, &at)| i == at);
    let mut out = Vec::with_capacity(1 + points.len() * 3);
    out.push(u8::from(!dense));
    for (point, &index) in points.iter().zip(indices) {
        if !dense {
            put_varint(&mut out, index as u64);
        }
        let (quality, value, error) = match &point.reading {
            Reading::Good(value) => (GOOD, Some(value), None),
            Reading::Bad(error) => (BAD, None, Some(error)),
            Reading::Stale(value, error) => (STALE, Some(value), Some(error)),
        };
        let tag_at = out.len();
        out.push(0);
        let kind = match value {
            None => 0,
            Some(Value::Bool(false)) => 1,
            Some(Value::Bool(true)) => 2,
            Some(Value::Int(v)) => {
                put_varint(&mut out, ((v << 1) ^ (v >> 63)) as u64);
                3
            }
            Some(Value::UInt(v)) => {
                put_varint(&mut out, *v);
                4
            }
            Some(Value::Float(v)) if f64::from(*v as f32).to_bits() == v.to_bits() => {
                out.extend_from_slice(&(*v as f32).to_le_bytes());
                7
            }
            Some(Value::Float(v)) => {
                out.extend_from_slice(&v.to_le_bytes());
                5
            }
            Some(Value::Text(text)) => {
                put_bytes(&mut out, text.as_bytes());
                6
            }
        };
        if let Some(error) = error {
            put_bytes(&mut out, error.as_bytes());
        }
        out[tag_at] = quality | kind << 2 | if error.is_some() { HAS_ERROR } else { 0 };
    }
    out
}

/// The readings of a packed row of `schema`.
pub fn decode(schema: &Schema, mut bytes: &[u8]) -> Result<Vec<PointSample>, PackedError> {
    let sparse = match take_byte(&mut bytes)? {
        0 => false,
        1 => true,
        _ => return Err(PackedError("unknown layout")),
    };
    let mut points = Vec::with_capacity(if sparse { 8 } else { schema.points.len() });
    let mut next = 0;
    while !bytes.is_empty() {
        let index = if sparse {
            take_varint(&mut bytes)? as usize
        } else {
            next
        };
        next += 1;
        let (name, unit) = schema
            .points
            .get(index)
            .ok_or(PackedError("a point beyond its schema"))?;
        let tag = take_byte(&mut bytes)?;
        let value = match tag >> 2 & 0b111 {
            0 => None,
            1 => Some(Value::Bool(false)),
            2 => Some(Value::Bool(true)),
            3 => {
                let zigzag = take_varint(&mut bytes)?;
                Some(Value::Int((zigzag >> 1) as i64 ^ -((zigzag & 1) as i64)))
            }
            4 => Some(Value::UInt(take_varint(&mut bytes)?)),
            5 => Some(Value::Float(f64::from_le_bytes(take_array(&mut bytes)?))),
            6 => Some(Value::Text(take_str(&mut bytes)?.to_string())),
            _ => Some(Value::Float(f64::from(f32::from_le_bytes(take_array(
                &mut bytes,
            )?)))),
        };
        let error = if tag & HAS_ERROR != 0 {
            Some(take_str(&mut bytes)?.to_string())
        } else {
            None
        };
        let reading = match (tag & 0b11, value, error) {
            (GOOD, Some(value), None) => Reading::Good(value),
            (BAD, None, Some(error)) => Reading::Bad(error),
            (STALE, Some(value), Some(error)) => Reading::Stale(value, error),
            _ => return Err(PackedError("a reading that is not good, bad or stale")),
        };
        points.push(PointSample {
            name: name.clone(),
            unit: unit.clone(),
            reading,
        });
    }
    if !sparse && points.len() != schema.points.len() {
        return Err(PackedError("a dense row without every point of its schema"));
    }
    Ok(points)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn take_byte(bytes: &mut &[u8]) -> Result<u8, PackedError> {
    let (&first, rest) = bytes.split_first().ok_or(PackedError("cut short"))?;
    *bytes = rest;
    Ok(first)
}

fn take_varint(bytes: &mut &[u8]) -> Result<u64, PackedError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = take_byte(bytes)?;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(PackedError("a varint longer than 64 bits"))
}

fn take_array<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], PackedError> {
    if bytes.len() < N {
        return Err(PackedError("cut short"));
    }
    let (head, rest) = bytes.split_at(N);
    *bytes = rest;
    Ok(head.try_into().expect("N bytes"))
}

fn take_utf8<'a>(bytes: &mut &'a [u8], len: u64) -> Result<&'a str, PackedError> {
    let len = usize::try_from(len).map_err(|_| PackedError("cut short"))?;
    if bytes.len() < len {
        return Err(PackedError("cut short"));
    }
    let (head, rest) = bytes.split_at(len);
    *bytes = rest;
    std::str::from_utf8(head).map_err(|_| PackedError("text that is not UTF-8"))
}

fn take_str<'a>(bytes: &mut &'a [u8]) -> Result<&'a str, PackedError> {
    let len = take_varint(bytes)?;
    take_utf8(bytes, len)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn point(name: &str, unit: Option<&str>, reading: Reading) -> PointSample {
        PointSample {
            name: name.into(),
            unit: unit.map(Arc::from),
            reading,
        }
    }

    #[test]
    fn a_poll_packs_to_a_few_bytes_a_point_and_back() {
        let points = vec![
            point("energy", Some("kWh"), Reading::Good(Value::UInt(42))),
            point("delta", None, Reading::Good(Value::Int(-1))),
            point("temp", Some("degC"), Reading::Good(Value::Float(21.5))),
            point("ratio", None, Reading::Good(Value::Float(0.1))),
            point("on", None, Reading::Good(Value::Bool(true))),
            point("mode", None, Reading::Good(Value::Text("auto".into()))),
            point("missing", None, Reading::Bad("exception 2".into())),
            point(
                "old",
                None,
                Reading::Stale(Value::UInt(7), "not heard for 10m".into()),
            ),
        ];
        let schema = Schema::default().extended(&points);
        let indices = schema.indices(&points).unwrap();
        let packed = encode(&points, &indices, schema.points.len());
        assert_eq!(
            &packed[..5],
            [0, 0b10000, 42, 0b01100, 1],
            "dense; 42 and -1 in one byte each"
        );
        let schema = Schema::decode(&schema.encode()).unwrap();
        assert_eq!(decode(&schema, &packed).unwrap(), points);
    }

    #[test]
    fn some_points_of_a_schema_go_sparse_and_new_points_extend_it() {
        let all = vec![
            point("a", None, Reading::Good(Value::UInt(1))),
            point("b", None, Reading::Good(Value::UInt(2))),
        ];
        let schema = Schema::default().extended(&all);
        let some = vec![point("b", None, Reading::Good(Value::UInt(3)))];
        let indices = schema.indices(&some).unwrap();
        let packed = encode(&some, &indices, 2);
        assert_eq!(packed, [1, 1, 0b10000, 3]);
        assert_eq!(decode(&schema, &packed).unwrap(), some);
        let new = vec![point("b", Some("V"), Reading::Good(Value::UInt(3)))];
        assert_eq!(schema.indices(&new), None, "a new unit is a new schema");
        let extended = schema.extended(&new);
        assert_eq!(extended.points.len(), 2);
        assert_eq!(extended.indices(&new), Some(vec![1]));
    }

    #[test]
    fn damaged_rows_are_errors_not_made_up_readings() {
        let schema = Schema::default().extended(&[point("a", None, Reading::Good(Value::UInt(1)))]);
        for bytes in [
            &[][..],
            &[2],
            &[0, 0b10000],
            &[0, 0b10100, 1, 0b10000, 1],
            &[1, 5, 0b10000, 1],
            &[0, 0b11],
        ] {
            assert!(decode(&schema, bytes).is_err(), "{bytes:?}");
        }
        assert!(Schema::decode(&[5, b'a']).is_err());
    }

    fn reading() -> impl Strategy<Value = Reading> {
        let value = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(Value::UInt),
            any::<f64>()
                .prop_filter("JSON numbers", |f| f.is_finite())
                .prop_map(Value::Float),
            ".{0,12}".prop_map(Value::Text),
        ];
        prop_oneof![
            value.clone().prop_map(Reading::Good),
            ".{0,20}".prop_map(Reading::Bad),
            (value, ".{0,20}").prop_map(|(v, e)| Reading::Stale(v, e)),
        ]
    }

    proptest! {
        #[test]
        fn every_reading_comes_back_as_it_went(
            readings in proptest::collection::vec((reading(), proptest::option::of("[a-z]{1,3}")), 1..20),
            skip in any::<bool>(),
        ) {
            let points: Vec<PointSample> = readings
                .into_iter()
                .enumerate()
                .map(|(i, (reading, unit))| point(&format!("p{i}"), unit.as_deref(), reading))
                .collect();
            let schema = Schema::decode(&Schema::default().extended(&points).encode()).unwrap();
            let row: Vec<PointSample> = if skip { points.iter().skip(1).cloned().collect() } else { points };
            let indices = schema.indices(&row).unwrap();
            let packed = encode(&row, &indices, schema.points.len());
            prop_assert_eq!(decode(&schema, &packed).unwrap(), row);
        }

        #[test]
        fn no_bytes_make_decoding_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let schema = Schema::default().extended(&[point("a", None, Reading::Good(Value::UInt(1)))]);
            let _ = decode(&schema, &bytes);
            let _ = Schema::decode(&bytes);
        }
    }
}
