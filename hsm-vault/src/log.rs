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

/// In-memory log for unit tests and fuzzing, with switchable failures.
#[derive(Debug, Default)]
pub struct MemoryLog {
    records: Mutex<HashMap<AccountId, StoredRecord>>,
    fail_commits: std::sync::atomic::AtomicBool,
}

impl MemoryLog {
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
        map.insert(account, record);
        Ok(ApplyOutcome::Applied)
    }
}
