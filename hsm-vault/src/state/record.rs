//! One account's record: its plaintext form ([`RecordBody`]), and the sealed
//! form the state machine stores ([`StoredRecord`]).
//!
//! ```text
//! body (plaintext, only ever inside the vault process, zeroized on drop)
//!   format u8 = 2
//!   state  u8   0 deleted | 1 registered | 2 locked
//!   registered: attempts_used u32 || registration_nonce [32]
//!               || registered_at_unix_secs u64 || kind u8
//!               || opaque_record [192] || wrapped_key [61]
//!     kind:     0 unknown | 1 create | 2 replace | 3 change_password
//!   locked:     locked_at_unix_secs u64
//! format 1 body (written before the escrow epoch, SPEC 8.7; still read)
//!   the same without registered_at_unix_secs and kind, which read as 0
//!   and unknown; the next write of the record is format 2
//! stored (what the store and the replicated log hold)
//!   format u8 = 1 || version u64 || sealed body
//!   sealed body = HSM AES-256-GCM, aad = "E2EBK record v1" || lp(account) || version
//! ```
//!
//! The associated data binds the account and the version: a sealed body
//! copied to another account, or to another version slot, fails to unseal.
//! Versions only grow (a deleted account keeps its row as `deleted`), so an
//! old sealed body can never be valid again at the current version.
//!
//! `registered_at_unix_secs` and `kind` say when (the vault's clock) and
//! how a registration was made; a login's count and reset carry them over.
//! Nothing new is secret: the escrow epoch `Status` shows is derived from
//! the nonce at answer time and never stored.

use protocol_spec::frame::Reader;
use protocol_spec::ids::AccountId;
use protocol_spec::keywrap::{WrappedKey, WRAPPED_KEY_LEN};
use protocol_spec::messages::vault::{Escrow, EscrowEpoch, RegistrationMode};
use protocol_spec::opaque::{sizes, REGISTRATION_NONCE_LEN};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::entropy::Entropy;
use crate::seal::{draw_iv, Sealer};
use crate::Error;

/// What every body is written as.
const BODY_FORMAT: u8 = 2;
/// Bodies written before the registration's time and kind were kept.
const BODY_FORMAT_V1: u8 = 1;
const STORED_FORMAT: u8 = 1;

/// Registration nonce: selects the per-registration OPRF key (SPEC 7.4).
pub type RegistrationNonce = [u8; REGISTRATION_NONCE_LEN];

/// A live registration.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct Registration {
    /// Login starts since the last success (or since registering).
    pub attempts_used: u32,
    pub registration_nonce: RegistrationNonce,
    /// The vault's clock when the registration committed; 0 if unknown
    /// (read from a format 1 body).
    pub registered_at_unix_secs: u64,
    /// The mode it was registered with; `None` if unknown (format 1).
    #[zeroize(skip)]
    pub kind: Option<RegistrationMode>,
    /// The serialized OPAQUE `ServerRegistration` (the password file).
    pub opaque_record: Vec<u8>,
    /// `wrapped_K` as uploaded.
    pub wrapped_key: [u8; WRAPPED_KEY_LEN],
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Registration(attempts_used={}, registered_at={}, kind={}, [redacted])",
            self.attempts_used,
            self.registered_at_unix_secs,
            self.kind.map_or("unknown", RegistrationMode::label)
        )
    }
}

impl Registration {
    pub fn wrapped_key(&self) -> Result<WrappedKey, Error> {
        WrappedKey::from_slice(&self.wrapped_key).map_err(|_| Error::Corrupt("wrapped key"))
    }

    /// What `Status` and `Registered` say about this registration (SPEC
    /// 8.7): its epoch, derived from the nonce (which never leaves the
    /// vault), when and how it was made.
    pub fn escrow(&self) -> Escrow {
        Escrow {
            epoch: EscrowEpoch::of_registration(&self.registration_nonce),
            registered_at_unix_secs: self.registered_at_unix_secs,
            kind: self.kind,
        }
    }
}

/// The byte a registration's kind is stored as.
fn kind_byte(kind: Option<RegistrationMode>) -> u8 {
    match kind {
        None => 0,
        Some(RegistrationMode::Create) => 1,
        Some(RegistrationMode::Replace) => 2,
        Some(RegistrationMode::ChangePassword) => 3,
    }
}

fn kind_from_byte(b: u8) -> Result<Option<RegistrationMode>, Error> {
    Ok(match b {
        0 => None,
        1 => Some(RegistrationMode::Create),
        2 => Some(RegistrationMode::Replace),
        3 => Some(RegistrationMode::ChangePassword),
        _ => return Err(Error::Corrupt("unknown registration kind")),
    })
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
            2 + 4 + REGISTRATION_NONCE_LEN + 8 + 1 + sizes::REGISTRATION_UPLOAD + WRAPPED_KEY_LEN,
        ));
        out.push(BODY_FORMAT);
        match self {
            RecordBody::Deleted => out.push(0),
            RecordBody::Registered(r) => {
                out.push(1);
                out.extend_from_slice(&r.attempts_used.to_be_bytes());
                out.extend_from_slice(&r.registration_nonce);
                out.extend_from_slice(&r.registered_at_unix_secs.to_be_bytes());
                out.push(kind_byte(r.kind));
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

    /// Reads a body of either format (format 1 as the layout above says).
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let corrupt = |_| Error::Corrupt("record body");
        let format = r.u8().map_err(corrupt)?;
        if format != BODY_FORMAT && format != BODY_FORMAT_V1 {
            return Err(Error::Corrupt("unknown record body format"));
        }
        let body = match r.u8().map_err(corrupt)? {
            0 => RecordBody::Deleted,
            1 => {
                let attempts_used = r.u32().map_err(corrupt)?;
                let registration_nonce = r.array().map_err(corrupt)?;
                let (registered_at_unix_secs, kind) = if format == BODY_FORMAT_V1 {
                    (0, None)
                } else {
                    (
                        u64::from_be_bytes(r.array().map_err(corrupt)?),
                        kind_from_byte(r.u8().map_err(corrupt)?)?,
                    )
                };
                let opaque_record = r
                    .take(sizes::REGISTRATION_UPLOAD)
                    .map_err(corrupt)?
                    .to_vec();
                let wrapped_key = r.array().map_err(corrupt)?;
                RecordBody::Registered(Registration {
                    attempts_used,
                    registration_nonce,
                    registered_at_unix_secs,
                    kind,
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
            registered_at_unix_secs: 1_796_133_780,
            kind: Some(RegistrationMode::Replace),
            opaque_record: vec![5; sizes::REGISTRATION_UPLOAD],
            wrapped_key: wrapped,
        })
    }

    /// [`reg`] as a format 1 body, laid out by hand from the layout in
    /// the module docs.
    fn reg_format_1() -> Vec<u8> {
        let mut b = vec![1, 1, 0, 0, 0, 3];
        b.extend_from_slice(&[9; 32]);
        b.extend_from_slice(&[5; sizes::REGISTRATION_UPLOAD]);
        b.push(1);
        b.extend_from_slice(&[7; WRAPPED_KEY_LEN - 1]);
        b
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
        assert!(RecordBody::decode(&[3, 0]).is_err());
        assert!(RecordBody::decode(&[0, 0]).is_err());
        assert!(RecordBody::decode(&[2, 9]).is_err());
        assert!(RecordBody::decode(&[1, 9]).is_err());
        // Every kind byte but the four defined is refused.
        let mut enc = reg().encode().to_vec();
        assert_eq!(enc[0], 2, "new writes are format 2");
        let kind_at = 2 + 4 + 32 + 8;
        assert_eq!(enc[kind_at], 2, "replace");
        for (byte, kind) in [
            (0, None),
            (1, Some(RegistrationMode::Create)),
            (3, Some(RegistrationMode::ChangePassword)),
        ] {
            enc[kind_at] = byte;
            let RecordBody::Registered(r) = RecordBody::decode(&enc).unwrap() else {
                panic!("registered")
            };
            assert_eq!(r.kind, kind);
        }
        enc[kind_at] = 4;
        assert!(RecordBody::decode(&enc).is_err());
    }

    #[test]
    fn format_1_bodies_still_decode_as_unknown_time_and_kind_and_are_rewritten_as_format_2() {
        let old = reg_format_1();
        let RecordBody::Registered(r) = RecordBody::decode(&old).unwrap() else {
            panic!("registered")
        };
        assert_eq!((r.registered_at_unix_secs, r.kind), (0, None));
        assert_eq!(r.attempts_used, 3);
        assert_eq!(r.registration_nonce, [9; 32]);
        let RecordBody::Registered(expected) = reg() else {
            unreachable!()
        };
        assert_eq!(r.opaque_record, expected.opaque_record);
        assert_eq!(r.wrapped_key, expected.wrapped_key);
        // Its next write is format 2, with the unknowns kept as unknown.
        let rewritten = RecordBody::Registered(r).encode();
        assert_eq!(rewritten[0], 2);
        assert_eq!(rewritten.len(), old.len() + 9);
        assert_eq!(
            RecordBody::decode(&rewritten).unwrap(),
            RecordBody::decode(&old).unwrap()
        );
        // Format 1 deleted and locked bodies read as before.
        assert_eq!(RecordBody::decode(&[1, 0]).unwrap(), RecordBody::Deleted);
        assert_eq!(
            RecordBody::decode(&[1, 2, 0, 0, 0, 0, 0, 0, 0, 42]).unwrap(),
            RecordBody::Locked {
                locked_at_unix_secs: 42
            }
        );
        // A format 1 body is not read as format 2, nor the other way.
        let mut as_v2 = old.clone();
        as_v2[0] = 2;
        assert!(RecordBody::decode(&as_v2).is_err());
        let mut as_v1 = reg().encode().to_vec();
        as_v1[0] = 1;
        assert!(RecordBody::decode(&as_v1).is_err());
    }

    #[test]
    fn the_escrow_shows_an_epoch_of_the_nonce_never_the_nonce() {
        let RecordBody::Registered(r) = reg() else {
            unreachable!()
        };
        let e = r.escrow();
        assert_eq!(e.epoch, EscrowEpoch::of_registration(&[9; 32]));
        assert_ne!(&e.epoch.as_bytes()[..], &r.registration_nonce[..16]);
        assert_eq!(e.registered_at_unix_secs, 1_796_133_780);
        assert_eq!(e.kind, Some(RegistrationMode::Replace));
        let shown = format!("{r:?}");
        assert!(shown.contains("kind=replace"), "{shown}");
        assert!(!shown.contains("9, 9"), "{shown}");
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
