//! # protocol-spec
//!
//! The E2EBK wire protocol made executable. `SPEC.md` beside this crate is the
//! normative prose; this crate holds the same rules as code: message types
//! (generated from `proto/`, wrapped in domain types), the frame codec, size
//! limits, the tunnel-id rule, the Noise wrapper for the channels, the OPAQUE
//! cipher suite and its parameters, password preparation, the key-wrap
//! construction, the backup file format and the 64-digit key text form.
//!
//! Everything here is pure: no sockets, no async runtime, no clock, no global
//! randomness. Callers pass in the bytes, keys and random values.

pub mod backup;
pub mod codes;
pub mod error;
pub mod frame;
pub mod ids;
mod kdf;
pub mod keys;
pub mod keywrap;
pub mod limits;
pub mod messages;
pub mod noise;
pub mod opaque;
pub mod password;
pub mod retry;
pub mod root_key;
pub mod tunnel_ids;

mod pb {
    //! Types generated from `proto/e2ebk/v1/*.proto`. Private: the rest of
    //! the code base sees only the domain types in [`crate::messages`].
    #![allow(missing_debug_implementations, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/e2ebk.v1.rs"));
}

pub use error::Error;

/// The protocol version this crate speaks. It is the first byte of every
/// handshake message and every frame, and it is bound into every Noise
/// prologue, so a version cannot be downgraded by a party in the middle.
pub const PROTOCOL_VERSION: u8 = 1;
