//! Replication: the vault's commands through an openraft group.
//!
//! The core is unchanged: it commits [`Command`]s through a
//! [`Records`]. [`ReplicatedRecords`] makes that a Raft proposal that returns only
//! once a majority has it durably and the leader has applied it, and makes
//! reads linearizable (a quorum round confirms leadership and the leader
//! waits until it has applied everything committed before the read). A
//! replica that is not the leader, or a leader cut off from its majority,
//! answers nothing from its own state: reads and commits fail as
//! `unavailable` and clients retry.

// openraft's error types are large and fixed by its trait signatures.
#![allow(clippy::result_large_err)]

pub mod agreement;
pub mod codec;
#[cfg(feature = "test-hooks")]
pub mod fuzzing;
pub mod group_commit;
pub mod identity;
pub mod log_command;
pub mod network;
pub mod peer_keys;
pub mod peer_service;
pub mod recovery;
pub mod role;
pub mod storage;
pub mod thread;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::RaftError;
use openraft::Raft;
use protocol_spec::ids::AccountId;
use serde::{Deserialize, Serialize};

use crate::state::command::{ApplyOutcome, Command};
use crate::state::record::StoredRecord;
use crate::state::records::Records;
use crate::state::store::RecordStore;
use crate::Error;

/// How other replicas, chatd and operators reach a replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultNode {
    /// Peer (Raft) listener.
    pub raft_addr: String,
    /// chatd link listener: the leader hint chatd follows.
    pub link_addr: String,
    /// Control listener: where `hsm-vault cluster` commands go.
    pub control_addr: String,
}

/// What applying one log entry produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub enum CommandOutcome {
    /// A blank or membership entry.
    #[default]
    Nothing,
    Record(ApplyOutcome),
    PeerKey(peer_keys::PeerKeyOutcome),
    /// One outcome per command of a [`log_command::LogCommand::Records`].
    Records(Vec<ApplyOutcome>),
}

openraft::declare_raft_types!(
    /// The vault's Raft type configuration.
    pub VaultRaft:
        D = log_command::LogCommand,
        R = CommandOutcome,
        NodeId = u64,
        Node = VaultNode,
);

/// The replicated [`Records`]. Blocking, for the vault's worker threads.
///
/// A commit is acknowledged only once a majority of the voters hold the
/// record it wrote ([`agreement`]), so a replica whose own store was rolled
/// back cannot answer from it.
pub struct ReplicatedRecords {
    raft: Raft<VaultRaft>,
    store: Arc<RecordStore>,
    network: network::PeerNetwork,
    divergence: Arc<agreement::Divergence>,
    /// Commits share log entries ([`group_commit`]).
    commits: group_commit::CommitQueue,
    rt: tokio::runtime::Handle,
    timeout: Duration,
}

impl std::fmt::Debug for ReplicatedRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplicatedRecords")
    }
}

impl ReplicatedRecords {
    pub fn new(
        raft: Raft<VaultRaft>,
        store: Arc<RecordStore>,
        network: network::PeerNetwork,
        divergence: Arc<agreement::Divergence>,
        rt: tokio::runtime::Handle,
        timeout: Duration,
    ) -> Self {
        let commits = {
            let _entered = rt.enter();
            group_commit::CommitQueue::start(raft.clone(), timeout)
        };
        ReplicatedRecords {
            commits,
            raft,
            store,
            network,
            divergence,
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

impl ReplicatedRecords {
    fn refuse_if_diverged(&self) -> Result<(), Error> {
        if self.divergence.found() {
            return Err(Error::Unavailable(
                "this replica's store diverged from the group",
            ));
        }
        Ok(())
    }

    /// The question for the other voters about `account`'s record as of
    /// entry `index` (a read or a commit; [`agreement`]).
    fn confirm_request(
        &self,
        index: u64,
        term: u64,
        account: &AccountId,
        digest: [u8; 32],
    ) -> agreement::ConfirmRequest {
        agreement::ConfirmRequest {
            index,
            term,
            account: account.as_str().to_owned(),
            digest,
            wait_ms: u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX),
        }
    }
}

impl Records for ReplicatedRecords {
    fn read(&self, account: &AccountId) -> Result<Option<StoredRecord>, Error> {
        let raft = self.raft.clone();
        let confirmed = self.rt.block_on(async {
            tokio::time::timeout(self.timeout, raft.ensure_linearizable()).await
        });
        match confirmed {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(leader_error(&e)),
            Err(_) => return Err(Error::Unavailable("no quorum confirmed leadership in time")),
        }
        self.refuse_if_diverged()?;
        // An answer read from this store (a Status, an escrow epoch, a
        // refusal) counts only once a majority holds the same record as of
        // the same entry: a store rolled back on this host answers nothing.
        let (record, applied) = storage::record_as_applied(&self.store, account)?;
        let term = self.raft.metrics().borrow().current_term;
        let digest = agreement::record_digest(account, record.as_ref());
        let req = self.confirm_request(applied, term, account, digest);
        self.rt.block_on(agreement::confirm_read(
            &self.raft,
            &self.network,
            req,
            self.timeout,
        ))?;
        Ok(record)
    }

    /// This replica's applied state, without a quorum round: the core only
    /// builds compare-and-set commits on it (which conflict if it was
    /// stale) or re-reads with [`Records::read`] before answering.
    fn read_for_update(&self, account: &AccountId) -> Result<Option<StoredRecord>, Error> {
        self.store.get(account)
    }

    fn commit(&self, cmd: Command) -> Result<ApplyOutcome, Error> {
        self.refuse_if_diverged()?;
        let account = cmd.account().clone();
        let Command::PutRecord { record, .. } = &cmd;
        let digest = agreement::record_digest(&account, Some(record));
        let started = std::time::Instant::now();
        let committed = self
            .rt
            .block_on(async { tokio::time::timeout(self.timeout, self.commits.commit(cmd)).await })
            .map_err(|_| Error::Unavailable("commit not confirmed by a majority in time"))??;
        if committed.outcome == ApplyOutcome::Applied {
            // Counts only once a majority holds what it wrote.
            let req = self.confirm_request(
                committed.log_id.index,
                committed.log_id.leader_id.term,
                &account,
                digest,
            );
            let left = self.timeout.saturating_sub(started.elapsed());
            self.rt.block_on(agreement::confirm_majority(
                &self.raft,
                &self.network,
                &self.divergence,
                req,
                left.max(Duration::from_millis(100)),
            ))?;
        }
        Ok(committed.outcome)
    }
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
    /// Registered node keys, by node id (filled in by the control plane).
    #[serde(default)]
    pub node_keys: BTreeMap<u64, peer_keys::NodeKey>,
    /// Removed node ids: never served again.
    #[serde(default)]
    pub retired: Vec<u64>,
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
        node_keys: BTreeMap::new(),
        retired: Vec::new(),
    }
}
