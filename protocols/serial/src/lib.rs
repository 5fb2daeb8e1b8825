//! Raw serial instruments for Kite.
//!
//! A serial line carries bytes, not messages: [`framing`] cuts the stream
//! into frames (by delimiter, fixed length, start/end markers or a length
//! field), with a bounded buffer whatever the device sends. Frames then
//! become points: [`decode`] with a regular expression whose named groups
//! are points, [`nmea`] for NMEA 0183 sentences from GNSS receivers.
//! [`instrument`] is the task that owns one instrument's port.

pub mod decode;
pub mod framing;
pub mod instrument;
pub mod nmea;

pub use decode::{CaptureField, DecodeConfigError, DecodeError, FieldType, RegexDecoder};
pub use framing::{Discard, FrameEvent, Framer, Framing, FramingError};
pub use instrument::{run_instrument, FrameDecoder, InstrumentSpec};
pub use nmea::NmeaDecoder;
