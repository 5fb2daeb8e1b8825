//! How much text a plug-in may hand the gateway, and in what shape: its log
//! lines and the reasons it gives are cut to a bound and kept to one line,
//! so a plug-in can neither flood the log nor write lines that look like
//! the gateway's own.

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
