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
    /// The profile or a key file is missing or malformed.
    #[error("{0}")]
    Profile(String),
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
            _ => false,
        }
    }
}

impl From<protocol_spec::Error> for ClientError {
    fn from(e: protocol_spec::Error) -> Self {
        ClientError::Protocol(e.to_string())
    }
}
