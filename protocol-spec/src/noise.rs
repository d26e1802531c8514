//! A thin, typed wrapper over snow for the protocol's five Noise channels
//! (SPEC.md sections 3, 5.5 and 5.6).
//!
//! | channel            | pattern                               | prologue                              |
//! |--------------------|---------------------------------------|---------------------------------------|
//! | client -> chatd    | `Noise_IK_25519_ChaChaPoly_BLAKE2s`   | `"E2EBK/1 client-chatd"`              |
//! | chatd -> vault     | `Noise_KK_25519_ChaChaPoly_BLAKE2s`   | `"E2EBK/1 chatd-vault"`               |
//! | client -> vault    | `Noise_NK_25519_ChaChaPoly_BLAKE2s`   | `"E2EBK/1 tunnel" || len || account`  |
//! | vault <-> vault    | `Noise_KK_25519_ChaChaPoly_BLAKE2s`   | `"E2EBK/1 vault-peer"`                |
//! | operator -> vault  | `Noise_KK_25519_ChaChaPoly_BLAKE2s`   | `"E2EBK/1 control"`                   |
//!
//! All five are one round trip. Each step consumes its state, so a
//! handshake cannot be reused or run out of order. Every handshake message
//! on the wire is one version byte followed by the Noise message.
//!
//! After the handshake a [`Transport`] seals *frames*: a frame longer than
//! 65,519 bytes is split into several Noise transport messages, all full
//! (65,535 bytes) except the last. The receiver splits the same way, so the
//! chunk boundaries need no length fields. A transport that fails to open
//! a frame once is poisoned: Noise nonces are implicit, so nothing after a
//! lost or altered message can be trusted.

use std::fmt;

use crate::ids::AccountId;
use crate::keys::{PublicKey, StaticSecret};
use crate::limits::{
    sealed_len, MAX_HANDSHAKE_MESSAGE, MAX_HANDSHAKE_PAYLOAD, NOISE_MAX_MESSAGE, NOISE_MAX_PAYLOAD,
    NOISE_TAG_LEN,
};
use crate::{Error, PROTOCOL_VERSION};

/// Noise protocol names, one per channel.
pub const CLIENT_CHATD_PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
pub const LINK_PATTERN: &str = "Noise_KK_25519_ChaChaPoly_BLAKE2s";
pub const TUNNEL_PATTERN: &str = "Noise_NK_25519_ChaChaPoly_BLAKE2s";

/// Length of the handshake hash (BLAKE2s).
pub const HANDSHAKE_HASH_LEN: usize = 32;

/// Prologue of channel 1.
pub fn client_chatd_prologue() -> Vec<u8> {
    format!("E2EBK/{PROTOCOL_VERSION} client-chatd").into_bytes()
}

/// Prologue of channel 2.
pub fn link_prologue() -> Vec<u8> {
    format!("E2EBK/{PROTOCOL_VERSION} chatd-vault").into_bytes()
}

/// Prologue of the operator control channel (SPEC.md section 5.6).
pub fn control_prologue() -> Vec<u8> {
    format!("E2EBK/{PROTOCOL_VERSION} control").into_bytes()
}

/// Prologue of the replica-to-replica channel (SPEC.md section 5.5).
pub fn peer_prologue() -> Vec<u8> {
    format!("E2EBK/{PROTOCOL_VERSION} vault-peer").into_bytes()
}

/// Prologue of channel 3: binds the account chatd vouches for, so a chatd
/// that relays a tunnel under another account makes the handshake fail.
pub fn tunnel_prologue(account: &AccountId) -> Vec<u8> {
    let mut p = format!("E2EBK/{PROTOCOL_VERSION} tunnel").into_bytes();
    p.extend_from_slice(&account.length_prefixed());
    p
}

/// The five channels, for building handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    ClientChatd,
    Link,
    Tunnel,
    /// Between vault replicas (Raft traffic), both ends hold the fleet's
    /// peer key.
    Peer,
    /// An operator's tool to a vault replica: the operator's key and the
    /// fleet's control key.
    Control,
}

impl Channel {
    fn pattern(self) -> &'static str {
        match self {
            Channel::ClientChatd => CLIENT_CHATD_PATTERN,
            Channel::Link => LINK_PATTERN,
            Channel::Tunnel => TUNNEL_PATTERN,
            Channel::Peer => LINK_PATTERN,
            Channel::Control => LINK_PATTERN,
        }
    }
}

struct Keys<'a> {
    local: Option<&'a StaticSecret>,
    remote: Option<&'a PublicKey>,
    fixed_ephemeral: Option<&'a [u8; 32]>,
}

fn build(
    channel: Channel,
    prologue: &[u8],
    keys: Keys<'_>,
    initiator: bool,
) -> Result<snow::HandshakeState, Error> {
    let params = channel
        .pattern()
        .parse()
        .unwrap_or_else(|_| unreachable!("pattern names are constants snow supports"));
    let mut b = snow::Builder::new(params)
        .prologue(prologue)
        .map_err(|_| Error::Handshake)?;
    if let Some(local) = keys.local {
        b = b
            .local_private_key(local.expose())
            .map_err(|_| Error::Handshake)?;
    }
    if let Some(remote) = keys.remote {
        b = b
            .remote_public_key(&remote.0)
            .map_err(|_| Error::Handshake)?;
    }
    if let Some(e) = keys.fixed_ephemeral {
        b = b.fixed_ephemeral_key_for_testing_only(e);
    }
    let hs = if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    };
    hs.map_err(|_| Error::Handshake)
}

/// The side that sends the first handshake message.
pub struct Initiator {
    hs: snow::HandshakeState,
}

impl Initiator {
    /// Client to chatd: the device key authenticates to chatd's pinned key.
    pub fn client_chatd(device: &StaticSecret, chatd: &PublicKey) -> Result<Self, Error> {
        Self::new(Channel::ClientChatd, Some(device), Some(chatd), None, None)
    }

    /// chatd to a vault replica: both static keys known in advance.
    pub fn link(chatd: &StaticSecret, vault: &PublicKey) -> Result<Self, Error> {
        Self::new(Channel::Link, Some(chatd), Some(vault), None, None)
    }

    /// Client to the vault fleet's pinned key, bound to `account`.
    pub fn tunnel(fleet: &PublicKey, account: &AccountId) -> Result<Self, Error> {
        Self::new(Channel::Tunnel, None, Some(fleet), Some(account), None)
    }

    /// A vault replica to another, both holding the fleet peer key.
    pub fn peer(local: &StaticSecret, remote: &PublicKey) -> Result<Self, Error> {
        Self::new(Channel::Peer, Some(local), Some(remote), None, None)
    }

    /// An operator's tool to a replica's control listener.
    pub fn control(operator: &StaticSecret, fleet_control: &PublicKey) -> Result<Self, Error> {
        Self::new(
            Channel::Control,
            Some(operator),
            Some(fleet_control),
            None,
            None,
        )
    }

    /// Like the constructors above but with a fixed ephemeral key, to
    /// produce reproducible test vectors. Never use outside tests.
    #[cfg(feature = "test-vectors")]
    #[doc(hidden)]
    pub fn for_test_vectors(
        channel: Channel,
        local: Option<&StaticSecret>,
        remote: &PublicKey,
        account: Option<&AccountId>,
        ephemeral: &[u8; 32],
    ) -> Result<Self, Error> {
        Self::new(channel, local, Some(remote), account, Some(ephemeral))
    }

    fn new(
        channel: Channel,
        local: Option<&StaticSecret>,
        remote: Option<&PublicKey>,
        account: Option<&AccountId>,
        fixed_ephemeral: Option<&[u8; 32]>,
    ) -> Result<Self, Error> {
        let prologue = prologue_for(channel, account)?;
        let hs = build(
            channel,
            &prologue,
            Keys {
                local,
                remote,
                fixed_ephemeral,
            },
            true,
        )?;
        Ok(Initiator { hs })
    }

    /// Writes message 1 (version byte + Noise message) carrying `payload`.
    pub fn write_first(mut self, payload: &[u8]) -> Result<(Vec<u8>, AwaitingResponse), Error> {
        let msg = write_handshake(&mut self.hs, payload)?;
        Ok((msg, AwaitingResponse { hs: self.hs }))
    }
}

/// An initiator that has sent message 1 and waits for message 2.
pub struct AwaitingResponse {
    hs: snow::HandshakeState,
}

impl AwaitingResponse {
    /// The handshake hash after message 1: what [`ReadyToRespond`] sees
    /// too, for binding a signature in message 2 to this handshake.
    pub fn handshake_hash(&self) -> [u8; HANDSHAKE_HASH_LEN] {
        hash_of(&self.hs)
    }

    /// Reads message 2; returns its payload and the transport.
    pub fn read_response(mut self, msg: &[u8]) -> Result<(Vec<u8>, Transport), Error> {
        let payload = read_handshake(&mut self.hs, msg)?;
        Ok((payload, Transport::from_handshake(self.hs)?))
    }
}

/// The side that receives the first handshake message.
pub struct Responder {
    hs: snow::HandshakeState,
}

/// What message 1 told the responder.
pub struct FirstMessage {
    /// The decrypted payload (a `*Hello` frame).
    pub payload: Vec<u8>,
    /// The initiator's static key, when the pattern transmits or presets it.
    pub remote_static: Option<PublicKey>,
    /// Continue with [`ReadyToRespond::write_response`].
    pub state: ReadyToRespond,
}

impl Responder {
    /// chatd, for a client connection.
    pub fn client_chatd(chatd: &StaticSecret) -> Result<Self, Error> {
        Self::new(Channel::ClientChatd, chatd, None, None, None)
    }

    /// A vault replica, for a chatd link from the holder of `chatd`.
    pub fn link(vault: &StaticSecret, chatd: &PublicKey) -> Result<Self, Error> {
        Self::new(Channel::Link, vault, Some(chatd), None, None)
    }

    /// A vault replica, for a tunnel that chatd says belongs to `account`.
    pub fn tunnel(fleet: &StaticSecret, account: &AccountId) -> Result<Self, Error> {
        Self::new(Channel::Tunnel, fleet, None, Some(account), None)
    }

    /// A vault replica, for a connection from another replica.
    pub fn peer(local: &StaticSecret, remote: &PublicKey) -> Result<Self, Error> {
        Self::new(Channel::Peer, local, Some(remote), None, None)
    }

    /// A vault replica's control listener, for the holder of `operator`.
    pub fn control(fleet_control: &StaticSecret, operator: &PublicKey) -> Result<Self, Error> {
        Self::new(Channel::Control, fleet_control, Some(operator), None, None)
    }

    /// Fixed-ephemeral variant for reproducible test vectors only.
    #[cfg(feature = "test-vectors")]
    #[doc(hidden)]
    pub fn for_test_vectors(
        channel: Channel,
        local: &StaticSecret,
        remote: Option<&PublicKey>,
        account: Option<&AccountId>,
        ephemeral: &[u8; 32],
    ) -> Result<Self, Error> {
        Self::new(channel, local, remote, account, Some(ephemeral))
    }

    fn new(
        channel: Channel,
        local: &StaticSecret,
        remote: Option<&PublicKey>,
        account: Option<&AccountId>,
        fixed_ephemeral: Option<&[u8; 32]>,
    ) -> Result<Self, Error> {
        let prologue = prologue_for(channel, account)?;
        let hs = build(
            channel,
            &prologue,
            Keys {
                local: Some(local),
                remote,
                fixed_ephemeral,
            },
            false,
        )?;
        Ok(Responder { hs })
    }

    /// Reads message 1.
    pub fn read_first(mut self, msg: &[u8]) -> Result<FirstMessage, Error> {
        let payload = read_handshake(&mut self.hs, msg)?;
        let remote_static = match self.hs.get_remote_static() {
            Some(k) => Some(PublicKey::from_slice(k)?),
            None => None,
        };
        Ok(FirstMessage {
            payload,
            remote_static,
            state: ReadyToRespond { hs: self.hs },
        })
    }
}

/// A responder that has read message 1 and may answer.
pub struct ReadyToRespond {
    hs: snow::HandshakeState,
}

impl ReadyToRespond {
    /// The handshake hash after message 1 (see
    /// [`AwaitingResponse::handshake_hash`]).
    pub fn handshake_hash(&self) -> [u8; HANDSHAKE_HASH_LEN] {
        hash_of(&self.hs)
    }

    /// Writes message 2 carrying `payload`; returns it and the transport.
    pub fn write_response(mut self, payload: &[u8]) -> Result<(Vec<u8>, Transport), Error> {
        let msg = write_handshake(&mut self.hs, payload)?;
        Ok((msg, Transport::from_handshake(self.hs)?))
    }
}

fn hash_of(hs: &snow::HandshakeState) -> [u8; HANDSHAKE_HASH_LEN] {
    let mut h = [0u8; HANDSHAKE_HASH_LEN];
    h.copy_from_slice(hs.get_handshake_hash());
    h
}

fn prologue_for(channel: Channel, account: Option<&AccountId>) -> Result<Vec<u8>, Error> {
    Ok(match channel {
        Channel::ClientChatd => client_chatd_prologue(),
        Channel::Link => link_prologue(),
        Channel::Peer => peer_prologue(),
        Channel::Control => control_prologue(),
        Channel::Tunnel => tunnel_prologue(account.ok_or(Error::Handshake)?),
    })
}

fn write_handshake(hs: &mut snow::HandshakeState, payload: &[u8]) -> Result<Vec<u8>, Error> {
    if payload.len() > MAX_HANDSHAKE_PAYLOAD {
        return Err(Error::TooLarge {
            len: payload.len(),
            max: MAX_HANDSHAKE_PAYLOAD,
        });
    }
    let mut buf = vec![0u8; MAX_HANDSHAKE_MESSAGE];
    buf[0] = PROTOCOL_VERSION;
    let n = hs
        .write_message(payload, &mut buf[1..])
        .map_err(|_| Error::Handshake)?;
    buf.truncate(1 + n);
    Ok(buf)
}

fn read_handshake(hs: &mut snow::HandshakeState, msg: &[u8]) -> Result<Vec<u8>, Error> {
    let noise = crate::frame::split_handshake_version(msg)?;
    let mut payload = vec![0u8; MAX_HANDSHAKE_MESSAGE];
    let n = hs
        .read_message(noise, &mut payload)
        .map_err(|_| Error::Handshake)?;
    payload.truncate(n);
    Ok(payload)
}

/// An established Noise session: seals and opens frames in order.
pub struct Transport {
    state: snow::TransportState,
    handshake_hash: [u8; HANDSHAKE_HASH_LEN],
    remote_static: Option<PublicKey>,
    poisoned: bool,
}

impl Transport {
    fn from_handshake(hs: snow::HandshakeState) -> Result<Self, Error> {
        let mut handshake_hash = [0u8; HANDSHAKE_HASH_LEN];
        handshake_hash.copy_from_slice(hs.get_handshake_hash());
        let remote_static = match hs.get_remote_static() {
            Some(k) => Some(PublicKey::from_slice(k)?),
            None => None,
        };
        let state = hs.into_transport_mode().map_err(|_| Error::Handshake)?;
        Ok(Transport {
            state,
            handshake_hash,
            remote_static,
            poisoned: false,
        })
    }

    /// The handshake hash: a value both ends share and nobody else knows,
    /// usable for channel binding.
    pub fn handshake_hash(&self) -> &[u8; HANDSHAKE_HASH_LEN] {
        &self.handshake_hash
    }

    /// The peer's static key, for patterns that have one.
    pub fn remote_static(&self) -> Option<PublicKey> {
        self.remote_static
    }

    /// Encrypts one frame, splitting it into Noise messages of at most
    /// 65,519 plaintext bytes.
    pub fn seal(&mut self, frame: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(sealed_len(frame.len()));
        self.seal_into(frame, &mut out)?;
        Ok(out)
    }

    /// Like [`Transport::seal`], appending the sealed frame to `out`, so a
    /// writer can seal several frames into one buffer. On an error `out`
    /// is as it was.
    pub fn seal_into(&mut self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if self.poisoned {
            return Err(Error::Decrypt);
        }
        let start = out.len();
        out.resize(start + sealed_len(frame.len()), 0);
        let mut written = start;
        let mut chunks = frame.chunks(NOISE_MAX_PAYLOAD).peekable();
        let sealed = (|| {
            if chunks.peek().is_none() {
                written += self.write_chunk(&[], &mut out[written..])?;
            }
            for chunk in chunks {
                written += self.write_chunk(chunk, &mut out[written..])?;
            }
            Ok(())
        })();
        if sealed.is_err() {
            out.truncate(start);
        }
        debug_assert!(sealed.is_err() || written == out.len());
        sealed
    }

    fn write_chunk(&mut self, chunk: &[u8], out: &mut [u8]) -> Result<usize, Error> {
        self.state.write_message(chunk, out).map_err(|_| {
            self.poisoned = true;
            Error::Decrypt
        })
    }

    /// Decrypts one sealed frame. `max_frame` is the largest plaintext the
    /// caller accepts; larger input is refused before any decryption.
    pub fn open(&mut self, sealed: &[u8], max_frame: usize) -> Result<Vec<u8>, Error> {
        if self.poisoned {
            return Err(Error::Decrypt);
        }
        let result = self.open_inner(sealed, max_frame);
        // Any failure ends the session: the caller must close the channel.
        self.poisoned = result.is_err();
        result
    }

    fn open_inner(&mut self, sealed: &[u8], max_frame: usize) -> Result<Vec<u8>, Error> {
        let max_sealed = sealed_len(max_frame);
        if sealed.len() > max_sealed {
            return Err(Error::TooLarge {
                len: sealed.len(),
                max: max_sealed,
            });
        }
        let mut out = vec![0u8; sealed.len()];
        let mut read = 0;
        for chunk in sealed.chunks(NOISE_MAX_MESSAGE) {
            if chunk.len() < NOISE_TAG_LEN {
                return Err(Error::Truncated);
            }
            read += self
                .state
                .read_message(chunk, &mut out[read..])
                .map_err(|_| Error::Decrypt)?;
        }
        if sealed.is_empty() {
            return Err(Error::Truncated);
        }
        out.truncate(read);
        Ok(out)
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("remote_static", &self.remote_static)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

macro_rules! opaque_debug {
    ($($t:ty),*) => {$(
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($t), "{..}"))
            }
        }
    )*};
}
opaque_debug!(
    Initiator,
    AwaitingResponse,
    Responder,
    ReadyToRespond,
    FirstMessage
);

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> StaticSecret {
        StaticSecret::from_bytes([b; 32])
    }

    fn pair(channel: Channel) -> (Transport, Transport, Vec<u8>, Vec<u8>) {
        let chatd = key(1);
        let device = key(2);
        let account = AccountId::new("alice").unwrap();
        let (init, resp) = match channel {
            Channel::ClientChatd => (
                Initiator::client_chatd(&device, &chatd.public_key()).unwrap(),
                Responder::client_chatd(&chatd).unwrap(),
            ),
            Channel::Link => (
                Initiator::link(&device, &chatd.public_key()).unwrap(),
                Responder::link(&chatd, &device.public_key()).unwrap(),
            ),
            Channel::Tunnel => (
                Initiator::tunnel(&chatd.public_key(), &account).unwrap(),
                Responder::tunnel(&chatd, &account).unwrap(),
            ),
            Channel::Peer => (
                Initiator::peer(&device, &chatd.public_key()).unwrap(),
                Responder::peer(&chatd, &device.public_key()).unwrap(),
            ),
            Channel::Control => (
                Initiator::control(&device, &chatd.public_key()).unwrap(),
                Responder::control(&chatd, &device.public_key()).unwrap(),
            ),
        };
        let (m1, waiting) = init.write_first(b"hello").unwrap();
        let first = resp.read_first(&m1).unwrap();
        assert_eq!(first.payload, b"hello");
        if channel != Channel::Tunnel {
            assert_eq!(first.remote_static, Some(device.public_key()));
        } else {
            assert_eq!(first.remote_static, None);
        }
        // Both ends agree on the hash after message 1, and it differs from
        // the final one.
        let after_first = waiting.handshake_hash();
        assert_eq!(first.state.handshake_hash(), after_first);
        let (m2, r_t) = first.state.write_response(b"welcome").unwrap();
        let (p2, i_t) = waiting.read_response(&m2).unwrap();
        assert_eq!(p2, b"welcome");
        assert_eq!(i_t.handshake_hash(), r_t.handshake_hash());
        assert_ne!(i_t.handshake_hash(), &after_first);
        (i_t, r_t, m1, m2)
    }

    #[test]
    fn all_channels_handshake_and_transport() {
        for ch in [
            Channel::ClientChatd,
            Channel::Link,
            Channel::Tunnel,
            Channel::Peer,
            Channel::Control,
        ] {
            let (mut a, mut b, _, _) = pair(ch);
            let sealed = a.seal(b"frame").unwrap();
            assert_eq!(b.open(&sealed, 100).unwrap(), b"frame");
            let sealed = b.seal(b"").unwrap();
            assert_eq!(sealed.len(), 16);
            assert_eq!(a.open(&sealed, 100).unwrap(), b"");
        }
    }

    /// A control handshake from a key the replica does not accept, or to
    /// another fleet's control key, fails: network reach is not enough.
    #[test]
    fn only_a_listed_operator_gets_through_the_control_handshake() {
        let fleet_control = key(7);
        let operator = key(8);
        let stranger = key(9);
        let (m1, _) = Initiator::control(&stranger, &fleet_control.public_key())
            .unwrap()
            .write_first(b"")
            .unwrap();
        assert!(Responder::control(&fleet_control, &operator.public_key())
            .unwrap()
            .read_first(&m1)
            .is_err());
        let (m1, _) = Initiator::control(&operator, &key(10).public_key())
            .unwrap()
            .write_first(b"")
            .unwrap();
        assert!(Responder::control(&fleet_control, &operator.public_key())
            .unwrap()
            .read_first(&m1)
            .is_err());
    }

    #[test]
    fn peers_sharing_one_fleet_key_authenticate_each_other() {
        let fleet = key(5);
        let (m1, w) = Initiator::peer(&fleet, &fleet.public_key())
            .unwrap()
            .write_first(b"hi")
            .unwrap();
        let first = Responder::peer(&fleet, &fleet.public_key())
            .unwrap()
            .read_first(&m1)
            .unwrap();
        let (m2, mut r) = first.state.write_response(b"").unwrap();
        let (_, mut i) = w.read_response(&m2).unwrap();
        assert_eq!(r.open(&i.seal(b"x").unwrap(), 10).unwrap(), b"x");
        // Someone without the fleet key cannot join.
        let (m1, _) = Initiator::peer(&key(6), &fleet.public_key())
            .unwrap()
            .write_first(b"")
            .unwrap();
        assert!(Responder::peer(&fleet, &fleet.public_key())
            .unwrap()
            .read_first(&m1)
            .is_err());
        // A link handshake is not a peer handshake (different prologue).
        let (m1, _) = Initiator::link(&fleet, &fleet.public_key())
            .unwrap()
            .write_first(b"")
            .unwrap();
        assert!(Responder::peer(&fleet, &fleet.public_key())
            .unwrap()
            .read_first(&m1)
            .is_err());
    }

    #[test]
    fn large_frames_are_chunked_at_the_noise_limit() {
        let (mut a, mut b, _, _) = pair(Channel::Link);
        for len in [
            NOISE_MAX_PAYLOAD - 1,
            NOISE_MAX_PAYLOAD,
            NOISE_MAX_PAYLOAD + 1,
            3 * NOISE_MAX_PAYLOAD,
            200_000,
        ] {
            let frame: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = a.seal(&frame).unwrap();
            assert_eq!(sealed.len(), sealed_len(len));
            assert_eq!(b.open(&sealed, 300_000).unwrap(), frame);
        }
    }

    /// Several frames sealed into one buffer, as a link writer batches
    /// them, open one by one in order; a failed seal leaves the buffer.
    #[test]
    fn frames_sealed_into_one_buffer_open_in_order() {
        let (mut a, mut b, _, _) = pair(Channel::Link);
        let frames: Vec<Vec<u8>> = [0, 1, 700, NOISE_MAX_PAYLOAD + 5]
            .iter()
            .map(|&len| vec![len as u8; len])
            .collect();
        let mut out = b"head".to_vec();
        let mut ends = Vec::new();
        for f in &frames {
            a.seal_into(f, &mut out).unwrap();
            ends.push(out.len());
        }
        assert_eq!(&out[..4], b"head");
        let mut start = 4;
        for (f, end) in frames.iter().zip(ends) {
            assert_eq!(end - start, sealed_len(f.len()));
            assert_eq!(&b.open(&out[start..end], 100_000).unwrap(), f);
            start = end;
        }
        a.poisoned = true;
        let before = out.clone();
        assert!(a.seal_into(b"x", &mut out).is_err());
        assert_eq!(out, before);
    }

    #[test]
    fn tampering_reordering_and_oversize_are_refused_and_poison() {
        let (mut a, mut b, _, _) = pair(Channel::ClientChatd);
        let s1 = a.seal(b"one").unwrap();
        let s2 = a.seal(b"two").unwrap();
        // Out of order: Noise nonces are implicit.
        assert_eq!(b.open(&s2, 100), Err(Error::Decrypt));
        // Poisoned afterwards, even for the right message.
        assert_eq!(b.open(&s1, 100), Err(Error::Decrypt));

        let (mut a, mut b, _, _) = pair(Channel::ClientChatd);
        let mut s = a.seal(b"one").unwrap();
        s[0] ^= 1;
        assert_eq!(b.open(&s, 100), Err(Error::Decrypt));

        let (mut a, mut b, _, _) = pair(Channel::ClientChatd);
        let s = a.seal(&[0u8; 200]).unwrap();
        assert!(matches!(b.open(&s, 100), Err(Error::TooLarge { .. })));
        // Refused without decrypting, but the session is still over.
        assert_eq!(b.seal(b"x"), Err(Error::Decrypt));

        let (_, mut b, _, _) = pair(Channel::ClientChatd);
        assert_eq!(b.open(&s[..10], 100), Err(Error::Truncated));
        let (_, mut b, _, _) = pair(Channel::ClientChatd);
        assert_eq!(b.open(&[], 100), Err(Error::Truncated));
    }

    #[test]
    fn wrong_keys_and_accounts_fail_the_handshake() {
        let chatd = key(1);
        let other = key(3);
        let device = key(2);
        // Client pinned the wrong chatd key.
        let (m1, _) = Initiator::client_chatd(&device, &other.public_key())
            .unwrap()
            .write_first(b"")
            .unwrap();
        assert!(Responder::client_chatd(&chatd)
            .unwrap()
            .read_first(&m1)
            .is_err());
        // Link from a chatd key the vault does not expect.
        let (m1, _) = Initiator::link(&other, &chatd.public_key())
            .unwrap()
            .write_first(b"")
            .unwrap();
        assert!(Responder::link(&chatd, &device.public_key())
            .unwrap()
            .read_first(&m1)
            .is_err());
        // chatd relays the tunnel under another account.
        let alice = AccountId::new("alice").unwrap();
        let mallory = AccountId::new("mallory").unwrap();
        let (m1, _) = Initiator::tunnel(&chatd.public_key(), &alice)
            .unwrap()
            .write_first(b"x")
            .unwrap();
        assert!(Responder::tunnel(&chatd, &mallory)
            .unwrap()
            .read_first(&m1)
            .is_err());
        // Unknown version byte.
        let (mut m1, _) = Initiator::tunnel(&chatd.public_key(), &alice)
            .unwrap()
            .write_first(b"x")
            .unwrap();
        m1[0] = 9;
        assert_eq!(
            Responder::tunnel(&chatd, &alice)
                .unwrap()
                .read_first(&m1)
                .err(),
            Some(Error::UnsupportedVersion(9))
        );
    }

    #[test]
    fn oversized_handshake_payload_is_refused() {
        let chatd = key(1);
        let init = Initiator::tunnel(&chatd.public_key(), &AccountId::new("a").unwrap()).unwrap();
        assert!(matches!(
            init.write_first(&[0u8; MAX_HANDSHAKE_PAYLOAD + 1]),
            Err(Error::TooLarge { .. })
        ));
    }
}
