//! Any framing, any max_frame, any bytes in any chunks: the framer must not
//! panic, must stay within its buffer bound, must return no frame longer
//! than max_frame, must not depend on how the bytes were chunked, and must
//! account for every byte.

#![no_main]

use arbitrary::Arbitrary;
use kite_serial::framing::{FrameEvent, Framer, Framing};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Config {
    Line {
        delimiter: Vec<u8>,
    },
    Fixed {
        length: u16,
    },
    Markers {
        start: Vec<u8>,
        end: Vec<u8>,
    },
    LengthPrefix {
        offset: u8,
        width: u8,
        big_endian: bool,
        adjust: i64,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    config: Config,
    max_frame: u16,
    chunks: Vec<Vec<u8>>,
}

impl Config {
    fn framing(&self) -> Framing {
        match self {
            Config::Line { delimiter } => Framing::Line {
                delimiter: delimiter.clone(),
            },
            Config::Fixed { length } => Framing::Fixed {
                length: usize::from(*length),
            },
            Config::Markers { start, end } => Framing::Markers {
                start: start.clone(),
                end: end.clone(),
            },
            Config::LengthPrefix {
                offset,
                width,
                big_endian,
                adjust,
            } => Framing::LengthPrefix {
                offset: usize::from(*offset),
                width: *width,
                big_endian: *big_endian,
                adjust: *adjust,
            },
        }
    }

    /// Stream bytes a returned frame stands for beyond its contents.
    fn overhead(&self) -> usize {
        match self {
            Config::Line { delimiter } => delimiter.len(),
            Config::Markers { start, end } => start.len() + end.len(),
            Config::Fixed { .. } | Config::LengthPrefix { .. } => 0,
        }
    }
}

fuzz_target!(|input: Input| {
    let max_frame = usize::from(input.max_frame);
    let Ok(mut chunked) = Framer::new(input.config.framing(), max_frame) else {
        return;
    };
    let mut events = Vec::new();
    for chunk in &input.chunks {
        chunked.push(chunk, &mut events);
        assert!(chunked.buffered() <= chunked.max_buffered());
    }

    let mut whole = Framer::new(input.config.framing(), max_frame).expect("accepted once");
    let mut whole_events = Vec::new();
    whole.push(&input.chunks.concat(), &mut whole_events);
    assert_eq!(events, whole_events, "events depend on chunking");

    let mut accounted = chunked.reset();
    assert_eq!(accounted, whole.reset());
    assert_eq!(chunked.buffered(), 0);
    for event in &events {
        accounted += match event {
            FrameEvent::Frame(frame) => {
                assert!(frame.len() <= max_frame);
                frame.len() + input.config.overhead()
            }
            FrameEvent::Discarded { bytes, .. } => {
                assert!(*bytes > 0);
                *bytes
            }
        };
    }
    let pushed: usize = input.chunks.iter().map(Vec::len).sum();
    assert_eq!(accounted, pushed, "bytes unaccounted for");
});
