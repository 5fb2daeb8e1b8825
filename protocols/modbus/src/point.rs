//! Points: where a value lives on a Modbus device and how its registers
//! become a value (and a value becomes registers, for writes).

use std::sync::Arc;

use kite_core::{Reading, Value, WriteError};
use serde::Deserialize;

/// Largest number of registers one read may ask for (Modbus application protocol, FC 3/4).
pub const MAX_REGISTERS_PER_READ: u16 = 125;
/// Largest number of bits one read may ask for (FC 1/2).
pub const MAX_BITS_PER_READ: u16 = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Area {
    Holding,
    Input,
    Coil,
    Discrete,
}

impl Area {
    pub fn is_bits(self) -> bool {
        matches!(self, Area::Coil | Area::Discrete)
    }

    pub fn max_per_read(self) -> u16 {
        if self.is_bits() {
            MAX_BITS_PER_READ
        } else {
            MAX_REGISTERS_PER_READ
        }
    }

    pub fn is_writable(self) -> bool {
        matches!(self, Area::Holding | Area::Coil)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    String,
}

impl DataType {
    /// Registers a value of this type takes; `None` for types whose size is
    /// configured (`string`) or that fit in one register (`bool`, with `bit`).
    fn fixed_registers(self) -> Option<u16> {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => Some(1),
            DataType::U32 | DataType::I32 | DataType::F32 => Some(2),
            DataType::U64 | DataType::I64 | DataType::F64 => Some(4),
            DataType::String => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::String => "string",
        }
    }
}

/// Byte order of multi-byte values, named by where the bytes of the value
/// `ABCD` (most significant first) appear on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ByteOrder {
    /// Big endian: words and bytes most significant first.
    #[default]
    Abcd,
    /// Little endian.
    Dcba,
    /// Bytes swapped within each word.
    Badc,
    /// Words swapped, bytes in each word big endian.
    Cdab,
}

impl ByteOrder {
    fn swaps_words(self) -> bool {
        matches!(self, ByteOrder::Dcba | ByteOrder::Cdab)
    }

    fn swaps_bytes(self) -> bool {
        matches!(self, ByteOrder::Dcba | ByteOrder::Badc)
    }
}

/// One configured point.
#[derive(Debug, Clone, PartialEq)]
pub struct PointSpec {
    pub name: Arc<str>,
    pub area: Area,
    pub address: u16,
    pub data_type: DataType,
    pub order: ByteOrder,
    pub scale: f64,
    pub offset: f64,
    pub unit: Option<Arc<str>>,
    pub writable: bool,
    /// For `bool` in a register: which bit (0 = least significant).
    pub bit: Option<u8>,
    /// For `string`: how many registers (two characters each).
    pub length: Option<u16>,
}

/// A point whose configuration cannot work; the gateway names the config line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PointError {
    #[error("type {0} does not fit in a coil or discrete input: only bool does")]
    TypeNotBits(&'static str),
    #[error("`bit` is only for type bool in a holding or input register")]
    BitWithoutRegisterBool,
    #[error("bit {0} is out of range: a register has bits 0 to 15")]
    BitOutOfRange(u8),
    #[error("type bool in a register needs `bit` (0 to 15)")]
    BoolNeedsBit,
    #[error("type string needs `length` (registers, two characters each, 1 to 125)")]
    StringNeedsLength,
    #[error("`length` is only for type string")]
    LengthWithoutString,
    #[error("{area:?} points are read-only and cannot be writable")]
    ReadOnlyArea { area: Area },
    #[error("a single bit in a register cannot be written without touching its neighbours; make it read-only")]
    BitNotWritable,
    #[error("range {start}..{end} runs past the last Modbus address 65535")]
    AddressOverflow { start: u32, end: u32 },
    #[error(
        "the point spans {0} registers, more than one read can carry ({MAX_REGISTERS_PER_READ})"
    )]
    TooLong(u16),
    #[error("scale and offset apply to numbers only, not to {0}")]
    ScaleOnNonNumber(&'static str),
    #[error("scale must be a finite number other than 0")]
    BadScale,
}

impl PointSpec {
    /// Registers (or bits) the point occupies.
    pub fn width(&self) -> u16 {
        if self.area.is_bits() {
            return 1;
        }
        self.data_type
            .fixed_registers()
            .unwrap_or(self.length.unwrap_or(1))
    }

    /// One past the last register (or bit) of the point.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.width())
    }

    fn is_scaled(&self) -> bool {
        self.scale != 1.0 || self.offset != 0.0
    }

    /// Every problem with this point's configuration.
    pub fn validate(&self) -> Vec<PointError> {
        let mut errors = Vec::new();
        let is_bool = self.data_type == DataType::Bool;
        if self.area.is_bits() {
            if !is_bool {
                errors.push(PointError::TypeNotBits(self.data_type.name()));
            }
            if self.bit.is_some() {
                errors.push(PointError::BitWithoutRegisterBool);
            }
        } else if is_bool {
            match self.bit {
                None => errors.push(PointError::BoolNeedsBit),
                Some(bit) if bit > 15 => errors.push(PointError::BitOutOfRange(bit)),
                Some(_) if self.writable => errors.push(PointError::BitNotWritable),
                Some(_) => {}
            }
        } else if self.bit.is_some() {
            errors.push(PointError::BitWithoutRegisterBool);
        }
        match (self.data_type, self.length) {
            (DataType::String, None) => errors.push(PointError::StringNeedsLength),
            (DataType::String, Some(0)) => errors.push(PointError::StringNeedsLength),
            (DataType::String, Some(n)) if n > MAX_REGISTERS_PER_READ => {
                errors.push(PointError::TooLong(n))
            }
            (DataType::String, Some(_)) => {}
            (_, Some(_)) => errors.push(PointError::LengthWithoutString),
            (_, None) => {}
        }
        if self.writable && !self.area.is_writable() {
            errors.push(PointError::ReadOnlyArea { area: self.area });
        }
        if self.end() > 65536 {
            errors.push(PointError::AddressOverflow {
                start: self.address.into(),
                end: self.end(),
            });
        }
        if matches!(self.data_type, DataType::Bool | DataType::String) && self.is_scaled() {
            errors.push(PointError::ScaleOnNonNumber(self.data_type.name()));
        }
        if !self.scale.is_finite() || self.scale == 0.0 || !self.offset.is_finite() {
            errors.push(PointError::BadScale);
        }
        errors
    }

    /// Decodes a coil or discrete input.
    pub fn decode_bit(&self, bit: bool) -> Reading {
        Reading::Good(Value::Bool(bit))
    }

    /// Decodes the point from exactly its `width()` registers.
    pub fn decode_registers(&self, words: &[u16]) -> Reading {
        if words.len() != usize::from(self.width()) {
            return Reading::Bad(format!(
                "expected {} registers, got {}",
                self.width(),
                words.len()
            ));
        }
        if let (DataType::Bool, Some(bit)) = (self.data_type, self.bit) {
            return Reading::Good(Value::Bool(words[0] >> bit & 1 == 1));
        }
        let bytes = self.order.to_bytes(words);
        let raw = match self.data_type {
            DataType::Bool => return Reading::Bad("bool in a register needs `bit`".into()),
            DataType::String => return Reading::Good(Value::Text(decode_text(&bytes))),
            DataType::U16 => Raw::Unsigned(u16::from_be_bytes(array(&bytes)).into()),
            DataType::I16 => Raw::Signed(i16::from_be_bytes(array(&bytes)).into()),
            DataType::U32 => Raw::Unsigned(u32::from_be_bytes(array(&bytes)).into()),
            DataType::I32 => Raw::Signed(i32::from_be_bytes(array(&bytes)).into()),
            DataType::U64 => Raw::Unsigned(u64::from_be_bytes(array(&bytes))),
            DataType::I64 => Raw::Signed(i64::from_be_bytes(array(&bytes))),
            DataType::F32 => Raw::Float(shortest_f64(f32::from_be_bytes(array(&bytes)))),
            DataType::F64 => Raw::Float(f64::from_be_bytes(array(&bytes))),
        };
        self.scaled(raw)
    }

    fn scaled(&self, raw: Raw) -> Reading {
        if let Raw::Float(f) = raw {
            if !f.is_finite() {
                return Reading::Bad(format!("device sent a non-finite number ({f})"));
            }
        }
        if !self.is_scaled() {
            return Reading::Good(match raw {
                Raw::Unsigned(u) => Value::UInt(u),
                Raw::Signed(i) => Value::Int(i),
                Raw::Float(f) => Value::Float(f),
            });
        }
        let (x, raw_decimals) = match raw {
            Raw::Unsigned(u) => (u as f64, 0),
            Raw::Signed(i) => (i as f64, 0),
            Raw::Float(f) => (f, decimals(f)),
        };
        let decimals = raw_decimals + decimals(self.scale).max(decimals(self.offset));
        Reading::Good(Value::Float(round_to(
            x * self.scale + self.offset,
            decimals,
        )))
    }

    /// Converts a value from a write request into what goes on the wire,
    /// with the same scaling and byte order as reads, checking type and range.
    pub fn encode(&self, value: &serde_json::Value) -> Result<WritePayload, WriteError> {
        if !self.writable {
            return Err(WriteError::NotWritable(self.name.to_string()));
        }
        if self.area == Area::Coil {
            let on = match value {
                serde_json::Value::Bool(b) => *b,
                serde_json::Value::Number(n) if n.as_u64() == Some(0) => false,
                serde_json::Value::Number(n) if n.as_u64() == Some(1) => true,
                other => return Err(WriteError::Type("bool", other.to_string())),
            };
            return Ok(WritePayload::Coil(on));
        }
        let width = usize::from(self.width());
        let bytes: Vec<u8> = match self.data_type {
            DataType::String => {
                let text = value
                    .as_str()
                    .ok_or_else(|| WriteError::Type("string", value.to_string()))?;
                if text.len() > width * 2 {
                    return Err(WriteError::Range(format!(
                        "text of {} bytes does not fit in {width} registers",
                        text.len()
                    )));
                }
                let mut bytes = text.as_bytes().to_vec();
                bytes.resize(width * 2, 0);
                bytes
            }
            DataType::Bool => return Err(WriteError::NotWritable(self.name.to_string())),
            numeric => {
                let number = value
                    .as_f64()
                    .ok_or_else(|| WriteError::Type("number", value.to_string()))?;
                let raw = (number - self.offset) / self.scale;
                encode_number(numeric, raw).ok_or_else(|| {
                    WriteError::Range(format!(
                        "{number} (raw {raw}) is out of range for {}",
                        numeric.name()
                    ))
                })?
            }
        };
        Ok(WritePayload::Registers(self.order.to_words(&bytes)))
    }
}

/// What a write puts on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum WritePayload {
    Coil(bool),
    Registers(Vec<u16>),
}

enum Raw {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl ByteOrder {
    /// Wire registers to the value's bytes, most significant first.
    fn to_bytes(self, words: &[u16]) -> Vec<u8> {
        let mut ordered = words.to_vec();
        if self.swaps_words() {
            ordered.reverse();
        }
        ordered
            .iter()
            .flat_map(|w| {
                let [hi, lo] = w.to_be_bytes();
                if self.swaps_bytes() {
                    [lo, hi]
                } else {
                    [hi, lo]
                }
            })
            .collect()
    }

    /// The value's bytes, most significant first, to wire registers.
    fn to_words(self, bytes: &[u8]) -> Vec<u16> {
        let mut words: Vec<u16> = bytes
            .chunks(2)
            .map(|pair| {
                let (hi, lo) = (pair[0], pair.get(1).copied().unwrap_or(0));
                if self.swaps_bytes() {
                    u16::from_be_bytes([lo, hi])
                } else {
                    u16::from_be_bytes([hi, lo])
                }
            })
            .collect();
        if self.swaps_words() {
            words.reverse();
        }
        words
    }
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

fn decode_text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end])
        .trim_end()
        .to_string()
}

fn encode_number(data_type: DataType, raw: f64) -> Option<Vec<u8>> {
    if !raw.is_finite() {
        return None;
    }
    let int = raw.round();
    let in_range = |min: f64, max: f64| int >= min && int <= max;
    Some(match data_type {
        DataType::U16 if in_range(0.0, u16::MAX as f64) => (int as u16).to_be_bytes().to_vec(),
        DataType::I16 if in_range(i16::MIN as f64, i16::MAX as f64) => {
            (int as i16).to_be_bytes().to_vec()
        }
        DataType::U32 if in_range(0.0, u32::MAX as f64) => (int as u32).to_be_bytes().to_vec(),
        DataType::I32 if in_range(i32::MIN as f64, i32::MAX as f64) => {
            (int as i32).to_be_bytes().to_vec()
        }
        // 2^64 and -2^63 are exact in f64; the upper bounds are exclusive.
        DataType::U64 if (0.0..18_446_744_073_709_551_616.0).contains(&int) => {
            (int as u64).to_be_bytes().to_vec()
        }
        DataType::I64
            if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&int) =>
        {
            (int as i64).to_be_bytes().to_vec()
        }
        DataType::F32 if raw.abs() <= f32::MAX as f64 => (raw as f32).to_be_bytes().to_vec(),
        DataType::F64 => raw.to_be_bytes().to_vec(),
        _ => return None,
    })
}

/// An f32 widened to the f64 with the same shortest decimal form, so that
/// `0.1f32` reads as 0.1 and not 0.10000000149011612.
fn shortest_f64(f: f32) -> f64 {
    if !f.is_finite() {
        return f64::from(f);
    }
    f.to_string().parse().unwrap_or(f64::from(f))
}

/// Decimal places in the shortest form of `x` (capped at 15).
fn decimals(x: f64) -> i32 {
    let text = x.abs().to_string();
    text.split_once('.')
        .map_or(0, |(_, frac)| frac.len().min(15) as i32)
}

fn round_to(x: f64, decimals: i32) -> f64 {
    if decimals >= 15 || !x.is_finite() {
        return x;
    }
    let factor = 10f64.powi(decimals);
    let rounded = (x * factor).round() / factor;
    if rounded.is_finite() {
        rounded
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(data_type: DataType, order: ByteOrder) -> PointSpec {
        PointSpec {
            name: "p".into(),
            area: Area::Holding,
            address: 0,
            data_type,
            order,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            writable: true,
            bit: None,
            length: None,
        }
    }

    fn check_decode(data_type: DataType, order: ByteOrder, words: &[u16], expected: Value) {
        assert_eq!(
            spec(data_type, order).decode_registers(words),
            Reading::Good(expected),
            "{data_type:?} {order:?} {words:04x?}"
        );
    }

    #[test]
    fn decodes_every_type_and_order() {
        use ByteOrder::*;
        use DataType::*;
        // 0x4148_0000 is 12.5f32.
        check_decode(F32, Abcd, &[0x4148, 0x0000], Value::Float(12.5));
        check_decode(F32, Cdab, &[0x0000, 0x4148], Value::Float(12.5));
        check_decode(F32, Badc, &[0x4841, 0x0000], Value::Float(12.5));
        check_decode(F32, Dcba, &[0x0000, 0x4841], Value::Float(12.5));
        check_decode(U16, Abcd, &[0xfffe], Value::UInt(65534));
        check_decode(U16, Badc, &[0x3412], Value::UInt(0x1234));
        check_decode(I16, Abcd, &[0xfffe], Value::Int(-2));
        check_decode(U32, Abcd, &[0x0001, 0x0002], Value::UInt(0x0001_0002));
        check_decode(U32, Cdab, &[0x0002, 0x0001], Value::UInt(0x0001_0002));
        check_decode(I32, Dcba, &[0xfeff, 0xffff], Value::Int(-2));
        check_decode(U64, Abcd, &[0, 0, 1, 0], Value::UInt(65536));
        check_decode(U64, Cdab, &[0, 1, 0, 0], Value::UInt(65536));
        check_decode(I64, Abcd, &[0xffff; 4], Value::Int(-1));
        check_decode(F64, Abcd, &[0x4029, 0, 0, 0], Value::Float(12.5));
        check_decode(F64, Dcba, &[0, 0, 0, 0x2940], Value::Float(12.5));
    }

    #[test]
    fn decodes_bits_strings_and_scaling() {
        let mut bit = spec(DataType::Bool, ByteOrder::Abcd);
        bit.bit = Some(3);
        assert_eq!(
            bit.decode_registers(&[0b1000]),
            Reading::Good(Value::Bool(true))
        );
        assert_eq!(
            bit.decode_registers(&[0b0111]),
            Reading::Good(Value::Bool(false))
        );

        let mut text = spec(DataType::String, ByteOrder::Abcd);
        text.length = Some(3);
        assert_eq!(
            text.decode_registers(&[0x4b49, 0x5445, 0x0000]),
            Reading::Good(Value::Text("KITE".into()))
        );

        let mut scaled = spec(DataType::I16, ByteOrder::Abcd);
        scaled.scale = 0.1;
        scaled.offset = -40.0;
        assert_eq!(
            scaled.decode_registers(&[3]),
            Reading::Good(Value::Float(-39.7))
        );

        let f = spec(DataType::F32, ByteOrder::Abcd);
        assert!(matches!(f.decode_registers(&[0x7fc0, 0]), Reading::Bad(_)));
        assert!(matches!(f.decode_registers(&[0x7fc0]), Reading::Bad(_)));
    }

    #[test]
    fn encode_is_the_inverse_of_decode() {
        use ByteOrder::*;
        use DataType::*;
        let cases: &[(DataType, serde_json::Value)] = &[
            (U16, json!(65535)),
            (I16, json!(-32768)),
            (U32, json!(4_000_000_000u64)),
            (I32, json!(-123456)),
            (U64, json!(1u64 << 40)),
            (I64, json!(-(1i64 << 40))),
            (F32, json!(12.5)),
            (F64, json!(-0.25)),
        ];
        for order in [Abcd, Dcba, Badc, Cdab] {
            for (data_type, value) in cases {
                let point = spec(*data_type, order);
                let WritePayload::Registers(words) = point.encode(value).unwrap() else {
                    panic!("registers expected");
                };
                let Reading::Good(decoded) = point.decode_registers(&words) else {
                    panic!("good reading expected");
                };
                assert_eq!(
                    serde_json::to_value(decoded).unwrap().as_f64(),
                    value.as_f64()
                );
            }
        }
    }

    #[test]
    fn encode_applies_scale_and_checks_range_and_type() {
        let mut point = spec(DataType::U16, ByteOrder::Abcd);
        point.scale = 0.1;
        assert_eq!(
            point.encode(&json!(21.5)),
            Ok(WritePayload::Registers(vec![215]))
        );
        assert!(matches!(
            point.encode(&json!(6553.6)),
            Err(WriteError::Range(_))
        ));
        assert!(matches!(
            point.encode(&json!(-1)),
            Err(WriteError::Range(_))
        ));
        assert!(matches!(
            point.encode(&json!("hot")),
            Err(WriteError::Type(..))
        ));
        point.writable = false;
        assert!(matches!(
            point.encode(&json!(1)),
            Err(WriteError::NotWritable(_))
        ));

        let mut coil = spec(DataType::Bool, ByteOrder::Abcd);
        coil.area = Area::Coil;
        assert_eq!(coil.encode(&json!(true)), Ok(WritePayload::Coil(true)));
        assert!(coil.encode(&json!(2)).is_err());
    }

    #[test]
    fn validation_names_each_mistake() {
        let mut point = spec(DataType::F64, ByteOrder::Abcd);
        point.address = 65533;
        assert_eq!(
            point.validate(),
            vec![PointError::AddressOverflow {
                start: 65533,
                end: 65537
            }]
        );
        let mut coil = spec(DataType::U32, ByteOrder::Abcd);
        coil.area = Area::Discrete;
        assert_eq!(
            coil.validate(),
            vec![
                PointError::TypeNotBits("u32"),
                PointError::ReadOnlyArea {
                    area: Area::Discrete
                }
            ]
        );
        let bool_in_register = spec(DataType::Bool, ByteOrder::Abcd);
        assert_eq!(bool_in_register.validate(), vec![PointError::BoolNeedsBit]);
    }
}
