//! State changes as commands: the only way the vault's durable state moves.
//!
//! Commands are deterministic to apply (no HSM, clock or randomness: the
//! leader seals before proposing), so the same byte sequence yields the same
//! state on every replica. The single-node log applies them directly; the
//! replicated log puts the same bytes through Raft.
//!
//! There is one command, a compare-and-set of one account's record. Every
//! operation (count an attempt, reset, register, erase, delete) is a
//! `PutRecord` whose `expected_version` is the version the leader read, so
//! two concurrent changes can never both apply: the second sees
//! [`ApplyOutcome::Conflict`] and re-reads.

use protocol_spec::frame::Reader;
use protocol_spec::ids::AccountId;

use super::record::StoredRecord;
use crate::Error;

/// The first byte of every encoded command; the second says which one (1:
/// `PutRecord`; the replicated log adds its own, see `raft::log_command`).
pub(crate) const COMMAND_FORMAT: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Writes `record` for `account` if its current version is
    /// `expected_version` (0: no record yet). `record.version` must be
    /// `expected_version + 1`.
    PutRecord {
        account: AccountId,
        expected_version: u64,
        record: StoredRecord,
    },
}

/// How the state machine applied a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ApplyOutcome {
    Applied,
    /// The record had moved on; nothing was written.
    Conflict {
        current_version: u64,
    },
}

impl Command {
    /// The account the command changes.
    pub fn account(&self) -> &AccountId {
        let Command::PutRecord { account, .. } = self;
        account
    }

    /// The compare-and-set rule, the same on every replica and in every
    /// implementation of [`super::Records`]: the command applies only if
    /// the account's record is at `expected_version` now (0: no record)
    /// and it writes the next version. Anything else is a conflict and
    /// writes nothing.
    pub fn check(&self, current_version: u64) -> ApplyOutcome {
        let Command::PutRecord {
            expected_version,
            record,
            ..
        } = self;
        if current_version == *expected_version
            && record.version == expected_version.wrapping_add(1)
        {
            ApplyOutcome::Applied
        } else {
            ApplyOutcome::Conflict { current_version }
        }
    }

    /// Versioned binary form, as stored in logs and sent between replicas.
    pub fn encode(&self) -> Vec<u8> {
        let Command::PutRecord {
            account,
            expected_version,
            record,
        } = self;
        let stored = record.encode();
        let mut out = Vec::with_capacity(2 + 1 + account.as_bytes().len() + 8 + stored.len());
        out.push(COMMAND_FORMAT);
        out.push(1); // PutRecord
        out.extend_from_slice(&account.length_prefixed());
        out.extend_from_slice(&expected_version.to_be_bytes());
        out.extend_from_slice(&stored);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes);
        let corrupt = |_| Error::Corrupt("command");
        if r.u8().map_err(corrupt)? != COMMAND_FORMAT {
            return Err(Error::Corrupt("unknown command format"));
        }
        match r.u8().map_err(corrupt)? {
            1 => {
                let len = r.u8().map_err(corrupt)? as usize;
                let account = std::str::from_utf8(r.take(len).map_err(corrupt)?)
                    .map_err(|_| Error::Corrupt("command account"))?;
                let account =
                    AccountId::new(account).map_err(|_| Error::Corrupt("command account"))?;
                let expected_version = u64::from_be_bytes(r.array().map_err(corrupt)?);
                let record = StoredRecord::decode(r.take(r.remaining()).map_err(corrupt)?)?;
                if record.version != expected_version.wrapping_add(1) {
                    return Err(Error::Corrupt("command version"));
                }
                Ok(Command::PutRecord {
                    account,
                    expected_version,
                    record,
                })
            }
            _ => Err(Error::Corrupt("unknown command")),
        }
    }
}

/// A value that travels in the replicated log as its own versioned bytes,
/// so the log format is its module's, not a serde derivation's: through
/// serde it is one byte string.
pub(crate) trait LogBytes: Sized {
    const EXPECTING: &'static str;
    fn to_log_bytes(&self) -> Vec<u8>;
    fn from_log_bytes(bytes: &[u8]) -> Result<Self, Error>;
}

pub(crate) fn serialize_log_bytes<T: LogBytes, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(&v.to_log_bytes())
}

pub(crate) fn deserialize_log_bytes<'de, T: LogBytes, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<T, D::Error> {
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: LogBytes> serde::de::Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(T::EXPECTING)
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<T, E> {
            T::from_log_bytes(v).map_err(|e| E::custom(e.to_string()))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
            let mut bytes = Vec::new();
            while let Some(b) = seq.next_element::<u8>()? {
                bytes.push(b);
            }
            self.visit_bytes(&bytes)
        }
    }
    d.deserialize_bytes(V(std::marker::PhantomData))
}

impl LogBytes for Command {
    const EXPECTING: &'static str = "an encoded vault command";
    fn to_log_bytes(&self) -> Vec<u8> {
        self.encode()
    }
    fn from_log_bytes(bytes: &[u8]) -> Result<Self, Error> {
        Self::decode(bytes)
    }
}

impl serde::Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_log_bytes(self, s)
    }
}

impl<'de> serde::Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_log_bytes(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let c = Command::PutRecord {
            account: AccountId::new("+1555").unwrap(),
            expected_version: 7,
            record: StoredRecord {
                version: 8,
                sealed: vec![1, 2, 3],
            },
        };
        assert_eq!(Command::decode(&c.encode()).unwrap(), c);
        let wire = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<Command>(&wire).unwrap(), c);
        let mut bad = c.encode();
        bad[0] = 9;
        assert!(Command::decode(&bad).is_err());
        let mut bad = c.encode();
        let n = bad.len();
        bad[n - 4] ^= 1; // record version no longer expected + 1
        assert!(Command::decode(&bad).is_err());
    }
}
