//! SoftHSM2 tokens in a temporary folder, initialised with `softhsm2-util`.
//!
//! SoftHSM reads `SOFTHSM2_CONF` once per process, at `C_Initialize`, so a
//! test that uses tokens in-process must run in its own process (nextest
//! does that) and set the variable with [`SoftHsm::activate`] first. Child
//! processes get it through [`SoftHsm::env`].

use std::path::{Path, PathBuf};
use std::process::Command;

/// A SoftHSM configuration with its own token folder.
pub struct SoftHsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

/// One initialised token.
#[derive(Debug, Clone)]
pub struct Token {
    pub label: String,
    pub pin: String,
    pub so_pin: String,
}

/// Path of the SoftHSM2 PKCS#11 module on this machine.
pub fn module_path() -> PathBuf {
    for p in [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("libsofthsm2.so not found: install softhsm2 (ops/test does)");
}

impl SoftHsm {
    pub fn new() -> Self {
        // E2EBK_KEEP_TMP=1 keeps every test's folder (logs, stores) for a
        // post-mortem.
        let dir = tempfile::Builder::new()
            .prefix("e2ebk-softhsm-")
            .disable_cleanup(std::env::var_os("E2EBK_KEEP_TMP").is_some())
            .tempdir()
            .expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir_all(&tokens).expect("token dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("write softhsm2.conf");
        SoftHsm { dir, conf }
    }

    /// Initialises a token with the given label and fixed test PINs.
    pub fn init_token(&self, label: &str) -> Token {
        let token = Token {
            label: label.to_owned(),
            pin: format!("{label}-user-pin"),
            so_pin: format!("{label}-so-pin"),
        };
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--init-token", "--free", "--label", label, "--pin"])
            .arg(&token.pin)
            .arg("--so-pin")
            .arg(&token.so_pin)
            .output()
            .expect("run softhsm2-util (install softhsm2)");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        token
    }

    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The folder holding the token files (to scan them for plaintext).
    pub fn token_dir(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    /// A scratch folder that lives as long as this SoftHSM.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Points this process's future `C_Initialize` at this configuration.
    /// Call before anything in the process loads the PKCS#11 module.
    pub fn activate(&self) {
        // Tests own their process under nextest; nothing else reads the
        // environment concurrently.
        std::env::set_var("SOFTHSM2_CONF", &self.conf);
    }

    /// The environment a child process needs to see these tokens.
    pub fn env(&self) -> (&'static str, PathBuf) {
        ("SOFTHSM2_CONF", self.conf.clone())
    }
}

impl Default for SoftHsm {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SoftHsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftHsm").field("conf", &self.conf).finish()
    }
}
