//! Password preparation (SPEC.md 7.8): the one form of a password that
//! every client feeds to OPAQUE, so that the same password typed on two
//! devices is the same password.
//!
//! A phone may hand over "café" as `e` + U+0301 (NFD) where a laptop hands
//! over U+00E9 (NFC), or a no-break space where another keyboard types
//! U+0020. Unprepared, each mismatch is a wrong password that spends one of
//! the vault's few attempts. [`Password::prepare`] applies RFC 8265's
//! OpaqueString mappings (non-ASCII spaces to U+0020, then NFC; no width
//! or case mapping) and refuses a short, fixed list of characters that no
//! keyboard types and that only arrive through files and pasting. It does
//! not apply PRECIS's FreeformClass refusals: those rest on Unicode 6.3
//! tables and refuse emoji that phones type today (SPEC 7.8 says why).
//!
//! Every rule here is fixed for protocol version 1 and does not move with
//! the Unicode version, except NFC itself, whose results Unicode keeps
//! stable for every assigned character.

use std::fmt;

use icu_normalizer::ComposingNormalizerBorrowed;
use zeroize::Zeroizing;

use crate::error::PasswordError;

/// The non-ASCII space characters (general category Zs other than U+0020,
/// as of Unicode 17) that preparation maps to U+0020. Fixed for protocol
/// version 1: a space character a later Unicode version adds is not
/// mapped, so two clients on different Unicode versions still agree.
pub const NON_ASCII_SPACES: [char; 16] = [
    '\u{00A0}', '\u{1680}', '\u{2000}', '\u{2001}', '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}',
    '\u{2006}', '\u{2007}', '\u{2008}', '\u{2009}', '\u{200A}', '\u{202F}', '\u{205F}', '\u{3000}',
];

/// A password in its prepared form: the exact bytes (UTF-8) that OPAQUE
/// blinds and Argon2id stretches. The only way to build one is
/// [`Password::prepare`], so nothing can stretch an unprepared password.
/// Wiped on drop and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Zeroizing<String>);

impl Password {
    /// Prepares `input` as SPEC 7.8 says: each character of
    /// [`NON_ASCII_SPACES`] becomes U+0020, then the whole string is put in
    /// Unicode Normalization Form C; the result is refused if it is empty
    /// or holds a character of [`refused`]. Nothing is trimmed: leading
    /// and trailing spaces are part of the password.
    pub fn prepare(input: &str) -> Result<Password, PasswordError> {
        // Room for NFC's worst-case growth up front, so the buffer is never
        // reallocated and no copy of the password is left behind unwiped.
        let mut out = Zeroizing::new(String::with_capacity(input.len() * 3 + 4));
        let mapped = input.chars().map(|c| {
            if NON_ASCII_SPACES.contains(&c) {
                ' '
            } else {
                c
            }
        });
        out.extend(ComposingNormalizerBorrowed::new_nfc().normalize_iter(mapped));
        if out.is_empty() {
            return Err(PasswordError::Empty);
        }
        if let Some(why) = out.chars().find_map(refused) {
            return Err(why);
        }
        Ok(Password(out))
    }

    /// The prepared password as UTF-8: OPAQUE's password input.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Its length in Unicode scalar values (for minimum-length rules, which
    /// count the prepared form so that every device counts the same).
    pub fn chars(&self) -> usize {
        self.0.chars().count()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([redacted])")
    }
}

/// Why `c` may not appear in a prepared password, if it may not. The list
/// is closed and does not depend on the Unicode version:
///
/// - line breaks (U+000A, U+000D, U+0085, U+2028, U+2029): a password is
///   one line, and a line break inside one is a line-ending mix-up;
/// - the other control characters (general category Cc: U+0000..U+001F,
///   U+007F..U+009F; Unicode never adds to Cc): a tab or an escape cannot
///   be typed on a phone, so a password holding one cannot be the same on
///   every device;
/// - U+FEFF, the byte-order mark some editors put at the start of a file
///   a password is piped from: invisible, and present on one device only.
pub fn refused(c: char) -> Option<PasswordError> {
    match c {
        '\n' | '\r' | '\u{0085}' | '\u{2028}' | '\u{2029}' => Some(PasswordError::LineBreak),
        '\u{0000}'..='\u{001F}' | '\u{007F}'..='\u{009F}' => Some(PasswordError::ControlCharacter),
        '\u{FEFF}' => Some(PasswordError::ByteOrderMark),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(s: &str) -> Vec<u8> {
        Password::prepare(s).unwrap().as_bytes().to_vec()
    }

    #[test]
    fn nfc_and_nfd_are_one_password() {
        assert_eq!(prepared("caf\u{e9}"), prepared("cafe\u{301}"));
        assert_eq!(prepared("cafe\u{301}"), "caf\u{e9}".as_bytes());
        // Hangul typed as conjoining jamo composes to the syllable.
        assert_eq!(prepared("\u{1100}\u{1161}"), "\u{ac00}".as_bytes());
    }

    #[test]
    fn non_ascii_spaces_become_ascii_spaces_and_nothing_is_trimmed() {
        for space in NON_ASCII_SPACES {
            assert_eq!(
                prepared(&format!(" a{space}b ")),
                b" a b ",
                "U+{:04X}",
                space as u32
            );
        }
        // Zero-width space is not a space (category Cf) and stays.
        assert_eq!(prepared("a\u{200b}b"), "a\u{200b}b".as_bytes());
    }

    #[test]
    fn no_width_or_case_mapping() {
        // Fullwidth letters and compatibility characters are kept as typed
        // (RFC 8265 4.2.2: OpaqueString maps neither width nor case).
        assert_eq!(prepared("\u{ff50}\u{ff41}"), "\u{ff50}\u{ff41}".as_bytes());
        assert_eq!(prepared("\u{fb01}"), "\u{fb01}".as_bytes());
        assert_eq!(prepared("Secret"), b"Secret");
    }

    #[test]
    fn emoji_as_phones_type_them_are_accepted() {
        for s in [
            "I\u{2764}\u{fe0f}you",
            "ok\u{1f44d}\u{1f3fd}",
            "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}",
            "\u{1f914}\u{1fae0}",
            "apple\u{f8ff}",
        ] {
            assert_eq!(prepared(s), s.as_bytes(), "{s:?}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(Password::prepare(""), Err(PasswordError::Empty));
        for s in ["a\nb", "a\r", "a\u{85}b", "a\u{2028}", "\u{2029}"] {
            assert_eq!(Password::prepare(s), Err(PasswordError::LineBreak), "{s:?}");
        }
        for s in ["a\tb", "\u{0}", "\u{1b}[A", "\u{7f}", "\u{9f}"] {
            assert_eq!(
                Password::prepare(s),
                Err(PasswordError::ControlCharacter),
                "{s:?}"
            );
        }
        assert_eq!(
            Password::prepare("\u{feff}secret"),
            Err(PasswordError::ByteOrderMark)
        );
    }

    #[test]
    fn counts_and_debug() {
        let p = Password::prepare("cafe\u{301}").unwrap();
        assert_eq!(p.chars(), 4);
        assert_eq!(format!("{p:?}"), "Password([redacted])");
    }
}
