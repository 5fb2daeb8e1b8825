//! Arbitrary bytes as the data of one BLE advertisement format, beside
//! arbitrary other data: every decoder, with and without a BTHome bind key,
//! gives an error or points, never a panic; good numbers are finite; a
//! format that `Format::recognise` names is decoded; an accepted encrypted
//! BTHome packet is refused when it comes again.

#![no_main]

use aes::Aes128;
use arbitrary::Arbitrary;
use ccm::aead::generic_array::GenericArray;
use ccm::aead::{AeadInPlace, KeyInit};
use ccm::consts::{U13, U4};
use ccm::Ccm;
use kite_ble::advert::uuid16;
use kite_ble::{Address, AdvertDecoder, Advertisement, DecodeError, Decoded, Format};
use kite_core::{Reading, Value};
use libfuzzer_sys::fuzz_target;

/// bthome.io's example bind key.
const KEY: [u8; 16] = [
    0x23, 0x1d, 0x39, 0xc1, 0xd7, 0xcc, 0x1a, 0xb1, 0xae, 0xe2, 0x24, 0xcd, 0x09, 0x6d, 0xb9, 0x32,
];

#[derive(Debug, Arbitrary)]
enum Payload {
    /// Bytes where the chosen format looks for its data.
    Raw(Vec<u8>),
    /// BTHome objects encrypted with KEY, so that the object parser behind
    /// authentication and the replay counter are reached too.
    Encrypted {
        objects: Vec<u8>,
        counter: u32,
        mac_included: bool,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    format: u8,
    address: Option<[u8; 6]>,
    payload: Payload,
    /// What else the advertisement carries, tried before or after it.
    manufacturer_data: Vec<(u16, Vec<u8>)>,
    service_data: Vec<(u16, Vec<u8>)>,
    others_first: bool,
}

enum Place {
    Service(u16),
    Manufacturer(u16),
}

fn place(format: Format) -> Place {
    match format {
        Format::Bthome => Place::Service(0xfcd2),
        Format::Ruuvi => Place::Manufacturer(0x0499),
        Format::Pvvx | Format::Atc => Place::Service(0x181a),
        Format::Ibeacon => Place::Manufacturer(0x004c),
        Format::Eddystone => Place::Service(0xfeaa),
    }
}

/// BTHome service data of `objects` encrypted as bthome.io's "Encryption"
/// page describes: info byte, [reversed MAC], ciphertext, counter, MIC.
fn encrypt(objects: &[u8], counter: u32, mac: [u8; 6], mac_included: bool) -> Vec<u8> {
    let info = if mac_included { 0x43 } else { 0x41 };
    let mut nonce = mac.to_vec();
    nonce.extend_from_slice(&[0xd2, 0xfc, info]);
    nonce.extend_from_slice(&counter.to_le_bytes());
    let mut ciphertext = objects.to_vec();
    let Ok(mic) = Ccm::<Aes128, U4, U13>::new(GenericArray::from_slice(&KEY))
        .encrypt_in_place_detached(GenericArray::from_slice(&nonce), b"", &mut ciphertext)
    else {
        return Vec::new();
    };
    let mut data = vec![info];
    if mac_included {
        data.extend(mac.iter().rev());
    }
    data.extend_from_slice(&ciphertext);
    data.extend_from_slice(&counter.to_le_bytes());
    data.extend_from_slice(&mic);
    data
}

fn check(points: &[Decoded]) {
    for point in points {
        assert!(!point.name.is_empty(), "{point:?}");
        if let Reading::Good(Value::Float(v)) = point.reading {
            assert!(v.is_finite(), "{point:?}");
        }
    }
}

fuzz_target!(|input: Input| {
    let format = Format::ALL[usize::from(input.format) % Format::ALL.len()];
    let address = input.address.map(Address);
    let (data, encrypted) = match &input.payload {
        Payload::Raw(data) => (data.clone(), false),
        Payload::Encrypted {
            objects,
            counter,
            mac_included,
        } => {
            let mac = input
                .address
                .unwrap_or([0x54, 0x48, 0xe6, 0x8f, 0x80, 0xa5]);
            (encrypt(objects, *counter, mac, *mac_included), true)
        }
    };

    let mut advert = Advertisement {
        address,
        manufacturer_data: input.manufacturer_data.clone(),
        service_data: input
            .service_data
            .iter()
            .map(|(uuid, data)| (uuid16(*uuid), data.clone()))
            .collect(),
        ..Default::default()
    };
    match place(format) {
        Place::Service(uuid) if input.others_first => {
            advert.service_data.push((uuid16(uuid), data))
        }
        Place::Service(uuid) => advert.service_data.insert(0, (uuid16(uuid), data)),
        Place::Manufacturer(id) if input.others_first => advert.manufacturer_data.push((id, data)),
        Place::Manufacturer(id) => advert.manufacturer_data.insert(0, (id, data)),
    }

    let recognised = Format::recognise(&advert);
    for key in [None, Some(KEY)] {
        for format in Format::ALL {
            let mut decoder = AdvertDecoder::new(format, key);
            let first = decoder.decode(&advert);
            match &first {
                Ok(Some(points)) => check(points),
                Ok(None) => assert_ne!(recognised, Some(format), "{advert:?}"),
                Err(error) => assert!(!error.to_string().is_empty()),
            }
            let again = decoder.decode(&advert);
            match (&first, &again) {
                // An accepted encrypted packet is a replay the second time.
                (Ok(Some(_)), Err(DecodeError::Replayed { counter, last })) => {
                    assert!(format == Format::Bthome && key.is_some(), "{format:?}");
                    assert_eq!(counter, last);
                }
                _ => assert_eq!(first, again, "{format:?} is not deterministic"),
            }
        }
    }

    // Where the harness encrypted with KEY, the BTHome decoder with KEY
    // reads it unless it is malformed or another 0xFCD2 entry comes first.
    if encrypted && format == Format::Bthome && !input.others_first {
        let mut decoder = AdvertDecoder::new(Format::Bthome, Some(KEY));
        match decoder.decode(&advert) {
            Ok(Some(points)) => check(&points),
            Err(DecodeError::Malformed { .. }) => {}
            other => panic!("encrypted with the key yet {other:?}"),
        }
    }
});
