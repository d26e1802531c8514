//! A replicated vault on loopback: N replicas with their own SoftHSM
//! tokens holding one master key (through the real key ceremony), the same
//! sealed fleet secrets, Raft traffic through fault proxies, and helpers to
//! form the group, find the leader, kill, restart and partition replicas.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use protocol_spec::ids::FleetId;
use protocol_spec::keys::{PublicKey, StaticSecret};

use crate::faults::FaultProxy;
use crate::softhsm::{SoftHsm, Token};
use crate::vault::{
    spawn_process, write_config, FleetInfo, RaftSettings, VaultOptions, VaultProcess,
};

/// One replica's fixed facts.
pub struct Replica {
    pub node_id: u64,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub token: Token,
    pub link_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Where operators' tools reach it.
    pub control_addr: SocketAddr,
    /// The replica's own Raft listener (peers reach it through `proxy`).
    pub raft_addr: SocketAddr,
    pub source_ip: IpAddr,
    pub proxy: FaultProxy,
}

/// The whole group.
pub struct VaultCluster {
    pub hsm: SoftHsm,
    pub replicas: Vec<Replica>,
    pub procs: Vec<Option<VaultProcess>>,
    pub chatd_key: StaticSecret,
    /// The operator key every replica accepts (written to each replica's
    /// folder as `operator.key`).
    pub operator_key: StaticSecret,
    pub fleet: FleetInfo,
}

fn run_ok(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl VaultCluster {
    /// Initialises `n` replicas (not started).
    pub fn new(n: usize, opts: VaultOptions) -> Self {
        let hsm = SoftHsm::new();
        let mut seed = [0u8; 32];
        crate::fill_random(&mut seed);
        let chatd_key = StaticSecret::from_bytes(seed);
        crate::fill_random(&mut seed);
        let operator_key = StaticSecret::from_bytes(seed);
        let mut replicas = Vec::new();
        for i in 1..=n {
            let token = hsm.init_token(&format!("replica{i}"));
            let dir = hsm.dir().join(format!("replica{i}"));
            std::fs::create_dir_all(&dir).expect("replica dir");
            crate::write_private(&dir.join("pin"), token.pin.as_bytes());
            crate::write_private(&dir.join("operator.key"), operator_key.to_hex().as_bytes());
            let raft_port = crate::free_port();
            let source_ip: IpAddr = format!("127.0.0.{}", 10 + i).parse().expect("ip");
            let proxy =
                FaultProxy::start("127.0.0.1:0", SocketAddr::from(([127, 0, 0, 1], raft_port)));
            let link_port = crate::free_port();
            let admin_port = crate::free_port();
            let control_port = crate::free_port();
            let config = write_config(
                &dir,
                &opts,
                &token.label,
                &chatd_key.public_key(),
                link_port,
                admin_port,
                Some(&RaftSettings {
                    node_id: i as u64,
                    port: raft_port,
                    bind_source: source_ip.to_string(),
                    advertise: proxy.addr.to_string(),
                    control_port,
                    operator_key: operator_key.public_key(),
                }),
            );
            replicas.push(Replica {
                node_id: i as u64,
                dir,
                config,
                token,
                link_addr: SocketAddr::from(([127, 0, 0, 1], link_port)),
                admin_addr: SocketAddr::from(([127, 0, 0, 1], admin_port)),
                control_addr: SocketAddr::from(([127, 0, 0, 1], control_port)),
                raft_addr: SocketAddr::from(([127, 0, 0, 1], raft_port)),
                source_ip,
                proxy,
            });
        }
        let mut c = VaultCluster {
            procs: (0..n).map(|_| None).collect(),
            hsm,
            replicas,
            chatd_key,
            operator_key,
            fleet: FleetInfo {
                fleet_id: FleetId::new("cluster-fleet").expect("fleet id"),
                tunnel_key: PublicKey([0; 32]),
                link_key: PublicKey([0; 32]),
                control_key: PublicKey([0; 32]),
            },
        };
        c.initialise();
        c
    }

    fn cmd(&self, i: usize) -> Command {
        let mut c = Command::new(crate::bin("hsm-vault"));
        c.arg("--config").arg(&self.replicas[i].config);
        c.env("SOFTHSM2_CONF", self.hsm.conf());
        c.env(
            "HSM_VAULT_FLEET_CONTROL_KEY",
            self.fleet.control_key.to_hex(),
        );
        c.env_remove("RUST_LOG");
        c
    }

    /// `init` on replica 1, then the four-step ceremony and a copy of the
    /// sealed fleet secrets for every other replica.
    fn initialise(&mut self) {
        let mut init = self.cmd(0);
        init.args(["init", "--fleet-id", "cluster-fleet", "--output", "json"]);
        let v: serde_json::Value =
            serde_json::from_str(&run_ok(init, "hsm-vault init")).expect("json");
        self.fleet.tunnel_key =
            PublicKey::from_hex(v["tunnel_key"].as_str().expect("key")).expect("key");
        self.fleet.link_key =
            PublicKey::from_hex(v["link_key"].as_str().expect("key")).expect("key");
        self.fleet.control_key =
            PublicKey::from_hex(v["control_key"].as_str().expect("key")).expect("key");
        let sealed = self.replicas[0].dir.join("data/fleet.sealed");
        for i in 1..self.replicas.len() {
            let req = self.replicas[i].dir.join("import-request.txt");
            let wrapped = self.replicas[i].dir.join("master.wrapped");
            let mut c = self.cmd(i);
            c.args(["keys", "import-request", "--out"]).arg(&req);
            run_ok(c, "keys import-request");
            let mut c = self.cmd(0);
            c.args(["keys", "approve", "--request"]).arg(&req);
            c.env("HSM_VAULT_SO_PIN", &self.replicas[0].token.so_pin);
            run_ok(c, "keys approve");
            let mut c = self.cmd(0);
            c.args(["keys", "export", "--request"])
                .arg(&req)
                .arg("--out")
                .arg(&wrapped);
            run_ok(c, "keys export");
            let data = self.replicas[i].dir.join("data");
            std::fs::create_dir_all(&data).expect("data dir");
            std::fs::copy(&sealed, data.join("fleet.sealed")).expect("copy fleet.sealed");
            let mut c = self.cmd(i);
            c.args(["keys", "import", "--wrapped"]).arg(&wrapped);
            let out = run_ok(c, "keys import");
            assert!(
                out.contains("Verified"),
                "import must verify against fleet.sealed: {out}"
            );
        }
    }

    pub fn start(&mut self, i: usize) {
        self.start_with(i, &[]);
    }

    /// Like [`VaultCluster::start`] with extra environment variables (a
    /// fail point, a disk-fault file).
    pub fn start_with(&mut self, i: usize, env: &[(&str, &str)]) {
        assert!(self.procs[i].is_none(), "replica {} already running", i + 1);
        let mut cmd = self.cmd(i);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.procs[i] = Some(spawn_process(cmd, &self.replicas[i].dir));
    }

    /// Waits for replica `i`'s process to exit by itself; its status.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = self.procs[i].as_mut()?.wait_exit(timeout)?;
        Some(status)
    }

    /// Forgets replica `i`'s exited process (so it can be started again),
    /// returning its log.
    pub fn reap(&mut self, i: usize) -> String {
        self.procs[i].take().map(|p| p.log()).unwrap_or_default()
    }

    pub fn start_all(&mut self) {
        for i in 0..self.replicas.len() {
            self.start(i);
        }
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            p.kill9();
        }
    }

    /// Sends `sig` to replica `i` (SIGSTOP to freeze it where it stands).
    pub fn signal(&self, i: usize, sig: i32) {
        if let Some(p) = &self.procs[i] {
            p.signal(sig);
        }
    }

    /// `hsm-vault cluster recover ...` on replica `i` (stopped): its
    /// outcome and output.
    pub fn recover_cmd(&self, i: usize, args: &[&str]) -> (bool, String) {
        let mut c = self.cmd(i);
        c.args(["cluster", "recover"]).args(args);
        let out = c.output().expect("run hsm-vault cluster recover");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.procs[i].is_some()
    }

    /// `hsm-vault cluster ...` against replica `i`'s admin listener.
    pub fn cluster_cmd(&self, i: usize, args: &[&str]) -> String {
        let mut c = self.cmd(i);
        c.arg("cluster").args(args);
        run_ok(c, &format!("cluster {args:?}"))
    }

    /// `hsm-vault cluster ...` against replica `i`, expected to fail: its
    /// standard error.
    pub fn cluster_cmd_err(&self, i: usize, args: &[&str]) -> String {
        let mut c = self.cmd(i);
        c.arg("cluster").args(args);
        let out = c.output().expect("run hsm-vault cluster");
        assert!(
            !out.status.success(),
            "cluster {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// init on replica 1, then add and promote every other replica.
    pub fn form(&self) {
        self.cluster_cmd(0, &["init"]);
        self.wait_leader(Duration::from_secs(20));
        for r in &self.replicas[1..] {
            self.cluster_cmd(0, &["add-learner", "--node", &r.control_addr.to_string()]);
            self.cluster_cmd(0, &["promote", "--node-id", &r.node_id.to_string()]);
        }
        self.wait_serving(Duration::from_secs(20));
    }

    /// Waits until the leader takes tunnels: right after a membership
    /// change it may not yet have heard from its new quorum, and until it
    /// has, it refuses tunnels (and tests that start with a registration
    /// would fail for no reason of theirs).
    pub fn wait_serving(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader() {
                let link = crate::link::LinkClient::connect(
                    self.replicas[l].link_addr,
                    &self.chatd_key,
                    &self.fleet.link_key,
                );
                if link.is_ok_and(|c| c.welcome.leader) {
                    return l;
                }
            }
            assert!(Instant::now() < deadline, "no leader took tunnels in time");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `cluster status` of replica `i`, through its control listener.
    pub fn status(&self, i: usize) -> Option<serde_json::Value> {
        let mut c = self.cmd(i);
        c.args(["cluster", "status", "--output", "json"]);
        let out = c.output().ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The index of the replica that says it leads with a fresh quorum.
    pub fn leader(&self) -> Option<usize> {
        (0..self.replicas.len()).find(|&i| {
            self.is_running(i)
                && self.status(i).is_some_and(|s| {
                    s["state"] == "Leader"
                        && s["millis_since_quorum_ack"]
                            .as_u64()
                            .is_some_and(|ms| ms < 1000)
                })
        })
    }

    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader() {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no leader elected within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn link_addrs(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|r| r.link_addr).collect()
    }

    /// Cuts replica `i` off from every other replica, both directions.
    pub fn partition(&self, i: usize, on: bool) {
        self.replicas[i].proxy.cut_all(on);
        let ip = self.replicas[i].source_ip;
        for (j, r) in self.replicas.iter().enumerate() {
            if j != i {
                r.proxy.cut_source(ip, on);
            }
        }
    }

    /// Replica `i`'s last applied log index (0 while it does not answer).
    pub fn applied(&self, i: usize) -> u64 {
        self.status(i)
            .and_then(|s| s["last_applied_index"].as_u64())
            .unwrap_or(0)
    }

    /// Waits until each replica in `which` has applied as far as the
    /// leader; panics after `timeout`.
    pub fn wait_caught_up(&self, which: &[usize], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let l = self.wait_leader(Duration::from_secs(10));
            let want = self.applied(l);
            if which.iter().all(|&i| self.applied(i) >= want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replicas {which:?} never caught up with the leader"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Makes replica `r` the leader (`hsm-vault cluster elect` on it,
    /// again until it leads); panics after `timeout`.
    pub fn elect(&self, r: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.leader() != Some(r) {
            assert!(
                Instant::now() < deadline,
                "replica {} never became leader",
                r + 1
            );
            let _ = self.status(r); // wait for it to answer at all
            let mut cmd = Command::new(crate::bin("hsm-vault"));
            cmd.arg("--config")
                .arg(&self.replicas[r].config)
                .args(["cluster", "elect"])
                .env(
                    "HSM_VAULT_FLEET_CONTROL_KEY",
                    self.fleet.control_key.to_hex(),
                );
            let _ = cmd.output();
            std::thread::sleep(Duration::from_millis(1500));
        }
    }

    /// Slows every connection *to* replica `i`'s Raft listener (what the
    /// leader sends it and its answers) by `one_way` each way; connections
    /// it opens itself go through the others' proxies, undelayed.
    pub fn delay(&self, i: usize, one_way: Duration) {
        self.replicas[i].proxy.set_delay(one_way);
    }

    /// The store file of replica `i` (for inspecting what it holds).
    pub fn store_path(&self, i: usize) -> PathBuf {
        self.replicas[i].dir.join("data/vault.redb")
    }

    pub fn log(&self, i: usize) -> String {
        self.procs[i]
            .as_ref()
            .map(VaultProcess::log)
            .unwrap_or_default()
    }
}
