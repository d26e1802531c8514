//! Logins (SPEC.md 8.3 and 8.4): the attempt is counted, durably, before
//! KE2 exists; a verified KE3 resets the count before `wrapped_K` is
//! released; a login that ends without success on a record's last attempt
//! erases the record.

use opaque_ke::{CredentialFinalization, CredentialRequest, ServerLogin, ServerRegistration};
use protocol_spec::codes::VaultErrorCode;
use protocol_spec::keywrap::WrappedKey;
use protocol_spec::messages::vault::VaultResponse;
use protocol_spec::opaque::{self, Suite};

use super::access::{vault_error, Commit, Pass};
use super::limits::Limited;
use super::session::{PendingLogin, SessionState};
use super::{Failpoint, Now, Vault, VaultSession};
use crate::entropy::RngAdapter;
use crate::state::record::{RecordBody, Registration};
use crate::Error;

/// What the counting pass of a login start decided.
enum Start {
    /// Answer without a login (not registered, locked, busy).
    Answer(VaultResponse),
    /// The attempt is committed: compute KE2 for this registration.
    Counted(Registration),
}

impl Vault {
    pub(super) fn login_start(
        &self,
        now: Now,
        session: &mut VaultSession,
        credential_request: &[u8],
    ) -> Result<VaultResponse, Error> {
        if matches!(session.state, SessionState::RegistrationPending(_)) {
            return Ok(vault_error(VaultErrorCode::UnexpectedRequest));
        }
        let Ok(ke1) = CredentialRequest::<Suite>::deserialize(credential_request) else {
            return Ok(vault_error(VaultErrorCode::BadRequest));
        };
        let account = session.account.clone();
        // Before anything is counted: a refused start spends no attempt.
        if !self
            .limiter
            .allow(&account, Limited::LoginStart, now.instant)
        {
            return Ok(vault_error(VaultErrorCode::RateLimited));
        }
        let _guard = self.lock(&account);
        let max = self.params.max_attempts;
        // The first read may be stale (no quorum round): whatever it leads
        // to is either a compare-and-set commit, which fails on a stale
        // version, or is read again linearizably before it is answered.
        let decided = self.with_retries(|fresh| {
            let cur = self.load_for(&account, fresh)?;
            let reg = match &cur.body {
                RecordBody::Deleted | RecordBody::Locked { .. } if !fresh => {
                    return Ok(Pass::Again)
                }
                RecordBody::Deleted => {
                    metrics::counter!("vault_logins_total", "result" => "not_registered")
                        .increment(1);
                    return Ok(Pass::Done(Start::Answer(VaultResponse::NotRegistered)));
                }
                RecordBody::Locked { .. } => {
                    metrics::counter!("vault_logins_total", "result" => "locked").increment(1);
                    return Ok(Pass::Done(Start::Answer(VaultResponse::Locked)));
                }
                RecordBody::Registered(r) => r,
            };
            if reg.attempts_used >= max {
                if self.in_flight(&account, &reg.registration_nonce) {
                    if !fresh {
                        return Ok(Pass::Again);
                    }
                    // Another tunnel holds the last attempt; its outcome
                    // decides whether the record lives.
                    return Ok(Pass::Done(Start::Answer(vault_error(VaultErrorCode::Busy))));
                }
                return Ok(match self.commit_erase(now, &account, cur.version)? {
                    Commit::Done => {
                        metrics::counter!("vault_logins_total", "result" => "locked").increment(1);
                        Pass::Done(Start::Answer(VaultResponse::Locked))
                    }
                    Commit::Conflict => Pass::Again,
                });
            }
            // Count first: the increment is durable before KE2 exists.
            let mut counted = reg.clone();
            counted.attempts_used += 1;
            let body = RecordBody::Registered(counted.clone());
            Ok(match self.commit(&account, cur.version, &body)? {
                Commit::Done => Pass::Done(Start::Counted(counted)),
                Commit::Conflict => Pass::Again,
            })
        })?;
        let counted = match decided {
            None => return Ok(vault_error(VaultErrorCode::Busy)),
            Some(Start::Answer(response)) => return Ok(response),
            Some(Start::Counted(counted)) => counted,
        };
        metrics::counter!("vault_attempts_total").increment(1);
        self.failpoint(Failpoint::AttemptCommitted);

        let password_file = ServerRegistration::<Suite>::deserialize(&counted.opaque_record)
            .map_err(|_| Error::Corrupt("opaque record"))?;
        let cred_id = opaque::credential_identifier(&account, &counted.registration_nonce);
        let started = ServerLogin::start(
            &mut RngAdapter(self.platform.entropy.as_ref()),
            &self.setup,
            Some(password_file),
            ke1,
            &cred_id,
            self.login_params(&account),
        );
        let Ok(started) = started else {
            // The attempt stays spent; KE1 was unusable.
            return Ok(vault_error(VaultErrorCode::BadRequest));
        };
        let last_attempt = counted.attempts_used >= max;
        if last_attempt {
            self.last_attempts_in_flight
                .lock()
                .insert((account.clone(), counted.registration_nonce));
        }
        session.state = SessionState::LoginPending(PendingLogin {
            server: started.state,
            nonce: counted.registration_nonce,
            deadline: now.instant + self.params.login_timeout,
            last_attempt,
        });
        metrics::counter!("vault_logins_total", "result" => "started").increment(1);
        Ok(VaultResponse::LoginStarted {
            credential_response: started.message.serialize().to_vec(),
            attempts_remaining: max - counted.attempts_used,
        })
    }

    pub(super) fn login_finish(
        &self,
        now: Now,
        session: &mut VaultSession,
        credential_finalization: &[u8],
    ) -> Result<VaultResponse, Error> {
        let pending = match std::mem::replace(&mut session.state, SessionState::Idle) {
            SessionState::LoginPending(p) => p,
            other => {
                session.state = other;
                return Ok(vault_error(VaultErrorCode::UnexpectedRequest));
            }
        };
        let account = session.account.clone();
        let Ok(ke3) = CredentialFinalization::<Suite>::deserialize(credential_finalization) else {
            session.state = SessionState::LoginPending(pending);
            self.abandon(now, session);
            return Ok(vault_error(VaultErrorCode::BadRequest));
        };
        let PendingLogin {
            server,
            nonce,
            last_attempt,
            ..
        } = pending;
        let verified = server.finish(ke3, self.login_params(&account)).is_ok();
        let _guard = self.lock(&account);
        if last_attempt {
            self.last_attempts_in_flight
                .lock()
                .remove(&(account.clone(), nonce));
        }
        if !verified {
            metrics::counter!("vault_logins_total", "result" => "failed").increment(1);
            return self.answer_with_retries(|_| {
                let Some(cur) = self.load_settled(now, &account)? else {
                    return Ok(Pass::Again);
                };
                let remaining = match &cur.body {
                    RecordBody::Registered(r) if r.registration_nonce == nonce => {
                        self.params.max_attempts.saturating_sub(r.attempts_used)
                    }
                    _ => 0,
                };
                Ok(Pass::Done(VaultResponse::LoginFailed {
                    attempts_remaining: remaining,
                }))
            });
        }
        // As in login_start: a possibly stale first read, confirmed by the
        // compare-and-set commit or re-read linearizably before answering.
        let released = self.with_retries(|fresh| {
            let cur = self.load_for(&account, fresh)?;
            let reg = match &cur.body {
                RecordBody::Registered(r) if r.registration_nonce == nonce => r,
                _ if !fresh => return Ok(Pass::Again),
                _ => return Ok(Pass::Done(None)),
            };
            let wrapped_key = reg.wrapped_key()?;
            let mut reset = reg.clone();
            reset.attempts_used = 0;
            Ok(
                match self.commit(&account, cur.version, &RecordBody::Registered(reset))? {
                    Commit::Done => Pass::Done(Some(wrapped_key)),
                    Commit::Conflict => Pass::Again,
                },
            )
        })?;
        let wrapped_key: WrappedKey = match released {
            None => return Ok(vault_error(VaultErrorCode::Busy)),
            Some(None) => return Ok(vault_error(VaultErrorCode::RecordChanged)),
            Some(Some(k)) => k,
        };
        self.failpoint(Failpoint::ResetCommitted);
        session.state = SessionState::LoggedIn { nonce };
        metrics::counter!("vault_logins_total", "result" => "succeeded").increment(1);
        Ok(VaultResponse::LoginSucceeded { wrapped_key })
    }

    /// Ends a pending login without success. On the record's last attempt
    /// this erases the record.
    pub(super) fn abandon(&self, now: Now, session: &mut VaultSession) {
        let SessionState::LoginPending(p) =
            std::mem::replace(&mut session.state, SessionState::Idle)
        else {
            return;
        };
        if !p.last_attempt {
            return;
        }
        let account = session.account.clone();
        let _guard = self.lock(&account);
        self.last_attempts_in_flight
            .lock()
            .remove(&(account.clone(), p.nonce));
        // If this commit fails the record stays exhausted and the next touch
        // erases it (no login of it is in flight any more).
        let settled = self.with_retries(|_| {
            Ok(match self.load_settled(now, &account)? {
                Some(_) => Pass::Done(()),
                None => Pass::Again,
            })
        });
        if let Err(e) = settled {
            tracing::warn!(%account, error = %e, "erasing an exhausted record failed; the next request will retry");
        }
    }
}
