//! X25519 static keys as the protocol uses them: chatd's key (pinned by
//! clients), device keys, the vault fleet's tunnel key (pinned by clients)
//! and the link keys between chatd and vault replicas.

use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::Error;

/// An X25519 public key. Its text form is 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn from_slice(b: &[u8]) -> Result<Self, Error> {
        let arr: [u8; 32] = b.try_into().map_err(|_| Error::InvalidField {
            field: "public_key",
            reason: "must be 32 bytes",
        })?;
        Ok(PublicKey(arr))
    }

    pub fn from_hex(s: &str) -> Result<Self, Error> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| Error::InvalidField {
            field: "public_key",
            reason: "must be 64 hex digits",
        })?;
        Ok(PublicKey(out))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short form for people to compare out of band: the first 16 bytes of
    /// SHA-256("E2EBK key fingerprint v1" || key), as 8 groups of 4 hex
    /// digits.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"E2EBK key fingerprint v1");
        h.update(self.0);
        let digest = h.finalize();
        let hexed = hex::encode(&digest[..16]);
        hexed
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// An X25519 private key. Zeroized on drop, printed as `[redacted]`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StaticSecret([u8; 32]);

impl StaticSecret {
    /// Builds a key from 32 uniformly random bytes (the caller owns the
    /// randomness; this crate does no IO).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        StaticSecret(bytes)
    }

    pub fn from_slice(b: &[u8]) -> Result<Self, Error> {
        let arr: [u8; 32] = b.try_into().map_err(|_| Error::InvalidField {
            field: "private_key",
            reason: "must be 32 bytes",
        })?;
        Ok(StaticSecret(arr))
    }

    /// Parses 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(s: &str) -> Result<Self, Error> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| Error::InvalidField {
            field: "private_key",
            reason: "must be 64 hex digits",
        })?;
        Ok(StaticSecret(out))
    }

    /// The hex text form, for writing a key file with owner-only permissions.
    pub fn to_hex(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(hex::encode(self.0))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(curve25519_dalek::MontgomeryPoint::mul_base_clamped(self.0).to_bytes())
    }

    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The raw bytes, for sealing under an HSM key. Handle with care.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for StaticSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticSecret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_matches_snow() {
        let secret = StaticSecret::from_bytes([7u8; 32]);
        // snow computes public keys through its own resolver; both must agree.
        let params: snow::params::NoiseParams =
            "Noise_NK_25519_ChaChaPoly_BLAKE2s".parse().unwrap();
        let mut init = snow::Builder::new(params.clone())
            .remote_public_key(&secret.public_key().0)
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut resp = snow::Builder::new(params)
            .local_private_key(secret.expose())
            .unwrap()
            .build_responder()
            .unwrap();
        let mut m = [0u8; 256];
        let mut p = [0u8; 256];
        let n = init.write_message(b"", &mut m).unwrap();
        resp.read_message(&m[..n], &mut p).unwrap();
    }

    #[test]
    fn hex_round_trip_and_debug_redacts() {
        let secret = StaticSecret::from_bytes([9u8; 32]);
        let again = StaticSecret::from_hex(&secret.to_hex()).unwrap();
        assert_eq!(again.public_key(), secret.public_key());
        assert_eq!(format!("{secret:?}"), "StaticSecret([redacted])");
        let pk = secret.public_key();
        assert_eq!(PublicKey::from_hex(&pk.to_hex()).unwrap(), pk);
        assert!(PublicKey::from_hex("zz").is_err());
        assert_eq!(pk.fingerprint().len(), 39);
    }
}
