//! What a replicated log entry carries: a record [`Command`] from the core,
//! or a change to the group's node keys ([`super::peer_keys`]).
//!
//! ```text
//! record command  format u8 = 1 || 1 || (as state::command)
//! register key    format u8 = 1 || 2 || node u64 BE || key [32]
//! retire node     format u8 = 1 || 3 || node u64 BE
//! ```
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

/// One log entry's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogCommand {
    Record(Command),
    PeerKey(PeerKeyChange),
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
            _ => Command::decode(bytes).map(LogCommand::Record),
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
