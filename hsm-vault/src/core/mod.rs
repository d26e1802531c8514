//! The sans-IO vault core (SPEC.md section 8).
//!
//! [`Vault::handle`] takes the time, a tunnel's [`VaultSession`] and one
//! decoded request, and returns the response. It reaches the outside world
//! only through [`Platform`]: the HSM ([`Sealer`]), the records and their
//! durable commits ([`Records`]) and randomness ([`Entropy`]). It reads no
//! clock and does no IO of its own, so tests drive it without sockets or
//! sleeps, and the same code runs single-node or behind Raft.
//!
//! - this file: the types, [`Vault::handle`] and its dispatch, status;
//! - [`login`]: login start (counting), finish (reset), abandon (erase);
//! - [`registration`]: create, replace, change password, delete;
//! - [`access`]: the per-account lock, loads, compare-and-set commits and
//!   the one retry loop;
//! - [`session`]: one tunnel's session state.
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

mod access;
pub mod limits;
mod login;
mod registration;
mod session;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use opaque_ke::{ServerLoginParameters, ServerSetup};
use parking_lot::Mutex;
use protocol_spec::codes::VaultErrorCode;
use protocol_spec::ids::{AccountId, FleetId};
use protocol_spec::messages::vault::{VaultRequest, VaultResponse};
use protocol_spec::opaque::{self, Suite};

use session::SessionState;
pub use session::VaultSession;

use access::{vault_error, Pass};

use crate::entropy::Entropy;
use crate::seal::Sealer;
use crate::state::record::RegistrationNonce;
use crate::state::records::Records;
use crate::Error;

/// Shards of the per-account lock.
const LOCK_SHARDS: usize = 256;

/// The outside world of the core.
#[derive(Clone)]
pub struct Platform {
    pub sealer: Arc<dyn Sealer>,
    pub records: Arc<dyn Records>,
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
    /// Per-account rate limits (not part of the attempt rule).
    pub account_limits: limits::AccountLimits,
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
    /// Raft: a log batch holding a record command is durable on this
    /// replica, not yet reported (a follower has not acknowledged it, a
    /// leader has not counted itself).
    LogAppended,
    /// Raft: a record command is applied durably on this replica; the
    /// leader has not yet confirmed it with the others nor answered.
    RecordApplied,
}

impl Failpoint {
    /// Every fail point, by the name `HSM_VAULT_FAILPOINT` takes.
    pub const ALL: [(&'static str, Failpoint); 4] = [
        ("attempt-committed", Failpoint::AttemptCommitted),
        ("reset-committed", Failpoint::ResetCommitted),
        ("log-appended", Failpoint::LogAppended),
        ("record-applied", Failpoint::RecordApplied),
    ];
}

/// The fail point this process aborts at, for the points below the core
/// (the Raft log and state machine); armed once at start-up.
#[cfg(feature = "failpoints")]
static ARMED: std::sync::OnceLock<Failpoint> = std::sync::OnceLock::new();

/// Makes the process abort when it reaches `point` (test builds only).
#[cfg(feature = "failpoints")]
pub fn arm_failpoint(point: Failpoint) {
    let _ = ARMED.set(point);
}

/// Aborts the process here if `point` is armed; nothing in a build
/// without the `failpoints` feature.
#[inline]
pub(crate) fn failpoint_reached(point: Failpoint) {
    #[cfg(feature = "failpoints")]
    if ARMED.get() == Some(&point) {
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = point;
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
    limiter: limits::AccountLimiter,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Vault {
    pub fn new(platform: Platform, setup: ServerSetup<Suite>, params: VaultParams) -> Self {
        Vault {
            limiter: limits::AccountLimiter::new(params.account_limits),
            platform,
            setup,
            params,
            locks: (0..LOCK_SHARDS).map(|_| Mutex::new(())).collect(),
            last_attempts_in_flight: Mutex::new(HashSet::new()),
            failpoint: None,
        }
    }

    /// Installs a failpoint hook (tests of crash behaviour only: the method
    /// exists only in builds with the `failpoints` feature).
    #[cfg(feature = "failpoints")]
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
            session.login_expired = true;
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
        let expired_by_timer = std::mem::take(&mut session.login_expired);
        if expired_by_timer && matches!(request, VaultRequest::LoginFinish { .. }) {
            return Ok(vault_error(VaultErrorCode::LoginExpired));
        }
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

    fn status(&self, now: Now, session: &mut VaultSession) -> Result<VaultResponse, Error> {
        let _guard = self.lock(&session.account);
        self.answer_with_retries(|_| {
            Ok(match self.load_settled(now, &session.account)? {
                Some(cur) => Pass::Done(VaultResponse::Status(self.report(&cur.body))),
                None => Pass::Again,
            })
        })
    }

    fn login_params<'a>(&'a self, account: &'a AccountId) -> ServerLoginParameters<'a, 'a> {
        ServerLoginParameters {
            context: Some(opaque::CONTEXT),
            identifiers: opaque::identifiers(account, &self.params.fleet_id),
        }
    }

    fn failpoint(&self, point: Failpoint) {
        if let Some(hook) = &self.failpoint {
            hook(point);
        }
    }
}

#[cfg(test)]
mod tests;
