//! Per-node peer keys (SPEC.md 5.5).
//!
//! The fleet peer key (Noise_KK, the same on every replica) proves only "a
//! replica of this fleet". On top of it every replica holds its own
//! Ed25519 **node key** and proves it on every connection, by signing the
//! connection's Noise handshake hash (so a proof cannot be replayed on
//! another connection). The group keeps, in its replicated state, which
//! key each node id is registered with and which node ids were removed
//! ([`PeerKeyTable`]); every replica checks each connection against it:
//!
//! - a node id registered with another key is refused, so no replica can
//!   pose as another (a mis-set `node_id`, a replica built from another's
//!   configuration);
//! - a removed node id, or a removed node's key under any id, is refused:
//!   `cluster remove` revokes (a replica restarted after its removal
//!   cannot rejoin the conversation, as itself or as a new id with its old
//!   key);
//! - a node id with no key yet is served, and its key noted so the leader
//!   registers it ([`PeerKeys::unregistered_members`]): that covers a group
//!   formed before node keys existed, and a follower that has not yet
//!   applied the registration of a newer member that now leads it.
//!
//! `add-learner` registers the new replica's key, which its probe proved,
//! before adding it; `remove` retires the key after removing it.
//!
//! A node key lives in the replica's store, sealed by the HSM and bound to
//! the node id, so it is as safe at rest as the records, is wiped with the
//! store, and cannot be moved to a replica configured with another id.

use std::collections::BTreeMap;

use parking_lot::{Mutex, RwLock};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::identity::GroupId;
use crate::entropy::Entropy;
use crate::seal::{draw_iv, Sealer};
use crate::Error;

/// An Ed25519 public key. Serialised as 64 hex digits in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey(pub [u8; 32]);

impl NodeKey {
    /// Short form for logs and `cluster status`: the first 8 bytes of
    /// SHA-256 over the key, as `xxxx:xxxx:xxxx:xxxx`.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let d = sha2::Sha256::digest(self.0);
        d[..8]
            .chunks(2)
            .map(hex::encode)
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl std::fmt::Display for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.fingerprint())
    }
}

impl Serialize for NodeKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for NodeKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            let mut b = [0u8; 32];
            hex::decode_to_slice(&s, &mut b)
                .map_err(|_| serde::de::Error::custom("a node key is 64 hex digits"))?;
            Ok(NodeKey(b))
        } else {
            Ok(NodeKey(<[u8; 32]>::deserialize(d)?))
        }
    }
}

/// Which end of a connection a proof is for, so one end's proof is never
/// valid as the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofRole {
    Initiator,
    Responder,
}

const PROOF_LABEL: &[u8] = b"E2EBK peer node proof v1";
const SEAL_LABEL: &[u8] = b"E2EBK node key v1";
const SIGNATURE_LEN: usize = 64;

/// What a node signs: the label, its role, its group and node id, and the
/// connection's handshake hash.
fn transcript(role: ProofRole, group: GroupId, node: u64, handshake_hash: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(PROOF_LABEL.len() + 1 + 16 + 8 + handshake_hash.len());
    m.extend_from_slice(PROOF_LABEL);
    m.push(match role {
        ProofRole::Initiator => 1,
        ProofRole::Responder => 2,
    });
    m.extend_from_slice(&group.0);
    m.extend_from_slice(&node.to_be_bytes());
    m.extend_from_slice(handshake_hash);
    m
}

/// A node's proof that it holds the private half of `key`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProof {
    pub key: NodeKey,
    /// Ed25519 signature (64 bytes) over the transcript.
    pub signature: Vec<u8>,
}

impl std::fmt::Debug for NodeProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeProof({:?})", self.key)
    }
}

impl NodeProof {
    /// Checks the proof for this role, group, node and handshake.
    pub fn verify(
        &self,
        role: ProofRole,
        group: GroupId,
        node: u64,
        handshake_hash: &[u8],
    ) -> Result<NodeKey, PeerKeyError> {
        if self.signature.len() != SIGNATURE_LEN {
            return Err(PeerKeyError::BadProof { node });
        }
        UnparsedPublicKey::new(&ED25519, self.key.0)
            .verify(
                &transcript(role, group, node, handshake_hash),
                &self.signature,
            )
            .map_err(|_| PeerKeyError::BadProof { node })?;
        Ok(self.key)
    }
}

/// This replica's node key pair.
pub struct NodeSigner {
    pair: Ed25519KeyPair,
    public: NodeKey,
}

impl std::fmt::Debug for NodeSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeSigner({:?})", self.public)
    }
}

fn seal_aad(node: u64) -> Vec<u8> {
    let mut aad = SEAL_LABEL.to_vec();
    aad.extend_from_slice(&node.to_be_bytes());
    aad
}

impl NodeSigner {
    /// The key pair from a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, Error> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| Error::Corrupt("node key seed"))?;
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        Ok(NodeSigner {
            pair,
            public: NodeKey(public),
        })
    }

    /// Opens node `node`'s key from `sealed` (what [`NodeSigner::create`]
    /// returned). A key sealed for another node id does not open.
    pub fn open(sealed: &[u8], node: u64, sealer: &dyn Sealer) -> Result<Self, Error> {
        let seed = sealer
            .unseal(&seal_aad(node), sealed)
            .map_err(|e| match e {
                Error::Integrity => Error::Corrupt(
                    "node key: it does not open as this node's (sealed for another node id, under \
                 another master key, or damaged)",
                ),
                other => other,
            })?;
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            seed.as_slice()
                .try_into()
                .map_err(|_| Error::Corrupt("node key length"))?,
        );
        Self::from_seed(&seed)
    }

    /// A fresh key pair for node `node`, and its sealed form to store.
    pub fn create(
        node: u64,
        sealer: &dyn Sealer,
        entropy: &dyn Entropy,
    ) -> Result<(Self, Vec<u8>), Error> {
        let mut seed = Zeroizing::new([0u8; 32]);
        entropy.fill(seed.as_mut_slice())?;
        let signer = Self::from_seed(&seed)?;
        let sealed = sealer.seal(&seal_aad(node), draw_iv(entropy)?, seed.as_slice())?;
        Ok((signer, sealed))
    }

    pub fn public(&self) -> NodeKey {
        self.public
    }

    /// Proves this key on the connection whose handshake hash is given.
    pub fn prove(
        &self,
        role: ProofRole,
        group: GroupId,
        node: u64,
        handshake_hash: &[u8],
    ) -> NodeProof {
        NodeProof {
            key: self.public,
            signature: self
                .pair
                .sign(&transcript(role, group, node, handshake_hash))
                .as_ref()
                .to_vec(),
        }
    }
}

const NODE_KEY_KEY: &str = "node_key";

/// This replica's node key: opened from its store, or made and stored
/// (fsynced) on the first start as a group member.
pub fn load_or_create_signer(
    store: &crate::state::store::RecordStore,
    node: u64,
    sealer: &dyn Sealer,
    entropy: &dyn Entropy,
) -> Result<NodeSigner, Error> {
    use super::storage::{meta_get, meta_put};
    let storage = |e: openraft::StorageError<u64>| Error::Storage(e.to_string());
    if let Some(sealed) = meta_get::<Vec<u8>>(store.db(), NODE_KEY_KEY).map_err(storage)? {
        return NodeSigner::open(&sealed, node, sealer).map_err(|e| Error::Store {
            path: store.path().to_path_buf(),
            reason: format!("{e}; a store is bound to one node id for good"),
        });
    }
    let (signer, sealed) = NodeSigner::create(node, sealer, entropy)?;
    meta_put(store.db(), NODE_KEY_KEY, &sealed).map_err(storage)?;
    tracing::info!(node, key = %signer.public().fingerprint(), "node key created");
    Ok(signer)
}

/// Why a connection's node key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerKeyError {
    #[error("node {node} did not prove its node key")]
    BadProof { node: u64 },
    #[error(
        "node {node} presented node key {presented}, but the group registered {registered} for \
         it: another replica is configured with node_id = {node}, or it was rebuilt (give a \
         rebuilt replica a new node id)"
    )]
    Mismatch {
        node: u64,
        presented: String,
        registered: String,
    },
    #[error(
        "node {node} was removed from the group (`cluster remove`); a removed replica is never \
         served again: wipe its data folder and add it under a new node id"
    )]
    Retired { node: u64 },
    #[error("node {node} presented the node key of removed node {retired}")]
    RetiredKey { node: u64, retired: u64 },
    #[error("node {node} presented the node key registered for node {owner}")]
    KeyOfAnother { node: u64, owner: u64 },
}

/// A change to the table, as a replicated log entry carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerKeyChange {
    /// Node `node` holds `key`.
    Register { node: u64, key: NodeKey },
    /// Node `node` was removed: its id and key are never served again.
    Retire { node: u64 },
}

/// What applying a change did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerKeyOutcome {
    Applied,
    /// Nothing changed; why.
    Refused(String),
}

/// Where a node stands, for a connection that proved `key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Registered,
    /// No key registered for this node id yet.
    Unregistered,
}

/// The group's node keys: the replicated state every replica checks
/// connections against.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerKeyTable {
    pub registered: BTreeMap<u64, NodeKey>,
    /// Removed node ids, with the key they had if one was registered.
    pub retired: BTreeMap<u64, Option<NodeKey>>,
}

impl PeerKeyTable {
    fn retired_owner(&self, key: &NodeKey) -> Option<u64> {
        self.retired
            .iter()
            .find(|(_, k)| k.as_ref() == Some(key))
            .map(|(n, _)| *n)
    }

    fn registered_owner(&self, key: &NodeKey) -> Option<u64> {
        self.registered
            .iter()
            .find(|(_, k)| *k == key)
            .map(|(n, _)| *n)
    }

    /// The rule every replica applies, in log order.
    pub fn apply(&mut self, change: &PeerKeyChange) -> PeerKeyOutcome {
        match change {
            PeerKeyChange::Register { node, key } => {
                if let Err(e) = self.check(*node, key) {
                    return PeerKeyOutcome::Refused(e.to_string());
                }
                self.registered.insert(*node, *key);
                PeerKeyOutcome::Applied
            }
            PeerKeyChange::Retire { node } => {
                let key = self.registered.remove(node);
                let entry = self.retired.entry(*node).or_insert(None);
                if entry.is_none() {
                    *entry = key;
                }
                PeerKeyOutcome::Applied
            }
        }
    }

    /// Whether a connection from node `node` that proved `key` is served.
    pub fn check(&self, node: u64, key: &NodeKey) -> Result<Standing, PeerKeyError> {
        if self.retired.contains_key(&node) {
            return Err(PeerKeyError::Retired { node });
        }
        if let Some(retired) = self.retired_owner(key) {
            return Err(PeerKeyError::RetiredKey { node, retired });
        }
        match self.registered.get(&node) {
            Some(k) if k == key => Ok(Standing::Registered),
            Some(k) => Err(PeerKeyError::Mismatch {
                node,
                presented: key.fingerprint(),
                registered: k.fingerprint(),
            }),
            None => match self.registered_owner(key) {
                Some(owner) => Err(PeerKeyError::KeyOfAnother { node, owner }),
                None => Ok(Standing::Unregistered),
            },
        }
    }
}

/// The live table of this replica (as applied) and the keys that members
/// with no registered key proved on connections, for the leader to
/// register.
#[derive(Debug, Default)]
pub struct PeerKeys {
    table: RwLock<PeerKeyTable>,
    observed: Mutex<BTreeMap<u64, NodeKey>>,
}

impl PeerKeys {
    pub fn new(table: PeerKeyTable) -> Self {
        PeerKeys {
            table: RwLock::new(table),
            observed: Mutex::default(),
        }
    }

    pub fn table(&self) -> PeerKeyTable {
        self.table.read().clone()
    }

    /// Replaces the table (after applying entries or installing a
    /// snapshot; the store is written first).
    pub fn replace(&self, table: PeerKeyTable) {
        *self.table.write() = table;
    }

    /// Checks a connection from `node` that proved `key`, and remembers the
    /// key of a node with none registered yet.
    pub fn admit(&self, node: u64, key: NodeKey) -> Result<Standing, PeerKeyError> {
        let standing = self.table.read().check(node, &key)?;
        if standing == Standing::Unregistered {
            self.observed.lock().insert(node, key);
        }
        Ok(standing)
    }

    /// Members (of `members`) with no registered key whose key a connection
    /// proved, for the leader to register.
    pub fn unregistered_members(&self, members: &[u64]) -> Vec<(u64, NodeKey)> {
        let table = self.table.read();
        let observed = self.observed.lock();
        members
            .iter()
            .filter(|n| !table.registered.contains_key(n) && !table.retired.contains_key(n))
            .filter_map(|n| observed.get(n).map(|k| (*n, *k)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::entropy::SeededEntropy;
    use crate::seal::SoftSealer;

    fn key(b: u8) -> NodeKey {
        NodeKey([b; 32])
    }

    #[test]
    fn proofs_are_bound_to_role_group_node_and_connection() {
        let e = SeededEntropy::new(3);
        let sealer = SoftSealer::new([7; 32]);
        let (signer, sealed) = NodeSigner::create(2, &sealer, &e).unwrap();
        let g = GroupId([5; 16]);
        let h = [9u8; 32];
        let p = signer.prove(ProofRole::Initiator, g, 2, &h);
        assert_eq!(
            p.verify(ProofRole::Initiator, g, 2, &h),
            Ok(signer.public())
        );
        for (role, group, node, hash) in [
            (ProofRole::Responder, g, 2, h),
            (ProofRole::Initiator, GroupId([6; 16]), 2, h),
            (ProofRole::Initiator, g, 3, h),
            (ProofRole::Initiator, g, 2, [8; 32]),
        ] {
            assert_eq!(
                p.verify(role, group, node, &hash),
                Err(PeerKeyError::BadProof { node })
            );
        }
        let mut forged = p.clone();
        forged.key = key(1);
        assert!(forged.verify(ProofRole::Initiator, g, 2, &h).is_err());
        let mut short = p;
        short.signature.pop();
        assert!(short.verify(ProofRole::Initiator, g, 2, &h).is_err());

        // The sealed key opens as node 2's only.
        let again = NodeSigner::open(&sealed, 2, &sealer).unwrap();
        assert_eq!(again.public(), signer.public());
        let e = NodeSigner::open(&sealed, 3, &sealer)
            .unwrap_err()
            .to_string();
        assert!(e.contains("another node id"), "{e}");
    }

    #[test]
    fn the_table_pins_keys_and_never_serves_a_removed_node_again() {
        let mut t = PeerKeyTable::default();
        assert_eq!(t.check(1, &key(1)), Ok(Standing::Unregistered));
        let reg = |node, b| PeerKeyChange::Register { node, key: key(b) };
        assert_eq!(t.apply(&reg(1, 1)), PeerKeyOutcome::Applied);
        assert_eq!(t.apply(&reg(2, 2)), PeerKeyOutcome::Applied);
        // Registering the same key again is a no-op, another key is not.
        assert_eq!(t.apply(&reg(1, 1)), PeerKeyOutcome::Applied);
        assert!(matches!(t.apply(&reg(1, 9)), PeerKeyOutcome::Refused(_)));
        assert!(matches!(t.apply(&reg(3, 2)), PeerKeyOutcome::Refused(_)));
        assert_eq!(t.check(1, &key(1)), Ok(Standing::Registered));
        assert!(matches!(
            t.check(1, &key(9)),
            Err(PeerKeyError::Mismatch { node: 1, .. })
        ));
        assert_eq!(
            t.check(3, &key(2)),
            Err(PeerKeyError::KeyOfAnother { node: 3, owner: 2 })
        );

        assert_eq!(
            t.apply(&PeerKeyChange::Retire { node: 2 }),
            PeerKeyOutcome::Applied
        );
        assert_eq!(t.check(2, &key(2)), Err(PeerKeyError::Retired { node: 2 }));
        assert_eq!(t.check(2, &key(7)), Err(PeerKeyError::Retired { node: 2 }));
        assert_eq!(
            t.check(4, &key(2)),
            Err(PeerKeyError::RetiredKey {
                node: 4,
                retired: 2
            })
        );
        assert!(matches!(t.apply(&reg(2, 7)), PeerKeyOutcome::Refused(_)));
        // Retiring again keeps the key it had.
        t.apply(&PeerKeyChange::Retire { node: 2 });
        assert_eq!(t.retired.get(&2), Some(&Some(key(2))));
        // A node removed before it had a key is retired by id.
        t.apply(&PeerKeyChange::Retire { node: 5 });
        assert_eq!(t.check(5, &key(5)), Err(PeerKeyError::Retired { node: 5 }));
        assert!(t.registered.contains_key(&1) && !t.registered.contains_key(&2));
    }

    #[test]
    fn keys_seen_from_unregistered_members_are_offered_for_registration() {
        let keys = PeerKeys::default();
        assert_eq!(keys.admit(2, key(2)), Ok(Standing::Unregistered));
        assert_eq!(keys.admit(3, key(3)), Ok(Standing::Unregistered));
        assert_eq!(keys.unregistered_members(&[1, 2]), vec![(2, key(2))]);
        let mut t = keys.table();
        t.apply(&PeerKeyChange::Register {
            node: 2,
            key: key(2),
        });
        keys.replace(t);
        assert!(keys.unregistered_members(&[1, 2]).is_empty());
        assert!(keys.admit(2, key(4)).is_err());
    }

    #[test]
    fn keys_print_as_hex_in_json_and_bytes_in_postcard() {
        let k = key(0xab);
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<NodeKey>(&json).unwrap(), k);
        assert!(serde_json::from_str::<NodeKey>("\"abc\"").is_err());
        let pc = postcard::to_allocvec(&k).unwrap();
        assert_eq!(pc.len(), 32);
        assert_eq!(postcard::from_bytes::<NodeKey>(&pc).unwrap(), k);
        assert_eq!(k.fingerprint().len(), 19);
    }
}
