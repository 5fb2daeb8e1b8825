//! Arbitrary bytes from a ZNP's UART, in arbitrary chunks, mixed with
//! well-formed MT frames of arbitrary contents (so that the parsers behind
//! the deframer see frames that pass the FCS): the deframer must not panic,
//! must stay within MAX_FRAME, must give the same events whatever the
//! chunking and must account for every byte; each frame's typed parse, and
//! the ZCL frame an AF_INCOMING_MSG carries down to the points its
//! attributes become, must give a value or an error, never a panic; good
//! numbers are finite.

#![no_main]

use arbitrary::Arbitrary;
use kite_core::{Reading, Value};
use kite_zigbee::clusters::{self, Scaling};
use kite_zigbee::mt::{CommandType, Deframed, Deframer, Frame, MAX_FRAME};
use kite_zigbee::zcl;
use kite_zigbee::znp::{self, Incoming};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Piece {
    /// Bytes as they come: noise, cut frames, bad checksums.
    Raw(Vec<u8>),
    /// A frame with a good FCS: any AREQ, SRSP or other.
    Frame {
        kind: u8,
        subsystem: u8,
        id: u8,
        payload: Vec<u8>,
    },
    /// An AF_INCOMING_MSG around a ZCL frame for `cluster`, so that the ZCL
    /// and cluster decoders are reached often.
    Zcl {
        cluster: u16,
        lqi: u8,
        zcl: Vec<u8>,
        trailer: bool,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    pieces: Vec<Piece>,
    /// Where the stream is cut into reads (indices into it, wrapped).
    cuts: Vec<u16>,
}

fn stream(pieces: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Raw(bytes) => out.extend_from_slice(bytes),
            Piece::Frame {
                kind,
                subsystem,
                id,
                payload,
            } => {
                let frame = Frame {
                    kind: CommandType::from_u8(kind % 4).unwrap_or(CommandType::Areq),
                    subsystem: subsystem & 0x1F,
                    id: *id,
                    payload: payload.iter().copied().take(250).collect(),
                };
                out.extend(frame.encode());
            }
            Piece::Zcl {
                cluster,
                lqi,
                zcl,
                trailer,
            } => {
                let zcl: Vec<u8> = zcl.iter().copied().take(230).collect();
                let mut payload = vec![0, 0];
                payload.extend(cluster.to_le_bytes());
                payload.extend([0x34, 0x12, 1, 1, 0, *lqi, 0, 0, 0, 0, 0, 7]);
                payload.push(zcl.len() as u8);
                payload.extend(&zcl);
                if *trailer {
                    payload.extend([0x34, 0x12, 0x1E]);
                }
                let frame = Frame {
                    kind: CommandType::Areq,
                    subsystem: 4,
                    id: 0x81,
                    payload,
                };
                out.extend(frame.encode());
            }
        }
    }
    out
}

fn check_points(points: &[clusters::ClusterPoint]) {
    for point in points {
        assert!(!point.name.is_empty(), "{point:?}");
        if let Reading::Good(Value::Float(v)) = point.reading {
            assert!(v.is_finite(), "{point:?}");
        }
    }
}

/// A ZCL frame from `cluster`, through every decoder that could meet it.
fn check_zcl(cluster: u16, lqi: u8, data: &[u8], scaling: &mut Scaling) {
    check_points(&[clusters::linkquality_point(lqi)]);
    let Ok((header, payload)) = zcl::parse_frame(data) else {
        return;
    };
    let reencoded = zcl::encode_frame(&header, payload);
    assert_eq!(reencoded[1..], data[1..], "header round trip");
    if header.cluster_specific {
        if cluster == clusters::IAS_ZONE && header.command == zcl::ZONE_STATUS_CHANGE_NOTIFICATION {
            if let Ok(status) = zcl::zone_status_change(payload) {
                check_points(&clusters::zone_status_points(status));
            }
        }
        return;
    }
    match header.command {
        zcl::REPORT_ATTRIBUTES => {
            if let Ok(records) = zcl::parse_report_attributes(payload) {
                let attributes: Vec<_> = records.into_iter().map(|(a, _, v)| (a, v)).collect();
                check_points(&clusters::attribute_points(cluster, &attributes, scaling));
            }
        }
        zcl::READ_ATTRIBUTES_RESPONSE => {
            if let Ok(records) = zcl::parse_read_attributes_response(payload) {
                scaling.read_response(cluster, &records);
                let attributes: Vec<_> = records
                    .into_iter()
                    .filter_map(|(a, r)| r.ok().map(|(_, v)| (a, v)))
                    .collect();
                check_points(&clusters::attribute_points(cluster, &attributes, scaling));
            }
        }
        zcl::DEFAULT_RESPONSE => {
            let _ = zcl::default_response_status(payload);
        }
        zcl::CONFIGURE_REPORTING_RESPONSE => {
            let _ = zcl::parse_configure_reporting_response(payload);
        }
        _ => {}
    }
}

fuzz_target!(|input: Input| {
    let bytes = stream(&input.pieces);

    let mut whole = Deframer::new();
    let mut expected = Vec::new();
    whole.push(&bytes, &mut expected);
    let tail = whole.reset();

    let mut cuts: Vec<usize> = input
        .cuts
        .iter()
        .map(|&cut| usize::from(cut) % (bytes.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut chunked = Deframer::new();
    let mut events = Vec::new();
    let mut from = 0;
    for cut in cuts.into_iter().chain([bytes.len()]) {
        chunked.push(&bytes[from..cut], &mut events);
        assert!(chunked.buffered() <= MAX_FRAME);
        from = cut;
    }
    assert_eq!(events, expected, "chunking changed the events");
    assert_eq!(chunked.reset(), tail);

    let mut accounted = tail;
    let mut scaling = Scaling::default();
    for event in &events {
        match event {
            Deframed::Discarded { bytes, reason } => {
                assert!(*bytes > 0 && !reason.is_empty());
                accounted += bytes;
            }
            Deframed::Frame(frame) => {
                let wire = frame.encode();
                accounted += wire.len();
                // What comes out goes back in unchanged.
                let mut again = Vec::new();
                Deframer::new().push(&wire, &mut again);
                assert_eq!(again, [Deframed::Frame(frame.clone())]);
                match znp::parse(frame) {
                    Ok(Incoming::AfIncomingMsg {
                        cluster, lqi, data, ..
                    }) => check_zcl(cluster, lqi, &data, &mut scaling),
                    Ok(incoming) => {
                        let _ = incoming.srsp_status();
                        let _ = incoming.rejected();
                        if let Incoming::Srsp { payload, .. } = &incoming {
                            let _ = znp::parse_version(payload);
                            let _ = znp::parse_device_info(payload);
                            let _ = znp::parse_nv_read(payload);
                        }
                    }
                    Err(error) => assert!(!error.to_string().is_empty()),
                }
            }
        }
    }
    assert_eq!(accounted, bytes.len(), "bytes unaccounted for");
});
