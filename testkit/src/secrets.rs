//! Scanning what a run left behind for secret bytes: one list of named
//! needles (each also in the encodings a careless log line would use),
//! checked against files, logs, metrics pages and transcripts.

use std::path::{Path, PathBuf};

use base64::Engine;

/// Named secrets to look for.
#[derive(Debug, Default, Clone)]
pub struct SecretNeedles {
    needles: Vec<(String, Vec<u8>)>,
}

impl SecretNeedles {
    pub fn new() -> Self {
        SecretNeedles::default()
    }

    /// Adds `bytes` exactly as given (text forms, already encoded).
    pub fn exact(&mut self, name: &str, bytes: impl AsRef<[u8]>) -> &mut Self {
        let bytes = bytes.as_ref();
        assert!(!bytes.is_empty(), "needle {name} is empty");
        self.needles.push((name.to_owned(), bytes.to_vec()));
        self
    }

    /// Adds binary `bytes` raw, in lower and upper hex, and in standard
    /// and URL-safe base64 (with and without padding).
    pub fn binary(&mut self, name: &str, bytes: impl AsRef<[u8]>) -> &mut Self {
        let b = bytes.as_ref();
        let b64 = base64::engine::general_purpose::STANDARD.encode(b);
        let b64_url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        self.exact(name, b)
            .exact(&format!("{name} (hex)"), hex::encode(b))
            .exact(&format!("{name} (HEX)"), hex::encode_upper(b))
            .exact(
                &format!("{name} (base64)"),
                b64.trim_end_matches('=').as_bytes(),
            )
            .exact(&format!("{name} (base64url)"), b64_url)
    }

    /// Names of the needles found in `haystack`.
    pub fn found_in(&self, haystack: &[u8]) -> Vec<&str> {
        self.needles
            .iter()
            .filter(|(_, n)| crate::contains_bytes(haystack, n))
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Panics naming every needle found in `haystack`, and `place`.
    pub fn assert_absent(&self, haystack: &[u8], place: &str) {
        let found = self.found_in(haystack);
        assert!(found.is_empty(), "{found:?} found in {place}");
    }

    /// [`assert_absent`](Self::assert_absent) for every regular file under
    /// `root` except `except`; returns the files scanned.
    pub fn assert_absent_under(&self, root: &Path, except: &[PathBuf]) -> Vec<PathBuf> {
        let files: Vec<PathBuf> = files_under(root)
            .into_iter()
            .filter(|f| !except.contains(f))
            .collect();
        for f in &files {
            // A file may vanish between listing and reading (a log rotated,
            // a temporary file renamed): only what can be read is scanned.
            if let Ok(bytes) = std::fs::read(f) {
                self.assert_absent(&bytes, &f.display().to_string());
            }
        }
        files
    }
}

/// Every regular file under `root`, following no symbolic links.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}
