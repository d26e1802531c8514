//! The durable log the vault core commits through.
//!
//! [`RecordLog`] is the storage world as the core sees it: a linearizable
//! read of one account, and a commit that returns only once the command is
//! durable (fsynced here; replicated to a majority in the Raft log). The
//! core never acknowledges anything to a client before `commit` returns.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use protocol_spec::ids::AccountId;

use crate::command::{ApplyOutcome, Command};
use crate::record::StoredRecord;
use crate::store::RecordStore;
use crate::Error;

pub trait RecordLog: Send + Sync {
    /// The current record of `account`, as of a point after every commit
    /// acknowledged before this call started.
    fn read(&self, account: &AccountId) -> Result<Option<StoredRecord>, Error>;

    /// A read that may be stale, for a decision that is either committed
    /// with a compare-and-set on the version read (a stale read then
    /// conflicts, and the caller reads again) or confirmed with
    /// [`RecordLog::read`] before anything is answered from it. A
    /// replicated log serves it from local state and skips the quorum
    /// round a linearizable read costs. Default: [`RecordLog::read`].
    fn read_for_update(&self, account: &AccountId) -> Result<Option<StoredRecord>, Error> {
        self.read(account)
    }

    /// Makes `cmd` durable and applies it. `Err` means it was not
    /// acknowledged (it may or may not apply later; the core treats a
    /// counted attempt as spent either way).
    fn commit(&self, cmd: Command) -> Result<ApplyOutcome, Error>;
}

/// Single-node log: every command is one fsynced redb transaction.
#[derive(Debug, Clone)]
pub struct LocalLog {
    store: Arc<RecordStore>,
}

impl LocalLog {
    pub fn new(store: Arc<RecordStore>) -> Self {
        LocalLog { store }
    }
}

impl RecordLog for LocalLog {
    fn read(&self, account: &AccountId) -> Result<Option<StoredRecord>, Error> {
        self.store.get(account)
    }

    fn commit(&self, cmd: Command) -> Result<ApplyOutcome, Error> {
        self.store.apply(&cmd)
    }
}

/// In-memory log for unit tests and fuzzing, with switchable failures and
/// switchable stale reads.
#[derive(Debug, Default)]
pub struct MemoryLog {
    records: Mutex<HashMap<AccountId, StoredRecord>>,
    /// Each account's record before its latest commit (absent: none).
    previous: Mutex<HashMap<AccountId, Option<StoredRecord>>>,
    fail_commits: std::sync::atomic::AtomicBool,
    stale_reads: std::sync::atomic::AtomicBool,
}

impl MemoryLog {
    /// Makes [`RecordLog::read_for_update`] answer with the record as it was
    /// before its latest commit, as a lagging replica might.
    pub fn set_stale_reads(&self, on: bool) {
        self.stale_reads
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes every later commit fail as `Unavailable` (no quorum).
    pub fn set_unavailable(&self, on: bool) {
        self.fail_commits
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Direct access for tests that tamper with storage.
    pub fn raw(&self) -> parking_lot::MutexGuard<'_, HashMap<AccountId, StoredRecord>> {
        self.records.lock()
    }
}

impl RecordLog for MemoryLog {
    fn read(&self, account: &AccountId) -> Result<Option<StoredRecord>, Error> {
        Ok(self.records.lock().get(account).cloned())
    }

    fn read_for_update(&self, account: &AccountId) -> Result<Option<StoredRecord>, Error> {
        if self.stale_reads.load(std::sync::atomic::Ordering::SeqCst) {
            if let Some(prev) = self.previous.lock().get(account) {
                return Ok(prev.clone());
            }
        }
        self.read(account)
    }

    fn commit(&self, cmd: Command) -> Result<ApplyOutcome, Error> {
        if self.fail_commits.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Unavailable("test log refuses commits"));
        }
        let Command::PutRecord {
            account,
            expected_version,
            record,
        } = cmd;
        let mut map = self.records.lock();
        let current_version = map.get(&account).map_or(0, |r| r.version);
        if current_version != expected_version || record.version != expected_version + 1 {
            return Ok(ApplyOutcome::Conflict { current_version });
        }
        let before = map.insert(account.clone(), record);
        self.previous.lock().insert(account, before);
        Ok(ApplyOutcome::Applied)
    }
}
