//! One received advertisement, as BlueZ reports it.

use std::fmt;
use std::str::FromStr;

/// A Bluetooth device address, shown as `AA:BB:CC:DD:EE:FF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address(pub [u8; 6]);

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("expected a Bluetooth address like AA:BB:CC:DD:EE:FF")]
pub struct BadAddress;

impl FromStr for Address {
    type Err = BadAddress;

    fn from_str(text: &str) -> Result<Self, BadAddress> {
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or(BadAddress)?;
            if part.len() != 2 {
                return Err(BadAddress);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| BadAddress)?;
        }
        if parts.next().is_some() {
            return Err(BadAddress);
        }
        Ok(Address(bytes))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02X}:{b:02X}:{c:02X}:{d:02X}:{e:02X}:{g:02X}")
    }
}

/// What one advertisement carried. Service UUIDs are BlueZ's lower-case
/// 128-bit strings (`0000fcd2-0000-1000-8000-00805f9b34fb`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Advertisement {
    pub address: Option<Address>,
    pub name: Option<String>,
    pub rssi: Option<i16>,
    /// Company identifier and the bytes after it.
    pub manufacturer_data: Vec<(u16, Vec<u8>)>,
    /// Service UUID and the bytes after it.
    pub service_data: Vec<(String, Vec<u8>)>,
    pub service_uuids: Vec<String>,
}

impl Advertisement {
    /// True when it carries data a decoder could read, not only a signal
    /// strength.
    pub fn has_data(&self) -> bool {
        !self.manufacturer_data.is_empty() || !self.service_data.is_empty()
    }

    pub fn manufacturer(&self, company: u16) -> Option<&[u8]> {
        self.manufacturer_data
            .iter()
            .find(|(id, _)| *id == company)
            .map(|(_, data)| data.as_slice())
    }

    /// The data of a 16-bit service UUID.
    pub fn service16(&self, uuid: u16) -> Option<&[u8]> {
        let full = uuid16(uuid);
        self.service_data
            .iter()
            .find(|(id, _)| id.eq_ignore_ascii_case(&full))
            .map(|(_, data)| data.as_slice())
    }
}

/// The advertisement's data as the AD structures it is sent in over the air
/// (length, type, payload): manufacturer data (type 0xFF, company first),
/// then service data (0x16 for 16-bit UUIDs, 0x21 for 128-bit ones, UUID
/// first, little-endian). This is what a codec plug-in is given.
pub fn ad_structures(advert: &Advertisement) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |kind: u8, head: &[u8], data: &[u8]| {
        // An AD structure's length is one byte.
        if let Ok(len) = u8::try_from(1 + head.len() + data.len()) {
            out.push(len);
            out.push(kind);
            out.extend_from_slice(head);
            out.extend_from_slice(data);
        }
    };
    for (company, data) in &advert.manufacturer_data {
        push(0xFF, &company.to_le_bytes(), data);
    }
    for (uuid, data) in &advert.service_data {
        match uuid_bytes(uuid) {
            Some(Uuid::Short(short)) => push(0x16, &short.to_le_bytes(), data),
            Some(Uuid::Long(mut long)) => {
                long.reverse();
                push(0x21, &long, data)
            }
            None => {}
        }
    }
    out
}

enum Uuid {
    Short(u16),
    Long([u8; 16]),
}

/// A UUID string: its 16-bit form when it is one of the Bluetooth SIG's.
fn uuid_bytes(text: &str) -> Option<Uuid> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    let base = uuid16(0);
    if text.len() == base.len()
        && text[8..].eq_ignore_ascii_case(&base[8..])
        && text.starts_with("0000")
    {
        return Some(Uuid::Short(u16::from_be_bytes([bytes[2], bytes[3]])));
    }
    Some(Uuid::Long(bytes))
}

/// The 128-bit form of a 16-bit Bluetooth SIG UUID, as BlueZ writes it.
pub fn uuid16(uuid: u16) -> String {
    format!("0000{uuid:04x}-0000-1000-8000-00805f9b34fb")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_in_either_case_and_show_in_upper_case() {
        let address: Address = "aa:bb:cc:dd:ee:0f".parse().unwrap();
        assert_eq!(address.to_string(), "AA:BB:CC:DD:EE:0F");
        for bad in [
            "",
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aabbccddeeff",
            "a:bb:cc:dd:ee:fff",
            "gg:bb:cc:dd:ee:ff",
        ] {
            assert_eq!(bad.parse::<Address>(), Err(BadAddress), "{bad}");
        }
    }

    #[test]
    fn data_goes_to_codecs_as_over_the_air() {
        let advert = Advertisement {
            manufacturer_data: vec![(0x0499, vec![5, 1])],
            service_data: vec![
                (uuid16(0x181a), vec![9]),
                ("6e400001-b5a3-f393-e0a9-e50e24dcca9e".into(), vec![7]),
                ("not a uuid".into(), vec![1]),
            ],
            ..Default::default()
        };
        let mut long = vec![0x12, 0x21];
        long.extend([
            0x9e, 0xca, 0xdc, 0x24, 0x0e, 0xe5, 0xa9, 0xe0, 0x93, 0xf3, 0xa3, 0xb5, 0x01, 0x00,
            0x40, 0x6e,
        ]);
        long.push(7);
        let mut expected = vec![5, 0xFF, 0x99, 0x04, 5, 1, 4, 0x16, 0x1a, 0x18, 9];
        expected.extend(long);
        assert_eq!(ad_structures(&advert), expected);
    }

    #[test]
    fn service_data_is_found_by_its_short_uuid() {
        let advert = Advertisement {
            service_data: vec![(uuid16(0xfcd2), vec![0x40])],
            ..Default::default()
        };
        assert_eq!(advert.service16(0xFCD2), Some(&[0x40][..]));
        assert_eq!(advert.service16(0x181a), None);
    }
}
