//! The backup root key `K` and its 64-digit text form (SPEC.md section 7.6).
//!
//! `K` is 32 bytes: 30 random bytes followed by a 2-byte check value,
//! `SHA-256("E2EBK key checksum v1" || first 30 bytes)[0..2]`. As text it is
//! 64 lower-case hex digits in 16 groups of 4. The check value lets a client
//! tell a person which group they mistyped instead of failing later with
//! "wrong key". `K` keeps 240 bits of entropy.

use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::RootKeyError;

/// Random bytes in a root key.
pub const ROOT_KEY_ENTROPY_LEN: usize = 30;
/// Length of a root key.
pub const ROOT_KEY_LEN: usize = 32;
/// Digits in the text form.
pub const ROOT_KEY_DIGITS: usize = 64;

/// The backup root key. Zeroized on drop; `Debug` prints `[redacted]`.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct RootKey([u8; ROOT_KEY_LEN]);

fn checksum(entropy: &[u8]) -> [u8; 2] {
    let mut h = Sha256::new();
    h.update(b"E2EBK key checksum v1");
    h.update(entropy);
    let d = h.finalize();
    [d[0], d[1]]
}

impl RootKey {
    /// Builds a fresh key from 30 uniformly random bytes supplied by the
    /// caller.
    pub fn from_entropy(entropy: [u8; ROOT_KEY_ENTROPY_LEN]) -> Self {
        let mut k = [0u8; ROOT_KEY_LEN];
        k[..ROOT_KEY_ENTROPY_LEN].copy_from_slice(&entropy);
        k[ROOT_KEY_ENTROPY_LEN..].copy_from_slice(&checksum(&entropy));
        let mut entropy = entropy;
        entropy.zeroize();
        RootKey(k)
    }

    /// Accepts 32 bytes only if their check value is right (keys unwrapped
    /// from the vault go through here too).
    pub fn from_bytes(bytes: [u8; ROOT_KEY_LEN]) -> Result<Self, RootKeyError> {
        let key = RootKey(bytes);
        if key.checksum_ok() {
            Ok(key)
        } else {
            Err(RootKeyError::Checksum)
        }
    }

    fn checksum_ok(&self) -> bool {
        checksum(&self.0[..ROOT_KEY_ENTROPY_LEN]) == self.0[ROOT_KEY_ENTROPY_LEN..]
    }

    pub fn expose(&self) -> &[u8; ROOT_KEY_LEN] {
        &self.0
    }

    /// The 64-digit form, 16 groups of 4 separated by spaces.
    pub fn to_text(&self) -> Zeroizing<String> {
        let hexed = Zeroizing::new(hex::encode(self.0));
        let mut out = Zeroizing::new(String::with_capacity(79));
        for (i, c) in hexed.chars().enumerate() {
            if i > 0 && i % 4 == 0 {
                out.push(' ');
            }
            out.push(c);
        }
        out
    }

    /// The text form as four lines of four groups, for writing down.
    pub fn to_lines(&self) -> Zeroizing<String> {
        let text = self.to_text();
        let groups: Vec<&str> = text.split(' ').collect();
        Zeroizing::new(
            groups
                .chunks(4)
                .map(|line| line.join(" "))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }

    /// Parses a typed key. Spaces, dashes, tabs and line breaks between
    /// digits are ignored; letters may be upper or lower case. Errors say
    /// which group is wrong when that can be known.
    pub fn parse_text(input: &str) -> Result<Self, RootKeyError> {
        let mut digits = Zeroizing::new(Vec::with_capacity(ROOT_KEY_DIGITS));
        for c in input.chars() {
            if c == ' ' || c == '-' || c == '\t' || c == '\n' || c == '\r' {
                continue;
            }
            let group = digits.len() / 4 + 1;
            match c.to_digit(16) {
                Some(d) => digits.push(d as u8),
                None => {
                    return Err(RootKeyError::NotHex {
                        group: group.min(16),
                        found: c,
                    })
                }
            }
        }
        if digits.len() != ROOT_KEY_DIGITS {
            return Err(RootKeyError::WrongLength { got: digits.len() });
        }
        let mut bytes = [0u8; ROOT_KEY_LEN];
        for (i, pair) in digits.chunks(2).enumerate() {
            bytes[i] = (pair[0] << 4) | pair[1];
        }
        let key = RootKey(bytes);
        if key.checksum_ok() {
            return Ok(key);
        }
        Err(match locate_typo(&key) {
            Some(group) => RootKeyError::ChecksumAt { group },
            None => RootKeyError::Checksum,
        })
    }
}

/// Finds the one group where changing a single digit makes the check value
/// match. Returns `None` if no group or more than one group qualifies.
fn locate_typo(key: &RootKey) -> Option<usize> {
    let mut found: Option<usize> = None;
    for digit in 0..ROOT_KEY_DIGITS {
        let group = digit / 4 + 1;
        if found == Some(group) {
            continue;
        }
        let byte = digit / 2;
        let high = digit % 2 == 0;
        for v in 0u8..16 {
            let mut candidate = RootKey(key.0);
            let b = &mut candidate.0[byte];
            let current = if high { *b >> 4 } else { *b & 0x0f };
            if v == current {
                continue;
            }
            *b = if high {
                (*b & 0x0f) | (v << 4)
            } else {
                (*b & 0xf0) | v
            };
            if candidate.checksum_ok() {
                match found {
                    None => found = Some(group),
                    Some(g) if g != group => return None,
                    Some(_) => {}
                }
                break;
            }
        }
    }
    found
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RootKey {
        let mut e = [0u8; 30];
        for (i, b) in e.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        RootKey::from_entropy(e)
    }

    #[test]
    fn text_round_trip_tolerates_separators_and_case() {
        let k = key();
        let text = k.to_text();
        assert_eq!(text.len(), 79);
        assert_eq!(text.split(' ').count(), 16);
        assert_eq!(RootKey::parse_text(&text).unwrap(), k);
        let dashed = text.replace(' ', "-").to_uppercase();
        assert_eq!(RootKey::parse_text(&dashed).unwrap(), k);
        let compact: String = text.chars().filter(|c| *c != ' ').collect();
        assert_eq!(RootKey::parse_text(&compact).unwrap(), k);
        assert_eq!(RootKey::parse_text(&k.to_lines()).unwrap(), k);
    }

    #[test]
    fn precise_errors() {
        let k = key();
        let text = k.to_text().to_string();
        assert_eq!(
            RootKey::parse_text(&text[..text.len() - 1]),
            Err(RootKeyError::WrongLength { got: 63 })
        );
        let mut bad = text.clone();
        bad.replace_range(25..26, "x"); // group 6 (digits 20..24 are "aaaa " at 25..29)
        assert_eq!(
            RootKey::parse_text(&bad),
            Err(RootKeyError::NotHex {
                group: 6,
                found: 'x'
            })
        );
    }

    #[test]
    fn single_digit_typo_is_located_in_most_groups() {
        let k = key();
        let text = k.to_text().to_string();
        let mut located = 0;
        let mut total = 0;
        for pos in 0..79 {
            let c = text.as_bytes()[pos] as char;
            if c == ' ' {
                continue;
            }
            let replacement = if c == '0' { '1' } else { '0' };
            let mut typo = text.clone();
            typo.replace_range(pos..pos + 1, &replacement.to_string());
            total += 1;
            match RootKey::parse_text(&typo) {
                Ok(_) => panic!("a typo must never be accepted (16-bit check)"),
                Err(RootKeyError::ChecksumAt { group }) => {
                    assert_eq!(group, pos / 5 + 1, "wrong group for typo at {pos}");
                    located += 1;
                }
                Err(RootKeyError::Checksum) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        // A 16-bit check over ~900 single-digit candidates leaves a small
        // chance of an ambiguous answer; most typos must be located.
        assert!(located * 10 >= total * 9, "{located}/{total}");
    }

    #[test]
    fn from_bytes_checks_the_check_value() {
        let k = key();
        assert!(RootKey::from_bytes(*k.expose()).is_ok());
        let mut b = *k.expose();
        b[31] ^= 1;
        assert_eq!(RootKey::from_bytes(b), Err(RootKeyError::Checksum));
        assert_eq!(format!("{k:?}"), "RootKey([redacted])");
    }
}
