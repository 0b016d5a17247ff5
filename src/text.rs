//! Text shown to users: what a message echoes of the caller's input is
//! kept short and printable, whatever the caller sent.

use std::borrow::Cow;
use std::path::Path;

/// At most this many characters of a caller's value go into a message.
pub const MAX_ECHO: usize = 160;

/// `s`, with control characters escaped, cut in the middle to at most
/// [`MAX_ECHO`] characters (`head…tail`), so that a 4,000-character path
/// or a stray binary blob cannot flood a message or a terminal.
pub fn echo(s: &str) -> Cow<'_, str> {
    let clean = s.chars().all(|c| !c.is_control()) && s.chars().count() <= MAX_ECHO;
    if clean {
        return Cow::Borrowed(s);
    }
    let escaped: Vec<char> = s.chars().flat_map(char::escape_debug_ext).collect();
    if escaped.len() <= MAX_ECHO {
        return Cow::Owned(escaped.into_iter().collect());
    }
    let keep = (MAX_ECHO - 1) / 2;
    let mut out: String = escaped[..keep].iter().collect();
    out.push('…');
    out.extend(&escaped[escaped.len() - keep..]);
    Cow::Owned(out)
}

/// A path for a message: [`echo`] of its lossy UTF-8 form.
pub fn echo_path(p: &Path) -> String {
    echo(&p.to_string_lossy()).into_owned()
}

/// Bytes of unknown content (a file's first bytes, a peer's answer) as
/// printable text: valid UTF-8 is kept, anything else is hex-escaped,
/// and the result is cut like [`echo`].
pub fn echo_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => echo(s).into_owned(),
        Err(_) => echo(&b.escape_ascii().to_string()).into_owned(),
    }
}

trait EscapeControl {
    fn escape_debug_ext(self) -> std::vec::IntoIter<char>;
}

impl EscapeControl for char {
    /// Control characters as `\n`, `\u{1b}` and so on; others unchanged.
    fn escape_debug_ext(self) -> std::vec::IntoIter<char> {
        if self.is_control() {
            self.escape_debug().collect::<Vec<_>>().into_iter()
        } else {
            vec![self].into_iter()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_clean_text_is_kept() {
        assert!(matches!(
            echo("/tmp/vmlinux"),
            Cow::Borrowed("/tmp/vmlinux")
        ));
    }

    #[test]
    fn long_paths_are_cut_in_the_middle() {
        let long = format!("/{}/end", "a".repeat(4000));
        let e = echo(&long);
        assert!(e.chars().count() <= MAX_ECHO, "{}", e.len());
        assert!(e.starts_with("/aaa") && e.ends_with("/end") && e.contains('…'));
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(echo("a\nb\u{1b}[2J"), "a\\nb\\u{1b}[2J");
        let b = echo_bytes(b"\x7fELF\x02\x01\x00\xff");
        assert!(b.chars().all(|c| !c.is_control()), "{b}");
        assert!(b.contains("\\xff"), "{b}");
        assert_eq!(echo_bytes(b"plain"), "plain");
    }
}
