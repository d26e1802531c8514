//! Group commit: concurrent commits share one log entry.
//!
//! openraft 0.9 runs each proposal through its core on its own: one log
//! write (an fsync) per proposal, during which the core handles nothing
//! else, so the leader committed at most one record per fsync whatever the
//! load or the distance between replicas. Here the vault's commits queue up
//! and leave as one entry ([`LogCommand::Records`]) each time one of
//! [`PROPOSALS_IN_FLIGHT`] slots frees: a burst of N concurrent commits
//! costs a few fsyncs and replication rounds, not N. Each command still
//! applies as its own compare-and-set, in order, and no entry carries two
//! commands of one account, so every commit's outcome and its agreement
//! ([`super::agreement`]) are exactly those of an entry of its own.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{LogId, Raft};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::log_command::{LogCommand, MAX_RECORDS_PER_ENTRY};
use super::{CommandOutcome, VaultRaft};
use crate::state::command::{ApplyOutcome, Command};
use crate::Error;

/// Proposals in flight at once. One is replicating while the next fills
/// and is written to the leader's log; more would only add fsyncs.
pub const PROPOSALS_IN_FLIGHT: usize = 2;
/// Commits waiting for a proposal; past that a commit is refused at once
/// as `unavailable` (backpressure, not an unbounded queue).
const QUEUED_COMMITS: usize = 16 * MAX_RECORDS_PER_ENTRY;

/// A committed and applied command: the entry that carried it and what
/// applying it did.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    pub log_id: LogId<u64>,
    pub outcome: ApplyOutcome,
}

/// Why a proposal did not commit (one value for all its commands).
#[derive(Debug, Clone)]
enum Refused {
    NotLeader(Option<String>),
    Stopped,
    NoOutcome,
    Timeout,
}

impl From<Refused> for Error {
    fn from(r: Refused) -> Self {
        match r {
            Refused::NotLeader(leader_hint) => Error::NotLeader { leader_hint },
            Refused::Stopped => Error::Unavailable("raft stopped"),
            Refused::NoOutcome => Error::Unavailable("command produced no record outcome"),
            // The proposal may still commit later; the caller treats it as
            // not acknowledged (a counted attempt stays spent either way).
            Refused::Timeout => Error::Unavailable("commit not confirmed by a majority in time"),
        }
    }
}

struct Proposal {
    cmd: Command,
    done: oneshot::Sender<Result<Committed, Refused>>,
}

/// Where the vault's commits queue for the next proposal.
#[derive(Clone)]
pub struct CommitQueue {
    tx: mpsc::Sender<Proposal>,
}

impl std::fmt::Debug for CommitQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitQueue")
    }
}

impl CommitQueue {
    /// Starts the proposing task on the current runtime; each proposal may
    /// take `timeout` to commit.
    pub fn start(raft: Raft<VaultRaft>, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel(QUEUED_COMMITS);
        tokio::spawn(propose_batches(raft, rx, timeout));
        CommitQueue { tx }
    }

    /// Commits `cmd` with whatever else is queued.
    pub async fn commit(&self, cmd: Command) -> Result<Committed, Error> {
        let (done, committed) = oneshot::channel();
        if self.tx.try_send(Proposal { cmd, done }).is_err() {
            metrics::counter!("vault_overloaded_total").increment(1);
            return Err(Error::Unavailable("too many commits queued"));
        }
        match committed.await {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::Unavailable("raft stopped")),
        }
    }
}

async fn propose_batches(
    raft: Raft<VaultRaft>,
    mut queue: mpsc::Receiver<Proposal>,
    timeout: Duration,
) {
    let slots = Arc::new(Semaphore::new(PROPOSALS_IN_FLIGHT));
    // Commands of an account already in the batch wait for the next one.
    let mut deferred: VecDeque<Proposal> = VecDeque::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        if deferred.is_empty() {
            match queue.recv().await {
                Some(p) => deferred.push_back(p),
                None => return,
            }
        }
        let mut batch: Vec<Proposal> = Vec::new();
        let mut accounts = HashSet::new();
        let mut later = VecDeque::new();
        let incoming = std::iter::from_fn(|| queue.try_recv().ok());
        for p in deferred.drain(..).chain(incoming) {
            if p.done.is_closed() {
                continue; // its commit gave up waiting
            }
            if accounts.insert(p.cmd.account().clone()) {
                batch.push(p);
            } else {
                later.push_back(p);
            }
            if batch.len() == MAX_RECORDS_PER_ENTRY {
                break;
            }
        }
        deferred = later;
        if batch.is_empty() {
            continue;
        }
        metrics::histogram!("vault_commit_batch_size").record(batch.len() as f64);
        let raft = raft.clone();
        tokio::spawn(async move {
            let _slot = slot;
            propose(&raft, batch, timeout).await;
        });
    }
}

/// Proposes `batch` as one entry and tells each command what became of it.
async fn propose(raft: &Raft<VaultRaft>, batch: Vec<Proposal>, timeout: Duration) {
    let (cmds, waiting): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|p| (p.cmd, p.done)).unzip();
    let n = cmds.len();
    let entry = match <[Command; 1]>::try_from(cmds) {
        Ok([one]) => LogCommand::Record(one),
        Err(cmds) => LogCommand::Records(cmds),
    };
    let written = tokio::time::timeout(timeout, raft.client_write(entry)).await;
    let committed = match written {
        Ok(Ok(resp)) => match resp.data {
            CommandOutcome::Record(o) if n == 1 => Ok((resp.log_id, vec![o])),
            CommandOutcome::Records(os) if os.len() == n => Ok((resp.log_id, os)),
            _ => Err(Refused::NoOutcome),
        },
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(Refused::NotLeader(f.leader_node.map(|n| n.link_addr)))
        }
        Ok(Err(RaftError::APIError(_))) => Err(Refused::NotLeader(None)),
        Ok(Err(RaftError::Fatal(_))) => Err(Refused::Stopped),
        Err(_) => Err(Refused::Timeout),
    };
    match committed {
        Ok((log_id, outcomes)) => {
            for (done, outcome) in waiting.into_iter().zip(outcomes) {
                let _ = done.send(Ok(Committed { log_id, outcome }));
            }
        }
        Err(why) => {
            for done in waiting {
                let _ = done.send(Err(why.clone()));
            }
        }
    }
}
