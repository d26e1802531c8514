//! The real `hsm-vault` binary with real SoftHSM, on loopback: flows,
//! attempt limits, crashes, hostile links, secrets at rest, start-up errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backup_client::vault_flow::FlowError;
use protocol_spec::codes::{TunnelCloseCode, VaultErrorCode};
use protocol_spec::ids::LinkTunnelId;
use protocol_spec::keys::StaticSecret;
use protocol_spec::messages::link::LinkFrame;
use protocol_spec::messages::vault::{RecordState, RegistrationMode, VaultRequest, VaultResponse};
use support::*;
use testkit::link::{LinkClient, TunnelError};
use testkit::vault::{VaultFixture, VaultOptions};

#[test]
fn register_login_and_key_release() {
    let f = VaultFixture::init(VaultOptions::default());
    let p = f.spawn();
    let mut l = link(&f, &p);
    assert!(l.welcome.leader);
    let a = account("+15550000001");
    let k = key(1);
    assert_eq!(status(&mut l, &f.fleet, &a).state, RecordState::None);
    register(&mut l, &f.fleet, &a, b"correct horse battery", &k);
    let st = status(&mut l, &f.fleet, &a);
    assert_eq!(
        (st.state, st.attempts_remaining, st.max_attempts),
        (RecordState::Registered, 5, 5)
    );
    let t = tunnel(&mut l, &f.fleet, &a);
    assert_eq!(t.hello.fleet_id, f.fleet.fleet_id);
    assert_eq!(t.hello.max_attempts, 5);
    l.close_tunnel(t).unwrap();
    assert_eq!(
        login(&mut l, &f.fleet, &a, b"correct horse battery").unwrap(),
        k
    );
    // Admin endpoints.
    assert_eq!(p.admin_get("/livez").0, 200);
    assert_eq!(p.admin_get("/readyz").0, 200);
    let (code, metrics) = p.admin_get("/metrics");
    assert_eq!(code, 200);
    assert!(
        testkit::metric(&metrics, "vault_logins_total{result=\"succeeded\"}") >= 1.0,
        "{metrics}"
    );
    assert!(testkit::metric(&metrics, "vault_registrations_total{mode=\"create\"}") >= 1.0);
    assert!(
        metrics.contains("vault_hsm_call_seconds"),
        "HSM latency histogram missing"
    );
}

#[test]
fn exactly_max_attempts_then_erased_and_success_resets() {
    let f = VaultFixture::init(VaultOptions::default());
    let p = f.spawn();
    let mut l = link(&f, &p);
    let a = account("alice");
    let k = key(2);
    register(&mut l, &f.fleet, &a, b"right", &k);
    // Success resets the count.
    for _ in 0..4 {
        assert!(matches!(
            login(&mut l, &f.fleet, &a, b"wrong"),
            Err(FlowError::WrongPassword { .. })
        ));
    }
    assert_eq!(status(&mut l, &f.fleet, &a).attempts_remaining, 1);
    assert_eq!(login(&mut l, &f.fleet, &a, b"right").unwrap(), k);
    assert_eq!(status(&mut l, &f.fleet, &a).attempts_remaining, 5);
    // Exactly max_attempts failures, then erased.
    for i in 1..=5u32 {
        match login(&mut l, &f.fleet, &a, b"wrong") {
            Err(FlowError::WrongPassword { attempts_remaining }) => {
                assert_eq!(attempts_remaining, 5 - i)
            }
            Err(FlowError::Locked) => assert_eq!(i, 5),
            other => panic!("attempt {i}: {other:?}"),
        }
    }
    let st = status(&mut l, &f.fleet, &a);
    assert_eq!((st.state, st.attempts_remaining), (RecordState::Locked, 0));
    assert_eq!(
        login(&mut l, &f.fleet, &a, b"right").unwrap_err(),
        FlowError::Locked
    );
    let (_, metrics) = p.admin_get("/metrics");
    assert!(testkit::metric(&metrics, "vault_lockouts_total") >= 1.0);
}

#[test]
fn concurrent_wrong_attempts_from_many_tunnels_never_exceed_the_limit() {
    let f = Arc::new(VaultFixture::init(VaultOptions::default()));
    let p = f.spawn();
    let a = account("target");
    let mut l = link(&f, &p);
    register(&mut l, &f.fleet, &a, b"pw", &key(3));
    let ke2 = Arc::new(AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..6 {
            let (f, a, ke2, addr) = (f.clone(), a.clone(), ke2.clone(), p.link_addr);
            s.spawn(move || {
                let mut l = LinkClient::connect(addr, &f.chatd_key, &f.fleet.link_key).unwrap();
                for _ in 0..6 {
                    if let Ok(VaultResponse::LoginStarted { .. }) =
                        login_start_only(&mut l, &f.fleet, &a)
                    {
                        ke2.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(
        ke2.load(Ordering::SeqCst),
        5,
        "KE2 answers must equal max_attempts"
    );
    assert_eq!(status(&mut l, &f.fleet, &a).state, RecordState::Locked);
}

#[test]
fn kill9_between_increment_and_reply_keeps_the_attempt() {
    let f = VaultFixture::init(VaultOptions::default());
    let a = account("bob");
    {
        let p = f.spawn();
        let mut l = link(&f, &p);
        register(&mut l, &f.fleet, &a, b"pw", &key(4));
    }
    for i in 1..=2u32 {
        // This process aborts right after the increment is durable.
        let p = f.spawn_with(&[("HSM_VAULT_FAILPOINT", "attempt-committed")]);
        let mut l = link(&f, &p);
        let r = login_start_only(&mut l, &f.fleet, &a);
        assert!(
            matches!(r, Err(TunnelError::Link(_))),
            "no KE2 may come back: {r:?}"
        );
        let mut p = p;
        assert!(
            p.wait_exit(Duration::from_secs(10)).is_some(),
            "vault should have aborted"
        );
        let p = f.spawn();
        let mut l = link(&f, &p);
        assert_eq!(
            status(&mut l, &f.fleet, &a).attempts_remaining,
            5 - i,
            "the attempt stays counted"
        );
    }
    // The right password still works and resets.
    let p = f.spawn();
    let mut l = link(&f, &p);
    assert_eq!(login(&mut l, &f.fleet, &a, b"pw").unwrap(), key(4));
    assert_eq!(status(&mut l, &f.fleet, &a).attempts_remaining, 5);
}

#[test]
fn random_kill9_never_returns_a_spent_attempt() {
    let f = VaultFixture::init(VaultOptions {
        max_attempts: 1000,
        ..VaultOptions::default()
    });
    let a = account("carol");
    {
        let p = f.spawn();
        let mut l = link(&f, &p);
        register(&mut l, &f.fleet, &a, b"pw", &key(5));
    }
    let mut ke2_total = 0u32;
    // Bounded: a few rounds of logins cut short by kill -9 at varying times.
    for round in 0..4u64 {
        let mut p = f.spawn();
        let addr = p.link_addr;
        let (fleet, chatd) = (f.fleet.clone(), f.chatd_key.clone());
        let a2 = a.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let worker = std::thread::spawn(move || {
            let mut n = 0u32;
            let Ok(mut l) = LinkClient::connect(addr, &chatd, &fleet.link_key) else {
                return 0;
            };
            while !stop2.load(Ordering::SeqCst) {
                match login_start_only(&mut l, &fleet, &a2) {
                    Ok(VaultResponse::LoginStarted { .. }) => n += 1,
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(_) => break,
                }
            }
            n
        });
        std::thread::sleep(Duration::from_millis(150 + 97 * round));
        p.kill9();
        stop.store(true, Ordering::SeqCst);
        ke2_total += worker.join().unwrap();
    }
    let p = f.spawn();
    let mut l = link(&f, &p);
    let used = 1000 - status(&mut l, &f.fleet, &a).attempts_remaining;
    assert!(ke2_total > 0, "the test must have produced KE2 answers");
    assert!(
        used >= ke2_total,
        "{ke2_total} KE2 answers but only {used} attempts counted"
    );
}

#[test]
fn no_secret_reaches_the_store_the_logs_or_the_secrets_file_in_plaintext() {
    let f = VaultFixture::init(VaultOptions::default());
    let p = f.spawn();
    let mut l = link(&f, &p);
    let a = account("dave");
    let finish = register(&mut l, &f.fleet, &a, b"pw", &key(6));
    login(&mut l, &f.fleet, &a, b"pw").unwrap();
    let _ = login(&mut l, &f.fleet, &a, b"wrong");
    let VaultRequest::RegisterFinish {
        registration_upload,
        wrapped_key,
    } = finish
    else {
        panic!()
    };
    drop(l);
    let log = p.log();
    drop(p);
    // The fleet secrets, unsealed through the same token.
    f.hsm.activate();
    let hcfg = hsm_vault::config::HsmConfig {
        module: testkit::softhsm::module_path(),
        token_label: f.token.label.clone(),
        ..Default::default()
    };
    let hsm = hsm_vault::hsm::Hsm::open(&hcfg, &f.token.pin).unwrap();
    let secrets = hsm_vault::secrets::FleetSecrets::unseal_from_file(
        &hsm,
        &f.data_dir().join("fleet.sealed"),
    )
    .unwrap();
    let setup = secrets.opaque_setup.serialize().to_vec();
    let mut needles = testkit::secrets::SecretNeedles::new();
    needles
        .binary("opaque record", &registration_upload)
        .binary("opaque record masking key", &registration_upload[32..96])
        .binary("opaque envelope", &registration_upload[96..])
        .binary("wrapped_K", wrapped_key.as_bytes())
        .binary("wrapped_K ciphertext", &wrapped_key.as_bytes()[13..45])
        .binary("oprf seed", &setup[..64])
        .binary("opaque server setup", &setup)
        .binary("fleet tunnel key", secrets.tunnel_key.expose_secret())
        .binary("link key", secrets.link_key.expose_secret())
        .binary("peer key", secrets.peer_key.expose_secret());
    let mut files = vec![
        f.data_dir().join("vault.redb"),
        f.data_dir().join("fleet.sealed"),
    ];
    for entry in std::fs::read_dir(&f.dir).unwrap() {
        files.push(entry.unwrap().path());
    }
    for file in files.iter().filter(|p| p.is_file()) {
        needles.assert_absent(&std::fs::read(file).unwrap(), &file.display().to_string());
    }
    needles.assert_absent(log.as_bytes(), "the log");
    assert!(!log.is_empty());
}

#[test]
fn tampered_and_swapped_records_are_refused_and_reported() {
    let f = VaultFixture::init(VaultOptions::default());
    let (a, b) = (account("erin"), account("frank"));
    {
        let p = f.spawn();
        let mut l = link(&f, &p);
        register(&mut l, &f.fleet, &a, b"pw-a", &key(7));
        register(&mut l, &f.fleet, &b, b"pw-b", &key(8));
    }
    // The attacker edits storage while the vault is down: a's row gets b's
    // sealed record (a valid seal, for another account).
    {
        let store =
            hsm_vault::state::store::RecordStore::open(&f.data_dir().join("vault.redb")).unwrap();
        let rb = store.get(&b).unwrap().unwrap();
        store.overwrite_raw(a.as_str(), &rb).unwrap();
    }
    let p = f.spawn();
    let mut l = link(&f, &p);
    let mut t = tunnel(&mut l, &f.fleet, &a);
    assert_eq!(
        l.request(&mut t, &VaultRequest::Status).unwrap(),
        VaultResponse::Error(VaultErrorCode::IntegrityFailure)
    );
    assert_eq!(
        login(&mut l, &f.fleet, &a, b"pw-b").unwrap_err(),
        FlowError::Vault(VaultErrorCode::IntegrityFailure)
    );
    // b is untouched and still works.
    assert_eq!(login(&mut l, &f.fleet, &b, b"pw-b").unwrap(), key(8));
    let (_, metrics) = p.admin_get("/metrics");
    assert!(testkit::metric(&metrics, "vault_record_integrity_failures_total") >= 2.0);
    assert!(
        p.log().contains("integrity check failed"),
        "refusal must be logged"
    );
    drop(l);
    drop(p);
    // One flipped byte in b's sealed record.
    {
        let store =
            hsm_vault::state::store::RecordStore::open(&f.data_dir().join("vault.redb")).unwrap();
        let mut rb = store.get(&b).unwrap().unwrap();
        let n = rb.sealed.len();
        rb.sealed[n - 20] ^= 0x01;
        store.overwrite_raw(b.as_str(), &rb).unwrap();
    }
    let p = f.spawn();
    let mut l = link(&f, &p);
    assert_eq!(
        login(&mut l, &f.fleet, &b, b"pw-b").unwrap_err(),
        FlowError::Vault(VaultErrorCode::IntegrityFailure)
    );
}

#[test]
fn start_up_errors_are_one_clear_message() {
    let f = VaultFixture::init(VaultOptions::default());
    let run = |envs: &[(&str, &str)]| {
        let mut c = f.command();
        c.arg("serve");
        for (k, v) in envs {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        // Logs may precede it, but the failure itself is one line.
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("hsm-vault: "))
            .collect();
        assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
        errors[0].to_owned()
    };
    let wrong_pin = f.dir.join("wrong-pin");
    testkit::write_private(&wrong_pin, b"0000");
    let e = run(&[("HSM_VAULT_HSM__PIN_FILE", wrong_pin.to_str().unwrap())]);
    assert!(e.contains("PIN") && e.contains("wrong"), "{e}");
    // A PIN file other users can read is refused before it is used.
    let open_pin = f.dir.join("open-pin");
    std::fs::copy(f.dir.join("pin"), &open_pin).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open_pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let e = run(&[("HSM_VAULT_HSM__PIN_FILE", open_pin.to_str().unwrap())]);
    assert!(
        e.contains("open to other users (mode 0644)") && e.contains("chmod 600"),
        "{e}"
    );
    let e = run(&[("HSM_VAULT_HSM__TOKEN_LABEL", "no-such-token")]);
    assert!(
        e.contains("no initialised token labelled \"no-such-token\""),
        "{e}"
    );
    let e = run(&[("HSM_VAULT_HSM__MODULE", "/nonexistent/libpkcs11.so")]);
    assert!(e.contains("/nonexistent/libpkcs11.so"), "{e}");
    let e = run(&[("HSM_VAULT_HSM__KEY_LABEL", "other-key")]);
    assert!(e.contains("no master key labelled \"other-key\""), "{e}");
    // max_attempts is the fleet's, sealed at init (5 here): a replica whose
    // configuration says otherwise refuses to start, whichever way.
    for other in ["1000", "1"] {
        let e = run(&[("HSM_VAULT_MAX_ATTEMPTS", other)]);
        assert!(
            e.contains(&format!("max_attempts = {other}"))
                && e.contains("initialised with 5")
                && e.contains("remove max_attempts"),
            "{e}"
        );
    }
    // A production setting refuses the software token this test runs on.
    let e = run(&[("HSM_VAULT_HSM__REQUIRE_HARDWARE", "true")]);
    assert!(
        e.contains("SoftHSM token") && e.contains("hsm.require_hardware"),
        "{e}"
    );
    // A misspelt failpoint is refused, not silently ignored (a build
    // without the `failpoints` feature refuses any value).
    let e = run(&[("HSM_VAULT_FAILPOINT", "attempt-comitted")]);
    assert!(e.contains("\"attempt-comitted\" is not a failpoint"), "{e}");
    // A store served standalone cannot be served as a Raft member (its
    // records were never in the replicated log), nor the reverse.
    let mut standalone = f.spawn();
    standalone.kill9();
    let e = run(&[
        ("HSM_VAULT_RAFT__NODE_ID", "1"),
        ("HSM_VAULT_RAFT__LISTEN", "127.0.0.1:0"),
    ]);
    assert!(
        e.contains("served as standalone") && e.contains("cannot change mode"),
        "{e}"
    );
    // Unreadable store.
    std::fs::write(f.data_dir().join("vault.redb"), b"garbage garbage garbage").unwrap();
    let e = run(&[]);
    assert!(e.contains("vault.redb"), "{e}");
    std::fs::remove_file(f.data_dir().join("vault.redb")).unwrap();
    // Missing fleet secrets.
    std::fs::rename(f.data_dir().join("fleet.sealed"), f.dir.join("moved")).unwrap();
    let e = run(&[]);
    assert!(
        e.contains("fleet.sealed") && e.contains("hsm-vault init"),
        "{e}"
    );
}

#[test]
fn hostile_links_and_tunnels_get_their_documented_answer_and_others_carry_on() {
    let f = VaultFixture::init(VaultOptions::default());
    let p = f.spawn();
    let a = account("grace");
    let mut good = link(&f, &p);
    register(&mut good, &f.fleet, &a, b"pw", &key(9));

    // Garbage instead of a handshake: dropped.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(p.link_addr).unwrap();
        s.write_all(&[0, 0, 0, 5, 1, 2, 3, 4, 5]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            s.read(&mut buf).unwrap_or(0),
            0,
            "garbage handshake must be dropped"
        );
    }
    // A chatd key the vault does not accept.
    let stranger = StaticSecret::from_bytes([0x42; 32]);
    assert!(LinkClient::connect(p.link_addr, &stranger, &f.fleet.link_key).is_err());

    let mut l = link(&f, &p);
    // Tunnel handshake garbage, unknown version, and a chatd lying about the account.
    let id = l.next_tunnel_id();
    l.send(&LinkFrame::Open {
        tunnel: id,
        account: a.clone(),
        handshake: vec![1; 60],
    })
    .unwrap();
    assert!(matches!(
        l.next_for(id).unwrap(),
        protocol_spec::messages::link::VaultLinkFrame::Close {
            code: TunnelCloseCode::HandshakeFailed,
            ..
        }
    ));
    let id = l.next_tunnel_id();
    l.send(&LinkFrame::Open {
        tunnel: id,
        account: a.clone(),
        handshake: vec![9; 60],
    })
    .unwrap();
    assert!(matches!(
        l.next_for(id).unwrap(),
        protocol_spec::messages::link::VaultLinkFrame::Close {
            code: TunnelCloseCode::UnsupportedVersion,
            ..
        }
    ));
    let lie = l.open_tunnel_as(&a, &account("mallory"), &f.fleet.tunnel_key);
    assert!(
        matches!(
            lie,
            Err(TunnelError::Closed(TunnelCloseCode::HandshakeFailed))
        ),
        "{lie:?}"
    );
    // Garbage inside an open tunnel: protocol error, tunnel closed.
    let t = tunnel(&mut l, &f.fleet, &a);
    let r = l.send_tunnel_bytes(&t, vec![0xAB; 100]).unwrap();
    assert!(matches!(
        r,
        protocol_spec::messages::link::VaultLinkFrame::Close {
            code: TunnelCloseCode::ProtocolError,
            ..
        }
    ));
    // Data for a tunnel that does not exist: ignored, the link lives on.
    l.send(&LinkFrame::Data {
        tunnel: LinkTunnelId(9_999),
        payload: vec![1],
    })
    .unwrap();
    assert_eq!(status(&mut l, &f.fleet, &a).state, RecordState::Registered);
    // A reused tunnel id ends the link.
    l.send(&LinkFrame::Open {
        tunnel: LinkTunnelId(1),
        account: a.clone(),
        handshake: vec![1; 10],
    })
    .unwrap();
    assert!(
        l.next_for(LinkTunnelId(1)).is_err(),
        "the link must be closed"
    );
    // An oversized record ends the link too.
    let mut l2 = link(&f, &p);
    l2.send_raw_record(&vec![0u8; 100_000]).unwrap();
    assert!(l2.next_for(LinkTunnelId(1)).is_err());

    // None of it affected the healthy link.
    assert_eq!(login(&mut good, &f.fleet, &a, b"pw").unwrap(), key(9));
}

#[test]
fn login_state_expires_and_a_last_attempt_then_erases() {
    let f = VaultFixture::init(VaultOptions {
        max_attempts: 1,
        login_timeout_secs: 1,
        ..VaultOptions::default()
    });
    let p = f.spawn();
    let mut l = link(&f, &p);
    let a = account("heidi");
    register(&mut l, &f.fleet, &a, b"pw", &key(10));
    let mut t = tunnel(&mut l, &f.fleet, &a);
    let pw = protocol_spec::password::Password::prepare("pw").unwrap();
    let (_flow, start) = backup_client::vault_flow::PasswordLogin::start(&pw).unwrap();
    assert!(matches!(
        l.request(&mut t, &start).unwrap(),
        VaultResponse::LoginStarted {
            attempts_remaining: 0,
            ..
        }
    ));
    // Leave the last attempt pending past its deadline; the vault's timer
    // expires it and erases the record without any further request.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let (_, m) = p.admin_get("/metrics");
        if testkit::metric(&m, "vault_lockouts_total") >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pending login never expired"
        );
    }
    assert_eq!(
        l.request(
            &mut t,
            &VaultRequest::LoginFinish {
                credential_finalization: vec![0; 64]
            }
        )
        .unwrap(),
        VaultResponse::Error(VaultErrorCode::LoginExpired),
        "a finish after the timer expired the login says so (SPEC.md 8.2)"
    );
    assert_eq!(status(&mut l, &f.fleet, &a).state, RecordState::Locked);
}

#[test]
fn change_password_replace_and_delete_through_the_binary() {
    let f = VaultFixture::init(VaultOptions::default());
    let p = f.spawn();
    let mut l = link(&f, &p);
    let a = account("ivan");
    let k = key(11);
    register(&mut l, &f.fleet, &a, b"old", &k);
    let created = status(&mut l, &f.fleet, &a).escrow.unwrap();
    assert_eq!(created.kind, Some(RegistrationMode::Create));
    let mut t = tunnel(&mut l, &f.fleet, &a);
    let got = login_in(&mut l, &mut t, &f.fleet, b"old").unwrap();
    let (_, r) = register_in(
        &mut l,
        &mut t,
        &f.fleet,
        b"new",
        &got,
        RegistrationMode::ChangePassword,
    );
    // Every registration is a new escrow epoch, with its kind, and Status
    // names the one Registered did (SPEC 8.7).
    let changed = r.unwrap().escrow.unwrap();
    assert_eq!(changed.kind, Some(RegistrationMode::ChangePassword));
    assert_ne!(changed.epoch, created.epoch);
    assert!(changed.registered_at_unix_secs >= created.registered_at_unix_secs);
    assert_eq!(login(&mut l, &f.fleet, &a, b"new").unwrap(), k);
    assert_eq!(status(&mut l, &f.fleet, &a).escrow, Some(changed));
    // Forgotten password.
    let mut t = tunnel(&mut l, &f.fleet, &a);
    let (_, r) = register_in(
        &mut l,
        &mut t,
        &f.fleet,
        b"fresh",
        &key(12),
        RegistrationMode::Replace,
    );
    let replaced = r.unwrap().escrow.unwrap();
    assert_eq!(replaced.kind, Some(RegistrationMode::Replace));
    assert_ne!(replaced.epoch, changed.epoch);
    assert_eq!(status(&mut l, &f.fleet, &a).escrow, Some(replaced));
    assert!(matches!(
        login(&mut l, &f.fleet, &a, b"new"),
        Err(FlowError::WrongPassword { .. })
    ));
    // Delete.
    let mut t = tunnel(&mut l, &f.fleet, &a);
    login_in(&mut l, &mut t, &f.fleet, b"fresh").unwrap();
    assert_eq!(
        l.request(&mut t, &VaultRequest::Delete).unwrap(),
        VaultResponse::Deleted
    );
    assert_eq!(status(&mut l, &f.fleet, &a).state, RecordState::None);
}

#[test]
fn sigterm_drains_open_tunnels_and_exits() {
    let f = VaultFixture::init(VaultOptions::default());
    let mut p = f.spawn();
    let mut l = link(&f, &p);
    let a = account("judy");
    let t = tunnel(&mut l, &f.fleet, &a);
    p.signal(15);
    match l.next_for(t.id) {
        Ok(protocol_spec::messages::link::VaultLinkFrame::Close { code, .. }) => {
            assert_eq!(code, TunnelCloseCode::Draining)
        }
        other => panic!("expected a draining close, got {other:?}"),
    }
    let st = p
        .wait_exit(Duration::from_secs(15))
        .expect("exits after draining");
    assert!(st.success(), "{st:?}");
}

#[test]
fn keys_show_prints_what_init_printed() {
    let f = VaultFixture::init(VaultOptions::default());
    let out = f
        .command()
        .args(["keys", "show", "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["tunnel_key"].as_str().unwrap(),
        f.fleet.tunnel_key.to_hex()
    );
    assert_eq!(v["link_key"].as_str().unwrap(), f.fleet.link_key.to_hex());
    // A second init refuses instead of replacing the fleet.
    let out = f
        .command()
        .args(["init", "--fleet-id", "again"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

/// Connections that never complete their handshake hold no link slot: 64
/// of them (from several addresses, as a scan would come) while chatd
/// connects do not keep chatd out, and they are dropped after a short
/// pre-authentication deadline.
#[test]
fn silent_connections_to_the_link_port_do_not_keep_chatd_out() {
    let f = VaultFixture::init(VaultOptions::default());
    let p = f.spawn();
    let mut silent = Vec::new();
    for i in 0..64u8 {
        let source = std::net::SocketAddr::from(([127, 0, 0, 2 + i % 8], 0));
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&source.into()).unwrap();
        s.connect(&p.link_addr.into()).unwrap();
        silent.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let a = account("after-silence");
    let mut l = link(&f, &p);
    assert!(l.welcome.leader);
    register(&mut l, &f.fleet, &a, b"pw", &key(9));
    assert_eq!(status(&mut l, &f.fleet, &a).state, RecordState::Registered);
    // The silent ones were cut at the pre-authentication deadline (5 s).
    std::thread::sleep(Duration::from_secs(6));
    let mut buf = [0u8; 1];
    let mut closed = 0;
    for s in &silent {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut r: &socket2::Socket = s;
        match std::io::Read::read(&mut r, &mut buf) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => closed += 1,
            _ => {}
        }
    }
    assert_eq!(closed, silent.len());
}

/// Per-account limits live at the vault, where every chatd's traffic
/// meets: two links (two chatd processes) together get one budget of login
/// starts, and a start refused for it spends no attempt.
#[test]
fn two_front_ends_together_get_one_budget_of_login_starts() {
    let f = VaultFixture::init(VaultOptions {
        max_attempts: 50,
        login_starts_per_minute: 4,
        ..VaultOptions::default()
    });
    let p = f.spawn();
    let a = account("budgeted");
    let mut one = link(&f, &p);
    let mut two = link(&f, &p);
    register(&mut one, &f.fleet, &a, b"pw", &key(2));
    let mut started = 0;
    let mut limited = 0;
    for i in 0..8 {
        let l = if i % 2 == 0 { &mut one } else { &mut two };
        match login_start_only(l, &f.fleet, &a).unwrap() {
            VaultResponse::LoginStarted { .. } => started += 1,
            VaultResponse::Error(VaultErrorCode::RateLimited) => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((started, limited), (4, 4));
    // Only the four that started were counted.
    assert_eq!(status(&mut two, &f.fleet, &a).attempts_remaining, 46);
}
