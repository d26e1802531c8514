//! Domain types for every message on the three channels, and their wire
//! form. The generated protobuf types stay private to this module; the rest
//! of the code base matches on these enums.

pub mod chatd;
pub mod link;
pub mod vault;

pub use crate::frame::WireMessage;

/// Implements [`WireMessage`] for a domain type with `to_pb`/`from_pb`.
macro_rules! wire_message {
    ($ty:ty, $pb:ty, $max:expr) => {
        impl $crate::frame::WireMessage for $ty {
            const NAME: &'static str = stringify!($ty);
            const MAX_LEN: usize = $max;

            fn encode(&self) -> Vec<u8> {
                $crate::frame::encode_frame(&self.to_pb())
            }

            fn decode(bytes: &[u8]) -> Result<Self, $crate::Error> {
                let pb = $crate::frame::decode_frame::<$pb>(bytes, Self::MAX_LEN, Self::NAME)?;
                Self::from_pb(pb)
            }
        }
    };
}
pub(crate) use wire_message;

/// A `oneof` that arrived empty.
pub(crate) fn missing(name: &'static str) -> crate::Error {
    crate::Error::Malformed(name)
}
