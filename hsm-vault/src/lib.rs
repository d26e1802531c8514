//! # hsm-vault
//!
//! The Backup Key Vault. It runs OPAQUE so it never learns passwords,
//! escrows each user's `wrapped_K`, counts login attempts durably before
//! answering, and erases the escrow for good after too many failures.
//!
//! - [`core`]: the sans-IO vault: `handle(now, session, account, request)`
//!   over the [`seal::Sealer`] (HSM), [`log::RecordLog`] (durable,
//!   replicable commands) and [`entropy::Entropy`] traits.
//! - [`hsm`]: the PKCS#11 layer (cryptoki; SoftHSM2 by default) and the key
//!   ceremony that copies the master key to another replica's token.
//! - [`store`], [`log`]: the redb state machine of sealed records and the
//!   single-node durable log.
//! - [`server`]: the chatd link listener (Noise_KK), tunnels (Noise_NK) and
//!   the worker pool that keeps PKCS#11 calls off the async runtime.

pub mod command;
pub mod config;
pub mod core;
pub mod entropy;
pub mod error;
pub mod hsm;
pub mod log;
pub mod raft;
pub mod record;
pub mod seal;
pub mod secrets;
pub mod server;
pub mod store;

pub use error::Error;
