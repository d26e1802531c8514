//! `hsm-vault` configuration: a TOML file, overridden by environment
//! variables `HSM_VAULT_<SECTION>__<KEY>` (see `ops/config/vault.example.toml`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use service_kit::admin::AdminConfig;
use service_kit::logging::LogConfig;

/// Environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "HSM_VAULT_";
/// Environment variable holding the user PIN when `hsm.pin_file` is unset.
pub const PIN_ENV: &str = "HSM_VAULT_PIN";
/// Environment variable holding the security officer PIN (key ceremony
/// approval only) when `hsm.so_pin_file` is unset.
pub const SO_PIN_ENV: &str = "HSM_VAULT_SO_PIN";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// This replica's name, in logs, metrics and `LinkWelcome`.
    pub replica_id: String,
    /// Folder for the store and the sealed fleet secrets. Relative paths in
    /// this file are relative to the config file's folder.
    pub data_dir: PathBuf,
    /// Consecutive failed logins after which the escrowed key is erased.
    /// Fixed for the whole fleet at `init` and sealed in `fleet.sealed`;
    /// here it is only a check: a replica whose configuration names
    /// another value refuses to start. Unset: whatever the fleet sealed.
    pub max_attempts: Option<u32>,
    /// Seconds a login may stay between KE2 and KE3.
    pub login_timeout_secs: u64,
    /// Worker threads that run the vault core (OPAQUE, HSM, commits) off
    /// the async runtime.
    pub workers: usize,
    /// Requests that may wait for a worker before new ones are refused with
    /// `overloaded`.
    pub max_queued_requests: usize,
    pub limits: LimitsConfig,
    pub hsm: HsmConfig,
    pub link: LinkConfig,
    pub admin: AdminConfig,
    pub control: ControlConfig,
    pub raft: RaftConfig,
    pub log: LogConfig,
}

/// Replication. Without `node_id` the vault runs single-node, committing to
/// its own fsynced store; with it, it is a member of a Raft group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// This replica's id in the group (stable forever; never reuse one).
    pub node_id: Option<u64>,
    /// Listener for the other replicas.
    pub listen: String,
    /// Address the others use to reach `listen`, if different.
    pub advertise: Option<String>,
    /// Source address for connections to other replicas (optional).
    pub bind_source: Option<String>,
    /// The longest round trip between two replicas of the group, in
    /// milliseconds (a few within one data centre, 20 to 80 between data
    /// centres on one continent, 200 or more across oceans). The timings
    /// below derive from it unless set ([`RaftConfig::timing`]).
    pub peer_round_trip_ms: u64,
    /// How often the leader contacts each follower; also how long one
    /// request to another replica may take (openraft gives each
    /// replication request one heartbeat interval).
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_min_ms: Option<u64>,
    pub election_timeout_max_ms: Option<u64>,
    /// Build a snapshot after this many log entries (and purge the log).
    pub snapshot_every: u64,
    /// Seconds a read or commit may wait for the majority.
    pub commit_timeout_secs: Option<u64>,
}

/// The Raft timings a replica runs with: what the configuration sets, the
/// rest derived from [`RaftConfig::peer_round_trip_ms`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub commit_timeout_secs: u64,
}

impl RaftConfig {
    /// The timings, derived from the round trip where not set:
    ///
    /// - a request on a fresh peer connection takes three round trips (TCP
    ///   connect, the Noise handshake, the request), and must fit in one
    ///   heartbeat interval: `heartbeat = max(100, 3 × rtt + 50)` ms;
    /// - an election waits several missed heartbeats:
    ///   `election_min = max(500, 4 × heartbeat)`, `election_max = 2 ×
    ///   election_min`;
    /// - a commit (append, fsync, confirmation) or a read waits
    ///   `max(5 s, 10 × rtt)` for its majority.
    ///
    /// At the default 10 ms these are 100, 500, 1000 ms and 5 s.
    pub fn timing(&self) -> RaftTiming {
        let rtt = self.peer_round_trip_ms;
        let heartbeat_ms = self.heartbeat_ms.unwrap_or_else(|| (3 * rtt + 50).max(100));
        let election_timeout_min_ms = self
            .election_timeout_min_ms
            .unwrap_or_else(|| (4 * heartbeat_ms).max(500));
        let election_timeout_max_ms = self
            .election_timeout_max_ms
            .unwrap_or(2 * election_timeout_min_ms);
        let commit_timeout_secs = self
            .commit_timeout_secs
            .unwrap_or_else(|| (10 * rtt).div_ceil(1000).max(5));
        RaftTiming {
            heartbeat_ms,
            election_timeout_min_ms,
            election_timeout_max_ms,
            commit_timeout_secs,
        }
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            node_id: None,
            listen: "127.0.0.1:7200".into(),
            advertise: None,
            bind_source: None,
            peer_round_trip_ms: 10,
            heartbeat_ms: None,
            election_timeout_min_ms: None,
            election_timeout_max_ms: None,
            snapshot_every: 5000,
            commit_timeout_secs: None,
        }
    }
}

/// Per-account limits the leader enforces for every chatd together (0
/// turns one off). They slow guessing and escrow churn; the attempt limit
/// itself is `max_attempts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Login starts per account per minute.
    pub login_starts_per_minute: u32,
    /// Replacements (`enable --password --replace`) per account per hour.
    pub replacements_per_hour: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = crate::core::limits::AccountLimits::default();
        LimitsConfig {
            login_starts_per_minute: d.login_starts_per_minute,
            replacements_per_hour: d.replacements_per_hour,
        }
    }
}

/// The control plane (membership commands): where a replica listens for
/// operators and whom it accepts, and, for `hsm-vault cluster`, the
/// operator's own key file and the fleet control key it pins.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Listener for operators' tools (a Raft replica only).
    pub listen: String,
    /// Address other replicas and tools use to reach `listen`, if different.
    pub advertise: Option<String>,
    /// Operator public keys (hex) accepted on the control listener.
    pub operator_keys: Vec<String>,
    /// For `hsm-vault cluster`: the operator's private key file (0600,
    /// made by `hsm-vault keys operator-key`); else
    /// `HSM_VAULT_OPERATOR_KEY_FILE`.
    pub operator_key_file: Option<PathBuf>,
    /// For `hsm-vault cluster`: the fleet control key to pin (hex, from
    /// `hsm-vault keys show`).
    pub fleet_key: Option<String>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: "127.0.0.1:7190".into(),
            advertise: None,
            operator_keys: Vec::new(),
            operator_key_file: None,
            fleet_key: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HsmConfig {
    /// Path of the PKCS#11 library (SoftHSM2 by default).
    pub module: PathBuf,
    /// Label of the token holding the master key.
    pub token_label: String,
    /// Label of the master key object.
    pub key_label: String,
    /// File holding the user PIN; when unset the PIN comes from
    /// `HSM_VAULT_PIN`. Never a command-line argument.
    pub pin_file: Option<PathBuf>,
    /// File holding the security officer PIN, used only by
    /// `hsm-vault keys approve`; else `HSM_VAULT_SO_PIN`.
    pub so_pin_file: Option<PathBuf>,
    /// Logged-in PKCS#11 sessions kept open (one per worker is enough).
    pub sessions: usize,
    /// Refuse to serve from a software token (SoftHSM, or any slot that
    /// does not report itself as hardware). Set it in production: a
    /// software token's key is a file on the replica's disk.
    pub require_hardware: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkConfig {
    /// Address of the listener for chatd links.
    pub listen: String,
    /// chatd link public keys (hex) allowed to connect. Several allow key
    /// rotation.
    pub chatd_keys: Vec<String>,
    /// Most tunnels open at once on one link.
    pub max_tunnels_per_link: u32,
    /// Seconds without a frame after which a tunnel is closed.
    pub tunnel_idle_timeout_secs: u64,
    /// Seconds a new link has to complete its handshake, and to deliver a
    /// record once it started.
    pub handshake_timeout_secs: u64,
    /// Most links open at once.
    pub max_links: usize,
    /// Address chatd should use to reach this replica's link listener, if it
    /// differs from `listen` (sent to chatd as a leader hint).
    pub advertise: Option<String>,
    /// Seconds a drain (SIGTERM) waits for tunnels with a request in
    /// flight before the links close.
    pub drain_deadline_secs: u64,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            replica_id: "vault-1".into(),
            data_dir: PathBuf::from("vault-data"),
            max_attempts: None,
            login_timeout_secs: 60,
            workers: 8,
            max_queued_requests: 1024,
            limits: LimitsConfig::default(),
            hsm: HsmConfig::default(),
            link: LinkConfig::default(),
            admin: AdminConfig::listening_on("127.0.0.1:7180"),
            control: ControlConfig::default(),
            raft: RaftConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for HsmConfig {
    fn default() -> Self {
        HsmConfig {
            module: PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
            token_label: "e2ebk-vault".into(),
            key_label: "e2ebk-master-v1".into(),
            pin_file: None,
            so_pin_file: None,
            sessions: 8,
            require_hardware: false,
        }
    }
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            listen: "127.0.0.1:7100".into(),
            chatd_keys: Vec::new(),
            max_tunnels_per_link: 10_000,
            tunnel_idle_timeout_secs: 120,
            handshake_timeout_secs: 10,
            max_links: 64,
            advertise: None,
            drain_deadline_secs: 10,
        }
    }
}

impl VaultConfig {
    /// Loads the file (if any) and environment overrides, resolves relative
    /// paths against the file's folder, and checks values.
    pub fn load(path: Option<&Path>) -> Result<Self, crate::Error> {
        let mut cfg: VaultConfig = service_kit::config::load(
            path,
            ENV_PREFIX,
            &[
                "PIN",
                "SO_PIN",
                "CONFIG",
                "FAILPOINT",
                "TEST_DISK_FAULTS",
                "OPERATOR_KEY_FILE",
                "FLEET_CONTROL_KEY",
            ],
        )?;
        let base = path
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        cfg.resolve_paths(&base);
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        if let Some(p) = self.hsm.pin_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.hsm.so_pin_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.control.operator_key_file.as_mut() {
            fix(p);
        }
    }

    fn validate(&self) -> Result<(), crate::Error> {
        let bad = |m: String| crate::Error::Service(service_kit::Error::Config(m));
        if let Some(n) = self.max_attempts {
            crate::secrets::FleetParams::new(n)?;
        }
        if self.workers == 0 || self.hsm.sessions == 0 {
            return Err(bad("workers and hsm.sessions must be at least 1".into()));
        }
        if self.login_timeout_secs == 0 || self.link.tunnel_idle_timeout_secs == 0 {
            return Err(bad("timeouts must be at least 1 second".into()));
        }
        let r = self.raft.timing();
        if self.raft.node_id.is_some()
            && (r.heartbeat_ms == 0
                || r.election_timeout_min_ms <= r.heartbeat_ms
                || r.election_timeout_max_ms <= r.election_timeout_min_ms
                || r.commit_timeout_secs == 0)
        {
            return Err(bad(format!(
                "raft: need 0 < heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms \
                 and commit_timeout_secs > 0 (with what is set and what peer_round_trip_ms = {} \
                 derives: {r:?})",
                self.raft.peer_round_trip_ms
            )));
        }
        if self.raft.node_id.is_some() && r.heartbeat_ms < 3 * self.raft.peer_round_trip_ms {
            tracing::warn!(
                heartbeat_ms = r.heartbeat_ms,
                peer_round_trip_ms = self.raft.peer_round_trip_ms,
                "raft.heartbeat_ms is shorter than three round trips between replicas: a request \
                 on a new peer connection cannot finish in time, and the group may not form; \
                 leave heartbeat_ms unset to derive it"
            );
        }
        for k in self
            .control
            .operator_keys
            .iter()
            .chain(&self.control.fleet_key)
        {
            protocol_spec::keys::PublicKey::from_hex(k)
                .map_err(|_| bad(format!("control: {k:?} is not 64 hex digits")))?;
        }
        for k in &self.link.chatd_keys {
            protocol_spec::keys::PublicKey::from_hex(k)
                .map_err(|_| bad(format!("link.chatd_keys: {k:?} is not 64 hex digits")))?;
        }
        Ok(())
    }

    /// Path of the sealed fleet secrets.
    pub fn fleet_secrets_path(&self) -> PathBuf {
        self.data_dir.join("fleet.sealed")
    }

    /// Refuses to serve a fleet whose sealed parameters differ from what
    /// this configuration says.
    pub fn check_fleet_params(
        &self,
        sealed: &crate::secrets::FleetParams,
    ) -> Result<(), crate::Error> {
        match self.max_attempts {
            Some(n) if n != sealed.max_attempts => Err(crate::Error::FleetParams(format!(
                "this configuration says max_attempts = {n}, but the fleet was initialised with \
                 {} (sealed in fleet.sealed, the same on every replica); remove max_attempts \
                 from the configuration or set it to {}",
                sealed.max_attempts, sealed.max_attempts
            ))),
            _ => Ok(()),
        }
    }

    /// Path of the record store.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("vault.redb")
    }

    /// Reads the user PIN from `hsm.pin_file` or `HSM_VAULT_PIN`.
    pub fn user_pin(&self) -> Result<zeroize::Zeroizing<String>, crate::Error> {
        Ok(service_kit::secret::read(
            self.hsm.pin_file.as_deref(),
            PIN_ENV,
            "HSM user PIN",
        )?)
    }

    /// Reads the security officer PIN from `hsm.so_pin_file` or
    /// `HSM_VAULT_SO_PIN`.
    pub fn so_pin(&self) -> Result<zeroize::Zeroizing<String>, crate::Error> {
        Ok(service_kit::secret::read(
            self.hsm.so_pin_file.as_deref(),
            SO_PIN_ENV,
            "HSM security officer PIN",
        )?)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn raft_timings_derive_from_the_round_trip_unless_set() {
        let mut r = RaftConfig::default();
        let t = r.timing();
        assert_eq!(
            (
                t.heartbeat_ms,
                t.election_timeout_min_ms,
                t.election_timeout_max_ms
            ),
            (100, 500, 1000)
        );
        assert_eq!(t.commit_timeout_secs, 5);
        r.peer_round_trip_ms = 200;
        let t = r.timing();
        assert_eq!(
            (
                t.heartbeat_ms,
                t.election_timeout_min_ms,
                t.election_timeout_max_ms
            ),
            (650, 2600, 5200)
        );
        assert!(
            t.heartbeat_ms >= 3 * 200,
            "a fresh connection's request fits"
        );
        r.peer_round_trip_ms = 1000;
        assert_eq!(r.timing().commit_timeout_secs, 10);
        r.heartbeat_ms = Some(70);
        r.election_timeout_max_ms = Some(9000);
        let t = r.timing();
        assert_eq!((t.heartbeat_ms, t.election_timeout_min_ms), (70, 500));
        assert_eq!(t.election_timeout_max_ms, 9000);
    }

    use super::*;

    /// The commented example is what operators copy: every key in it must
    /// be a real one (the sections refuse unknown keys) with a valid value,
    /// and what it shows uncommented must be the default.
    #[test]
    fn the_example_configuration_loads_and_shows_the_defaults() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/config/vault.example.toml");
        // Its placeholders for keys stand for real ones.
        let text = std::fs::read_to_string(example)
            .unwrap()
            .replace("<64 hex digits>", &"ab".repeat(32));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.toml");
        std::fs::write(&path, text).unwrap();
        let cfg = VaultConfig::load(Some(&path)).unwrap();
        let d = VaultConfig::default();
        assert_eq!(
            cfg.max_attempts, None,
            "the example leaves max_attempts to the fleet"
        );
        assert_eq!(
            cfg.limits.login_starts_per_minute,
            d.limits.login_starts_per_minute
        );
        assert_eq!(
            cfg.limits.replacements_per_hour,
            d.limits.replacements_per_hour
        );
        assert_eq!(cfg.link.drain_deadline_secs, d.link.drain_deadline_secs);
        assert_eq!(cfg.raft.commit_timeout_secs, d.raft.commit_timeout_secs);
        assert_eq!(cfg.raft.node_id, Some(1));
        assert_eq!(cfg.control.operator_keys, vec!["ab".repeat(32)]);
    }
}
