//! Text from clients and from the directory, made safe to write into a log line.
//!
//! A bind DN with a newline in it would otherwise forge a whole log line of its own
//! ("… bind … result=Success"), and ESC bytes would reach the terminal of whoever reads
//! the log. [`Untrusted`] prints such text as data: control characters, backslash,
//! double quote and bytes that are not UTF-8 are escaped, and the output is capped.
//!
//! ```
//! use ldap_pam_proxy::logsafe::Untrusted;
//! let dn = "uid=x\nbind dn=uid=admin result=Success";
//! assert_eq!(
//!     Untrusted::new(dn).to_string(),
//!     "uid=x\\nbind dn=uid=admin result=Success"
//! );
//! ```

use std::fmt::{self, Write as _};

/// Most characters an [`Untrusted`] writes before it cuts the text short (escape
/// sequences count with their full length, the marker saying what was cut does not).
pub const MAX_CHARS: usize = 256;

/// Client- or directory-supplied text (UTF-8 or not) that displays escaped and capped
/// at [`MAX_CHARS`] characters. Use it for every such value in a log line:
/// `tracing::info!(dn = %Untrusted::new(&dn), …)`.
///
/// Escapes: `\n`, `\r`, `\t`, `\\`, `\"`; other C0 controls, DEL and bytes that are not
/// UTF-8 as `\xNN`; C1 controls, Unicode line/paragraph separators and bidirectional
/// formatting characters (which reorder what a terminal shows) as `\u{NNNN}`.
#[derive(Clone, Copy)]
pub struct Untrusted<'a> {
    bytes: &'a [u8],
}

impl<'a> Untrusted<'a> {
    /// Wraps `text`: a `str`, `String`, byte slice or `Vec<u8>`.
    pub fn new<T: AsRef<[u8]> + ?Sized>(text: &'a T) -> Untrusted<'a> {
        Untrusted {
            bytes: text.as_ref(),
        }
    }
}

/// How one character (or one invalid byte) is written.
enum Piece {
    Plain(char),
    Escaped(&'static str),
    Byte(u8),
    Unicode(char),
}

impl Piece {
    fn of(c: char) -> Piece {
        match c {
            '\n' => Piece::Escaped("\\n"),
            '\r' => Piece::Escaped("\\r"),
            '\t' => Piece::Escaped("\\t"),
            '\\' => Piece::Escaped("\\\\"),
            '"' => Piece::Escaped("\\\""),
            // C0 controls (ESC among them) and DEL: one byte each.
            '\0'..='\x1f' | '\x7f' => Piece::Byte(c as u8),
            // C1 controls; line and paragraph separators; bidirectional embeddings,
            // overrides and isolates, and the marks that steer them.
            '\u{80}'..='\u{9f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}' => Piece::Unicode(c),
            _ => Piece::Plain(c),
        }
    }

    /// Characters this piece takes in the output.
    fn width(&self) -> usize {
        match self {
            Piece::Plain(_) => 1,
            Piece::Escaped(s) => s.len(),
            Piece::Byte(_) => 4,
            // \u{XXXX}: every character escaped this way has four hex digits.
            Piece::Unicode(_) => 8,
        }
    }

    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Piece::Plain(c) => f.write_char(*c),
            Piece::Escaped(s) => f.write_str(s),
            Piece::Byte(b) => write!(f, "\\x{b:02x}"),
            Piece::Unicode(c) => write!(f, "\\u{{{:04x}}}", u32::from(*c)),
        }
    }
}

/// The pieces of `bytes` in order, each with the number of input bytes it stands for.
fn pieces(bytes: &[u8]) -> impl Iterator<Item = (Piece, usize)> + '_ {
    bytes.utf8_chunks().flat_map(|chunk| {
        let valid = chunk.valid().chars().map(|c| (Piece::of(c), c.len_utf8()));
        let invalid = chunk.invalid().iter().map(|b| (Piece::Byte(*b), 1));
        valid.chain(invalid)
    })
}

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut written = 0;
        let mut consumed = 0;
        for (piece, len) in pieces(self.bytes) {
            if written + piece.width() > MAX_CHARS {
                let cut = self.bytes.len() - consumed;
                return write!(f, "…[{cut} more bytes]");
            }
            piece.write(f)?;
            written += piece.width();
            consumed += len;
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(bytes: &[u8]) -> String {
        Untrusted::new(bytes).to_string()
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(
            show(b"uid=alice,ou=People,dc=example,dc=com"),
            "uid=alice,ou=People,dc=example,dc=com"
        );
        assert_eq!(Untrusted::new("Jürgen Ωmega").to_string(), "Jürgen Ωmega");
        assert_eq!(show(b""), "");
    }

    #[test]
    fn a_newline_cannot_start_a_line() {
        let forged = "uid=x\n2026-01-01T00:00:00Z INFO bind dn=uid=admin result=Success";
        let shown = Untrusted::new(forged).to_string();
        assert!(!shown.contains('\n'), "{shown}");
        assert!(shown.starts_with("uid=x\\n2026"), "{shown}");
        assert_eq!(show(b"a\r\nb\tc"), "a\\r\\nb\\tc");
    }

    #[test]
    fn terminal_controls_are_escaped() {
        assert_eq!(show(b"\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(show(b"\0\x07\x7f"), "\\x00\\x07\\x7f");
        // C1 CSI (U+009B) would start an escape sequence on some terminals.
        assert_eq!(Untrusted::new("a\u{9b}2J").to_string(), "a\\u{009b}2J");
        assert_eq!(
            Untrusted::new("x\u{202e}gnp.exe\u{2028}").to_string(),
            "x\\u{202e}gnp.exe\\u{2028}"
        );
    }

    #[test]
    fn quotes_and_backslashes_cannot_close_a_field() {
        assert_eq!(
            show(br#"cn=a\,b" result="Success"#),
            r#"cn=a\\,b\" result=\"Success"#
        );
    }

    #[test]
    fn invalid_utf8_is_shown_as_bytes() {
        assert_eq!(show(b"ab\xff\xfecd"), "ab\\xff\\xfecd");
        // A truncated multi-byte sequence at the end.
        assert_eq!(show(b"caf\xc3"), "caf\\xc3");
        assert_eq!(show(b"\xc3\xa9\x80"), "é\\x80");
    }

    #[test]
    fn long_text_is_capped_with_what_was_cut() {
        let long = "a".repeat(1000);
        let shown = Untrusted::new(&long).to_string();
        assert_eq!(shown, format!("{}…[744 more bytes]", "a".repeat(256)));
        // Escapes count with their length, and are never cut in half.
        let escapes = "\x1b".repeat(100);
        let shown = Untrusted::new(&escapes).to_string();
        assert_eq!(shown, format!("{}…[36 more bytes]", "\\x1b".repeat(64)));
        // Exactly the limit: nothing cut.
        let exact = "b".repeat(MAX_CHARS);
        assert_eq!(Untrusted::new(&exact).to_string(), exact);
    }

    #[test]
    fn debug_quotes() {
        assert_eq!(format!("{:?}", Untrusted::new("a\"b")), "\"a\\\"b\"");
    }
}
