//! chatd's two static keys, kept as hex files with owner-only permissions:
//! `chatd.key` (Noise_IK responder; clients pin its public half) and
//! `link.key` (Noise_KK initiator towards the vault; replicas list its
//! public half in `link.chatd_keys`).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use protocol_spec::keys::StaticSecret;

use crate::Error;

/// Generates a key file; refuses to overwrite one.
pub fn generate(path: &Path) -> Result<StaticSecret, Error> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut seed[..]).map_err(|e| Error::Keys(format!("no randomness: {e}")))?;
    let key = StaticSecret::from_bytes(*seed);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::Keys(format!("{}: {e}", dir.display())))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Keys(format!("cannot create {}: {e}", path.display())))?;
    f.write_all(key.to_hex().as_bytes())
        .and_then(|_| f.write_all(b"\n"))
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::Keys(format!("cannot write {}: {e}", path.display())))?;
    Ok(key)
}

/// Loads a key file, refusing one that others can read.
pub fn load(path: &Path) -> Result<StaticSecret, Error> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::Keys(format!(
            "cannot read {}: {e} (run `chatd init` to create the keys)",
            path.display()
        ))
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::Keys(format!(
            "{} is readable by group or others; run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| Error::Keys(format!("cannot read {}: {e}", path.display())))?,
    );
    StaticSecret::from_hex(&text).map_err(|_| {
        Error::Keys(format!(
            "{} does not hold a 64-hex-digit key",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_load_and_refuse_loose_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.key");
        let k = generate(&p).unwrap();
        assert_eq!(load(&p).unwrap().public_key(), k.public_key());
        assert!(generate(&p).is_err(), "must not overwrite");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("chmod 600"));
    }
}
