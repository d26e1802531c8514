//! Per-tunnel session state (SPEC.md section 8.2). Lives in memory for the
//! tunnel's lifetime only; a new tunnel starts `Idle`.

use std::time::Instant;

use opaque_ke::ServerLogin;
use protocol_spec::ids::AccountId;
use protocol_spec::messages::vault::RegistrationMode;
use protocol_spec::opaque::Suite;

use crate::state::record::RegistrationNonce;

/// One tunnel's session with the vault.
pub struct VaultSession {
    pub(crate) account: AccountId,
    pub(crate) state: SessionState,
    /// The driver's timer expired this session's login: a `LoginFinish`
    /// arriving next is told so (SPEC 8.2), as one that finds the deadline
    /// passed itself would be.
    pub(crate) login_expired: bool,
}

pub(crate) enum SessionState {
    Idle,
    /// KE2 was sent; waiting for KE3.
    LoginPending(PendingLogin),
    /// A login succeeded in this tunnel, for the record with this nonce.
    LoggedIn {
        nonce: RegistrationNonce,
    },
    /// `RegisterStarted` was sent; waiting for the upload.
    RegistrationPending(PendingRegistration),
}

pub(crate) struct PendingLogin {
    pub server: ServerLogin<Suite>,
    pub nonce: RegistrationNonce,
    pub deadline: Instant,
    /// This login spent the record's last attempt: if it does not succeed,
    /// the record is erased.
    pub last_attempt: bool,
}

pub(crate) struct PendingRegistration {
    pub mode: RegistrationMode,
    /// The new registration's nonce (its OPRF key).
    pub nonce: RegistrationNonce,
    /// For a password change: the record the session logged in to.
    pub replaces: Option<RegistrationNonce>,
}

impl VaultSession {
    pub fn new(account: AccountId) -> Self {
        VaultSession {
            account,
            state: SessionState::Idle,
            login_expired: false,
        }
    }

    pub fn account(&self) -> &AccountId {
        &self.account
    }

    /// When the pending login expires, if one is pending: the driver calls
    /// [`crate::core::Vault::expire`] then.
    pub fn login_deadline(&self) -> Option<Instant> {
        match &self.state {
            SessionState::LoginPending(p) => Some(p.deadline),
            _ => None,
        }
    }

    /// Stable label of the state, for logs and tests.
    pub fn state_label(&self) -> &'static str {
        match self.state {
            SessionState::Idle => "idle",
            SessionState::LoginPending(_) => "login_pending",
            SessionState::LoggedIn { .. } => "logged_in",
            SessionState::RegistrationPending(_) => "registration_pending",
        }
    }
}

impl std::fmt::Debug for VaultSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VaultSession({}, {})", self.account, self.state_label())
    }
}
