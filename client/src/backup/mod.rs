//! Streaming encrypted backups and restores (SPEC.md section 10).
//!
//! - [`engine`] turns plaintext into a backup file and back on all cores, in
//!   bounded memory, byte-for-byte compatible with the sequential
//!   [`protocol_spec::backup::BackupEncoder`] and
//!   [`protocol_spec::backup::BackupDecoder`].
//! - [`destination`] parses where a backup lives (local path, `-`,
//!   `file://`, `s3://`, `gs://`, `az://`) and wraps the engine so that a
//!   backup or restored plaintext only appears under its final name once it
//!   is complete and verified.
//! - [`staging`] stages an output next to its final name and owns what an
//!   interrupted run leaves behind (nothing, where `O_TMPFILE` works).
//! - [`upload`] cuts object-store uploads into parts, in bounded memory.
//! - [`error`] holds [`BackupIoError`], the one error type of this module.
//!
//! The file format itself (header, nonces, chunk sealing) belongs to
//! `protocol_spec::backup`; nothing here changes a byte of it.

pub mod destination;
pub mod engine;
pub mod error;
pub mod staging;
pub mod upload;

pub use destination::{
    backup_to, restore_from, Location, ObjectLocation, RestoreOutput, StoreKind,
};
pub use engine::{
    decrypt, decrypt_with, encrypt, encrypt_with_header, BackupOptions, BackupStats, NoProgress,
    Progress, RestoreOptions,
};
pub use error::BackupIoError;
