//! The commit path: what the vault stores, and how a change to it becomes
//! durable. Every state change of the vault passes through here, in one
//! direction:
//!
//! ```text
//! core (decides)  ──Command──▶  Records::commit  ──▶  store / Raft log  ──▶  RecordStore
//!   seals a RecordBody            LocalRecords: one fsynced transaction
//!   into a StoredRecord           ReplicatedRecords (crate::raft): majority, then apply
//! ```
//!
//! - [`record`]: one account's record, plaintext ([`record::RecordBody`])
//!   and sealed ([`record::StoredRecord`]), and the sealing that binds it to
//!   its account and version.
//! - [`command`]: the one state change, a compare-and-set of one account's
//!   record, and [`command::Command::check`], the rule every replica
//!   applies it by.
//! - [`store`]: [`store::RecordStore`], the redb file of sealed records
//!   (the state machine; the Raft log's tables live in the same file).
//! - [`records`]: [`records::Records`], the storage world as the core
//!   sees it (a linearizable read, a durable commit), with the single-node
//!   implementation [`records::LocalRecords`].
//! - [`disk`]: [`disk::StoreFile`], the store's file as redb sees it,
//!   which notices a failed write or fsync so the server stops
//!   ([`disk::DiskHealth`]).
//! - [`memory`]: [`memory::MemoryRecords`], an in-memory implementation for
//!   unit tests and fuzzing.

pub mod command;
pub mod disk;
pub mod memory;
pub mod record;
pub mod records;
pub mod store;

pub use command::{ApplyOutcome, Command};
pub use memory::MemoryRecords;
pub use record::{RecordBody, Registration, RegistrationNonce, StoredRecord};
pub use records::{LocalRecords, Records};
pub use store::RecordStore;
