//! Zigbee Cluster Library frames: the header, attribute values of the ZCL
//! data types, and the few commands Kite sends and reads (read attributes,
//! configure reporting, report attributes, default response, On/Off, Move to
//! Level, IAS Zone status changes). Everything little-endian, as ZCL is.

use thiserror::Error;

/// Global command: read attributes.
pub const READ_ATTRIBUTES: u8 = 0x00;
/// Global command: read attributes response.
pub const READ_ATTRIBUTES_RESPONSE: u8 = 0x01;
/// Global command: configure reporting.
pub const WRITE_ATTRIBUTES: u8 = 0x02;
pub const WRITE_ATTRIBUTES_RESPONSE: u8 = 0x04;
pub const CONFIGURE_REPORTING: u8 = 0x06;
/// Global command: configure reporting response.
pub const CONFIGURE_REPORTING_RESPONSE: u8 = 0x07;
/// Global command: report attributes.
pub const REPORT_ATTRIBUTES: u8 = 0x0A;
/// Global command: default response.
pub const DEFAULT_RESPONSE: u8 = 0x0B;
/// IAS Zone (0x0500) cluster-specific command from the server: zone status
/// change notification.
pub const ZONE_STATUS_CHANGE_NOTIFICATION: u8 = 0x00;
/// IAS Zone, from the device: it asks to be enrolled.
pub const ZONE_ENROLL_REQUEST: u8 = 0x01;
/// IAS Zone, to the device: the answer to its enroll request.
pub const ZONE_ENROLL_RESPONSE: u8 = 0x00;
/// The ZCL status for success.
pub const SUCCESS: u8 = 0x00;

/// Nesting of arrays and structures deeper than this is refused rather than
/// followed (no device Kite knows nests at all).
const MAX_DEPTH: usize = 4;

/// A ZCL frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZclHeader {
    /// A command of the cluster (true) or a global one (false).
    pub cluster_specific: bool,
    /// The manufacturer code of a manufacturer-specific command.
    pub manufacturer: Option<u16>,
    /// Sent by the server to the client (true), or to the server (false).
    pub to_client: bool,
    pub disable_default_response: bool,
    /// The transaction sequence number.
    pub seq: u8,
    pub command: u8,
}

impl ZclHeader {
    /// A global command to a server.
    pub fn global(seq: u8, command: u8, disable_default_response: bool) -> Self {
        ZclHeader {
            cluster_specific: false,
            manufacturer: None,
            to_client: false,
            disable_default_response,
            seq,
            command,
        }
    }

    /// A cluster-specific command to a server.
    pub fn cluster(seq: u8, command: u8, disable_default_response: bool) -> Self {
        ZclHeader {
            cluster_specific: true,
            ..Self::global(seq, command, disable_default_response)
        }
    }
}

/// A ZCL frame or value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ZclError {
    #[error("{what} cut short")]
    Short { what: &'static str },
    #[error("reserved ZCL frame type {0}")]
    ReservedFrameType(u8),
    #[error("ZCL data type 0x{0:02x} is not one Kite can size")]
    UnknownType(u8),
    #[error("arrays or structures nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("{what}: {extra} bytes after the last field")]
    Trailing { what: &'static str, extra: usize },
}

fn short(what: &'static str) -> ZclError {
    ZclError::Short { what }
}

/// Splits a ZCL frame into its header and payload.
pub fn parse_frame(bytes: &[u8]) -> Result<(ZclHeader, &[u8]), ZclError> {
    let (&control, rest) = bytes.split_first().ok_or(short("ZCL header"))?;
    let frame_type = control & 0x03;
    if frame_type > 1 {
        return Err(ZclError::ReservedFrameType(frame_type));
    }
    let (manufacturer, rest) = if control & 0x04 != 0 {
        let (code, rest) = split::<2>(rest).ok_or(short("ZCL header"))?;
        (Some(u16::from_le_bytes(code)), rest)
    } else {
        (None, rest)
    };
    let ([seq, command], payload) = split::<2>(rest).ok_or(short("ZCL header"))?;
    Ok((
        ZclHeader {
            cluster_specific: frame_type == 1,
            manufacturer,
            to_client: control & 0x08 != 0,
            disable_default_response: control & 0x10 != 0,
            seq,
            command,
        },
        payload,
    ))
}

/// A ZCL frame: `header` then `payload`.
pub fn encode_frame(header: &ZclHeader, payload: &[u8]) -> Vec<u8> {
    let control = u8::from(header.cluster_specific)
        | if header.manufacturer.is_some() {
            0x04
        } else {
            0
        }
        | if header.to_client { 0x08 } else { 0 }
        | if header.disable_default_response {
            0x10
        } else {
            0
        };
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(control);
    if let Some(code) = header.manufacturer {
        out.extend(code.to_le_bytes());
    }
    out.extend([header.seq, header.command]);
    out.extend_from_slice(payload);
    out
}

fn split<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
    let head = bytes.get(..N)?;
    let mut out = [0; N];
    out.copy_from_slice(head);
    Some((out, &bytes[N..]))
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum ZclValue {
    Bool(bool),
    /// Unsigned integers, bitmaps, enumerations, UTC time, cluster and
    /// attribute ids, BACnet OIDs and IEEE addresses.
    Uint(u64),
    Int(i64),
    /// Semi, single and double precision floats.
    Float(f64),
    /// Character strings, cut at the first NUL (devices pad with them);
    /// bytes that are not UTF-8 become U+FFFD.
    Str(String),
    /// Octet strings, general data (`data8`..`data64`, in wire order) and
    /// 128-bit keys.
    Bytes(Vec<u8>),
    /// A value of a type Kite does not decode (arrays, structures, sets,
    /// bags, time of day, date, no data) or a boolean that is neither 0 nor
    /// 1, with its type id and encoded bytes.
    Raw(u8, Vec<u8>),
}

/// The width of the fixed-size integer types, by type id.
fn int_width(type_id: u8) -> Option<usize> {
    match type_id {
        0x08..=0x0F => Some(usize::from(type_id - 0x07)),
        0x18..=0x1F => Some(usize::from(type_id - 0x17)),
        0x20..=0x27 => Some(usize::from(type_id - 0x1F)),
        0x28..=0x2F => Some(usize::from(type_id - 0x27)),
        0x30 => Some(1),
        0x31 => Some(2),
        0xE2 => Some(4),
        0xE8 | 0xE9 => Some(2),
        0xEA => Some(4),
        0xF0 => Some(8),
        _ => None,
    }
}

/// Whether values of `type_id` are analog, so that reporting them takes a
/// reportable change (integers, floats and times; ZCL spec table 2-10).
pub fn is_analog(type_id: u8) -> bool {
    matches!(type_id, 0x20..=0x2F | 0x38..=0x3A | 0xE0..=0xE2)
}

fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0, |acc, &byte| (acc << 8) | u64::from(byte))
}

/// Decodes one value of type `type_id` from the start of `bytes`; returns
/// it and how many bytes it took. Arrays, structures, sets and bags come
/// back [`ZclValue::Raw`], their extent found by walking their elements; a
/// type whose size cannot be known is an error, never a guess.
pub fn parse_value(type_id: u8, bytes: &[u8]) -> Result<(ZclValue, usize), ZclError> {
    parse_value_at(type_id, bytes, 0)
}

fn parse_value_at(type_id: u8, bytes: &[u8], depth: usize) -> Result<(ZclValue, usize), ZclError> {
    let take = |n: usize| bytes.get(..n).ok_or(short("attribute value"));
    if let Some(width) = int_width(type_id) {
        let raw = take(width)?;
        let value = match type_id {
            0x08..=0x0F => ZclValue::Bytes(raw.to_vec()),
            0x28..=0x2F => {
                // Sign-extend from the value's own width.
                let shift = 64 - 8 * width as u32;
                ZclValue::Int(((le(raw) << shift) as i64) >> shift)
            }
            _ => ZclValue::Uint(le(raw)),
        };
        return Ok((value, width));
    }
    match type_id {
        0x00 => Ok((ZclValue::Raw(0x00, Vec::new()), 0)),
        0x10 => {
            let byte = take(1)?[0];
            let value = match byte {
                0 => ZclValue::Bool(false),
                1 => ZclValue::Bool(true),
                // 0xFF is the invalid value; anything else is not a boolean.
                other => ZclValue::Raw(0x10, vec![other]),
            };
            Ok((value, 1))
        }
        0x38 => {
            let raw = take(2)?;
            Ok((
                ZclValue::Float(half_to_f64(u16::from_le_bytes([raw[0], raw[1]]))),
                2,
            ))
        }
        0x39 => {
            let raw = take(4)?;
            let bits = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            Ok((ZclValue::Float(f64::from(f32::from_bits(bits))), 4))
        }
        0x3A => {
            let raw = take(8)?;
            Ok((ZclValue::Float(f64::from_bits(le(raw))), 8))
        }
        0x41..=0x44 => {
            // Octet and character strings, with a 1-byte (0x41, 0x42) or
            // 2-byte (0x43, 0x44) length; all ones is the invalid value,
            // with no bytes after it.
            let prefix = if type_id <= 0x42 { 1 } else { 2 };
            let len = le(take(prefix)?);
            let len = if len == (1 << (8 * prefix)) - 1 {
                0
            } else {
                len as usize
            };
            let content = bytes
                .get(prefix..prefix + len)
                .ok_or(short("string value"))?;
            let value = if matches!(type_id, 0x42 | 0x44) {
                let text = content.split(|&b| b == 0).next().unwrap_or_default();
                ZclValue::Str(String::from_utf8_lossy(text).into_owned())
            } else {
                ZclValue::Bytes(content.to_vec())
            };
            Ok((value, prefix + len))
        }
        0x48 | 0x50 | 0x51 | 0x4C => {
            let len = composite_len(type_id, bytes, depth)?;
            Ok((ZclValue::Raw(type_id, bytes[..len].to_vec()), len))
        }
        0xE0 | 0xE1 => Ok((ZclValue::Raw(type_id, take(4)?.to_vec()), 4)),
        0xF1 => Ok((ZclValue::Bytes(take(16)?.to_vec()), 16)),
        other => Err(ZclError::UnknownType(other)),
    }
}

/// How many bytes an array, set or bag (element type, u16 count, elements)
/// or a structure (u16 count, then type and value per member) takes. A
/// count of 0xFFFF is the invalid value, with no elements.
fn composite_len(type_id: u8, bytes: &[u8], depth: usize) -> Result<usize, ZclError> {
    if depth >= MAX_DEPTH {
        return Err(ZclError::TooDeep);
    }
    let is_struct = type_id == 0x4C;
    let header = if is_struct { 2 } else { 3 };
    let head = bytes.get(..header).ok_or(short("array or structure"))?;
    let count = u16::from_le_bytes([head[header - 2], head[header - 1]]);
    let count = if count == 0xFFFF { 0 } else { count };
    let mut at = header;
    for _ in 0..count {
        let element_type = if is_struct {
            let element_type = *bytes.get(at).ok_or(short("structure"))?;
            at += 1;
            element_type
        } else {
            head[0]
        };
        let rest = bytes.get(at..).ok_or(short("array or structure"))?;
        let (_, used) = parse_value_at(element_type, rest, depth + 1)?;
        at += used;
    }
    Ok(at)
}

fn half_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1F);
    let fraction = f64::from(bits & 0x03FF);
    sign * match exponent {
        0 => fraction * 2f64.powi(-24),
        0x1F if fraction == 0.0 => f64::INFINITY,
        0x1F => f64::NAN,
        _ => (1024.0 + fraction) * 2f64.powi(exponent - 25),
    }
}

fn f64_to_half(value: f64) -> u16 {
    let bits = (value as f32).to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xFF) as i32;
    let mantissa = bits & 0x007F_FFFF;
    if exponent == 0xFF {
        return sign | 0x7C00 | if mantissa != 0 { 0x0200 } else { 0 };
    }
    let e = exponent - 127 + 15;
    if e >= 0x1F {
        return sign | 0x7C00;
    }
    if e <= 0 {
        // A subnormal half, or zero.
        if e < -10 {
            return sign;
        }
        let m = mantissa | 0x0080_0000;
        let shift = (14 - e) as u32;
        let half = (m >> shift) + ((m >> (shift - 1)) & 1);
        return sign | half as u16;
    }
    // Rounding may carry into the exponent, which is still right.
    let half = ((e as u32) << 10) + (mantissa >> 13) + ((mantissa >> 12) & 1);
    sign | half as u16
}

/// Encodes `value` as type `type_id`: integers (a `Uint` or `Int` that fits
/// the type's width and sign), floats, booleans, strings and fixed-size
/// bytes; None if it does not fit or the type is not one Kite writes.
pub fn encode_value(type_id: u8, value: &ZclValue) -> Option<Vec<u8>> {
    if let Some(width) = int_width(type_id) {
        let bits = 8 * width as u32;
        let signed = matches!(type_id, 0x28..=0x2F);
        let raw: u64 = match (value, signed) {
            (ZclValue::Uint(v), false) if bits == 64 || *v < 1 << bits => *v,
            (ZclValue::Int(v), false) if *v >= 0 && (bits == 64 || (*v as u64) < 1 << bits) => {
                *v as u64
            }
            (ZclValue::Int(v), true)
                if bits == 64 || (v >> (bits - 1)) == 0 || (v >> (bits - 1)) == -1 =>
            {
                *v as u64
            }
            (ZclValue::Uint(v), true) if *v < 1 << (bits - 1) => *v,
            (ZclValue::Bytes(b), _) if matches!(type_id, 0x08..=0x0F) && b.len() == width => {
                return Some(b.clone())
            }
            _ => return None,
        };
        return Some(raw.to_le_bytes()[..width].to_vec());
    }
    match (type_id, value) {
        (0x10, ZclValue::Bool(b)) => Some(vec![u8::from(*b)]),
        (0x38, ZclValue::Float(v)) => Some(f64_to_half(*v).to_le_bytes().to_vec()),
        (0x39, ZclValue::Float(v)) => Some((*v as f32).to_le_bytes().to_vec()),
        (0x3A, ZclValue::Float(v)) => Some(v.to_le_bytes().to_vec()),
        (0x41, ZclValue::Bytes(b)) if b.len() < 0xFF => Some([&[b.len() as u8][..], b].concat()),
        (0x42, ZclValue::Str(s)) if s.len() < 0xFF => {
            Some([&[s.len() as u8][..], s.as_bytes()].concat())
        }
        (0x43, ZclValue::Bytes(b)) if b.len() < 0xFFFF => {
            Some([&(b.len() as u16).to_le_bytes()[..], b].concat())
        }
        (0x44, ZclValue::Str(s)) if s.len() < 0xFFFF => {
            Some([&(s.len() as u16).to_le_bytes()[..], s.as_bytes()].concat())
        }
        (0xF1, ZclValue::Bytes(b)) if b.len() == 16 => Some(b.clone()),
        (type_id, ZclValue::Raw(raw_type, bytes)) if *raw_type == type_id => Some(bytes.clone()),
        _ => None,
    }
}

/// The records of a Report Attributes command (global 0x0A): attribute,
/// type and value each. A record cut short, or of a type whose size is not
/// known, makes the whole payload an error.
pub fn parse_report_attributes(payload: &[u8]) -> Result<Vec<(u16, u8, ZclValue)>, ZclError> {
    let mut records = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let ([lo, hi, type_id], after) = split::<3>(rest).ok_or(short("attribute report"))?;
        let (value, used) = parse_value(type_id, after)?;
        records.push((u16::from_le_bytes([lo, hi]), type_id, value));
        rest = &after[used..];
    }
    Ok(records)
}

/// One record of a Read Attributes Response: the attribute, then its type
/// and value, or the status that says why there is none.
pub type ReadRecord = (u16, Result<(u8, ZclValue), u8>);

/// The records of a Read Attributes Response (global 0x01).
pub fn parse_read_attributes_response(payload: &[u8]) -> Result<Vec<ReadRecord>, ZclError> {
    let mut records = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let ([lo, hi, status], after) = split::<3>(rest).ok_or(short("read attribute record"))?;
        let attribute = u16::from_le_bytes([lo, hi]);
        if status != SUCCESS {
            records.push((attribute, Err(status)));
            rest = after;
            continue;
        }
        let (&type_id, after) = after.split_first().ok_or(short("read attribute record"))?;
        let (value, used) = parse_value(type_id, after)?;
        records.push((attribute, Ok((type_id, value))));
        rest = &after[used..];
    }
    Ok(records)
}

/// A Read Attributes frame (global 0x00) to a server, asking for no default
/// response (the response itself answers).
pub fn read_attributes(seq: u8, attributes: &[u16]) -> Vec<u8> {
    let payload: Vec<u8> = attributes.iter().flat_map(|a| a.to_le_bytes()).collect();
    encode_frame(&ZclHeader::global(seq, READ_ATTRIBUTES, true), &payload)
}

/// One attribute Kite asks a device to report.
#[derive(Debug, Clone, PartialEq)]
pub struct Reporting {
    pub attribute: u16,
    pub type_id: u8,
    /// Seconds between reports at least, and at most (0xFFFF: no periodic
    /// reports).
    pub min_interval: u16,
    pub max_interval: u16,
    /// For analog types only: the change that triggers a report, in the
    /// attribute's raw units. None (or a value that does not fit the type)
    /// is sent as 0, a report on any change.
    pub reportable_change: Option<ZclValue>,
}

/// A Configure Reporting frame (global 0x06) to a server, asking for no
/// default response (the Configure Reporting Response answers): one
/// "send reports" record per entry.
pub fn configure_reporting(seq: u8, entries: &[Reporting]) -> Vec<u8> {
    let mut payload = Vec::new();
    for entry in entries {
        payload.push(0x00);
        payload.extend(entry.attribute.to_le_bytes());
        payload.push(entry.type_id);
        payload.extend(entry.min_interval.to_le_bytes());
        payload.extend(entry.max_interval.to_le_bytes());
        if is_analog(entry.type_id) {
            let change = entry
                .reportable_change
                .as_ref()
                .and_then(|change| encode_value(entry.type_id, change))
                .unwrap_or_else(|| vec![0; analog_width(entry.type_id)]);
            payload.extend(change);
        }
    }
    encode_frame(&ZclHeader::global(seq, CONFIGURE_REPORTING, true), &payload)
}

fn analog_width(type_id: u8) -> usize {
    match type_id {
        0x38 => 2,
        0x39 | 0xE0 | 0xE1 => 4,
        0x3A => 8,
        other => int_width(other).unwrap_or(0),
    }
}

/// The records of a Configure Reporting Response (global 0x07): a status
/// and, where the device names it, the attribute. A lone success record
/// means every entry was accepted.
pub fn parse_configure_reporting_response(
    payload: &[u8],
) -> Result<Vec<(u8, Option<u16>)>, ZclError> {
    if let [status] = payload {
        return Ok(vec![(*status, None)]);
    }
    let mut records = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let ([status, _direction, lo, hi], after) =
            split::<4>(rest).ok_or(short("configure reporting record"))?;
        records.push((status, Some(u16::from_le_bytes([lo, hi]))));
        rest = after;
    }
    Ok(records)
}

/// An On/Off cluster (0x0006) command to a server: 0 off, 1 on, 2 toggle.
/// The default response is kept: it is the only sign the device acted.
pub fn on_off(seq: u8, command: u8) -> Vec<u8> {
    encode_frame(&ZclHeader::cluster(seq, command, false), &[])
}

/// Level Control (0x0008) command 0x04, Move to Level with On/Off: to
/// `level` (0..=254) in `transition_tenths` of a second (0xFFFF: the
/// device's default). The default response is kept, as for [`on_off`].
pub fn move_to_level_with_on_off(seq: u8, level: u8, transition_tenths: u16) -> Vec<u8> {
    let mut payload = vec![level];
    payload.extend(transition_tenths.to_le_bytes());
    encode_frame(&ZclHeader::cluster(seq, 0x04, false), &payload)
}

/// A Default Response (global 0x0B): the command it answers and its status.
/// Write Attributes (global command 0x02) of `(attribute, type, encoded
/// value)`, asking for its response (0x04).
pub fn write_attributes(seq: u8, attributes: &[(u16, u8, Vec<u8>)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (attribute, type_id, value) in attributes {
        payload.extend_from_slice(&attribute.to_le_bytes());
        payload.push(*type_id);
        payload.extend_from_slice(value);
    }
    encode_frame(&ZclHeader::global(seq, WRITE_ATTRIBUTES, true), &payload)
}

/// IAS Zone's Zone Enroll Response (cluster-specific 0x00 to the device):
/// `code` 0 is success; `zone_id` names the zone in later notifications.
pub fn zone_enroll_response(seq: u8, code: u8, zone_id: u8) -> Vec<u8> {
    encode_frame(
        &ZclHeader::cluster(seq, ZONE_ENROLL_RESPONSE, true),
        &[code, zone_id],
    )
}

pub fn default_response_status(payload: &[u8]) -> Result<(u8, u8), ZclError> {
    match payload {
        [command, status] => Ok((*command, *status)),
        [_, _, extra @ ..] => Err(ZclError::Trailing {
            what: "default response",
            extra: extra.len(),
        }),
        _ => Err(short("default response")),
    }
}

/// The zone status of an IAS Zone status change notification (cluster
/// 0x0500, cluster-specific command 0x00 from the server). It comes first;
/// the extended status, zone id and delay after it are not needed (and
/// older devices omit some).
pub fn zone_status_change(payload: &[u8]) -> Result<u16, ZclError> {
    let (status, _) = split::<2>(payload).ok_or(short("zone status change"))?;
    Ok(u16::from_le_bytes(status))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ias_enrollment_frames() {
        let cie = 0x0012_4b00_aabb_ccddu64.to_le_bytes().to_vec();
        let mut expected = vec![0x10, 5, 0x02, 0x10, 0x00, 0xf0];
        expected.extend(&cie);
        assert_eq!(write_attributes(5, &[(0x0010, 0xf0, cie)]), expected);
        assert_eq!(zone_enroll_response(6, 0, 1), [0x11, 6, 0x00, 0x00, 0x01]);
    }

    use proptest::prelude::*;

    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let text: String = text.split_whitespace().collect();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn headers() {
        // A temperature report from a sensor: server to client, no default
        // response, seq 5, report attributes.
        let frame = hex("18 05 0a 0000 29 d007");
        let (header, payload) = parse_frame(&frame).unwrap();
        assert_eq!(
            header,
            ZclHeader {
                cluster_specific: false,
                manufacturer: None,
                to_client: true,
                disable_default_response: true,
                seq: 5,
                command: REPORT_ATTRIBUTES
            }
        );
        assert_eq!(payload, hex("0000 29 d007"));
        assert_eq!(encode_frame(&header, payload), frame);
        // Manufacturer specific (Xiaomi's 0x115f), cluster specific.
        let frame = hex("1d 5f11 07 0a 01ff 42 00");
        let (header, payload) = parse_frame(&frame).unwrap();
        assert_eq!(header.manufacturer, Some(0x115f));
        assert!(header.cluster_specific);
        assert_eq!(payload, hex("01ff 42 00"));
        assert_eq!(encode_frame(&header, payload), frame);
        assert_eq!(
            parse_frame(&hex("02 01 00")),
            Err(ZclError::ReservedFrameType(2))
        );
        assert!(matches!(
            parse_frame(&hex("04 5f")),
            Err(ZclError::Short { .. })
        ));
        assert!(matches!(
            parse_frame(&hex("00 01")),
            Err(ZclError::Short { .. })
        ));
    }

    #[test]
    fn values_of_every_size() {
        let cases: &[(u8, &str, ZclValue, usize)] = &[
            (0x10, "01", ZclValue::Bool(true), 1),
            (0x10, "ff", ZclValue::Raw(0x10, vec![0xff]), 1),
            (0x18, "81", ZclValue::Uint(0x81), 1),
            (0x20, "c8", ZclValue::Uint(200), 1),
            (0x21, "e803", ZclValue::Uint(1000), 2),
            (0x22, "010203", ZclValue::Uint(0x030201), 3),
            (0x25, "102700000000", ZclValue::Uint(10000), 6),
            (0x27, "ffffffffffffffff", ZclValue::Uint(u64::MAX), 8),
            (0x28, "ff", ZclValue::Int(-1), 1),
            (0x29, "0080", ZclValue::Int(-32768), 2),
            (0x2A, "feffff", ZclValue::Int(-2), 3),
            (0x2A, "ffff7f", ZclValue::Int(0x7fffff), 3),
            (0x2F, "0000000000000080", ZclValue::Int(i64::MIN), 8),
            (0x30, "02", ZclValue::Uint(2), 1),
            (0x31, "0201", ZclValue::Uint(0x0102), 2),
            (0x38, "003c", ZclValue::Float(1.0), 2),
            (0x38, "00c0", ZclValue::Float(-2.0), 2),
            (0x38, "0100", ZclValue::Float(2f64.powi(-24)), 2),
            (0x39, "0000c03f", ZclValue::Float(1.5), 4),
            (0x3A, "000000000000f03f", ZclValue::Float(1.0), 8),
            (0x41, "03 010203", ZclValue::Bytes(vec![1, 2, 3]), 4),
            (0x42, "05 6c756d6900", ZclValue::Str("lumi".into()), 6),
            (0x42, "ff", ZclValue::Str(String::new()), 1),
            (0x43, "0200 abcd", ZclValue::Bytes(vec![0xab, 0xcd]), 4),
            (0x44, "0300 616263", ZclValue::Str("abc".into()), 5),
            (0x08, "7f", ZclValue::Bytes(vec![0x7f]), 1),
            (0xE2, "00000000", ZclValue::Uint(0), 4),
            (0xE8, "0204", ZclValue::Uint(0x0402), 2),
            (
                0xF0,
                "7856341200 4b1200",
                ZclValue::Uint(0x0012_4b00_1234_5678),
                8,
            ),
            (0x00, "", ZclValue::Raw(0, vec![]), 0),
            (0xE0, "0c1e0000", ZclValue::Raw(0xE0, hex("0c1e0000")), 4),
            // An array of three uint16, a structure of a uint8 and a string.
            (
                0x48,
                "21 0300 0100 0200 0300",
                ZclValue::Raw(0x48, hex("21 0300 0100 0200 0300")),
                9,
            ),
            (
                0x4C,
                "0200 20 07 42 02 6869",
                ZclValue::Raw(0x4C, hex("0200 20 07 42 02 6869")),
                8,
            ),
            // An invalid array: count 0xFFFF, no elements.
            (0x48, "20 ffff", ZclValue::Raw(0x48, hex("20 ffff")), 3),
        ];
        for (type_id, bytes, value, used) in cases {
            let mut bytes = hex(bytes);
            bytes.push(0xEE);
            assert_eq!(
                parse_value(*type_id, &bytes),
                Ok((value.clone(), *used)),
                "type 0x{type_id:02x}"
            );
        }
        let nan = parse_value(0x39, &hex("0000c07f")).unwrap().0;
        assert!(matches!(nan, ZclValue::Float(v) if v.is_nan()));
        assert_eq!(parse_value(0xFF, &[0]), Err(ZclError::UnknownType(0xFF)));
        assert_eq!(parse_value(0x4A, &[0]), Err(ZclError::UnknownType(0x4A)));
        assert!(matches!(
            parse_value(0x21, &[1]),
            Err(ZclError::Short { .. })
        ));
        assert!(matches!(
            parse_value(0x42, &hex("05 6c75")),
            Err(ZclError::Short { .. })
        ));
        // An array of an unknown element type cannot be skipped.
        assert_eq!(
            parse_value(0x48, &hex("4a 0100 00")),
            Err(ZclError::UnknownType(0x4A))
        );
        // Arrays nested too deep.
        let deep = hex("48 0100 48 0100 48 0100 48 0100 20 0100 01");
        assert_eq!(parse_value(0x48, &deep), Err(ZclError::TooDeep));
    }

    #[test]
    fn values_encode_back() {
        let cases: &[(u8, ZclValue)] = &[
            (0x10, ZclValue::Bool(false)),
            (0x20, ZclValue::Uint(255)),
            (0x21, ZclValue::Uint(0xFFFF)),
            (0x25, ZclValue::Uint(0xFFFF_FFFF_FFFF)),
            (0x28, ZclValue::Int(-128)),
            (0x29, ZclValue::Int(-1000)),
            (0x2A, ZclValue::Int(-8_388_608)),
            (0x2F, ZclValue::Int(i64::MIN)),
            (0x27, ZclValue::Uint(u64::MAX)),
            (0x38, ZclValue::Float(0.5)),
            (0x38, ZclValue::Float(-65504.0)),
            (0x38, ZclValue::Float(2f64.powi(-24))),
            (0x39, ZclValue::Float(21.5)),
            (0x3A, ZclValue::Float(-1e300)),
            (0x41, ZclValue::Bytes(vec![1, 2])),
            (0x42, ZclValue::Str("kite".into())),
            (0x44, ZclValue::Str("kite".into())),
        ];
        for (type_id, value) in cases {
            let bytes = encode_value(*type_id, value).unwrap();
            assert_eq!(
                parse_value(*type_id, &bytes),
                Ok((value.clone(), bytes.len())),
                "type 0x{type_id:02x}"
            );
        }
        // Values that do not fit their type.
        assert_eq!(encode_value(0x20, &ZclValue::Uint(256)), None);
        assert_eq!(encode_value(0x28, &ZclValue::Int(128)), None);
        assert_eq!(encode_value(0x28, &ZclValue::Int(-129)), None);
        assert_eq!(encode_value(0x21, &ZclValue::Int(-1)), None);
        assert_eq!(encode_value(0x29, &ZclValue::Uint(10)), Some(vec![10, 0]));
        assert_eq!(encode_value(0x21, &ZclValue::Float(1.0)), None);
        assert_eq!(f64_to_half(1e6), 0x7C00);
        assert_eq!(f64_to_half(1e-9), 0);
    }

    #[test]
    fn reports_and_read_responses() {
        let report = hex("0000 29 d007 0100 10 01 0500 42 04 6b697465");
        assert_eq!(
            parse_report_attributes(&report).unwrap(),
            [
                (0x0000, 0x29, ZclValue::Int(2000)),
                (0x0001, 0x10, ZclValue::Bool(true)),
                (0x0005, 0x42, ZclValue::Str("kite".into())),
            ]
        );
        // A report cut inside a record.
        assert!(parse_report_attributes(&report[..report.len() - 1]).is_err());
        assert!(parse_report_attributes(&hex("0000")).is_err());
        // A report whose first attribute is of an unknown type stops there.
        assert_eq!(
            parse_report_attributes(&hex("0000 4a 00 0100 10 01")),
            Err(ZclError::UnknownType(0x4A))
        );
        // An array skipped, then the next attribute read.
        let report = hex("0000 48 20 0200 0102 0100 10 00");
        assert_eq!(
            parse_report_attributes(&report).unwrap()[1],
            (0x0001, 0x10, ZclValue::Bool(false))
        );

        let response = hex("0400 00 42 04 4c554d49 0500 86 0700 00 30 03");
        assert_eq!(
            parse_read_attributes_response(&response).unwrap(),
            [
                (0x0004, Ok((0x42, ZclValue::Str("LUMI".into())))),
                (0x0005, Err(0x86)),
                (0x0007, Ok((0x30, ZclValue::Uint(3)))),
            ]
        );
        assert!(parse_read_attributes_response(&hex("0400 00")).is_err());
        assert!(parse_read_attributes_response(&hex("04")).is_err());
    }

    #[test]
    fn commands_kite_sends() {
        assert_eq!(
            read_attributes(7, &[0x0004, 0x0005]),
            hex("10 07 00 0400 0500")
        );
        assert_eq!(on_off(3, 1), hex("01 03 01"));
        assert_eq!(
            move_to_level_with_on_off(4, 254, 10),
            hex("01 04 04 fe 0a00")
        );
        let entries = [
            Reporting {
                attribute: 0x0000,
                type_id: 0x29,
                min_interval: 10,
                max_interval: 3600,
                reportable_change: Some(ZclValue::Int(10)),
            },
            Reporting {
                attribute: 0x0000,
                type_id: 0x10,
                min_interval: 0,
                max_interval: 3600,
                reportable_change: Some(ZclValue::Int(10)),
            },
            Reporting {
                attribute: 0x0021,
                type_id: 0x20,
                min_interval: 3600,
                max_interval: 43200,
                reportable_change: None,
            },
        ];
        assert_eq!(
            configure_reporting(9, &entries),
            hex("10 09 06  00 0000 29 0a00 100e 0a00  00 0000 10 0000 100e  00 2100 20 100e c0a8 00")
        );
    }

    #[test]
    fn responses_kite_reads() {
        assert_eq!(default_response_status(&[0x01, 0x00]), Ok((0x01, 0x00)));
        assert!(default_response_status(&[0x01]).is_err());
        assert!(default_response_status(&[0x01, 0x00, 0x00]).is_err());
        assert_eq!(
            parse_configure_reporting_response(&[0x00]),
            Ok(vec![(0x00, None)])
        );
        assert_eq!(
            parse_configure_reporting_response(&hex("8c 00 0000 86 00 2100")),
            Ok(vec![(0x8c, Some(0x0000)), (0x86, Some(0x0021))])
        );
        assert!(parse_configure_reporting_response(&hex("8c 00 00")).is_err());
        assert_eq!(zone_status_change(&hex("2100 00 01 0000")), Ok(0x0021));
        assert_eq!(zone_status_change(&hex("2100")), Ok(0x0021));
        assert!(zone_status_change(&hex("21")).is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96), type_id in any::<u8>()) {
            if let Ok((header, payload)) = parse_frame(&bytes) {
                // The frame control's reserved bits are not kept.
                let mut expected = bytes.clone();
                expected[0] &= 0x1F;
                prop_assert_eq!(encode_frame(&header, payload), expected);
            }
            if let Ok((_, used)) = parse_value(type_id, &bytes) {
                prop_assert!(used <= bytes.len());
            }
            let _ = parse_report_attributes(&bytes);
            let _ = parse_read_attributes_response(&bytes);
            let _ = parse_configure_reporting_response(&bytes);
            let _ = default_response_status(&bytes);
            let _ = zone_status_change(&bytes);
        }

        #[test]
        fn integers_round_trip(type_id in 0x20u8..=0x2F, raw in any::<u64>()) {
            let width = int_width(type_id).unwrap();
            let bytes = raw.to_le_bytes()[..width].to_vec();
            let (value, used) = parse_value(type_id, &bytes).unwrap();
            prop_assert_eq!(used, width);
            prop_assert_eq!(encode_value(type_id, &value), Some(bytes));
        }

        #[test]
        fn halves_round_trip(bits in any::<u16>()) {
            let value = half_to_f64(bits);
            if !value.is_nan() {
                prop_assert_eq!(f64_to_half(value), bits);
            }
        }
    }
}
