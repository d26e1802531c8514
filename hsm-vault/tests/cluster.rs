//! Real `hsm-vault` replicas in a Raft group on loopback, with Raft traffic
//! through fault proxies: failover, followers that redirect, catch-up after
//! downtime and snapshots, majority loss, partitions, whole-group restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use backup_client::vault_flow::FlowError;
use hsm_vault::control::protocol::{ControlRequest, SelfInfo};
use protocol_spec::codes::TunnelCloseCode;
use protocol_spec::messages::vault::{RecordState, VaultRequest, VaultResponse};
use support::*;
use testkit::cluster::VaultCluster;
use testkit::link::{LinkClient, TunnelError};
use testkit::vault::VaultOptions;

fn connect(c: &VaultCluster, i: usize) -> LinkClient {
    LinkClient::connect(c.replicas[i].link_addr, &c.chatd_key, &c.fleet.link_key).expect("link")
}

fn three() -> VaultCluster {
    let mut c = VaultCluster::new(3, VaultOptions::default());
    c.start_all();
    c.form();
    c
}

/// Retries `f` on the current leader until it works (elections take a moment).
fn on_leader<T>(c: &VaultCluster, mut f: impl FnMut(&mut LinkClient) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = c.leader() {
            if let Ok(mut link) =
                LinkClient::connect(c.replicas[l].link_addr, &c.chatd_key, &c.fleet.link_key)
            {
                if link.welcome.leader {
                    if let Some(v) = f(&mut link) {
                        return v;
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "no working leader");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn try_status(
    l: &mut LinkClient,
    c: &VaultCluster,
    a: &protocol_spec::ids::AccountId,
) -> Option<protocol_spec::messages::vault::StatusReport> {
    let mut t = l.open_tunnel(a, &c.fleet.tunnel_key).ok()?;
    let r = l.request(&mut t, &VaultRequest::Status).ok()?;
    let _ = l.close_tunnel(t);
    backup_client::vault_flow::status_from(&r).ok()
}

/// Registers `a` through `leader` (password "pw"), makes two wrong
/// logins, and returns the attempts left.
fn register_and_guess_wrong_twice(
    c: &VaultCluster,
    leader: usize,
    a: &protocol_spec::ids::AccountId,
    k: &protocol_spec::root_key::RootKey,
) -> u32 {
    let mut l = connect(c, leader);
    register(&mut l, &c.fleet, a, b"pw", k);
    for _ in 0..2 {
        assert!(matches!(
            login(&mut l, &c.fleet, a, b"wrong"),
            Err(FlowError::WrongPassword { .. })
        ));
    }
    status(&mut l, &c.fleet, a).attempts_remaining
}

#[test]
fn failover_keeps_registrations_and_spent_attempts() {
    let mut c = three();
    let leader = c.wait_leader(Duration::from_secs(20));
    let a = account("alice");
    let k = key(1);
    assert_eq!(register_and_guess_wrong_twice(&c, leader, &a, &k), 3);
    // Followers refuse tunnels and point at the leader.
    let follower = (leader + 1) % 3;
    let mut f = connect(&c, follower);
    assert!(!f.welcome.leader);
    assert_eq!(
        f.welcome.leader_hint.as_deref(),
        Some(c.replicas[leader].link_addr.to_string().as_str())
    );
    assert!(matches!(
        f.open_tunnel(&a, &c.fleet.tunnel_key),
        Err(TunnelError::Closed(TunnelCloseCode::NotLeader))
    ));
    // kill -9 the leader: a new one takes over with everything.
    c.kill9(leader);
    let st = on_leader(&c, |l| try_status(l, &c, &a));
    assert_eq!(
        (st.state, st.attempts_remaining),
        (RecordState::Registered, 3),
        "spent attempts survive failover"
    );
    let got = on_leader(&c, |l| login(l, &c.fleet, &a, b"pw").ok());
    assert_eq!(got, k);
    // The old leader comes back and catches up as a follower.
    c.start(leader);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now_leader = c.wait_leader(Duration::from_secs(10));
        let want = c.status(now_leader).unwrap()["last_applied_index"].as_u64();
        if c.status(leader)
            .and_then(|s| s["last_applied_index"].as_u64())
            == want
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted replica never caught up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn without_a_majority_nothing_is_answered_from_stale_state() {
    let mut c = three();
    let leader = c.wait_leader(Duration::from_secs(20));
    let a = account("bob");
    {
        let mut l = connect(&c, leader);
        register(&mut l, &c.fleet, &a, b"pw", &key(2));
    }
    // Stop both followers: the leader has no majority.
    for i in 0..3 {
        if i != leader {
            c.kill9(i);
        }
    }
    let mut l = connect(&c, leader);
    // Whatever it still believes, it must not answer from its own state.
    let answered = match l.open_tunnel(&a, &c.fleet.tunnel_key) {
        Ok(mut t) => l.request(&mut t, &VaultRequest::Status),
        Err(e) => Err(e),
    };
    match answered {
        Ok(VaultResponse::Error(code)) => assert!(code.retryable(), "{code:?}"),
        Err(TunnelError::Closed(code)) => assert!(code.retryable(), "{code:?}"),
        other => panic!("a replica without a majority answered: {other:?}"),
    }
    // Within an election timeout it stops calling itself leader and /readyz goes false.
    let deadline = Instant::now() + Duration::from_secs(10);
    while testkit::http_get(c.replicas[leader].admin_addr, "/readyz").0 == 200 {
        assert!(
            Instant::now() < deadline,
            "readyz stayed true without a quorum"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Everyone back: service resumes with the registration intact.
    for i in 0..3 {
        if i != leader {
            c.start(i);
        }
    }
    let st = on_leader(&c, |l| try_status(l, &c, &a));
    assert_eq!(st.state, RecordState::Registered);
}

#[test]
fn a_follower_down_changes_nothing_and_a_lagging_replica_catches_up_by_snapshot() {
    let mut c = three();
    let leader = c.wait_leader(Duration::from_secs(20));
    let follower = (leader + 1) % 3;
    c.kill9(follower);
    // Enough writes that the log is snapshotted (snapshot_every = 64 in
    // the test config) and purged past what the follower has.
    let a = account("carol");
    let k = key(3);
    let mut l = connect(&c, leader);
    register(&mut l, &c.fleet, &a, b"pw", &k);
    // ~40 registrations and ~160 counted login starts: well past three
    // snapshot intervals, so the follower's position is purged.
    for i in 0..40 {
        let filler = account(&format!("filler{i}"));
        register(&mut l, &c.fleet, &filler, b"pw", &key(4));
        for _ in 0..4 {
            let r = login_start_only(&mut l, &c.fleet, &filler);
            assert!(matches!(r, Ok(VaultResponse::LoginStarted { .. })), "{r:?}");
        }
    }
    assert_eq!(login(&mut l, &c.fleet, &a, b"pw").unwrap(), k);
    let (_, m) = testkit::http_get(c.replicas[leader].admin_addr, "/metrics");
    assert!(
        testkit::metric(&m, "vault_raft_snapshots_built_total") >= 1.0,
        "no snapshot was built"
    );
    c.start(follower);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let want = c.status(leader).unwrap()["last_applied_index"].as_u64();
        if c.status(follower)
            .and_then(|s| s["last_applied_index"].as_u64())
            == want
        {
            break;
        }
        assert!(Instant::now() < deadline, "lagging replica never caught up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, m) = testkit::http_get(c.replicas[follower].admin_addr, "/metrics");
    assert!(
        testkit::metric(&m, "vault_raft_snapshots_installed_total") >= 1.0,
        "caught up without a snapshot?"
    );
    // Now the caught-up replica can lead with everything.
    c.kill9(leader);
    let got = on_leader(&c, |l| login(l, &c.fleet, &a, b"pw").ok());
    assert_eq!(got, k);
}

#[test]
fn a_partitioned_leader_stops_answering_and_the_majority_carries_on() {
    let c = three();
    let old = c.wait_leader(Duration::from_secs(20));
    let a = account("dave");
    let k = key(5);
    {
        let mut l = connect(&c, old);
        register(&mut l, &c.fleet, &a, b"pw", &k);
    }
    let mut stale = connect(&c, old);
    c.partition(old, true);
    // The majority elects someone else.
    let deadline = Instant::now() + Duration::from_secs(20);
    let new = loop {
        if let Some(l) = c.leader() {
            if l != old {
                break l;
            }
        }
        assert!(
            Instant::now() < deadline,
            "majority did not elect a new leader"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The cut-off replica answers nothing from its state.
    match stale.open_tunnel(&a, &c.fleet.tunnel_key) {
        Ok(mut t) => match stale.request(&mut t, &VaultRequest::Status) {
            Ok(VaultResponse::Error(code)) => assert!(code.retryable()),
            Err(TunnelError::Closed(code)) => assert!(code.retryable()),
            Err(TunnelError::Link(_)) => {}
            other => panic!("partitioned replica answered: {other:?}"),
        },
        Err(TunnelError::Closed(code)) => assert!(code.retryable()),
        Err(TunnelError::Link(_)) => {}
    }
    // Spend attempts on the majority side.
    let mut l = connect(&c, new);
    for _ in 0..2 {
        let _ = login(&mut l, &c.fleet, &a, b"wrong");
    }
    assert_eq!(status(&mut l, &c.fleet, &a).attempts_remaining, 3);
    // Heal: the old leader rejoins as a follower and the count stands.
    c.partition(old, false);
    let st = on_leader(&c, |l| try_status(l, &c, &a));
    assert_eq!(
        st.attempts_remaining, 3,
        "healing must not return spent attempts"
    );
    assert_eq!(on_leader(&c, |l| login(l, &c.fleet, &a, b"pw").ok()), k);
}

#[test]
fn restarting_every_replica_at_once_loses_nothing() {
    let mut c = three();
    let leader = c.wait_leader(Duration::from_secs(20));
    let accounts: Vec<_> = (0..5)
        .map(|i| (account(&format!("user{i}")), key(10 + i)))
        .collect();
    {
        let mut l = connect(&c, leader);
        for (a, k) in &accounts {
            register(&mut l, &c.fleet, a, b"pw", k);
            let _ = login(&mut l, &c.fleet, a, b"wrong");
        }
    }
    for i in 0..3 {
        c.kill9(i);
    }
    c.start_all();
    for (a, k) in &accounts {
        let st = on_leader(&c, |l| try_status(l, &c, a));
        assert_eq!(
            (st.state, st.attempts_remaining),
            (RecordState::Registered, 4)
        );
        assert_eq!(&on_leader(&c, |l| login(l, &c.fleet, a, b"pw").ok()), k);
    }
}

/// The Raft listener faces the network. Connections that never complete a
/// handshake (an attacker without the fleet key, or peers that vanished)
/// must not starve the replicas of slots: with a hundred silent
/// connections held against every replica's Raft port, the group still
/// answers linearizable reads, elects a new leader after the old one is
/// killed, and keeps every registration.
#[test]
fn silent_connections_to_the_raft_port_do_not_block_the_group() {
    let mut c = three();
    let leader = c.wait_leader(Duration::from_secs(20));
    let a = account("quiet");
    {
        let mut l = connect(&c, leader);
        register(&mut l, &c.fleet, &a, b"pw", &key(7));
    }
    let mut silent = Vec::new();
    for r in &c.replicas {
        for _ in 0..100 {
            if let Ok(s) = std::net::TcpStream::connect(r.raft_addr) {
                silent.push(s);
            }
        }
    }
    assert!(!silent.is_empty(), "the silent connections could connect");
    // Reads need a quorum round through fresh or pooled peer connections.
    let st = on_leader(&c, |l| try_status(l, &c, &a));
    assert_eq!(st.state, RecordState::Registered);
    c.kill9(leader);
    let st = on_leader(&c, |l| try_status(l, &c, &a));
    assert_eq!(st.state, RecordState::Registered);
    assert_eq!(st.attempts_remaining, 5);
    drop(silent);
}

/// Group identity on the peer channel: a replica an operator initialised
/// on its own by mistake forms a group of its own. The group refuses to add
/// it (the CLI says why), and even when an operator's request claims it
/// belongs to no group, the leader's probe of it fails on the peer
/// handshake: it is never added, and both sides say so in their logs.
#[test]
fn a_replica_initialised_on_its_own_is_kept_out_of_another_group() {
    let mut c = VaultCluster::new(3, VaultOptions::default());
    c.start_all();
    c.cluster_cmd(0, &["init"]);
    let leader = c.wait_leader(Duration::from_secs(20));
    assert_eq!(leader, 0);
    // The mistake.
    let out = c.cluster_cmd(2, &["init"]);
    assert!(out.contains("Group "), "{out}");
    let control = |i: usize| c.replicas[i].control_addr.to_string();
    let err = c.cluster_cmd_err(0, &["add-learner", "--node", &control(2)]);
    assert!(err.contains("node 3 belongs to another group"), "{err}");
    assert!(err.contains("move its data folder aside"), "{err}");
    // A replica in no group joins as before.
    c.cluster_cmd(0, &["add-learner", "--node", &control(1)]);
    c.cluster_cmd(0, &["promote", "--node-id", "2"]);
    let group = |i: usize| c.status(i).unwrap()["group"].as_str().unwrap().to_string();
    assert_eq!(group(0), group(1));
    assert_ne!(group(0), group(2));

    // Behind the CLI's back: an operator's request tells the leader that
    // replica 3 has no group.
    let op = || {
        hsm_vault::control::client::ControlClient::new(c.operator_key.clone(), c.fleet.control_key)
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let who = rt
        .block_on(op().call(&control(2), &ControlRequest::WhoAreYou))
        .unwrap();
    let mut node: SelfInfo = serde_json::from_value(who).unwrap();
    node.group = None;
    let e = rt
        .block_on(op().call(&control(0), &ControlRequest::AddLearner { node }))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("does not answer as a replica of this fleet")
            && e.contains("is node 3 of group"),
        "{e}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(c.log(2).contains("tried to reach this replica of group")
        && c.log(0).contains("is node 3 of group"))
    {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n--- replica 1\n{}\n--- replica 3\n{}",
            c.log(0),
            c.log(2)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Never added; replica 3 still leads only its own group.
    let s0 = c.status(0).unwrap();
    assert_eq!(s0["learners"], serde_json::json!([]), "{s0}");
    let s2 = c.status(2).unwrap();
    assert_eq!(s2["voters"], serde_json::json!([3]), "{s2}");
    assert_eq!(s2["leader"], serde_json::json!(3), "{s2}");
    // The real group carries on.
    let a = account("grouped");
    let mut l = connect(&c, 0);
    register(&mut l, &c.fleet, &a, b"pw", &key(3));
    assert_eq!(login(&mut l, &c.fleet, &a, b"pw").unwrap(), key(3));
}

/// The control plane: membership changes need an operator key the
/// replicas accept. Without one, the admin listener has no membership
/// routes and the control listener drops the handshake; with one, a
/// change that names a replica that is not there, or that would leave no
/// reachable quorum, is refused before it is proposed. The group serves
/// throughout.
#[test]
fn membership_needs_an_operator_and_changes_that_break_the_quorum_are_refused() {
    let c = three();
    let leader = c.wait_serving(Duration::from_secs(20));
    let a = account("steady");
    register(&mut connect(&c, leader), &c.fleet, &a, b"pw", &key(4));

    // The unauthenticated attack: the old admin routes are gone ...
    for path in [
        "/cluster/add-learner",
        "/cluster/promote",
        "/cluster/status",
    ] {
        let (code, _) = testkit::http_get(c.replicas[leader].admin_addr, path);
        assert_eq!(code, 404, "{path} must not exist on the admin listener");
    }
    // ... and a key the replicas do not list gets no answer.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut seed = [0u8; 32];
    testkit::fill_random(&mut seed);
    let stranger = hsm_vault::control::client::ControlClient::new(
        protocol_spec::keys::StaticSecret::from_bytes(seed),
        c.fleet.control_key,
    );
    let control = c.replicas[leader].control_addr.to_string();
    let bogus = |id: u64| SelfInfo {
        node_id: id,
        node: hsm_vault::raft::VaultNode {
            raft_addr: "127.0.0.1:1".into(),
            link_addr: "127.0.0.1:1".into(),
            control_addr: "127.0.0.1:1".into(),
        },
        group: None,
    };
    for req in [
        ControlRequest::AddLearner { node: bogus(97) },
        ControlRequest::Promote { node_id: 97 },
        ControlRequest::Remove { node_id: 2 },
        ControlRequest::Status,
    ] {
        let e = rt.block_on(stranger.call(&control, &req)).unwrap_err();
        assert!(
            matches!(
                e,
                hsm_vault::control::client::ControlCallError::NotAuthorised { .. }
            ),
            "{e}"
        );
    }

    // With the operator key: a replica that is not there is not added,
    // and what is not a learner is not promoted.
    let err = c.cluster_cmd_err(leader, &["add-learner", "--node", "127.0.0.1:1"]);
    assert!(err.contains("cannot ask 127.0.0.1:1 who it is"), "{err}");
    let op =
        hsm_vault::control::client::ControlClient::new(c.operator_key.clone(), c.fleet.control_key);
    for id in [97, 98, 99] {
        let e = rt
            .block_on(op.call(&control, &ControlRequest::AddLearner { node: bogus(id) }))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not answer as a replica of this fleet"),
            "{e}"
        );
        let err = c.cluster_cmd_err(leader, &["promote", "--node-id", &id.to_string()]);
        assert!(err.contains("is not a learner"), "{err}");
    }
    // Removing a voter while another is cut off would leave no quorum.
    let cut = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    c.partition(cut, true);
    std::thread::sleep(Duration::from_millis(500));
    let err = c.cluster_cmd_err(
        leader,
        &[
            "remove",
            "--node-id",
            &c.replicas[other].node_id.to_string(),
        ],
    );
    assert!(err.contains("a change that cannot reach a quorum"), "{err}");
    c.partition(cut, false);

    // The group is as it was, and serves.
    let st = c.status(leader).unwrap();
    assert_eq!(st["voters"], serde_json::json!([1, 2, 3]), "{st}");
    assert_eq!(st["learners"], serde_json::json!([]), "{st}");
    let l = c.wait_serving(Duration::from_secs(20));
    assert_eq!(
        login(&mut connect(&c, l), &c.fleet, &a, b"pw").unwrap(),
        key(4)
    );
}

/// Rollback of one replica's store, without the PIN: an older sealed
/// record is still authentic. Written back into a stopped replica, which
/// is then made leader, it would hand out the spent attempts again if the
/// leader answered from its own store. It cannot: a commit counts only once
/// a majority holds what it wrote, so the rolled-back leader answers
/// nothing, reports what it found, stops serving, and the others carry on
/// from the true count. Across the whole scenario no more than
/// `max_attempts` KE2s are given.
#[test]
fn a_rolled_back_replica_as_leader_gives_no_spent_attempt_back_and_says_so() {
    const MAX: u32 = 5;
    let mut c = VaultCluster::new(
        3,
        VaultOptions {
            max_attempts: MAX,
            ..VaultOptions::default()
        },
    );
    c.start_all();
    c.form();
    let leader = c.wait_serving(Duration::from_secs(20));
    let a = account("rolled");
    register(&mut connect(&c, leader), &c.fleet, &a, b"pw", &key(5));
    let r = (leader + 1) % 3;
    let caught_up = |c: &VaultCluster, i: usize| c.wait_caught_up(&[i], Duration::from_secs(20));
    caught_up(&c, r);
    // The attacker's copy: replica r's record as registered (0 attempts).
    c.kill9(r);
    let old = {
        let s = hsm_vault::state::RecordStore::open(&c.store_path(r)).unwrap();
        s.get(&a).unwrap().expect("registered record")
    };
    c.start(r);
    caught_up(&c, r);

    let mut ke2 = 0u32;
    let attempt = |c: &VaultCluster| -> Option<VaultResponse> {
        let l = c.leader()?;
        let mut link =
            LinkClient::connect(c.replicas[l].link_addr, &c.chatd_key, &c.fleet.link_key).ok()?;
        login_start_only(&mut link, &c.fleet, &a).ok()
    };
    while ke2 < 3 {
        if let Some(VaultResponse::LoginStarted { .. }) = attempt(&c) {
            ke2 += 1;
        }
    }
    caught_up(&c, r);
    // Roll replica r back: the old (authentic) record over the current one.
    c.kill9(r);
    {
        let s = hsm_vault::state::RecordStore::open(&c.store_path(r)).unwrap();
        assert!(s.get(&a).unwrap().unwrap().version > old.version);
        s.overwrite_raw(a.as_str(), &old).unwrap();
    }
    c.start(r);
    // Make it the leader (its log is as long as anyone's).
    c.elect(r, Duration::from_secs(60));
    // Asked while it leads, it does not report the rolled-back record (its
    // count, or its escrow epoch, SPEC 8.7): a read counts only once a
    // majority holds the same record.
    let mut asked = 0;
    for _ in 0..3 {
        let Ok(mut l) =
            LinkClient::connect(c.replicas[r].link_addr, &c.chatd_key, &c.fleet.link_key)
        else {
            continue;
        };
        let Ok(mut t) = l.open_tunnel(&a, &c.fleet.tunnel_key) else {
            continue;
        };
        asked += 1;
        if let Ok(VaultResponse::Status(st)) = l.request(&mut t, &VaultRequest::Status) {
            assert_ne!(
                st.attempts_remaining, MAX,
                "the rolled-back replica answered Status from its own store: {st:?}"
            );
        }
    }
    assert!(asked > 0, "replica {r} took no tunnel while leading");
    // Guess on, through whichever replica leads, until the record locks.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match attempt(&c) {
            Some(VaultResponse::LoginStarted { .. }) => ke2 += 1,
            Some(VaultResponse::Locked) => break,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
        assert!(
            ke2 <= MAX,
            "{ke2} KE2s: the rolled-back replica gave attempts back"
        );
        assert!(
            Instant::now() < deadline,
            "never locked (KE2s so far: {ke2})"
        );
    }
    assert_eq!(ke2, MAX, "exactly max_attempts KE2s in all");
    // The rolled-back replica said what it found, and is not ready.
    let log = c.log(r);
    assert!(
        log.contains("this replica's store has been edited or rolled back"),
        "{log}"
    );
    let (code, body) = testkit::http_get(c.replicas[r].admin_addr, "/readyz");
    assert_eq!(code, 503, "{body}");
}

/// Every replica proves its own node key; `cluster remove` retires the
/// removed node's id and key. A removed replica that comes back (it was
/// down when it was removed, so it still thinks it is a voter) is refused
/// by every member, and its node id cannot be added again.
#[test]
fn a_removed_replica_is_refused_for_good_and_its_id_never_returns() {
    let mut c = three();
    let leader = c.wait_serving(Duration::from_secs(20));
    let a = account("kept");
    register(&mut connect(&c, leader), &c.fleet, &a, b"pw", &key(6));

    // Each member's own key is registered (the first replica's by the
    // leader itself, the others' when they were added).
    let deadline = Instant::now() + Duration::from_secs(20);
    let keys = loop {
        let st = c.status(leader).unwrap();
        let keys = st["node_keys"].as_object().cloned().unwrap_or_default();
        if keys.len() == 3 {
            break keys;
        }
        assert!(Instant::now() < deadline, "node keys not registered: {st}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let distinct: std::collections::BTreeSet<_> = keys.values().map(|k| k.to_string()).collect();
    assert_eq!(distinct.len(), 3, "every replica has its own key: {keys:?}");
    let text = c.cluster_cmd(leader, &["status"]);
    assert!(!text.contains("not registered yet"), "{text}");

    // Remove a follower while it is down, so it never hears of it.
    let victim = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let victim_id = c.replicas[victim].node_id;
    c.kill9(victim);
    let out = c.cluster_cmd(leader, &["remove", "--node-id", &victim_id.to_string()]);
    assert!(out.contains("node key retired"), "{out}");
    let st = c.status(leader).unwrap();
    assert_eq!(st["retired"], serde_json::json!([victim_id]), "{st}");
    assert!(st["node_keys"].get(victim_id.to_string()).is_none(), "{st}");

    let admin: Vec<_> = c.replicas.iter().map(|r| r.admin_addr).collect();
    let refused = |i: usize| {
        let (_, m) = testkit::http_get(admin[i], "/metrics");
        testkit::metric(&m, "vault_raft_peer_refused_total{side=\"callee\"}")
    };
    let before = refused(leader) + refused(other);
    // It comes back believing it is a voter of {1,2,3}, hears from no
    // leader, and campaigns: both members refuse it.
    c.start(victim);
    let deadline = Instant::now() + Duration::from_secs(30);
    while refused(leader) + refused(other) <= before {
        assert!(
            Instant::now() < deadline,
            "the removed replica was not refused; leader log:\n{}",
            c.log(leader)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs = c.log(leader) + &c.log(other);
    assert!(
        logs.contains(&format!("node {victim_id} was removed from the group")),
        "{logs}"
    );
    // The group serves throughout, without it.
    let l = c.wait_serving(Duration::from_secs(20));
    assert_eq!(
        login(&mut connect(&c, l), &c.fleet, &a, b"pw").unwrap(),
        key(6)
    );
    let st = c.status(l).unwrap();
    assert_eq!(st["voters"].as_array().unwrap().len(), 2, "{st}");

    // Its node id never comes back.
    let err = c.cluster_cmd_err(
        l,
        &[
            "add-learner",
            "--node",
            &c.replicas[victim].control_addr.to_string(),
        ],
    );
    assert!(
        err.contains(&format!("node id {victim_id} was removed from this group")),
        "{err}"
    );
}

/// A membership change that loses the replicas it needs between its quorum
/// check and its commit can never commit, and blocks every later change.
/// The operator is told so, and `cluster recover` on the survivor with the
/// most complete log brings the group back, with every registration and
/// spent attempt, to take new replicas.
#[test]
fn a_stuck_membership_change_is_reported_and_recovered_by_the_documented_command() {
    const SIGKILL: i32 = 9;
    const SIGSTOP: i32 = 19;
    let mut c = VaultCluster::new(5, VaultOptions::default());
    for i in 0..4 {
        c.start(i);
    }
    c.cluster_cmd(0, &["init"]);
    c.wait_leader(Duration::from_secs(20));
    for i in 1..3 {
        let node = c.replicas[i].control_addr.to_string();
        c.cluster_cmd(0, &["add-learner", "--node", &node]);
        c.cluster_cmd(
            0,
            &["promote", "--node-id", &c.replicas[i].node_id.to_string()],
        );
    }
    let node4 = c.replicas[3].control_addr.to_string();
    c.cluster_cmd(0, &["add-learner", "--node", &node4]);
    let leader = c.wait_serving(Duration::from_secs(20));
    assert_eq!(leader, 0, "replica 1 leads the group it made");
    let a = account("survivor");
    {
        let mut l = connect(&c, leader);
        register(&mut l, &c.fleet, &a, b"pw", &key(8));
        for _ in 0..2 {
            assert!(login(&mut l, &c.fleet, &a, b"wrong").is_err());
        }
        assert_eq!(status(&mut l, &c.fleet, &a).attempts_remaining, 3);
    }

    // Node 4 freezes; promoting it is checked against the voters that
    // answer ({1,2,3}: a quorum of {1,2,3,4}) and proposed, and node 3
    // dies before the change can commit: {1,2} are not a majority of
    // {1,2,3,4}, so it never will.
    c.signal(3, SIGSTOP);
    let promote_err = std::thread::scope(|s| {
        let promote = s.spawn(|| c.cluster_cmd_err(0, &["promote", "--node-id", "4"]));
        // Node 3's probe answers at once; node 4's takes its 5 s timeout.
        std::thread::sleep(Duration::from_secs(2));
        c.signal(2, SIGKILL);
        promote.join().unwrap()
    });
    assert!(
        promote_err.contains("has not committed within") && promote_err.contains("cluster recover"),
        "{promote_err}"
    );
    c.signal(3, SIGKILL);
    let err = c.cluster_cmd_err(0, &["remove", "--node-id", "4"]);
    assert!(err.contains("cluster recover"), "{err}");

    // Recovery: stop the survivors, compare, recover the most complete.
    c.kill9(0);
    c.kill9(1);
    c.kill9(2);
    c.kill9(3);
    let mut best = None;
    for i in [0, 1] {
        let (ok, out) = c.recover_cmd(i, &["--output", "json"]);
        assert!(ok, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["change_pending"], true, "{v}");
        let last = (
            v["last_log"][0].as_u64().unwrap(),
            v["last_log"][1].as_u64().unwrap(),
        );
        if best.is_none_or(|(_, b)| last > b) {
            best = Some((i, last));
        }
    }
    let (chosen, _) = best.unwrap();
    let (ok, out) = c.recover_cmd(chosen, &["--yes"]);
    assert!(ok && out.contains("now the only voter"), "{out}");
    let (ok, out) = c.recover_cmd(chosen, &["--yes"]);
    assert!(!ok && out.contains("already the only voter"), "{out}");
    c.start(chosen);
    let l = c.wait_serving(Duration::from_secs(30));
    assert_eq!(l, chosen);
    {
        let mut link = connect(&c, l);
        assert_eq!(status(&mut link, &c.fleet, &a).attempts_remaining, 3);
        assert_eq!(login(&mut link, &c.fleet, &a, b"pw").unwrap(), key(8));
    }

    // New replicas join as usual; the old ids are retired.
    c.start(4);
    let node5 = c.replicas[4].control_addr.to_string();
    c.cluster_cmd(chosen, &["add-learner", "--node", &node5]);
    c.cluster_cmd(chosen, &["promote", "--node-id", "5"]);
    for old in (1..=4).filter(|n| *n != c.replicas[chosen].node_id) {
        c.cluster_cmd(chosen, &["remove", "--node-id", &old.to_string()]);
    }
    let st = c.status(chosen).unwrap();
    let mut voters: Vec<u64> = serde_json::from_value(st["voters"].clone()).unwrap();
    voters.sort_unstable();
    assert_eq!(voters, vec![c.replicas[chosen].node_id, 5], "{st}");
    let l = c.wait_serving(Duration::from_secs(20));
    assert_eq!(
        status(&mut connect(&c, l), &c.fleet, &a).attempts_remaining,
        5,
        "the right password reset the count before the new replica joined"
    );
}

/// A follower that is merely slow is never taken for one whose store
/// diverged. Behind a slow link it applies several commits of one account
/// at once, after the leader asked it to confirm the first of them; its
/// record is then the later one, which says nothing about its store. Told
/// it had diverged, it used to stop serving for good, and once elected it
/// held the group as a leader that answers nothing (found by the soak).
#[test]
fn a_slow_follower_is_never_taken_for_a_diverged_one() {
    let c = three();
    let leader = c.wait_serving(Duration::from_secs(20));
    let a = account("busy");
    register(&mut connect(&c, leader), &c.fleet, &a, b"pw", &key(6));
    let slow = (leader + 1) % 3;
    c.delay(slow, Duration::from_millis(150));
    // Counted attempts on one account, back to back: each commits with the
    // leader and the fast follower, while the slow one is asked about each
    // after it may already hold the next.
    let mut link = connect(&c, leader);
    for n in 0..4 {
        let got = login_start_only(&mut link, &c.fleet, &a);
        assert!(
            matches!(got, Ok(VaultResponse::LoginStarted { .. })),
            "attempt {n}: {got:?}"
        );
    }
    c.delay(slow, Duration::ZERO);
    // Let every late answer arrive.
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..3 {
        let log = c.log(i);
        assert!(
            !log.contains("diverged") && !log.contains("rolled back"),
            "replica {} was taken for a diverged one:\n{log}",
            i + 1
        );
        let (code, body) = testkit::http_get(c.replicas[i].admin_addr, "/readyz");
        assert_eq!(code, 200, "replica {}: {body}", i + 1);
    }
}

/// kill -9 at chosen points inside a replicated commit, on the leader and
/// on a follower (fail points of test builds, `HSM_VAULT_FAILPOINT`):
/// after the log batch is durable but not yet reported, and after the
/// record is applied but not yet confirmed or answered. Whatever the
/// point, no KE2 comes back from a count that did not reach a majority,
/// no spent attempt comes back, and the registration survives.
#[test]
fn kill9_inside_a_replicated_commit_gives_no_attempt_back() {
    const MAX: u32 = 20;
    let mut c = VaultCluster::new(
        3,
        VaultOptions {
            max_attempts: MAX,
            ..VaultOptions::default()
        },
    );
    c.start_all();
    c.form();
    let all_caught_up = |c: &VaultCluster| c.wait_caught_up(&[0, 1, 2], Duration::from_secs(30));
    for (n, (point, leader_side)) in [
        ("log-appended", true),
        ("record-applied", true),
        ("log-appended", false),
        ("record-applied", false),
    ]
    .into_iter()
    .enumerate()
    {
        let case = format!(
            "{point} on the {}",
            if leader_side { "leader" } else { "follower" }
        );
        let a = account(&format!("crash{n}"));
        let k = key(20 + n as u8);
        let leader = c.wait_serving(Duration::from_secs(30));
        register(&mut connect(&c, leader), &c.fleet, &a, b"pw", &k);
        all_caught_up(&c);
        // Restart the target with the fail point armed; nothing is written
        // meanwhile, so it has nothing to catch up on and does not stop yet.
        let target = if leader_side {
            leader
        } else {
            (leader + 1) % 3
        };
        c.kill9(target);
        c.start_with(target, &[("HSM_VAULT_FAILPOINT", point)]);
        if leader_side {
            c.elect(target, Duration::from_secs(60));
        }
        // Counted attempts through whoever leads, until the target aborts
        // (a few are enough; past that, only wait).
        let mut ke2 = 0u32;
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.wait_exit(target, Duration::from_millis(100)).is_none() {
            assert!(
                Instant::now() < deadline,
                "{case}: the fail point was never reached ({ke2} KE2s):\n{}",
                c.log(target)
            );
            if ke2 >= MAX / 2 {
                continue;
            }
            let Some(l) = c.leader() else {
                continue;
            };
            let Ok(mut link) =
                LinkClient::connect(c.replicas[l].link_addr, &c.chatd_key, &c.fleet.link_key)
            else {
                continue;
            };
            if let Ok(VaultResponse::LoginStarted { .. }) =
                login_start_only(&mut link, &c.fleet, &a)
            {
                ke2 += 1;
            }
        }
        c.reap(target);
        c.start(target);
        all_caught_up(&c);
        let st = on_leader(&c, |l| try_status(l, &c, &a));
        assert_eq!(st.state, RecordState::Registered, "{case}");
        assert!(
            st.attempts_remaining <= MAX - ke2,
            "{case}: {ke2} KE2s but {} attempts left: a spent attempt came back",
            st.attempts_remaining
        );
        // The registration survived: the right password releases the key.
        let got = on_leader(&c, |l| login(l, &c.fleet, &a, b"pw").ok());
        assert_eq!(got, k, "{case}");
        println!(
            "{case}: {ke2} KE2s before the abort, {} attempts left after",
            st.attempts_remaining
        );
    }
}

/// Replicas far apart: 100 ms one way between every pair (a round trip of
/// 200 ms, further than two data centres on one continent), through the
/// fault proxies' delay, with timings the vault derives from
/// `raft.peer_round_trip_ms = 200` alone. The group forms, serves logins,
/// loses its leader to kill -9, elects another and serves on, with every
/// spent attempt kept. With the loopback timings it never forms.
#[test]
fn a_group_forms_and_serves_with_100_ms_between_replicas() {
    let mut c = VaultCluster::new(
        3,
        VaultOptions {
            max_attempts: 10,
            raft_timing: testkit::vault::RaftTiming::Distance { round_trip_ms: 200 },
            ..VaultOptions::default()
        },
    );
    for i in 0..3 {
        c.delay(i, Duration::from_millis(100));
    }
    c.start_all();
    c.form();
    let leader = c.wait_serving(Duration::from_secs(60));
    let a = account("far");
    let k = key(30);
    assert_eq!(register_and_guess_wrong_twice(&c, leader, &a, &k), 8);
    c.kill9(leader);
    let st = on_leader(&c, |l| try_status(l, &c, &a));
    assert_eq!(
        (st.state, st.attempts_remaining),
        (RecordState::Registered, 8)
    );
    let started = Instant::now();
    let got = on_leader(&c, |l| login(l, &c.fleet, &a, b"pw").ok());
    assert_eq!(got, k);
    println!("a login after the failover took {:?}", started.elapsed());
    c.start(leader);
    let st = on_leader(&c, |l| try_status(l, &c, &a));
    assert_eq!(st.attempts_remaining, 10, "the login reset the count");
}

/// Concurrent commits share log entries (group commit): 24 links count
/// three attempts each at once, with replicas 20 ms apart, and the group
/// writes far fewer entries than commits. Each attempt still counts once:
/// every account ends exactly three attempts down, on every replica.
#[test]
fn concurrent_commits_share_log_entries_and_each_counts_once() {
    const LINKS: usize = 24;
    const ROUNDS: usize = 3;
    let mut c = VaultCluster::new(
        3,
        VaultOptions {
            max_attempts: 10,
            workers: 2 * LINKS,
            raft_timing: testkit::vault::RaftTiming::Distance { round_trip_ms: 40 },
            ..VaultOptions::default()
        },
    );
    c.start_all();
    c.form();
    let leader = c.wait_serving(Duration::from_secs(30));
    let accounts: Vec<_> = (0..LINKS).map(|i| account(&format!("batch{i}"))).collect();
    let mut l = connect(&c, leader);
    for (i, a) in accounts.iter().enumerate() {
        register(&mut l, &c.fleet, a, b"pw", &key(40 + i as u8));
    }
    for i in 0..3 {
        c.delay(i, Duration::from_millis(20));
    }
    // Links one at a time (a replica admits a few link handshakes at once).
    let links: Vec<LinkClient> = (0..LINKS).map(|_| connect(&c, leader)).collect();
    let before = c.applied(leader);
    let start = std::sync::Barrier::new(LINKS);
    std::thread::scope(|s| {
        for (a, mut link) in accounts.iter().zip(links) {
            let (c, start) = (&c, &start);
            s.spawn(move || {
                start.wait();
                for n in 0..ROUNDS {
                    let got = login_start_only(&mut link, &c.fleet, a);
                    assert!(
                        matches!(got, Ok(VaultResponse::LoginStarted { .. })),
                        "{a} attempt {n}: {got:?}"
                    );
                }
            });
        }
    });
    let entries = c.applied(leader) - before;
    let commits = (LINKS * ROUNDS) as u64;
    println!("{commits} commits in {entries} log entries");
    assert!(
        entries <= commits / 2,
        "{commits} concurrent commits took {entries} log entries: they were not batched"
    );
    for i in 0..3 {
        c.delay(i, Duration::ZERO);
    }
    c.wait_caught_up(&[0, 1, 2], Duration::from_secs(20));
    for a in &accounts {
        let st = on_leader(&c, |l| try_status(l, &c, a));
        assert_eq!(st.attempts_remaining, 10 - ROUNDS as u32, "{a}");
    }
    for i in 0..3 {
        let log = c.log(i);
        assert!(!log.contains("diverged"), "replica {}:\n{log}", i + 1);
    }
}
