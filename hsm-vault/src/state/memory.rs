//! In-memory [`Records`] for unit tests and fuzzing, with switchable
//! failures and switchable stale reads. Applies commands by the same rule
//! as every replica ([`Command::check`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use protocol_spec::ids::AccountId;

use super::command::{ApplyOutcome, Command};
use super::record::StoredRecord;
use super::records::Records;
use crate::Error;

/// Records in memory.
#[derive(Debug, Default)]
pub struct MemoryRecords {
    records: Mutex<HashMap<AccountId, StoredRecord>>,
    /// Each account's record before its latest commit (absent: none).
    previous: Mutex<HashMap<AccountId, Option<StoredRecord>>>,
    fail_commits: AtomicBool,
    stale_reads: AtomicBool,
}

impl MemoryRecords {
    /// Makes [`Records::read_for_update`] answer with the record as it was
    /// before its latest commit, as a lagging replica might.
    pub fn set_stale_reads(&self, on: bool) {
        self.stale_reads.store(on, Ordering::SeqCst);
    }

    /// Makes every later commit fail as `Unavailable` (no quorum).
    pub fn set_unavailable(&self, on: bool) {
        self.fail_commits.store(on, Ordering::SeqCst);
    }

    /// Direct access for tests that tamper with storage.
    pub fn raw(&self) -> parking_lot::MutexGuard<'_, HashMap<AccountId, StoredRecord>> {
        self.records.lock()
    }
}

impl Records for MemoryRecords {
    fn read(&self, account: &AccountId) -> Result<Option<StoredRecord>, Error> {
        Ok(self.records.lock().get(account).cloned())
    }

    fn read_for_update(&self, account: &AccountId) -> Result<Option<StoredRecord>, Error> {
        if self.stale_reads.load(Ordering::SeqCst) {
            if let Some(prev) = self.previous.lock().get(account) {
                return Ok(prev.clone());
            }
        }
        self.read(account)
    }

    fn commit(&self, cmd: Command) -> Result<ApplyOutcome, Error> {
        if self.fail_commits.load(Ordering::SeqCst) {
            return Err(Error::Unavailable("test log refuses commits"));
        }
        let mut map = self.records.lock();
        let current_version = map.get(cmd.account()).map_or(0, |r| r.version);
        let outcome = cmd.check(current_version);
        if outcome == ApplyOutcome::Applied {
            let Command::PutRecord {
                account, record, ..
            } = cmd;
            let before = map.insert(account.clone(), record);
            self.previous.lock().insert(account, before);
        }
        Ok(outcome)
    }
}
