//! Answers a rolled-back replica cannot give (SPEC.md 5.5).
//!
//! The vault answers from a record it read (KE2 after counting an attempt,
//! `wrapped_K` after a reset). A leader whose own store was edited or rolled
//! back by someone with access to its disk — without the HSM PIN, an older
//! sealed record is still authentic — would read an old counter, and its
//! compare-and-set would apply on its own store while every other replica
//! records a conflict; answering from its own apply outcome, it would hand
//! out the spent attempts again.
//!
//! So a commit counts only once a majority of the voters hold the record it
//! wrote: after the entry is committed and applied here, the leader asks
//! every other voter for the digest of that account's record once they have
//! applied the entry ([`ConfirmRequest`]). It answers the client only when a
//! majority, itself included, hold the same digest. When a majority of the
//! group hold a *different* record while this replica is still the leader of
//! the same term (no other leader can have written meanwhile), this
//! replica's store is the one that diverged: it reports it, stops serving
//! and shuts its Raft node down. A minority that differs is told so,
//! reports its own divergence and shuts its Raft node down too (a replica
//! that serves nothing must not be elected and hold the group).
//!
//! A voter compares only a record the asked entry can still account for:
//! one that no later entry wrote ([`RecentWrites`]). A slow voter applies
//! several commits of one account at once, after the leader asked about
//! the first; its record is then the later one, which says nothing about
//! its store, and it answers [`ConfirmAnswer::Later`].

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::network::RaftNetworkFactory;
use openraft::Raft;
use parking_lot::Mutex;
use protocol_spec::ids::AccountId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::network::PeerNetwork;
use super::VaultRaft;
use crate::state::record::StoredRecord;
use crate::state::store::RecordStore;
use crate::Error;

/// What replicas compare: SHA-256 over a label, the account and the stored
/// record (its version and sealed bytes; random IVs make every write's
/// digest unique), or a marker for "no record".
pub fn record_digest(account: &AccountId, record: Option<&StoredRecord>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"E2EBK record digest v1");
    h.update(account.length_prefixed());
    match record {
        Some(r) => {
            h.update([1]);
            h.update(r.encode());
        }
        None => h.update([0]),
    }
    h.finalize().into()
}

/// The leader's question to a voter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmRequest {
    /// The log index of the committed entry.
    pub index: u64,
    /// The leader's term when it committed it.
    pub term: u64,
    pub account: String,
    /// [`record_digest`] of the record the entry wrote, on the leader.
    pub digest: [u8; 32],
    /// How long the voter may wait to apply the entry before answering.
    pub wait_ms: u32,
}

/// A voter's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfirmAnswer {
    /// Applied through `index`, and holds the same record.
    Same,
    /// Applied through `index`, and holds a different record.
    Differs,
    /// Has not applied `index` in time.
    NotYet,
    /// Has applied a later entry that wrote this account (or cannot tell
    /// whether it did: after a restart or a snapshot), so its record is no
    /// longer the one `index` wrote. Counts neither way.
    Later,
}

/// How many applied writes [`RecentWrites`] remembers (16 bytes each).
const RECENT_WRITES: usize = 1 << 18;

/// Which accounts the entries this replica applied lately wrote, by log
/// index, so a voter asked about entry `i` can tell whether a later entry
/// changed the account since. Kept in memory: after a restart, a snapshot
/// or once older writes are forgotten, it answers "may have" for entries
/// older than what it knows ([`ConfirmAnswer::Later`], never a false
/// `Differs`).
#[derive(Debug, Default)]
pub struct RecentWrites {
    inner: Mutex<Writes>,
}

#[derive(Debug, Default)]
struct Writes {
    /// Writes at or below this index may be missing from `writes`; `None`
    /// until the first entry is applied in this process.
    floor: Option<u64>,
    /// (log index, hash of the account), oldest first.
    writes: VecDeque<(u64, u64)>,
    hasher: RandomState,
}

impl RecentWrites {
    /// Notes that entry `index` wrote `account`'s record. Called in log
    /// order, before the write becomes visible in the store.
    pub fn note(&self, index: u64, account: &AccountId) {
        let mut w = self.inner.lock();
        if w.floor.is_none() {
            w.floor = Some(index.saturating_sub(1));
        }
        let h = w.hasher.hash_one(account.as_str());
        if w.writes.len() >= RECENT_WRITES {
            if let Some((old, _)) = w.writes.pop_front() {
                w.floor = w.floor.max(Some(old));
            }
        }
        w.writes.push_back((index, h));
    }

    /// This process starts from a store applied through `index`: writes up
    /// to it are not known (a no-op once anything is).
    pub fn start_from(&self, index: u64) {
        let mut w = self.inner.lock();
        if w.floor.is_none() {
            w.floor = Some(index);
        }
    }

    /// A snapshot through `index` replaced the store: nothing older is known.
    pub fn reset(&self, index: u64) {
        let mut w = self.inner.lock();
        w.writes.clear();
        w.floor = Some(w.floor.map_or(index, |f| f.max(index)));
    }

    /// Whether an entry after `index` wrote (or may have written)
    /// `account`'s record.
    pub fn written_after(&self, account: &AccountId, index: u64) -> bool {
        let w = self.inner.lock();
        match w.floor {
            Some(floor) if index >= floor => {}
            _ => return true,
        }
        let h = w.hasher.hash_one(account.as_str());
        w.writes
            .iter()
            .rev()
            .take_while(|(i, _)| *i > index)
            .any(|(_, x)| *x == h)
    }
}

/// Whether this replica's store was found to disagree with its group.
#[derive(Debug, Default)]
pub struct Divergence {
    found: AtomicBool,
    what: Mutex<Option<String>>,
}

impl Divergence {
    /// Records what was found (the first finding is kept) and counts it.
    pub fn report(&self, side: &'static str, what: String) {
        metrics::counter!("vault_state_divergence_total", "side" => side).increment(1);
        tracing::error!(side, "{what}");
        let mut w = self.what.lock();
        if w.is_none() {
            *w = Some(what);
        }
        self.found.store(true, Ordering::SeqCst);
    }

    pub fn found(&self) -> bool {
        self.found.load(Ordering::SeqCst)
    }

    pub fn what(&self) -> Option<String> {
        self.what.lock().clone()
    }
}

/// Follower side: for each question, waits (at most its `wait_ms`, capped
/// at `cap`, counted from now) until its entry is applied here, then
/// compares the account's record. One answer per question, in order; the
/// records are read from the store in one go.
pub async fn answer(
    raft: &Raft<VaultRaft>,
    store: &Arc<RecordStore>,
    recent: &RecentWrites,
    reqs: &[ConfirmRequest],
    cap: Duration,
) -> Vec<ConfirmAnswer> {
    let started = tokio::time::Instant::now();
    let mut answers = vec![ConfirmAnswer::NotYet; reqs.len()];
    let mut order: Vec<usize> = (0..reqs.len()).collect();
    order.sort_by_key(|&i| reqs[i].index);
    let mut applied: Vec<(usize, AccountId)> = Vec::with_capacity(reqs.len());
    for i in order {
        let req = &reqs[i];
        let Ok(account) = AccountId::new(req.account.clone()) else {
            answers[i] = ConfirmAnswer::Differs;
            continue;
        };
        let wait = Duration::from_millis(req.wait_ms.into()).min(cap);
        let left = wait.saturating_sub(started.elapsed());
        let done = raft
            .wait(Some(left))
            .applied_index_at_least(Some(req.index), "confirm")
            .await;
        if done.is_ok() {
            applied.push((i, account));
        }
    }
    if applied.is_empty() {
        return answers;
    }
    let store = store.clone();
    let accounts: Vec<AccountId> = applied.iter().map(|(_, a)| a.clone()).collect();
    let records = tokio::task::spawn_blocking(move || {
        accounts
            .iter()
            .map(|a| store.get(a))
            .collect::<Result<Vec<_>, _>>()
    })
    .await;
    let Ok(Ok(records)) = records else {
        return answers;
    };
    for ((i, account), record) in applied.into_iter().zip(records) {
        let req = &reqs[i];
        // Checked after the read: a later write the read saw was noted
        // before it reached the store.
        answers[i] = if recent.written_after(&account, req.index) {
            ConfirmAnswer::Later
        } else if record_digest(&account, record.as_ref()) == req.digest {
            ConfirmAnswer::Same
        } else {
            // Which of the two diverged is decided by the majority; the
            // leader tells a minority that it is one.
            tracing::warn!(%account, index = req.index, "this replica's record differs from the leader's after the same log entry");
            ConfirmAnswer::Differs
        };
    }
    answers
}

/// What the other voters said about one [`ConfirmRequest`].
struct Poll {
    me: u64,
    membership: openraft::Membership<u64, super::VaultNode>,
    majority: usize,
    /// Voters holding the same record, this replica included.
    same: usize,
    differs: Vec<u64>,
    /// Answers still coming.
    asks: tokio::task::JoinSet<(u64, ConfirmAnswer)>,
}

/// Asks every other voter about `req` until a majority (this replica
/// included) hold the same record, or `ttl` passes. `None`: this replica
/// is the group's only voter.
async fn poll(
    raft: &Raft<VaultRaft>,
    network: &PeerNetwork,
    req: &ConfirmRequest,
    ttl: Duration,
) -> Option<Poll> {
    let m = raft.metrics().borrow().clone();
    let me = m.id;
    let membership = m.membership_config.membership().clone();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let majority = voters.len() / 2 + 1;
    if majority <= 1 {
        return None;
    }
    let mut asks = tokio::task::JoinSet::new();
    for id in voters.iter().copied().filter(|id| *id != me) {
        let Some(node) = membership.get_node(&id).cloned() else {
            continue;
        };
        let network = network.clone();
        let req = req.clone();
        asks.spawn(async move { (id, network.confirm_with(id, &node, &req, ttl).await) });
    }
    let (mut same, mut differs) = (1usize, Vec::new());
    let deadline = tokio::time::Instant::now() + ttl;
    while same < majority {
        let next = tokio::time::timeout_at(deadline, asks.join_next()).await;
        let Ok(Some(Ok((id, answer)))) = next else {
            break;
        };
        match answer {
            ConfirmAnswer::Same => same += 1,
            ConfirmAnswer::Differs => differs.push(id),
            ConfirmAnswer::NotYet | ConfirmAnswer::Later => {}
        }
    }
    Some(Poll {
        me,
        membership,
        majority,
        same,
        differs,
        asks,
    })
}

/// Leader side, for a read: the record this replica is about to answer
/// from (as of entry `req.index`) counts once a majority of the voters
/// hold the same one. Unlike a commit, a read that a majority contradicts
/// does not by itself prove this store diverged (a commit that timed out
/// earlier may have reached the others first), so it only refuses to
/// answer; the next commit for the account tells which store is wrong.
pub async fn confirm_read(
    raft: &Raft<VaultRaft>,
    network: &PeerNetwork,
    req: ConfirmRequest,
    ttl: Duration,
) -> Result<(), Error> {
    let Some(mut p) = poll(raft, network, &req, ttl).await else {
        return Ok(());
    };
    p.asks.abort_all();
    if p.same >= p.majority {
        return Ok(());
    }
    if p.differs.len() >= p.majority {
        metrics::counter!("vault_state_divergence_total", "side" => "read").increment(1);
        tracing::error!(
            account = %req.account,
            index = req.index,
            voters = ?p.differs,
            "a majority of the group hold a different record of this account than this replica: \
             not answering from it (if it recurs, this replica's store was edited or rolled back)"
        );
        return Err(Error::Unavailable(
            "a majority of the group hold a different record than this replica",
        ));
    }
    Err(Error::Unavailable(
        "a majority did not confirm this replica's record in time",
    ))
}

/// Leader side: the commit of `req` counts once a majority of the voters,
/// this replica included, hold the record it wrote.
pub async fn confirm_majority(
    raft: &Raft<VaultRaft>,
    network: &PeerNetwork,
    divergence: &Arc<Divergence>,
    req: ConfirmRequest,
    ttl: Duration,
) -> Result<(), Error> {
    let Some(Poll {
        me,
        membership,
        majority,
        same,
        differs,
        mut asks,
    }) = poll(raft, network, &req, ttl).await
    else {
        return Ok(());
    };
    let account = req.account.clone();
    if same >= majority {
        // The rest answer in the background: a minority that differs is a
        // replica whose store diverged; tell it, and say so here.
        let (network, req) = (network.clone(), req.clone());
        let membership = membership.clone();
        tokio::spawn(async move {
            for id in differs {
                tell_diverged(&network, &membership, id, &req).await;
            }
            while let Some(Ok((id, answer))) = asks.join_next().await {
                if answer == ConfirmAnswer::Differs {
                    tell_diverged(&network, &membership, id, &req).await;
                }
            }
        });
        return Ok(());
    }
    asks.abort_all();
    let now = raft.metrics().borrow().clone();
    let still_leading = now.current_leader == Some(me) && now.current_term == req.term;
    if differs.len() >= majority && still_leading {
        divergence.report(
            "leader",
            format!(
                "voters {differs:?}, a majority of the group, hold a different record of account \
                 {account} after log entry {} than this replica: this replica's store has been \
                 edited or rolled back. It stops serving; rebuild it (remove it from the group, \
                 wipe its data folder, add it again under a new node id)",
                req.index
            ),
        );
        let raft = raft.clone();
        tokio::spawn(async move {
            let _ = raft.shutdown().await;
        });
        return Err(Error::Unavailable(
            "this replica's store disagrees with the majority",
        ));
    }
    Err(Error::Unavailable(
        "a majority did not confirm the commit in time",
    ))
}

async fn tell_diverged(
    network: &PeerNetwork,
    membership: &openraft::Membership<u64, super::VaultNode>,
    id: u64,
    req: &ConfirmRequest,
) {
    metrics::counter!("vault_state_divergence_total", "side" => "minority").increment(1);
    tracing::error!(
        node = id,
        account = %req.account,
        index = req.index,
        "a voter holds a different record than the majority after the same log entry: its store diverged"
    );
    let Some(node) = membership.get_node(&id).cloned() else {
        return;
    };
    let mut factory = network.clone();
    let mut client = factory.new_client(id, &node).await;
    let _ = client.notify_diverged(req, Duration::from_secs(5)).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn digests_tell_records_apart() {
        let a = AccountId::new("a").unwrap();
        let b = AccountId::new("b").unwrap();
        let r1 = StoredRecord {
            version: 1,
            sealed: vec![1, 2, 3],
        };
        let r2 = StoredRecord {
            version: 2,
            sealed: vec![1, 2, 3],
        };
        assert_ne!(record_digest(&a, Some(&r1)), record_digest(&a, Some(&r2)));
        assert_ne!(record_digest(&a, Some(&r1)), record_digest(&b, Some(&r1)));
        assert_ne!(record_digest(&a, None), record_digest(&a, Some(&r1)));
        assert_eq!(
            record_digest(&a, Some(&r1)),
            record_digest(&a, Some(&r1.clone()))
        );
    }

    #[test]
    fn recent_writes_tell_a_later_write_and_never_claim_to_know_too_much() {
        let (a, b) = (AccountId::new("a").unwrap(), AccountId::new("b").unwrap());
        let w = RecentWrites::default();
        // Before anything is applied in this process nothing is known.
        assert!(w.written_after(&a, 0));
        w.note(10, &a);
        w.note(11, &b);
        w.note(12, &a);
        assert!(w.written_after(&a, 10), "entry 12 wrote a after 10");
        assert!(w.written_after(&a, 11));
        assert!(!w.written_after(&a, 12));
        assert!(!w.written_after(&b, 11));
        assert!(w.written_after(&b, 10), "entry 11 wrote b after 10");
        // Before the first entry applied here (10), nothing is known.
        let c = AccountId::new("c").unwrap();
        assert!(w.written_after(&c, 8));
        assert!(!w.written_after(&c, 9));
        w.start_from(5); // known better already: no effect
        assert!(w.written_after(&c, 8));
        // A snapshot through 20 replaced everything below it.
        w.reset(20);
        assert!(w.written_after(&b, 19));
        assert!(!w.written_after(&b, 20));
        w.note(21, &b);
        assert!(w.written_after(&b, 20));
    }

    #[test]
    fn recent_writes_forget_the_oldest_and_say_so() {
        let (a, b) = (AccountId::new("a").unwrap(), AccountId::new("b").unwrap());
        let w = RecentWrites::default();
        w.start_from(0);
        assert!(!w.written_after(&a, 0), "a fresh store: nothing written");
        w.note(1, &a);
        for i in 2..=(RECENT_WRITES as u64 + 1) {
            w.note(i, &b);
        }
        // The write of a at 1 is forgotten: asked about entry 0, "may have".
        assert!(w.written_after(&a, 0));
        assert!(!w.written_after(&a, 1));
        assert_eq!(w.inner.lock().writes.len(), RECENT_WRITES);
    }
}
