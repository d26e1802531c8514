//! # hsm-vault
//!
//! The Backup Key Vault. It runs OPAQUE so it never learns passwords,
//! escrows each user's `wrapped_K`, counts login attempts durably before
//! answering, and erases the escrow for good after too many failures.
//!
//! | module | owns |
//! | --- | --- |
//! | [`core`] | the sans-IO vault: [`core::Vault::handle`]`(now, session, request) -> response`, over the [`seal::Sealer`], [`state::Records`] and [`entropy::Entropy`] traits; the per-account limits ([`core::limits`]) |
//! | [`state`] | the commit path: record formats, the compare-and-set command and its rule, the redb store, the single-node commits |
//! | [`raft`] | replication: the Raft group's storage, peer transport, identities and per-node keys ([`raft::peer_keys`]), what the log carries ([`raft::log_command`]), role, the majority agreement on what each commit wrote, and offline recovery of a group that lost its majority ([`raft::recovery`]) |
//! | [`control`] | the operators' authenticated control plane: membership changes with their checks |
//! | [`server`] | the running replica: its wiring ([`server::Replica`]), the chatd link listener, each link's sans-IO tunnel table, the worker pool |
//! | [`hsm`] | PKCS#11 custody (cryptoki; SoftHSM2 by default): sessions, the sealer, and the key ceremony |
//! | [`seal`] | the sealed format and the [`seal::Sealer`] trait the core seals through |
//! | [`secrets`] | the fleet's long-term secrets and their sealed file |
//! | [`entropy`] | randomness as the core sees it |
//! | [`metrics`] | the table of every metric the vault exports, and the `vault_raft_*` gauges |
//! | [`config`], [`error`] | the TOML configuration; the crate's one error type |
//!
//! One request, hop by hop: a link frame reaches [`server::link`], whose
//! [`server::tunnels::TunnelTable`] submits a job; a worker
//! ([`server::jobs`]) opens it and calls [`core::Vault::handle`], which
//! reads and commits through [`state::Records`] (its own store, or
//! [`raft::ReplicatedRecords`]) and seals through the HSM; the answer goes
//! back to the table, which sends it.

pub mod config;
pub mod control;
pub mod core;
pub mod entropy;
pub mod error;
pub mod hsm;
pub mod metrics;
pub mod raft;
pub mod seal;
pub mod secrets;
pub mod server;
pub mod state;

pub use error::Error;
