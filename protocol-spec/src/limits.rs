//! Size and count limits that are part of the protocol (SPEC.md section 4.4).
//! Receivers reject anything larger before doing any other work with it.

/// Largest Noise message (handshake or transport), from the Noise spec.
pub const NOISE_MAX_MESSAGE: usize = 65_535;
/// AEAD tag added by every Noise transport message.
pub const NOISE_TAG_LEN: usize = 16;
/// Largest plaintext in one Noise transport message: frames longer than this
/// are split into several transport messages (a "sealed frame").
pub const NOISE_MAX_PAYLOAD: usize = NOISE_MAX_MESSAGE - NOISE_TAG_LEN;

/// Largest handshake message (version byte + Noise handshake message) on
/// any channel.
pub const MAX_HANDSHAKE_MESSAGE: usize = 1_024;
/// Largest payload carried inside a Noise handshake message.
pub const MAX_HANDSHAKE_PAYLOAD: usize = 512;

/// Largest frame plaintext (version byte + protobuf) on channel 1 and 2.
pub const MAX_FRAME: usize = 4_096;
/// Largest vault request/response frame plaintext inside a tunnel.
pub const MAX_VAULT_FRAME: usize = 1_024;
/// Largest `TunnelData.payload` / `LinkData.payload` and
/// `TunnelOpen.handshake` / `LinkOpen.handshake`.
pub const MAX_TUNNEL_PAYLOAD: usize = 2_048;
/// Largest link record body on channel 2 (after the 4-byte length).
pub const MAX_LINK_RECORD: usize = sealed_len(MAX_FRAME);

/// Account identifiers: 1 to 64 bytes of `[A-Za-z0-9+._@-]`.
pub const MAX_ACCOUNT_ID: usize = 64;
/// Enrolment codes as typed by people: at most 64 bytes.
pub const MAX_ENROLMENT_CODE: usize = 64;
/// Informational names (client software, chatd instance, replica, fleet id).
pub const MAX_NAME: usize = 64;
/// Leader hints (`host:port`).
pub const MAX_LEADER_HINT: usize = 128;

/// Ciphertext length of a frame of `plaintext_len` bytes once sealed: one
/// Noise transport message per started [`NOISE_MAX_PAYLOAD`] bytes, at
/// least one.
pub const fn sealed_len(plaintext_len: usize) -> usize {
    let chunks = if plaintext_len == 0 {
        1
    } else {
        plaintext_len.div_ceil(NOISE_MAX_PAYLOAD)
    };
    plaintext_len + chunks * NOISE_TAG_LEN
}

// The nesting of the channels must fit: a sealed vault frame and a tunnel
// handshake message fit a tunnel payload, and the largest handshake payload
// fits a handshake message (version + e + encrypted s + payload + tag).
const _: () = {
    assert!(sealed_len(MAX_VAULT_FRAME) <= MAX_TUNNEL_PAYLOAD);
    assert!(MAX_HANDSHAKE_MESSAGE <= MAX_TUNNEL_PAYLOAD);
    assert!(1 + 32 + 48 + MAX_HANDSHAKE_PAYLOAD + NOISE_TAG_LEN <= MAX_HANDSHAKE_MESSAGE);
    assert!(MAX_LINK_RECORD <= NOISE_MAX_MESSAGE);
};
