//! High-level vault operations for one enrolled device, over chatd.
//!
//! This module owns the async operations `backupctl` runs against chatd and
//! the vault (enrol, status, register, recover `K`, change password,
//! delete) and the one place where they are retried:
//!
//! - connecting and opening a tunnel are retried while nothing has been
//!   spent (SPEC.md 8.5, 9.4), with [`Backoff::client_default`] and at most
//!   [`MAX_TRIES`] tries;
//! - a whole `Status` flow and a whole registration flow (new tunnel, new
//!   `RegisterStart`) are retried the same way;
//! - nothing is retried once a `LoginStart` was sent: each one may spend a
//!   password attempt. Failures after that point come back as
//!   [`ClientError::LoginInterrupted`] so the person learns an attempt may
//!   be gone, and, on the last attempt, that the key may be gone with it.
//!
//! Every `LoginStart` goes out in [`Device`]'s one login path, which first
//! asks the vault's `Status` in the same tunnel. When one attempt is left,
//! [`last_attempt_step`] decides whether to ask the person (a
//! [`LastAttemptConsent`]) before spending it, or to go on with a warning
//! when nobody can be asked. A wrong password ends the tunnel with
//! `TunnelClose(0)`, never with a KE3 the client could not build (SPEC.md
//! 6.4).
//!
//! Everything here is IO glue around the sans-IO flows of
//! [`crate::vault_flow`]. What the device does with its own copy of `K`
//! around these operations is [`crate::custody`]'s business; backup files
//! are [`crate::backup`]'s.

use std::time::{Duration, Instant};

use protocol_spec::ids::EnrolmentCode;
use protocol_spec::keys::StaticSecret;
use protocol_spec::messages::vault::{
    Escrow, RecordState, RegistrationMode, StatusReport, VaultRequest, VaultResponse,
};
use protocol_spec::password::Password;
use protocol_spec::retry::Backoff;
use protocol_spec::root_key::RootKey;

use crate::connection::{Connection, VaultTunnel};
use crate::error::ClientError;
use crate::profile::Profile;
use crate::vault_flow::{self, FlowError, NewRegistration, PasswordLogin, PasswordRegistration};

/// Most tries of one retryable step (SPEC.md 9.4, interactive operations).
pub const MAX_TRIES: u32 = 5;

/// No new try starts after this long: each try may itself wait up to
/// [`crate::connection::REQUEST_TIMEOUT`] on a server that accepts but
/// never answers.
pub const RETRY_WINDOW: Duration = Duration::from_secs(60);

/// The one retry helper: exponential backoff with full jitter, giving up
/// after [`MAX_TRIES`] tries or at the first error that retrying cannot
/// fix.
#[derive(Debug)]
struct RetryBudget {
    backoff: Backoff,
    started: Instant,
}

impl RetryBudget {
    fn new() -> Self {
        RetryBudget {
            backoff: Backoff::client_default(),
            started: Instant::now(),
        }
    }

    /// Waits before the next try, or hands `error` back if it is final.
    async fn absorb(&mut self, error: ClientError) -> Result<(), ClientError> {
        if !error.retryable()
            || self.backoff.attempts() + 1 >= MAX_TRIES
            || self.started.elapsed() >= RETRY_WINDOW
        {
            return Err(error);
        }
        let mut random = [0u8; 8];
        // Without randomness, back off without jitter rather than fail.
        let random = match getrandom::fill(&mut random) {
            Ok(()) => u64::from_le_bytes(random),
            Err(_) => u64::MAX,
        };
        let delay = self.backoff.next_delay(random);
        tracing::debug!(error = %error, ?delay, "retrying");
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// How `enroll` went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrolment {
    /// This connection enrolled the device key (the code is now used).
    EnrolledNow,
    /// The device key was already enrolled; the code was not needed.
    AlreadyEnrolled,
}

/// `K` as a successful login released it, and the escrow it came from.
#[derive(Debug)]
pub struct Released {
    /// The escrowed root key.
    pub key: RootKey,
    /// The escrow as the `Status` just before the login, in the same
    /// tunnel, described it (SPEC.md 8.7). A registration committed
    /// between the two would have failed the login unless it used the
    /// same password. `None` from a vault that does not describe it.
    pub escrow: Option<Escrow>,
}

/// An enrolled (or enrolling) device acting for the profile's account.
pub struct Device {
    profile: Profile,
    key: StaticSecret,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({})", self.profile.account())
    }
}

impl Device {
    pub fn new(profile: Profile, key: StaticSecret) -> Self {
        Device { profile, key }
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Connects with the enrolment code. chatd admits an already enrolled
    /// device without looking at the code, so this also tells whether the
    /// device was enrolled before.
    pub async fn enroll(&self, code: &EnrolmentCode) -> Result<Enrolment, ClientError> {
        let conn = self.connect(Some(code)).await?;
        let outcome = if conn.hello.enrolled_now {
            Enrolment::EnrolledNow
        } else {
            Enrolment::AlreadyEnrolled
        };
        conn.close().await;
        Ok(outcome)
    }

    /// The vault's record for this account. Retried as a whole.
    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        let mut budget = RetryBudget::new();
        loop {
            match self.status_once().await {
                Ok(s) => return Ok(s),
                Err(e) => budget.absorb(e).await?,
            }
        }
    }

    /// One try of [`Device::status`], for best-effort checks.
    pub async fn status_once(&self) -> Result<StatusReport, ClientError> {
        let (mut conn, mut t) = self.open_once().await?;
        let r = conn.request(&mut t, &VaultRequest::Status).await?;
        let report = vault_flow::status_from(&r)?;
        finish(conn, t).await;
        Ok(report)
    }

    /// Escrows `key` under `password` with `mode` `Create` or `Replace`.
    /// Returns what the vault said about the new escrow. Retried as a
    /// whole; see [`ClientError::RegistrationUnknown`] for the one
    /// ambiguous case.
    pub async fn register(
        &self,
        password: &Password,
        mode: RegistrationMode,
        key: &RootKey,
    ) -> Result<NewRegistration, ClientError> {
        let mut budget = RetryBudget::new();
        let mut finish_sent = false;
        loop {
            match self
                .register_once(password, mode, key, &mut finish_sent)
                .await
            {
                Ok(registered) => return Ok(registered),
                // An earlier try's RegisterFinish may have committed before
                // its answer was lost; the record found now may be ours.
                Err(ClientError::Flow(FlowError::AlreadyRegistered))
                    if finish_sent && mode == RegistrationMode::Create =>
                {
                    return Err(ClientError::RegistrationUnknown)
                }
                Err(e) => budget.absorb(e).await?,
            }
        }
    }

    async fn register_once(
        &self,
        password: &Password,
        mode: RegistrationMode,
        key: &RootKey,
        finish_sent: &mut bool,
    ) -> Result<NewRegistration, ClientError> {
        let (mut conn, mut t) = self.open_once().await?;
        let (flow, start) = PasswordRegistration::start(password, mode)?;
        let r = conn.request(&mut t, &start).await?;
        let finish_req = flow.finish(&r, self.profile.account(), &self.profile.fleet_id, key)?;
        *finish_sent = true;
        let r = conn.request(&mut t, &finish_req).await?;
        let registered = vault_flow::registered(&r, mode)?;
        finish(conn, t).await;
        Ok(registered)
    }

    /// Logs in with `password` and returns the escrowed `K`. Spends an
    /// attempt if the password is wrong; never retried after `LoginStart`.
    /// `consent` is asked before the last attempt.
    pub async fn recover_key(
        &self,
        password: &Password,
        consent: &dyn LastAttemptConsent,
    ) -> Result<Released, ClientError> {
        let (conn, t, released) = self.logged_in(password, consent).await?;
        finish(conn, t).await;
        Ok(released)
    }

    /// Logs in with `old`, then in the same tunnel escrows the same `K`
    /// under `new` (mode `ChangePassword`). Returns `K` and what the vault
    /// said about the new escrow.
    pub async fn change_password(
        &self,
        old: &Password,
        new: &Password,
        consent: &dyn LastAttemptConsent,
    ) -> Result<(RootKey, NewRegistration), ClientError> {
        let (mut conn, mut t, Released { key, .. }) = self.logged_in(old, consent).await?;
        let mode = RegistrationMode::ChangePassword;
        let (flow, start) = PasswordRegistration::start(new, mode)?;
        let r = conn.request(&mut t, &start).await?;
        let finish_req = flow.finish(&r, self.profile.account(), &self.profile.fleet_id, &key)?;
        let r = conn.request(&mut t, &finish_req).await?;
        let registered = vault_flow::registered(&r, mode)?;
        finish(conn, t).await;
        Ok((key, registered))
    }

    /// Logs in with `password` and deletes the escrow (password backups
    /// disabled). Returns `K`, so the caller can check it against the
    /// device's copy.
    pub async fn delete(
        &self,
        password: &Password,
        consent: &dyn LastAttemptConsent,
    ) -> Result<RootKey, ClientError> {
        let (mut conn, mut t, Released { key, .. }) = self.logged_in(password, consent).await?;
        let r = conn.request(&mut t, &VaultRequest::Delete).await?;
        vault_flow::deleted(&r)?;
        finish(conn, t).await;
        Ok(key)
    }

    /// A tunnel in which `password` has logged in, and `K` with the escrow
    /// it came from. The one path
    /// to a `LoginStart`: the tunnel's `Status` comes first, and the
    /// person is asked (or warned) before a last attempt. An outcome the
    /// vault gave (wrong password, locked...) closes the tunnel politely.
    async fn logged_in(
        &self,
        password: &Password,
        consent: &dyn LastAttemptConsent,
    ) -> Result<(Connection, VaultTunnel, Released), ClientError> {
        let (mut conn, mut t, mut status) = self.open_with_status().await?;
        let mut last_attempt = is_last_attempt(&status);
        match last_attempt_step(&status, consent.can_ask()) {
            LastAttemptStep::Go => {}
            LastAttemptStep::WarnAndGo => consent.warn(LAST_ATTEMPT_WARNING),
            LastAttemptStep::Ask => {
                let asked = Instant::now();
                let yes = consent.ask(LAST_ATTEMPT_QUESTION);
                if !matches!(yes, Ok(true)) {
                    finish(conn, t).await;
                    return Err(yes.err().unwrap_or(ClientError::Cancelled));
                }
                // Nobody read the connection while the person thought; past
                // half of chatd's idle timeout it may be gone (SPEC 4.6).
                // Nothing is spent yet, so start over on a fresh one.
                let idle = Duration::from_secs(u64::from(conn.hello.idle_timeout_secs));
                if asked.elapsed() >= idle / 2 {
                    finish(conn, t).await;
                    let (c, tunnel, fresh) = self.open_with_status().await?;
                    (conn, t, status) = (c, tunnel, fresh);
                    last_attempt = is_last_attempt(&status);
                }
            }
        }
        match self.login(&mut conn, &mut t, password, last_attempt).await {
            Ok(key) => Ok((
                conn,
                t,
                Released {
                    key,
                    escrow: status.escrow,
                },
            )),
            Err(e @ ClientError::Flow(_)) => {
                finish(conn, t).await;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// One login in an open tunnel. Transport failures after `LoginStart`
    /// was sent become [`ClientError::LoginInterrupted`]; `last_attempt`
    /// says whether the status before it left one attempt. Every
    /// `LoginStart` this crate sends goes out here, so rules about spending
    /// an attempt belong here too.
    async fn login(
        &self,
        conn: &mut Connection,
        t: &mut VaultTunnel,
        password: &Password,
        mut last_attempt: bool,
    ) -> Result<RootKey, ClientError> {
        let account = self.profile.account();
        let (flow, start) = PasswordLogin::start(password)?;
        let interrupted = |e: ClientError, last_attempt: bool| match e {
            ClientError::Flow(_) => e,
            other => ClientError::LoginInterrupted {
                source: Box::new(other),
                last_attempt,
            },
        };
        let r = conn
            .request(t, &start)
            .await
            .map_err(|e| interrupted(e, last_attempt))?;
        if let VaultResponse::LoginStarted {
            attempts_remaining: 0,
            ..
        } = r
        {
            // Another device may have spent one since our status.
            last_attempt = true;
        }
        let (finish_req, verified) = flow.finish(&r, account, &self.profile.fleet_id)?;
        let r = conn
            .request(t, &finish_req)
            .await
            .map_err(|e| interrupted(e, last_attempt))?;
        Ok(verified.key(&r, account)?)
    }

    /// Connects, opens a tunnel and reads the vault's status in it,
    /// retrying the whole while that can help (nothing is spent yet).
    async fn open_with_status(
        &self,
    ) -> Result<(Connection, VaultTunnel, StatusReport), ClientError> {
        let mut budget = RetryBudget::new();
        loop {
            let attempt = async {
                let (mut conn, mut t) = self.open_once().await?;
                let r = conn.request(&mut t, &VaultRequest::Status).await?;
                let status = vault_flow::status_from(&r)?;
                Ok::<_, ClientError>((conn, t, status))
            };
            match attempt.await {
                Ok(ready) => return Ok(ready),
                Err(e) => budget.absorb(e).await?,
            }
        }
    }

    /// Connects, retrying while that can help.
    async fn connect(&self, code: Option<&EnrolmentCode>) -> Result<Connection, ClientError> {
        let mut budget = RetryBudget::new();
        loop {
            match Connection::connect(&self.profile.endpoint, &self.key, code.cloned()).await {
                Ok(c) => return Ok(c),
                Err(e) => budget.absorb(e).await?,
            }
        }
    }

    async fn open_once(&self) -> Result<(Connection, VaultTunnel), ClientError> {
        let mut conn = Connection::connect(&self.profile.endpoint, &self.key, None).await?;
        let t = conn
            .open_tunnel(&self.profile.fleet_key, &self.profile.fleet_id)
            .await?;
        Ok((conn, t))
    }
}

/// Closes a finished tunnel and its connection politely; the operation has
/// already succeeded, so failures here do not matter.
async fn finish(mut conn: Connection, t: VaultTunnel) {
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close_tunnel(t)).await;
    conn.close().await;
}

/// Whether the vault's status leaves exactly one attempt: the next login
/// start, if its password is wrong or its tunnel breaks, erases the key.
pub fn is_last_attempt(status: &StatusReport) -> bool {
    status.state == RecordState::Registered && status.attempts_remaining == 1
}

/// What happens before a `LoginStart`, given the status read in the same
/// tunnel and whether a person can be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastAttemptStep {
    /// More than one attempt left (or nothing to spend): go on.
    Go,
    /// The last attempt, and a person at a terminal: ask first.
    Ask,
    /// The last attempt and nobody to ask (a script piping the password):
    /// say so where a person or a log sees it, and go on, since the
    /// caller chose to try this password.
    WarnAndGo,
}

/// The decision before every `LoginStart` (see [`LastAttemptStep`]).
pub fn last_attempt_step(status: &StatusReport, can_ask: bool) -> LastAttemptStep {
    match (is_last_attempt(status), can_ask) {
        (false, _) => LastAttemptStep::Go,
        (true, true) => LastAttemptStep::Ask,
        (true, false) => LastAttemptStep::WarnAndGo,
    }
}

/// What a person is told before the last attempt.
pub const LAST_ATTEMPT_WARNING: &str = "one password attempt is left: if this password is wrong, or the connection breaks after it is sent, the vault erases the escrowed backup key for good";

/// What a person is asked before the last attempt.
pub const LAST_ATTEMPT_QUESTION: &str = "One password attempt is left: if this password is wrong, or the connection breaks after it is sent, the vault erases the escrowed backup key for good. Try this password?";

/// Whoever is consulted before a login start spends the last attempt
/// ([`crate::terminal::TerminalConsent`] for `backupctl`).
pub trait LastAttemptConsent {
    /// Whether a person can answer a question now.
    fn can_ask(&self) -> bool;
    /// Asks `question`; `Ok(true)` means go on.
    fn ask(&self, question: &str) -> Result<bool, ClientError>;
    /// Tells `warning` without asking.
    fn warn(&self, warning: &str);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: RecordState, attempts_remaining: u32) -> StatusReport {
        StatusReport {
            state,
            attempts_remaining,
            max_attempts: 10,
            escrow: None,
        }
    }

    #[test]
    fn only_the_last_attempt_asks_and_nobody_to_ask_means_a_warning() {
        use LastAttemptStep::*;
        let last = status(RecordState::Registered, 1);
        assert_eq!(last_attempt_step(&last, true), Ask);
        assert_eq!(last_attempt_step(&last, false), WarnAndGo);
        for s in [
            status(RecordState::Registered, 2),
            status(RecordState::Registered, 10),
            // Nothing left to spend: the login start answers Locked (or
            // busy while another tunnel holds the last attempt).
            status(RecordState::Registered, 0),
            status(RecordState::Locked, 0),
            status(RecordState::None, 0),
        ] {
            assert_eq!(last_attempt_step(&s, true), Go, "{s:?}");
            assert_eq!(last_attempt_step(&s, false), Go, "{s:?}");
        }
    }
}
