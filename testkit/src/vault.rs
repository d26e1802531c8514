//! A real `hsm-vault` on loopback: SoftHSM token, config, `init`, `serve`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use protocol_spec::ids::FleetId;
use protocol_spec::keys::{PublicKey, StaticSecret};

use crate::softhsm::{SoftHsm, Token};

/// Replication settings of one replica's config.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub node_id: u64,
    pub port: u16,
    /// Source address for its connections to other replicas.
    pub bind_source: String,
    /// Address the others use to reach it (a fault proxy in tests).
    pub advertise: String,
    /// Its control listener's port, and the operator key it accepts.
    pub control_port: u16,
    pub operator_key: PublicKey,
}

/// Writes `dir/vault.toml` for a test replica (pin file `dir/pin`).
pub fn write_config(
    dir: &Path,
    opts: &VaultOptions,
    token_label: &str,
    chatd_key: &PublicKey,
    link_port: u16,
    admin_port: u16,
    raft: Option<&RaftSettings>,
) -> PathBuf {
    let raft = raft
        .map(|r| {
            format!(
                "[raft]\nnode_id = {}\nlisten = \"127.0.0.1:{}\"\nbind_source = \"{}\"\nadvertise = \"{}\"\n\
                 {}snapshot_every = 64\n\
                 [control]\nlisten = \"127.0.0.1:{}\"\noperator_keys = [\"{}\"]\n\
                 operator_key_file = \"operator.key\"\n",
                r.node_id,
                r.port,
                r.bind_source,
                r.advertise,
                opts.raft_timing.toml(),
                r.control_port,
                r.operator_key.to_hex()
            )
        })
        .unwrap_or_default();
    let config = dir.join("vault.toml");
    std::fs::write(
        &config,
        format!(
            "replica_id = \"vault-{}\"\n\
             data_dir = \"data\"\n\
             max_attempts = {}\n\
             login_timeout_secs = {}\n\
             workers = {}\n\
             max_queued_requests = {}\n\
             [hsm]\n\
             module = \"{}\"\n\
             token_label = \"{}\"\n\
             pin_file = \"pin\"\n\
             sessions = {}\n\
             [link]\n\
             listen = \"127.0.0.1:{}\"\n\
             chatd_keys = [\"{}\"]\n\
             tunnel_idle_timeout_secs = {}\n\
             max_tunnels_per_link = {}\n\
             handshake_timeout_secs = 5\n\
             [limits]\n\
             login_starts_per_minute = {}\n\
             [admin]\n\
             listen = \"127.0.0.1:{}\"\n\
             [log]\n\
             level = \"info,hsm_vault=debug,openraft=warn\"\n\
             {raft}{}\n",
            token_label,
            opts.max_attempts,
            opts.login_timeout_secs,
            opts.workers,
            opts.max_queued_requests,
            crate::softhsm::module_path().display(),
            token_label,
            opts.workers,
            link_port,
            chatd_key.to_hex(),
            opts.tunnel_idle_timeout_secs,
            opts.max_tunnels_per_link,
            opts.login_starts_per_minute,
            admin_port,
            opts.extra,
        ),
    )
    .expect("write config");
    config
}

/// Starts `hsm-vault serve` with `cmd` (config and env already set) and
/// waits until it listens; its stderr goes to a log file in `dir`.
pub fn spawn_process(mut cmd: Command, dir: &Path) -> VaultProcess {
    let log_path = dir.join(format!("vault-{}.log", crate::unique()));
    let log = std::fs::File::create(&log_path).expect("log file");
    cmd.arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    let mut child = cmd.spawn().expect("spawn hsm-vault serve");
    let stdout = child.stdout.take().expect("stdout");
    let (link_addr, admin_addr) = wait_listening(stdout, &log_path);
    VaultProcess {
        child: Some(child),
        link_addr,
        admin_addr,
        log_path,
    }
}

/// Public facts `hsm-vault init` printed.
#[derive(Debug, Clone)]
pub struct FleetInfo {
    pub fleet_id: FleetId,
    pub tunnel_key: PublicKey,
    pub link_key: PublicKey,
    /// The fleet control key operators pin.
    pub control_key: PublicKey,
}

/// An initialised (not yet running) vault replica.
pub struct VaultFixture {
    pub hsm: SoftHsm,
    pub token: Token,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub chatd_key: StaticSecret,
    pub fleet: FleetInfo,
}

/// A running `hsm-vault serve`.
pub struct VaultProcess {
    child: Option<Child>,
    pub link_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub log_path: PathBuf,
}

/// Options for [`VaultFixture::init`].
#[derive(Debug, Clone)]
pub struct VaultOptions {
    pub max_attempts: u32,
    /// The vault's per-account login-start budget; 0 (the default here)
    /// turns it off, so tests of other rules can log in as fast as they
    /// like.
    pub login_starts_per_minute: u32,
    pub login_timeout_secs: u64,
    pub tunnel_idle_timeout_secs: u64,
    pub max_tunnels_per_link: u32,
    pub workers: usize,
    pub max_queued_requests: usize,
    /// Fixed link port (0 picks a free one at every start; tests that
    /// restart a vault behind chatd need a stable port).
    pub link_port: u16,
    /// Extra TOML appended to the config.
    pub extra: String,
    /// Raft timings of cluster replicas.
    pub raft_timing: RaftTiming,
}

/// How a test group's replicas time Raft: fast on loopback by default;
/// [`RaftTiming::Distance`] leaves it to the vault's own derivation from
/// the round trip between replicas.
#[derive(Debug, Clone)]
pub enum RaftTiming {
    Loopback,
    /// `raft.peer_round_trip_ms`, nothing else set.
    Distance {
        round_trip_ms: u64,
    },
}

impl RaftTiming {
    fn toml(&self) -> String {
        match self {
            RaftTiming::Loopback => "heartbeat_ms = 50\nelection_timeout_min_ms = 300\n\
                 election_timeout_max_ms = 600\ncommit_timeout_secs = 3\n"
                .to_string(),
            RaftTiming::Distance { round_trip_ms } => {
                format!("peer_round_trip_ms = {round_trip_ms}\n")
            }
        }
    }
}

impl Default for VaultOptions {
    fn default() -> Self {
        VaultOptions {
            max_attempts: 5,
            login_starts_per_minute: 0,
            login_timeout_secs: 60,
            tunnel_idle_timeout_secs: 120,
            max_tunnels_per_link: 10_000,
            workers: 4,
            max_queued_requests: 1024,
            link_port: 0,
            extra: String::new(),
            raft_timing: RaftTiming::Loopback,
        }
    }
}

impl VaultFixture {
    /// Creates a SoftHSM token, writes a config with free ports, and runs
    /// `hsm-vault init`.
    pub fn init(opts: VaultOptions) -> Self {
        let hsm = SoftHsm::new();
        let token = hsm.init_token("vault-test");
        let dir = hsm.dir().join("vault");
        std::fs::create_dir_all(&dir).expect("vault dir");
        let pin_file = dir.join("pin");
        crate::write_private(&pin_file, token.pin.as_bytes());
        let mut seed = [0u8; 32];
        crate::fill_random(&mut seed);
        let chatd_key = StaticSecret::from_bytes(seed);
        let config = write_config(
            &dir,
            &opts,
            &token.label,
            &chatd_key.public_key(),
            opts.link_port,
            0,
            None,
        );
        let out = Command::new(crate::bin("hsm-vault"))
            .args(["--config"])
            .arg(&config)
            .args(["init", "--fleet-id", "test-fleet", "--output", "json"])
            .env("SOFTHSM2_CONF", hsm.conf())
            .output()
            .expect("run hsm-vault init");
        assert!(
            out.status.success(),
            "hsm-vault init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("init prints JSON");
        let fleet = FleetInfo {
            fleet_id: FleetId::new(v["fleet_id"].as_str().expect("fleet_id")).expect("fleet id"),
            tunnel_key: PublicKey::from_hex(v["tunnel_key"].as_str().expect("tunnel_key"))
                .expect("key"),
            link_key: PublicKey::from_hex(v["link_key"].as_str().expect("link_key")).expect("key"),
            control_key: PublicKey::from_hex(v["control_key"].as_str().expect("control_key"))
                .expect("key"),
        };
        VaultFixture {
            hsm,
            token,
            dir,
            config,
            chatd_key,
            fleet,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// A `hsm-vault` command with this fixture's config and SoftHSM.
    pub fn command(&self) -> Command {
        let mut c = Command::new(crate::bin("hsm-vault"));
        c.arg("--config").arg(&self.config);
        c.env("SOFTHSM2_CONF", self.hsm.conf());
        c.env_remove("RUST_LOG");
        c
    }

    /// Starts `hsm-vault serve` and waits until it listens.
    pub fn spawn(&self) -> VaultProcess {
        self.spawn_with(&[])
    }

    /// Like [`VaultFixture::spawn`] with extra environment variables.
    pub fn spawn_with(&self, env: &[(&str, &str)]) -> VaultProcess {
        let mut cmd = self.command();
        for (k, v) in env {
            cmd.env(k, v);
        }
        spawn_process(cmd, &self.dir)
    }
}

pub(crate) fn unique_impl() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Reads the `{"event":"listening",...}` line a server prints at start-up.
pub fn wait_listening(
    stdout: std::process::ChildStdout,
    log_path: &Path,
) -> (SocketAddr, SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains("\"listening\"") {
                let _ = tx.send(line.clone());
            }
            line.clear();
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "server did not start listening; log:\n{}",
                std::fs::read_to_string(log_path).unwrap_or_default()
            )
        });
    let v: serde_json::Value = serde_json::from_str(&line).expect("listening line is JSON");
    let addr = |k: &str| -> SocketAddr {
        v[k].as_str()
            .unwrap_or_else(|| panic!("no {k} in {line}"))
            .parse()
            .expect("socket address")
    };
    (addr(addr_key(&v)), addr("admin"))
}

fn addr_key(v: &serde_json::Value) -> &'static str {
    if v.get("link").is_some() {
        "link"
    } else {
        "listen"
    }
}

impl VaultProcess {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // Sending a signal to our own child: no memory safety involved,
            // but libc::kill is an FFI call, so go through the kill command.
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// GET on the admin listener; returns (status code, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        crate::http_get(self.admin_addr, path)
    }
}

impl Drop for VaultProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
