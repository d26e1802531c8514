//! A dishonest chatd against the real `hsm-vault` binary (SoftHSM, one
//! standalone replica, loopback): the test is the front-end, speaking the
//! vault link as chatd does (testkit's `LinkClient`), and it is also the
//! honest clients behind it, whose tunnel frames it replays, reorders,
//! drops, duplicates and cross-wires between tunnels and between accounts;
//! it replays an old tunnel's handshake and lies about the account id.
//!
//! What must hold (SPEC 5.3, 6.2, 6.3, 6.5, 8.3 and the chatd row of 12):
//! every trick is caught by the vault (a `TunnelClose` with the documented
//! code) or by the client (its tunnel's AEAD refuses the frame); a trick
//! counts an attempt only when a genuine `LoginStart` reached the vault
//! once; no account yields more KE2 answers than `max_attempts`; no login
//! succeeds without the password; the legitimate clients still work at the
//! end; and nothing the front-end saw (every link record and every link
//! frame's plaintext) holds a password, `K`, `wrapped_K`, the OPAQUE
//! export key or session key.
//!
//! The random part draws from a fixed seed, printed at the start;
//! `E2EBK_DISHONEST_SEED=<seed>` runs another.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;

use backup_client::vault_flow::{PasswordLogin, PasswordRegistration};
use opaque_ke::{ClientLogin, ClientLoginFinishParameters, CredentialResponse};
use protocol_spec::codes::TunnelCloseCode;
use protocol_spec::ids::{AccountId, LinkTunnelId};
use protocol_spec::keys::PublicKey;
use protocol_spec::keywrap;
use protocol_spec::limits::MAX_VAULT_FRAME;
use protocol_spec::messages::link::{LinkFrame, VaultLinkFrame};
use protocol_spec::messages::vault::{
    RecordState, RegistrationMode, TunnelHello, VaultRequest, VaultResponse,
};
use protocol_spec::messages::WireMessage;
use protocol_spec::noise::{Initiator, Transport};
use protocol_spec::opaque::{self, Suite};
use protocol_spec::root_key::RootKey;
use support::{account, prepared};
use testkit::link::LinkClient;
use testkit::secrets::SecretNeedles;
use testkit::vault::{FleetInfo, VaultFixture, VaultOptions};

const MAX_ATTEMPTS: u32 = 5;
const DEFAULT_SEED: u64 = 0x00d1_5b0e_57f0_0001;

/// A small deterministic generator (SplitMix64): the schedule must replay
/// from its seed alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The client end of one tunnel: what a real client holds, which the
/// front-end never sees.
struct ClientEnd {
    id: LinkTunnelId,
    account: AccountId,
    transport: Transport,
    /// The client's handshake message 1 and the vault's message 2, as the
    /// front-end relayed them (kept for replays).
    m1: Vec<u8>,
    m2: Vec<u8>,
}

impl ClientEnd {
    fn seal(&mut self, req: &VaultRequest) -> Vec<u8> {
        self.transport.seal(&req.encode()).unwrap()
    }

    /// Opens a response the front-end delivered; `None` when the tunnel's
    /// AEAD refuses it (the client then drops the tunnel).
    fn open(&mut self, payload: &[u8]) -> Option<VaultResponse> {
        let plain = self.transport.open(payload, MAX_VAULT_FRAME).ok()?;
        Some(VaultResponse::decode(&plain).unwrap())
    }
}

/// The dishonest front-end: a link to the vault, a count of the KE2
/// answers it relayed per account, and the attempts it expects the vault
/// to have counted.
struct FrontEnd {
    link: LinkClient,
    fleet: FleetInfo,
    /// Data frames that answered a genuine `LoginStart`, per account.
    ke2_relayed: HashMap<AccountId, u32>,
}

fn handshake_for(
    fleet_key: &PublicKey,
    a: &AccountId,
) -> (Vec<u8>, protocol_spec::noise::AwaitingResponse) {
    Initiator::tunnel(fleet_key, a)
        .unwrap()
        .write_first(&TunnelHello.encode())
        .unwrap()
}

fn close_code(f: &VaultLinkFrame) -> Option<TunnelCloseCode> {
    match f {
        VaultLinkFrame::Close { code, .. } => Some(*code),
        _ => None,
    }
}

impl FrontEnd {
    /// Sends `Open` claiming `link_account` with `handshake`; returns the
    /// vault's first frame for that tunnel.
    fn open_raw(
        &mut self,
        link_account: &AccountId,
        handshake: Vec<u8>,
    ) -> (LinkTunnelId, VaultLinkFrame) {
        let id = self.link.next_tunnel_id();
        self.link
            .send(&LinkFrame::Open {
                tunnel: id,
                account: link_account.clone(),
                handshake,
            })
            .unwrap();
        (id, self.link.next_for(id).unwrap())
    }

    /// An honest tunnel for `a`.
    fn tunnel(&mut self, a: &AccountId) -> ClientEnd {
        let (m1, waiting) = handshake_for(&self.fleet.tunnel_key, a);
        let (id, first) = self.open_raw(a, m1.clone());
        let VaultLinkFrame::Data { payload: m2, .. } = first else {
            panic!("honest tunnel refused: {first:?}")
        };
        let (_, transport) = waiting.read_response(&m2).unwrap();
        ClientEnd {
            id,
            account: a.clone(),
            transport,
            m1,
            m2,
        }
    }

    fn data(&mut self, id: LinkTunnelId, payload: Vec<u8>) {
        self.link
            .send(&LinkFrame::Data {
                tunnel: id,
                payload,
            })
            .unwrap();
    }

    /// Sends `payload` on `id` and returns what came back.
    fn exchange(&mut self, id: LinkTunnelId, payload: Vec<u8>) -> VaultLinkFrame {
        self.data(id, payload);
        self.link.next_for(id).unwrap()
    }

    fn close(&mut self, id: LinkTunnelId) {
        self.link
            .send(&LinkFrame::Close {
                tunnel: id,
                code: TunnelCloseCode::Normal,
            })
            .unwrap();
    }

    /// Relays one request honestly; the client opens the answer.
    fn request(&mut self, c: &mut ClientEnd, req: &VaultRequest) -> VaultResponse {
        let sealed = c.seal(req);
        match self.exchange(c.id, sealed) {
            VaultLinkFrame::Data { payload, .. } => {
                let r = c.open(&payload).expect("honest relay opens");
                self.note_ke2(&c.account, req, &r);
                r
            }
            other => panic!("honest request refused: {other:?}"),
        }
    }

    fn note_ke2(&mut self, a: &AccountId, req: &VaultRequest, r: &VaultResponse) {
        if matches!(req, VaultRequest::LoginStart { .. })
            && matches!(r, VaultResponse::LoginStarted { .. })
        {
            *self.ke2_relayed.entry(a.clone()).or_default() += 1;
        }
    }

    /// Counts a KE2 the front-end saw but did not deliver (it cannot tell
    /// from the ciphertext, the test knows what the request was).
    fn note_withheld_ke2(&mut self, a: &AccountId) {
        *self.ke2_relayed.entry(a.clone()).or_default() += 1;
    }

    fn attempts_remaining(&mut self, a: &AccountId) -> (RecordState, u32) {
        let mut c = self.tunnel(a);
        let r = self.request(&mut c, &VaultRequest::Status);
        self.close(c.id);
        let VaultResponse::Status(s) = r else {
            panic!("status: {r:?}")
        };
        (s.state, s.attempts_remaining)
    }

    fn register(&mut self, a: &AccountId, password: &str, k: &RootKey) -> keywrap::WrappedKey {
        let mut c = self.tunnel(a);
        let (flow, start) =
            PasswordRegistration::start(&prepared(password.as_bytes()), RegistrationMode::Create)
                .unwrap();
        let r = self.request(&mut c, &start);
        let finish = flow.finish(&r, a, &self.fleet.fleet_id, k).unwrap();
        let VaultRequest::RegisterFinish { wrapped_key, .. } = &finish else {
            unreachable!()
        };
        let wrapped_key = wrapped_key.clone();
        let r = self.request(&mut c, &finish);
        assert!(matches!(r, VaultResponse::Registered { .. }), "{r:?}");
        self.close(c.id);
        wrapped_key
    }
}

/// An honest login with the right password, through opaque-ke directly so
/// the test holds the export key and session key to look for.
struct Login {
    k: RootKey,
    export_key: Vec<u8>,
    session_key: Vec<u8>,
}

fn honest_login(fe: &mut FrontEnd, a: &AccountId, password: &str) -> Login {
    let pw = prepared(password.as_bytes());
    let mut rng = rand_core::OsRng;
    let mut c = fe.tunnel(a);
    let start = ClientLogin::<Suite>::start(&mut rng, pw.as_bytes()).unwrap();
    let r = fe.request(
        &mut c,
        &VaultRequest::LoginStart {
            credential_request: start.message.serialize().to_vec(),
        },
    );
    let VaultResponse::LoginStarted {
        credential_response,
        ..
    } = r
    else {
        panic!("login start: {r:?}")
    };
    let ksf = opaque::ksf();
    let finished = start
        .state
        .finish(
            &mut rng,
            pw.as_bytes(),
            CredentialResponse::<Suite>::deserialize(&credential_response).unwrap(),
            ClientLoginFinishParameters::new(
                Some(opaque::CONTEXT),
                opaque::identifiers(a, &fe.fleet.fleet_id),
                Some(&ksf),
            ),
        )
        .expect("right password verifies");
    let r = fe.request(
        &mut c,
        &VaultRequest::LoginFinish {
            credential_finalization: finished.message.serialize().to_vec(),
        },
    );
    let VaultResponse::LoginSucceeded { wrapped_key } = r else {
        panic!("login finish: {r:?}")
    };
    fe.close(c.id);
    // A success resets the count (8.3).
    fe.ke2_relayed.remove(a);
    Login {
        k: keywrap::unwrap(&finished.export_key, a, &wrapped_key).unwrap(),
        export_key: finished.export_key.to_vec(),
        session_key: finished.session_key.to_vec(),
    }
}

/// A genuine `LoginStart` sealed in `c`, with the flow kept by the client.
fn login_start(c: &mut ClientEnd, password: &str) -> (PasswordLogin, Vec<u8>) {
    let (flow, start) = PasswordLogin::start(&prepared(password.as_bytes())).unwrap();
    (flow, c.seal(&start))
}

/// The frames for `id` until its `Close`, which is returned with the
/// number of `Data` frames before it.
fn until_close(fe: &mut FrontEnd, id: LinkTunnelId) -> (usize, TunnelCloseCode) {
    let mut data = 0;
    loop {
        match fe.link.next_for(id).unwrap() {
            VaultLinkFrame::Data { .. } => data += 1,
            VaultLinkFrame::Close { code, .. } => return (data, code),
            other => panic!("{other:?}"),
        }
    }
}

/// One dishonest trick against account `a`; returns the attempts it is
/// expected to have spent, checking on the way that vault or client
/// caught it.
fn trick(
    fe: &mut FrontEnd,
    rng: &mut Rng,
    a: &AccountId,
    other: &AccountId,
    password_of_a: &str,
) -> (&'static str, u32) {
    match rng.below(9) {
        0 => {
            // Lie about the account: a handshake made for `other`, opened
            // as `a`. The prologue differs, Noise fails.
            let (m1, _) = handshake_for(&fe.fleet.tunnel_key, other);
            let (_, f) = fe.open_raw(a, m1);
            assert_eq!(
                close_code(&f),
                Some(TunnelCloseCode::HandshakeFailed),
                "lie: {f:?}"
            );
            ("lie about the account", 0)
        }
        1 => {
            // Replay a frame the vault already read in this tunnel.
            let mut c = fe.tunnel(a);
            let status = c.seal(&VaultRequest::Status);
            let f = fe.exchange(c.id, status.clone());
            assert!(matches!(f, VaultLinkFrame::Data { .. }));
            let f = fe.exchange(c.id, status);
            assert_eq!(
                close_code(&f),
                Some(TunnelCloseCode::ProtocolError),
                "replay: {f:?}"
            );
            ("replay a frame in its tunnel", 0)
        }
        2 => {
            // Duplicate a LoginStart, back to back: the first counts once,
            // the copy does not decrypt (implicit nonce).
            let mut c = fe.tunnel(a);
            let (_flow, start) = login_start(&mut c, "a guess");
            fe.data(c.id, start.clone());
            fe.data(c.id, start);
            let (data, code) = until_close(fe, c.id);
            assert_eq!(code, TunnelCloseCode::ProtocolError, "duplicate");
            assert!(data <= 1, "{data} answers to one LoginStart");
            for _ in 0..data {
                fe.note_withheld_ke2(a);
            }
            ("duplicate a LoginStart", 1)
        }
        3 => {
            // Reorder: the client's second frame delivered first.
            let mut c = fe.tunnel(a);
            let _first = c.seal(&VaultRequest::Status);
            let (_flow, second) = login_start(&mut c, "a guess");
            let f = fe.exchange(c.id, second);
            assert_eq!(
                close_code(&f),
                Some(TunnelCloseCode::ProtocolError),
                "reorder: {f:?}"
            );
            ("reorder a tunnel's frames", 0)
        }
        4 => {
            // Cross-wire two tunnels of the same account, both ways: the
            // vault refuses a request from the other tunnel, the client
            // refuses a response from the other tunnel.
            let mut c1 = fe.tunnel(a);
            let c2 = fe.tunnel(a);
            let (_flow, start) = login_start(&mut c1, "a guess");
            let f = fe.exchange(c2.id, start);
            assert_eq!(
                close_code(&f),
                Some(TunnelCloseCode::ProtocolError),
                "cross-wired request: {f:?}"
            );
            fe.close(c1.id);
            let mut c3 = fe.tunnel(a);
            let mut c4 = fe.tunnel(a);
            let status = c3.seal(&VaultRequest::Status);
            let VaultLinkFrame::Data { payload, .. } = fe.exchange(c3.id, status) else {
                panic!("status on c3")
            };
            assert!(
                c4.open(&payload).is_none(),
                "a client opened another tunnel's response"
            );
            fe.close(c3.id);
            fe.close(c4.id);
            ("cross-wire two tunnels of one account", 0)
        }
        5 => {
            // Cross-wire accounts: `other`'s LoginStart on `a`'s tunnel.
            let mut co = fe.tunnel(other);
            let c = fe.tunnel(a);
            let (_flow, start) = login_start(&mut co, "a guess");
            let f = fe.exchange(c.id, start);
            assert_eq!(
                close_code(&f),
                Some(TunnelCloseCode::ProtocolError),
                "cross-account: {f:?}"
            );
            fe.close(co.id);
            ("cross-wire accounts", 0)
        }
        6 => {
            // Drop the client's LoginStart: nothing reaches the vault.
            let mut c = fe.tunnel(a);
            let (_flow, _dropped) = login_start(&mut c, password_of_a);
            fe.close(c.id);
            ("drop a LoginStart", 0)
        }
        7 => {
            // Drop the vault's KE2: the attempt was counted before it was
            // sent and stays spent (8.3); the client never learns a thing.
            let mut c = fe.tunnel(a);
            let (_flow, start) = login_start(&mut c, password_of_a);
            let f = fe.exchange(c.id, start);
            assert!(
                matches!(f, VaultLinkFrame::Data { .. }),
                "KE2 expected: {f:?}"
            );
            fe.note_withheld_ke2(a);
            fe.close(c.id);
            ("drop a KE2", 1)
        }
        _ => {
            // Replay an old tunnel's handshake and its frames: the vault
            // answers the handshake (Noise_NK cannot tell a replay) with a
            // fresh ephemeral, so the old frames do not decrypt.
            let mut old = fe.tunnel(a);
            let status = old.seal(&VaultRequest::Status);
            assert!(matches!(
                fe.exchange(old.id, status.clone()),
                VaultLinkFrame::Data { .. }
            ));
            fe.close(old.id);
            let (id, f) = fe.open_raw(a, old.m1.clone());
            let VaultLinkFrame::Data { payload: m2, .. } = f else {
                panic!("replayed handshake: {f:?}")
            };
            assert_ne!(
                m2, old.m2,
                "the vault must answer a replayed handshake afresh"
            );
            let f = fe.exchange(id, status);
            assert_eq!(
                close_code(&f),
                Some(TunnelCloseCode::ProtocolError),
                "replayed frames: {f:?}"
            );
            ("replay an old tunnel's handshake", 0)
        }
    }
}

#[test]
fn a_dishonest_front_end_is_caught_and_gets_no_extra_guess_and_no_secret() {
    let seed: u64 = std::env::var("E2EBK_DISHONEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    println!("dishonest front-end seed {seed} (rerun with E2EBK_DISHONEST_SEED={seed})");
    let mut rng = Rng(seed);

    let f = VaultFixture::init(VaultOptions::default());
    let p = f.spawn();
    let link = LinkClient::connect(p.link_addr, &f.chatd_key, &f.fleet.link_key).unwrap();
    let mut fe = FrontEnd {
        link,
        fleet: f.fleet.clone(),
        ke2_relayed: HashMap::new(),
    };
    assert!(fe.link.welcome.leader);

    // Distinctive passwords whose NFC and NFD forms differ.
    let alice = account("+15550100001");
    let bob = account("+15550100002");
    let pw_alice = "Dish\u{00f6}nest-\u{00c5}lice-7731-p\u{00e4}ss";
    let pw_alice_nfd = "Disho\u{0308}nest-A\u{030a}lice-7731-pa\u{0308}ss";
    let pw_bob = "Dish\u{00f6}nest-B\u{00f8}b-4410-\u{00e9}cho";
    let pw_bob_nfd = "Disho\u{0308}nest-B\u{00f8}b-4410-e\u{0301}cho";
    assert_eq!(
        prepared(pw_alice_nfd.as_bytes()).as_bytes(),
        prepared(pw_alice.as_bytes()).as_bytes()
    );
    let k_alice = RootKey::from_entropy(*b"dishonest front end, alice's K");
    let k_bob = RootKey::from_entropy(*b"dishonest front end, bob's K!!");
    let wrapped_alice = fe.register(&alice, pw_alice, &k_alice);
    let wrapped_bob = fe.register(&bob, pw_bob, &k_bob);

    // Each named trick once, then a seeded mix; the vault's count must
    // match the expectation after every one, and the KE2 answers for an
    // account never exceed max_attempts between its successful logins.
    let mut used: HashMap<AccountId, u32> = HashMap::new();
    let mut steps = 0;
    let mut kinds_seen = std::collections::BTreeSet::new();
    while steps < 40 || kinds_seen.len() < 9 {
        let (a, other, pw) = if rng.below(2) == 0 {
            (&alice, &bob, pw_alice)
        } else {
            (&bob, &alice, pw_bob)
        };
        let (name, spent) = trick(&mut fe, &mut rng, a, other, pw);
        kinds_seen.insert(name);
        steps += 1;
        let n = used.entry(a.clone()).or_default();
        *n += spent;
        let (state, remaining) = fe.attempts_remaining(a);
        assert_eq!(
            (state, remaining),
            (RecordState::Registered, MAX_ATTEMPTS - *n),
            "step {steps} ({name}) on {a}: the vault counted other than expected"
        );
        assert!(fe.ke2_relayed.get(a).copied().unwrap_or(0) <= MAX_ATTEMPTS);
        // Before the last attempt goes, the legitimate user logs in (as
        // the app would after noticing spent attempts): the count resets.
        if remaining == 1 {
            let login = honest_login(&mut fe, a, pw);
            assert!(&login.k == if a == &alice { &k_alice } else { &k_bob });
            used.insert(a.clone(), 0);
        }
    }
    println!("{steps} tricks, kinds: {kinds_seen:?}");

    // No login succeeds without the password: a client with a wrong one
    // gets KE2 and cannot build KE3; the front-end's replay of an old KE3
    // and of an old LoginSucceeded gets it nowhere.
    let mut old = fe.tunnel(&bob);
    let (flow, start) = PasswordLogin::start(&prepared(pw_bob.as_bytes())).unwrap();
    let VaultLinkFrame::Data { payload, .. } = fe.exchange(old.id, old.seal(&start)) else {
        panic!()
    };
    let ke2 = old.open(&payload).unwrap();
    let (finish, verified) = flow.finish(&ke2, &bob, &fe.fleet.fleet_id).unwrap();
    let old_ke3 = old.seal(&finish);
    let VaultLinkFrame::Data {
        payload: old_success,
        ..
    } = fe.exchange(old.id, old_ke3.clone())
    else {
        panic!()
    };
    assert_eq!(
        verified
            .key(&old.open(&old_success).unwrap(), &bob)
            .unwrap(),
        k_bob
    );
    fe.close(old.id);
    fe.ke2_relayed.remove(&bob);
    let mut wrong = fe.tunnel(&bob);
    let (flow, start) = PasswordLogin::start(&prepared(b"not bob's password")).unwrap();
    let VaultLinkFrame::Data { payload, .. } = fe.exchange(wrong.id, wrong.seal(&start)) else {
        panic!()
    };
    let ke2 = wrong.open(&payload).unwrap();
    fe.note_ke2(&bob, &start, &ke2);
    assert!(
        flow.finish(&ke2, &bob, &fe.fleet.fleet_id).is_err(),
        "a wrong password verified"
    );
    assert!(
        wrong.open(&old_success).is_none(),
        "the client accepted an old tunnel's LoginSucceeded"
    );
    let f = fe.exchange(wrong.id, old_ke3);
    assert_eq!(
        close_code(&f),
        Some(TunnelCloseCode::ProtocolError),
        "old KE3: {f:?}"
    );
    assert_eq!(
        fe.attempts_remaining(&bob),
        (RecordState::Registered, MAX_ATTEMPTS - 1)
    );

    // Burn bob's attempts to the end with withheld KE2s: exactly
    // max_attempts KE2 answers, then none.
    for _ in 1..MAX_ATTEMPTS {
        let mut c = fe.tunnel(&bob);
        let (_flow, start) = login_start(&mut c, pw_bob);
        assert!(matches!(
            fe.exchange(c.id, start),
            VaultLinkFrame::Data { .. }
        ));
        fe.note_withheld_ke2(&bob);
        fe.close(c.id);
    }
    assert_eq!(fe.ke2_relayed[&bob], MAX_ATTEMPTS);
    // The last attempt's login is abandoned by the close, which erases the
    // record; the close is handled after the front-end sent it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fe.attempts_remaining(&bob).0 != RecordState::Locked {
        assert!(std::time::Instant::now() < deadline, "bob never locked");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut c = fe.tunnel(&bob);
    let (_flow, start) = PasswordLogin::start(&prepared(pw_bob.as_bytes())).unwrap();
    let r = fe.request(&mut c, &start);
    assert_eq!(r, VaultResponse::Locked, "a KE2 beyond max_attempts");
    fe.close(c.id);
    assert!(
        fe.ke2_relayed.values().all(|n| *n <= MAX_ATTEMPTS),
        "{:?}",
        fe.ke2_relayed
    );

    // The legitimate client still works.
    let last = honest_login(&mut fe, &alice, pw_alice);
    assert_eq!(last.k, k_alice);
    assert_eq!(
        fe.attempts_remaining(&alice),
        (RecordState::Registered, MAX_ATTEMPTS)
    );

    // Nothing the front-end saw holds a secret.
    let seen = fe.link.seen().to_vec();
    assert!(
        testkit::contains_bytes(&seen, alice.as_bytes()),
        "the transcript must hold what chatd sees"
    );
    let mut needles = SecretNeedles::new();
    for (name, nfc, nfd) in [
        ("alice", pw_alice, pw_alice_nfd),
        ("bob", pw_bob, pw_bob_nfd),
    ] {
        needles
            .exact(&format!("{name}'s password (NFC)"), nfc)
            .exact(&format!("{name}'s password (NFD)"), nfd)
            .binary(
                &format!("{name}'s prepared password"),
                prepared(nfc.as_bytes()).as_bytes(),
            );
    }
    for (name, k, wrapped) in [
        ("alice", &k_alice, &wrapped_alice),
        ("bob", &k_bob, &wrapped_bob),
    ] {
        needles
            .binary(&format!("{name}'s K"), k.expose())
            .exact(&format!("{name}'s K (64 digits)"), k.to_text().as_bytes())
            .binary(&format!("{name}'s wrapped_K"), wrapped.as_bytes())
            .binary(
                &format!("{name}'s wrapped_K ciphertext"),
                &wrapped.as_bytes()[13..45],
            );
    }
    needles
        .binary("alice's export key", &last.export_key)
        .binary("alice's OPAQUE session key", &last.session_key);
    needles.assert_absent(&seen, "what the dishonest front-end saw");
    println!(
        "the front-end saw {} bytes, none of them a secret",
        seen.len()
    );
    let (_, metrics) = p.admin_get("/metrics");
    assert!(testkit::metric(&metrics, "vault_record_integrity_failures_total") < 1.0);
}
