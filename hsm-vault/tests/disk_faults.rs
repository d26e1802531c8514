//! Disk faults (SPEC.md 5.5, "Disk faults"): a store whose fsync fails or
//! whose disk fills up, made so by the test hook `HSM_VAULT_TEST_DISK_FAULTS`
//! of test builds. The vault answers nothing from a write that failed (no
//! KE2 without a durable count), says why, stops with exit status 74, and
//! works again once the disk does, with nothing acknowledged lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use protocol_spec::messages::vault::{RecordState, VaultResponse};
use support::*;
use testkit::cluster::VaultCluster;
use testkit::link::LinkClient;
use testkit::vault::{VaultFixture, VaultOptions};

const DISK_FAULTS: &str = "HSM_VAULT_TEST_DISK_FAULTS";

fn set_fault(file: &Path, fault: &str) {
    std::fs::write(file, fault).unwrap();
}

#[test]
fn a_failing_disk_stops_the_vault_without_a_ke2_and_it_recovers_when_the_disk_does() {
    for (fault, says) in [
        ("fsync", "the store's fsync failed"),
        ("full", "No space left on device"),
    ] {
        let f = VaultFixture::init(VaultOptions::default());
        let faults = f.dir.join("disk-faults");
        set_fault(&faults, "");
        let env = [(DISK_FAULTS, faults.to_str().unwrap())];
        let a = account("disk");
        let mut p = f.spawn_with(&env);
        let mut l = link(&f, &p);
        register(&mut l, &f.fleet, &a, b"pw", &key(7));
        assert!(matches!(
            login_start_only(&mut l, &f.fleet, &a),
            Ok(VaultResponse::LoginStarted { .. })
        ));
        // The disk fails: the next counted attempt cannot be made durable,
        // so no KE2 comes back.
        set_fault(&faults, fault);
        let r = login_start_only(&mut l, &f.fleet, &a);
        assert!(
            !matches!(r, Ok(VaultResponse::LoginStarted { .. })),
            "{fault}: a KE2 without a durable count"
        );
        let exit = p
            .wait_exit(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("{fault}: the vault went on with a failed disk"));
        assert_eq!(exit.code(), Some(74), "{fault}: exit status");
        let log = p.log();
        assert!(
            log.contains(says),
            "{fault}: the log does not say why:\n{log}"
        );
        assert!(log.contains("start the vault again"), "{log}");
        // While the disk still fails it does not start, and says why.
        let out = f.command().arg("serve").envs(env).output().unwrap();
        assert!(!out.status.success(), "{fault}: started on a failed disk");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("store"), "{fault}: {err}");
        // The disk works again: everything acknowledged is there, the
        // failed attempt is counted or not (never given back as a KE2),
        // and the right password still releases the key.
        set_fault(&faults, "");
        let p = f.spawn_with(&env);
        let mut l = link(&f, &p);
        let st = status(&mut l, &f.fleet, &a);
        assert_eq!(st.state, RecordState::Registered, "{fault}");
        assert!(
            st.attempts_remaining <= 4,
            "{fault}: a spent attempt came back: {st:?}"
        );
        assert_eq!(login(&mut l, &f.fleet, &a, b"pw").unwrap(), key(7));
        assert_eq!(p.admin_get("/readyz").0, 200);
    }
}

/// In a group: the leader's disk fills up while logins run. It stops (74),
/// the others carry on without it, no account gets a KE2 beyond its limit,
/// and once its disk works it rejoins and catches up. Then a follower's
/// fsync fails: the group does not notice beyond losing that replica.
#[test]
fn a_replica_whose_disk_fails_stops_and_its_group_carries_on() {
    const MAX: u32 = 10;
    let mut c = VaultCluster::new(
        3,
        VaultOptions {
            max_attempts: MAX,
            ..VaultOptions::default()
        },
    );
    let faults: Vec<_> = (0..3)
        .map(|i| c.replicas[i].dir.join("disk-faults"))
        .collect();
    for (i, file) in faults.iter().enumerate() {
        set_fault(file, "");
        c.start_with(i, &[(DISK_FAULTS, file.to_str().unwrap())]);
    }
    c.form();
    let leader = c.wait_serving(Duration::from_secs(20));
    let a = account("group-disk");
    register(
        &mut LinkClient::connect(
            c.replicas[leader].link_addr,
            &c.chatd_key,
            &c.fleet.link_key,
        )
        .unwrap(),
        &c.fleet,
        &a,
        b"pw",
        &key(8),
    );
    let attempt = |c: &VaultCluster| -> Option<VaultResponse> {
        let l = c.leader()?;
        let mut link =
            LinkClient::connect(c.replicas[l].link_addr, &c.chatd_key, &c.fleet.link_key).ok()?;
        login_start_only(&mut link, &c.fleet, &a).ok()
    };
    let mut ke2 = 0u32;
    for (victim, fault) in [(leader, "full"), ((leader + 1) % 3, "fsync")] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(attempt(&c), Some(VaultResponse::LoginStarted { .. })) {
            assert!(Instant::now() < deadline, "no working leader");
            std::thread::sleep(Duration::from_millis(200));
        }
        ke2 += 1;
        set_fault(&faults[victim], fault);
        // Attempts go on (through whoever leads) until the victim stops.
        let deadline = Instant::now() + Duration::from_secs(30);
        let exit = loop {
            if let Some(st) = c.wait_exit(victim, Duration::from_millis(50)) {
                break st;
            }
            if let Some(VaultResponse::LoginStarted { .. }) = attempt(&c) {
                ke2 += 1;
            }
            assert!(
                Instant::now() < deadline,
                "replica {} went on with a failed disk",
                victim + 1
            );
        };
        assert!(ke2 < MAX, "the test spent every attempt before its end");
        assert_eq!(exit.code(), Some(74), "replica {}", victim + 1);
        let log = c.reap(victim);
        assert!(log.contains("failed"), "{log}");
        // The others carry on: a counted attempt commits without it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(VaultResponse::LoginStarted { .. }) = attempt(&c) {
                ke2 += 1;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the group stopped with one replica"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The disk works again: the replica starts and catches up.
        set_fault(&faults[victim], "");
        c.start_with(victim, &[(DISK_FAULTS, faults[victim].to_str().unwrap())]);
        c.wait_caught_up(&[victim], Duration::from_secs(30));
    }
    // Guess on until the record locks: never more KE2s than the limit.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match attempt(&c) {
            Some(VaultResponse::LoginStarted { .. }) => ke2 += 1,
            Some(VaultResponse::Locked) => break,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
        assert!(ke2 <= MAX, "{ke2} KE2s: an attempt came back");
        assert!(Instant::now() < deadline, "never locked ({ke2} KE2s)");
    }
    assert!(ke2 <= MAX);
}
