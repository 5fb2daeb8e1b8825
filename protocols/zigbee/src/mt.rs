//! The Z-Stack Monitor and Test (MT) frame, as a ZNP coprocessor speaks it
//! on its UART, and a bounded deframer that cuts the byte stream into frames.
//!
//! On the wire a frame is `SOF (0xFE)`, `len` (the payload's length, at most
//! [`MAX_PAYLOAD`]), `cmd0 = (type << 5) | subsystem`, `cmd1` (the command
//! id), the payload, and `FCS`, the XOR of `len`, `cmd0`, `cmd1` and the
//! payload.
//!
//! The [`Deframer`] works byte by byte, so the events it reports depend only
//! on the bytes, never on how they were split across [`Deframer::push`]
//! calls. It never holds more than [`MAX_FRAME`] bytes. Every byte that is
//! not part of a returned frame is counted exactly once: in a
//! [`Deframed::Discarded`] event, or in the value [`Deframer::reset`]
//! returns.

use std::mem;

/// Start of frame.
pub const SOF: u8 = 0xFE;
/// The largest payload a ZNP sends or accepts.
pub const MAX_PAYLOAD: usize = 250;
/// The largest frame on the wire: SOF, len, cmd0, cmd1, payload, FCS.
pub const MAX_FRAME: usize = MAX_PAYLOAD + 5;

/// The kind of an MT command (the top three bits of `cmd0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandType {
    /// A poll, used by SPI transports only.
    Poll = 0,
    /// A synchronous request: the ZNP answers with an SRSP at once.
    Sreq = 1,
    /// An asynchronous request or indication.
    Areq = 2,
    /// A synchronous response to an SREQ.
    Srsp = 3,
}

impl CommandType {
    /// The type of `cmd0`'s top three bits; None for the reserved 4..7.
    pub fn from_u8(value: u8) -> Option<CommandType> {
        match value {
            0 => Some(CommandType::Poll),
            1 => Some(CommandType::Sreq),
            2 => Some(CommandType::Areq),
            3 => Some(CommandType::Srsp),
            _ => None,
        }
    }
}

/// The MT subsystems (the low five bits of `cmd0`) Kite names. A frame keeps
/// the raw number, so subsystems not listed here still pass through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subsystem {
    Sys = 1,
    Mac = 2,
    Nwk = 3,
    Af = 4,
    Zdo = 5,
    Sapi = 6,
    Util = 7,
    Debug = 8,
    App = 9,
    AppCnf = 15,
    Zgp = 21,
}

impl Subsystem {
    /// The subsystem numbered `value`; None for one Kite does not name
    /// (including 0, which carries the ZNP's "command not recognised" SRSP).
    pub fn from_u8(value: u8) -> Option<Subsystem> {
        Some(match value {
            1 => Subsystem::Sys,
            2 => Subsystem::Mac,
            3 => Subsystem::Nwk,
            4 => Subsystem::Af,
            5 => Subsystem::Zdo,
            6 => Subsystem::Sapi,
            7 => Subsystem::Util,
            8 => Subsystem::Debug,
            9 => Subsystem::App,
            15 => Subsystem::AppCnf,
            21 => Subsystem::Zgp,
            _ => return None,
        })
    }
}

/// One MT command: its type, subsystem, id and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: CommandType,
    /// The raw subsystem number (0..=31), named or not by [`Subsystem`].
    pub subsystem: u8,
    pub id: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A frame for a named subsystem.
    pub fn new(kind: CommandType, subsystem: Subsystem, id: u8, payload: Vec<u8>) -> Self {
        Frame {
            kind,
            subsystem: subsystem as u8,
            id,
            payload,
        }
    }

    /// `cmd0`: the type in the top three bits, the subsystem in the low five.
    pub fn cmd0(&self) -> u8 {
        ((self.kind as u8) << 5) | (self.subsystem & 0x1F)
    }

    /// The frame as it goes on the wire, SOF to FCS. A payload longer than
    /// [`MAX_PAYLOAD`] encodes to nothing, since cutting it would send a
    /// different command; [`Frame::try_encode`] says why instead.
    pub fn encode(&self) -> Vec<u8> {
        self.try_encode().unwrap_or_default()
    }

    /// The frame as it goes on the wire, or an error if the payload is
    /// longer than [`MAX_PAYLOAD`].
    pub fn try_encode(&self) -> Result<Vec<u8>, PayloadTooLong> {
        let len = u8::try_from(self.payload.len())
            .ok()
            .filter(|&len| usize::from(len) <= MAX_PAYLOAD)
            .ok_or(PayloadTooLong {
                len: self.payload.len(),
            })?;
        let mut out = Vec::with_capacity(self.payload.len() + 5);
        out.extend([SOF, len, self.cmd0(), self.id]);
        out.extend_from_slice(&self.payload);
        out.push(fcs(&out[1..]));
        Ok(out)
    }

    /// Whether this is command `id` of `subsystem`, of type `kind`.
    pub fn is(&self, kind: CommandType, subsystem: Subsystem, id: u8) -> bool {
        self.kind == kind && self.subsystem == subsystem as u8 && self.id == id
    }
}

/// A payload too long for one MT frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an MT payload of {len} bytes is longer than {MAX_PAYLOAD}")]
pub struct PayloadTooLong {
    pub len: usize,
}

/// XOR of every byte: the MT frame check sequence over len..payload.
fn fcs(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |acc, byte| acc ^ byte)
}

/// What a push produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deframed {
    /// A complete frame whose FCS matched.
    Frame(Frame),
    /// Bytes dropped and why: [`NOISE`], [`BAD_FCS`], [`BAD_LENGTH`] or
    /// [`BAD_TYPE`].
    Discarded { bytes: usize, reason: &'static str },
}

/// Bytes outside any frame, before the next SOF. Reported when that SOF
/// arrives.
pub const NOISE: &str = "noise before SOF";
/// A frame whose FCS did not match: its bytes up to the next SOF inside it
/// (the search for a frame goes on from there) or all of it.
pub const BAD_FCS: &str = "bad FCS";
/// A SOF followed by a length over [`MAX_PAYLOAD`]: the SOF, and the length
/// byte unless it is itself a SOF.
pub const BAD_LENGTH: &str = "length over MAX_PAYLOAD";
/// A SOF, length and `cmd0` of a reserved command type (4..7), which no ZNP
/// sends: those bytes, up to a SOF among them.
pub const BAD_TYPE: &str = "reserved command type";

/// Cuts a ZNP's byte stream into frames; see the [module docs](self).
///
/// A candidate frame starts at each SOF. When it turns out bad (a length
/// over [`MAX_PAYLOAD`], a reserved command type, a wrong FCS) only its bytes
/// before the next SOF inside it are dropped and the search goes on from
/// that SOF, so a real frame that began inside a damaged one is still found.
#[derive(Debug, Default)]
pub struct Deframer {
    /// The candidate frame, from its SOF; empty while hunting for a SOF.
    buf: Vec<u8>,
    /// Noise bytes skipped while hunting that no event has reported yet.
    noise: usize,
}

impl Deframer {
    /// A deframer hunting for the first SOF.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes read from the port; appends what they completed to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Deframed>) {
        for &byte in bytes {
            if self.buf.is_empty() {
                if byte == SOF {
                    self.flush_noise(out);
                    self.buf.push(byte);
                } else {
                    self.noise = self.noise.saturating_add(1);
                }
                continue;
            }
            self.buf.push(byte);
            self.settle(out);
        }
    }

    /// Decides what the buffered candidate is, as far as its bytes allow:
    /// a frame, a failure (drop up to the next SOF and look again), or not
    /// yet complete.
    fn settle(&mut self, out: &mut Vec<Deframed>) {
        while let Some(&len) = self.buf.get(1) {
            let len = usize::from(len);
            if len > MAX_PAYLOAD {
                self.drop_candidate(BAD_LENGTH, out);
                continue;
            }
            if let Some(&cmd0) = self.buf.get(2) {
                if CommandType::from_u8(cmd0 >> 5).is_none() {
                    self.drop_candidate(BAD_TYPE, out);
                    continue;
                }
            }
            let total = len + 5;
            if self.buf.len() < total {
                return;
            }
            let body = &self.buf[1..total - 1];
            if fcs(body) != self.buf[total - 1] {
                self.drop_candidate(BAD_FCS, out);
                continue;
            }
            let Some(kind) = CommandType::from_u8(self.buf[2] >> 5) else {
                // Checked above; unreachable, but never worth a panic.
                self.drop_candidate(BAD_TYPE, out);
                continue;
            };
            let frame = Frame {
                kind,
                subsystem: self.buf[2] & 0x1F,
                id: self.buf[3],
                payload: self.buf[4..total - 1].to_vec(),
            };
            self.buf.drain(..total);
            out.push(Deframed::Frame(frame));
            // Bytes after the frame were buffered while a longer candidate
            // that failed was being received: look at them again.
            self.resync(out);
        }
    }

    /// Counts the buffer's bytes before its first SOF as noise, so that the
    /// buffer starts with a SOF or is empty.
    fn resync(&mut self, out: &mut Vec<Deframed>) {
        let skip = self
            .buf
            .iter()
            .position(|&b| b == SOF)
            .unwrap_or(self.buf.len());
        self.noise = self.noise.saturating_add(skip);
        self.buf.drain(..skip);
        if !self.buf.is_empty() {
            self.flush_noise(out);
        }
    }

    /// Drops the candidate's bytes before the next SOF inside it, reporting
    /// them with `reason`, and makes that SOF (if any) the new candidate.
    fn drop_candidate(&mut self, reason: &'static str, out: &mut Vec<Deframed>) {
        let next = self.buf[1..]
            .iter()
            .position(|&b| b == SOF)
            .map_or(self.buf.len(), |at| at + 1);
        out.push(Deframed::Discarded {
            bytes: next,
            reason,
        });
        self.buf.drain(..next);
    }

    fn flush_noise(&mut self, out: &mut Vec<Deframed>) {
        if self.noise > 0 {
            out.push(Deframed::Discarded {
                bytes: mem::take(&mut self.noise),
                reason: NOISE,
            });
        }
    }

    /// Drops a partial frame (after silence, or when the port reopens);
    /// returns how many bytes were dropped, counting noise no event has
    /// reported yet.
    pub fn reset(&mut self) -> usize {
        let dropped = self.buf.len().saturating_add(self.noise);
        self.buf.clear();
        self.noise = 0;
        dropped
    }

    /// Bytes held for a frame not yet complete; never more than [`MAX_FRAME`].
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frames_of(bytes: &[u8]) -> Vec<Deframed> {
        let mut deframer = Deframer::new();
        let mut out = Vec::new();
        deframer.push(bytes, &mut out);
        out
    }

    fn ping() -> Frame {
        Frame::new(CommandType::Sreq, Subsystem::Sys, 0x01, vec![])
    }

    #[test]
    fn encodes_as_the_mt_spec_shows() {
        // SYS_PING: FE 00 21 01 20 (the Z-Stack MT spec's example).
        assert_eq!(ping().encode(), [0xFE, 0x00, 0x21, 0x01, 0x20]);
        // SYS_RESET_REQ soft: AREQ SYS 0x00, payload [1].
        let reset = Frame::new(CommandType::Areq, Subsystem::Sys, 0x00, vec![1]);
        assert_eq!(reset.encode(), [0xFE, 0x01, 0x41, 0x00, 0x01, 0x41]);
        // ZDO_STATE_CHANGE_IND started as coordinator: FE 01 45 C0 09 8D.
        let state = Frame::new(CommandType::Areq, Subsystem::Zdo, 0xC0, vec![9]);
        assert_eq!(state.encode(), [0xFE, 0x01, 0x45, 0xC0, 0x09, 0x8D]);
        assert!(state.is(CommandType::Areq, Subsystem::Zdo, 0xC0));
        assert!(!state.is(CommandType::Srsp, Subsystem::Zdo, 0xC0));
    }

    #[test]
    fn round_trip() {
        let frames = [
            ping(),
            Frame::new(CommandType::Srsp, Subsystem::Sys, 0x01, vec![0x59, 0x06]),
            Frame::new(CommandType::Areq, Subsystem::Af, 0x81, (0..=249).collect()),
            Frame::new(CommandType::Poll, Subsystem::Zgp, 0x3F, vec![SOF; 7]),
            Frame {
                kind: CommandType::Areq,
                subsystem: 0x1F,
                id: 0xFE,
                payload: vec![],
            },
        ];
        let mut stream = Vec::new();
        for frame in &frames {
            stream.extend(frame.encode());
        }
        let expected: Vec<_> = frames.iter().cloned().map(Deframed::Frame).collect();
        assert_eq!(frames_of(&stream), expected);
    }

    #[test]
    fn a_payload_too_long_is_refused() {
        let mut frame = ping();
        frame.payload = vec![0; 251];
        assert_eq!(frame.try_encode(), Err(PayloadTooLong { len: 251 }));
        assert!(frame.encode().is_empty());
        frame.payload.pop();
        assert_eq!(frame.try_encode().unwrap().len(), MAX_FRAME);
        assert_eq!(frame.encode().len(), MAX_FRAME);
    }

    #[test]
    fn noise_before_a_frame_is_counted_when_the_frame_starts() {
        let mut stream = vec![0x00, 0x12, 0x34];
        stream.extend(ping().encode());
        assert_eq!(
            frames_of(&stream),
            [
                Deframed::Discarded {
                    bytes: 3,
                    reason: NOISE
                },
                Deframed::Frame(ping())
            ]
        );
    }

    #[test]
    fn a_bad_fcs_is_discarded_and_the_next_frame_found() {
        let mut bad = Frame::new(CommandType::Srsp, Subsystem::Sys, 0x02, vec![1, 2, 3]).encode();
        *bad.last_mut().unwrap() ^= 0x55;
        let mut stream = bad.clone();
        stream.extend(ping().encode());
        assert_eq!(
            frames_of(&stream),
            [
                Deframed::Discarded {
                    bytes: bad.len(),
                    reason: BAD_FCS
                },
                Deframed::Frame(ping())
            ]
        );
    }

    #[test]
    fn a_frame_starting_inside_a_damaged_one_is_found() {
        // A frame cut short (the port opened in its middle, or bytes were
        // lost): its length runs over the next frame, whose SOF is inside.
        let mut stream = vec![SOF, 0x08, 0x41, 0x80];
        stream.extend(ping().encode());
        stream.extend([0; 5]);
        stream.extend(ping().encode());
        assert_eq!(
            frames_of(&stream),
            [
                Deframed::Discarded {
                    bytes: 4,
                    reason: BAD_FCS
                },
                Deframed::Frame(ping()),
                Deframed::Discarded {
                    bytes: 5,
                    reason: NOISE
                },
                Deframed::Frame(ping()),
            ]
        );
    }

    #[test]
    fn a_length_over_the_maximum_is_discarded() {
        let mut stream = vec![SOF, 251, 0x21];
        stream.extend(ping().encode());
        assert_eq!(
            frames_of(&stream),
            [
                Deframed::Discarded {
                    bytes: 2,
                    reason: BAD_LENGTH
                },
                Deframed::Discarded {
                    bytes: 1,
                    reason: NOISE
                },
                Deframed::Frame(ping()),
            ]
        );
        // A SOF where the length should be is the start of the next frame.
        let mut stream = vec![SOF];
        stream.extend(ping().encode());
        assert_eq!(
            frames_of(&stream),
            [
                Deframed::Discarded {
                    bytes: 1,
                    reason: BAD_LENGTH
                },
                Deframed::Frame(ping()),
            ]
        );
    }

    #[test]
    fn a_reserved_command_type_is_not_a_frame() {
        // cmd0 0xA1: type 5 (reserved), subsystem SYS.
        let mut bad = vec![SOF, 0x00, 0xA1, 0x01];
        bad.push(fcs(&bad[1..]));
        let mut stream = bad;
        stream.extend(ping().encode());
        assert_eq!(
            frames_of(&stream),
            [
                Deframed::Discarded {
                    bytes: 3,
                    reason: BAD_TYPE
                },
                Deframed::Discarded {
                    bytes: 2,
                    reason: NOISE
                },
                Deframed::Frame(ping()),
            ]
        );
    }

    #[test]
    fn splitting_the_stream_anywhere_gives_the_same_events() {
        let mut stream = vec![0x11, SOF, 0x03];
        stream.extend(ping().encode());
        stream.extend(Frame::new(CommandType::Areq, Subsystem::Zdo, 0xC1, vec![SOF; 13]).encode());
        let mut bad = ping().encode();
        bad[4] ^= 1;
        stream.extend(bad);
        stream.extend(ping().encode());
        let whole = frames_of(&stream);
        for cut in 0..=stream.len() {
            let mut deframer = Deframer::new();
            let mut out = Vec::new();
            deframer.push(&stream[..cut], &mut out);
            deframer.push(&stream[cut..], &mut out);
            assert_eq!(out, whole, "cut at {cut}");
        }
        // And byte by byte.
        let mut deframer = Deframer::new();
        let mut out = Vec::new();
        for byte in &stream {
            deframer.push(std::slice::from_ref(byte), &mut out);
        }
        assert_eq!(out, whole);
    }

    #[test]
    fn reset_counts_what_it_drops() {
        let mut deframer = Deframer::new();
        let mut out = Vec::new();
        deframer.push(&[1, 2, SOF, 4, 0x21], &mut out);
        // The noise is reported when the SOF comes; the partial frame by reset.
        assert_eq!(
            out,
            [Deframed::Discarded {
                bytes: 2,
                reason: NOISE
            }]
        );
        assert_eq!(deframer.reset(), 3);
        deframer.push(&[9, 9], &mut out);
        assert_eq!(deframer.reset(), 2);
        assert_eq!(deframer.buffered(), 0);
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            0u8..4,
            0u8..32,
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD),
        )
            .prop_map(|(kind, subsystem, id, payload)| Frame {
                kind: CommandType::from_u8(kind).unwrap(),
                subsystem,
                id,
                payload,
            })
    }

    /// Noise that holds no SOF, so the frames around it stay intact.
    fn arb_noise() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0u8..SOF, 0..8)
    }

    proptest! {
        #[test]
        fn frames_between_noise_come_back_in_order(
            parts in proptest::collection::vec((arb_noise(), arb_frame()), 0..6),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (noise, frame) in &parts {
                if !noise.is_empty() {
                    expected.push(Deframed::Discarded { bytes: noise.len(), reason: NOISE });
                }
                stream.extend(noise);
                stream.extend(frame.encode());
                expected.push(Deframed::Frame(frame.clone()));
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut deframer = Deframer::new();
            let mut out = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                deframer.push(&stream[from..cut], &mut out);
                from = cut;
            }
            prop_assert_eq!(out, expected);
        }

        #[test]
        fn any_bytes_are_accounted_for_and_bounded(
            chunks in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![1 => Just(SOF), 3 => any::<u8>()], 0..80),
                0..8,
            ),
        ) {
            let mut deframer = Deframer::new();
            let mut out = Vec::new();
            let mut total = 0usize;
            for chunk in &chunks {
                deframer.push(chunk, &mut out);
                total += chunk.len();
                prop_assert!(deframer.buffered() <= MAX_FRAME);
            }
            let mut accounted = deframer.reset();
            for event in &out {
                accounted += match event {
                    Deframed::Frame(frame) => frame.payload.len() + 5,
                    Deframed::Discarded { bytes, .. } => *bytes,
                };
            }
            prop_assert_eq!(accounted, total);
            // The same events whatever the chunking.
            prop_assert_eq!(frames_of(&chunks.concat()), out);
        }
    }
}
