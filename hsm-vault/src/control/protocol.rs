//! Control channel messages (SPEC.md 5.6). After the `Noise_KK` handshake
//! (empty payloads both ways) the tool sends one sealed request frame and
//! the replica answers with one sealed frame; each plaintext is the protocol
//! version byte, then JSON. This channel is internal to one deployment (the
//! tool and the replicas are the same build), so JSON keeps it readable in
//! a capture of the decrypted traffic during an incident.

use serde::{Deserialize, Serialize};

use crate::raft::identity::GroupId;
use crate::raft::VaultNode;
use protocol_spec::PROTOCOL_VERSION;

/// Largest control frame either side accepts.
pub const MAX_CONTROL_FRAME: usize = 256 * 1024;

/// A replica's identity, as it reports itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfInfo {
    pub node_id: u64,
    #[serde(flatten)]
    pub node: VaultNode,
    /// The group it belongs to; none before `cluster init` or before a
    /// group's leader first reaches it.
    #[serde(default)]
    pub group: Option<GroupId>,
}

/// What an operator asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ControlRequest {
    /// This replica's id, addresses and group.
    WhoAreYou,
    /// Term, leader, log indices and membership.
    Status,
    /// A new group with this replica its only voter.
    Init,
    /// Add the replica `node` describes as a learner.
    AddLearner { node: SelfInfo },
    /// Learner to voter.
    Promote { node_id: u64 },
    /// Out of the group (a voter or a learner).
    Remove { node_id: u64 },
    /// Make this replica campaign for leadership now.
    Elect,
}

impl ControlRequest {
    /// Stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ControlRequest::WhoAreYou => "who_are_you",
            ControlRequest::Status => "status",
            ControlRequest::Init => "init",
            ControlRequest::AddLearner { .. } => "add_learner",
            ControlRequest::Promote { .. } => "promote",
            ControlRequest::Remove { .. } => "remove",
            ControlRequest::Elect => "elect",
        }
    }

    /// Whether the request changes the group (and so must reach the
    /// leader, except `init` and `elect`, which act on this replica).
    pub fn changes_membership(&self) -> bool {
        matches!(
            self,
            ControlRequest::AddLearner { .. }
                | ControlRequest::Promote { .. }
                | ControlRequest::Remove { .. }
        )
    }
}

/// What a replica answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControlAnswer {
    /// Done; the value is what the request reports.
    Done(serde_json::Value),
    /// Refused, with the reason and what to do.
    Refused(String),
    /// Membership changes go to the leader: its control address, if known.
    NotLeader(Option<String>),
}

/// A frame's plaintext: the version byte, then JSON.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![PROTOCOL_VERSION];
    // Serialising these types to JSON cannot fail (no maps with non-string
    // keys, no floats that are not finite).
    out.extend(serde_json::to_vec(v).unwrap_or_default());
    out
}

/// Decodes a frame's plaintext.
pub fn decode<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, String> {
    match b.split_first() {
        Some((&PROTOCOL_VERSION, rest)) => {
            serde_json::from_slice(rest).map_err(|e| format!("malformed control frame: {e}"))
        }
        Some((v, _)) => Err(format!("unsupported control protocol version {v}")),
        None => Err("empty control frame".into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_frames_are_refused() {
        for r in [
            ControlRequest::WhoAreYou,
            ControlRequest::Promote { node_id: 4 },
            ControlRequest::Remove { node_id: 9 },
            ControlRequest::Elect,
        ] {
            assert_eq!(decode::<ControlRequest>(&encode(&r)).unwrap(), r);
        }
        let a = ControlAnswer::NotLeader(Some("10.0.0.1:7190".into()));
        assert_eq!(decode::<ControlAnswer>(&encode(&a)).unwrap(), a);
        assert!(decode::<ControlRequest>(&[]).is_err());
        assert!(decode::<ControlRequest>(&[9, b'{', b'}']).is_err());
        assert!(decode::<ControlRequest>(b"\x01{\"op\":\"shutdown\"}").is_err());
    }
}
