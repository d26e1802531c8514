//! `chatd` configuration: a TOML file, overridden by environment variables
//! `CHATD_<SECTION>__<KEY>` (see `ops/config/chatd.example.toml`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use service_kit::admin::AdminConfig;
use service_kit::logging::LogConfig;

use crate::proxy_protocol::ProxyPolicy;

pub const ENV_PREFIX: &str = "CHATD_";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChatdConfig {
    /// This instance's name, in logs, metrics and `LinkHello`.
    pub instance: String,
    /// Folder for the account directory and the key files. Relative paths
    /// in this file are relative to the config file's folder.
    pub data_dir: PathBuf,
    pub listen: ListenConfig,
    pub limits: LimitsConfig,
    pub vault: VaultConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// WebSocket listener (`ws://`; put TLS in front in production).
    pub addr: String,
    /// Set SO_REUSEPORT so several chatd processes share the port (one
    /// process is limited by its open-file limit).
    pub reuse_port: bool,
    /// Connections this process accepts at once; more are refused.
    pub max_connections: usize,
    /// WebSocket read buffer per connection, bytes. The tungstenite default
    /// (128 KiB) costs ~138 KB per idle connection; 4 KiB costs ~7 KB.
    pub ws_read_buffer: usize,
    /// WebSocket write buffer per connection, bytes.
    pub ws_write_buffer: usize,
    /// Expect a PROXY protocol v2 header on every connection and take the
    /// client's address from it (for per-address limits and logs), as a
    /// TCP load balancer in front sends it. Off by default.
    pub proxy_protocol: bool,
    /// Addresses or CIDR ranges of the load balancers allowed to send that
    /// header. With `proxy_protocol` on, a connection from anywhere else is
    /// refused.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Seconds from TCP accept to a completed Noise handshake.
    pub handshake_timeout_secs: u64,
    /// New connections per source address per second (token bucket).
    pub handshakes_per_ip_per_sec: f64,
    pub handshake_burst: f64,
    /// Largest frame accepted from clients (≤ 4096, SPEC 4.4).
    pub max_frame_len: u32,
    /// Tunnels one connection may hold open.
    pub max_tunnels_per_connection: u32,
    /// Frames per second per connection (token bucket).
    pub messages_per_sec: f64,
    pub message_burst: f64,
    /// Vault operations (tunnel opens and client tunnel frames) per account
    /// per minute, across its connections on this process.
    pub vault_ops_per_minute: u32,
    /// Connections one account may hold at once on this process.
    pub max_connections_per_account: u32,
    /// Seconds without a frame or pong before closing (pings at half).
    pub idle_timeout_secs: u64,
    /// Seconds a connection may leave its outgoing queue full.
    pub slow_consumer_secs: u64,
    /// Outgoing frames queued per connection.
    pub outbound_queue: usize,
    /// Seconds a drain waits for in-flight tunnel requests.
    pub drain_deadline_secs: u64,
    /// Seconds between re-checks that a connected device is still enrolled.
    pub revocation_check_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Link listeners of the vault replicas (`host:port`). chatd finds the
    /// leader among them and follows leader changes.
    pub replicas: Vec<String>,
    /// The vault fleet's link public key (hex), printed by `hsm-vault init`.
    pub link_key: String,
    /// Links kept open to the leader.
    pub links: usize,
    /// Seconds to connect and handshake with a replica.
    pub connect_timeout_secs: u64,
    /// Seconds a tunnel open waits for a leader link before answering
    /// `vault_unavailable`.
    pub open_wait_secs: u64,
}

impl Default for ChatdConfig {
    fn default() -> Self {
        ChatdConfig {
            instance: "chatd-1".into(),
            data_dir: PathBuf::from("chatd-data"),
            listen: ListenConfig::default(),
            limits: LimitsConfig::default(),
            vault: VaultConfig::default(),
            admin: AdminConfig::listening_on("127.0.0.1:7080"),
            log: LogConfig::default(),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            addr: "127.0.0.1:7000".into(),
            reuse_port: false,
            max_connections: 15_000,
            ws_read_buffer: 4096,
            ws_write_buffer: 4096,
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            handshake_timeout_secs: 10,
            handshakes_per_ip_per_sec: 20.0,
            handshake_burst: 40.0,
            max_frame_len: 4096,
            max_tunnels_per_connection: 4,
            messages_per_sec: 50.0,
            message_burst: 100.0,
            vault_ops_per_minute: 60,
            max_connections_per_account: 8,
            idle_timeout_secs: 60,
            slow_consumer_secs: 10,
            outbound_queue: 64,
            drain_deadline_secs: 20,
            revocation_check_secs: 60,
        }
    }
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            replicas: vec!["127.0.0.1:7100".into()],
            link_key: String::new(),
            links: 2,
            connect_timeout_secs: 5,
            open_wait_secs: 5,
        }
    }
}

impl ChatdConfig {
    pub fn load(path: Option<&Path>) -> Result<Self, crate::Error> {
        // CHATD_CONFIG is the command line's, CHATD_FAILPOINT a test build's
        // crash switch (`directory::FAILPOINT_VAR`): neither is a key.
        let mut cfg: ChatdConfig =
            service_kit::config::load(path, ENV_PREFIX, &["CONFIG", "FAILPOINT"])?;
        if cfg.data_dir.is_relative() {
            if let Some(base) = path.and_then(Path::parent) {
                cfg.data_dir = base.join(&cfg.data_dir);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), crate::Error> {
        let bad = |m: &str| crate::Error::Config(m.to_owned());
        let l = &self.limits;
        if l.max_frame_len < 64 || l.max_frame_len as usize > protocol_spec::limits::MAX_FRAME {
            return Err(bad("limits.max_frame_len must be between 64 and 4096"));
        }
        if l.max_tunnels_per_connection == 0
            || l.idle_timeout_secs == 0
            || l.handshake_timeout_secs == 0
        {
            return Err(bad("limits: tunnels and timeouts must be at least 1"));
        }
        if l.outbound_queue < 2 * l.max_tunnels_per_connection as usize {
            return Err(bad(
                "limits.outbound_queue must be at least twice max_tunnels_per_connection",
            ));
        }
        if self.vault.links == 0 {
            return Err(bad("vault.links must be at least 1"));
        }
        if self.listen.ws_read_buffer < 1024 {
            return Err(bad("listen.ws_read_buffer must be at least 1024"));
        }
        if self.listen.proxy_protocol && self.listen.trusted_proxies.is_empty() {
            return Err(bad(
                "listen.proxy_protocol needs listen.trusted_proxies: the load balancers' addresses",
            ));
        }
        self.proxy_policy()?;
        Ok(())
    }

    /// The PROXY protocol policy, when `listen.proxy_protocol` is on.
    pub fn proxy_policy(&self) -> Result<Option<ProxyPolicy>, crate::Error> {
        if !self.listen.proxy_protocol {
            return Ok(None);
        }
        ProxyPolicy::new(&self.listen.trusted_proxies)
            .map(Some)
            .map_err(crate::Error::Config)
    }

    pub fn directory_path(&self) -> PathBuf {
        self.data_dir.join("directory.sqlite")
    }

    pub fn static_key_path(&self) -> PathBuf {
        self.data_dir.join("chatd.key")
    }

    pub fn link_key_path(&self) -> PathBuf {
        self.data_dir.join("link.key")
    }

    pub fn secs(v: u64) -> Duration {
        Duration::from_secs(v)
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// Every key in the commented example operators copy is a real one
    /// (sections refuse unknown keys) with a value chatd accepts.
    #[test]
    fn the_example_configuration_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops/config/chatd.example.toml");
        ChatdConfig::load(Some(&path)).unwrap();
    }
}
