//! # backup-client
//!
//! The reference client for E2EBK backups: connecting to chatd, vault
//! tunnels and the OPAQUE flows, the streaming encrypted backup engine, and
//! the library half of the `backupctl` command-line tool (profile and key
//! files, high-level vault operations, terminal interaction, exit codes).

pub mod backup;
pub mod connection;
pub mod error;
pub mod ops;
pub mod outcome;
pub mod profile;
pub mod terminal;
pub mod vault_flow;

pub use error::ClientError;
