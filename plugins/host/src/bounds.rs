//! How much a plug-in may hand the gateway, and in what shape. Everything
//! a plug-in or codec outputs is bounded in bytes (names, units, event
//! messages, and each resulting message as a whole), so it can neither
//! make the gateway hold much nor publish more than the uplink carries.
//! Its log lines and the reasons it gives are cut to a bound and kept to
//! one line, so it can neither flood the log nor write lines that look like
//! the gateway's own.

use kite_core::Sample;

/// An output past these bounds, and which; the sandbox reports it as
/// [`crate::PluginError::OutputTooLarge`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("output too large: {0}")]
pub(crate) struct TooLarge(pub String);

/// One message's bound when the gateway does not give its own
/// ([`crate::PluginSpec::max_message_bytes`]): the largest MQTT packet Kite sends.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 << 10;
/// Longest point name a plug-in or codec outputs, and longest device or
/// point an event refers to.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest unit of a point.
pub const MAX_UNIT_BYTES: usize = 32;
/// Longest message of an event.
pub const MAX_EVENT_MESSAGE_BYTES: usize = 4 << 10;
/// What a published message adds to a sample's points or an event's
/// object: `seq`, `ts`, the field names and punctuation, with room to spare.
pub(crate) const ENVELOPE_BYTES: usize = 128;

/// Longest log line a plug-in may write, escaping included; the rest is cut.
pub const MAX_LOG_LINE_BYTES: usize = 1024;
/// Longest reason a plug-in gives (an `init` or codec error, a decoded
/// point's error), escaping included; the rest is cut.
pub const MAX_REASON_BYTES: usize = 256;

/// `text` as one line of at most `max_bytes`: control characters (newline,
/// carriage return, tab, escape and the other C0 and C1 controls) and the
/// characters some viewers take as line breaks or use to reorder a line are
/// written as escapes (`\n`, `\u{1b}`). The cut falls between characters
/// and never inside an escape.
pub(crate) fn one_line(text: &str, max_bytes: usize) -> String {
    let mut line = String::with_capacity(text.len().min(max_bytes));
    let mut piece = String::new();
    for c in text.chars() {
        piece.clear();
        match c {
            '\n' | '\r' | '\t' => piece.extend(c.escape_default()),
            c if needs_escape(c) => piece.extend(c.escape_unicode()),
            c => piece.push(c),
        }
        if line.len() + piece.len() > max_bytes {
            break;
        }
        line.push_str(&piece);
    }
    line
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Line and paragraph separators.
            '\u{2028}' | '\u{2029}'
            // Bidirectional marks, embeddings, overrides and isolates.
            | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Refuses a point name that is empty or longer than [`MAX_NAME_BYTES`],
/// and a unit longer than [`MAX_UNIT_BYTES`].
pub(crate) fn check_point(name: &str, unit: Option<&str>) -> Result<(), TooLarge> {
    if name.is_empty() {
        return Err(TooLarge("a point without a name".into()));
    }
    at_most("a point name", name, MAX_NAME_BYTES)?;
    unit.map_or(Ok(()), |unit| at_most("a unit", unit, MAX_UNIT_BYTES))
}

/// Refuses an event whose message, device or point is too long.
pub(crate) fn check_event(
    message: &str,
    device: Option<&str>,
    point: Option<&str>,
) -> Result<(), TooLarge> {
    at_most("an event message", message, MAX_EVENT_MESSAGE_BYTES)?;
    for (what, name) in [("an event's device", device), ("an event's point", point)] {
        name.map_or(Ok(()), |name| at_most(what, name, MAX_NAME_BYTES))?;
    }
    Ok(())
}

/// Refuses a sample whose telemetry message would exceed `max_message_bytes`.
pub(crate) fn check_sample(sample: &Sample, max_message_bytes: usize) -> Result<(), TooLarge> {
    let device = serde_json::to_string(&*sample.device).expect("a string serializes");
    check_message(
        "a sample",
        sample.points_json().len() + device.len(),
        max_message_bytes,
    )
}

/// Refuses a message whose body (an event's JSON, a sample's points and
/// device) of `body_bytes` would make it exceed `max_message_bytes`.
pub(crate) fn check_message(
    what: &str,
    body_bytes: usize,
    max_message_bytes: usize,
) -> Result<(), TooLarge> {
    let bytes = body_bytes + ENVELOPE_BYTES;
    if bytes > max_message_bytes {
        return Err(TooLarge(format!(
            "{what} that would be a message of {bytes} bytes, at most {max_message_bytes}"
        )));
    }
    Ok(())
}

fn at_most(what: &str, text: &str, max_bytes: usize) -> Result<(), TooLarge> {
    if text.len() > max_bytes {
        return Err(TooLarge(format!(
            "{what} of {} bytes, at most {max_bytes}",
            text.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_escapes_controls_and_cuts_between_characters() {
        let long = "a".repeat(MAX_LOG_LINE_BYTES + 1);
        let accents = "é".repeat(MAX_LOG_LINE_BYTES);
        let cases: &[(&str, usize, &str)] = &[
            ("temperature 21.5 °C ✓", 64, "temperature 21.5 °C ✓"),
            (
                "ok\n2025-01-01T00:00:00Z ERROR kite: plug-in DISABLED",
                64,
                r"ok\n2025-01-01T00:00:00Z ERROR kite: plug-in DISABLED",
            ),
            ("a\r\nb\tc", 64, r"a\r\nb\tc"),
            ("\u{1b}[31mred\u{1b}[0m", 64, r"\u{1b}[31mred\u{1b}[0m"),
            ("nul\0 del\u{7f}", 64, r"nul\u{0} del\u{7f}"),
            ("next line\u{85}", 64, r"next line\u{85}"),
            ("csi\u{9b}2J", 64, r"csi\u{9b}2J"),
            ("a\u{2028}b\u{2029}c", 64, r"a\u{2028}b\u{2029}c"),
            ("abc\u{202e}fed", 64, r"abc\u{202e}fed"),
            // A backslash is kept as it is: the line stays one line anyway.
            (r"C:\data\n", 64, r"C:\data\n"),
            (&long, MAX_LOG_LINE_BYTES, &long[..MAX_LOG_LINE_BYTES]),
            (&long, MAX_LOG_LINE_BYTES + 1, &long),
            (
                &accents,
                MAX_LOG_LINE_BYTES - 1,
                &accents[..MAX_LOG_LINE_BYTES - 2],
            ),
            ("ab\ncd", 3, "ab"),
            ("ab\ncd", 4, r"ab\n"),
            ("a\u{1b}", 6, "a"),
            ("a\u{1b}", 7, r"a\u{1b}"),
            ("", 8, ""),
        ];
        for &(text, max_bytes, expected) in cases {
            let line = one_line(text, max_bytes);
            assert_eq!(line, expected, "{text:?} in {max_bytes} bytes");
            assert!(line.len() <= max_bytes);
        }
    }
}
