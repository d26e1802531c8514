//! Every message decoder on arbitrary bytes; anything accepted must
//! re-encode to the same bytes (the codec is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol_spec::messages::chatd::{ClientFrame, ClientHello, ServerFrame, ServerHello};
use protocol_spec::messages::link::{LinkFrame, LinkHello, LinkWelcome, VaultLinkFrame};
use protocol_spec::messages::vault::{TunnelHello, VaultHello, VaultRequest, VaultResponse};
use protocol_spec::messages::WireMessage;

fn check<T: WireMessage>(data: &[u8]) {
    if let Ok(msg) = T::decode(data) {
        assert_eq!(msg.encode(), data, "accepted a non-canonical encoding");
    }
}

fuzz_target!(|data: &[u8]| {
    check::<ClientHello>(data);
    check::<ServerHello>(data);
    check::<ClientFrame>(data);
    check::<ServerFrame>(data);
    check::<LinkHello>(data);
    check::<LinkWelcome>(data);
    check::<LinkFrame>(data);
    check::<VaultLinkFrame>(data);
    check::<TunnelHello>(data);
    check::<VaultHello>(data);
    check::<VaultRequest>(data);
    check::<VaultResponse>(data);
});
