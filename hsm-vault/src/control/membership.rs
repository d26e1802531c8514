//! What each control request does (SPEC.md 5.6), with the checks that keep
//! a group able to reach a quorum:
//!
//! - `add-learner` only for a replica that answers on its peer address as
//!   the node it claims to be, with this fleet's peer key, in this group or
//!   in none (the handshake proves it);
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
use crate::raft::network::PeerNetwork;
use crate::raft::{status, ClusterStatus, VaultNode, VaultRaft};

/// How long `add-learner` waits for the new replica to catch up before
/// answering (it stays a learner and keeps catching up either way).
pub const LEARNER_CATCH_UP_WAIT: Duration = Duration::from_secs(60);
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
}

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
        ClusterStatus {
            group: self.identity.group(),
            ..status(&self.raft)
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
    /// in this group (or joins it).
    async fn probe(&self, id: u64, node: &VaultNode) -> Result<(), String> {
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
        // Only a replica that answers there, as that node, with this
        // fleet's peer key, in this group or in none, becomes a learner.
        if let Err(e) = self.probe(who.node_id, &who.node).await {
            return refused(format!(
                "node {} does not answer as a replica of this fleet at {}: {e}",
                who.node_id, who.node.raft_addr
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
                tracing::info!(node = who.node_id, "learner added and caught up");
                ControlAnswer::Done(json!({ "learner": who.node_id }))
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
        if s.learners.contains(&id) {
            return self
                .change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                .await;
        }
        if !voters.remove(&id) {
            return refused(format!("node {id} is not a member"));
        }
        if voters.is_empty() {
            return refused("cannot remove the last voter");
        }
        if let Err(e) = self.check_quorum(&voters).await {
            return refused(e);
        }
        self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
            .await
    }

    /// Applies a checked change as a delta (not a replacement of the whole
    /// voter set), so two changes cannot undo each other.
    async fn change(&self, change: ChangeMembers<u64, VaultNode>) -> ControlAnswer {
        match self.raft.change_membership(change, false).await {
            Ok(r) => {
                let voters: BTreeSet<u64> = r
                    .membership()
                    .as_ref()
                    .map(|m| m.voter_ids().collect())
                    .unwrap_or_default();
                ControlAnswer::Done(json!({ "voters": voters }))
            }
            Err(e) => refused(format!("membership change failed: {e}")),
        }
    }
}
