//! The crate's one error type. Every variant carries only static text and
//! numbers, never message bytes or key material, so any of them may be
//! logged.

/// Why bytes from the wire, a file or a person were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input ended before the message did.
    #[error("message truncated")]
    Truncated,
    /// The input is longer than the protocol allows for this message.
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    /// Bytes follow the end of the message, or the message carries fields
    /// this version does not define.
    #[error("unexpected bytes after the message")]
    TrailingBytes,
    /// The version byte names a protocol version this build does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The body parsed but is not the canonical encoding of its contents
    /// (fields out of order, explicit defaults, non-minimal varints).
    #[error("message is not canonically encoded")]
    NonCanonical,
    /// The bytes do not parse as the expected message.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A field parsed but its value is not allowed.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        field: &'static str,
        reason: &'static str,
    },
    /// A Noise handshake message failed to verify or was out of order.
    #[error("handshake failed")]
    Handshake,
    /// A Noise transport message failed to decrypt (wrong key, tampering,
    /// reordering or replay).
    #[error("frame failed to decrypt")]
    Decrypt,
    /// An encrypted backup could not be read; see [`BackupError`].
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// A 64-digit key was mistyped; see [`RootKeyError`].
    #[error(transparent)]
    RootKey(#[from] RootKeyError),
    /// A password cannot be prepared (SPEC 7.8); see [`PasswordError`].
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// Unwrapping `wrapped_K` failed: the export key does not match, or the
    /// wrapped key was altered or belongs to another account.
    #[error("the escrowed key does not open with this password")]
    Unwrap,
}

impl Error {
    /// Stable, low-cardinality label for metrics (`reason="..."`).
    pub fn label(&self) -> &'static str {
        match self {
            Error::Truncated => "truncated",
            Error::TooLarge { .. } => "too_large",
            Error::TrailingBytes => "trailing_bytes",
            Error::UnsupportedVersion(_) => "unsupported_version",
            Error::NonCanonical => "non_canonical",
            Error::Malformed(_) => "malformed",
            Error::InvalidField { .. } => "invalid_field",
            Error::Handshake => "handshake",
            Error::Decrypt => "decrypt",
            Error::Backup(_) => "backup",
            Error::RootKey(_) => "root_key",
            Error::Password(_) => "password",
            Error::Unwrap => "unwrap",
        }
    }
}

/// Why an encrypted backup stream was refused. A restore that hits any of
/// these must discard everything it produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error("not an E2EBK backup (bad magic bytes)")]
    BadMagic,
    #[error("backup format version {0} is not supported by this build")]
    UnsupportedVersion(u8),
    #[error("backup header is invalid: {0}")]
    BadHeader(&'static str),
    #[error("this backup was encrypted with a different key")]
    WrongKey,
    #[error("backup is corrupt or was tampered with at chunk {chunk}")]
    Corrupt { chunk: u64 },
    #[error("backup is truncated: it ends before its final chunk")]
    Truncated,
    #[error("backup has unexpected data after its final chunk")]
    TrailingData,
    #[error("backup is too large for the format (more than 2^32 chunks)")]
    TooManyChunks,
}

/// Why a typed 64-digit key was refused. Groups are numbered 1 to 16 as
/// printed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RootKeyError {
    #[error("a backup key has 64 digits; this one has {got}")]
    WrongLength { got: usize },
    #[error("group {group} contains '{found}', which is not a digit 0-9 or a letter a-f")]
    NotHex { group: usize, found: char },
    #[error("group {group} looks wrong: the key's check digits do not match")]
    ChecksumAt { group: usize },
    #[error("a digit is wrong somewhere: the key's check digits do not match; check every group")]
    Checksum,
}

/// Why a password was refused by preparation (SPEC 7.8), before it is
/// used for anything: no attempt is spent on it. The messages never show
/// the password or say where in it the character sits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PasswordError {
    #[error("the password is empty")]
    Empty,
    #[error("the password contains a line break")]
    LineBreak,
    #[error("the password contains a control character (such as a tab or an escape), which cannot be typed on every device")]
    ControlCharacter,
    #[error("the password contains a byte-order mark (U+FEFF), an invisible character some editors put at the start of a file")]
    ByteOrderMark,
}
