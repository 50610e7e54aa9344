//! Text from outside (names, references, paths, file names, a daemon's messages) made safe for
//! a terminal before it is printed: control characters and bidirectional overrides are written
//! as escapes, so a value can neither move the cursor, recolour, retitle the terminal nor
//! forge extra lines. JSON output needs none of this: serde_json escapes control characters.

use std::borrow::Cow;
use std::fmt::Write;

/// `s` with every control character (C0, DEL, C1), every bidi control and every backslash
/// escaped (`\n`, `\t`, `\r`, `\\`, `\x1b`, `\u{202e}`); anything else as it is.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert!(matches!(escape("alpine-3.19 über"), Cow::Borrowed(_)));
        assert_eq!(escape("a\x1b]0;pwned\x07\nb"), "a\\x1b]0;pwned\\x07\\nb");
        assert_eq!(escape("tab\there\r\\"), "tab\\there\\r\\\\");
        assert_eq!(escape("\u{9b}31m \u{7f}"), "\\x9b31m \\x7f");
        assert_eq!(escape("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
    }
}
