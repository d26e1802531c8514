//! The real `chatd` and `hsm-vault` binaries on loopback: authentication
//! and each rejection, enrolment once per code, tunnels end to end, a tap
//! that sees only ciphertext, hostile clients that leave a healthy one
//! alone, draining, the vault restarting under open connections, and chatd
//! killed inside an enrolment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use backup_client::connection::{Connection, Endpoint};
use backup_client::vault_flow::{self, PasswordLogin, PasswordRegistration};
use backup_client::ClientError;
use chatd::directory::{DeviceStatus, Directory, Enrolment, SqliteDirectory};
use futures_util::{SinkExt, StreamExt};
use protocol_spec::codes::{CloseCode, TunnelCloseCode};
use protocol_spec::ids::{AccountId, EnrolmentCode, TunnelId};
use protocol_spec::keys::StaticSecret;
use protocol_spec::messages::chatd::{ClientFrame, ClientHello};
use protocol_spec::messages::vault::{RecordState, RegistrationMode, VaultRequest};
use protocol_spec::messages::WireMessage;
use protocol_spec::noise::Initiator;
use protocol_spec::root_key::RootKey;
use testkit::chatd::{ChatdFixture, ChatdOptions, ChatdProcess};
use testkit::vault::{VaultFixture, VaultOptions, VaultProcess};
use tokio_tungstenite::tungstenite::Message;

/// The prepared form (SPEC 7.8) every client flow takes.
fn prepared(password: &[u8]) -> protocol_spec::password::Password {
    protocol_spec::password::Password::prepare(std::str::from_utf8(password).unwrap()).unwrap()
}

struct Stack {
    vault: VaultFixture,
    vault_proc: VaultProcess,
    chatd: ChatdFixture,
    chatd_proc: ChatdProcess,
}

fn stack_with(opts: ChatdOptions, vopts: VaultOptions) -> Stack {
    let vault = VaultFixture::init(vopts);
    let vault_proc = vault.spawn();
    let chatd = ChatdFixture::new(&vault, &[vault_proc.link_addr], opts);
    let chatd_proc = chatd.spawn();
    Stack {
        vault,
        vault_proc,
        chatd,
        chatd_proc,
    }
}

fn stack() -> Stack {
    stack_with(ChatdOptions::default(), VaultOptions::default())
}

fn device(seed: u8) -> StaticSecret {
    let mut b = [0u8; 32];
    testkit::fill_random(&mut b);
    b[0] = seed;
    StaticSecret::from_bytes(b)
}

impl Stack {
    fn endpoint(&self, account: &str) -> Endpoint {
        Endpoint {
            url: self.chatd_proc.url(),
            chatd_key: self.chatd.static_key,
            account: AccountId::new(account).unwrap(),
        }
    }

    /// Invites and enrols a device; returns a connected client.
    async fn enrolled(&self, account: &str, dev: &StaticSecret) -> Connection {
        let code = EnrolmentCode::new(self.chatd.invite(account)).unwrap();
        let c = Connection::connect(&self.endpoint(account), dev, Some(code))
            .await
            .unwrap();
        assert!(c.hello.enrolled_now);
        c
    }

    async fn register(
        &self,
        c: &mut Connection,
        account: &str,
        password: &[u8],
        k: &RootKey,
    ) -> VaultRequest {
        let a = AccountId::new(account).unwrap();
        let mut t = c
            .open_tunnel(&self.vault.fleet.tunnel_key, &self.vault.fleet.fleet_id)
            .await
            .unwrap();
        let (flow, start) =
            PasswordRegistration::start(&prepared(password), RegistrationMode::Create).unwrap();
        let r = c.request(&mut t, &start).await.unwrap();
        let finish = flow.finish(&r, &a, &self.vault.fleet.fleet_id, k).unwrap();
        let r = c.request(&mut t, &finish).await.unwrap();
        vault_flow::registered(&r, RegistrationMode::Create).unwrap();
        c.close_tunnel(t).await.unwrap();
        finish
    }

    async fn login(
        &self,
        c: &mut Connection,
        account: &str,
        password: &[u8],
    ) -> Result<(RootKey, VaultRequest), ClientError> {
        let a = AccountId::new(account).unwrap();
        let mut t = c
            .open_tunnel(&self.vault.fleet.tunnel_key, &self.vault.fleet.fleet_id)
            .await?;
        let (flow, start) = PasswordLogin::start(&prepared(password)).unwrap();
        let r = c.request(&mut t, &start).await?;
        let (finish, verified) = flow.finish(&r, &a, &self.vault.fleet.fleet_id)?;
        let r = c.request(&mut t, &finish).await?;
        let k = verified.key(&r, &a)?;
        c.close_tunnel(t).await?;
        Ok((k, finish))
    }
}

fn close_code(e: &ClientError) -> Option<CloseCode> {
    match e {
        ClientError::Closed(c) => Some(*c),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_every_rejection() {
    let s = stack();
    let alice = device(1);
    // Unknown account, no code.
    let e = Connection::connect(&s.endpoint("nobody"), &alice, None)
        .await
        .unwrap_err();
    assert_eq!(close_code(&e), Some(CloseCode::NotEnrolled), "{e}");
    // Enrol once with a code.
    let code = s.chatd.invite("alice");
    let c = Connection::connect(
        &s.endpoint("alice"),
        &alice,
        Some(EnrolmentCode::new(code.clone()).unwrap()),
    )
    .await
    .unwrap();
    assert!(c.hello.enrolled_now);
    c.close().await;
    // Known device now: no code needed.
    let c = Connection::connect(&s.endpoint("alice"), &alice, None)
        .await
        .unwrap();
    assert!(!c.hello.enrolled_now);
    c.close().await;
    // The same code again, for another device: rejected.
    let other = device(2);
    let e = Connection::connect(
        &s.endpoint("alice"),
        &other,
        Some(EnrolmentCode::new(code).unwrap()),
    )
    .await
    .unwrap_err();
    assert_eq!(close_code(&e), Some(CloseCode::EnrolmentRejected));
    // A device that is not enrolled.
    let e = Connection::connect(&s.endpoint("alice"), &other, None)
        .await
        .unwrap_err();
    assert_eq!(close_code(&e), Some(CloseCode::NotEnrolled));
    // A code for another account.
    let bob_code = s.chatd.invite("bob");
    let e = Connection::connect(
        &s.endpoint("alice"),
        &other,
        Some(EnrolmentCode::new(bob_code).unwrap()),
    )
    .await
    .unwrap_err();
    assert_eq!(close_code(&e), Some(CloseCode::EnrolmentRejected));
    // An expired code (issued directly in the directory, already past its TTL).
    {
        let dir = chatd::directory::SqliteDirectory::open(&s.chatd.directory_path()).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let expired = dir
            .invite(&AccountId::new("alice").unwrap(), now - 7200, 3600)
            .unwrap();
        let e = Connection::connect(&s.endpoint("alice"), &other, Some(expired))
            .await
            .unwrap_err();
        assert_eq!(close_code(&e), Some(CloseCode::EnrolmentRejected));
    }
    // Revocation: refused at the next handshake.
    let out = s
        .chatd
        .command()
        .args([
            "accounts",
            "revoke",
            "alice",
            "--device",
            &alice.public_key().to_hex(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let e = Connection::connect(&s.endpoint("alice"), &alice, None)
        .await
        .unwrap_err();
    assert_eq!(close_code(&e), Some(CloseCode::DeviceRevoked));
    // A client pinning the wrong chatd key cannot complete the handshake.
    let mut wrong = s.endpoint("bob");
    wrong.chatd_key = device(9).public_key();
    let e = Connection::connect(&wrong, &other, None).await.unwrap_err();
    assert_eq!(close_code(&e), Some(CloseCode::HandshakeFailed), "{e}");
    let (_, metrics) = s.chatd_proc.admin_get("/metrics");
    assert!(
        testkit::metric(&metrics, "chatd_enrolments_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        testkit::metric(
            &metrics,
            "chatd_handshakes_total{result=\"enrolment_rejected\"}"
        ) >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_login_through_chatd_and_a_tap_sees_only_ciphertext() {
    // A recording TCP proxy between chatd and the vault, and another between
    // the client and chatd.
    let vault = VaultFixture::init(VaultOptions::default());
    let vault_proc = vault.spawn();
    let (vault_tap, vault_bytes) = testkit::tap::start(vault_proc.link_addr);
    let chatd = ChatdFixture::new(&vault, &[vault_tap], ChatdOptions::default());
    let chatd_proc = chatd.spawn();
    let (client_tap, client_bytes) = testkit::tap::start(chatd_proc.addr);
    let s = Stack {
        vault,
        vault_proc,
        chatd,
        chatd_proc,
    };
    let mut ep = s.endpoint("carol");
    ep.url = format!("ws://{client_tap}");
    let dev = device(3);
    let code = EnrolmentCode::new(s.chatd.invite("carol")).unwrap();
    let mut c = Connection::connect(&ep, &dev, Some(code)).await.unwrap();
    let k = RootKey::from_entropy([7; 30]);
    let finish = s.register(&mut c, "carol", b"hunter2 hunter2", &k).await;
    let (got, ke3) = s.login(&mut c, "carol", b"hunter2 hunter2").await.unwrap();
    assert_eq!(got, k);
    c.close().await;
    let VaultRequest::RegisterFinish {
        registration_upload,
        wrapped_key,
    } = finish
    else {
        panic!()
    };
    let VaultRequest::LoginFinish {
        credential_finalization,
    } = ke3
    else {
        panic!()
    };
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("registration upload", registration_upload),
        ("wrapped_K", wrapped_key.as_bytes().to_vec()),
        ("KE3", credential_finalization),
        ("K", k.expose().to_vec()),
        ("password", b"hunter2 hunter2".to_vec()),
    ];
    for (where_, tap) in [
        ("client-chatd", &client_bytes),
        ("chatd-vault", &vault_bytes),
    ] {
        let seen = tap.lock().unwrap().clone();
        assert!(seen.len() > 1000, "the tap on {where_} saw traffic");
        for (name, needle) in &secrets {
            assert!(
                !testkit::contains_bytes(&seen, needle),
                "{name} visible on {where_}"
            );
        }
        // Not even the account id crosses the wire in the clear.
        assert!(
            !testkit::contains_bytes(&seen, b"carol"),
            "account id visible on {where_}"
        );
    }
    // And chatd's log never carries payload bytes.
    let log = s.chatd_proc.log();
    for (name, needle) in &secrets {
        assert!(
            !testkit::contains_bytes(log.as_bytes(), &hex::encode(needle).into_bytes()),
            "{name} in chatd log"
        );
    }
}

/// A raw WebSocket to chatd, for hostile inputs.
async fn raw_ws(
    addr: SocketAddr,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/connect"))
        .await
        .unwrap();
    ws
}

/// Reads until a close frame (or EOF) and returns its code.
async fn closed_with(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    within: Duration,
) -> Option<u16> {
    tokio::time::timeout(within, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return Some(u16::from(f.code)),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .unwrap_or(None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_their_close_code_and_a_healthy_client_carries_on() {
    let s = stack_with(
        ChatdOptions {
            extra_limits:
                "idle_timeout_secs = 3\nmax_tunnels_per_connection = 2\noutbound_queue = 8".into(),
            ..Default::default()
        },
        VaultOptions::default(),
    );
    let addr = s.chatd_proc.addr;
    let healthy_dev = device(4);
    let mut healthy = s.enrolled("dave", &healthy_dev).await;
    let k = RootKey::from_entropy([4; 30]);
    s.register(&mut healthy, "dave", b"pw", &k).await;
    // The healthy client keeps working, through everything below, on its own task.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (fleet_key, fleet_id) = (s.vault.fleet.tunnel_key, s.vault.fleet.fleet_id.clone());
    let healthy_task = tokio::spawn(async move {
        let mut t = healthy.open_tunnel(&fleet_key, &fleet_id).await.unwrap();
        let mut answered = 0u32;
        loop {
            let r = healthy
                .request(&mut t, &VaultRequest::Status)
                .await
                .expect("healthy client disturbed");
            assert_eq!(
                vault_flow::status_from(&r).unwrap().state,
                RecordState::Registered
            );
            answered += 1;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = &mut stop_rx => break,
            }
        }
        healthy.close_tunnel(t).await.unwrap();
        (healthy, answered)
    });

    // Text instead of binary.
    let mut ws = raw_ws(addr).await;
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        closed_with(&mut ws, Duration::from_secs(5)).await,
        Some(4000)
    );
    // Binary garbage as the handshake.
    let mut ws = raw_ws(addr).await;
    ws.send(Message::Binary(vec![1u8; 100].into()))
        .await
        .unwrap();
    assert_eq!(
        closed_with(&mut ws, Duration::from_secs(5)).await,
        Some(4001)
    );
    // An unknown protocol version.
    let mut ws = raw_ws(addr).await;
    ws.send(Message::Binary(vec![7u8; 100].into()))
        .await
        .unwrap();
    assert_eq!(
        closed_with(&mut ws, Duration::from_secs(5)).await,
        Some(4005)
    );
    // An oversized message.
    let mut ws = raw_ws(addr).await;
    ws.send(Message::Binary(vec![1u8; 70_000].into()))
        .await
        .ok();
    assert_eq!(
        closed_with(&mut ws, Duration::from_secs(5)).await,
        Some(4008)
    );
    // Connects and sends nothing: cut at the handshake deadline (5 s here).
    let mut ws = raw_ws(addr).await;
    assert_eq!(
        closed_with(&mut ws, Duration::from_secs(15)).await,
        Some(4006)
    );

    // After a good handshake: garbage, frames for tunnels never opened, and
    // reusing a tunnel id.
    let dev = device(5);
    let code = EnrolmentCode::new(s.chatd.invite("eve")).unwrap();
    let (mut ws, mut transport) = handshake_raw(&s, addr, "eve", &dev, Some(code)).await;
    ws.send(Message::Binary(vec![0xAB; 64].into()))
        .await
        .unwrap();
    assert_eq!(
        closed_with(&mut ws, Duration::from_secs(5)).await,
        Some(4000)
    );
    let (mut ws, mut transport2) = handshake_raw(&s, addr, "eve", &dev, None).await;
    let frame = ClientFrame::TunnelData {
        tunnel: TunnelId(99),
        payload: vec![1, 2, 3],
    };
    ws.send(Message::Binary(
        transport2.seal(&frame.encode()).unwrap().into(),
    ))
    .await
    .unwrap();
    assert_eq!(
        closed_with(&mut ws, Duration::from_secs(5)).await,
        Some(4000)
    );
    let (mut ws, mut transport3) = handshake_raw(&s, addr, "eve", &dev, None).await;
    for id in [5, 5] {
        let frame = ClientFrame::TunnelOpen {
            tunnel: TunnelId(id),
            handshake: vec![1; 40],
        };
        ws.send(Message::Binary(
            transport3.seal(&frame.encode()).unwrap().into(),
        ))
        .await
        .unwrap();
    }
    assert_eq!(
        closed_with(&mut ws, Duration::from_secs(10)).await,
        Some(4000)
    );
    // A client that stops reading and answering pings: cut at the idle deadline.
    let (mut ws, _t) = handshake_raw(&s, addr, "eve", &dev, None).await;
    let started = std::time::Instant::now();
    let code = tokio::time::timeout(Duration::from_secs(15), async {
        // Do not answer: read only to observe the close, after the deadline.
        tokio::time::sleep(Duration::from_secs(4)).await;
        closed_with(&mut ws, Duration::from_secs(10)).await
    })
    .await
    .unwrap();
    assert_eq!(code, Some(4010), "after {:?}", started.elapsed());
    let _ = &mut transport;

    // The healthy client never noticed.
    stop_tx.send(()).unwrap();
    let (mut healthy, answered) = healthy_task.await.unwrap();
    assert!(answered >= 10, "healthy client answered {answered} times");
    let (got, _) = s.login(&mut healthy, "dave", b"pw").await.unwrap();
    assert_eq!(got, k);
    let mut t = healthy
        .open_tunnel(&s.vault.fleet.tunnel_key, &s.vault.fleet.fleet_id)
        .await
        .unwrap();
    let st = vault_flow::status_from(
        &healthy
            .request(&mut t, &VaultRequest::Status)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(st.state, RecordState::Registered);
    // Per-connection tunnel cap: the third concurrent tunnel is refused.
    let _t2 = healthy
        .open_tunnel(&s.vault.fleet.tunnel_key, &s.vault.fleet.fleet_id)
        .await
        .unwrap();
    let e = healthy
        .open_tunnel(&s.vault.fleet.tunnel_key, &s.vault.fleet.fleet_id)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::TunnelClosed(TunnelCloseCode::TooManyTunnels)
        ),
        "{e}"
    );
}

/// Completes a Noise_IK handshake by hand and returns the socket and the
/// transport, for sending crafted frames afterwards.
async fn handshake_raw(
    s: &Stack,
    addr: SocketAddr,
    account: &str,
    dev: &StaticSecret,
    code: Option<EnrolmentCode>,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    protocol_spec::noise::Transport,
) {
    let mut ws = raw_ws(addr).await;
    let hello = ClientHello {
        account: AccountId::new(account).unwrap(),
        enrolment_code: code,
        client_software: "test".into(),
    };
    let (m1, waiting) = Initiator::client_chatd(dev, &s.chatd.static_key)
        .unwrap()
        .write_first(&hello.encode())
        .unwrap();
    ws.send(Message::Binary(m1.into())).await.unwrap();
    let m2 = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(b) => break b,
            Message::Close(f) => panic!("closed during handshake: {f:?}"),
            _ => continue,
        }
    };
    let (_, transport) = waiting.read_response(&m2).unwrap();
    (ws, transport)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_as_a_slow_consumer() {
    let s = stack_with(
        ChatdOptions {
            extra_limits: "slow_consumer_secs = 1\nmessages_per_sec = 100000.0\nmessage_burst = 100000.0\nmax_tunnels_per_connection = 1\noutbound_queue = 4".into(),
            ..Default::default()
        },
        VaultOptions::default(),
    );
    let dev = device(6);
    let code = EnrolmentCode::new(s.chatd.invite("frank")).unwrap();
    let (mut ws, mut transport) =
        handshake_raw(&s, s.chatd_proc.addr, "frank", &dev, Some(code)).await;
    // Every open beyond the cap is answered by chatd itself; never read them.
    let mut id = 1u32;
    let flood = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            id += 1;
            let f = ClientFrame::TunnelOpen {
                tunnel: TunnelId(id),
                handshake: vec![1; 40],
            };
            if ws
                .send(Message::Binary(transport.seal(&f.encode()).unwrap().into()))
                .await
                .is_err()
            {
                break;
            }
        }
    })
    .await;
    assert!(flood.is_ok(), "chatd never cut the connection");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, m) = s.chatd_proc.admin_get("/metrics");
        if testkit::metric(&m, "chatd_closes_total{code=\"slow_consumer\"}") >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no slow_consumer close recorded:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_4011_and_exits_within_the_deadline() {
    let mut s = stack_with(
        ChatdOptions {
            extra_limits: "drain_deadline_secs = 3".into(),
            ..Default::default()
        },
        VaultOptions::default(),
    );
    let dev = device(7);
    let mut c = s.enrolled("grace", &dev).await;
    let _t = c
        .open_tunnel(&s.vault.fleet.tunnel_key, &s.vault.fleet.fleet_id)
        .await
        .unwrap();
    s.chatd_proc.signal(15);
    // New upgrades are refused while draining.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.chatd_proc.admin_get("/readyz").0, 503);
    let e = Connection::connect(&s.endpoint("grace"), &dev, None)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    // The open connection gets 4011.
    let e = c
        .open_tunnel(&s.vault.fleet.tunnel_key, &s.vault.fleet.fleet_id)
        .await
        .unwrap_err();
    assert_eq!(close_code(&e), Some(CloseCode::Draining), "{e}");
    let st = s
        .chatd_proc
        .wait_exit(Duration::from_secs(15))
        .expect("chatd exits");
    assert!(st.success(), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_restart_gives_retryable_errors_then_recovery() {
    let port = testkit::free_port();
    let vault = VaultFixture::init(VaultOptions {
        link_port: port,
        ..VaultOptions::default()
    });
    let vault_proc = vault.spawn();
    let chatd = ChatdFixture::new(&vault, &[vault_proc.link_addr], ChatdOptions::default());
    let chatd_proc = chatd.spawn();
    let mut s = Stack {
        vault,
        vault_proc,
        chatd,
        chatd_proc,
    };
    let dev = device(8);
    let mut c = s.enrolled("heidi", &dev).await;
    let k = RootKey::from_entropy([8; 30]);
    s.register(&mut c, "heidi", b"pw", &k).await;
    let mut t = c
        .open_tunnel(&s.vault.fleet.tunnel_key, &s.vault.fleet.fleet_id)
        .await
        .unwrap();
    s.vault_proc.kill9();
    // The open tunnel closes with a retryable code, and new tunnels fail
    // fast with one too, while the connection to chatd stays up.
    let e = c.request(&mut t, &VaultRequest::Status).await.unwrap_err();
    assert!(e.retryable(), "{e}");
    assert!(
        matches!(
            e,
            ClientError::TunnelClosed(TunnelCloseCode::VaultUnavailable)
        ),
        "{e}"
    );
    let e = c
        .open_tunnel(&s.vault.fleet.tunnel_key, &s.vault.fleet.fleet_id)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::TunnelClosed(TunnelCloseCode::VaultUnavailable)
        ),
        "{e}"
    );
    // The vault comes back on the same port; chatd reconnects by itself.
    s.vault_proc = s.vault.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let got = loop {
        match s.login(&mut c, "heidi", b"pw").await {
            Ok((got, _)) => break got,
            Err(e) if e.retryable() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no recovery: {e}"),
        }
    };
    assert_eq!(got, k);
}

/// Many clients opening tunnels at once: chatd must hand the vault link
/// ids in increasing order (SPEC 5.3) even when opens race each other, or
/// the vault drops the whole link and every tunnel on it fails. The load
/// generator found this; here it is a test.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tunnel_opens_keep_link_ids_in_order() {
    let s = stack_with(
        ChatdOptions {
            extra_limits: "vault_ops_per_minute = 100000\nhandshakes_per_ip_per_sec = 1000.0\nhandshake_burst = 1000.0".into(),
            ..ChatdOptions::default()
        },
        VaultOptions::default(),
    );
    const CLIENTS: usize = 48;
    const CYCLES: usize = 40;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let name = format!("racer{i}");
        clients.push((
            name.clone(),
            s.enrolled(&name, &device(100 + i as u8)).await,
        ));
    }
    let (tunnel_key, fleet) = (s.vault.fleet.tunnel_key, s.vault.fleet.fleet_id.clone());
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(name, mut c)| {
            let fleet = fleet.clone();
            tokio::spawn(async move {
                for _ in 0..CYCLES {
                    let mut t = c
                        .open_tunnel(&tunnel_key, &fleet)
                        .await
                        .expect("tunnel opens");
                    let r = c
                        .request(&mut t, &VaultRequest::Status)
                        .await
                        .unwrap_or_else(|e| panic!("{name}: status through chatd failed: {e}"));
                    let st = vault_flow::status_from(&r).expect("a status answer");
                    assert_eq!(st.state, RecordState::None);
                    c.close_tunnel(t).await.expect("tunnel closes");
                }
                c.close().await;
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
    let log = s.vault_proc.log();
    assert!(
        !log.contains("tunnel id reused"),
        "vault saw ids out of order:\n{log}"
    );
    assert!(
        !s.chatd_proc.log().contains("retired"),
        "a vault link was retired"
    );
}

/// The account's budget may run out between a LoginStart and its
/// LoginFinish; the right password still logs in (its attempt is already
/// counted), while new tunnels are refused until the budget refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_right_login_finish_past_the_budget_still_logs_in() {
    // Registration takes 3 operations (open, start, finish), the login's
    // open and LoginStart 2 more: its LoginFinish is the 6th.
    let s = stack_with(
        ChatdOptions {
            extra_limits: "vault_ops_per_minute = 5".into(),
            ..ChatdOptions::default()
        },
        VaultOptions::default(),
    );
    let dev = device(7);
    let mut c = s.enrolled("budget", &dev).await;
    let k = RootKey::from_entropy([5; 30]);
    s.register(&mut c, "budget", b"right password", &k).await;
    let (got, _) = s
        .login(&mut c, "budget", b"right password")
        .await
        .expect("the LoginFinish past the budget is relayed");
    assert_eq!(got, k);
    // The budget is spent: the next tunnel is refused, retryably.
    let e = c
        .open_tunnel(&s.vault.fleet.tunnel_key, &s.vault.fleet.fleet_id)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::TunnelClosed(TunnelCloseCode::RateLimited)),
        "{e:?}"
    );
}

/// A device revoked while connected can do nothing more within a second,
/// on every chatd process that shares the directory (two here, on one
/// port), whichever process its connection reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_cut_within_a_second_by_every_chatd_sharing_the_directory() {
    let vault = VaultFixture::init(VaultOptions::default());
    let vault_proc = vault.spawn();
    let chatd = ChatdFixture::new(
        &vault,
        &[vault_proc.link_addr],
        ChatdOptions {
            port: testkit::free_port(),
            extra_listen: "reuse_port = true".into(),
            ..ChatdOptions::default()
        },
    );
    let procs = [chatd.spawn(), chatd.spawn()];
    let endpoint = Endpoint {
        url: procs[0].url(),
        chatd_key: chatd.static_key,
        account: AccountId::new("revokee").unwrap(),
    };
    let mut conns = Vec::new();
    for i in 0..6u8 {
        let code = EnrolmentCode::new(chatd.invite("revokee")).unwrap();
        let c = Connection::connect(&endpoint, &device(40 + i), Some(code))
            .await
            .unwrap();
        conns.push(c);
    }
    async fn status(
        c: &mut Connection,
        key: protocol_spec::keys::PublicKey,
        fleet: &protocol_spec::ids::FleetId,
    ) -> Result<protocol_spec::messages::vault::VaultResponse, ClientError> {
        let mut t = c.open_tunnel(&key, fleet).await?;
        let r = c.request(&mut t, &VaultRequest::Status).await?;
        c.close_tunnel(t).await?;
        Ok(r)
    }
    let (key, fleet) = (vault.fleet.tunnel_key, vault.fleet.fleet_id.clone());
    for c in &mut conns {
        status(c, key, &fleet)
            .await
            .expect("works before the revocation");
    }
    let out = chatd
        .command()
        .args(["accounts", "revoke", "revokee"])
        .output()
        .unwrap();
    assert!(out.status.success());
    tokio::time::sleep(Duration::from_secs(1)).await;
    for c in &mut conns {
        let e = status(c, key, &fleet)
            .await
            .expect_err("nothing after a revocation");
        assert_eq!(close_code(&e), Some(CloseCode::DeviceRevoked), "{e:?}");
    }
    for p in &procs {
        assert!(p.log().contains("revocation seen"), "{}", p.log());
    }
}

/// A chatd with no vault behind it: admission and enrolment never reach
/// the vault, and a test of them need not wait for one to start.
fn chatd_alone() -> ChatdFixture {
    let nowhere = SocketAddr::from(([127, 0, 0, 1], testkit::free_port()));
    ChatdFixture::with_keys(
        &device(0),
        &device(0).public_key(),
        &[nowhere],
        ChatdOptions::default(),
    )
}

fn endpoint_of(chatd: &ChatdFixture, p: &ChatdProcess, account: &AccountId) -> Endpoint {
    Endpoint {
        url: p.url(),
        chatd_key: chatd.static_key,
        account: account.clone(),
    }
}

/// chatd killed inside an enrolment (fail points of test builds,
/// `CHATD_FAILPOINT`), before the device has its answer. Before the commit
/// nothing is enrolled and the code is still unused; after it the device
/// is enrolled. Either way the device, retrying with the same code, gets
/// in, and the directory gives the device that used the code the answer it
/// missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_inside_an_enrolment_loses_neither_the_code_nor_the_enrolment() {
    use std::os::unix::process::ExitStatusExt;
    let chatd = chatd_alone();
    for (point, committed) in [("enrol-written", false), ("enrol-committed", true)] {
        let account = AccountId::new(format!("crash-{point}")).unwrap();
        let code = EnrolmentCode::new(chatd.invite(account.as_str())).unwrap();
        let dev = device(50);
        let mut p = chatd.spawn_with(&[("CHATD_FAILPOINT", point)]);
        let e = Connection::connect(&endpoint_of(&chatd, &p, &account), &dev, Some(code.clone()))
            .await
            .expect_err("chatd dies before it answers");
        assert_eq!(close_code(&e), None, "{point}: no answer at all: {e}");
        let st = p
            .wait_exit(Duration::from_secs(10))
            .expect("chatd aborts at the fail point");
        assert_eq!(st.signal(), Some(6), "{point}: SIGABRT: {st:?}");
        let dir = SqliteDirectory::open(&chatd.directory_path()).unwrap();
        let expected = if committed {
            DeviceStatus::Enrolled
        } else {
            DeviceStatus::Unknown
        };
        assert_eq!(
            dir.device_status(&account, &dev.public_key()).unwrap(),
            expected,
            "{point}"
        );

        let p = chatd.spawn();
        let c = Connection::connect(&endpoint_of(&chatd, &p, &account), &dev, Some(code.clone()))
            .await
            .unwrap_or_else(|e| panic!("{point}: the retry with the same code: {e}"));
        // An enrolled device is admitted before its code is looked at
        // (SPEC 4.3.1, rule 1): after the commit, the retry is told the
        // device was enrolled already.
        assert_eq!(c.hello.enrolled_now, !committed, "{point}");
        c.close().await;
        // A retry that does reach the code (one racing the lost attempt,
        // rule 3) is told the device is enrolled, not that the code is
        // used.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert_eq!(
            dir.enrol(&account, &dev.public_key(), &code, now).unwrap(),
            Enrolment::Enrolled,
            "{point}"
        );
        // For any other device the code is spent.
        let e = Connection::connect(&endpoint_of(&chatd, &p, &account), &device(51), Some(code))
            .await
            .unwrap_err();
        assert_eq!(
            close_code(&e),
            Some(CloseCode::EnrolmentRejected),
            "{point}: {e}"
        );
    }
}

/// Two attempts of one device with one code race on two chatd processes
/// sharing the directory (the device gave up on a slow attempt and tried
/// again): both find the device unknown, one enrols it, and the other,
/// finding the code used by this very device, admits it too instead of
/// refusing it for good with 4003.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_racing_itself_with_one_code_gets_in_both_times() {
    let chatd = chatd_alone();
    let procs = [chatd.spawn(), chatd.spawn()];
    let account = AccountId::new("racer").unwrap();
    let code = EnrolmentCode::new(chatd.invite("racer")).unwrap();
    let dev = device(60);
    // While the test holds the directory's write lock, each attempt looks
    // the device up (WAL readers do not wait) and then waits for the lock
    // inside its enrolment (for up to 5 s, chatd's busy timeout).
    let lock = rusqlite::Connection::open(chatd.directory_path()).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let attempts: Vec<_> = procs
        .iter()
        .map(|p| {
            let (ep, dev, code) = (endpoint_of(&chatd, p, &account), dev.clone(), code.clone());
            tokio::spawn(async move { Connection::connect(&ep, &dev, Some(code)).await })
        })
        .collect();
    // Time for both lookups. Too short a wait could only let a later
    // attempt find the device enrolled and pass without a race, never fail.
    tokio::time::sleep(Duration::from_millis(500)).await;
    lock.execute_batch("ROLLBACK").unwrap();
    for a in attempts {
        let c = a.await.unwrap().expect("both attempts get in");
        c.close().await;
    }
    let dir = SqliteDirectory::open(&chatd.directory_path()).unwrap();
    assert_eq!(dir.devices(&account).unwrap().len(), 1);
}

/// A misspelt fail point stops chatd at start-up, naming the real ones,
/// and is not mistaken for a configuration key.
#[test]
fn an_unknown_failpoint_is_refused_with_the_valid_names() {
    let chatd = chatd_alone();
    let out = chatd
        .command()
        .arg("serve")
        .env("CHATD_FAILPOINT", "enrol-comitted")
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("CHATD_FAILPOINT=\"enrol-comitted\" is not a failpoint")
            && e.contains("enrol-written, enrol-committed"),
        "{e}"
    );
}
