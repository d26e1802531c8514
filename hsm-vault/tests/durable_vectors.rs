#![allow(clippy::unwrap_used)]
//! Golden vectors for the vault's durable and internal formats: record
//! bodies (format 2, and a format 1 body that must still be read), a sealed
//! record body, a stored record, a command, a Raft log entry,
//! `fleet.sealed`, and the replica-to-replica handshake payloads. Any change
//! to these bytes fails here; a replica of the new build could no longer
//! read its store, its log, or its peers. If a change is intended, bump the
//! format's version byte, rerun with `E2EBK_BLESS=1` and review the diff in
//! `hsm-vault/vectors/`.
//!
//! Everything is deterministic: a software sealer with a fixed key, seeded
//! entropy for IVs and secrets.

// The same loader and blessing as protocol-spec's vectors (its file reads
// `vectors/` under the crate being tested).
#[path = "../../protocol-spec/tests/support/vectors.rs"]
mod vectors;

use hsm_vault::entropy::SeededEntropy;
use hsm_vault::raft::codec;
use hsm_vault::raft::identity::{GroupId, PeerHello, PeerWelcome};
use hsm_vault::raft::VaultRaft;
use hsm_vault::seal::SoftSealer;
use hsm_vault::secrets::{FleetParams, FleetSecrets};
use hsm_vault::state::record::{self, RecordBody, Registration, StoredRecord};
use hsm_vault::state::Command;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use protocol_spec::ids::{AccountId, FleetId};
use protocol_spec::keywrap::WRAPPED_KEY_LEN;
use protocol_spec::messages::vault::RegistrationMode;
use protocol_spec::opaque::sizes;

const FILE: &str = "durable.txt";
const SEAL_KEY: [u8; 32] = [0x3c; 32];

fn account() -> AccountId {
    AccountId::new("+15551234567").unwrap()
}

fn registered() -> RecordBody {
    let mut wrapped_key = [0x77; WRAPPED_KEY_LEN];
    wrapped_key[0] = 1;
    RecordBody::Registered(Registration {
        attempts_used: 3,
        registration_nonce: [0x09; 32],
        registered_at_unix_secs: 1_796_133_780,
        kind: Some(RegistrationMode::Replace),
        opaque_record: vec![0x05; sizes::REGISTRATION_UPLOAD],
        wrapped_key,
    })
}

/// [`registered`] as a build before the escrow epoch wrote it (body
/// format 1: no time, no kind), laid out by hand: no encoder writes it
/// any more, and every replica must still read it.
fn registered_format_1() -> Vec<u8> {
    let mut b = vec![0x01, 0x01];
    b.extend_from_slice(&3u32.to_be_bytes());
    b.extend_from_slice(&[0x09; 32]);
    b.extend_from_slice(&[0x05; sizes::REGISTRATION_UPLOAD]);
    b.push(0x01);
    b.extend_from_slice(&[0x77; WRAPPED_KEY_LEN - 1]);
    b
}

/// What [`registered_format_1`] reads as: the same registration, its time
/// and kind unknown.
fn registered_format_1_decoded() -> RecordBody {
    let RecordBody::Registered(mut r) = registered() else {
        unreachable!()
    };
    r.registered_at_unix_secs = 0;
    r.kind = None;
    RecordBody::Registered(r)
}

fn stored() -> StoredRecord {
    record::seal(
        &SoftSealer::new(SEAL_KEY),
        &SeededEntropy::new(1),
        &account(),
        4,
        &registered(),
    )
    .unwrap()
}

fn command() -> Command {
    Command::PutRecord {
        account: account(),
        expected_version: 3,
        record: stored(),
    }
}

fn log_entry() -> Entry<VaultRaft> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(7, 2), 42),
        payload: EntryPayload::Normal(command()),
    }
}

fn fleet_sealed() -> Vec<u8> {
    let secrets = FleetSecrets::generate(
        FleetId::new("golden-fleet").unwrap(),
        FleetParams::new(10).unwrap(),
        &SeededEntropy::new(7),
    )
    .unwrap();
    secrets
        .seal(&SoftSealer::new(SEAL_KEY), &SeededEntropy::new(8))
        .unwrap()
}

fn hello() -> PeerHello {
    PeerHello {
        from: 1,
        to: 2,
        group: GroupId([0xab; 16]),
    }
}

fn welcomes() -> [PeerWelcome; 2] {
    [
        PeerWelcome {
            node: 2,
            group: Some(GroupId([0xab; 16])),
        },
        PeerWelcome {
            node: 3,
            group: None,
        },
    ]
}

#[test]
fn durable_and_internal_formats_match_their_golden_bytes() {
    let [welcome, welcome_no_group] = welcomes();
    let actual: Vec<(String, Vec<u8>)> = vec![
        (
            "record_body_registered".into(),
            registered().encode().to_vec(),
        ),
        (
            "record_body_registered_format_1".into(),
            registered_format_1(),
        ),
        (
            "record_body_locked".into(),
            RecordBody::Locked {
                locked_at_unix_secs: 1_700_000_000,
            }
            .encode()
            .to_vec(),
        ),
        (
            "record_body_deleted".into(),
            RecordBody::Deleted.encode().to_vec(),
        ),
        ("sealed_record_body".into(), stored().sealed),
        ("stored_record".into(), stored().encode()),
        ("command_put_record".into(), command().encode()),
        (
            "raft_log_entry".into(),
            codec::encode("log entry", &log_entry()).unwrap(),
        ),
        ("fleet_sealed".into(), fleet_sealed()),
        (
            "peer_hello".into(),
            codec::encode("peer hello", &hello()).unwrap(),
        ),
        (
            "peer_welcome".into(),
            codec::encode("peer welcome", &welcome).unwrap(),
        ),
        (
            "peer_welcome_no_group".into(),
            codec::encode("peer welcome", &welcome_no_group).unwrap(),
        ),
    ];
    vectors::check(
        FILE,
        "The vault's durable and internal formats, from fixed inputs (see\n\
         hsm-vault/tests/durable_vectors.rs): record bodies (format 2, and a format 1\n\
         body that replicas still read, as registered at time 0, kind unknown), a\n\
         sealed body and its stored record (software sealer, key 0x3c x 32, seeded\n\
         IV), a compare-and-set command, a Raft log entry (postcard), fleet.sealed\n\
         (seeded secrets), and the peer handshake payloads (postcard).",
        &actual,
    );
}

/// The checked-in bytes decode to the values they were made from, so the
/// decoders (not only the encoders) are held to the formats.
#[test]
fn golden_bytes_decode_back() {
    let g = vectors::load(FILE);
    assert_eq!(
        RecordBody::decode(&g["record_body_registered"]).unwrap(),
        registered()
    );
    assert_eq!(
        RecordBody::decode(&g["record_body_registered_format_1"]).unwrap(),
        registered_format_1_decoded()
    );
    assert_eq!(
        RecordBody::decode(&g["record_body_locked"]).unwrap(),
        RecordBody::Locked {
            locked_at_unix_secs: 1_700_000_000
        }
    );
    assert_eq!(
        RecordBody::decode(&g["record_body_deleted"]).unwrap(),
        RecordBody::Deleted
    );
    let stored_back = StoredRecord::decode(&g["stored_record"]).unwrap();
    assert_eq!(stored_back.version, 4);
    assert_eq!(stored_back.sealed, g["sealed_record_body"]);
    let sealer = SoftSealer::new(SEAL_KEY);
    assert_eq!(
        record::unseal(&sealer, &account(), &stored_back).unwrap(),
        registered()
    );
    assert_eq!(
        Command::decode(&g["command_put_record"]).unwrap(),
        command()
    );
    let entry: Entry<VaultRaft> = codec::decode("log entry", &g["raft_log_entry"]).unwrap();
    assert_eq!(entry.log_id, log_entry().log_id);
    assert!(matches!(entry.payload, EntryPayload::Normal(c) if c == command()));
    let secrets = FleetSecrets::unseal(&sealer, &g["fleet_sealed"]).unwrap();
    assert_eq!(secrets.fleet_id.as_str(), "golden-fleet");
    assert_eq!(secrets.params.max_attempts, 10);
    assert_eq!(
        codec::decode::<PeerHello>("peer hello", &g["peer_hello"]).unwrap(),
        hello()
    );
    let [welcome, welcome_no_group] = welcomes();
    assert_eq!(
        codec::decode::<PeerWelcome>("peer welcome", &g["peer_welcome"]).unwrap(),
        welcome
    );
    assert_eq!(
        codec::decode::<PeerWelcome>("peer welcome", &g["peer_welcome_no_group"]).unwrap(),
        welcome_no_group
    );
}
