//! # backup-client
//!
//! The reference client for E2EBK backups and the library half of the
//! `backupctl` command-line tool. The binary parses arguments, asks for
//! secrets and prints; everything else lives here:
//!
//! - [`connection`]: the chatd WebSocket connection, its Noise session, and
//!   vault tunnels inside it.
//! - [`vault_flow`]: the sans-IO OPAQUE flows (status, registration, login,
//!   delete) that turn vault responses into the next request; they take
//!   only prepared passwords (SPEC.md 7.8).
//! - [`device`]: one enrolled device's vault operations over chatd
//!   (enrol, status, register, recover `K`, change password, delete), the
//!   crate's one retry helper, and the one path to a `LoginStart` (status
//!   first, and the person asked before a last attempt).
//! - [`custody`]: this device's copy of the backup key `K` around those
//!   operations: which key to escrow, when to cache it, when to forget it.
//!   Each operation returns what it did and prints nothing.
//! - [`escrow`]: which escrow this device last saw and accepted (its
//!   epoch), and what changed since: a replacement, a password change, or
//!   password backups enabled anew, from another device.
//! - [`restore`]: a restore as typed steps: refuse early what would fail
//!   before a password attempt is spent, get the key, decrypt, keep the
//!   vault's key on a device that has none.
//! - [`backup`]: the streaming encrypted backup engine and where backups
//!   live (paths, standard input/output, object stores).
//! - [`profile`]: the `backupctl` profile, the device's two key files
//!   (device key, cached backup key) and the remembered escrow epoch.
//! - [`terminal`]: secrets, confirmations and progress bars at the
//!   keyboard.
//! - [`exit`]: `backupctl`'s exit codes and the one-sentence explanation
//!   of every error.
//! - [`error`]: [`ClientError`], the crate's one error type.

pub mod backup;
pub mod connection;
pub mod custody;
pub mod device;
pub mod error;
pub mod escrow;
pub mod exit;
pub mod profile;
pub mod restore;
pub mod terminal;
pub mod vault_flow;

pub use error::ClientError;
