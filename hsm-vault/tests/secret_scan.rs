//! A secret scan of a whole stack's run (issue 15 item 5): three vault
//! replicas with their own SoftHSM tokens, chatd, and two devices running
//! the real `backupctl` through enrolment, password backups, a restore
//! with the password typed in another Unicode form, a wrong password, a
//! change of password and a restore on the second device.
//!
//! Then every place a secret could leak is searched for every secret of
//! the run, each in the encodings a careless line would use (raw, hex,
//! base64; the key also as typed and as written down):
//! - every file the stack wrote (replica stores, Raft logs, snapshots,
//!   sealed fleet secrets, SoftHSM's token folder, chatd's directory, the
//!   devices' profiles and backups, and every process's log);
//! - everything `backupctl` printed;
//! - every `/metrics` page, scraped while the stack ran;
//! - `ps` output and each process's command line and environment,
//!   including a `backupctl` waiting for its password.
//!
//! The secrets: both passwords in every form a keyboard or the preparation
//! of SPEC 7.8 gives them; the backup key K; the OPAQUE record and
//! `wrapped_K` the vault holds (read back by unsealing a replica's record
//! with its token, as only the HSM can); the fleet's sealed secrets; every
//! private key and PIN. A few files hold one secret by design (a PIN file,
//! a key file, the device's cached K): there, only that secret may appear,
//! and the file must be private to its owner.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hsm_vault::state::RecordBody;
use protocol_spec::ids::AccountId;
use protocol_spec::root_key::RootKey;
use testkit::chatd::{ChatdFixture, ChatdOptions};
use testkit::cluster::VaultCluster;
use testkit::secrets::{files_under, SecretNeedles};
use testkit::vault::VaultOptions;

/// The first password as one keyboard types it: an OHM SIGN (U+2126),
/// which SPEC 7.8's preparation maps to GREEK CAPITAL OMEGA, and
/// precomposed accents.
const FIRST_TYPED: &str = "Cr\u{e8}me br\u{fb}l\u{e9}e fa\u{e7}ade \u{2126}mega-7";
/// The same password as another keyboard gives it: decomposed accents.
const FIRST_NFD: &str = "Cre\u{300}me bru\u{302}le\u{301}e fac\u{327}ade \u{3a9}mega-7";
/// And as the preparation leaves it (NFC).
const FIRST_NFC: &str = "Cr\u{e8}me br\u{fb}l\u{e9}e fa\u{e7}ade \u{3a9}mega-7";
const SECOND_NFC: &str = "Zweites Pa\u{df}wort f\u{fc}r Gr\u{f6}\u{df}e 42";
const SECOND_NFD: &str = "Zweites Pa\u{df}wort fu\u{308}r Gro\u{308}\u{df}e 42";

/// One secret: its needles and the files that hold it by design.
struct Secret {
    needles: SecretNeedles,
    homes: Vec<PathBuf>,
}

struct Secrets(Vec<Secret>);

impl Secrets {
    fn add(&mut self, homes: &[PathBuf], f: impl FnOnce(&mut SecretNeedles)) {
        let mut needles = SecretNeedles::new();
        f(&mut needles);
        self.0.push(Secret {
            needles,
            homes: homes.to_vec(),
        });
    }

    /// Checks a place that is no secret's home.
    fn assert_absent(&self, haystack: &[u8], place: &str) {
        for s in &self.0 {
            s.needles.assert_absent(haystack, place);
        }
    }

    /// Checks every file under `root`; a secret's home may hold that
    /// secret (and nothing else), and must be readable by its owner only.
    /// Returns how many files were read.
    fn assert_absent_under(&self, root: &Path) -> usize {
        let mut scanned = 0;
        for file in files_under(root) {
            let Ok(bytes) = std::fs::read(&file) else {
                continue;
            };
            scanned += 1;
            for s in &self.0 {
                if s.homes.contains(&file) {
                    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
                    assert_eq!(
                        mode & 0o077,
                        0,
                        "{} holds a secret and is mode {mode:o}",
                        file.display()
                    );
                } else {
                    s.needles.assert_absent(&bytes, &file.display().to_string());
                }
            }
        }
        scanned
    }
}

/// A key file's key: its hex text, trimmed.
fn key_file(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    hex::decode(text.trim()).unwrap_or_else(|e| panic!("{} is not hex: {e}", path.display()))
}

/// A process's command line and environment, as `ps e` would show them.
fn proc_view(pid: u32) -> Vec<u8> {
    let mut out = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    out.extend(std::fs::read(format!("/proc/{pid}/environ")).unwrap());
    out
}

struct Device {
    dir: tempfile::TempDir,
    profile: PathBuf,
}

impl Device {
    fn new(chatd_url: &str, chatd: &ChatdFixture, cluster: &VaultCluster) -> Device {
        let dir = tempfile::Builder::new()
            .prefix("secret-scan-device-")
            .tempdir()
            .unwrap();
        let profile = dir.path().join("profile.toml");
        std::fs::write(
            &profile,
            format!(
                "chatd_url = \"{chatd_url}\"\nchatd_key = \"{}\"\nfleet_id = \"{}\"\n\
                 fleet_key = \"{}\"\naccount = \"scan\"\ndevice_key_file = \"device.key\"\n",
                chatd.static_key.to_hex(),
                cluster.fleet.fleet_id.as_str(),
                cluster.fleet.tunnel_key.to_hex(),
            ),
        )
        .unwrap();
        Device { dir, profile }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(testkit::bin("backupctl"));
        c.arg("--profile").arg(&self.profile).args(args);
        c.env_remove("BACKUPCTL_PROFILE").env_remove("RUST_LOG");
        c
    }

    /// Runs `backupctl ARGS` with `stdin`, expecting exit `code`; returns
    /// everything it printed. `seen` gets its command line and environment,
    /// read while it waited for its input.
    fn run(&self, args: &[&str], stdin: &str, code: i32, seen: &mut Vec<u8>) -> Vec<u8> {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        seen.extend(proc_view(child.id()));
        let mut pipe = child.stdin.take().unwrap();
        let _ = pipe.write_all(stdin.as_bytes());
        drop(pipe);
        let out = child.wait_with_output().unwrap();
        let mut printed = out.stdout.clone();
        printed.extend(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(code),
            "backupctl {args:?}: {}",
            String::from_utf8_lossy(&printed)
        );
        printed
    }
}

#[test]
fn no_secret_of_a_whole_run_reaches_a_file_log_metric_or_process_listing() {
    let mut cluster = VaultCluster::new(
        3,
        VaultOptions {
            max_attempts: 5,
            ..VaultOptions::default()
        },
    );
    cluster.start_all();
    cluster.form();
    let chatd = ChatdFixture::with_keys(
        &cluster.chatd_key,
        &cluster.fleet.link_key,
        &cluster.link_addrs(),
        ChatdOptions::default(),
    );
    let mut chatd_proc = chatd.spawn();
    let url = chatd_proc.url();
    let (a, b) = (
        Device::new(&url, &chatd, &cluster),
        Device::new(&url, &chatd, &cluster),
    );

    // The run. Everything printed and every process view is kept.
    let mut printed = Vec::new();
    let mut views = Vec::new();
    let data = a.path("chats.tar");
    let mut content = vec![0u8; 300_000];
    testkit::fill_random(&mut content);
    std::fs::write(&data, &content).unwrap();
    let backup = a.path("chats.backup");
    let (s, to_a, to_b) = (
        |p: &Path| p.to_str().unwrap().to_owned(),
        a.path("restored-a.tar"),
        b.path("restored-b.tar"),
    );
    for (d, name) in [(&a, "a"), (&b, "b")] {
        let code = chatd.invite("scan");
        printed.extend(d.run(&["enroll", "--code", &code], "", 0, &mut views));
        assert!(d.path("device.key").exists(), "device {name} enrolled");
    }
    printed.extend(a.run(
        &["enable", "--password-stdin"],
        &format!("{FIRST_TYPED}\n"),
        0,
        &mut views,
    ));
    printed.extend(a.run(
        &["backup", &s(&data), "--to", &s(&backup)],
        "",
        0,
        &mut views,
    ));
    printed.extend(a.run(
        &[
            "restore",
            &s(&backup),
            "--to",
            &s(&to_a),
            "--password-stdin",
        ],
        &format!("{FIRST_NFD}\n"),
        0,
        &mut views,
    ));
    assert_eq!(std::fs::read(&to_a).unwrap(), content);
    printed.extend(a.run(
        &[
            "restore",
            &s(&backup),
            "--to",
            &s(&a.path("wrong.tar")),
            "--password-stdin",
        ],
        "not the password at all\n",
        3,
        &mut views,
    ));
    printed.extend(a.run(
        &["change-password", "--password-stdin"],
        &format!("{FIRST_NFC}\n{SECOND_NFD}\n"),
        0,
        &mut views,
    ));
    printed.extend(b.run(
        &[
            "restore",
            &s(&backup),
            "--to",
            &s(&to_b),
            "--password-stdin",
        ],
        &format!("{SECOND_NFC}\n"),
        0,
        &mut views,
    ));
    assert_eq!(std::fs::read(&to_b).unwrap(), content);
    for d in [&a, &b] {
        printed.extend(d.run(&["status"], "", 0, &mut views));
    }

    // What the running stack shows: metrics, command lines, environments.
    let mut metrics = Vec::new();
    for i in 0..3 {
        let proc = cluster.procs[i].as_ref().unwrap();
        let (code, page) = proc.admin_get("/metrics");
        assert_eq!(code, 200);
        metrics.push((format!("replica {} /metrics", i + 1), page));
        views.extend(proc_view(proc.pid()));
    }
    let (code, page) = chatd_proc.admin_get("/metrics");
    assert_eq!(code, 200);
    metrics.push(("chatd /metrics".to_owned(), page));
    views.extend(proc_view(chatd_proc.pid()));
    let ps = Command::new("ps")
        .args(["-eww", "-o", "pid=,args="])
        .output()
        .unwrap()
        .stdout;
    assert!(!ps.is_empty());

    // Stop everything, so logs are complete and the stores can be opened.
    chatd_proc.signal(15);
    chatd_proc.wait_exit(Duration::from_secs(20));
    for i in 0..3 {
        cluster.signal(i, 15);
    }
    for p in cluster.procs.iter_mut().flatten() {
        p.wait_exit(Duration::from_secs(20));
    }
    let logs: Vec<String> = (0..3).map(|i| cluster.log(i)).collect();

    // What the vault holds, read back through replica 1's token.
    cluster.hsm.activate();
    let r1 = &cluster.replicas[0];
    let hsm = hsm_vault::hsm::Hsm::open(
        &hsm_vault::config::HsmConfig {
            module: testkit::softhsm::module_path(),
            token_label: r1.token.label.clone(),
            ..Default::default()
        },
        &r1.token.pin,
    )
    .unwrap();
    let fleet = hsm_vault::secrets::FleetSecrets::unseal_from_file(
        &hsm,
        &r1.dir.join("data").join("fleet.sealed"),
    )
    .unwrap();
    let account = AccountId::new("scan").unwrap();
    let store = hsm_vault::state::store::RecordStore::open(&cluster.store_path(0)).unwrap();
    let stored = store.get(&account).unwrap().expect("the account's record");
    let RecordBody::Registered(record) =
        hsm_vault::state::record::unseal(&hsm, &account, &stored).unwrap()
    else {
        panic!("the account is registered");
    };
    drop(store);
    let k = RootKey::from_bytes(key_file(&a.path("backup.key")).try_into().unwrap()).unwrap();
    assert_eq!(
        key_file(&b.path("backup.key")),
        k.expose().to_vec(),
        "both devices hold one K"
    );

    let mut secrets = Secrets(Vec::new());
    secrets.add(&[], |n| {
        for (name, pw) in [
            ("first password as typed", FIRST_TYPED),
            ("first password NFD", FIRST_NFD),
            ("first password NFC", FIRST_NFC),
            ("second password NFC", SECOND_NFC),
            ("second password NFD", SECOND_NFD),
        ] {
            n.binary(name, pw.as_bytes());
        }
    });
    let k_homes = [a.path("backup.key"), b.path("backup.key")];
    secrets.add(&k_homes, |n| {
        n.binary("K", k.expose())
            .exact("K as written down", k.to_text().as_bytes());
        for (i, line) in k.to_lines().lines().enumerate() {
            n.exact(&format!("K line {}", i + 1), line);
        }
    });
    let upload = &record.opaque_record;
    secrets.add(&[], |n| {
        n.binary("opaque record", upload)
            .binary("opaque record masking key", &upload[32..96])
            .binary("opaque envelope", &upload[96..])
            .binary("wrapped_K", record.wrapped_key)
            .binary("wrapped_K ciphertext", &record.wrapped_key[13..45]);
    });
    let setup = fleet.opaque_setup.serialize().to_vec();
    secrets.add(&[], |n| {
        n.binary("oprf seed", &setup[..64])
            .binary("opaque server setup", &setup)
            .binary("fleet tunnel key", fleet.tunnel_key.expose_secret())
            .binary("fleet link key", fleet.link_key.expose_secret())
            .binary("fleet peer key", fleet.peer_key.expose_secret());
    });
    for r in &cluster.replicas {
        let pin = r.token.pin.clone();
        secrets.add(&[r.dir.join("pin")], |n| {
            n.exact(&format!("{} PIN", r.token.label), &pin);
        });
    }
    // One operator key, which every replica's folder holds.
    let operator_homes: Vec<PathBuf> = cluster
        .replicas
        .iter()
        .map(|r| r.dir.join("operator.key"))
        .collect();
    secrets.add(&operator_homes, |n| {
        n.binary("operator key", cluster.operator_key.expose_secret());
    });
    let chatd_data = chatd.dir.path().join("data");
    for name in ["chatd.key", "link.key"] {
        let path = chatd_data.join(name);
        secrets.add(std::slice::from_ref(&path), |n| {
            n.binary(&format!("chatd {name}"), key_file(&path));
        });
    }
    for d in [&a, &b] {
        let path = d.path("device.key");
        secrets.add(std::slice::from_ref(&path), |n| {
            n.binary("device key", key_file(&path));
        });
    }

    // Every place.
    let mut scanned = 0;
    for root in [
        cluster.hsm.dir(),
        chatd.dir.path(),
        a.dir.path(),
        b.dir.path(),
    ] {
        scanned += secrets.assert_absent_under(root);
    }
    assert!(scanned > 20, "only {scanned} files found to scan");
    secrets.assert_absent(&printed, "what backupctl printed");
    for (place, page) in &metrics {
        secrets.assert_absent(page.as_bytes(), place);
    }
    secrets.assert_absent(&views, "a process's command line or environment");
    secrets.assert_absent(&ps, "ps output");
    for (i, log) in logs.iter().enumerate() {
        assert!(!log.is_empty(), "replica {} logged nothing", i + 1);
        secrets.assert_absent(log.as_bytes(), &format!("replica {}'s log", i + 1));
    }
    let chatd_log = chatd_proc.log();
    assert!(!chatd_log.is_empty());
    secrets.assert_absent(chatd_log.as_bytes(), "chatd's log");
}
