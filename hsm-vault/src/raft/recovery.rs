//! The last resort when a group cannot reach a quorum again, for good
//! (SPEC.md 5.6): `hsm-vault cluster recover`, run on a **stopped**
//! replica against its own store.
//!
//! A membership change that was proposed and then lost the replicas it
//! needs (they died between the quorum check and the commit), or a group
//! that lost a majority of its voters for good, can never commit anything
//! again: Raft cannot tell "gone for good" from "slow", so no change is
//! accepted while one is pending, and no leader can be elected without a
//! majority. Only an operator can say the others are gone.
//!
//! [`inspect`] shows what a replica holds (its last log entry above all),
//! so the operator can pick the survivor with the most complete log: the
//! highest `(term, index)` of the last entry. [`make_sole_voter`] then
//! appends, on that replica only, a membership entry with itself as the
//! only voter, under a term no leader used before (one past everything the
//! replica has seen), so no other replica can hold a different entry under
//! the same leader. Started, it elects itself, commits everything it
//! holds, and the operator adds new replicas (empty data folders, new node
//! ids) as usual. The other survivors are wiped, not restarted: their logs
//! may hold entries this one never had.
//!
//! What was committed survives if the chosen replica held it, which the
//! highest last log id guarantees whenever a majority of any earlier
//! configuration is among the survivors compared. The redb lock makes this
//! refuse to run while the replica is serving.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, StoredMembership, Vote};
use redb::{ReadableDatabase, ReadableTable};
use serde::Serialize;

use super::identity::{GroupId, GROUP_KEY};
use super::storage::{
    meta_get, meta_put, APPLIED_KEY, COMMITTED_KEY, LOG, MEMBERSHIP_KEY, PURGED_KEY, VOTE_KEY,
};
use super::{codec, VaultNode, VaultRaft};
use crate::state::store::RecordStore;
use crate::Error;

type NodeId = u64;
/// A membership and the log id of the last entry.
type MembershipAt = (Membership<NodeId, VaultNode>, Option<LogId<NodeId>>);

/// What one replica's store holds, for the operator to compare.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryView {
    pub node_id: NodeId,
    pub group: Option<GroupId>,
    /// `(term, index)` of the last log entry: the survivor with the highest
    /// is the one to recover from.
    pub last_log: Option<(u64, u64)>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub term: u64,
    /// The voter sets of the membership in force (two while a change is
    /// pending: the old and the new).
    pub voters: Vec<BTreeSet<NodeId>>,
    pub learners: BTreeSet<NodeId>,
    /// Whether a membership change is pending (a joint configuration).
    pub change_pending: bool,
}

fn storage(e: impl std::fmt::Display) -> Error {
    Error::Storage(e.to_string())
}

/// The membership in force: the last membership entry in the log, or the
/// one the state machine applied if the log no longer holds one.
fn effective_membership(store: &RecordStore) -> Result<MembershipAt, Error> {
    let txn = store.db().begin_read().map_err(storage)?;
    let log = txn.open_table(LOG).map_err(storage)?;
    let mut last = None;
    for row in log.iter().map_err(storage)?.rev() {
        let (_, v) = row.map_err(storage)?;
        let entry: Entry<VaultRaft> = codec::decode("log entry", v.value()).map_err(storage)?;
        if last.is_none() {
            last = Some(entry.log_id);
        }
        if let EntryPayload::Membership(m) = entry.payload {
            return Ok((m, last));
        }
    }
    let applied: StoredMembership<NodeId, VaultNode> = meta_get(store.db(), MEMBERSHIP_KEY)
        .map_err(storage)?
        .unwrap_or_default();
    if last.is_none() {
        last = meta_get::<Option<LogId<NodeId>>>(store.db(), PURGED_KEY)
            .map_err(storage)?
            .flatten();
    }
    Ok((applied.membership().clone(), last))
}

/// What `store` (node `node_id`'s) holds.
pub fn inspect(store: &RecordStore, node_id: NodeId) -> Result<RecoveryView, Error> {
    let db = store.db();
    let (membership, last) = effective_membership(store)?;
    let vote: Option<Vote<NodeId>> = meta_get(db, VOTE_KEY).map_err(storage)?;
    let committed: Option<LogId<NodeId>> = meta_get::<Option<LogId<NodeId>>>(db, COMMITTED_KEY)
        .map_err(storage)?
        .flatten();
    let applied: Option<LogId<NodeId>> = meta_get::<Option<LogId<NodeId>>>(db, APPLIED_KEY)
        .map_err(storage)?
        .flatten();
    let group: Option<GroupId> = meta_get(db, GROUP_KEY).map_err(storage)?;
    let voters = membership.get_joint_config().clone();
    Ok(RecoveryView {
        node_id,
        group,
        last_log: last.map(|l| (l.leader_id.term, l.index)),
        committed_index: committed.map(|l| l.index),
        applied_index: applied.map(|l| l.index),
        term: vote.map_or(0, |v| v.leader_id.term),
        change_pending: voters.len() > 1,
        learners: membership.learner_ids().collect(),
        voters,
    })
}

/// Makes node `node_id` the only voter of its group, on its own stopped
/// store. Returns what it holds afterwards.
pub fn make_sole_voter(store: &RecordStore, node_id: NodeId) -> Result<RecoveryView, Error> {
    let refuse = |reason: String| Error::Store {
        path: store.path().to_path_buf(),
        reason,
    };
    let before = inspect(store, node_id)?;
    if before.group.is_none() {
        return Err(refuse(
            "this replica belongs to no group; there is nothing to recover".into(),
        ));
    }
    let (membership, last) = effective_membership(store)?;
    let Some(me) = membership.get_node(&node_id).cloned() else {
        return Err(refuse(format!(
            "node {node_id} is not in its group's membership (voters {:?}); recover from a \
             replica that is",
            before.voters
        )));
    };
    if before.voters == vec![BTreeSet::from([node_id])] {
        return Err(refuse(format!(
            "node {node_id} is already the only voter; start it"
        )));
    }
    // One past every term this replica has seen: no leader ever used it,
    // so no replica holds another entry under this leader id.
    let term = before.term.max(before.last_log.map_or(0, |l| l.0)) + 1;
    let index = last.map_or(1, |l| l.index + 1);
    let entry: Entry<VaultRaft> = Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, node_id), index),
        payload: EntryPayload::Membership(Membership::new(
            vec![BTreeSet::from([node_id])],
            BTreeMap::from([(node_id, me)]),
        )),
    };
    let bytes = codec::encode("log entry", &entry).map_err(storage)?;
    let txn = store.db().begin_write().map_err(storage)?;
    {
        let mut log = txn.open_table(LOG).map_err(storage)?;
        log.insert(index, bytes.as_slice()).map_err(storage)?;
    }
    txn.commit().map_err(storage)?;
    meta_put(store.db(), VOTE_KEY, &Vote::new(term, node_id)).map_err(storage)?;
    tracing::warn!(
        node = node_id,
        term,
        index,
        old_voters = ?before.voters,
        "recovered: this replica is now its group's only voter"
    );
    inspect(store, node_id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn put_entry(store: &RecordStore, e: &Entry<VaultRaft>) {
        let txn = store.db().begin_write().unwrap();
        {
            let mut log = txn.open_table(LOG).unwrap();
            log.insert(e.log_id.index, codec::encode("e", e).unwrap().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }

    fn node(i: u64) -> VaultNode {
        VaultNode {
            raft_addr: format!("10.0.0.{i}:7180"),
            ..Default::default()
        }
    }

    #[test]
    fn a_stuck_change_becomes_a_group_of_one_under_a_new_term() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordStore::open(&dir.path().join("s.redb")).unwrap();
        meta_put(store.db(), GROUP_KEY, &GroupId([1; 16])).unwrap();
        let lid = |t, n, i| LogId::new(CommittedLeaderId::new(t, n), i);
        // {1,2,3} becoming {1,2,3,4}, never committed; then a blank.
        put_entry(
            &store,
            &Entry {
                log_id: lid(3, 1, 5),
                payload: EntryPayload::Membership(Membership::new(
                    vec![BTreeSet::from([1, 2, 3]), BTreeSet::from([1, 2, 3, 4])],
                    (1..=4).map(|i| (i, node(i))).collect::<BTreeMap<_, _>>(),
                )),
            },
        );
        put_entry(
            &store,
            &Entry {
                log_id: lid(3, 1, 6),
                payload: EntryPayload::Blank,
            },
        );
        meta_put(store.db(), VOTE_KEY, &Vote::new(4, 2)).unwrap();

        let v = inspect(&store, 1).unwrap();
        assert!(v.change_pending);
        assert_eq!(v.last_log, Some((3, 6)));
        assert_eq!(v.term, 4);

        let e = make_sole_voter(&store, 9).unwrap_err().to_string();
        assert!(e.contains("not in its group's membership"), "{e}");

        let after = make_sole_voter(&store, 1).unwrap();
        assert_eq!(after.voters, vec![BTreeSet::from([1])]);
        assert!(!after.change_pending);
        assert_eq!(after.last_log, Some((5, 7)));
        assert_eq!(after.term, 5);
        let (m, _) = effective_membership(&store).unwrap();
        assert_eq!(m.get_node(&1), Some(&node(1)));
        assert!(m.get_node(&2).is_none());

        let e = make_sole_voter(&store, 1).unwrap_err().to_string();
        assert!(e.contains("already the only voter"), "{e}");
    }
}
