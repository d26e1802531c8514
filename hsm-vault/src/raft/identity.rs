//! Who is at each end of a replica-to-replica connection (SPEC.md 5.5).
//!
//! Every replica of a fleet holds the same peer key, so the Noise_KK
//! handshake alone proves only "a replica of this fleet". One fleet can run
//! several groups (staging and production from one key ceremony, or a
//! replica that an operator initialised on its own by mistake), and an
//! address can come to host a different replica. A Raft RPC that crossed
//! groups would splice one group's log into another's, and with it hand
//! back spent attempts or drop registrations. So the handshake payloads
//! carry identities:
//!
//! - the initiator's first message: [`PeerHello`] (its node id, the node id
//!   it means to reach, its group);
//! - the responder's answer: [`PeerWelcome`] (its node id and group).
//!
//! A group id is 16 random bytes made by `cluster init`. A replica that has
//! none (never initialised, never reached) joins the group of the first
//! leader that reaches it, durably, before answering; from then on it
//! refuses every other group. Either end closes the connection when the
//! identities do not match, and the initiator reports who it found instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redb::Database;
use serde::{Deserialize, Serialize};

use super::peer_keys::NodeProof;
use super::storage::{meta_get, meta_put, VOTE_KEY};
use crate::state::store::RecordStore;
use crate::Error;

pub(super) const GROUP_KEY: &str = "raft_group";

/// A Raft group's identity. Serialised as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupId(pub [u8; 16]);

impl GroupId {
    /// A fresh random group id.
    pub fn random() -> Result<Self, Error> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| Error::Entropy(e.to_string()))?;
        Ok(GroupId(b))
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupId({self})")
    }
}

/// Text that is not a group id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a group id (32 hex digits)")]
pub struct BadGroupId(pub String);

impl std::str::FromStr for GroupId {
    type Err = BadGroupId;
    fn from_str(s: &str) -> Result<Self, BadGroupId> {
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b).map_err(|_| BadGroupId(s.to_owned()))?;
        Ok(GroupId(b))
    }
}

impl Serialize for GroupId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for GroupId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a replica-to-replica connection is refused, or a group cannot be
/// made. The replica at the other end is at fault (or the operator who
/// pointed it here), except for [`IdentityError::Store`].
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("node {from} meant to reach node {to} but reached node {me}")]
    WrongNode { from: u64, to: u64, me: u64 },
    #[error("node {from} of group {theirs} tried to reach this replica of group {mine}")]
    OtherGroup {
        from: u64,
        theirs: GroupId,
        mine: GroupId,
    },
    #[error("the replica at {addr} is node {node} of {}, not node {wanted_node} of group {wanted_group}", found_group(.group))]
    Found {
        addr: String,
        node: u64,
        group: Option<GroupId>,
        wanted_node: u64,
        wanted_group: GroupId,
    },
    #[error(
        "this replica already belongs to group {0}; `cluster init` is run once, on the first \
         replica of a new group (add others with `cluster add-learner`)"
    )]
    AlreadyInGroup(GroupId),
    #[error("this replica belongs to no group yet; it cannot call other replicas")]
    NoGroup,
    #[error("cannot store the group id: {0}")]
    Store(String),
    #[error(transparent)]
    Entropy(#[from] Error),
}

fn found_group(g: &Option<GroupId>) -> String {
    g.map_or_else(|| "no group".to_string(), |g| format!("group {g}"))
}

/// The initiator's handshake payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    pub from: u64,
    pub to: u64,
    pub group: GroupId,
}

/// The responder's handshake payload: who it is, whether or not it admits
/// the initiator, and the proof of its node key over the handshake hash
/// after message 1 ([`super::peer_keys`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerWelcome {
    pub node: u64,
    pub group: Option<GroupId>,
    pub proof: NodeProof,
}

/// This replica's node id and group, shared by the peer listener, the peer
/// clients and the admin routes.
pub struct PeerIdentity {
    node_id: u64,
    db: Arc<Database>,
    group: Mutex<Option<GroupId>>,
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("node_id", &self.node_id)
            .field("group", &*self.group.lock())
            .finish()
    }
}

impl PeerIdentity {
    /// Loads the group this replica belongs to, if any. Refuses a store
    /// that holds Raft state but no group id (made by a build before group
    /// ids): such a replica could not prove which group it serves.
    pub fn load(node_id: u64, store: &RecordStore) -> Result<Arc<Self>, Error> {
        let db = store.db().clone();
        let err = |e: openraft::StorageError<u64>| Error::Storage(e.to_string());
        let group: Option<GroupId> = meta_get(&db, GROUP_KEY).map_err(err)?;
        let voted = meta_get::<openraft::Vote<u64>>(&db, VOTE_KEY)
            .map_err(err)?
            .is_some();
        if group.is_none() && voted {
            return Err(Error::Store {
                path: store.path().to_path_buf(),
                reason: "it holds Raft state but no group id (it was made by an older build); \
                         move it aside and add this replica to its group again"
                    .into(),
            });
        }
        Ok(Arc::new(PeerIdentity {
            node_id,
            db,
            group: Mutex::new(group),
        }))
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    pub fn group(&self) -> Option<GroupId> {
        *self.group.lock()
    }

    fn persist(&self, g: GroupId) -> Result<(), IdentityError> {
        meta_put(&self.db, GROUP_KEY, &g).map_err(|e| IdentityError::Store(e.to_string()))
    }

    /// Makes a new group with this replica in it, for `cluster init`.
    /// Refuses if the replica already belongs to a group: a second group
    /// under the same id, or a replica in two groups, is what this guards
    /// against.
    pub fn create_group(&self) -> Result<GroupId, IdentityError> {
        let mut g = self.group.lock();
        if let Some(existing) = *g {
            return Err(IdentityError::AlreadyInGroup(existing));
        }
        let new = GroupId::random()?;
        self.persist(new)?;
        *g = Some(new);
        tracing::info!(group = %new, "new group created");
        Ok(new)
    }

    /// Decides whether to serve the replica that sent `hello`. A replica in
    /// no group yet joins the caller's (durably, before answering).
    pub fn admit(&self, hello: &PeerHello) -> Result<(), IdentityError> {
        if hello.to != self.node_id {
            return Err(IdentityError::WrongNode {
                from: hello.from,
                to: hello.to,
                me: self.node_id,
            });
        }
        let mut g = self.group.lock();
        match *g {
            Some(mine) if mine == hello.group => Ok(()),
            Some(mine) => Err(IdentityError::OtherGroup {
                from: hello.from,
                theirs: hello.group,
                mine,
            }),
            None => {
                self.persist(hello.group)?;
                *g = Some(hello.group);
                tracing::info!(group = %hello.group, by = hello.from, "joined group");
                Ok(())
            }
        }
    }

    /// The first message's payload for a connection to node `to`.
    pub fn hello(&self, to: u64) -> Result<PeerHello, IdentityError> {
        let group = self.group().ok_or(IdentityError::NoGroup)?;
        Ok(PeerHello {
            from: self.node_id,
            to,
            group,
        })
    }

    pub fn welcome(&self, proof: NodeProof) -> PeerWelcome {
        PeerWelcome {
            node: self.node_id,
            group: self.group(),
            proof,
        }
    }
}

/// At the initiator: is the replica that answered the one `hello` meant?
pub fn check_welcome(hello: &PeerHello, w: &PeerWelcome, addr: &str) -> Result<(), IdentityError> {
    if w.node == hello.to && w.group == Some(hello.group) {
        return Ok(());
    }
    Err(IdentityError::Found {
        addr: addr.to_owned(),
        node: w.node,
        group: w.group,
        wanted_node: hello.to,
        wanted_group: hello.group,
    })
}

/// Logs an identity mismatch at most once a minute per key: Raft retries
/// every heartbeat, and the operator needs the message, not a flood.
#[derive(Debug, Default)]
pub struct WarnOnce {
    last: Mutex<std::collections::HashMap<String, Instant>>,
}

impl WarnOnce {
    const EVERY: Duration = Duration::from_secs(60);

    /// True if a warning for `key` is due now.
    pub fn due(&self, key: &str) -> bool {
        let mut last = self.last.lock();
        let now = Instant::now();
        match last.get(key) {
            Some(t) if now.duration_since(*t) < Self::EVERY => false,
            _ => {
                last.insert(key.to_string(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn store(dir: &tempfile::TempDir) -> RecordStore {
        RecordStore::open(&dir.path().join("s.redb")).unwrap()
    }

    fn hello(from: u64, to: u64, group: GroupId) -> PeerHello {
        PeerHello { from, to, group }
    }

    fn welcome(node: u64, group: Option<GroupId>) -> PeerWelcome {
        PeerWelcome {
            node,
            group,
            proof: NodeProof {
                key: super::super::peer_keys::NodeKey([0; 32]),
                signature: vec![0; 64],
            },
        }
    }

    #[test]
    fn a_new_replica_joins_the_first_group_durably_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let a = GroupId([1; 16]);
        let b = GroupId([2; 16]);
        {
            let id = PeerIdentity::load(2, &store(&dir)).unwrap();
            assert_eq!(id.group(), None);
            assert!(id.hello(1).is_err(), "no group, no calls");
            id.admit(&hello(1, 2, a)).unwrap();
            assert_eq!(id.group(), Some(a));
            let e = id.admit(&hello(7, 2, b)).unwrap_err().to_string();
            assert!(e.contains("tried to reach this replica of group"), "{e}");
        }
        // After a restart it still belongs to `a`.
        let id = PeerIdentity::load(2, &store(&dir)).unwrap();
        assert_eq!(id.group(), Some(a));
        assert!(id.admit(&hello(3, 2, b)).is_err());
        assert!(id.admit(&hello(3, 2, a)).is_ok());
        let e = id.create_group().unwrap_err().to_string();
        assert!(e.contains("already belongs to group"), "{e}");
    }

    #[test]
    fn a_connection_meant_for_another_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let id = PeerIdentity::load(3, &store(&dir)).unwrap();
        let g = id.create_group().unwrap();
        let e = id.admit(&hello(1, 2, g)).unwrap_err().to_string();
        assert!(
            e.contains("meant to reach node 2 but reached node 3"),
            "{e}"
        );
        // A refused hello does not make a group-less replica join anything.
        let dir2 = tempfile::tempdir().unwrap();
        let fresh = PeerIdentity::load(3, &store(&dir2)).unwrap();
        assert!(fresh.admit(&hello(1, 2, g)).is_err());
        assert_eq!(fresh.group(), None);
    }

    #[test]
    fn the_initiator_names_who_it_found_instead() {
        let g = GroupId([9; 16]);
        let h = hello(1, 2, g);
        assert!(check_welcome(&h, &welcome(2, Some(g)), "x").is_ok());
        let e = check_welcome(&h, &welcome(3, Some(g)), "10.0.0.3:7180")
            .unwrap_err()
            .to_string();
        assert!(e.contains("the replica at 10.0.0.3:7180 is node 3"), "{e}");
        let e = check_welcome(&h, &welcome(2, Some(GroupId([8; 16]))), "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains(&GroupId([8; 16]).to_string()), "{e}");
        assert!(check_welcome(&h, &welcome(2, None), "x").is_err());
    }

    #[test]
    fn group_ids_print_and_parse_as_hex() {
        let g = GroupId::random().unwrap();
        let s = g.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(s.parse::<GroupId>().unwrap(), g);
        assert!("xyz".parse::<GroupId>().is_err());
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        let back: GroupId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, g);
        let pc = postcard::to_allocvec(&hello(1, 2, g)).unwrap();
        assert_eq!(
            postcard::from_bytes::<PeerHello>(&pc).unwrap(),
            hello(1, 2, g)
        );
    }

    #[test]
    fn a_store_with_raft_state_but_no_group_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        meta_put(s.db(), VOTE_KEY, &openraft::Vote::<u64>::new(1, 1)).unwrap();
        let e = PeerIdentity::load(1, &s).unwrap_err().to_string();
        assert!(e.contains("no group id"), "{e}");
    }

    #[test]
    fn warnings_are_rate_limited_per_key() {
        let w = WarnOnce::default();
        assert!(w.due("a"));
        assert!(!w.due("a"));
        assert!(w.due("b"));
    }
}
