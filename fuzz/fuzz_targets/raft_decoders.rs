//! Every format a vault replica decodes from another replica (peer request
//! and response frames, the handshake's hello and welcome) or from its own
//! disk (log entries and commands, snapshots, record commands, stored
//! records, record bodies): no panic, and whatever is accepted survives
//! encoding and decoding again unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hsm_vault::raft::fuzzing::peer_channel(data);
    hsm_vault::raft::fuzzing::durable(data);
});
