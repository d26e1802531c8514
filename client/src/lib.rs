//! # backup-client
//!
//! The reference client for E2EBK backups and the library half of the
//! `backupctl` command-line tool. The binary parses arguments, asks for
//! secrets and prints; everything else lives here:
//!
//! - [`connection`]: the chatd WebSocket connection, its Noise session, and
//!   vault tunnels inside it.
//! - [`vault_flow`]: the sans-IO OPAQUE flows (status, registration, login,
//!   delete) that turn vault responses into the next request.
//! - [`device`]: one enrolled device's vault operations over chatd
//!   (enrol, status, register, recover `K`, change password, delete) and
//!   the crate's one retry helper.
//! - [`backup`]: the streaming encrypted backup engine and where backups
//!   live (paths, standard input/output, object stores).
//! - [`profile`]: the `backupctl` profile and the device's two key files
//!   (device key, cached backup key).
//! - [`terminal`]: secrets, confirmations and progress bars at the
//!   keyboard.
//! - [`exit`]: `backupctl`'s exit codes and the one-sentence explanation
//!   of every error.
//! - [`error`]: [`ClientError`], the crate's one error type.

pub mod backup;
pub mod connection;
pub mod device;
pub mod error;
pub mod exit;
pub mod profile;
pub mod terminal;
pub mod vault_flow;

pub use error::ClientError;
