//! The escrow epoch (SPEC.md 8.7): which registration of an account's
//! escrow the vault holds, with when and how it was made, as `Status` and
//! `Registered` carry it.

use std::fmt;

use sha2::{Digest, Sha256};

use super::RegistrationMode;
use crate::opaque::REGISTRATION_NONCE_LEN;
use crate::pb;
use crate::Error;

/// Length of an [`EscrowEpoch`].
pub const ESCROW_EPOCH_LEN: usize = 16;

/// Names one registration of an account's escrow (SPEC.md 8.7): every
/// registration (create, replace, password change) has a new one. Derived
/// one way from the registration nonce the vault drew, which it never
/// reveals: `SHA-256("E2EBK escrow epoch v1" || nonce)[0..16]`. Not a
/// secret; printed as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EscrowEpoch([u8; ESCROW_EPOCH_LEN]);

impl EscrowEpoch {
    /// The epoch of the registration whose nonce is `nonce`.
    pub fn of_registration(nonce: &[u8; REGISTRATION_NONCE_LEN]) -> Self {
        let mut h = Sha256::new();
        h.update(b"E2EBK escrow epoch v1");
        h.update(nonce);
        let digest = h.finalize();
        let mut out = [0u8; ESCROW_EPOCH_LEN];
        out.copy_from_slice(&digest[..ESCROW_EPOCH_LEN]);
        EscrowEpoch(out)
    }

    pub fn from_bytes(bytes: [u8; ESCROW_EPOCH_LEN]) -> Self {
        EscrowEpoch(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; ESCROW_EPOCH_LEN] {
        &self.0
    }

    /// 32 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses [`EscrowEpoch::to_hex`]'s form (either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut out = [0u8; ESCROW_EPOCH_LEN];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(EscrowEpoch(out))
    }

    fn from_wire(bytes: &[u8]) -> Result<Self, Error> {
        bytes
            .try_into()
            .map(EscrowEpoch)
            .map_err(|_| Error::InvalidField {
                field: "escrow_epoch",
                reason: "must be 16 bytes",
            })
    }
}

impl fmt::Debug for EscrowEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EscrowEpoch({})", self.to_hex())
    }
}

impl fmt::Display for EscrowEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The live registration of an account, as `Status` and `Registered`
/// describe it (SPEC.md 8.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escrow {
    pub epoch: EscrowEpoch,
    /// The vault's clock when the registration committed; 0 if unknown (a
    /// record registered before the vault kept it).
    pub registered_at_unix_secs: u64,
    /// How it was made; `None` if unknown (as above).
    pub kind: Option<RegistrationMode>,
}

impl Escrow {
    /// Splits into the three wire fields (all default when `None`).
    pub(super) fn to_pb(escrow: Option<&Escrow>) -> (Vec<u8>, u64, i32) {
        match escrow {
            None => (Vec::new(), 0, pb::RegistrationMode::Unspecified as i32),
            Some(e) => (
                e.epoch.as_bytes().to_vec(),
                e.registered_at_unix_secs,
                e.kind
                    .map_or(pb::RegistrationMode::Unspecified, RegistrationMode::to_pb)
                    as i32,
            ),
        }
    }

    /// Reads the three wire fields. An empty epoch means no escrow was
    /// described (a vault built before SPEC.md 8.7), and then the other two
    /// must be absent too.
    pub(super) fn from_pb(
        epoch: &[u8],
        registered_at: u64,
        kind: i32,
    ) -> Result<Option<Escrow>, Error> {
        if epoch.is_empty() {
            if registered_at != 0 || kind != pb::RegistrationMode::Unspecified as i32 {
                return Err(Error::InvalidField {
                    field: "escrow_epoch",
                    reason: "registration time or kind without an epoch",
                });
            }
            return Ok(None);
        }
        let kind = match kind {
            k if k == pb::RegistrationMode::Unspecified as i32 => None,
            k => Some(
                RegistrationMode::from_pb(k).map_err(|_| Error::InvalidField {
                    field: "registration_kind",
                    reason: "unknown registration mode",
                })?,
            ),
        };
        Ok(Some(Escrow {
            epoch: EscrowEpoch::from_wire(epoch)?,
            registered_at_unix_secs: registered_at,
            kind,
        }))
    }
}
