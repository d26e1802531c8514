//! What a replicated log entry carries: a record [`Command`] from the core,
//! or a change to the group's node keys ([`super::peer_keys`]).
//!
//! ```text
//! record command  format u8 = 1 || 1 || (as state::command)
//! register key    format u8 = 1 || 2 || node u64 BE || key [32]
//! retire node     format u8 = 1 || 3 || node u64 BE
//! record commands  format u8 = 1 || 4 || count u16 BE (2..=64)
//!                  || count × (len u32 BE || record command)
//! ```
//!
//! Several record commands in one entry are the leader's group commit
//! ([`super::group_commit`]): concurrent commits share one log write and
//! one replication round. They apply in order, each its own
//! compare-and-set, and no two of one entry touch the same account.
//!
//! A record command's bytes are exactly the core's [`Command`] encoding,
//! so every log written before node keys existed still reads.

use protocol_spec::frame::Reader;
use serde::{Deserialize, Serialize};

use super::peer_keys::{NodeKey, PeerKeyChange};
use crate::state::command::{
    deserialize_log_bytes, serialize_log_bytes, Command, LogBytes, COMMAND_FORMAT,
};
use crate::Error;

const REGISTER: u8 = 2;
const RETIRE: u8 = 3;
const RECORDS: u8 = 4;

/// Most record commands one log entry carries. openraft sends up to 300
/// entries in one append: 64 records of about 500 bytes each keep that
/// under the peer record limit.
pub const MAX_RECORDS_PER_ENTRY: usize = 64;

/// One log entry's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogCommand {
    Record(Command),
    PeerKey(PeerKeyChange),
    /// 2 to [`MAX_RECORDS_PER_ENTRY`] record commands, applied in order,
    /// each of a different account.
    Records(Vec<Command>),
}

impl From<Command> for LogCommand {
    fn from(c: Command) -> Self {
        LogCommand::Record(c)
    }
}

impl LogCommand {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            LogCommand::Record(c) => c.encode(),
            LogCommand::PeerKey(PeerKeyChange::Register { node, key }) => {
                let mut out = vec![COMMAND_FORMAT, REGISTER];
                out.extend_from_slice(&node.to_be_bytes());
                out.extend_from_slice(&key.0);
                out
            }
            LogCommand::PeerKey(PeerKeyChange::Retire { node }) => {
                let mut out = vec![COMMAND_FORMAT, RETIRE];
                out.extend_from_slice(&node.to_be_bytes());
                out
            }
            LogCommand::Records(cmds) => {
                let mut out = vec![COMMAND_FORMAT, RECORDS];
                out.extend_from_slice(&(cmds.len() as u16).to_be_bytes());
                for c in cmds {
                    let b = c.encode();
                    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                    out.extend_from_slice(&b);
                }
                out
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let corrupt = |_| Error::Corrupt("log command");
        match bytes {
            [COMMAND_FORMAT, REGISTER, ..] | [COMMAND_FORMAT, RETIRE, ..] => {
                let mut r = Reader::new(&bytes[2..]);
                let node = u64::from_be_bytes(r.array().map_err(corrupt)?);
                let change = if bytes[1] == REGISTER {
                    PeerKeyChange::Register {
                        node,
                        key: NodeKey(r.array().map_err(corrupt)?),
                    }
                } else {
                    PeerKeyChange::Retire { node }
                };
                if r.remaining() != 0 {
                    return Err(Error::Corrupt("log command: trailing bytes"));
                }
                Ok(LogCommand::PeerKey(change))
            }
            [COMMAND_FORMAT, RECORDS, ..] => {
                let mut r = Reader::new(&bytes[2..]);
                let count = u16::from_be_bytes(r.array().map_err(corrupt)?) as usize;
                if !(2..=MAX_RECORDS_PER_ENTRY).contains(&count) {
                    return Err(Error::Corrupt("log command: record count"));
                }
                let mut cmds: Vec<Command> = Vec::with_capacity(count);
                for _ in 0..count {
                    let len = u32::from_be_bytes(r.array().map_err(corrupt)?) as usize;
                    let c = Command::decode(r.take(len).map_err(corrupt)?)?;
                    if cmds.iter().any(|o| o.account() == c.account()) {
                        return Err(Error::Corrupt("log command: an account twice"));
                    }
                    cmds.push(c);
                }
                if r.remaining() != 0 {
                    return Err(Error::Corrupt("log command: trailing bytes"));
                }
                Ok(LogCommand::Records(cmds))
            }
            _ => Command::decode(bytes).map(LogCommand::Record),
        }
    }

    /// The record commands this entry carries, in order.
    pub fn records(&self) -> &[Command] {
        match self {
            LogCommand::Record(c) => std::slice::from_ref(c),
            LogCommand::Records(cs) => cs,
            LogCommand::PeerKey(_) => &[],
        }
    }
}

impl LogBytes for LogCommand {
    const EXPECTING: &'static str = "an encoded log command";
    fn to_log_bytes(&self) -> Vec<u8> {
        self.encode()
    }
    fn from_log_bytes(bytes: &[u8]) -> Result<Self, Error> {
        Self::decode(bytes)
    }
}

impl Serialize for LogCommand {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_log_bytes(self, s)
    }
}

impl<'de> Deserialize<'de> for LogCommand {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_log_bytes(d)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use protocol_spec::ids::AccountId;

    use super::*;
    use crate::state::record::StoredRecord;

    #[test]
    fn record_commands_keep_their_bytes_and_key_changes_round_trip() {
        let c = Command::PutRecord {
            account: AccountId::new("+1555").unwrap(),
            expected_version: 7,
            record: StoredRecord {
                version: 8,
                sealed: vec![1, 2, 3],
            },
        };
        let as_log = LogCommand::Record(c.clone());
        assert_eq!(as_log.encode(), c.encode());
        // A log entry written before node keys existed reads as a record
        // command, through serde as Raft stores it.
        let old = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<LogCommand>(&old).unwrap(), as_log);
        for change in [
            PeerKeyChange::Register {
                node: 3,
                key: NodeKey([0xab; 32]),
            },
            PeerKeyChange::Retire { node: u64::MAX },
        ] {
            let l = LogCommand::PeerKey(change);
            let b = l.encode();
            assert_eq!(LogCommand::decode(&b).unwrap(), l);
            let wire = postcard::to_allocvec(&l).unwrap();
            assert_eq!(postcard::from_bytes::<LogCommand>(&wire).unwrap(), l);
            let mut long = b.clone();
            long.push(0);
            assert!(LogCommand::decode(&long).is_err());
            assert!(LogCommand::decode(&b[..b.len() - 1]).is_err());
        }
        assert!(LogCommand::decode(&[COMMAND_FORMAT, 9]).is_err());
        // Several record commands in one entry, each of its own account.
        let other = |name: &str| Command::PutRecord {
            account: AccountId::new(name).unwrap(),
            expected_version: 0,
            record: StoredRecord {
                version: 1,
                sealed: vec![9; 40],
            },
        };
        let batch = LogCommand::Records(vec![c.clone(), other("+1666"), other("+1777")]);
        let b = batch.encode();
        assert_eq!(LogCommand::decode(&b).unwrap(), batch);
        assert_eq!(batch.records().len(), 3);
        let wire = postcard::to_allocvec(&batch).unwrap();
        assert_eq!(postcard::from_bytes::<LogCommand>(&wire).unwrap(), batch);
        let mut long = b.clone();
        long.push(0);
        assert!(LogCommand::decode(&long).is_err());
        assert!(LogCommand::decode(&b[..b.len() - 1]).is_err());
        // One account twice, fewer than two or too many commands: refused.
        let twice = LogCommand::Records(vec![other("+1666"), other("+1666")]).encode();
        assert!(LogCommand::decode(&twice).is_err());
        let one = LogCommand::Records(vec![other("+1666")]).encode();
        assert!(LogCommand::decode(&one).is_err());
        let many: Vec<Command> = (0..=MAX_RECORDS_PER_ENTRY)
            .map(|i| other(&format!("+1{i:05}")))
            .collect();
        assert!(LogCommand::decode(&LogCommand::Records(many).encode()).is_err());
        assert!(LogCommand::decode(&[]).is_err());
    }

    proptest::proptest! {
        /// Whatever decodes re-encodes to the same bytes: a replica never
        /// reads a log entry two ways.
        #[test]
        fn decoding_is_canonical(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Ok(c) = LogCommand::decode(&bytes) {
                proptest::prop_assert_eq!(c.encode(), bytes);
            }
        }

        #[test]
        fn key_changes_round_trip(node in proptest::prelude::any::<u64>(), key in proptest::prelude::any::<[u8; 32]>(), retire in proptest::prelude::any::<bool>()) {
            let change = if retire {
                PeerKeyChange::Retire { node }
            } else {
                PeerKeyChange::Register { node, key: NodeKey(key) }
            };
            let c = LogCommand::PeerKey(change);
            proptest::prop_assert_eq!(LogCommand::decode(&c.encode()).unwrap(), c);
        }
    }
}
