//! The sans-IO vault core (SPEC.md section 8).
//!
//! [`Vault::handle`] takes the time, a tunnel's [`VaultSession`] and one
//! decoded request, and returns the response. It reaches the outside world
//! only through [`Platform`]: the HSM ([`Sealer`]), the durable log
//! ([`RecordLog`]) and randomness ([`Entropy`]). It reads no clock and does
//! no IO of its own, so tests drive it without sockets or sleeps, and the
//! same code runs single-node or behind Raft.
//!
//! The property everything serves: at most `max_attempts` KE2 messages per
//! record between two successful logins. A login start is committed
//! (`attempts_used + 1`) before KE2 is computed; success commits the reset
//! before `wrapped_K` is released; exhaustion commits a tombstone. Commits
//! are compare-and-set on the record version, and a per-account lock
//! serialises operations on this replica, so concurrent tunnels can never
//! spend the same attempt twice.
//!
//! Methods block (HSM calls, fsync, consensus): call them from worker
//! threads, never from an async runtime's workers.

mod session;

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup,
};
use parking_lot::{Mutex, MutexGuard};
use protocol_spec::codes::VaultErrorCode;
use protocol_spec::ids::{AccountId, FleetId};
use protocol_spec::keywrap::WrappedKey;
use protocol_spec::messages::vault::{
    RecordState, RegistrationMode, StatusReport, VaultRequest, VaultResponse,
};
use protocol_spec::opaque::{self, Suite, REGISTRATION_NONCE_LEN};

pub use session::VaultSession;
use session::{PendingLogin, PendingRegistration, SessionState};

use crate::command::{ApplyOutcome, Command};
use crate::entropy::{Entropy, RngAdapter};
use crate::log::RecordLog;
use crate::record::{self, RecordBody, Registration, RegistrationNonce};
use crate::seal::Sealer;
use crate::Error;

/// Compare-and-set retries before answering `busy`. Conflicts only happen
/// when another replica (or a stale read) raced us; one retry nearly always
/// suffices.
const CAS_RETRIES: usize = 5;
/// Shards of the per-account lock.
const LOCK_SHARDS: usize = 256;

/// The outside world of the core.
#[derive(Clone)]
pub struct Platform {
    pub sealer: Arc<dyn Sealer>,
    pub log: Arc<dyn RecordLog>,
    pub entropy: Arc<dyn Entropy>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Platform{..}")
    }
}

/// Fleet-wide policy.
#[derive(Debug, Clone)]
pub struct VaultParams {
    pub fleet_id: FleetId,
    pub max_attempts: u32,
    pub login_timeout: Duration,
}

/// The time, as the driver reads it: monotonic for deadlines, wall clock
/// for the tombstone's timestamp.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub unix_secs: u64,
}

impl Now {
    /// Reads the system clocks (for drivers; the core never calls this).
    pub fn system() -> Self {
        Now {
            instant: Instant::now(),
            unix_secs: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    pub fn after(self, d: Duration) -> Self {
        Now {
            instant: self.instant + d,
            unix_secs: self.unix_secs + d.as_secs(),
        }
    }
}

/// Points where a test build can crash the process on purpose, to prove
/// what survives (see `HSM_VAULT_FAILPOINT` in the binary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// A login start's increment is durable; KE2 not yet computed.
    AttemptCommitted,
    /// A successful login's reset is durable; `wrapped_K` not yet sent.
    ResetCommitted,
}

type FailpointHook = Box<dyn Fn(Failpoint) + Send + Sync>;

/// The vault core. Shared by every worker thread.
pub struct Vault {
    platform: Platform,
    setup: ServerSetup<Suite>,
    params: VaultParams,
    locks: Vec<Mutex<()>>,
    /// Logins on their record's last attempt, waiting for KE3 on this
    /// replica. Such a record is not erased while its login can still
    /// succeed; after a crash or failover the set is empty, so the next
    /// touch erases it (SPEC.md 8.4).
    last_attempts_in_flight: Mutex<HashSet<(AccountId, RegistrationNonce)>>,
    failpoint: Option<FailpointHook>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// The record as last read: its version (0 if there is no row) and body.
struct Current {
    version: u64,
    body: RecordBody,
}

enum Commit {
    Done,
    Conflict,
}

fn vault_error(code: VaultErrorCode) -> VaultResponse {
    VaultResponse::Error(code)
}

impl Vault {
    pub fn new(platform: Platform, setup: ServerSetup<Suite>, params: VaultParams) -> Self {
        Vault {
            platform,
            setup,
            params,
            locks: (0..LOCK_SHARDS).map(|_| Mutex::new(())).collect(),
            last_attempts_in_flight: Mutex::new(HashSet::new()),
            failpoint: None,
        }
    }

    /// Installs a failpoint hook (tests of crash behaviour only).
    pub fn with_failpoint(mut self, hook: FailpointHook) -> Self {
        self.failpoint = Some(hook);
        self
    }

    pub fn params(&self) -> &VaultParams {
        &self.params
    }

    /// Handles one request of a tunnel's session.
    pub fn handle(
        &self,
        now: Now,
        session: &mut VaultSession,
        request: VaultRequest,
    ) -> VaultResponse {
        let op = request.label();
        let started = Instant::now();
        let response = match self.dispatch(now, session, request) {
            Ok(r) => r,
            Err(e) => self.error_response(&session.account, op, &e),
        };
        metrics::counter!("vault_requests_total", "op" => op, "result" => response.label())
            .increment(1);
        metrics::histogram!("vault_request_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
        response
    }

    /// Expires the session's pending login if its deadline has passed.
    /// Drivers call this when [`VaultSession::login_deadline`] is reached.
    pub fn expire(&self, now: Now, session: &mut VaultSession) {
        if matches!(&session.state, SessionState::LoginPending(p) if now.instant >= p.deadline) {
            metrics::counter!("vault_logins_total", "result" => "expired").increment(1);
            self.abandon(now, session);
        }
    }

    /// The tunnel closed: a pending login is abandoned (and, on a last
    /// attempt, the record erased).
    pub fn close(&self, now: Now, session: &mut VaultSession) {
        if matches!(session.state, SessionState::LoginPending(_)) {
            metrics::counter!("vault_logins_total", "result" => "abandoned").increment(1);
            self.abandon(now, session);
        }
        session.state = SessionState::Idle;
    }

    fn error_response(&self, account: &AccountId, op: &'static str, e: &Error) -> VaultResponse {
        let code = match e {
            Error::Integrity | Error::Corrupt(_) => {
                metrics::counter!("vault_record_integrity_failures_total").increment(1);
                tracing::error!(%account, op, error = %e, "stored record refused: integrity check failed");
                VaultErrorCode::IntegrityFailure
            }
            Error::Unavailable(_) | Error::NotLeader { .. } => {
                tracing::warn!(%account, op, error = %e, "commit unavailable");
                VaultErrorCode::Unavailable
            }
            _ => {
                tracing::error!(%account, op, error = %e, "vault operation failed");
                VaultErrorCode::Internal
            }
        };
        vault_error(code)
    }

    fn dispatch(
        &self,
        now: Now,
        session: &mut VaultSession,
        request: VaultRequest,
    ) -> Result<VaultResponse, Error> {
        if matches!(&session.state, SessionState::LoginPending(p) if now.instant >= p.deadline) {
            metrics::counter!("vault_logins_total", "result" => "expired").increment(1);
            self.abandon(now, session);
            if matches!(request, VaultRequest::LoginFinish { .. }) {
                return Ok(vault_error(VaultErrorCode::LoginExpired));
            }
        }
        if matches!(session.state, SessionState::LoginPending(_))
            && !matches!(request, VaultRequest::LoginFinish { .. })
        {
            // Anything but KE3 abandons the login (SPEC.md 8.2).
            metrics::counter!("vault_logins_total", "result" => "abandoned").increment(1);
            self.abandon(now, session);
            return Ok(vault_error(VaultErrorCode::UnexpectedRequest));
        }
        match request {
            VaultRequest::Status => self.status(now, session),
            VaultRequest::RegisterStart {
                mode,
                registration_request,
            } => self.register_start(now, session, mode, &registration_request),
            VaultRequest::RegisterFinish {
                registration_upload,
                wrapped_key,
            } => self.register_finish(now, session, &registration_upload, wrapped_key),
            VaultRequest::LoginStart { credential_request } => {
                self.login_start(now, session, &credential_request)
            }
            VaultRequest::LoginFinish {
                credential_finalization,
            } => self.login_finish(now, session, &credential_finalization),
            VaultRequest::Delete => self.delete(now, session),
        }
    }

    // --- requests -------------------------------------------------------

    fn status(&self, now: Now, session: &mut VaultSession) -> Result<VaultResponse, Error> {
        let _guard = self.lock(&session.account);
        for _ in 0..CAS_RETRIES {
            let Some(cur) = self.load_settled(now, &session.account)? else {
                continue;
            };
            return Ok(VaultResponse::Status(self.report(&cur.body)));
        }
        Ok(vault_error(VaultErrorCode::Busy))
    }

    fn login_start(
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
        let _guard = self.lock(&account);
        // The first read may be stale (no quorum round): whatever it leads
        // to is either a compare-and-set commit, which fails on a stale
        // version, or is read again linearizably before it is answered.
        let mut fresh = false;
        for _ in 0..CAS_RETRIES {
            let cur = self.load_for(&account, fresh)?;
            let reg = match &cur.body {
                RecordBody::Deleted | RecordBody::Locked { .. } if !fresh => {
                    fresh = true;
                    continue;
                }
                RecordBody::Deleted => {
                    metrics::counter!("vault_logins_total", "result" => "not_registered")
                        .increment(1);
                    return Ok(VaultResponse::NotRegistered);
                }
                RecordBody::Locked { .. } => {
                    metrics::counter!("vault_logins_total", "result" => "locked").increment(1);
                    return Ok(VaultResponse::Locked);
                }
                RecordBody::Registered(r) => r,
            };
            if reg.attempts_used >= self.params.max_attempts {
                if self.in_flight(&account, &reg.registration_nonce) {
                    if !fresh {
                        fresh = true;
                        continue;
                    }
                    // Another tunnel holds the last attempt; its outcome
                    // decides whether the record lives.
                    return Ok(vault_error(VaultErrorCode::Busy));
                }
                match self.commit_erase(now, &account, cur.version)? {
                    Commit::Done => {
                        metrics::counter!("vault_logins_total", "result" => "locked").increment(1);
                        return Ok(VaultResponse::Locked);
                    }
                    Commit::Conflict => {
                        fresh = true;
                        continue;
                    }
                }
            }
            // Count first: the increment is durable before KE2 exists.
            let mut counted = reg.clone();
            counted.attempts_used += 1;
            match self.commit(
                &account,
                cur.version,
                &RecordBody::Registered(counted.clone()),
            )? {
                Commit::Done => {}
                Commit::Conflict => {
                    fresh = true;
                    continue;
                }
            }
            metrics::counter!("vault_attempts_total").increment(1);
            self.failpoint(Failpoint::AttemptCommitted);

            let password_file = ServerRegistration::<Suite>::deserialize(&reg.opaque_record)
                .map_err(|_| Error::Corrupt("opaque record"))?;
            let cred_id = opaque::credential_identifier(&account, &reg.registration_nonce);
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
            let last_attempt = counted.attempts_used >= self.params.max_attempts;
            if last_attempt {
                self.last_attempts_in_flight
                    .lock()
                    .insert((account.clone(), reg.registration_nonce));
            }
            session.state = SessionState::LoginPending(PendingLogin {
                server: started.state,
                nonce: reg.registration_nonce,
                deadline: now.instant + self.params.login_timeout,
                last_attempt,
            });
            metrics::counter!("vault_logins_total", "result" => "started").increment(1);
            return Ok(VaultResponse::LoginStarted {
                credential_response: started.message.serialize().to_vec(),
                attempts_remaining: self.params.max_attempts - counted.attempts_used,
            });
        }
        Ok(vault_error(VaultErrorCode::Busy))
    }

    fn login_finish(
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
            for _ in 0..CAS_RETRIES {
                let Some(cur) = self.load_settled(now, &account)? else {
                    continue;
                };
                let remaining = match &cur.body {
                    RecordBody::Registered(r) if r.registration_nonce == nonce => {
                        self.params.max_attempts.saturating_sub(r.attempts_used)
                    }
                    _ => 0,
                };
                return Ok(VaultResponse::LoginFailed {
                    attempts_remaining: remaining,
                });
            }
            return Ok(vault_error(VaultErrorCode::Busy));
        }
        // As in login_start: a possibly stale first read, confirmed by the
        // compare-and-set commit or re-read linearizably before answering.
        let mut fresh = false;
        for _ in 0..CAS_RETRIES {
            let cur = self.load_for(&account, fresh)?;
            let reg = match &cur.body {
                RecordBody::Registered(r) if r.registration_nonce == nonce => r,
                _ if !fresh => {
                    fresh = true;
                    continue;
                }
                _ => return Ok(vault_error(VaultErrorCode::RecordChanged)),
            };
            let wrapped_key = reg.wrapped_key()?;
            let mut reset = reg.clone();
            reset.attempts_used = 0;
            match self.commit(&account, cur.version, &RecordBody::Registered(reset))? {
                Commit::Done => {}
                Commit::Conflict => {
                    fresh = true;
                    continue;
                }
            }
            self.failpoint(Failpoint::ResetCommitted);
            session.state = SessionState::LoggedIn { nonce };
            metrics::counter!("vault_logins_total", "result" => "succeeded").increment(1);
            return Ok(VaultResponse::LoginSucceeded { wrapped_key });
        }
        Ok(vault_error(VaultErrorCode::Busy))
    }

    fn register_start(
        &self,
        now: Now,
        session: &mut VaultSession,
        mode: RegistrationMode,
        registration_request: &[u8],
    ) -> Result<VaultResponse, Error> {
        let logged_in = match session.state {
            SessionState::Idle => None,
            SessionState::LoggedIn { nonce } => Some(nonce),
            _ => return Ok(vault_error(VaultErrorCode::UnexpectedRequest)),
        };
        let Ok(request) = RegistrationRequest::<Suite>::deserialize(registration_request) else {
            return Ok(vault_error(VaultErrorCode::BadRequest));
        };
        let replaces = match mode {
            RegistrationMode::ChangePassword => match logged_in {
                Some(n) => Some(n),
                None => return Ok(vault_error(VaultErrorCode::NotLoggedIn)),
            },
            RegistrationMode::Create => {
                let _guard = self.lock(&session.account);
                let mut settled = None;
                for _ in 0..CAS_RETRIES {
                    if let Some(cur) = self.load_settled(now, &session.account)? {
                        settled = Some(cur);
                        break;
                    }
                }
                match settled {
                    None => return Ok(vault_error(VaultErrorCode::Busy)),
                    Some(Current {
                        body: RecordBody::Registered(_),
                        ..
                    }) => return Ok(VaultResponse::AlreadyRegistered),
                    Some(_) => None,
                }
            }
            RegistrationMode::Replace => None,
        };
        let mut nonce = [0u8; REGISTRATION_NONCE_LEN];
        self.platform.entropy.fill(&mut nonce)?;
        let cred_id = opaque::credential_identifier(&session.account, &nonce);
        let Ok(started) = ServerRegistration::<Suite>::start(&self.setup, request, &cred_id) else {
            return Ok(vault_error(VaultErrorCode::BadRequest));
        };
        session.state = SessionState::RegistrationPending(PendingRegistration {
            mode,
            nonce,
            replaces,
        });
        Ok(VaultResponse::RegisterStarted {
            registration_response: started.message.serialize().to_vec(),
        })
    }

    fn register_finish(
        &self,
        now: Now,
        session: &mut VaultSession,
        registration_upload: &[u8],
        wrapped_key: WrappedKey,
    ) -> Result<VaultResponse, Error> {
        let SessionState::RegistrationPending(pending) = &session.state else {
            return Ok(vault_error(VaultErrorCode::UnexpectedRequest));
        };
        let Ok(upload) = RegistrationUpload::<Suite>::deserialize(registration_upload) else {
            return Ok(vault_error(VaultErrorCode::BadRequest));
        };
        let (mode, nonce, replaces) = (pending.mode, pending.nonce, pending.replaces);
        let account = session.account.clone();
        let opaque_record = ServerRegistration::<Suite>::finish(upload)
            .serialize()
            .to_vec();
        let fresh = RecordBody::Registered(Registration {
            attempts_used: 0,
            registration_nonce: nonce,
            opaque_record,
            wrapped_key: *wrapped_key.as_bytes(),
        });
        let _guard = self.lock(&account);
        for _ in 0..CAS_RETRIES {
            let Some(cur) = self.load_settled(now, &account)? else {
                continue;
            };
            match (mode, &cur.body) {
                (RegistrationMode::Create, RecordBody::Registered(_)) => {
                    session.state = SessionState::Idle;
                    return Ok(VaultResponse::AlreadyRegistered);
                }
                (RegistrationMode::ChangePassword, RecordBody::Registered(r))
                    if Some(r.registration_nonce) == replaces => {}
                (RegistrationMode::ChangePassword, _) => {
                    session.state = SessionState::Idle;
                    return Ok(vault_error(VaultErrorCode::RecordChanged));
                }
                _ => {}
            }
            match self.commit(&account, cur.version, &fresh)? {
                Commit::Done => {}
                Commit::Conflict => continue,
            }
            session.state = SessionState::Idle;
            let mode_label = match mode {
                RegistrationMode::Create => "create",
                RegistrationMode::Replace => "replace",
                RegistrationMode::ChangePassword => "change_password",
            };
            metrics::counter!("vault_registrations_total", "mode" => mode_label).increment(1);
            tracing::info!(%account, mode = mode_label, "registration committed");
            return Ok(VaultResponse::Registered {
                max_attempts: self.params.max_attempts,
            });
        }
        Ok(vault_error(VaultErrorCode::Busy))
    }

    fn delete(&self, now: Now, session: &mut VaultSession) -> Result<VaultResponse, Error> {
        let nonce = match session.state {
            SessionState::LoggedIn { nonce } => nonce,
            SessionState::Idle => return Ok(vault_error(VaultErrorCode::NotLoggedIn)),
            _ => return Ok(vault_error(VaultErrorCode::UnexpectedRequest)),
        };
        let account = session.account.clone();
        let _guard = self.lock(&account);
        for _ in 0..CAS_RETRIES {
            let Some(cur) = self.load_settled(now, &account)? else {
                continue;
            };
            match &cur.body {
                RecordBody::Registered(r) if r.registration_nonce == nonce => {}
                _ => {
                    session.state = SessionState::Idle;
                    return Ok(vault_error(VaultErrorCode::RecordChanged));
                }
            }
            match self.commit(&account, cur.version, &RecordBody::Deleted)? {
                Commit::Done => {}
                Commit::Conflict => continue,
            }
            session.state = SessionState::Idle;
            metrics::counter!("vault_deletions_total").increment(1);
            tracing::info!(%account, "registration deleted by its owner");
            return Ok(VaultResponse::Deleted);
        }
        Ok(vault_error(VaultErrorCode::Busy))
    }

    // --- helpers --------------------------------------------------------

    /// Ends a pending login without success. On the record's last attempt
    /// this erases the record.
    fn abandon(&self, now: Now, session: &mut VaultSession) {
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
        for _ in 0..CAS_RETRIES {
            match self.load_settled(now, &account) {
                Ok(Some(_)) => return,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(%account, error = %e, "erasing an exhausted record failed; the next request will retry");
                    return;
                }
            }
        }
    }

    fn report(&self, body: &RecordBody) -> StatusReport {
        let max = self.params.max_attempts;
        match body {
            RecordBody::Deleted => StatusReport {
                state: RecordState::None,
                attempts_remaining: 0,
                max_attempts: max,
            },
            RecordBody::Locked { .. } => StatusReport {
                state: RecordState::Locked,
                attempts_remaining: 0,
                max_attempts: max,
            },
            RecordBody::Registered(r) => StatusReport {
                state: RecordState::Registered,
                attempts_remaining: max.saturating_sub(r.attempts_used),
                max_attempts: max,
            },
        }
    }

    fn login_params<'a>(&'a self, account: &'a AccountId) -> ServerLoginParameters<'a, 'a> {
        ServerLoginParameters {
            context: Some(opaque::CONTEXT),
            identifiers: opaque::identifiers(account, &self.params.fleet_id),
        }
    }

    fn lock(&self, account: &AccountId) -> MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        account.hash(&mut h);
        self.locks[(h.finish() as usize) % self.locks.len()].lock()
    }

    fn in_flight(&self, account: &AccountId, nonce: &RegistrationNonce) -> bool {
        self.last_attempts_in_flight
            .lock()
            .contains(&(account.clone(), *nonce))
    }

    fn failpoint(&self, point: Failpoint) {
        if let Some(hook) = &self.failpoint {
            hook(point);
        }
    }

    fn load(&self, account: &AccountId) -> Result<Current, Error> {
        self.load_for(account, true)
    }

    /// [`Vault::load`], linearizable when `fresh`, else through
    /// [`RecordLog::read_for_update`] (possibly stale; see its rules).
    fn load_for(&self, account: &AccountId, fresh: bool) -> Result<Current, Error> {
        let stored = if fresh {
            self.platform.log.read(account)?
        } else {
            self.platform.log.read_for_update(account)?
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
    fn load_settled(&self, now: Now, account: &AccountId) -> Result<Option<Current>, Error> {
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

    fn commit_erase(&self, now: Now, account: &AccountId, version: u64) -> Result<Commit, Error> {
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

    fn commit(
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
        let outcome = self.platform.log.commit(Command::PutRecord {
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

#[cfg(test)]
mod tests;
