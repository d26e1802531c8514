//! postcard, strictly: the encoding of everything the replicas store for
//! Raft (log entries, vote, membership, snapshots) and send each other
//! (RPCs, handshake payloads). One value per input, nothing after it, so a
//! type mix-up or a smuggled suffix fails loudly instead of decoding
//! garbage, on the network exactly as on disk.

use serde::{Deserialize, Serialize};

/// A value that could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode {what}: {reason}")]
    Encode { what: &'static str, reason: String },
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("{what} has {extra} trailing bytes")]
    Trailing { what: &'static str, extra: usize },
}

pub fn encode<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_allocvec(v).map_err(|e| CodecError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// Decodes exactly one `T` from the whole of `bytes`.
pub fn decode<T: for<'a> Deserialize<'a>>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, CodecError> {
    match postcard::take_from_bytes(bytes) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(CodecError::Trailing {
            what,
            extra: rest.len(),
        }),
        Err(e) => Err(CodecError::Malformed {
            what,
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_bytes_are_refused() {
        let mut b = encode("pair", &(7u64, 9u8)).unwrap();
        assert_eq!(decode::<(u64, u8)>("pair", &b), Ok((7, 9)));
        b.push(0);
        assert_eq!(
            decode::<(u64, u8)>("pair", &b),
            Err(CodecError::Trailing {
                what: "pair",
                extra: 1
            })
        );
        assert!(decode::<(u64, u8)>("pair", &b[..1]).is_err());
    }
}
