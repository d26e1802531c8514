//! Errors of the backup engine and its destinations.
//!
//! This module owns [`BackupIoError`], the one error type of
//! [`crate::backup`]. Every `Display` message is a self-contained sentence
//! (it already includes the underlying cause) saying what happened and what
//! to do, so print errors with `{}`; `source()` still exposes the cause for
//! callers that want to inspect it. No variant ever carries key material or
//! plaintext.

use std::io;
use std::path::PathBuf;

use protocol_spec::error::BackupError;

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupIoError {
    /// The backup file itself was refused (wrong key, corrupt at chunk i,
    /// truncated, trailing data, not a backup, ...), or the format could not
    /// hold the input.
    #[error("{source}; {}", format_hint(source))]
    Format {
        #[from]
        source: BackupError,
    },

    /// Reading the data to back up or the backup to restore failed.
    #[error("could not read {location}: {source}; check that it exists, is readable and is not being modified")]
    Read { location: String, source: io::Error },

    /// Writing the backup or the restored data failed.
    #[error("could not write {location}: {source}; check free space and permissions, then retry")]
    Write { location: String, source: io::Error },

    /// Any other file-system step (open, create, sync, rename) failed.
    #[error("could not {action} {location}: {source}; check the path and its permissions")]
    Io {
        action: &'static str,
        location: String,
        source: io::Error,
    },

    /// A user-supplied location string could not be understood.
    #[error("'{input}' is not a usable backup location: {reason}; use a file path, '-', file:///absolute/path, s3://bucket/key, gs://bucket/key or az://container/key")]
    BadLocation { input: String, reason: &'static str },

    /// The object store client could not be configured (credentials,
    /// region, account name, ...).
    #[error("could not set up object storage for {location}: {source}; set the cloud's standard environment variables (AWS_*, GOOGLE_*, AZURE_STORAGE_*) and check the URL")]
    ObjectStoreConfig {
        location: String,
        source: object_store::Error,
    },

    /// A request to object storage failed.
    #[error("object storage request for {location} failed: {source}; check the URL, credentials, permissions and network, then retry")]
    ObjectStore {
        location: String,
        source: object_store::Error,
    },

    /// The bucket (or container) a backup was to be uploaded to does not
    /// exist, or these credentials cannot see it. Not retryable.
    #[error("the bucket '{bucket}' of {location} does not exist (or these credentials cannot see it); create it, or fix the bucket name in the URL")]
    BucketNotFound {
        location: String,
        bucket: String,
        source: object_store::Error,
    },

    /// An S3 endpoint is plain `http://` and `AWS_ALLOW_HTTP` does not
    /// allow it. Not retryable.
    #[error("the S3 endpoint {endpoint} for {location} is plain http://, which is refused unless AWS_ALLOW_HTTP=true is set; set it for a local or trusted network (backups are encrypted, but request signatures and object names travel unprotected), or use an https:// endpoint")]
    PlainHttpEndpoint { location: String, endpoint: String },

    /// The output already exists and overwriting was not allowed.
    #[error("{location} already exists; choose another name or allow overwriting it (backupctl: --overwrite)")]
    OutputExists { location: String },

    /// The output path names a directory.
    #[error("{} is a directory; give the name of a file to write", path.display())]
    IsDirectory { path: PathBuf },

    /// The operating system's random number generator failed.
    #[error("could not get random bytes from the operating system ({source}); check that /dev/urandom or getrandom(2) is available")]
    Random { source: getrandom::Error },

    /// The tokio runtime used for object storage could not be started.
    #[error("could not start the async runtime for object storage: {source}; check the process's thread and file limits")]
    Runtime { source: io::Error },
}

/// What a person should do about each format error.
fn format_hint(e: &BackupError) -> &'static str {
    match e {
        BackupError::BadMagic => "check that this file is an E2EBK backup",
        BackupError::UnsupportedVersion(_) => "upgrade the client to a version that reads it",
        BackupError::WrongKey => {
            "use the 64-digit key or password it was made with (a damaged header also shows up this way)"
        }
        BackupError::Truncated => "copy or download the backup again",
        BackupError::TrailingData => "use an unmodified copy of the backup",
        BackupError::TooManyChunks => "use a larger chunk size for data this large",
        // Corrupt chunks, bad headers and anything newer.
        _ => "use another copy of the backup",
    }
}

/// Placeholder locations used by the engine, which only sees `Read` and
/// `Write` values; the destination layer replaces them with real names.
pub(crate) const INPUT: &str = "the input";
pub(crate) const OUTPUT: &str = "the output";

impl BackupIoError {
    /// The backup-format error behind this one, if any (for callers and
    /// tests that branch on wrong key versus corruption).
    pub fn format_error(&self) -> Option<&BackupError> {
        match self {
            BackupIoError::Format { source } => Some(source),
            _ => None,
        }
    }

    /// Names the engine's generic input and output, and turns object store
    /// failures that travelled through `io::Error` (the sync adapters) back
    /// into [`BackupIoError::ObjectStore`].
    pub(crate) fn relabel(self, input: &str, output: &str) -> Self {
        match self {
            BackupIoError::Read { location, source } => {
                let location = if location == INPUT {
                    input.to_owned()
                } else {
                    location
                };
                unwrap_object_store(source, location, |location, source| BackupIoError::Read {
                    location,
                    source,
                })
            }
            BackupIoError::Write { location, source } => {
                let location = if location == OUTPUT {
                    output.to_owned()
                } else {
                    location
                };
                unwrap_object_store(source, location, |location, source| BackupIoError::Write {
                    location,
                    source,
                })
            }
            other => other,
        }
    }
}

fn unwrap_object_store(
    source: io::Error,
    location: String,
    otherwise: impl FnOnce(String, io::Error) -> BackupIoError,
) -> BackupIoError {
    let is_store = source
        .get_ref()
        .is_some_and(|inner| inner.is::<object_store::Error>());
    if !is_store {
        return otherwise(location, source);
    }
    let kind = source.kind();
    match source
        .into_inner()
        .map(|b| b.downcast::<object_store::Error>())
    {
        Some(Ok(store)) => BackupIoError::ObjectStore {
            location,
            source: *store,
        },
        // Unreachable after the `is` check, but never lose the error.
        Some(Err(inner)) => otherwise(location, io::Error::new(kind, inner)),
        None => otherwise(location, io::Error::from(kind)),
    }
}
