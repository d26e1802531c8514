//! PKCS#11 custody of the vault master key.
//!
//! This module owns everything the vault does with its token:
//!
//! - [`Hsm`]: the logged-in session pool and the [`Sealer`] over the
//!   non-extractable AES-256 master key (AES-GCM inside the token, sealed
//!   format of [`crate::seal`]).
//! - [`init_master_key`]: creates the master key on the fleet's first token.
//! - The key ceremony that gives another replica's token the same master key
//!   without it ever existing in plaintext outside a token:
//!   1. new replica, user: [`import_request`] makes an RSA-3072 import key
//!      pair and prints its public half ([`ImportRequest`]);
//!   2. existing replica, security officer: [`approve_import`] stores that
//!      public key on the token marked `CKA_TRUSTED`, after the operators
//!      compared its [`ImportRequest::fingerprint`] out of band;
//!   3. existing replica, user: [`export_master_key`] wraps the master key
//!      for it (the token only wraps `CKA_WRAP_WITH_TRUSTED` keys for
//!      trusted keys) and destroys the approval, so it is single use;
//!   4. new replica, user: [`import_master_key`] unwraps it into a token
//!      master key and destroys the import key.
//!
//!   The security officer and the user cannot be logged in to one token in
//!   one process at once, so approval is its own step. The wrapped key is
//!   not authenticated (anyone may wrap a key for a public import key): the
//!   proof that the new token holds the fleet's key is that it opens the
//!   fleet's `fleet.sealed`, which the vault does at start-up.
//!
//! PKCS#11 allows one `C_Initialize` per process and keeps login state per
//! application and token, so loaded modules live in a process-wide registry
//! and "already logged in" counts as success.
//!
//! ## Where things are
//!
//! | file | owns |
//! | --- | --- |
//! | `token.rs` | the module registry, `TokenAccess` (slot lookup, login), object lookup helpers, cryptoki error mapping |
//! | `pool.rs` | the pool of logged-in sessions the serving path borrows from, and which errors mean a session was lost |
//! | `sealer.rs` | [`Hsm`]: AES-GCM with the master key on the serving path, its [`Sealer`] impl and self-test |
//! | `ceremony.rs` | master key creation and the four ceremony steps on the token |
//! | `ceremony_text.rs` | the ceremony's files: [`ImportRequest`] and [`WrappedMasterKey`] as text, and their parser |
//!
//! [`Sealer`]: crate::seal::Sealer

mod ceremony;
mod ceremony_text;
mod pool;
mod sealer;
mod token;

pub use ceremony::{
    approve_import, export_master_key, import_master_key, import_request, init_master_key,
    lock_export,
};
pub use ceremony_text::{ImportRequest, WrappedMasterKey};
pub use sealer::Hsm;
