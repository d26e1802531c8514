//! Replication: the vault's commands through an openraft group.
//!
//! The core is unchanged: it commits [`Command`]s through a
//! [`RecordLog`]. [`RaftLog`] makes that a Raft proposal that returns only
//! once a majority has it durably and the leader has applied it, and makes
//! reads linearizable (a quorum round confirms leadership and the leader
//! waits until it has applied everything committed before the read). A
//! replica that is not the leader, or a leader cut off from its majority,
//! answers nothing from its own state: reads and commits fail as
//! `unavailable` and clients retry.

// openraft's error types are large and fixed by its trait signatures.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod identity;
pub mod network;
pub mod store;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{Raft, ServerState};
use protocol_spec::ids::AccountId;
use serde::{Deserialize, Serialize};
use service_kit::admin::Health;
use tokio::sync::watch;

use crate::command::{ApplyOutcome, Command};
use crate::log::RecordLog;
use crate::record::StoredRecord;
use crate::server::link::Role;
use crate::store::RecordStore;
use crate::Error;

/// How other replicas, chatd and operators reach a replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultNode {
    /// Peer (Raft) listener.
    pub raft_addr: String,
    /// chatd link listener: the leader hint chatd follows.
    pub link_addr: String,
    /// Admin listener: where `hsm-vault cluster` commands go.
    pub admin_addr: String,
}

/// What applying one log entry produced (nothing for blank and membership
/// entries).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CommandOutcome(pub Option<ApplyOutcome>);

openraft::declare_raft_types!(
    /// The vault's Raft type configuration.
    pub VaultRaft:
        D = Command,
        R = CommandOutcome,
        NodeId = u64,
        Node = VaultNode,
);

/// The replicated [`RecordLog`]. Blocking, for the vault's worker threads.
pub struct RaftLog {
    raft: Raft<VaultRaft>,
    store: Arc<RecordStore>,
    rt: tokio::runtime::Handle,
    timeout: Duration,
}

impl std::fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaftLog")
    }
}

impl RaftLog {
    pub fn new(
        raft: Raft<VaultRaft>,
        store: Arc<RecordStore>,
        rt: tokio::runtime::Handle,
        timeout: Duration,
    ) -> Self {
        RaftLog {
            raft,
            store,
            rt,
            timeout,
        }
    }
}

fn leader_error<E>(e: &RaftError<u64, E>) -> Error
where
    E: std::error::Error,
{
    match e {
        RaftError::APIError(_) => Error::NotLeader { leader_hint: None },
        RaftError::Fatal(_) => Error::Unavailable("raft stopped"),
    }
}

impl RecordLog for RaftLog {
    fn read(&self, account: &AccountId) -> Result<Option<StoredRecord>, Error> {
        let raft = self.raft.clone();
        let confirmed = self.rt.block_on(async {
            tokio::time::timeout(self.timeout, raft.ensure_linearizable()).await
        });
        match confirmed {
            Ok(Ok(_)) => self.store.get(account),
            Ok(Err(e)) => Err(leader_error(&e)),
            Err(_) => Err(Error::Unavailable("no quorum confirmed leadership in time")),
        }
    }

    /// This replica's applied state, without a quorum round: the core only
    /// builds compare-and-set commits on it (which conflict if it was
    /// stale) or re-reads with [`RecordLog::read`] before answering.
    fn read_for_update(&self, account: &AccountId) -> Result<Option<StoredRecord>, Error> {
        self.store.get(account)
    }

    fn commit(&self, cmd: Command) -> Result<ApplyOutcome, Error> {
        let raft = self.raft.clone();
        let written = self
            .rt
            .block_on(async { tokio::time::timeout(self.timeout, raft.client_write(cmd)).await });
        match written {
            Ok(Ok(resp)) => resp
                .data
                .0
                .ok_or(Error::Unavailable("command produced no outcome")),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(Error::NotLeader {
                    leader_hint: f.leader_node.map(|n| n.link_addr),
                })
            }
            Ok(Err(e)) => Err(leader_error(&e)),
            // The proposal may still commit later; the caller treats it as
            // not acknowledged (a counted attempt stays spent either way).
            Err(_) => Err(Error::Unavailable(
                "commit not confirmed by a majority in time",
            )),
        }
    }
}

/// Follows Raft's view of the cluster: publishes this replica's role for
/// the link listener (leader, or the leader's link address), keeps
/// `/readyz` honest (false without a reachable quorum), and exports the
/// `vault_raft_*` metrics.
pub fn watch_role(
    raft: &Raft<VaultRaft>,
    health: Arc<Health>,
    election_timeout: Duration,
) -> watch::Receiver<Role> {
    let (tx, rx) = watch::channel(Role {
        leader: false,
        leader_hint: None,
    });
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        // Also tick: quorum contact ages even when nothing else changes.
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
            }
            let m = metrics.borrow().clone();
            let leader = m.state == ServerState::Leader;
            let hint = m.current_leader.and_then(|id| {
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.link_addr.clone())
            });
            let quorum_fresh = match (leader, m.millis_since_quorum_ack) {
                (true, Some(ms)) => Duration::from_millis(ms) < election_timeout * 2,
                (true, None) => false,
                (false, _) => m.current_leader.is_some(),
            };
            if quorum_fresh {
                health.set_ready();
            } else {
                health.set_not_ready("no reachable quorum");
            }
            let role = Role {
                leader: leader && quorum_fresh,
                leader_hint: if leader { None } else { hint },
            };
            tx.send_if_modified(|r| {
                if *r != role {
                    *r = role;
                    true
                } else {
                    false
                }
            });
            metrics::gauge!("vault_raft_term").set(m.current_term as f64);
            metrics::gauge!("vault_raft_is_leader").set(if leader { 1.0 } else { 0.0 });
            metrics::gauge!("vault_raft_leader").set(m.current_leader.map_or(-1.0, |l| l as f64));
            let last_log = m.last_log_index.unwrap_or(0);
            let applied = m.last_applied.map_or(0, |l| l.index);
            metrics::gauge!("vault_raft_last_log_index").set(last_log as f64);
            metrics::gauge!("vault_raft_last_applied_index").set(applied as f64);
            metrics::gauge!("vault_raft_apply_lag").set(last_log.saturating_sub(applied) as f64);
            metrics::gauge!("vault_raft_voters")
                .set(m.membership_config.membership().voter_ids().count() as f64);
        }
    });
    rx
}

/// Membership and health of the group, as `hsm-vault cluster status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node_id: u64,
    /// The group this replica belongs to (filled in by the admin route).
    #[serde(default)]
    pub group: Option<identity::GroupId>,
    pub state: String,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub nodes: BTreeMap<u64, VaultNode>,
    pub millis_since_quorum_ack: Option<u64>,
}

pub fn status(raft: &Raft<VaultRaft>) -> ClusterStatus {
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    ClusterStatus {
        node_id: m.id,
        group: None,
        state: format!("{:?}", m.state),
        term: m.current_term,
        leader: m.current_leader,
        last_log_index: m.last_log_index,
        last_applied_index: m.last_applied.map(|l| l.index),
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        nodes: membership.nodes().map(|(id, n)| (*id, n.clone())).collect(),
        millis_since_quorum_ack: m.millis_since_quorum_ack,
    }
}
