//! How the core reads and changes records: the per-account lock, the
//! loads (possibly stale, linearizable, or "settled" with an exhausted
//! record erased first), the compare-and-set commits, and the one
//! read-modify-commit retry loop every operation runs in.

use std::hash::{Hash, Hasher};

use parking_lot::MutexGuard;
use protocol_spec::codes::VaultErrorCode;
use protocol_spec::ids::AccountId;
use protocol_spec::messages::vault::{RecordState, StatusReport, VaultResponse};

use super::{Now, Vault};
use crate::state::command::{ApplyOutcome, Command};
use crate::state::record::{self, RecordBody, RegistrationNonce};
use crate::Error;

/// Passes of a read-modify-commit loop before answering `busy`. Conflicts
/// only happen when another replica (or a stale read) raced us; one more
/// pass nearly always suffices.
pub(super) const CAS_RETRIES: usize = 5;

/// The record as last read: its version (0 if there is no row) and body.
pub(super) struct Current {
    pub version: u64,
    pub body: RecordBody,
}

/// How a compare-and-set commit went.
pub(super) enum Commit {
    Done,
    /// The record moved on meanwhile; nothing was written.
    Conflict,
}

/// What one pass of a read-modify-commit loop decided.
pub(super) enum Pass<T> {
    Done(T),
    /// Read again (linearizably) and decide again: a commit conflicted, or
    /// a possibly stale read must be confirmed before it is answered.
    Again,
}

pub(super) fn vault_error(code: VaultErrorCode) -> VaultResponse {
    VaultResponse::Error(code)
}

impl Vault {
    /// The one retry loop: runs `pass` until it is done, at most
    /// [`CAS_RETRIES`] times. The first pass may read stale state
    /// (`fresh == false`); every later one reads linearizably. `None` means
    /// the record kept moving: answer `busy`.
    pub(super) fn with_retries<T>(
        &self,
        mut pass: impl FnMut(bool) -> Result<Pass<T>, Error>,
    ) -> Result<Option<T>, Error> {
        let mut fresh = false;
        for _ in 0..CAS_RETRIES {
            match pass(fresh)? {
                Pass::Done(t) => return Ok(Some(t)),
                Pass::Again => fresh = true,
            }
        }
        Ok(None)
    }

    /// [`Vault::with_retries`] for a pass that decides the answer itself.
    pub(super) fn answer_with_retries(
        &self,
        pass: impl FnMut(bool) -> Result<Pass<VaultResponse>, Error>,
    ) -> Result<VaultResponse, Error> {
        Ok(self
            .with_retries(pass)?
            .unwrap_or(vault_error(VaultErrorCode::Busy)))
    }

    /// Serialises the operations on one account on this replica.
    pub(super) fn lock(&self, account: &AccountId) -> MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        account.hash(&mut h);
        self.locks[(h.finish() as usize) % self.locks.len()].lock()
    }

    pub(super) fn in_flight(&self, account: &AccountId, nonce: &RegistrationNonce) -> bool {
        self.last_attempts_in_flight
            .lock()
            .contains(&(account.clone(), *nonce))
    }

    pub(super) fn report(&self, body: &RecordBody) -> StatusReport {
        let max = self.params.max_attempts;
        match body {
            RecordBody::Deleted => StatusReport {
                state: RecordState::None,
                attempts_remaining: 0,
                max_attempts: max,
                escrow: None,
            },
            RecordBody::Locked { .. } => StatusReport {
                state: RecordState::Locked,
                attempts_remaining: 0,
                max_attempts: max,
                escrow: None,
            },
            RecordBody::Registered(r) => StatusReport {
                state: RecordState::Registered,
                attempts_remaining: max.saturating_sub(r.attempts_used),
                max_attempts: max,
                escrow: Some(r.escrow()),
            },
        }
    }

    /// The record, read linearizably.
    pub(super) fn load(&self, account: &AccountId) -> Result<Current, Error> {
        self.load_for(account, true)
    }

    /// [`Vault::load`], linearizable when `fresh`, else through
    /// [`crate::state::Records::read_for_update`] (possibly stale; see its
    /// rules).
    pub(super) fn load_for(&self, account: &AccountId, fresh: bool) -> Result<Current, Error> {
        let records = &self.platform.records;
        let stored = if fresh {
            records.read(account)?
        } else {
            records.read_for_update(account)?
        };
        match stored {
            None => Ok(Current {
                version: 0,
                body: RecordBody::Deleted,
            }),
            Some(stored) => {
                let body = record::unseal(self.platform.sealer.as_ref(), account, &stored)?;
                Ok(Current {
                    version: stored.version,
                    body,
                })
            }
        }
    }

    /// Loads the record and, if its attempts are exhausted with no login of
    /// it in flight here, erases it first. `None` means a concurrent change
    /// got there first: load again.
    pub(super) fn load_settled(
        &self,
        now: Now,
        account: &AccountId,
    ) -> Result<Option<Current>, Error> {
        let cur = self.load(account)?;
        if let RecordBody::Registered(r) = &cur.body {
            if r.attempts_used >= self.params.max_attempts
                && !self.in_flight(account, &r.registration_nonce)
            {
                return match self.commit_erase(now, account, cur.version)? {
                    Commit::Done => Ok(Some(Current {
                        version: cur.version + 1,
                        body: RecordBody::Locked {
                            locked_at_unix_secs: now.unix_secs,
                        },
                    })),
                    Commit::Conflict => Ok(None),
                };
            }
        }
        Ok(Some(cur))
    }

    /// Replaces an exhausted record with its tombstone.
    pub(super) fn commit_erase(
        &self,
        now: Now,
        account: &AccountId,
        version: u64,
    ) -> Result<Commit, Error> {
        let tombstone = RecordBody::Locked {
            locked_at_unix_secs: now.unix_secs,
        };
        let outcome = self.commit(account, version, &tombstone)?;
        if let Commit::Done = outcome {
            metrics::counter!("vault_lockouts_total").increment(1);
            tracing::warn!(%account, "attempts exhausted: escrowed key erased");
        }
        Ok(outcome)
    }

    /// Seals `body` as the version after `expected_version` and commits it
    /// if the record is still at `expected_version`.
    pub(super) fn commit(
        &self,
        account: &AccountId,
        expected_version: u64,
        body: &RecordBody,
    ) -> Result<Commit, Error> {
        let version = expected_version + 1;
        let stored = record::seal(
            self.platform.sealer.as_ref(),
            self.platform.entropy.as_ref(),
            account,
            version,
            body,
        )?;
        let outcome = self.platform.records.commit(Command::PutRecord {
            account: account.clone(),
            expected_version,
            record: stored,
        })?;
        Ok(match outcome {
            ApplyOutcome::Applied => Commit::Done,
            ApplyOutcome::Conflict { .. } => {
                metrics::counter!("vault_commit_conflicts_total").increment(1);
                Commit::Conflict
            }
        })
    }
}
