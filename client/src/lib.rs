//! # backup-client
//!
//! The reference client for E2EBK backups: connecting to chatd, vault
//! tunnels and the OPAQUE flows, and the streaming encrypted backup engine.

pub mod backup;
pub mod connection;
pub mod error;
pub mod vault_flow;

pub use error::ClientError;
