#![allow(clippy::unwrap_used)]
//! Golden vectors for the vault's durable and internal formats: record
//! bodies (format 2, and a format 1 body that must still be read), a sealed
//! record body, a stored record, a command, a Raft log entry, the node key
//! table's log commands, a group commit's entry, `fleet.sealed`, a sealed node key, and the
//! replica-to-replica handshake payloads and node key proofs. Any change
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
use hsm_vault::raft::log_command::LogCommand;
use hsm_vault::raft::peer_keys::{NodeKey, NodeProof, NodeSigner, PeerKeyChange, ProofRole};
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
        payload: EntryPayload::Normal(LogCommand::Record(command())),
    }
}

fn register_key() -> LogCommand {
    LogCommand::PeerKey(PeerKeyChange::Register {
        node: 4,
        key: NodeKey([0x44; 32]),
    })
}

fn retire_node() -> LogCommand {
    LogCommand::PeerKey(PeerKeyChange::Retire { node: 3 })
}

/// A group commit: two record commands of two accounts in one entry.
fn record_commands() -> LogCommand {
    let other = AccountId::new("+15559876543").unwrap();
    let sealed = record::seal(
        &SoftSealer::new(SEAL_KEY),
        &SeededEntropy::new(2),
        &other,
        1,
        &registered(),
    )
    .unwrap();
    LogCommand::Records(vec![
        command(),
        Command::PutRecord {
            account: other,
            expected_version: 0,
            record: sealed,
        },
    ])
}

fn node_signer() -> NodeSigner {
    NodeSigner::from_seed(&[0x11; 32]).unwrap()
}

/// A proof over a fixed handshake hash (Ed25519 signatures are
/// deterministic).
fn proof(role: ProofRole, node: u64) -> NodeProof {
    node_signer().prove(role, GroupId([0xab; 16]), node, &[0x22; 32])
}

fn sealed_node_key() -> Vec<u8> {
    NodeSigner::create(2, &SoftSealer::new(SEAL_KEY), &SeededEntropy::new(9))
        .unwrap()
        .1
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
            proof: proof(ProofRole::Responder, 2),
        },
        PeerWelcome {
            node: 3,
            group: None,
            proof: proof(ProofRole::Responder, 3),
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
        ("log_command_register_key".into(), register_key().encode()),
        ("log_command_retire_node".into(), retire_node().encode()),
        ("log_command_records".into(), record_commands().encode()),
        ("fleet_sealed".into(), fleet_sealed()),
        ("sealed_node_key".into(), sealed_node_key()),
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
        (
            "peer_initiator_proof".into(),
            codec::encode("peer proof", &proof(ProofRole::Initiator, 1)).unwrap(),
        ),
    ];
    vectors::check(
        FILE,
        "The vault's durable and internal formats, from fixed inputs (see\n\
         hsm-vault/tests/durable_vectors.rs): record bodies (format 2, and a format 1\n\
         body that replicas still read, as registered at time 0, kind unknown), a\n\
         sealed body and its stored record (software sealer, key 0x3c x 32, seeded\n\
         IV), a compare-and-set command, a Raft log entry (postcard), the node key\n\
         table's log commands, fleet.sealed (seeded secrets), a sealed node key\n\
         (seeded), and the peer handshake payloads and node key proofs (postcard;\n\
         Ed25519 from seed 0x11 x 32 over handshake hash 0x22 x 32).",
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
    assert!(matches!(entry.payload, EntryPayload::Normal(LogCommand::Record(c)) if c == command()));
    assert_eq!(
        LogCommand::decode(&g["log_command_register_key"]).unwrap(),
        register_key()
    );
    assert_eq!(
        LogCommand::decode(&g["log_command_retire_node"]).unwrap(),
        retire_node()
    );
    assert_eq!(
        LogCommand::decode(&g["log_command_records"]).unwrap(),
        record_commands()
    );
    let opened = NodeSigner::open(&g["sealed_node_key"], 2, &sealer).unwrap();
    assert_eq!(
        opened.public(),
        NodeSigner::create(2, &sealer, &SeededEntropy::new(9))
            .unwrap()
            .0
            .public()
    );
    let initiator: NodeProof = codec::decode("peer proof", &g["peer_initiator_proof"]).unwrap();
    assert_eq!(
        initiator.verify(ProofRole::Initiator, GroupId([0xab; 16]), 1, &[0x22; 32]),
        Ok(node_signer().public())
    );
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
