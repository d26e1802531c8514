//! A real `chatd` on loopback, linked to a [`crate::vault::VaultFixture`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use protocol_spec::keys::{PublicKey, StaticSecret};

use crate::vault::VaultFixture;

/// Options for [`ChatdFixture::new`]; `extra_limits` is TOML inside
/// `[limits]`.
#[derive(Debug, Clone, Default)]
pub struct ChatdOptions {
    pub extra_limits: String,
    pub extra_listen: String,
    pub port: u16,
}

/// A configured (not yet running) chatd.
pub struct ChatdFixture {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub static_key: PublicKey,
}

/// A running `chatd serve`.
pub struct ChatdProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub log_path: PathBuf,
}

fn write_key(path: &std::path::Path, key: &StaticSecret) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("key file");
    f.write_all(key.to_hex().as_bytes()).expect("write key");
}

impl ChatdFixture {
    /// Writes keys and a config pointing at `vault_replicas`, whose link
    /// listeners accept `vault.chatd_key`.
    pub fn new(vault: &VaultFixture, vault_replicas: &[SocketAddr], opts: ChatdOptions) -> Self {
        Self::with_keys(
            &vault.chatd_key,
            &vault.fleet.link_key,
            vault_replicas,
            opts,
        )
    }

    /// Like [`ChatdFixture::new`] for any vault (a replicated one): chatd's
    /// link key and the vault fleet's link key.
    pub fn with_keys(
        chatd_link_key: &StaticSecret,
        vault_link_key: &PublicKey,
        vault_replicas: &[SocketAddr],
        opts: ChatdOptions,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("e2ebk-chatd-")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let mut seed = [0u8; 32];
        crate::fill_random(&mut seed);
        let static_key = StaticSecret::from_bytes(seed);
        write_key(&data.join("chatd.key"), &static_key);
        write_key(&data.join("link.key"), chatd_link_key);
        let replicas: Vec<String> = vault_replicas.iter().map(|a| format!("\"{a}\"")).collect();
        let config = dir.path().join("chatd.toml");
        std::fs::write(
            &config,
            format!(
                "instance = \"chatd-test\"\n\
                 data_dir = \"data\"\n\
                 [listen]\n\
                 addr = \"127.0.0.1:{}\"\n\
                 {}\n\
                 [limits]\n\
                 handshake_timeout_secs = 5\n\
                 {}\n\
                 [vault]\n\
                 replicas = [{}]\n\
                 link_key = \"{}\"\n\
                 links = 2\n\
                 connect_timeout_secs = 2\n\
                 open_wait_secs = 2\n\
                 [admin]\n\
                 listen = \"127.0.0.1:0\"\n\
                 [log]\n\
                 level = \"info,chatd=debug\"\n",
                opts.port,
                opts.extra_listen,
                opts.extra_limits,
                replicas.join(", "),
                vault_link_key.to_hex(),
            ),
        )
        .expect("write chatd config");
        ChatdFixture {
            dir,
            config,
            static_key: static_key.public_key(),
        }
    }

    /// A `chatd` command with this fixture's config.
    pub fn command(&self) -> Command {
        let mut c = Command::new(crate::bin("chatd"));
        c.arg("--config").arg(&self.config);
        c.env_remove("RUST_LOG");
        c
    }

    /// Runs `chatd accounts invite ACCOUNT` and returns the code.
    pub fn invite(&self, account: &str) -> String {
        let out = self
            .command()
            .args(["accounts", "invite", account, "--output", "json"])
            .output()
            .expect("run chatd accounts invite");
        assert!(
            out.status.success(),
            "invite failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v["code"].as_str().expect("code").to_owned()
    }

    pub fn directory_path(&self) -> PathBuf {
        self.dir.path().join("data").join("directory.sqlite")
    }

    pub fn spawn(&self) -> ChatdProcess {
        self.spawn_with(&[])
    }

    /// Like [`ChatdFixture::spawn`] with extra environment variables.
    pub fn spawn_with(&self, env: &[(&str, &str)]) -> ChatdProcess {
        let log_path = self
            .dir
            .path()
            .join(format!("chatd-{}.log", crate::unique()));
        let log = std::fs::File::create(&log_path).expect("log");
        let mut cmd = self.command();
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn chatd");
        let stdout = child.stdout.take().expect("stdout");
        let (addr, admin_addr) = crate::vault::wait_listening(stdout, &log_path);
        ChatdProcess {
            child: Some(child),
            addr,
            admin_addr,
            log_path,
        }
    }
}

impl ChatdProcess {
    /// The chatd process id (0 once it has exited and been reaped), for
    /// reading its memory and CPU time from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status();
        }
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn admin_get(&self, path: &str) -> (u16, String) {
        crate::http_get(self.admin_addr, path)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChatdProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
