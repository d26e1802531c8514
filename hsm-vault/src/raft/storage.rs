//! Raft storage in the vault's redb file: the log and vote ([`RaftLogStore`])
//! and the state machine of sealed records ([`RecordStateMachine`]), plus
//! snapshots.
//!
//! Every write is an fsynced redb transaction before openraft is told it
//! is durable: the log append before the append callback, the vote before
//! it is used, applied entries together with the applied log id. redb calls
//! block, so they run on tokio's blocking pool.

// openraft's error types are large and fixed by its trait signatures.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::agreement::RecentWrites;
use super::log_command::LogCommand;
use super::peer_keys::{PeerKeyTable, PeerKeys};
use super::{codec, CommandOutcome, VaultNode, VaultRaft};
use crate::core::{failpoint_reached, Failpoint};
use crate::state::record::StoredRecord;
use crate::state::store::{apply_in, RecordStore, META, RECORDS};

type NodeId = u64;
type SErr = StorageError<NodeId>;

/// Raft log entries: index -> postcard(Entry).
pub(super) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");

pub(super) const VOTE_KEY: &str = "raft_vote";
pub(super) const COMMITTED_KEY: &str = "raft_committed";
pub(super) const PURGED_KEY: &str = "raft_last_purged";
pub(super) const APPLIED_KEY: &str = "raft_applied";
pub(super) const MEMBERSHIP_KEY: &str = "raft_membership";
const SNAPSHOT_KEY: &str = "raft_snapshot";
/// The applied [`PeerKeyTable`].
const PEER_KEYS_KEY: &str = "raft_peer_keys";

/// The node key table as applied in `store` (empty in a store that
/// predates node keys).
pub fn load_peer_keys(store: &RecordStore) -> Result<PeerKeyTable, crate::Error> {
    meta_get(store.db(), PEER_KEYS_KEY)
        .map(Option::unwrap_or_default)
        .map_err(|e| crate::Error::Storage(e.to_string()))
}

/// `account`'s record and the index of the last entry applied, from one
/// read transaction, so the record is exactly what the entries up to that
/// index made of it (the two are written together).
pub fn record_as_applied(
    store: &RecordStore,
    account: &protocol_spec::ids::AccountId,
) -> Result<(Option<StoredRecord>, u64), crate::Error> {
    use redb::ReadableDatabase;
    fn storage(e: impl std::fmt::Display) -> crate::Error {
        crate::Error::Storage(e.to_string())
    }
    let txn = store.db().begin_read().map_err(storage)?;
    let meta_t = txn.open_table(META).map_err(storage)?;
    let applied: Option<LogId<NodeId>> = match meta_t.get(APPLIED_KEY).map_err(storage)? {
        Some(v) => dec(v.value()).map_err(storage)?,
        None => None,
    };
    let records_t = txn.open_table(RECORDS).map_err(storage)?;
    let record = match records_t.get(account.as_str()).map_err(storage)? {
        Some(v) => Some(StoredRecord::decode(v.value())?),
        None => None,
    };
    Ok((record, applied.map_or(0, |l| l.index)))
}

fn io_err(e: impl std::fmt::Display) -> SErr {
    StorageIOError::write(AnyError::error(e.to_string())).into()
}

fn read_err(e: impl std::fmt::Display) -> SErr {
    StorageIOError::read(AnyError::error(e.to_string())).into()
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, SErr> {
    codec::encode("raft value", v).map_err(io_err)
}

fn dec<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, SErr> {
    codec::decode("stored raft value", b).map_err(read_err)
}

/// Runs blocking redb work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SErr> + Send + 'static,
) -> Result<T, SErr> {
    tokio::task::spawn_blocking(f).await.map_err(io_err)?
}

pub(super) fn meta_get<T: for<'a> Deserialize<'a>>(
    db: &Database,
    key: &str,
) -> Result<Option<T>, SErr> {
    use redb::ReadableDatabase;
    let txn = db.begin_read().map_err(read_err)?;
    let t = txn.open_table(META).map_err(read_err)?;
    match t.get(key).map_err(read_err)? {
        Some(v) => Ok(Some(dec(v.value())?)),
        None => Ok(None),
    }
}

pub(super) fn meta_put<T: Serialize>(db: &Database, key: &str, v: &T) -> Result<(), SErr> {
    let bytes = enc(v)?;
    let txn = db.begin_write().map_err(io_err)?;
    {
        let mut t = txn.open_table(META).map_err(io_err)?;
        t.insert(key, bytes.as_slice()).map_err(io_err)?;
    }
    txn.commit().map_err(io_err)
}

/// The Raft log and vote.
#[derive(Clone)]
pub struct RaftLogStore {
    db: Arc<Database>,
}

impl std::fmt::Debug for RaftLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaftLogStore")
    }
}

impl RaftLogStore {
    pub fn new(store: &RecordStore) -> Result<Self, crate::Error> {
        let db = store.db().clone();
        let txn = db
            .begin_write()
            .map_err(|e| crate::Error::Storage(e.to_string()))?;
        txn.open_table(LOG)
            .map_err(|e| crate::Error::Storage(e.to_string()))?;
        txn.commit()
            .map_err(|e| crate::Error::Storage(e.to_string()))?;
        Ok(RaftLogStore { db })
    }
}

impl RaftLogReader<VaultRaft> for RaftLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<VaultRaft>>, SErr> {
        use redb::ReadableDatabase;
        let db = self.db.clone();
        let start = match range.start_bound() {
            std::ops::Bound::Included(s) => *s,
            std::ops::Bound::Excluded(s) => s + 1,
            std::ops::Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            std::ops::Bound::Included(e) => Some(e + 1),
            std::ops::Bound::Excluded(e) => Some(*e),
            std::ops::Bound::Unbounded => None,
        };
        blocking(move || {
            let txn = db.begin_read().map_err(read_err)?;
            let t = txn.open_table(LOG).map_err(read_err)?;
            let mut out = Vec::new();
            let iter = match end {
                Some(e) if e <= start => return Ok(out),
                Some(e) => t.range(start..e).map_err(read_err)?,
                None => t.range(start..).map_err(read_err)?,
            };
            for row in iter {
                let (_, v) = row.map_err(read_err)?;
                out.push(dec(v.value())?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<VaultRaft> for RaftLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<VaultRaft>, SErr> {
        use redb::ReadableDatabase;
        let db = self.db.clone();
        blocking(move || {
            let last_purged = meta_get::<Option<LogId<NodeId>>>(&db, PURGED_KEY)?.flatten();
            let txn = db.begin_read().map_err(read_err)?;
            let t = txn.open_table(LOG).map_err(read_err)?;
            let last = match t.last().map_err(read_err)? {
                Some((_, v)) => Some(dec::<Entry<VaultRaft>>(v.value())?.log_id),
                None => last_purged,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SErr> {
        let db = self.db.clone();
        let vote = *vote;
        blocking(move || meta_put(&db, VOTE_KEY, &vote)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SErr> {
        let db = self.db.clone();
        blocking(move || meta_get(&db, VOTE_KEY)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SErr> {
        let db = self.db.clone();
        blocking(move || meta_put(&db, COMMITTED_KEY, &committed)).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SErr> {
        let db = self.db.clone();
        blocking(move || Ok(meta_get::<Option<LogId<NodeId>>>(&db, COMMITTED_KEY)?.flatten())).await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<VaultRaft>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<VaultRaft>> + Send,
        I::IntoIter: Send,
    {
        let db = self.db.clone();
        let mut records = false;
        let rows: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| {
                records |= matches!(&e.payload, EntryPayload::Normal(c) if !c.records().is_empty());
                Ok((e.log_id.index, enc(&e)?))
            })
            .collect::<Result<_, SErr>>()?;
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            tracing::debug!(first = first.0, last = last.0, "raft log append");
        }
        let res = blocking(move || {
            let txn = db.begin_write().map_err(io_err)?;
            {
                let mut t = txn.open_table(LOG).map_err(io_err)?;
                for (i, b) in &rows {
                    t.insert(*i, b.as_slice()).map_err(io_err)?;
                }
            }
            txn.commit().map_err(io_err)
        })
        .await;
        if records && res.is_ok() {
            failpoint_reached(Failpoint::LogAppended);
        }
        match &res {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        res
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        tracing::debug!(from = log_id.index, "raft log truncate");
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(io_err)?;
            {
                let mut t = txn.open_table(LOG).map_err(io_err)?;
                t.retain_in(log_id.index.., |_, _| false).map_err(io_err)?;
            }
            txn.commit().map_err(io_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SErr> {
        tracing::debug!(upto = log_id.index, "raft log purge");
        let db = self.db.clone();
        blocking(move || {
            let bytes = enc(&Some(log_id))?;
            let txn = db.begin_write().map_err(io_err)?;
            {
                let mut m = txn.open_table(META).map_err(io_err)?;
                m.insert(PURGED_KEY, bytes.as_slice()).map_err(io_err)?;
                let mut t = txn.open_table(LOG).map_err(io_err)?;
                t.retain_in(..=log_id.index, |_, _| false).map_err(io_err)?;
            }
            txn.commit().map_err(io_err)
        })
        .await
    }
}

/// The state a snapshot carries: every record, as stored. The node key
/// table follows it (`postcard(body) || postcard(table)`); a snapshot made
/// before node keys existed ends after the body.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    records: Vec<(String, Vec<u8>)>,
}

fn encode_snapshot(body: &SnapshotBody, keys: &PeerKeyTable) -> Result<Vec<u8>, SErr> {
    let mut data = enc(body)?;
    data.extend(enc(keys)?);
    Ok(data)
}

fn decode_snapshot(data: &[u8]) -> Result<(SnapshotBody, PeerKeyTable), SErr> {
    let (body, rest) = postcard::take_from_bytes::<SnapshotBody>(data)
        .map_err(|e| read_err(format!("malformed snapshot: {e}")))?;
    let keys = if rest.is_empty() {
        PeerKeyTable::default()
    } else {
        dec(rest)?
    };
    Ok((body, keys))
}

/// For the fuzz target ([`super::fuzzing`]): a snapshot that decodes
/// encodes again to bytes that decode to the same encoding.
#[cfg(feature = "test-hooks")]
pub(super) fn snapshot_round_trip(data: &[u8]) {
    if let Ok((body, keys)) = decode_snapshot(data) {
        let once = encode_snapshot(&body, &keys).expect("a decoded snapshot encodes");
        let (b, k) = decode_snapshot(&once).expect("a re-encoded snapshot decodes");
        let again = encode_snapshot(&b, &k).expect("encodes");
        assert_eq!(again, once, "snapshot changed");
    }
}

#[derive(Serialize, Deserialize, Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, VaultNode>,
    data: Vec<u8>,
}

/// The state machine: the record store plus what Raft needs to know about
/// what was applied.
#[derive(Clone)]
pub struct RecordStateMachine {
    store: Arc<RecordStore>,
    keys: Arc<PeerKeys>,
    /// Which accounts recent entries wrote, for confirmations.
    recent: Arc<RecentWrites>,
}

impl std::fmt::Debug for RecordStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordStateMachine")
    }
}

impl RecordStateMachine {
    pub fn new(store: Arc<RecordStore>, keys: Arc<PeerKeys>) -> Self {
        RecordStateMachine {
            store,
            keys,
            recent: Arc::default(),
        }
    }

    /// What the peer service needs to answer confirmations
    /// ([`super::agreement::answer`]).
    pub fn recent_writes(&self) -> Arc<RecentWrites> {
        self.recent.clone()
    }

    fn build(&self) -> Result<StoredSnapshot, SErr> {
        use redb::ReadableDatabase;
        let db = self.store.db().clone();
        // One read transaction: the records and the applied id agree.
        let txn = db.begin_read().map_err(read_err)?;
        let meta_t = txn.open_table(META).map_err(read_err)?;
        let applied: Option<LogId<NodeId>> = match meta_t.get(APPLIED_KEY).map_err(read_err)? {
            Some(v) => dec(v.value())?,
            None => None,
        };
        let membership: StoredMembership<NodeId, VaultNode> =
            match meta_t.get(MEMBERSHIP_KEY).map_err(read_err)? {
                Some(v) => dec(v.value())?,
                None => StoredMembership::default(),
            };
        let records_t = txn.open_table(RECORDS).map_err(read_err)?;
        let mut records = Vec::new();
        for row in records_t.iter().map_err(read_err)? {
            let (k, v) = row.map_err(read_err)?;
            records.push((k.value().to_owned(), v.value().to_vec()));
        }
        let keys: PeerKeyTable = match meta_t.get(PEER_KEYS_KEY).map_err(read_err)? {
            Some(v) => dec(v.value())?,
            None => PeerKeyTable::default(),
        };
        let data = encode_snapshot(&SnapshotBody { records }, &keys)?;
        let id = match applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, unix_nanos()),
            None => format!("empty-{}", unix_nanos()),
        };
        let snap = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: applied,
                last_membership: membership,
                snapshot_id: id,
            },
            data,
        };
        // Keep whichever snapshot is newer: a snapshot installed from the
        // leader while this one was being built must not be replaced by an
        // older one (after a restart it would be served below the purged
        // log, and a lagging follower could never catch up from it).
        let bytes = enc(&snap)?;
        let txn = db.begin_write().map_err(io_err)?;
        {
            let mut t = txn.open_table(META).map_err(io_err)?;
            let existing: Option<StoredSnapshot> = match t.get(SNAPSHOT_KEY).map_err(io_err)? {
                Some(v) => Some(dec(v.value())?),
                None => None,
            };
            if existing.is_some_and(|e| e.meta.last_log_id > snap.meta.last_log_id) {
                tracing::debug!("a newer snapshot was installed meanwhile; keeping it");
                return Ok(snap);
            }
            t.insert(SNAPSHOT_KEY, bytes.as_slice()).map_err(io_err)?;
        }
        txn.commit().map_err(io_err)?;
        metrics::counter!("vault_raft_snapshots_built_total").increment(1);
        Ok(snap)
    }
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl RaftSnapshotBuilder<VaultRaft> for RecordStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<VaultRaft>, SErr> {
        let me = self.clone();
        let snap = blocking(move || me.build()).await?;
        Ok(Snapshot {
            meta: snap.meta,
            snapshot: Box::new(Cursor::new(snap.data)),
        })
    }
}

impl RaftStateMachine<VaultRaft> for RecordStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, VaultNode>), SErr> {
        let db = self.store.db().clone();
        let recent = self.recent.clone();
        blocking(move || {
            let applied = meta_get::<Option<LogId<NodeId>>>(&db, APPLIED_KEY)?.flatten();
            let membership = meta_get(&db, MEMBERSHIP_KEY)?.unwrap_or_default();
            // openraft asks at start: what this process applies comes after.
            recent.start_from(applied.map_or(0, |l| l.index));
            Ok((applied, membership))
        })
        .await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandOutcome>, SErr>
    where
        I: IntoIterator<Item = Entry<VaultRaft>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<VaultRaft>> = entries.into_iter().collect();
        let db = self.store.db().clone();
        let live = self.keys.clone();
        let recent = self.recent.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(io_err)?;
            let mut out = Vec::with_capacity(entries.len());
            let mut last = None;
            let mut membership = None;
            // Read and written back only if an entry changes it.
            let mut keys: Option<PeerKeyTable> = None;
            for e in &entries {
                last = Some(e.log_id);
                match &e.payload {
                    EntryPayload::Blank => out.push(CommandOutcome::Nothing),
                    EntryPayload::Normal(LogCommand::Record(cmd)) => {
                        // Noted before the write is visible (a conflict
                        // writes nothing; noting it only makes a
                        // confirmation say "later" more often).
                        recent.note(e.log_id.index, cmd.account());
                        let outcome = apply_in(&txn, cmd).map_err(io_err)?;
                        out.push(CommandOutcome::Record(outcome));
                    }
                    EntryPayload::Normal(LogCommand::Records(cmds)) => {
                        // In order, each its own compare-and-set, as if
                        // they were consecutive entries.
                        let mut outcomes = Vec::with_capacity(cmds.len());
                        for cmd in cmds {
                            recent.note(e.log_id.index, cmd.account());
                            outcomes.push(apply_in(&txn, cmd).map_err(io_err)?);
                        }
                        out.push(CommandOutcome::Records(outcomes));
                    }
                    EntryPayload::Normal(LogCommand::PeerKey(change)) => {
                        let table = match &mut keys {
                            Some(t) => t,
                            None => {
                                let meta = txn.open_table(META).map_err(io_err)?;
                                let t: PeerKeyTable =
                                    match meta.get(PEER_KEYS_KEY).map_err(io_err)? {
                                        Some(v) => dec(v.value())?,
                                        None => PeerKeyTable::default(),
                                    };
                                keys.insert(t)
                            }
                        };
                        let outcome = table.apply(change);
                        tracing::info!(?change, ?outcome, "node key table");
                        out.push(CommandOutcome::PeerKey(outcome));
                    }
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembership::new(Some(e.log_id), m.clone()));
                        out.push(CommandOutcome::Nothing);
                    }
                }
            }
            {
                let mut meta = txn.open_table(META).map_err(io_err)?;
                if let Some(l) = last {
                    meta.insert(APPLIED_KEY, enc(&Some(l))?.as_slice())
                        .map_err(io_err)?;
                }
                if let Some(m) = membership {
                    meta.insert(MEMBERSHIP_KEY, enc(&m)?.as_slice())
                        .map_err(io_err)?;
                }
                if let Some(t) = &keys {
                    meta.insert(PEER_KEYS_KEY, enc(t)?.as_slice())
                        .map_err(io_err)?;
                }
            }
            txn.commit().map_err(io_err)?;
            if out
                .iter()
                .any(|o| matches!(o, CommandOutcome::Record(_) | CommandOutcome::Records(_)))
            {
                failpoint_reached(Failpoint::RecordApplied);
            }
            if let Some(t) = keys {
                live.replace(t);
            }
            Ok(out)
        })
        .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, VaultNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let db = self.store.db().clone();
        let meta = meta.clone();
        let data = snapshot.into_inner();
        let live = self.keys.clone();
        let recent = self.recent.clone();
        blocking(move || {
            let (body, keys) = decode_snapshot(&data)?;
            // Check every record parses before replacing anything.
            for (_, r) in &body.records {
                StoredRecord::decode(r).map_err(read_err)?;
            }
            let txn = db.begin_write().map_err(io_err)?;
            {
                let mut t = txn.open_table(RECORDS).map_err(io_err)?;
                t.retain(|_, _| false).map_err(io_err)?;
                for (k, v) in &body.records {
                    t.insert(k.as_str(), v.as_slice()).map_err(io_err)?;
                }
                let mut m = txn.open_table(META).map_err(io_err)?;
                // Purge the log up to the snapshot in the same transaction.
                // openraft purges lazily after an install; a crash in
                // between would otherwise leave log entries the snapshot
                // replaced (possibly with holes) that it then refuses to
                // start from.
                if let Some(last) = meta.last_log_id {
                    let purged: Option<LogId<NodeId>> = match m.get(PURGED_KEY).map_err(io_err)? {
                        Some(v) => dec(v.value())?,
                        None => None,
                    };
                    if purged < Some(last) {
                        m.insert(PURGED_KEY, enc(&Some(last))?.as_slice()).map_err(io_err)?;
                        let mut log = txn.open_table(LOG).map_err(io_err)?;
                        log.retain_in(..=last.index, |_, _| false).map_err(io_err)?;
                    }
                }
                // Before the records become visible, as for an entry.
                recent.reset(meta.last_log_id.map_or(0, |l| l.index));
                m.insert(APPLIED_KEY, enc(&meta.last_log_id)?.as_slice()).map_err(io_err)?;
                m.insert(MEMBERSHIP_KEY, enc(&meta.last_membership)?.as_slice()).map_err(io_err)?;
                m.insert(PEER_KEYS_KEY, enc(&keys)?.as_slice()).map_err(io_err)?;
                m.insert(SNAPSHOT_KEY, enc(&StoredSnapshot { meta: meta.clone(), data: data.clone() })?.as_slice())
                    .map_err(io_err)?;
            }
            txn.commit().map_err(io_err)?;
            live.replace(keys);
            tracing::debug!(upto = ?meta.last_log_id, "snapshot installed; log purged up to it");
            metrics::counter!("vault_raft_snapshots_installed_total").increment(1);
            tracing::info!(snapshot = %meta.snapshot_id, records = body.records.len(), "snapshot installed");
            Ok(())
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<VaultRaft>>, SErr> {
        let db = self.store.db().clone();
        let snap: Option<StoredSnapshot> = blocking(move || meta_get(&db, SNAPSHOT_KEY)).await?;
        Ok(snap.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    struct Builder;

    impl StoreBuilder<VaultRaft, RaftLogStore, RecordStateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, RaftLogStore, RecordStateMachine), SErr> {
            let dir = tempfile::tempdir().map_err(io_err)?;
            let store = Arc::new(RecordStore::open(&dir.path().join("s.redb")).map_err(io_err)?);
            let log = RaftLogStore::new(&store).map_err(io_err)?;
            Ok((dir, log, RecordStateMachine::new(store, Arc::default())))
        }
    }

    /// openraft's own conformance suite for log and state machine storage.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    /// Node key changes apply in log order into the store and the live
    /// table, travel in snapshots, and a snapshot made before node keys
    /// existed still installs (with an empty table).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn node_keys_apply_and_travel_in_snapshots() {
        use crate::raft::peer_keys::{NodeKey, PeerKeyChange};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RecordStore::open(&dir.path().join("a.redb")).unwrap());
        let live = Arc::new(PeerKeys::default());
        let mut sm = RecordStateMachine::new(store.clone(), live.clone());
        let lid = |i| LogId::new(openraft::CommittedLeaderId::new(1, 1), i);
        let entry = |i, change| Entry::<VaultRaft> {
            log_id: lid(i),
            payload: EntryPayload::Normal(LogCommand::PeerKey(change)),
        };
        let out = sm
            .apply(vec![
                entry(
                    1,
                    PeerKeyChange::Register {
                        node: 1,
                        key: NodeKey([1; 32]),
                    },
                ),
                entry(
                    2,
                    PeerKeyChange::Register {
                        node: 2,
                        key: NodeKey([2; 32]),
                    },
                ),
                entry(
                    3,
                    PeerKeyChange::Register {
                        node: 3,
                        key: NodeKey([1; 32]),
                    },
                ),
                entry(4, PeerKeyChange::Retire { node: 2 }),
            ])
            .await
            .unwrap();
        assert!(matches!(
            out[2],
            CommandOutcome::PeerKey(crate::raft::peer_keys::PeerKeyOutcome::Refused(_))
        ));
        let table = live.table();
        assert_eq!(
            table.registered.keys().copied().collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(table.retired.get(&2), Some(&Some(NodeKey([2; 32]))));
        assert_eq!(load_peer_keys(&store).unwrap(), table);

        let snap = sm.build_snapshot().await.unwrap();
        let data = snap.snapshot.into_inner();
        let (_, in_snapshot) = decode_snapshot(&data).unwrap();
        assert_eq!(in_snapshot, table);

        let other = Arc::new(RecordStore::open(&dir.path().join("b.redb")).unwrap());
        let other_live = Arc::new(PeerKeys::default());
        let mut other_sm = RecordStateMachine::new(other.clone(), other_live.clone());
        other_sm
            .install_snapshot(&snap.meta, Box::new(Cursor::new(data.clone())))
            .await
            .unwrap();
        assert_eq!(other_live.table(), table);
        assert_eq!(load_peer_keys(&other).unwrap(), table);

        // A snapshot from before node keys: the body alone.
        let legacy = enc(&SnapshotBody { records: vec![] }).unwrap();
        let (body, keys) = decode_snapshot(&legacy).unwrap();
        assert!(body.records.is_empty() && keys == PeerKeyTable::default());
        let mut trailing = data;
        trailing.push(0);
        assert!(decode_snapshot(&trailing).is_err());
    }

    /// Purge, vote and committed survive a reopen with their exact values
    /// (a type mix-up once read the purged id back as garbage).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bookkeeping_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let lid = |t, i| LogId::new(openraft::CommittedLeaderId::new(t, 2), i);
        {
            let store = RecordStore::open(&path).unwrap();
            let mut log = RaftLogStore::new(&store).unwrap();
            log.purge(lid(3, 127)).await.unwrap();
            log.save_committed(Some(lid(3, 130))).await.unwrap();
            log.save_vote(&Vote::new(4, 2)).await.unwrap();
        }
        let store = RecordStore::open(&path).unwrap();
        let mut log = RaftLogStore::new(&store).unwrap();
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(lid(3, 127)));
        assert_eq!(st.last_log_id, Some(lid(3, 127)));
        assert_eq!(log.read_committed().await.unwrap(), Some(lid(3, 130)));
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 2)));
    }
}
