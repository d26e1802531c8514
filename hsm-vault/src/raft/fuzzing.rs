//! Entry points for the `raft_decoders` fuzz target: every format a replica
//! decodes from another replica or from its own disk, decoded exactly as
//! the replica does. Whatever is accepted must encode again, and that
//! encoding must decode to a value that encodes the same (so a value that
//! crosses the channel or the disk twice is unchanged). Compiled only with
//! the `test-hooks` feature.

use openraft::Entry;
use serde::{Deserialize, Serialize};

use super::identity::{PeerHello, PeerWelcome};
use super::log_command::LogCommand;
use super::network::{frame, unframe, PeerRequest, PeerResponse};
use super::{codec, storage, VaultRaft};
use crate::state::command::Command;
use crate::state::record::{RecordBody, StoredRecord};

/// The peer channel: request and response frames, the handshake payloads.
pub fn peer_channel(bytes: &[u8]) {
    if let Ok(v) = unframe::<PeerRequest>(bytes) {
        let once = frame(&v).expect("a decoded request encodes");
        let again = unframe::<PeerRequest>(&once).expect("a re-encoded request decodes");
        assert_eq!(frame(&again).expect("encodes"), once, "request changed");
    }
    if let Ok(v) = unframe::<PeerResponse>(bytes) {
        let once = frame(&v).expect("a decoded response encodes");
        let again = unframe::<PeerResponse>(&once).expect("a re-encoded response decodes");
        assert_eq!(frame(&again).expect("encodes"), once, "response changed");
    }
    codec_round_trip::<PeerHello>("peer hello", bytes);
    codec_round_trip::<PeerWelcome>("peer welcome", bytes);
}

/// What a replica reads back from its own store: log entries, log
/// commands, snapshots, record-store commands and records.
pub fn durable(bytes: &[u8]) {
    codec_round_trip::<Entry<VaultRaft>>("log entry", bytes);
    if let Ok(c) = LogCommand::decode(bytes) {
        assert_eq!(c.encode(), bytes, "a log command has one encoding");
    }
    if let Ok(c) = Command::decode(bytes) {
        assert_eq!(c.encode(), bytes, "a record command has one encoding");
    }
    if let Ok(r) = StoredRecord::decode(bytes) {
        assert_eq!(r.encode(), bytes, "a stored record has one encoding");
    }
    if let Ok(b) = RecordBody::decode(bytes) {
        // Format 1 bodies are read and written back as format 2.
        let once = b.encode();
        let again = RecordBody::decode(&once).expect("a re-encoded body decodes");
        assert_eq!(*again.encode(), *once, "record body changed");
    }
    storage::snapshot_round_trip(bytes);
}

fn codec_round_trip<T: Serialize + for<'a> Deserialize<'a>>(what: &'static str, bytes: &[u8]) {
    if let Ok(v) = codec::decode::<T>(what, bytes) {
        let once = codec::encode(what, &v).expect("a decoded value encodes");
        let again = codec::decode::<T>(what, &once).expect("a re-encoded value decodes");
        assert_eq!(
            codec::encode(what, &again).expect("encodes"),
            once,
            "{what} changed"
        );
    }
}
