//! The crate's one error type. Messages name what to fix; none carries
//! secret bytes, so every variant may be logged.

use std::path::PathBuf;

/// Everything that can go wrong in the vault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The PKCS#11 library could not be loaded or initialised.
    #[error("cannot load the PKCS#11 module {path}: {reason}")]
    HsmModule { path: PathBuf, reason: String },
    /// No initialised token carries the configured label.
    #[error("no initialised token labelled {0:?} in the PKCS#11 module (check hsm.token_label, and SOFTHSM2_CONF for SoftHSM)")]
    TokenNotFound(String),
    /// C_Login refused the PIN.
    #[error("HSM login failed: the PIN for token {0:?} is wrong or locked")]
    WrongPin(String),
    /// The master key is not in the token.
    #[error("no master key labelled {0:?} in the token; run `hsm-vault init` (first replica) or the key ceremony (other replicas)")]
    MasterKeyMissing(String),
    /// `hsm.require_hardware` is set and the token is a software one.
    #[error("{0}; hsm.require_hardware refuses software tokens (their keys are files on this host): use the HSM's PKCS#11 module, or unset it outside production")]
    SoftwareToken(String),
    /// `init` found a master key already.
    #[error("a master key labelled {0:?} already exists in the token; refusing to create another")]
    MasterKeyExists(String),
    /// A PKCS#11 call failed for another reason.
    #[error("HSM operation {op} failed: {detail}")]
    Hsm { op: &'static str, detail: String },
    /// Sealed bytes did not authenticate: tampered, swapped between
    /// accounts, or sealed under another master key.
    #[error("sealed data failed its integrity check")]
    Integrity,
    /// The fleet secrets file is missing, unreadable or not ours.
    #[error("fleet secrets file {path}: {reason}")]
    FleetSecrets { path: PathBuf, reason: String },
    /// The fleet's sealed parameters are invalid, or this replica's
    /// configuration disagrees with them.
    #[error("fleet parameters: {0}")]
    FleetParams(String),
    /// The embedded store could not be opened or used.
    #[error("store {path}: {reason}")]
    Store { path: PathBuf, reason: String },
    /// A storage operation failed after start-up.
    #[error("storage error: {0}")]
    Storage(String),
    /// A stored value does not parse (corruption or a format from the future).
    #[error("stored data is malformed: {0}")]
    Corrupt(&'static str),
    /// The change could not be committed durably right now (no quorum, the
    /// replica lost leadership, IO trouble). Nothing was acknowledged.
    #[error("cannot commit right now: {0}")]
    Unavailable(&'static str),
    /// This replica is not the leader.
    #[error("this replica is not the leader")]
    NotLeader { leader_hint: Option<String> },
    /// The store's disk failed (a write, resize or fsync): the vault stops
    /// rather than go on ([`crate::state::disk`]). The binary exits with
    /// [`crate::state::disk::EXIT_DISK_FAILED`].
    #[error(
        "{0}; the vault stopped so that nothing is answered from a write that may not be \
         durable. Fix the disk (free space, or replace it) and start the vault again: it reopens \
         the store from what is durable, and as a replica catches up from its group"
    )]
    DiskFailed(String),
    /// The operating system's random generator failed. Not retryable: a
    /// process that cannot draw random numbers must not go on.
    #[error("no randomness from the operating system: {0}")]
    Entropy(String),
    /// The replica could not start (a start-up task failed, or the
    /// consensus engine refused its configuration or storage).
    #[error("start-up failed: {0}")]
    Startup(String),
    /// The key ceremony could not proceed.
    #[error("key ceremony: {0}")]
    Ceremony(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Protocol(#[from] protocol_spec::Error),
    #[error(transparent)]
    Service(#[from] service_kit::Error),
}

impl Error {
    /// Whether the same operation may succeed if tried again later.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_) | Error::NotLeader { .. } | Error::Hsm { .. } | Error::Storage(_)
        )
    }

    /// Stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Error::HsmModule { .. } => "hsm_module",
            Error::TokenNotFound(_) => "token_not_found",
            Error::WrongPin(_) => "wrong_pin",
            Error::MasterKeyMissing(_) => "master_key_missing",
            Error::MasterKeyExists(_) => "master_key_exists",
            Error::SoftwareToken(_) => "software_token",
            Error::Hsm { .. } => "hsm",
            Error::Integrity => "integrity",
            Error::FleetSecrets { .. } => "fleet_secrets",
            Error::FleetParams(_) => "fleet_params",
            Error::Store { .. } => "store",
            Error::Storage(_) => "storage",
            Error::DiskFailed(_) => "disk_failed",
            Error::Corrupt(_) => "corrupt",
            Error::Unavailable(_) => "unavailable",
            Error::NotLeader { .. } => "not_leader",
            Error::Entropy(_) => "entropy",
            Error::Startup(_) => "startup",
            Error::Ceremony(_) => "ceremony",
            Error::Io { .. } => "io",
            Error::Protocol(_) => "protocol",
            Error::Service(_) => "service",
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
