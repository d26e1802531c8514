//! The key ceremony's files, carried between replicas by operators:
//! [`ImportRequest`] (the new token's public import key and its
//! fingerprint) and [`WrappedMasterKey`], their text form and a strict
//! parser that refuses anything `to_text` would not have written.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::Error;

const REQUEST_HEADER: &str = "E2EBK-KEY-IMPORT-REQUEST v1";
const WRAPPED_HEADER: &str = "E2EBK-WRAPPED-MASTER-KEY v1";
/// Ceremony files are a few lines; anything bigger is not one.
const MAX_TEXT_LEN: usize = 16 * 1024;
/// The import key we make is 3072 bits; accept up to 8192 so a future
/// version may grow it, never less than 3072.
const MIN_MODULUS_LEN: usize = 384;
const MAX_MODULUS_LEN: usize = 1024;
const MAX_EXPONENT_LEN: usize = 8;
/// PKCS#11 token labels are 32 bytes.
const MAX_TOKEN_LABEL_LEN: usize = 32;

/// The public half of a new replica's import key, carried to the existing
/// replica. Public data; its fingerprint is what operators compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRequest {
    /// Label of the requesting token (informational: replicas' tokens may
    /// share a label).
    pub token_label: String,
    /// RSA modulus, big-endian, no leading zeros.
    pub modulus: Vec<u8>,
    /// RSA public exponent, big-endian, no leading zeros.
    pub exponent: Vec<u8>,
}

impl ImportRequest {
    /// First 16 bytes of SHA-256(modulus || exponent) as eight groups of
    /// four hex digits, e.g. `1a2b:3c4d:…`.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::new()
            .chain_update(&self.modulus)
            .chain_update(&self.exponent)
            .finalize();
        let hex = hex::encode(&digest[..16]);
        hex.as_bytes()
            .chunks(4)
            .map(|group| String::from_utf8_lossy(group).into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }

    pub fn to_text(&self) -> String {
        format!(
            "{REQUEST_HEADER}\ntoken-label: {}\nfingerprint: {}\nmodulus: {}\nexponent: {}\n",
            self.token_label,
            self.fingerprint(),
            hex::encode(&self.modulus),
            hex::encode(&self.exponent),
        )
    }

    /// Parses [`ImportRequest::to_text`]'s output, refusing anything else,
    /// including a fingerprint line that does not match the key (a damaged
    /// copy).
    pub fn from_text(text: &str) -> Result<Self, Error> {
        let [label, fingerprint, modulus, exponent] = parse_fields(
            text,
            REQUEST_HEADER,
            "key import request",
            ["token-label", "fingerprint", "modulus", "exponent"],
        )?;
        if label.is_empty()
            || label.len() > MAX_TOKEN_LABEL_LEN
            || label.chars().any(char::is_control)
        {
            return Err(Error::Ceremony(format!(
                "key import request: token-label must be 1 to {MAX_TOKEN_LABEL_LEN} printable bytes"
            )));
        }
        let request = ImportRequest {
            token_label: label.to_owned(),
            modulus: parse_hex("key import request", "modulus", modulus)?,
            exponent: parse_hex("key import request", "exponent", exponent)?,
        };
        request.check_key()?;
        if request.fingerprint() != fingerprint {
            return Err(Error::Ceremony(
                "key import request: the fingerprint line does not match the key (damaged copy?)"
                    .into(),
            ));
        }
        Ok(request)
    }

    pub(super) fn check_key(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::Ceremony(format!("key import request: {m}")));
        let (m, e) = (&self.modulus, &self.exponent);
        if m.first() == Some(&0) || e.first() == Some(&0) {
            return bad("modulus and exponent must not have leading zero bytes");
        }
        if !(MIN_MODULUS_LEN..=MAX_MODULUS_LEN).contains(&m.len()) {
            return bad("the RSA modulus must be 3072 to 8192 bits");
        }
        if m.last().is_some_and(|b| b & 1 == 0) {
            return bad("the RSA modulus is even");
        }
        let exponent_ok = !e.is_empty()
            && e.len() <= MAX_EXPONENT_LEN
            && e.last().is_some_and(|b| b & 1 == 1)
            && e.as_slice() != [1];
        if !exponent_ok {
            return bad("the RSA public exponent must be odd, at least 3 and at most 64 bits");
        }
        Ok(())
    }
}

/// The master key wrapped (RSA-OAEP) for one approved import key.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedMasterKey {
    /// [`ImportRequest::fingerprint`] of the key it is wrapped for.
    pub fingerprint: String,
    pub wrapped: Vec<u8>,
}

impl fmt::Debug for WrappedMasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedMasterKey")
            .field("fingerprint", &self.fingerprint)
            .field("wrapped_len", &self.wrapped.len())
            .finish()
    }
}

impl WrappedMasterKey {
    pub fn to_text(&self) -> String {
        format!(
            "{WRAPPED_HEADER}\nfingerprint: {}\nwrapped: {}\n",
            self.fingerprint,
            hex::encode(&self.wrapped)
        )
    }

    pub fn from_text(text: &str) -> Result<Self, Error> {
        let [fingerprint, wrapped] = parse_fields(
            text,
            WRAPPED_HEADER,
            "wrapped master key",
            ["fingerprint", "wrapped"],
        )?;
        let well_formed = fingerprint.len() == 39
            && fingerprint.split(':').count() == 8
            && fingerprint
                .split(':')
                .all(|g| g.len() == 4 && g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        if !well_formed {
            return Err(Error::Ceremony(
                "wrapped master key: the fingerprint must be eight groups of four lowercase hex \
                 digits joined by ':'"
                    .into(),
            ));
        }
        let wrapped = parse_hex("wrapped master key", "wrapped", wrapped)?;
        if !(MIN_MODULUS_LEN..=MAX_MODULUS_LEN).contains(&wrapped.len()) {
            return Err(Error::Ceremony(
                "wrapped master key: the wrapped key has an impossible length".into(),
            ));
        }
        Ok(WrappedMasterKey {
            fingerprint: fingerprint.to_owned(),
            wrapped,
        })
    }
}

/// Splits a ceremony file into the values of exactly `keys`, in order.
fn parse_fields<'t, const N: usize>(
    text: &'t str,
    header: &str,
    what: &str,
    keys: [&str; N],
) -> Result<[&'t str; N], Error> {
    let bad = |m: String| Error::Ceremony(format!("{what}: {m}"));
    if text.len() > MAX_TEXT_LEN {
        return Err(bad("file too large".into()));
    }
    let mut lines = text.lines();
    if lines.next() != Some(header) {
        return Err(bad(format!("the first line must be `{header}`")));
    }
    let mut values = [""; N];
    for (value, key) in values.iter_mut().zip(keys) {
        let line = lines
            .next()
            .ok_or_else(|| bad(format!("missing `{key}:` line")))?;
        *value = line
            .strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(": "))
            .ok_or_else(|| bad(format!("expected a `{key}: …` line")))?;
    }
    if lines.any(|line| !line.is_empty()) {
        return Err(bad("unexpected lines after the last field".into()));
    }
    Ok(values)
}

fn parse_hex(what: &str, key: &str, value: &str) -> Result<Vec<u8>, Error> {
    hex::decode(value).map_err(|_| Error::Ceremony(format!("{what}: `{key}` is not hex")))
}
