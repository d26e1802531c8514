//! The frame codec (SPEC.md section 4.2).
//!
//! Every handshake payload and every transport frame on every channel has
//! the same layout:
//!
//! ```text
//! +---------+---------------+---------------------------+
//! | version | body length   | body: protobuf message    |
//! | 1 byte  | u16 big-endian| exactly `body length` B   |
//! +---------+---------------+---------------------------+
//! ```
//!
//! Decoding is strict: the whole input must be exactly one frame (no
//! trailing bytes), no larger than the message's limit, of a known version,
//! and the body must be the canonical protobuf encoding of what it holds (so
//! unknown fields, duplicated or reordered fields, explicit defaults and
//! non-minimal varints are refused: versions, not unknown fields, carry
//! extensions).

use crate::{Error, PROTOCOL_VERSION};

/// Bytes before the protobuf body.
pub const FRAME_HEADER_LEN: usize = 3;

/// A message with a wire form. Implemented by every domain message type.
pub trait WireMessage: Sized {
    /// Name used in error messages.
    const NAME: &'static str;
    /// Largest encoded length (header included) a receiver accepts.
    const MAX_LEN: usize;

    /// The frame bytes: version, body length, protobuf body.
    fn encode(&self) -> Vec<u8>;

    /// Parses exactly one frame from `bytes`.
    fn decode(bytes: &[u8]) -> Result<Self, Error>;
}

/// A bounded reader over one input: every read is checked against what is
/// left, and [`Reader::finish`] refuses leftovers.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.buf.len() < n {
            return Err(Error::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let b = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// Ends the read: anything left over is an error.
    pub fn finish(self) -> Result<(), Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes)
        }
    }
}

/// Encodes a protobuf body behind the frame header.
pub(crate) fn encode_frame<P: prost::Message>(body: &P) -> Vec<u8> {
    let len = body.encoded_len();
    // Limits keep every valid message far below u16::MAX; a larger body is a
    // bug in this crate, caught by the limits tests.
    debug_assert!(len <= u16::MAX as usize);
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + len);
    out.push(PROTOCOL_VERSION);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    body.encode(&mut out)
        .unwrap_or_else(|_| unreachable!("Vec<u8> grows as needed"));
    out
}

/// Decodes the frame header and protobuf body, strictly.
pub(crate) fn decode_frame<P: prost::Message + Default>(
    bytes: &[u8],
    max_len: usize,
    name: &'static str,
) -> Result<P, Error> {
    if bytes.len() > max_len {
        return Err(Error::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    let mut r = Reader::new(bytes);
    let version = r.u8()?;
    if version != PROTOCOL_VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    let len = r.u16()? as usize;
    let body = r.take(len)?;
    r.finish()?;
    let msg = P::decode(body).map_err(|_| Error::Malformed(name))?;
    // Canonical form only: what we parsed must re-encode to the very same
    // bytes. This refuses unknown or repeated fields, explicit defaults,
    // out-of-order fields and non-minimal varints, so one message has one
    // encoding and nothing can be smuggled past the parser.
    if msg.encoded_len() != body.len() {
        return Err(Error::TrailingBytes);
    }
    if msg.encode_to_vec() != body {
        return Err(Error::NonCanonical);
    }
    Ok(msg)
}

/// Reads the version byte that precedes every Noise handshake message and
/// returns the Noise message after it.
pub fn split_handshake_version(msg: &[u8]) -> Result<&[u8], Error> {
    if msg.len() > crate::limits::MAX_HANDSHAKE_MESSAGE {
        return Err(Error::TooLarge {
            len: msg.len(),
            max: crate::limits::MAX_HANDSHAKE_MESSAGE,
        });
    }
    let (&version, rest) = msg.split_first().ok_or(Error::Truncated)?;
    if version != PROTOCOL_VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    Ok(rest)
}

/// Checks a bytes field: non-empty (unless `allow_empty`) and within `max`.
pub(crate) fn check_bytes(
    field: &'static str,
    b: &[u8],
    max: usize,
    allow_empty: bool,
) -> Result<(), Error> {
    if b.is_empty() && !allow_empty {
        return Err(Error::InvalidField {
            field,
            reason: "empty",
        });
    }
    if b.len() > max {
        return Err(Error::InvalidField {
            field,
            reason: "too long",
        });
    }
    Ok(())
}

/// Checks a field that has one exact length in this cipher suite.
pub(crate) fn check_exact(field: &'static str, b: &[u8], len: usize) -> Result<(), Error> {
    if b.len() != len {
        return Err(Error::InvalidField {
            field,
            reason: "wrong length for this cipher suite",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_bounds() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16().unwrap(), 0x0102);
        assert_eq!(r.u16(), Err(Error::Truncated));
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.finish(), Err(Error::TrailingBytes));
        let mut r = Reader::new(&[9]);
        assert_eq!(r.u8().unwrap(), 9);
        r.finish().unwrap();
    }

    #[test]
    fn handshake_version_byte() {
        assert_eq!(split_handshake_version(&[1, 5, 6]).unwrap(), &[5, 6]);
        assert_eq!(
            split_handshake_version(&[2, 5]),
            Err(Error::UnsupportedVersion(2))
        );
        assert_eq!(split_handshake_version(&[]), Err(Error::Truncated));
        assert!(matches!(
            split_handshake_version(&vec![1; 5000]),
            Err(Error::TooLarge { .. })
        ));
    }
}
