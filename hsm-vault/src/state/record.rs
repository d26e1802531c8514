//! One account's record: its plaintext form ([`RecordBody`]), and the sealed
//! form the state machine stores ([`StoredRecord`]).
//!
//! ```text
//! body (plaintext, only ever inside the vault process, zeroized on drop)
//!   format u8 = 1
//!   state  u8   0 deleted | 1 registered | 2 locked
//!   registered: attempts_used u32 || registration_nonce [32] || opaque_record [192] || wrapped_key [61]
//!   locked:     locked_at_unix_secs u64
//! stored (what the store and the replicated log hold)
//!   format u8 = 1 || version u64 || sealed body
//!   sealed body = HSM AES-256-GCM, aad = "E2EBK record v1" || lp(account) || version
//! ```
//!
//! The associated data binds the account and the version: a sealed body
//! copied to another account, or to another version slot, fails to unseal.
//! Versions only grow (a deleted account keeps its row as `deleted`), so an
//! old sealed body can never be valid again at the current version.

use protocol_spec::frame::Reader;
use protocol_spec::ids::AccountId;
use protocol_spec::keywrap::{WrappedKey, WRAPPED_KEY_LEN};
use protocol_spec::opaque::{sizes, REGISTRATION_NONCE_LEN};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::entropy::Entropy;
use crate::seal::{draw_iv, Sealer};
use crate::Error;

const BODY_FORMAT: u8 = 1;
const STORED_FORMAT: u8 = 1;

/// Registration nonce: selects the per-registration OPRF key (SPEC 7.4).
pub type RegistrationNonce = [u8; REGISTRATION_NONCE_LEN];

/// A live registration.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Registration {
    /// Login starts since the last success (or since registering).
    pub attempts_used: u32,
    pub registration_nonce: RegistrationNonce,
    /// The serialized OPAQUE `ServerRegistration` (the password file).
    pub opaque_record: Vec<u8>,
    /// `wrapped_K` as uploaded.
    pub wrapped_key: [u8; WRAPPED_KEY_LEN],
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Registration(attempts_used={}, [redacted])",
            self.attempts_used
        )
    }
}

impl Registration {
    pub fn wrapped_key(&self) -> Result<WrappedKey, Error> {
        WrappedKey::from_slice(&self.wrapped_key).map_err(|_| Error::Corrupt("wrapped key"))
    }
}

/// What the vault knows about an account.
#[derive(Clone, PartialEq, Eq)]
pub enum RecordBody {
    /// Deleted by its owner; equivalent to never registered.
    Deleted,
    Registered(Registration),
    /// Attempts ran out: the registration was erased, only this remains.
    Locked {
        locked_at_unix_secs: u64,
    },
}

impl std::fmt::Debug for RecordBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordBody::Deleted => f.write_str("Deleted"),
            RecordBody::Registered(r) => write!(f, "{r:?}"),
            RecordBody::Locked {
                locked_at_unix_secs,
            } => write!(f, "Locked({locked_at_unix_secs})"),
        }
    }
}

impl RecordBody {
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            2 + 4 + REGISTRATION_NONCE_LEN + sizes::REGISTRATION_UPLOAD + WRAPPED_KEY_LEN,
        ));
        out.push(BODY_FORMAT);
        match self {
            RecordBody::Deleted => out.push(0),
            RecordBody::Registered(r) => {
                out.push(1);
                out.extend_from_slice(&r.attempts_used.to_be_bytes());
                out.extend_from_slice(&r.registration_nonce);
                out.extend_from_slice(&r.opaque_record);
                out.extend_from_slice(&r.wrapped_key);
            }
            RecordBody::Locked {
                locked_at_unix_secs,
            } => {
                out.push(2);
                out.extend_from_slice(&locked_at_unix_secs.to_be_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let corrupt = |_| Error::Corrupt("record body");
        if r.u8().map_err(corrupt)? != BODY_FORMAT {
            return Err(Error::Corrupt("unknown record body format"));
        }
        let body = match r.u8().map_err(corrupt)? {
            0 => RecordBody::Deleted,
            1 => {
                let attempts_used = r.u32().map_err(corrupt)?;
                let registration_nonce = r.array().map_err(corrupt)?;
                let opaque_record = r
                    .take(sizes::REGISTRATION_UPLOAD)
                    .map_err(corrupt)?
                    .to_vec();
                let wrapped_key = r.array().map_err(corrupt)?;
                RecordBody::Registered(Registration {
                    attempts_used,
                    registration_nonce,
                    opaque_record,
                    wrapped_key,
                })
            }
            2 => RecordBody::Locked {
                locked_at_unix_secs: u64::from_be_bytes(r.array().map_err(corrupt)?),
            },
            _ => return Err(Error::Corrupt("unknown record state")),
        };
        r.finish().map_err(corrupt)?;
        Ok(body)
    }
}

/// A sealed record at a version, as stored and replicated.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// 1 for the first write of an account, +1 for every later write.
    pub version: u64,
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for StoredRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoredRecord(v{}, {} sealed bytes)",
            self.version,
            self.sealed.len()
        )
    }
}

impl StoredRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.sealed.len());
        out.push(STORED_FORMAT);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.sealed);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let corrupt = |_| Error::Corrupt("stored record");
        if r.u8().map_err(corrupt)? != STORED_FORMAT {
            return Err(Error::Corrupt("unknown stored record format"));
        }
        let version = u64::from_be_bytes(r.array().map_err(corrupt)?);
        let sealed = r.take(r.remaining()).map_err(corrupt)?.to_vec();
        Ok(StoredRecord { version, sealed })
    }
}

/// Associated data that binds a sealed body to its account and version.
pub fn record_aad(account: &AccountId, version: u64) -> Vec<u8> {
    let mut aad = b"E2EBK record v1".to_vec();
    aad.extend_from_slice(&account.length_prefixed());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// Seals `body` for `account` at `version`, with an IV from `entropy`.
pub fn seal(
    sealer: &dyn Sealer,
    entropy: &dyn Entropy,
    account: &AccountId,
    version: u64,
    body: &RecordBody,
) -> Result<StoredRecord, Error> {
    let iv = draw_iv(entropy)?;
    let sealed = sealer.seal(&record_aad(account, version), iv, &body.encode())?;
    Ok(StoredRecord { version, sealed })
}

/// Unseals and parses a stored record of `account`.
pub fn unseal(
    sealer: &dyn Sealer,
    account: &AccountId,
    stored: &StoredRecord,
) -> Result<RecordBody, Error> {
    let plain = sealer.unseal(&record_aad(account, stored.version), &stored.sealed)?;
    RecordBody::decode(&plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::SoftSealer;

    fn reg() -> RecordBody {
        let mut wrapped = [7u8; WRAPPED_KEY_LEN];
        wrapped[0] = 1;
        RecordBody::Registered(Registration {
            attempts_used: 3,
            registration_nonce: [9; 32],
            opaque_record: vec![5; sizes::REGISTRATION_UPLOAD],
            wrapped_key: wrapped,
        })
    }

    #[test]
    fn bodies_round_trip_strictly() {
        for b in [
            reg(),
            RecordBody::Deleted,
            RecordBody::Locked {
                locked_at_unix_secs: 42,
            },
        ] {
            let enc = b.encode();
            assert_eq!(RecordBody::decode(&enc).unwrap(), b);
            let mut longer = enc.to_vec();
            longer.push(0);
            assert!(RecordBody::decode(&longer).is_err());
            assert!(RecordBody::decode(&enc[..enc.len() - 1]).is_err());
        }
        assert!(RecordBody::decode(&[2, 0]).is_err());
        assert!(RecordBody::decode(&[1, 9]).is_err());
    }

    #[test]
    fn sealed_records_are_bound_to_account_and_version() {
        let s = SoftSealer::new([3; 32]);
        let alice = AccountId::new("alice").unwrap();
        let bob = AccountId::new("bob").unwrap();
        let stored = seal(&s, &crate::entropy::OsEntropy, &alice, 4, &reg()).unwrap();
        assert_eq!(unseal(&s, &alice, &stored).unwrap(), reg());
        assert!(matches!(unseal(&s, &bob, &stored), Err(Error::Integrity)));
        let moved = StoredRecord {
            version: 5,
            sealed: stored.sealed.clone(),
        };
        assert!(matches!(unseal(&s, &alice, &moved), Err(Error::Integrity)));
        let enc = stored.encode();
        assert_eq!(StoredRecord::decode(&enc).unwrap(), stored);
        assert!(!format!("{:?}", reg()).contains("5, 5"));
    }
}
