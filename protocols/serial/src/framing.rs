//! Incremental, bounded framers: they cut the byte stream of a serial line
//! into frames, whatever sizes the reads from the port happen to have.
//!
//! A framer works on the stream byte by byte, so the events it reports depend
//! only on the bytes, never on how they were split across [`Framer::push`]
//! calls. It never holds more than [`Framer::max_buffered`] bytes, whatever
//! arrives. Every byte that is neither part of a returned frame nor a
//! delimiter or marker around one is counted exactly once: in a
//! [`FrameEvent::Discarded`] event, or in the value returned by
//! [`Framer::reset`] if the stream stopped before the framer resynchronised.

use std::mem;

use thiserror::Error;

/// How frames are delimited on the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// Frames end with `delimiter` (e.g. `b"\r\n"`); the delimiter is not
    /// part of the frame.
    Line { delimiter: Vec<u8> },
    /// Every frame is exactly `length` bytes.
    Fixed { length: usize },
    /// A frame starts with `start` and ends with `end`; bytes before a start
    /// marker are noise. The frame returned excludes both markers. A start
    /// marker completed inside a frame restarts the frame; when a start and
    /// an end marker complete on the same byte, the end marker wins.
    Markers { start: Vec<u8>, end: Vec<u8> },
    /// A length field at `offset` (after optional header bytes), `width` 1, 2
    /// or 4 bytes, big or little endian. The frame's total length is
    /// `offset + width + value + adjust`; `adjust` may be negative (a length
    /// that counts itself) or positive (a trailing checksum the length does
    /// not count). The returned frame is the whole frame, header and length
    /// field included.
    LengthPrefix {
        offset: usize,
        width: u8,
        big_endian: bool,
        adjust: i64,
    },
}

/// A framing configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FramingError {
    #[error("max_frame must be at least 1 byte")]
    ZeroMaxFrame,
    #[error("the line delimiter is empty")]
    EmptyDelimiter,
    #[error("the start marker is empty")]
    EmptyStartMarker,
    #[error("the end marker is empty")]
    EmptyEndMarker,
    #[error("the fixed frame length is 0")]
    ZeroLength,
    #[error("the fixed frame length {length} exceeds max_frame {max_frame}")]
    FixedLongerThanMax { length: usize, max_frame: usize },
    #[error("the length field must be 1, 2 or 4 bytes wide, not {0}")]
    BadWidth(u8),
    #[error(
        "a {width}-byte length field at offset {offset} does not fit in max_frame {max_frame}"
    )]
    HeaderLongerThanMax {
        offset: usize,
        width: u8,
        max_frame: usize,
    },
}

/// What a push produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameEvent {
    /// A complete frame, never longer than `max_frame`.
    Frame(Vec<u8>),
    /// Bytes dropped while resynchronising, reported once the framer is back
    /// in sync (see [`Discard`] for what each reason counts).
    Discarded { bytes: usize, reason: Discard },
}

/// Why bytes were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Discard {
    /// A frame grew past `max_frame`. For [`Framing::Line`] the count covers
    /// the whole line and its delimiter; for [`Framing::Markers`] it covers
    /// the frame from its start marker up to the next start marker.
    TooLong,
    /// Bytes outside markers, or a frame (with its start marker) abandoned
    /// because another start marker arrived before its end.
    Noise,
    /// Length fields that gave a frame longer than `max_frame` or shorter
    /// than its own header: one byte per bad length, up to the next good one.
    BadLength,
}

/// An incremental framer for one byte stream. See the [module docs](self).
#[derive(Debug)]
pub struct Framer {
    kind: Kind,
    max_frame: usize,
    buf: Vec<u8>,
    /// Bytes dropped while out of sync that no event has reported yet.
    skipped: usize,
}

#[derive(Debug)]
enum Kind {
    Line {
        delimiter: Vec<u8>,
    },
    Fixed {
        length: usize,
    },
    Markers {
        start: Vec<u8>,
        end: Vec<u8>,
        in_frame: bool,
        /// The bytes being skipped began with an overlong frame.
        overlong: bool,
    },
    LengthPrefix {
        offset: usize,
        big_endian: bool,
        adjust: i64,
        /// `offset + width`: how many bytes must be buffered to read the length.
        header: usize,
        /// Total length of the frame being received, once its header is read.
        expected: Option<usize>,
    },
}

impl Framer {
    /// A framer whose frames are at most `max_frame` bytes long.
    pub fn new(framing: Framing, max_frame: usize) -> Result<Self, FramingError> {
        if max_frame == 0 {
            return Err(FramingError::ZeroMaxFrame);
        }
        let kind = match framing {
            Framing::Line { delimiter } => {
                if delimiter.is_empty() {
                    return Err(FramingError::EmptyDelimiter);
                }
                Kind::Line { delimiter }
            }
            Framing::Fixed { length } => {
                if length == 0 {
                    return Err(FramingError::ZeroLength);
                }
                if length > max_frame {
                    return Err(FramingError::FixedLongerThanMax { length, max_frame });
                }
                Kind::Fixed { length }
            }
            Framing::Markers { start, end } => {
                if start.is_empty() {
                    return Err(FramingError::EmptyStartMarker);
                }
                if end.is_empty() {
                    return Err(FramingError::EmptyEndMarker);
                }
                Kind::Markers {
                    start,
                    end,
                    in_frame: false,
                    overlong: false,
                }
            }
            Framing::LengthPrefix {
                offset,
                width,
                big_endian,
                adjust,
            } => {
                if !matches!(width, 1 | 2 | 4) {
                    return Err(FramingError::BadWidth(width));
                }
                let header = offset
                    .checked_add(usize::from(width))
                    .filter(|&header| header <= max_frame)
                    .ok_or(FramingError::HeaderLongerThanMax {
                        offset,
                        width,
                        max_frame,
                    })?;
                Kind::LengthPrefix {
                    offset,
                    big_endian,
                    adjust,
                    header,
                    expected: None,
                }
            }
        };
        Ok(Framer {
            kind,
            max_frame,
            buf: Vec::new(),
            skipped: 0,
        })
    }

    /// Feeds bytes read from the port; appends what they completed to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<FrameEvent>) {
        let Framer {
            kind,
            max_frame,
            buf,
            skipped,
        } = self;
        let max_frame = *max_frame;
        match kind {
            Kind::Line { delimiter } => {
                for &byte in bytes {
                    buf.push(byte);
                    if buf.ends_with(delimiter) {
                        if *skipped > 0 {
                            let bytes = skipped.saturating_add(buf.len());
                            out.push(discarded(bytes, Discard::TooLong));
                            *skipped = 0;
                            buf.clear();
                        } else {
                            let len = buf.len() - delimiter.len();
                            buf.truncate(len);
                            out.push(FrameEvent::Frame(mem::take(buf)));
                        }
                    } else if buf.len() >= max_frame.saturating_add(delimiter.len()) {
                        // No delimiter can start before the last `delimiter.len() - 1`
                        // bytes, so the line is already longer than max_frame: keep
                        // only what may be the start of its delimiter.
                        let drop = buf.len() + 1 - delimiter.len();
                        buf.drain(..drop);
                        *skipped = skipped.saturating_add(drop);
                    }
                }
            }
            Kind::Fixed { length } => {
                let mut rest = bytes;
                while !rest.is_empty() {
                    let take = (*length - buf.len()).min(rest.len());
                    let (head, tail) = rest.split_at(take);
                    buf.extend_from_slice(head);
                    rest = tail;
                    if buf.len() == *length {
                        out.push(FrameEvent::Frame(mem::take(buf)));
                    }
                }
            }
            Kind::Markers {
                start,
                end,
                in_frame,
                overlong,
            } => {
                for &byte in bytes {
                    buf.push(byte);
                    if !*in_frame {
                        if buf.ends_with(start) {
                            if *skipped > 0 {
                                let reason = if *overlong {
                                    Discard::TooLong
                                } else {
                                    Discard::Noise
                                };
                                out.push(discarded(*skipped, reason));
                                *skipped = 0;
                            }
                            *overlong = false;
                            buf.clear();
                            *in_frame = true;
                        } else if buf.len() >= start.len() {
                            // Only the last `start.len() - 1` bytes can begin a marker.
                            buf.remove(0);
                            *skipped = skipped.saturating_add(1);
                        }
                    } else if buf.ends_with(end) {
                        let len = buf.len() - end.len();
                        buf.truncate(len);
                        out.push(FrameEvent::Frame(mem::take(buf)));
                        *in_frame = false;
                    } else if buf.ends_with(start) {
                        // The abandoned frame's own start marker plus everything
                        // before the new one: exactly what the buffer holds.
                        out.push(discarded(buf.len(), Discard::Noise));
                        buf.clear();
                    } else if buf.len() >= max_frame.saturating_add(end.len()) {
                        // No end marker can start at or before max_frame any more.
                        // Hunt for the next start marker, keeping what may begin one.
                        let keep = (start.len() - 1).min(buf.len());
                        let drop = buf.len() - keep;
                        buf.drain(..drop);
                        *skipped = start.len().saturating_add(drop);
                        *overlong = true;
                        *in_frame = false;
                    }
                }
            }
            Kind::LengthPrefix {
                offset,
                big_endian,
                adjust,
                header,
                expected,
            } => {
                let mut rest = bytes;
                while !rest.is_empty() {
                    let want = expected.unwrap_or(*header);
                    let take = (want - buf.len()).min(rest.len());
                    let (head, tail) = rest.split_at(take);
                    buf.extend_from_slice(head);
                    rest = tail;
                    if buf.len() < want {
                        continue;
                    }
                    if expected.is_some() {
                        *expected = None;
                        out.push(FrameEvent::Frame(mem::take(buf)));
                        continue;
                    }
                    let field = buf.get(*offset..*header).unwrap_or_default();
                    match frame_length(field, *big_endian, *header, *adjust, max_frame) {
                        Some(total) => {
                            if *skipped > 0 {
                                out.push(discarded(*skipped, Discard::BadLength));
                                *skipped = 0;
                            }
                            if total == *header {
                                out.push(FrameEvent::Frame(mem::take(buf)));
                            } else {
                                *expected = Some(total);
                            }
                        }
                        None => {
                            // The frame may start one byte later.
                            buf.remove(0);
                            *skipped = skipped.saturating_add(1);
                        }
                    }
                }
            }
        }
    }

    /// Drops a partial frame (after a read timeout or silence, or when the
    /// port reopens); returns how many bytes were dropped, counting bytes
    /// already skipped while resynchronising that no event has reported.
    pub fn reset(&mut self) -> usize {
        let mut dropped = self.buf.len().saturating_add(self.skipped);
        match &mut self.kind {
            Kind::Markers {
                start,
                in_frame,
                overlong,
                ..
            } => {
                if *in_frame {
                    dropped = dropped.saturating_add(start.len());
                }
                *in_frame = false;
                *overlong = false;
            }
            Kind::LengthPrefix { expected, .. } => *expected = None,
            Kind::Line { .. } | Kind::Fixed { .. } => {}
        }
        self.buf.clear();
        self.skipped = 0;
        dropped
    }

    /// Bytes held for a frame (or a delimiter or marker) not yet complete.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The most [`buffered`](Self::buffered) can ever be: `max_frame` plus the
    /// delimiter or the longer marker (just `max_frame` for the other framings).
    pub fn max_buffered(&self) -> usize {
        match &self.kind {
            Kind::Line { delimiter } => self.max_frame.saturating_add(delimiter.len()),
            Kind::Fixed { length } => *length,
            Kind::Markers { start, end, .. } => {
                self.max_frame.saturating_add(end.len()).max(start.len())
            }
            Kind::LengthPrefix { .. } => self.max_frame,
        }
    }
}

fn discarded(bytes: usize, reason: Discard) -> FrameEvent {
    FrameEvent::Discarded { bytes, reason }
}

/// The total length a length field announces, if it is a possible frame: at
/// least the header and at most `max_frame`.
fn frame_length(
    field: &[u8],
    big_endian: bool,
    header: usize,
    adjust: i64,
    max_frame: usize,
) -> Option<usize> {
    let fold = |value: u64, &byte: &u8| (value << 8) | u64::from(byte);
    let value = if big_endian {
        field.iter().fold(0, fold)
    } else {
        field.iter().rev().fold(0, fold)
    };
    // i128 holds every sum of a usize, a u32 and an i64 without overflow.
    let total = header as i128 + i128::from(value) + i128::from(adjust);
    if total < header as i128 {
        return None;
    }
    usize::try_from(total)
        .ok()
        .filter(|&total| total <= max_frame)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn framer(framing: Framing, max_frame: usize) -> Framer {
        Framer::new(framing, max_frame).expect("valid framing")
    }

    fn line(delimiter: &[u8]) -> Framing {
        Framing::Line {
            delimiter: delimiter.to_vec(),
        }
    }

    fn markers(start: &[u8], end: &[u8]) -> Framing {
        Framing::Markers {
            start: start.to_vec(),
            end: end.to_vec(),
        }
    }

    fn push_all<'a>(
        framer: &mut Framer,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<FrameEvent> {
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk, &mut out);
        }
        out
    }

    fn frame(bytes: &[u8]) -> FrameEvent {
        FrameEvent::Frame(bytes.to_vec())
    }

    #[test]
    fn rejects_unworkable_configurations() {
        assert_eq!(
            Framer::new(line(b"\n"), 0).unwrap_err(),
            FramingError::ZeroMaxFrame
        );
        assert_eq!(
            Framer::new(line(b""), 10).unwrap_err(),
            FramingError::EmptyDelimiter
        );
        assert_eq!(
            Framer::new(markers(b"", b"x"), 10).unwrap_err(),
            FramingError::EmptyStartMarker
        );
        assert_eq!(
            Framer::new(markers(b"x", b""), 10).unwrap_err(),
            FramingError::EmptyEndMarker
        );
        assert_eq!(
            Framer::new(Framing::Fixed { length: 0 }, 10).unwrap_err(),
            FramingError::ZeroLength
        );
        assert_eq!(
            Framer::new(Framing::Fixed { length: 11 }, 10).unwrap_err(),
            FramingError::FixedLongerThanMax {
                length: 11,
                max_frame: 10
            }
        );
        let prefix = |offset, width| Framing::LengthPrefix {
            offset,
            width,
            big_endian: true,
            adjust: 0,
        };
        assert_eq!(
            Framer::new(prefix(0, 3), 10).unwrap_err(),
            FramingError::BadWidth(3)
        );
        assert!(matches!(
            Framer::new(prefix(7, 4), 10),
            Err(FramingError::HeaderLongerThanMax { offset: 7, .. })
        ));
        assert!(matches!(
            Framer::new(prefix(usize::MAX, 1), usize::MAX),
            Err(FramingError::HeaderLongerThanMax { .. })
        ));
        assert!(Framer::new(prefix(6, 4), 10).is_ok());
    }

    #[test]
    fn line_delimiter_split_across_pushes() {
        let mut f = framer(line(b"\r\n"), 16);
        let out = push_all(&mut f, [&b"ab\r"[..], b"\ncd\r", b"\n\r\n", b"e"]);
        assert_eq!(out, [frame(b"ab"), frame(b"cd"), frame(b"")]);
        assert_eq!(f.buffered(), 1);
        assert_eq!(f.reset(), 1);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn overlong_line_is_reported_once_and_framing_resynchronises() {
        let mut f = framer(line(b"\r\n"), 4);
        // A line of exactly max_frame bytes is fine; one byte more is not.
        let out = push_all(&mut f, [&b"abcd\r\nabcde"[..], b"fghij\r", b"\nok\r\n"]);
        assert_eq!(
            out,
            [
                frame(b"abcd"),
                FrameEvent::Discarded {
                    bytes: 12,
                    reason: Discard::TooLong
                },
                frame(b"ok"),
            ]
        );
        assert!(f.buffered() <= f.max_buffered());
    }

    #[test]
    fn reset_counts_the_skipped_part_of_an_overlong_line() {
        let mut f = framer(line(b"\n"), 3);
        assert!(push_all(&mut f, [&b"0123456789"[..]]).is_empty());
        assert!(f.buffered() <= 4);
        assert_eq!(f.reset(), 10);
        // After a reset the next line is a fresh one.
        assert_eq!(push_all(&mut f, [&b"ab\n"[..]]), [frame(b"ab")]);
    }

    #[test]
    fn fixed_frames_across_pushes() {
        let mut f = framer(Framing::Fixed { length: 3 }, 3);
        let out = push_all(&mut f, [&b"ab"[..], b"cdefg", b"h"]);
        assert_eq!(out, [frame(b"abc"), frame(b"def")]);
        assert_eq!(f.reset(), 2);
    }

    #[test]
    fn markers_report_noise_and_restart_on_a_new_start() {
        let mut f = framer(markers(b"<<", b">"), 8);
        let out = push_all(&mut f, [&b"xx<"[..], b"<ab><<cd<<ef>", b"y"]);
        assert_eq!(
            out,
            [
                FrameEvent::Discarded {
                    bytes: 2,
                    reason: Discard::Noise
                },
                frame(b"ab"),
                // `<<cd` abandoned when `<<` came again.
                FrameEvent::Discarded {
                    bytes: 4,
                    reason: Discard::Noise
                },
                frame(b"ef"),
            ]
        );
        // `y` is noise that no start marker has closed yet.
        assert_eq!(f.reset(), 1);
    }

    #[test]
    fn overlong_marker_frame_is_dropped_up_to_the_next_start() {
        let mut f = framer(markers(b"<", b">"), 3);
        let out = push_all(&mut f, [&b"<abc>"[..], b"<abcd>zz", b"<e>"]);
        assert_eq!(
            out,
            [
                frame(b"abc"),
                FrameEvent::Discarded {
                    bytes: 8,
                    reason: Discard::TooLong
                },
                frame(b"e"),
            ]
        );
    }

    #[test]
    fn a_marker_straddling_the_overflow_point_is_kept() {
        // The line overflows on `\r`, which may begin the delimiter.
        let mut f = framer(line(b"\r\n"), 3);
        let out = push_all(&mut f, [&b"abcd\r"[..], b"\nef\r\n"]);
        assert_eq!(
            out,
            [
                FrameEvent::Discarded {
                    bytes: 6,
                    reason: Discard::TooLong
                },
                frame(b"ef"),
            ]
        );
        // The frame overflows on `<`, which may begin the next start marker.
        let mut f = framer(markers(b"<<", b">"), 3);
        let out = push_all(&mut f, [&b"<<abc<"[..], b"<d>"]);
        assert_eq!(
            out,
            [
                FrameEvent::Discarded {
                    bytes: 5,
                    reason: Discard::TooLong
                },
                frame(b"d"),
            ]
        );
    }

    #[test]
    fn reset_inside_a_marker_frame_counts_its_start_marker() {
        let mut f = framer(markers(b"STX", b"ETX"), 16);
        assert!(push_all(&mut f, [&b"STXab"[..]]).is_empty());
        assert_eq!(f.reset(), 5);
        assert_eq!(push_all(&mut f, [&b"ETXSTXcdETX"[..]]).len(), 2);
    }

    #[test]
    fn length_prefix_big_endian_with_checksum_adjust() {
        // Header byte 0xAA, 2-byte big-endian length of the payload, then a
        // 2-byte checksum the length does not count.
        let mut f = framer(
            Framing::LengthPrefix {
                offset: 1,
                width: 2,
                big_endian: true,
                adjust: 2,
            },
            32,
        );
        let first = [0xAA, 0x00, 0x03, 1, 2, 3, 0xC1, 0xC2];
        let second = [0xAA, 0x00, 0x00, 0xC1, 0xC2];
        let mut stream = first.to_vec();
        stream.extend_from_slice(&second);
        let out = push_all(&mut f, stream.chunks(3));
        assert_eq!(out, [frame(&first), frame(&second)]);
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn length_prefix_resynchronises_after_bad_lengths() {
        let mut f = framer(
            Framing::LengthPrefix {
                offset: 0,
                width: 2,
                big_endian: false,
                adjust: -2,
            },
            10,
        );
        // Sliding over the stream one byte at a time: FF FF and FF 01 give
        // frames that are too long, 01 00 one shorter than its 2-byte header,
        // 00 05 one too long again; 05 00 is a good 5-byte frame.
        let out = push_all(&mut f, [&[0xFF, 0xFF, 0x01, 0x00, 0x05, 0x00, 7, 8, 9][..]]);
        assert_eq!(
            out,
            [
                FrameEvent::Discarded {
                    bytes: 4,
                    reason: Discard::BadLength
                },
                frame(&[0x05, 0x00, 7, 8, 9]),
            ]
        );
    }

    #[test]
    fn length_prefix_little_endian_four_bytes() {
        let mut f = framer(
            Framing::LengthPrefix {
                offset: 0,
                width: 4,
                big_endian: false,
                adjust: 0,
            },
            16,
        );
        let out = push_all(&mut f, [&[2, 0, 0, 0, 9][..], &[9]]);
        assert_eq!(out, [frame(&[2, 0, 0, 0, 9, 9])]);
    }

    #[test]
    fn frame_length_bounds() {
        assert_eq!(
            frame_length(&[0x12, 0x34], true, 2, 0, 0x4000),
            Some(0x1236)
        );
        assert_eq!(
            frame_length(&[0x12, 0x34], false, 2, 0, 0x4000),
            Some(0x3414)
        );
        assert_eq!(frame_length(&[0x12, 0x34], true, 2, 0, 0x1235), None);
        assert_eq!(frame_length(&[0], true, 1, -1, 10), None);
        assert_eq!(frame_length(&[0], true, 1, 0, 10), Some(1));
        // Extreme lengths and adjustments neither overflow nor wrap.
        assert_eq!(
            frame_length(&[0xFF; 4], true, 4, i64::MAX, usize::MAX),
            usize::try_from(i128::from(i64::MAX) + 4 + 0xFFFF_FFFF).ok()
        );
        assert_eq!(
            frame_length(&[0xFF; 4], true, 4, i64::MIN, usize::MAX),
            None
        );
    }

    /// Bytes from a small alphabet, so delimiters and markers made of the
    /// same alphabet turn up often, mixed with arbitrary bytes.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![3 => 0u8..4, 1 => any::<u8>()], 0..400)
    }

    fn config() -> impl Strategy<Value = (Framing, usize)> {
        let marker = || proptest::collection::vec(0u8..4, 1..4);
        let framing = prop_oneof![
            marker().prop_map(|delimiter| Framing::Line { delimiter }),
            (1usize..12).prop_map(|length| Framing::Fixed { length }),
            (marker(), marker()).prop_map(|(start, end)| Framing::Markers { start, end }),
            (
                0usize..3,
                prop_oneof![Just(1u8), Just(2), Just(4)],
                any::<bool>(),
                -6i64..6
            )
                .prop_map(|(offset, width, big_endian, adjust)| {
                    Framing::LengthPrefix {
                        offset,
                        width,
                        big_endian,
                        adjust,
                    }
                }),
        ];
        (framing, 1usize..24).prop_filter("framer accepts the configuration", |(f, max)| {
            Framer::new(f.clone(), *max).is_ok()
        })
    }

    /// Bytes of the stream that a returned frame stands for beyond its contents.
    fn overhead(framing: &Framing) -> usize {
        match framing {
            Framing::Line { delimiter } => delimiter.len(),
            Framing::Markers { start, end } => start.len() + end.len(),
            Framing::Fixed { .. } | Framing::LengthPrefix { .. } => 0,
        }
    }

    /// Cuts `bytes` at the given points (in any order, repeats allowed).
    fn chunks(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        points
            .windows(2)
            .map(|w| bytes[w[0]..w[1]].to_vec())
            .collect()
    }

    proptest! {
        #[test]
        fn splitting_the_input_does_not_change_the_events(
            (framing, max_frame) in config(),
            bytes in stream(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut whole = framer(framing.clone(), max_frame);
            let expected = push_all(&mut whole, [&bytes[..]]);
            let mut split = framer(framing, max_frame);
            let pieces = chunks(&bytes, &cuts);
            let got = push_all(&mut split, pieces.iter().map(Vec::as_slice));
            prop_assert_eq!(got, expected);
            prop_assert_eq!(split.buffered(), whole.buffered());
            prop_assert_eq!(split.reset(), whole.reset());
        }

        #[test]
        fn buffer_and_frames_stay_bounded_and_every_byte_is_accounted_for(
            (framing, max_frame) in config(),
            bytes in stream(),
            chunk in 1usize..40,
        ) {
            let mut f = framer(framing.clone(), max_frame);
            let mut out = Vec::new();
            for piece in bytes.chunks(chunk) {
                f.push(piece, &mut out);
                prop_assert!(f.buffered() <= f.max_buffered());
            }
            let mut accounted = f.reset();
            for event in &out {
                accounted += match event {
                    FrameEvent::Frame(frame) => {
                        prop_assert!(frame.len() <= max_frame);
                        frame.len() + overhead(&framing)
                    }
                    FrameEvent::Discarded { bytes, .. } => {
                        prop_assert!(*bytes > 0);
                        *bytes
                    }
                };
            }
            prop_assert_eq!(accounted, bytes.len());
        }

        #[test]
        fn well_formed_frames_round_trip(
            (framing, max_frame) in config(),
            contents in proptest::collection::vec(
                proptest::collection::vec(4u8..=255, 0..24), 0..8),
            header_byte in any::<u8>(),
            chunk in 1usize..16,
        ) {
            // Markers use bytes 0..4 and contents 4..=255, so a content never
            // holds (part of) a marker; but a start marker inside the end
            // marker would rightly restart the frame.
            if let Framing::Markers { start, end } = &framing {
                prop_assume!(!end[..end.len() - 1].windows(start.len()).any(|w| w == start));
            }
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for content in &contents {
                match &framing {
                    Framing::Line { delimiter } => {
                        if content.len() > max_frame { continue; }
                        stream.extend_from_slice(content);
                        stream.extend_from_slice(delimiter);
                        expected.push(content.clone());
                    }
                    Framing::Fixed { length } => {
                        let mut frame = content.clone();
                        frame.resize(*length, header_byte);
                        stream.extend_from_slice(&frame);
                        expected.push(frame);
                    }
                    Framing::Markers { start, end } => {
                        if content.len() > max_frame { continue; }
                        stream.extend_from_slice(start);
                        stream.extend_from_slice(content);
                        stream.extend_from_slice(end);
                        expected.push(content.clone());
                    }
                    Framing::LengthPrefix { offset, width, big_endian, adjust } => {
                        let header = offset + usize::from(*width);
                        let total = header + content.len();
                        let Ok(value) = u64::try_from(content.len() as i64 - adjust) else {
                            continue;
                        };
                        if total > max_frame || value >= 1 << (8 * width) { continue; }
                        let mut frame = vec![header_byte; *offset];
                        let field = value.to_be_bytes();
                        let field = &field[8 - usize::from(*width)..];
                        if *big_endian {
                            frame.extend_from_slice(field);
                        } else {
                            frame.extend(field.iter().rev());
                        }
                        frame.extend_from_slice(content);
                        stream.extend_from_slice(&frame);
                        expected.push(frame);
                    }
                }
            }
            let mut f = framer(framing, max_frame);
            let got = push_all(&mut f, stream.chunks(chunk));
            let expected: Vec<_> = expected.into_iter().map(FrameEvent::Frame).collect();
            prop_assert_eq!(got, expected);
            prop_assert_eq!(f.buffered(), 0);
        }
    }
}
