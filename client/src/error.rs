//! The client library's one error type. Every variant says what happened in
//! one sentence a person can act on, and whether trying again can help.

use protocol_spec::codes::{CloseCode, TunnelCloseCode};

use crate::backup::BackupIoError;
use crate::vault_flow::FlowError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// chatd could not be reached or the connection broke.
    #[error("cannot reach chatd at {url}: {reason}")]
    Connect { url: String, reason: String },
    /// Something answered at the URL but refused the WebSocket upgrade for
    /// good (HTTP 4xx other than 408/429, or an unusable URL): retrying
    /// the same URL cannot help.
    #[error("chatd at {url} refused the connection: {reason}")]
    Refused { url: String, reason: String },
    /// chatd closed the connection with a documented code.
    #[error("chatd closed the connection: {}", .0.reason())]
    Closed(CloseCode),
    /// The connection dropped without a close code.
    #[error("the connection to chatd dropped")]
    Dropped,
    /// The tunnel to the vault was closed with a documented code.
    #[error("the vault tunnel closed: {}", .0.reason())]
    TunnelClosed(TunnelCloseCode),
    /// A peer sent something the protocol does not allow; not retryable.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A vault operation ended without success (wrong password, locked...).
    #[error(transparent)]
    Flow(#[from] FlowError),
    /// Reading or writing a backup failed.
    #[error(transparent)]
    Backup(#[from] BackupIoError),
    /// The profile or a key file is missing, malformed or unsafe (for
    /// example readable by other users). The message says how to fix it.
    #[error("{0}")]
    Profile(String),
    /// The device key file does not exist: this device was never enrolled.
    #[error("no device key at {}: this device is not enrolled; run `backupctl enroll --code CODE` with a code from your operator", path.display())]
    NoDeviceKey { path: std::path::PathBuf },
    /// The connection failed after a `LoginStart` was sent. Never retried
    /// automatically: the attempt may have been counted. On the last
    /// attempt (`last_attempt`) the vault may have erased the key with it.
    #[error("{source} during the password check ({})", if *.last_attempt {
        "it was the last password attempt, so the escrowed key may now be erased"
    } else {
        "one password attempt may have been used"
    })]
    LoginInterrupted {
        source: Box<ClientError>,
        last_attempt: bool,
    },
    /// The password cannot be prepared (SPEC.md 7.8): nothing was sent, no
    /// attempt was spent.
    #[error(transparent)]
    Password(#[from] protocol_spec::error::PasswordError),
    /// What the person typed or piped in cannot be used (an empty or short
    /// password, a missing confirmation, two inputs both wanting standard
    /// input). The message says what to do instead.
    #[error("{0}")]
    Input(String),
    /// A typed 64-digit key is malformed; the error names the group.
    #[error("{0}")]
    KeyText(#[from] protocol_spec::error::RootKeyError),
    /// This device holds no backup key (never enabled, or disabled).
    #[error("no backup key on this device; run `backupctl enable`, or restore first")]
    NoBackupKey,
    /// The connection dropped after a first registration was sent, and the
    /// retry found a record: it may be ours or another device's.
    #[error("the connection dropped after the new key was sent, so it is unknown whether the vault stored it")]
    RegistrationUnknown,
    /// The person declined a confirmation; nothing was changed.
    #[error("cancelled; nothing was changed")]
    Cancelled,
    /// The vault holds another escrow than the one this device last saw
    /// and accepted (SPEC.md 8.7): another device replaced it, changed its
    /// password, or enabled password backups anew. Not retryable: it stays
    /// so until this device accepts or replaces the escrow.
    #[error("the vault's escrow is not the one this device last saw: it was registered {}", crate::escrow::described(&.0.now))]
    EscrowChanged(crate::escrow::EscrowChange),
    /// This device saw the vault describe its escrow; the vault that
    /// answered now does not. Not retryable for the same reason.
    #[error("the vault no longer describes its escrow; this device last saw one registered {}", crate::escrow::described(.0))]
    EscrowNotDescribed(protocol_spec::messages::vault::Escrow),
}

impl ClientError {
    /// Whether the same operation may succeed if tried again (on a new
    /// connection or tunnel). A login start is never retried automatically.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Dropped => true,
            ClientError::Closed(c) => c.retryable(),
            ClientError::TunnelClosed(c) => c.retryable(),
            ClientError::Flow(f) => f.retryable(),
            ClientError::LoginInterrupted { source, .. } => source.retryable(),
            _ => false,
        }
    }
}

impl From<protocol_spec::Error> for ClientError {
    fn from(e: protocol_spec::Error) -> Self {
        ClientError::Protocol(e.to_string())
    }
}
