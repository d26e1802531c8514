//! The real `backupctl` binary against real `hsm-vault` and `chatd`
//! processes on loopback: every command, every refusal and its exit code,
//! tampered backups, a network drop during a login, one password typed in
//! two Unicode forms, the last attempt asked on a pseudo-terminal,
//! interrupted restores that leave nothing behind, object-storage
//! settings, and a 1 GiB round trip with the process's peak memory printed
//! (not asserted).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use protocol_spec::error::RootKeyError;
use protocol_spec::root_key::RootKey;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use testkit::chatd::{ChatdFixture, ChatdOptions, ChatdProcess};
use testkit::vault::{VaultFixture, VaultOptions, VaultProcess};

const PASSWORD: &str = "correct horse battery";

// ---------------------------------------------------------------- harness

struct Stack {
    vault: VaultFixture,
    _vault_proc: VaultProcess,
    chatd: ChatdFixture,
    chatd_proc: ChatdProcess,
    chatd_port: u16,
}

fn stack(max_attempts: u32) -> Stack {
    let vault = VaultFixture::init(VaultOptions {
        max_attempts,
        ..VaultOptions::default()
    });
    let vault_proc = vault.spawn();
    // A fixed port, so a restarted chatd is where the profile says.
    let chatd_port = testkit::free_port();
    let chatd = ChatdFixture::new(
        &vault,
        &[vault_proc.link_addr],
        ChatdOptions {
            port: chatd_port,
            ..ChatdOptions::default()
        },
    );
    let chatd_proc = chatd.spawn();
    Stack {
        vault,
        _vault_proc: vault_proc,
        chatd,
        chatd_proc,
        chatd_port,
    }
}

/// One device: a folder with a profile (and, later, its key files).
struct Device {
    dir: tempfile::TempDir,
    profile: PathBuf,
}

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        self
    }

    fn fails(&self, code: i32, needle: &str) -> &Self {
        assert_eq!(self.code, code, "expected exit {code}: {self:#?}");
        // One sentence on one line, saying what to do.
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "one error line: {self:#?}");
        assert!(
            errors[0].contains(needle),
            "expected {needle:?} in the error: {self:#?}"
        );
        self
    }
}

impl Device {
    fn for_stack(s: &Stack, account: &str) -> Device {
        Device::with(
            &format!("ws://127.0.0.1:{}", s.chatd_port),
            &s.chatd.static_key.to_hex(),
            s.vault.fleet.fleet_id.as_str(),
            &s.vault.fleet.tunnel_key.to_hex(),
            account,
        )
    }

    /// A device whose profile points at nothing (for local-only commands).
    fn offline() -> Device {
        let k = "22".repeat(32);
        Device::with("ws://127.0.0.1:9", &k, "test-fleet", &k, "alice")
    }

    fn with(url: &str, chatd_key: &str, fleet_id: &str, fleet_key: &str, account: &str) -> Device {
        let dir = tempfile::Builder::new()
            .prefix("backupctl-e2e-")
            .tempdir()
            .unwrap();
        let profile = dir.path().join("profile.toml");
        std::fs::write(
            &profile,
            format!(
                "chatd_url = \"{url}\"\nchatd_key = \"{chatd_key}\"\nfleet_id = \"{fleet_id}\"\n\
                 fleet_key = \"{fleet_key}\"\naccount = \"{account}\"\ndevice_key_file = \"device.key\"\n"
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

    fn run(&self, args: &[&str]) -> Out {
        self.run_with(args, None)
    }

    fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Out {
        run(self.command(args), stdin)
    }

    fn enroll(&self, s: &Stack) {
        let code = s.chatd.invite("alice");
        let out = self.run(&["enroll", "--code", &code]);
        assert!(out.ok().stdout.contains("enrolled"), "{out:#?}");
    }

    fn enable_password(&self, password: &str) {
        self.run_with(
            &["enable", "--password-stdin"],
            Some(&format!("{password}\n")),
        )
        .ok();
    }

    fn restore_password(&self, src: &Path, to: &Path, password: &str) -> Out {
        self.run_with(
            &[
                "restore",
                src.to_str().unwrap(),
                "--to",
                to.to_str().unwrap(),
                "--password-stdin",
            ],
            Some(&format!("{password}\n")),
        )
    }

    /// Random data (`len` bytes from `seed`) in the file `data`, backed up
    /// to the file `name`: the data and the backup's path.
    fn backup_random(&self, name: &str, len: usize, seed: u64) -> (Vec<u8>, PathBuf) {
        let src = self.path("data");
        let data = random_file(&src, len, seed);
        let backup = self.path(name);
        self.backup(&src, &backup, &[]).ok();
        (data, backup)
    }

    fn backup(&self, src: &Path, to: &Path, extra: &[&str]) -> Out {
        let mut args = vec![
            "backup",
            src.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.run(&args)
    }
}

fn run(mut c: Command, stdin: Option<&str>) -> Out {
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn backupctl");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        // The command may exit before reading (a refusal): ignore EPIPE.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    std::fs::write(path, &data).unwrap();
    data
}

/// The 64-digit key as `enable --manual` prints it (indented lines).
fn printed_key(stdout: &str) -> String {
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("    "))
        .map(str::trim)
        .collect();
    assert_eq!(lines.len(), 4, "four lines of four groups: {stdout}");
    lines.join("\n")
}

/// Files in `dir` other than the ones named (to catch leftovers such as
/// temporary `.partial` files).
fn extra_files(dir: &Path, known: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !known.contains(&n.as_str()))
        .collect()
}

// ------------------------------------------------------------------ tests

const COMMANDS: [&str; 7] = [
    "enroll",
    "enable",
    "status",
    "backup",
    "restore",
    "change-password",
    "disable",
];

/// `backupctl ARGS --help` at a fixed width, with no profile in the
/// environment (clap shows the variable's value).
fn help(args: &[&str]) -> String {
    let out = Command::new(testkit::bin("backupctl"))
        .args(args)
        .arg("--help")
        .env("COLUMNS", "100")
        .env_remove("BACKUPCTL_PROFILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?} --help exits 0");
    String::from_utf8(out.stdout).unwrap()
}

/// Every command's `--help` exits 0, teaches (examples, exit codes), and
/// matches `tests/golden/backupctl-help.txt`. If a change is intended,
/// rerun with `E2EBK_BLESS=1` and review the diff.
#[test]
fn help_of_every_command_exits_0_and_matches_its_golden_file() {
    let top = help(&[]);
    for needle in ["EXIT CODES", "WHERE SECRETS COME FROM", "BACKUPCTL_PROFILE"] {
        assert!(top.contains(needle), "--help lacks {needle}");
    }
    let mut all = format!("$ backupctl --help\n{top}");
    for sub in COMMANDS {
        let text = help(&[sub]);
        assert!(text.contains("Example"), "{sub} --help has no examples");
        assert!(
            text.contains("Exit codes"),
            "{sub} --help has no exit codes"
        );
        all.push_str(&format!("\n$ backupctl {sub} --help\n{text}"));
    }
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/backupctl-help.txt");
    if std::env::var_os("E2EBK_BLESS").is_some() {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &all).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).unwrap_or_default();
    assert!(
        expected == all,
        "backupctl --help changed; if intended, rerun with E2EBK_BLESS=1 and review {}",
        golden.display()
    );
    // Usage errors are exit 2.
    let out = Command::new(testkit::bin("backupctl"))
        .args(["restore", "x", "--to", "y"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn local_problems_have_their_exit_codes() {
    let d = Device::offline();
    // No profile at all.
    let out = run(
        {
            let mut c = Command::new(testkit::bin("backupctl"));
            c.arg("status").env_remove("BACKUPCTL_PROFILE");
            c
        },
        None,
    );
    out.fails(2, "BACKUPCTL_PROFILE");
    // A profile that does not exist.
    let mut c = Command::new(testkit::bin("backupctl"));
    c.args(["status", "--profile", "/nonexistent/profile.toml"]);
    run(c, None).fails(9, "does not exist");
    // Not enrolled: no device key.
    let out = d.run(&["status"]);
    assert_eq!(out.code, 8, "{out:#?}");
    assert!(out.stderr.contains("enroll"), "{out:#?}");
    // No backup key on this device.
    let src = d.path("data");
    random_file(&src, 1000, 1);
    d.backup(&src, &d.path("b"), &[]).fails(
        5,
        "no backup key on this device; run `backupctl enable`, or restore first",
    );
    // enable --manual works offline (the escrow note is best effort).
    d.run(&["enable", "--manual"]).ok();
    // A key file others can read is refused, with the fix.
    let key_file = d.path("backup.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    d.backup(&src, &d.path("b"), &[]).fails(9, "chmod 600");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Missing source, existing destination.
    d.backup(&d.path("missing"), &d.path("b"), &[])
        .fails(9, "missing");
    d.backup(&src, &d.path("b"), &[]).ok();
    d.backup(&src, &d.path("b"), &[]).fails(9, "already exists");
    d.backup(&src, &d.path("b"), &["--overwrite"]).ok();
    let bad_chunk = d.backup(&src, &d.path("c"), &["--chunk-size", "3KiB"]);
    assert_eq!(bad_chunk.code, 2, "{bad_chunk:#?}");
    // Restore onto an existing file, from a missing file.
    let restored = d.path("restored");
    std::fs::write(&restored, b"keep me").unwrap();
    d.run(&[
        "restore",
        d.path("b").to_str().unwrap(),
        "--to",
        restored.to_str().unwrap(),
        "--cached-key",
    ])
    .fails(9, "already exists");
    assert_eq!(std::fs::read(&restored).unwrap(), b"keep me");
    d.run(&[
        "restore",
        d.path("nope").to_str().unwrap(),
        "--to",
        d.path("r2").to_str().unwrap(),
        "--cached-key",
    ])
    .fails(9, "nope");
    // Both the backup and the secret on standard input.
    d.run_with(&["restore", "-", "--to", "x", "--key-stdin"], Some(""))
        .fails(2, "standard input");
    // Vault commands without a reachable chatd: retryable, exit 6 (after
    // retries), but first the device must be enrolled: exit 8 without a key.
    d.run_with(
        &["enable", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    )
    .fails(8, "not enrolled");
    let out = d.run_with(&["enroll", "--code-stdin"], Some("ABCD-EFGH\n"));
    out.fails(6, "try again");
}

#[test]
fn enroll_enable_backup_restore_round_trip() {
    let s = stack(5);
    let a = Device::for_stack(&s, "alice");
    let code = s.chatd.invite("alice");
    let out = a.run(&["enroll", "--code", &code]);
    assert!(
        out.ok().stdout.contains("now enrolled for account alice"),
        "{out:#?}"
    );
    // Same device, same code: already enrolled, no code needed.
    let out = a.run(&["enroll", "--code", &code]);
    assert!(out.ok().stdout.contains("already enrolled"), "{out:#?}");
    // Another device cannot reuse the code.
    let b = Device::for_stack(&s, "alice");
    b.run(&["enroll", "--code", &code])
        .fails(8, "invalid, expired or already used");
    b.run(&["status"]).fails(8, "not enrolled");

    let out = a.run(&["status"]);
    assert!(out.ok().stdout.contains("vault        none"), "{out:#?}");
    assert!(out.stdout.contains("enrolled"), "{out:#?}");
    // Restore with a password before enabling: not registered.
    let src = a.path("chats.tar");
    let data = random_file(&src, 3 * 1024 * 1024 + 17, 7);
    // Passwords: empty and short are refused before anything happens.
    a.run_with(&["enable", "--password-stdin"], Some("\n"))
        .fails(2, "empty");
    a.run_with(&["enable", "--password-stdin"], Some("short\n"))
        .fails(2, "at least 8");
    a.enable_password(PASSWORD);
    assert!(a.path("backup.key").exists());
    a.run_with(
        &["enable", "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    )
    .fails(
        1,
        "password backups are already enabled; use change-password, or enable --password --replace",
    );
    let out = a.run(&["status"]);
    assert!(
        out.ok()
            .stdout
            .contains("registered: 5 of 5 password attempts remaining"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("backup key   cached"), "{out:#?}");

    let backup = a.path("chats.backup");
    a.backup(&src, &backup, &[]).ok();
    let restored = a.path("restored.tar");
    a.restore_password(&backup, &restored, PASSWORD).ok();
    assert_eq!(std::fs::read(&restored).unwrap(), data, "byte-identical");
    // Streaming both ways through standard input and output.
    let mut c = a.command(&["backup", "-", "--to", "-"]);
    c.stdin(std::fs::File::open(&src).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let piped = c.output().unwrap();
    assert!(piped.status.success());
    let piped_backup = a.path("piped.backup");
    std::fs::write(&piped_backup, &piped.stdout).unwrap();
    let mut c = a.command(&["restore", "-", "--to", "-", "--cached-key"]);
    c.stdin(std::fs::File::open(&piped_backup).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, data);

    // A second device, enrolled with its own code, restores with the
    // password and caches the key; its backups restore on the first.
    let code = s.chatd.invite("alice");
    b.run(&["enroll", "--code", &code]).ok();
    b.backup(&src, &b.path("x"), &[]).fails(5, "no backup key");
    let restored_b = b.path("restored.tar");
    let out = b.restore_password(&backup, &restored_b, PASSWORD);
    assert!(
        out.ok().stdout.contains("cached the backup key"),
        "{out:#?}"
    );
    assert_eq!(std::fs::read(&restored_b).unwrap(), data);
    let backup_b = b.path("from-b.backup");
    b.backup(&src, &backup_b, &[]).ok();
    let restored_a = a.path("from-b.tar");
    a.run(&[
        "restore",
        backup_b.to_str().unwrap(),
        "--to",
        restored_a.to_str().unwrap(),
        "--cached-key",
    ])
    .ok();
    assert_eq!(std::fs::read(&restored_a).unwrap(), data);
    // Every successful login reset the count.
    let out = a.run(&["status"]);
    assert!(out.ok().stdout.contains("5 of 5"), "{out:#?}");

    // Forgotten password: --replace escrows this device's key under a new
    // password; the old password is gone, the old backups stay readable.
    a.run_with(
        &["enable", "--password-stdin", "--replace"],
        Some("replacement password\n"),
    )
    .ok();
    let replaced = a.path("replaced.tar");
    a.restore_password(&backup, &replaced, PASSWORD)
        .fails(3, "4 attempts remain");
    assert!(!replaced.exists());
    a.restore_password(&backup, &replaced, "replacement password")
        .ok();
    assert_eq!(std::fs::read(&replaced).unwrap(), data);
}

#[test]
fn wrong_passwords_count_down_then_the_key_is_erased() {
    let s = stack(3);
    let a = Device::for_stack(&s, "alice");
    a.enroll(&s);
    a.enable_password(PASSWORD);
    let (data, backup) = a.backup_random("data.backup", 100_000, 3);
    let out = a.path("out");

    a.restore_password(&backup, &out, "wrong password 1").fails(
        3,
        "wrong password: 2 attempts remain; at 0 the escrowed key is erased for good",
    );
    assert!(!out.exists());
    let st = a.run(&["status"]);
    assert!(st.ok().stdout.contains("registered: 2 of 3"), "{st:#?}");
    a.restore_password(&backup, &out, "wrong password 2")
        .fails(3, "wrong password: 1 attempt remains");
    let locked = "the escrowed backup key was erased after too many wrong passwords; backups protected by it cannot be recovered with a password (use the 64-digit key if you kept one)";
    a.restore_password(&backup, &out, "wrong password 3")
        .fails(4, locked);
    // The right password no longer works.
    a.restore_password(&backup, &out, PASSWORD).fails(4, locked);
    assert!(!out.exists());
    let st = a.run(&["status"]);
    assert!(st.ok().stdout.contains("vault        locked"), "{st:#?}");
    // The device's cached key still restores (it is the 64-digit key).
    a.run(&[
        "restore",
        backup.to_str().unwrap(),
        "--to",
        out.to_str().unwrap(),
        "--cached-key",
    ])
    .ok();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // Password backups can be enabled again: the device's key is escrowed
    // under the new password, so old backups are recoverable once more.
    a.enable_password("a brand new password");
    let again = a.path("again");
    a.restore_password(&backup, &again, "a brand new password")
        .ok();
    assert_eq!(std::fs::read(&again).unwrap(), data);
}

#[test]
fn manual_key_restores_and_tampered_backups_leave_nothing() {
    let s = stack(5);
    let a = Device::for_stack(&s, "alice");
    a.enroll(&s);
    a.enable_password(PASSWORD);
    // --manual shows the same key the password protects, and mentions the
    // escrow that `disable` would remove.
    let out = a.run(&["enable", "--manual"]);
    out.ok();
    assert!(out.stdout.contains("Write it down"), "{out:#?}");
    assert!(out.stderr.contains("backupctl disable"), "{out:#?}");
    let key_text = printed_key(&out.stdout);
    assert!(RootKey::parse_text(&key_text).is_ok());

    // A fresh device (never enrolled) restores with the typed key.
    let src = a.path("data");
    let data = random_file(&src, 50_000, 11);
    let backup = a.path("one.backup");
    a.backup(&src, &backup, &["--chunk-size", "4KiB"]).ok();
    let other = Device::offline();
    let restored = other.path("restored");
    let restore_key = |d: &Device, src: &Path, to: &Path, key: &str| {
        d.run_with(
            &[
                "restore",
                src.to_str().unwrap(),
                "--to",
                to.to_str().unwrap(),
                "--key-stdin",
            ],
            Some(key),
        )
    };
    restore_key(&other, &backup, &restored, &format!("{key_text}\n")).ok();
    assert_eq!(std::fs::read(&restored).unwrap(), data);

    // A mistyped key names the group, and nothing is written.
    let typo_out = other.path("typo");
    let mut bad = key_text.replace('\n', " ");
    bad.replace_range(25..26, "x"); // group 6 holds characters 25..29
    restore_key(&other, &backup, &typo_out, &bad).fails(2, "group 6");
    let digits: Vec<char> = key_text.replace('\n', " ").chars().collect();
    let typo = (25..29)
        .flat_map(|pos| "0123456789abcdef".chars().map(move |c| (pos, c)))
        .map(|(pos, c)| {
            let mut t = digits.clone();
            t[pos] = c;
            t.into_iter().collect::<String>()
        })
        .find(|t| {
            matches!(
                RootKey::parse_text(t),
                Err(RootKeyError::ChecksumAt { group: 6 })
            )
        })
        .expect("a one-digit typo in group 6 that the check value locates");
    restore_key(&other, &backup, &typo_out, &typo).fails(2, "group 6 looks wrong");
    assert!(!typo_out.exists());

    // Tampering. Chunks are 4 KiB + 16-byte tag after a 60-byte header.
    let bytes = std::fs::read(&backup).unwrap();
    let chunk = 4096 + 16;
    let at = |i: usize| 60 + i * chunk;
    let second = a.path("two.backup");
    a.backup(&src, &second, &["--chunk-size", "4KiB"]).ok();
    let other_bytes = std::fs::read(&second).unwrap();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("truncated at a chunk boundary", bytes[..at(5)].to_vec()));
    cases.push(("truncated mid-chunk", bytes[..at(5) + 100].to_vec()));
    cases.push(("truncated in the header", bytes[..30].to_vec()));
    let mut flipped = bytes.clone();
    flipped[at(3) + 100] ^= 0x01;
    cases.push(("one byte flipped", flipped));
    let mut reordered = bytes.clone();
    reordered[at(2)..at(3)].copy_from_slice(&bytes[at(3)..at(4)]);
    reordered[at(3)..at(4)].copy_from_slice(&bytes[at(2)..at(3)]);
    cases.push(("chunks reordered", reordered));
    let mut swapped = bytes.clone();
    swapped[at(2)..at(3)].copy_from_slice(&other_bytes[at(2)..at(3)]);
    cases.push(("chunk swapped in from another backup", swapped));
    let mut salt = bytes.clone();
    salt[20] ^= 0x80;
    cases.push(("header salt edited", salt));
    let mut size = bytes.clone();
    size[9] = 13;
    cases.push(("header chunk size edited", size));
    let mut reserved = bytes.clone();
    reserved[11] = 1;
    cases.push(("header reserved byte edited", reserved));
    let mut extra = bytes.clone();
    extra.extend_from_slice(&bytes[at(1)..at(2)]);
    cases.push(("a chunk appended", extra));
    let out_dir = tempfile::tempdir().unwrap();
    for (what, tampered) in &cases {
        let bad = a.path("tampered.backup");
        std::fs::write(&bad, tampered).unwrap();
        let target = out_dir.path().join("restored");
        let out = restore_key(&other, &bad, &target, &key_text);
        assert_eq!(out.code, 7, "{what}: {out:#?}");
        assert!(!target.exists(), "{what}: output left behind");
        assert!(
            extra_files(out_dir.path(), &[]).is_empty(),
            "{what}: temporary files left behind"
        );
    }
    // Another key entirely.
    let stranger = Device::offline();
    let out = stranger.run(&["enable", "--manual"]);
    let stranger_key = printed_key(&out.ok().stdout);
    let target = out_dir.path().join("restored");
    restore_key(&other, &backup, &target, &stranger_key).fails(7, "different key");
    assert!(!target.exists());
}

#[test]
fn change_password_keeps_the_key_and_disable_removes_it() {
    let s = stack(5);
    let a = Device::for_stack(&s, "alice");
    a.enroll(&s);
    a.enable_password(PASSWORD);
    let (data, backup) = a.backup_random("old.backup", 200_000, 5);
    let cached_before = std::fs::read(a.path("backup.key")).unwrap();

    // A wrong old password changes nothing.
    a.run_with(
        &["change-password", "--password-stdin"],
        Some("not the password\nnew password 123\n"),
    )
    .fails(3, "4 attempts remain");
    a.run_with(
        &["change-password", "--password-stdin"],
        Some(&format!("{PASSWORD}\nshort\n")),
    )
    .fails(2, "at least 8");
    a.run_with(
        &["change-password", "--password-stdin"],
        Some(&format!("{PASSWORD}\nnew password 123\n")),
    )
    .ok();
    let out = a.path("out");
    a.restore_password(&backup, &out, PASSWORD)
        .fails(3, "attempts remain");
    assert!(!out.exists());
    // The new password releases the same key: the old backup restores.
    a.restore_password(&backup, &out, "new password 123").ok();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(std::fs::read(a.path("backup.key")).unwrap(), cached_before);

    // Disable: needs --yes off a terminal, then the password.
    a.run_with(&["disable", "--password-stdin"], Some("new password 123\n"))
        .fails(2, "--yes");
    a.run_with(
        &["disable", "--password-stdin", "--yes"],
        Some("wrong one!\n"),
    )
    .fails(3, "attempts remain");
    assert!(a.path("backup.key").exists());
    a.run_with(
        &["disable", "--password-stdin", "--yes"],
        Some("new password 123\n"),
    )
    .ok();
    let st = a.run(&["status"]);
    assert!(st.ok().stdout.contains("vault        none"), "{st:#?}");
    assert!(st.stdout.contains("backup key   none"), "{st:#?}");
    assert!(!a.path("backup.key").exists());
    a.backup(&a.path("data"), &a.path("new.backup"), &[])
        .fails(5, "no backup key");
    a.restore_password(&backup, &a.path("out2"), "new password 123")
        .fails(5, "not enabled");
    a.run_with(
        &["disable", "--password-stdin", "--yes"],
        Some("new password 123\n"),
    )
    .fails(5, "not enabled");
}

// --------------------------------------------------------- escrow epoch

/// The vault's clock, read as `backupctl` words it, just before and just
/// after `f` runs: a registration made during `f` carries one of the two
/// (unless `f` spans more than a minute boundary, which it does not).
fn minutes_around(f: impl FnOnce()) -> [String; 2] {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let before = now();
    f();
    let after = now();
    [before, after].map(backup_client::escrow::utc)
}

fn says_one_of(text: &str, times: &[String; 2]) -> bool {
    times.iter().any(|t| text.contains(t.as_str()))
}

/// Device A registers; device B, another enrolled device of the account,
/// resets the forgotten password. A's `status` says the escrow was
/// replaced, when, and that it was not A (exit 11), and keeps saying so;
/// B's does not. A device that never saw an epoch starts tracking quietly.
#[test]
fn status_reports_a_replacement_made_on_another_device_and_when() {
    let s = stack(5);
    let a = Device::for_stack(&s, "alice");
    a.enroll(&s);
    a.enable_password(PASSWORD);
    let st = a.run(&["status"]);
    assert!(
        st.ok()
            .stdout
            .contains("(password backups enabled); the escrow this device last saw"),
        "{st:#?}"
    );
    assert!(a.path("profile.escrow-epoch").exists());
    let (data, backup) = a.backup_random("a.backup", 50_000, 31);

    // B never saw an epoch: it starts tracking, no alarm.
    let b = Device::for_stack(&s, "alice");
    b.enroll(&s);
    let st = b.run(&["status"]);
    assert!(st.ok().stdout.contains("now tracks this one"), "{st:#?}");
    assert!(!st.stderr.contains("replaced"), "{st:#?}");

    // B: forgotten password. B caches no key, so a new one is escrowed.
    let replaced_at = minutes_around(|| {
        b.run_with(
            &["enable", "--password-stdin", "--replace"],
            Some("b's brand new password\n"),
        )
        .ok();
    });

    for _ in 0..2 {
        // A is told, every time, until it accepts or replaces the escrow.
        let st = a.run(&["status"]);
        st.fails(11, "escrow replaced");
        let error = st
            .stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap();
        assert!(says_one_of(error, &replaced_at), "the time: {st:#?}");
        assert!(
            error.contains("by another device (a forgotten-password reset)"),
            "{st:#?}"
        );
        assert!(error.contains("its password no longer works"), "{st:#?}");
        assert!(
            error.contains("backupctl enable --password --replace"),
            "{st:#?}"
        );
        assert!(
            st.stdout.contains("NOT the escrow this device last saw"),
            "{st:#?}"
        );
        assert!(
            st.stdout.contains("registered: 5 of 5"),
            "the rest of status is still there: {st:#?}"
        );
    }
    // B made it: nothing to report there.
    let st = b.run(&["status"]);
    assert!(
        st.ok()
            .stdout
            .contains("(forgotten-password reset); the escrow this device last saw"),
        "{st:#?}"
    );
    assert!(says_one_of(&st.stdout, &replaced_at), "{st:#?}");

    // A's old password is gone, and B's escrow does not hold A's key: a
    // password restore of A's backup fails, and accepts nothing.
    let out = a.path("out");
    a.restore_password(&backup, &out, PASSWORD)
        .fails(3, "wrong password");
    a.restore_password(&backup, &out, "b's brand new password")
        .fails(7, "");
    a.run(&["status"]).fails(11, "escrow replaced");

    // A escrows its own key again: now B is the one told.
    let again_at = minutes_around(|| {
        a.run_with(
            &["enable", "--password-stdin", "--replace"],
            Some("a takes it back\n"),
        )
        .ok();
    });
    a.run(&["status"]).ok();
    let st = b.run(&["status"]);
    st.fails(11, "escrow replaced");
    assert!(says_one_of(&st.stderr, &again_at), "{st:#?}");
    a.restore_password(&backup, &out, "a takes it back").ok();
    assert_eq!(std::fs::read(&out).unwrap(), data);

    // Older state (no remembered epoch): tracked quietly again.
    std::fs::remove_file(b.path("profile.escrow-epoch")).unwrap();
    let st = b.run(&["status"]);
    assert!(st.ok().stdout.contains("now tracks this one"), "{st:#?}");
}

/// A password changed on another device is reported as such on this one
/// (it keeps the key); a password restore with the new password accepts
/// it; and the device that disabled backups does not report its own
/// deletion, while the other says the escrow it knew is gone.
#[test]
fn status_reports_a_password_changed_on_another_device_until_a_restore_accepts_it() {
    let s = stack(5);
    let a = Device::for_stack(&s, "alice");
    a.enroll(&s);
    a.enable_password(PASSWORD);
    let (data, backup) = a.backup_random("a.backup", 50_000, 32);

    // B restores with the password (so it caches K and accepts the
    // escrow), then changes the password.
    let b = Device::for_stack(&s, "alice");
    b.enroll(&s);
    b.restore_password(&backup, &b.path("restored"), PASSWORD)
        .ok();
    let changed_at = minutes_around(|| {
        b.run_with(
            &["change-password", "--password-stdin"],
            Some(&format!("{PASSWORD}\nchanged on b 123\n")),
        )
        .ok();
    });
    let st = b.run(&["status"]);
    assert!(
        st.ok()
            .stdout
            .contains("(password change); the escrow this device last saw"),
        "{st:#?}"
    );

    // A is told, and keeps being told: status alone accepts nothing.
    for _ in 0..2 {
        let st = a.run(&["status"]);
        st.fails(11, "password changed");
        assert!(says_one_of(&st.stderr, &changed_at), "{st:#?}");
        assert!(st.stderr.contains("by another device"), "{st:#?}");
        assert!(
            st.stderr.contains("a password change keeps the backup key"),
            "{st:#?}"
        );
        assert!(!st.stderr.contains("forgotten-password"), "{st:#?}");
    }

    // The person knows the new password: a restore with it accepts the
    // escrow on A too.
    let out = a.path("out");
    a.restore_password(&backup, &out, "changed on b 123").ok();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let st = a.run(&["status"]);
    assert!(
        st.ok()
            .stdout
            .contains("(password change); the escrow this device last saw"),
        "{st:#?}"
    );

    // A disables: it forgets the escrow it deleted; B notes it is gone.
    a.run_with(
        &["disable", "--password-stdin", "--yes"],
        Some("changed on b 123\n"),
    )
    .ok();
    assert!(!a.path("profile.escrow-epoch").exists());
    let st = a.run(&["status"]);
    assert!(st.ok().stdout.contains("vault        none"), "{st:#?}");
    assert!(!st.stdout.contains("escrow "), "{st:#?}");
    let st = b.run(&["status"]);
    assert!(
        st.ok()
            .stdout
            .contains("escrow       none; the one this device last saw"),
        "{st:#?}"
    );
}

/// A TCP proxy in front of chatd that, when armed, holds back the fourth
/// binary WebSocket message a client sends (after the Noise handshake,
/// `TunnelOpen` and the `Status` every login asks first: the `LoginStart`
/// of a password restore) and reports it.
struct HoldProxy {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
    held: mpsc::Receiver<()>,
}

fn hold_proxy(target: SocketAddr) -> HoldProxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let (tx, held) = mpsc::channel();
    let flag = armed.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(target) else {
                continue;
            };
            let hold = flag.load(Ordering::SeqCst);
            let tx = tx.clone();
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            // chatd -> client: plain copy; when chatd goes away, so does
            // the client's connection.
            std::thread::spawn(move || {
                let (mut from, to) = (s2, c2);
                let mut buf = [0u8; 16384];
                let mut to_w = to.try_clone().unwrap();
                while let Ok(n) = from.read(&mut buf) {
                    if n == 0 || to_w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || client_to_server(client, server, hold, &tx));
        }
    });
    HoldProxy { addr, armed, held }
}

fn client_to_server(
    mut client: TcpStream,
    mut server: TcpStream,
    hold: bool,
    tx: &mpsc::Sender<()>,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut upgraded = false;
    let mut binary_messages = 0;
    let mut holding = false;
    let mut buf = [0u8; 16384];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if holding {
            continue;
        }
        pending.extend_from_slice(&buf[..n]);
        if !upgraded {
            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let request: Vec<u8> = pending.drain(..end + 4).collect();
            if server.write_all(&request).is_err() {
                break;
            }
            upgraded = true;
        }
        // Whole client frames: FIN/opcode, mask bit + length, extended
        // length, 4-byte mask, payload.
        while pending.len() >= 2 {
            let len7 = (pending[1] & 0x7f) as usize;
            let masked = pending[1] & 0x80 != 0;
            let (ext, len) = match len7 {
                126 if pending.len() >= 4 => {
                    (2, u16::from_be_bytes([pending[2], pending[3]]) as usize)
                }
                127 if pending.len() >= 10 => (
                    8,
                    u64::from_be_bytes(pending[2..10].try_into().unwrap()) as usize,
                ),
                126 | 127 => break,
                n => (0, n),
            };
            let total = 2 + ext + if masked { 4 } else { 0 } + len;
            if pending.len() < total {
                break;
            }
            let frame: Vec<u8> = pending.drain(..total).collect();
            if frame[0] & 0x0f == 0x2 {
                binary_messages += 1;
                if hold && binary_messages == 4 {
                    holding = true;
                    let _ = tx.send(());
                    break;
                }
            }
            if server.write_all(&frame).is_err() {
                return;
            }
        }
    }
    let _ = server.shutdown(std::net::Shutdown::Both);
}

#[test]
fn network_drop_mid_login_and_chatd_down_are_retryable_and_change_nothing() {
    let mut s = stack(5);
    let proxy = hold_proxy(SocketAddr::from(([127, 0, 0, 1], s.chatd_port)));
    let via_proxy = |account: &str| {
        Device::with(
            &format!("ws://{}", proxy.addr),
            &s.chatd.static_key.to_hex(),
            s.vault.fleet.fleet_id.as_str(),
            &s.vault.fleet.tunnel_key.to_hex(),
            account,
        )
    };
    let a = via_proxy("alice");
    a.enroll(&s);
    a.enable_password(PASSWORD);
    let (data, backup) = a.backup_random("data.backup", 300_000, 9);
    // A second device with no cached key: a restore that fails must not
    // cache anything.
    let b = via_proxy("alice");
    b.enroll(&s);
    // The first status starts tracking the escrow epoch; the second is
    // what an unchanged vault shows from then on.
    assert!(b
        .run(&["status"])
        .ok()
        .stdout
        .contains("now tracks this one"));
    let status_before = b.run(&["status"]);
    assert!(status_before.ok().stdout.contains("registered: 5 of 5"));
    assert!(status_before
        .stdout
        .contains("the escrow this device last saw"));

    // chatd dies while the restore is logging in.
    proxy.armed.store(true, Ordering::SeqCst);
    let out_path = b.path("restored");
    let out = restore_while_chatd_dies(&mut s, &proxy, &b, &backup, &out_path);
    out.fails(6, "try again");
    assert!(
        out.stderr.contains("password attempt may have been used"),
        "{out:#?}"
    );
    assert!(!out_path.exists(), "no output after a failed restore");
    assert!(!b.path("backup.key").exists(), "no key cached");
    proxy.armed.store(false, Ordering::SeqCst);

    // chatd is stopped: status is retryable, exit 6.
    let started = Instant::now();
    b.run(&["status"]).fails(6, "try again");
    eprintln!(
        "status with chatd down gave up after {:?}",
        started.elapsed()
    );

    // chatd back on the same port: the vault's record is as it was.
    s.chatd_proc = s.chatd.spawn();
    let status_after = b.run(&["status"]);
    assert_eq!(status_after.ok().stdout, status_before.stdout);
    b.restore_password(&backup, &out_path, PASSWORD).ok();
    assert_eq!(std::fs::read(&out_path).unwrap(), data);
    assert!(b.path("backup.key").exists());
}

/// A password restore through the armed `proxy`, with chatd killed while
/// the proxy holds the restore's `LoginStart`: what `backupctl` said.
fn restore_while_chatd_dies(
    s: &mut Stack,
    proxy: &HoldProxy,
    d: &Device,
    backup: &Path,
    out: &Path,
) -> Out {
    let mut c = d.command(&[
        "restore",
        backup.to_str().unwrap(),
        "--to",
        out.to_str().unwrap(),
        "--password-stdin",
    ]);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    proxy
        .held
        .recv_timeout(Duration::from_secs(30))
        .expect("the restore reached its login");
    s.chatd_proc.kill9();
    wait_out(child, Duration::from_secs(30))
}

fn wait_out(mut child: Child, timeout: Duration) -> Out {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            return Out {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
        }
        assert!(Instant::now() < deadline, "backupctl did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `c` to completion, sampling its peak resident set (VmHWM, KiB).
fn run_sampled(mut c: Command) -> (Out, u64, Duration) {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = c.spawn().unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut hwm = 0u64;
    while child.try_wait().unwrap().is_none() {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            if let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                hwm = hwm.max(kib);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = started.elapsed();
    let out = child.wait_with_output().unwrap();
    (
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        hwm,
        elapsed,
    )
}

fn sha256_file(path: &Path) -> [u8; 32] {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().into()
}

fn round_trip_with_memory(d: &Device, label: &str, len: u64) {
    let src = d.path(&format!("{label}.src"));
    let backup = d.path(&format!("{label}.backup"));
    let restored = d.path(&format!("{label}.restored"));
    // Source: ChaCha8 keystream, hashed as it is written.
    let mut rng = ChaCha8Rng::seed_from_u64(len);
    let mut h = Sha256::new();
    let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        h.update(&buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
    drop(f);
    let source_hash: [u8; 32] = h.finalize().into();

    let (out, backup_hwm, backup_time) = run_sampled(d.command(&[
        "backup",
        src.to_str().unwrap(),
        "--to",
        backup.to_str().unwrap(),
    ]));
    out.ok();
    std::fs::remove_file(&src).unwrap();
    let (out, restore_hwm, restore_time) = run_sampled(d.command(&[
        "restore",
        backup.to_str().unwrap(),
        "--to",
        restored.to_str().unwrap(),
        "--cached-key",
    ]));
    out.ok();
    assert_eq!(
        sha256_file(&restored),
        source_hash,
        "{label}: byte-identical"
    );
    let backup_len = std::fs::metadata(&backup).unwrap().len();
    std::fs::remove_file(&backup).unwrap();
    std::fs::remove_file(&restored).unwrap();
    println!(
        "backupctl {label}: backup VmHWM {backup_hwm} KiB ({:.1} MiB) in {backup_time:?}; \
         restore VmHWM {restore_hwm} KiB ({:.1} MiB) in {restore_time:?}; backup file {backup_len} bytes",
        backup_hwm as f64 / 1024.0,
        restore_hwm as f64 / 1024.0,
    );
}

#[test]
fn large_round_trips_are_byte_identical_and_print_peak_memory() {
    let d = Device::offline();
    d.run(&["enable", "--manual"]).ok();
    round_trip_with_memory(&d, "64MiB", 64 << 20);
    round_trip_with_memory(&d, "1GiB", 1 << 30);
}

// ------------------------------------------- one password on every device

/// "café au lait" typed as NFC on one device and as NFD (with a no-break
/// space) on another is one password (SPEC 7.8): registered in one form,
/// it logs in with the other through the real vault, and the count resets.
/// A password preparation refuses is refused before anything is sent.
#[test]
fn a_password_registered_as_nfc_logs_in_as_nfd() {
    let s = stack(5);
    let a = Device::for_stack(&s, "alice");
    a.enroll(&s);
    let nfc = "caf\u{e9} au lait, s'il vous pla\u{ee}t";
    let nfd = "cafe\u{301} au\u{a0}lait, s'il vous plai\u{302}t";
    assert_ne!(nfc.as_bytes(), nfd.as_bytes());
    a.enable_password(nfc);
    let (data, backup) = a.backup_random("data.backup", 100_000, 21);

    // A second device, whose keyboard produces the decomposed form.
    let b = Device::for_stack(&s, "alice");
    b.enroll(&s);
    let out = b.path("restored");
    b.restore_password(&backup, &out, nfd).ok();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    let st = b.run(&["status"]);
    assert!(st.ok().stdout.contains("5 of 5"), "{st:#?}");

    // A tab cannot be typed on every device: refused, nothing spent.
    std::fs::remove_file(&out).unwrap();
    b.restore_password(&backup, &out, "caf\u{e9}\tau lait")
        .fails(2, "no password attempt was used");
    let st = b.run(&["status"]);
    assert!(st.ok().stdout.contains("5 of 5"), "{st:#?}");
    // And a new password is measured in its prepared form.
    b.run_with(
        &["change-password", "--password-stdin"],
        Some(&format!("{nfd}\ncafe\u{301}123\n")),
    )
    .fails(2, "has 7 characters");
}

// ------------------------------------------------------ the last attempt

/// Runs `backupctl ARGS` on a pseudo-terminal (standard input, output and
/// error all on it, and it the controlling terminal, as at a keyboard).
fn on_terminal(d: &Device, args: &[&str]) -> rexpect::session::PtySession {
    let mut c = d.command(args);
    c.env("COLUMNS", "200");
    rexpect::session::spawn_command(c, Some(60_000)).expect("spawn backupctl on a pty")
}

/// Waits for a program on a terminal to end and returns its exit code.
fn exit_code(p: &rexpect::session::PtySession) -> i32 {
    match p.process().wait().unwrap() {
        rexpect::process::WaitStatus::Exited(_, code) => code,
        other => panic!("backupctl did not exit normally: {other:?}"),
    }
}

/// Two wrong passwords on a 3-attempt record: one attempt left.
fn burn_to_one(a: &Device, backup: &Path, out: &Path) {
    for wrong in ["wrong password 1", "wrong password 2"] {
        a.restore_password(backup, out, wrong).fails(3, "attempt");
    }
    let st = a.run(&["status"]);
    assert!(st.ok().stdout.contains("1 of 3"), "{st:#?}");
}

/// With one attempt left, `backupctl` says that a wrong try erases the key
/// for good and asks on a terminal before sending the `LoginStart`: "no"
/// spends nothing. Without a terminal it warns on standard error and goes
/// on.
#[test]
fn the_last_attempt_is_confirmed_on_a_terminal_and_warned_without_one() {
    let s = stack(3);
    let a = Device::for_stack(&s, "alice");
    a.enroll(&s);
    a.enable_password(PASSWORD);
    let (data, backup) = a.backup_random("data.backup", 50_000, 31);
    let out = a.path("out");
    let (b, o) = (backup.to_str().unwrap(), out.to_str().unwrap());
    burn_to_one(&a, &backup, &out);

    // On a terminal: the question comes before the attempt; "no" cancels.
    let mut p = on_terminal(&a, &["restore", b, "--to", o, "--password"]);
    p.exp_string("Backup password: ").unwrap();
    p.send_line("wrong password 3").unwrap();
    p.exp_string("One password attempt is left").unwrap();
    p.exp_string("erases the escrowed backup key for good")
        .unwrap();
    p.exp_string("[y/N]").unwrap();
    p.send_line("n").unwrap();
    p.exp_string("cancelled; nothing was changed").unwrap();
    assert_eq!(exit_code(&p), 1);
    let st = a.run(&["status"]);
    assert!(st.ok().stdout.contains("1 of 3"), "nothing spent: {st:#?}");

    // "yes" with the right password: the login goes ahead and resets.
    let mut p = on_terminal(&a, &["restore", b, "--to", o, "--password"]);
    p.exp_string("Backup password: ").unwrap();
    p.send_line(PASSWORD).unwrap();
    p.exp_string("[y/N]").unwrap();
    p.send_line("y").unwrap();
    p.exp_string("restored 50000 bytes").unwrap();
    assert_eq!(exit_code(&p), 0);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    std::fs::remove_file(&out).unwrap();
    let st = a.run(&["status"]);
    assert!(st.ok().stdout.contains("3 of 3"), "{st:#?}");

    // Piped, with no terminal to ask: a warning, then the login.
    burn_to_one(&a, &backup, &out);
    let run = a.restore_password(&backup, &out, PASSWORD);
    run.ok();
    assert!(
        run.stderr
            .contains("warning: one password attempt is left: if this password is wrong"),
        "{run:#?}"
    );
}

/// A network failure after the last attempt's `LoginStart` went out says
/// that the key may now be erased and how to check, not that "one
/// attempt may have been used".
#[test]
fn an_interrupted_last_attempt_says_the_key_may_be_erased() {
    let mut s = stack(3);
    let proxy = hold_proxy(SocketAddr::from(([127, 0, 0, 1], s.chatd_port)));
    let a = Device::with(
        &format!("ws://{}", proxy.addr),
        &s.chatd.static_key.to_hex(),
        s.vault.fleet.fleet_id.as_str(),
        &s.vault.fleet.tunnel_key.to_hex(),
        "alice",
    );
    a.enroll(&s);
    a.enable_password(PASSWORD);
    let src = a.path("data");
    random_file(&src, 50_000, 32);
    let backup = a.path("data.backup");
    a.backup(&src, &backup, &[]).ok();
    let out = a.path("out");
    burn_to_one(&a, &backup, &out);
    proxy.armed.store(true, Ordering::SeqCst);
    let run = restore_while_chatd_dies(&mut s, &proxy, &a, &backup, &out);
    run.fails(6, "may now have erased the escrowed backup key");
    assert!(run.stderr.contains("run `backupctl status`"), "{run:#?}");
    assert!(
        !run.stderr
            .contains("one password attempt may have been used"),
        "{run:#?}"
    );
    proxy.armed.store(false, Ordering::SeqCst);
    // This time the LoginStart never reached the vault: still registered.
    s.chatd_proc = s.chatd.spawn();
    let st = a.run(&["status"]);
    assert!(st.ok().stdout.contains("1 of 3"), "{st:#?}");
}

// ------------------------------------------ interrupted restores leave nothing

/// A real `backupctl restore` of `backup` into the empty folder `into`,
/// sent `signal` once it has read `after` bytes (and, when `partial_first`,
/// once its named partial file has appeared). Returns how it ended.
fn interrupt_restore(
    d: &Device,
    backup: &Path,
    into: &Path,
    signal: rustix::process::Signal,
    named_partials: bool,
) -> std::process::ExitStatus {
    let out = into.join("restored.tar");
    let mut c = d.command(&[
        "restore",
        backup.to_str().unwrap(),
        "--to",
        out.to_str().unwrap(),
        "--cached-key",
    ]);
    if named_partials {
        c.env("E2EBK_NAMED_TEMP_FILES", "1");
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let io_file = format!("/proc/{}/io", child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    // Mid-restore: a good part of the backup read, and (for named partial
    // files) the partial file there with plaintext in it.
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the restore ended before the signal"
        );
        assert!(Instant::now() < deadline, "the restore never got going");
        let read = std::fs::read_to_string(&io_file)
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("rchar: "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        let partial_written = std::fs::read_dir(into)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false));
        if read > 64 << 20 && (partial_written || !named_partials) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    rustix::process::kill_process(pid, signal).unwrap();
    let status = child.wait().unwrap();
    assert!(!out.exists(), "no output after an interrupted restore");
    status
}

/// SIGINT, SIGTERM (and kill -9) during a large restore leave no file in
/// the target folder: the plaintext is written to an unnamed O_TMPFILE
/// file, or, where that is not used, to a named partial file removed on
/// the signal (and, after kill -9, by the next run).
#[test]
fn interrupted_restores_leave_no_file_in_the_target_folder() {
    use std::os::unix::process::ExitStatusExt;

    use rustix::process::Signal;
    let d = Device::offline();
    d.run(&["enable", "--manual"]).ok();
    let src = d.path("big.tar");
    random_file(&src, 384 << 20, 41);
    let backup = d.path("big.backup");
    d.backup(&src, &backup, &[]).ok();
    std::fs::remove_file(&src).unwrap();

    for named in [false, true] {
        for (signal, number) in [(Signal::INT, 2), (Signal::TERM, 15)] {
            let into = tempfile::tempdir().unwrap();
            let status = interrupt_restore(&d, &backup, into.path(), signal, named);
            assert_eq!(status.signal(), Some(number), "named {named}: {status:?}");
            assert!(
                extra_files(into.path(), &[]).is_empty(),
                "named {named}, signal {number}: left {:?}",
                extra_files(into.path(), &[])
            );
        }
    }
    // kill -9 cannot be caught: an unnamed file still leaves nothing.
    let into = tempfile::tempdir().unwrap();
    let status = interrupt_restore(&d, &backup, into.path(), Signal::KILL, false);
    assert_eq!(status.signal(), Some(9));
    assert!(extra_files(into.path(), &[]).is_empty());
    // A named partial file survives kill -9; the next run into the same
    // name removes it, since its process is gone.
    let status = interrupt_restore(&d, &backup, into.path(), Signal::KILL, true);
    assert_eq!(status.signal(), Some(9));
    let left = extra_files(into.path(), &[]);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with(".restored.tar.") && left[0].ends_with(".partial"));
    let out = into.path().join("restored.tar");
    let mut c = d.command(&[
        "restore",
        backup.to_str().unwrap(),
        "--to",
        out.to_str().unwrap(),
        "--cached-key",
    ]);
    c.env("E2EBK_NAMED_TEMP_FILES", "1");
    run(c, None).ok();
    assert_eq!(extra_files(into.path(), &[]), ["restored.tar"]);
}

// ------------------------------------------------------- object storage

/// file:// backups are private like local ones (mode 0600).
#[test]
fn file_url_backups_are_private_like_local_ones() {
    use std::os::unix::fs::PermissionsExt;
    let d = Device::offline();
    d.run(&["enable", "--manual"]).ok();
    let src = d.path("data");
    random_file(&src, 10_000, 51);
    let url_target = d.path("nested").join("via-url.backup");
    d.run(&[
        "backup",
        src.to_str().unwrap(),
        "--to",
        &format!("file://{}", url_target.display()),
    ])
    .ok();
    let mode = std::fs::metadata(&url_target).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "file:// backup mode {mode:o}");
}

/// A plain http:// S3 endpoint without AWS_ALLOW_HTTP is a final error
/// that says what to set, before any request is made.
#[test]
fn a_plain_http_endpoint_without_aws_allow_http_is_final_and_says_what_to_set() {
    let d = Device::offline();
    d.run(&["enable", "--manual"]).ok();
    let src = d.path("data");
    random_file(&src, 10_000, 52);
    let mut c = d.command(&["backup", src.to_str().unwrap(), "--to", "s3://bucket/key"]);
    c.env("AWS_ENDPOINT", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_ALLOW_HTTP");
    run(c, None).fails(10, "AWS_ALLOW_HTTP=true");
}
