//! What each control request does (SPEC.md 5.6), with the checks that keep
//! a group able to reach a quorum:
//!
//! - `add-learner` only for a replica that answers on its peer address as
//!   the node it claims to be, with this fleet's peer key, in this group or
//!   in none, proving a node key the group does not refuse (the handshake
//!   proves it); that key is registered before the replica is added;
//! - `remove` retires the removed node's id and key: no replica serves it
//!   again ([`crate::raft::peer_keys`]);
//! - `promote` only for a learner that has caught up and answers now;
//! - `promote` and `remove` only if the voters of the new configuration
//!   that answer now are a quorum of it: a change that would leave no
//!   reachable quorum is refused before it is proposed, because once
//!   proposed it could never be committed, and no other change could be
//!   made after it.
//!
//! Membership changes go to the leader; elsewhere the answer names it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::{ChangeMembers, Raft};
use serde_json::json;

use super::protocol::{ControlAnswer, ControlRequest, SelfInfo};
use crate::raft::identity::PeerIdentity;
use crate::raft::log_command::LogCommand;
use crate::raft::network::PeerNetwork;
use crate::raft::peer_keys::{NodeKey, PeerKeyChange, PeerKeyOutcome, PeerKeys};
use crate::raft::{status, ClusterStatus, CommandOutcome, VaultNode, VaultRaft};

/// How long `add-learner` waits for the new replica to catch up before
/// answering (it stays a learner and keeps catching up either way).
pub const LEARNER_CATCH_UP_WAIT: Duration = Duration::from_secs(60);
/// How long a membership change may take to commit before the operator is
/// told it is stuck.
const CHANGE_COMMIT_WAIT: Duration = Duration::from_secs(20);
/// How long a replica has to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How far behind the leader's log a learner may be and still count as
/// caught up.
const CATCH_UP_SLACK: u64 = 100;

/// The membership side of one replica.
pub struct Membership {
    pub raft: Raft<VaultRaft>,
    /// This replica as it reports itself (its group is read live).
    pub me: SelfInfo,
    pub identity: Arc<PeerIdentity>,
    /// To probe other replicas the way Raft reaches them.
    pub network: PeerNetwork,
    /// The group's node keys, as this replica applied them.
    pub keys: Arc<PeerKeys>,
}

/// How often the leader looks for members whose node key is not
/// registered yet (itself after `cluster init`, every member of a group
/// formed before node keys).
const REGISTER_EVERY: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

fn refused(reason: impl Into<String>) -> ControlAnswer {
    ControlAnswer::Refused(reason.into())
}

impl Membership {
    /// Runs one request from the operator whose key has `operator` as its
    /// fingerprint (for the audit log).
    pub async fn handle(&self, req: ControlRequest, operator: &str) -> ControlAnswer {
        if req.changes_membership() {
            if let Some(a) = self.not_leader() {
                return a;
            }
        }
        let label = req.label();
        let answer = match req {
            ControlRequest::WhoAreYou => ControlAnswer::Done(json!(self.who_am_i())),
            ControlRequest::Status => ControlAnswer::Done(json!(self.status())),
            ControlRequest::Init => self.init().await,
            ControlRequest::AddLearner { node } => self.add_learner(node).await,
            ControlRequest::Promote { node_id } => self.promote(node_id).await,
            ControlRequest::Remove { node_id } => self.remove(node_id).await,
            ControlRequest::Elect => match self.raft.trigger().elect().await {
                Ok(()) => ControlAnswer::Done(json!({ "campaigning": self.me.node_id })),
                Err(e) => refused(format!("cannot campaign: {e}")),
            },
        };
        let outcome = match &answer {
            ControlAnswer::Done(_) => "done",
            ControlAnswer::Refused(_) => "refused",
            ControlAnswer::NotLeader(_) => "not_leader",
        };
        metrics::counter!("vault_control_requests_total", "op" => label, "outcome" => outcome)
            .increment(1);
        if label != "status" && label != "who_are_you" {
            match &answer {
                ControlAnswer::Refused(reason) => {
                    tracing::warn!(operator, op = label, reason, "control request refused")
                }
                _ => tracing::info!(operator, op = label, outcome, "control request"),
            }
        }
        answer
    }

    fn who_am_i(&self) -> SelfInfo {
        SelfInfo {
            group: self.identity.group(),
            ..self.me.clone()
        }
    }

    fn status(&self) -> ClusterStatus {
        let keys = self.keys.table();
        ClusterStatus {
            group: self.identity.group(),
            node_keys: keys.registered,
            retired: keys.retired.into_keys().collect(),
            ..status(&self.raft)
        }
    }

    /// Proposes one change to the node key table and says how it applied.
    async fn propose_key(&self, change: PeerKeyChange) -> Result<(), String> {
        match self.raft.client_write(LogCommand::PeerKey(change)).await {
            Ok(r) => match r.data {
                CommandOutcome::PeerKey(PeerKeyOutcome::Applied) => Ok(()),
                CommandOutcome::PeerKey(PeerKeyOutcome::Refused(why)) => Err(why),
                other => Err(format!("unexpected outcome {other:?}")),
            },
            Err(e) => Err(e.to_string()),
        }
    }

    /// While this replica leads: registers its own node key, and the key
    /// each member with none registered proved on a connection. Runs until
    /// the process ends.
    pub async fn keep_keys_registered(&self) {
        let mut tick = tokio::time::interval(REGISTER_EVERY);
        loop {
            tick.tick().await;
            let s = status(&self.raft);
            if s.leader != Some(s.node_id) {
                continue;
            }
            let members: Vec<u64> = s.voters.iter().chain(&s.learners).copied().collect();
            let mut pending: Vec<(u64, NodeKey)> = self.keys.unregistered_members(&members);
            let table = self.keys.table();
            if !table.registered.contains_key(&s.node_id) && !table.retired.contains_key(&s.node_id)
            {
                pending.push((s.node_id, self.network.node_key()));
            }
            for (node, key) in pending {
                match self
                    .propose_key(PeerKeyChange::Register { node, key })
                    .await
                {
                    Ok(()) => tracing::info!(node, key = %key.fingerprint(), "node key registered"),
                    Err(e) => tracing::warn!(node, "node key not registered: {e}"),
                }
            }
        }
    }

    fn not_leader(&self) -> Option<ControlAnswer> {
        let s = status(&self.raft);
        if s.leader == Some(s.node_id) {
            return None;
        }
        let leader = s
            .leader
            .and_then(|l| s.nodes.get(&l))
            .map(|n| n.control_addr.clone());
        Some(ControlAnswer::NotLeader(leader))
    }

    async fn init(&self) -> ControlAnswer {
        // The group id first: a replica that already belongs to a group
        // (made here before, or joined by a leader reaching it) must not
        // start a second one.
        let group = match self.identity.create_group() {
            Ok(g) => g,
            Err(e) => return refused(format!("cannot initialise: {e}")),
        };
        let members = BTreeMap::from([(self.me.node_id, self.me.node.clone())]);
        match self.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(node = self.me.node_id, %group, "cluster initialised");
                ControlAnswer::Done(json!({ "initialised": self.me.node_id, "group": group }))
            }
            Err(e) => refused(format!("cannot initialise: {e}")),
        }
    }

    /// Whether replica `id` answers at `node`'s peer address as itself,
    /// in this group (or joins it), and the node key it proved.
    async fn probe(&self, id: u64, node: &VaultNode) -> Result<NodeKey, String> {
        self.network
            .probe(id, &node.raft_addr, PROBE_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    }

    /// The voters of `voters` (besides this replica) that answer a probe
    /// now, and this replica.
    async fn answering(&self, voters: &BTreeSet<u64>) -> BTreeSet<u64> {
        let s = status(&self.raft);
        let mut probes = tokio::task::JoinSet::new();
        for id in voters.iter().copied().filter(|id| *id != s.node_id) {
            let Some(node) = s.nodes.get(&id).cloned() else {
                continue;
            };
            let network = self.network.clone();
            probes.spawn(async move {
                let ok = network
                    .probe(id, &node.raft_addr, PROBE_TIMEOUT)
                    .await
                    .is_ok();
                (id, ok)
            });
        }
        let mut up = BTreeSet::from([s.node_id]);
        while let Some(Ok((id, ok))) = probes.join_next().await {
            if ok {
                up.insert(id);
            }
        }
        up.retain(|id| voters.contains(id));
        up
    }

    /// Refuses a change to `new_voters` whose answering voters are not a
    /// quorum of it.
    async fn check_quorum(&self, new_voters: &BTreeSet<u64>) -> Result<(), String> {
        let up = self.answering(new_voters).await;
        let quorum = new_voters.len() / 2 + 1;
        if up.len() < quorum {
            let down: Vec<u64> = new_voters.difference(&up).copied().collect();
            return Err(format!(
                "refused: the new voters would be {new_voters:?}, which need {quorum} to agree, \
                 but only {up:?} answer now (not {down:?}); a change that cannot reach a quorum \
                 could never complete and would block every later one. Bring the missing \
                 replicas back first"
            ));
        }
        Ok(())
    }

    async fn add_learner(&self, who: SelfInfo) -> ControlAnswer {
        let mine = self.identity.group();
        if let Some(theirs) = who.group.filter(|g| Some(*g) != mine) {
            return refused(format!(
                "node {} belongs to another group ({theirs}; this group is {}). It was \
                 initialised on its own or serves another group: stop it, move its data folder \
                 aside, start it empty and add it again",
                who.node_id,
                mine.map_or_else(|| "none".into(), |g| g.to_string())
            ));
        }
        let s = status(&self.raft);
        if s.voters.contains(&who.node_id) {
            return refused(format!("node {} is a voter already", who.node_id));
        }
        if s.nodes.get(&who.node_id).is_some_and(|n| *n != who.node) {
            return refused(format!(
                "node id {} is taken by a learner at other addresses; remove it first, or give \
                 the new replica another node id",
                who.node_id
            ));
        }
        if self.keys.table().retired.contains_key(&who.node_id) {
            return refused(format!(
                "node id {} was removed from this group and is never used again: give the \
                 replica a new node_id (and an empty data folder)",
                who.node_id
            ));
        }
        // Only a replica that answers there, as that node, with this
        // fleet's peer key, in this group or in none, with a node key the
        // group does not refuse, becomes a learner; its key is registered
        // first.
        let key = match self.probe(who.node_id, &who.node).await {
            Ok(k) => k,
            Err(e) => {
                return refused(format!(
                    "node {} does not answer as a replica of this fleet at {}: {e}",
                    who.node_id, who.node.raft_addr
                ))
            }
        };
        if let Err(e) = self
            .propose_key(PeerKeyChange::Register {
                node: who.node_id,
                key,
            })
            .await
        {
            return refused(format!(
                "cannot register node {}'s node key {}: {e}",
                who.node_id,
                key.fingerprint()
            ));
        }
        let added = tokio::time::timeout(
            LEARNER_CATCH_UP_WAIT,
            self.raft.add_learner(who.node_id, who.node.clone(), true),
        )
        .await;
        match added {
            Err(_) => refused(format!(
                "node {} is a learner now but has not caught up within {} s; check that it is \
                 reachable from this replica (`cluster status`, and both replicas' logs)",
                who.node_id,
                LEARNER_CATCH_UP_WAIT.as_secs()
            )),
            Ok(Ok(_)) => {
                tracing::info!(node = who.node_id, key = %key.fingerprint(), "learner added and caught up");
                ControlAnswer::Done(json!({ "learner": who.node_id, "node_key": key }))
            }
            Ok(Err(e)) => refused(format!("cannot add learner: {e}")),
        }
    }

    async fn promote(&self, id: u64) -> ControlAnswer {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let mut voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters.contains(&id) {
            return refused(format!("node {id} is already a voter"));
        }
        if !membership.learner_ids().any(|l| l == id) {
            return refused(format!(
                "node {id} is not a learner; add it with add-learner first"
            ));
        }
        let last = m.last_log_index.unwrap_or(0);
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&id).copied().flatten())
            .map_or(0, |l| l.index);
        if last.saturating_sub(matched) > CATCH_UP_SLACK {
            return refused(format!(
                "node {id} has not caught up (it holds the log up to {matched}, the leader up to \
                 {last}); wait and try again"
            ));
        }
        voters.insert(id);
        if let Err(e) = self.check_quorum(&voters).await {
            return refused(e);
        }
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await
    }

    async fn remove(&self, id: u64) -> ControlAnswer {
        let s = status(&self.raft);
        let mut voters: BTreeSet<u64> = s.voters.iter().copied().collect();
        let removed = if s.learners.contains(&id) {
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                .await
        } else if voters.remove(&id) {
            if voters.is_empty() {
                return refused("cannot remove the last voter");
            }
            if let Err(e) = self.check_quorum(&voters).await {
                return refused(e);
            }
            self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
                .await
        } else {
            let table = self.keys.table();
            if table.retired.contains_key(&id) {
                return refused(format!("node {id} was removed already"));
            }
            if !table.registered.contains_key(&id) {
                return refused(format!("node {id} is not a member"));
            }
            // Out of the membership, but its key was never retired (a
            // remove interrupted by a leader change): finish it.
            ControlAnswer::Done(json!({ "voters": s.voters }))
        };
        let ControlAnswer::Done(mut done) = removed else {
            return removed;
        };
        // Revoke: no replica serves this node id or its key again.
        match self.propose_key(PeerKeyChange::Retire { node: id }).await {
            Ok(()) => {
                tracing::info!(node = id, "node removed and its key retired");
                done["retired"] = json!(id);
                ControlAnswer::Done(done)
            }
            Err(e) => refused(format!(
                "node {id} is out of the group, but its node key could not be retired ({e}); \
                 run `cluster remove --node-id {id}` again to finish"
            )),
        }
    }

    /// Applies a checked change as a delta (not a replacement of the whole
    /// voter set), so two changes cannot undo each other.
    async fn change(&self, change: ChangeMembers<u64, VaultNode>) -> ControlAnswer {
        let changed = tokio::time::timeout(
            CHANGE_COMMIT_WAIT,
            self.raft.change_membership(change, false),
        )
        .await;
        let Ok(changed) = changed else {
            return refused(format!(
                "the change was proposed but has not committed within {} s: the replicas it \
                 needs do not answer. It completes by itself when they come back, and no other \
                 change is accepted until then. If they are gone for good, the group can only \
                 be recovered by hand: `hsm-vault cluster recover` on a stopped survivor (see \
                 its --help)",
                CHANGE_COMMIT_WAIT.as_secs()
            ));
        };
        match changed {
            Ok(r) => {
                let voters: BTreeSet<u64> = r
                    .membership()
                    .as_ref()
                    .map(|m| m.voter_ids().collect())
                    .unwrap_or_default();
                ControlAnswer::Done(json!({ "voters": voters }))
            }
            Err(e) => {
                let stuck = if matches!(
                    &e,
                    openraft::error::RaftError::APIError(
                        openraft::error::ClientWriteError::ChangeMembershipError(
                            openraft::error::ChangeMembershipError::InProgress(_)
                        )
                    )
                ) {
                    " (an earlier change has not committed: it completes when the replicas it \
                     needs answer; if they are gone for good, see `hsm-vault cluster recover \
                     --help`)"
                } else {
                    ""
                };
                refused(format!("membership change failed: {e}{stuck}"))
            }
        }
    }
}
