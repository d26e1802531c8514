//! The records as the vault core sees them.
//!
//! [`Records`] is the storage world of the core: a linearizable read of one
//! account, and a commit that returns only once the command is durable
//! (fsynced here; replicated to a majority by [`crate::raft`]). The core
//! never acknowledges anything to a client before `commit` returns.

use std::sync::Arc;

use protocol_spec::ids::AccountId;

use super::command::{ApplyOutcome, Command};
use super::record::StoredRecord;
use super::store::RecordStore;
use crate::Error;

pub trait Records: Send + Sync {
    /// The current record of `account`, as of a point after every commit
    /// acknowledged before this call started.
    fn read(&self, account: &AccountId) -> Result<Option<StoredRecord>, Error>;

    /// A read that may be stale, for a decision that is either committed
    /// with a compare-and-set on the version read (a stale read then
    /// conflicts, and the caller reads again) or confirmed with
    /// [`Records::read`] before anything is answered from it. A
    /// replicated log serves it from local state and skips the quorum
    /// round a linearizable read costs. Default: [`Records::read`].
    fn read_for_update(&self, account: &AccountId) -> Result<Option<StoredRecord>, Error> {
        self.read(account)
    }

    /// Makes `cmd` durable and applies it. `Err` means it was not
    /// acknowledged (it may or may not apply later; the core treats a
    /// counted attempt as spent either way).
    fn commit(&self, cmd: Command) -> Result<ApplyOutcome, Error>;
}

/// Single-node records: every command is one fsynced redb transaction.
#[derive(Debug, Clone)]
pub struct LocalRecords {
    store: Arc<RecordStore>,
}

impl LocalRecords {
    pub fn new(store: Arc<RecordStore>) -> Self {
        LocalRecords { store }
    }
}

impl Records for LocalRecords {
    fn read(&self, account: &AccountId) -> Result<Option<StoredRecord>, Error> {
        self.store.get(account)
    }

    fn commit(&self, cmd: Command) -> Result<ApplyOutcome, Error> {
        self.store.apply(&cmd)
    }
}
