//! # chatd
//!
//! The connection front-end. It authenticates clients (Noise_IK inside a
//! WebSocket, device keys checked against the account directory, one-time
//! enrolment codes for new devices) and relays their vault tunnels over a
//! pool of Noise_KK links to the vault leader. It never holds a key that
//! could open a tunnel.
//!
//! - [`conn`]: one client connection, from upgrade to close.
//! - [`vault_link`]: the links to the vault and leader following.
//! - [`directory`]: accounts, device keys, enrolment codes (SQLite).
//! - [`limits`]: rate limits and caps.
//! - [`server`]: listener, accept loop, shutdown phases.

pub mod config;
pub mod conn;
pub mod directory;
pub mod keys;
pub mod limits;
pub mod server;
pub mod vault_link;

/// The crate's one error type; messages say what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("key file: {0}")]
    Keys(String),
    #[error("account directory: {0}")]
    Directory(String),
    #[error("cannot listen on {0}")]
    Bind(String),
    #[error(transparent)]
    Service(#[from] service_kit::Error),
    #[error(transparent)]
    Protocol(#[from] protocol_spec::Error),
}
