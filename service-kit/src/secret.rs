//! Reading secrets such as HSM PINs: from a file (owner-only permissions
//! recommended) or an environment variable, never from the command line.

use std::path::Path;

use zeroize::Zeroizing;

use crate::Error;

/// Reads a secret from `file` if given, else from the environment variable
/// `env_var`. Surrounding whitespace (a trailing newline) is removed.
/// Refuses a secret file that other users may read or write: a PIN or key
/// that another account on the host can read is no longer a secret.
fn check_private(path: &Path, what: &'static str) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| Error::Secret {
        what,
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Secret {
            what,
            reason: format!(
                "{} is open to other users (mode {mode:04o}); make it readable by its owner only \
                 (chmod 600)",
                path.display()
            ),
        });
    }
    Ok(())
}

pub fn read(
    file: Option<&Path>,
    env_var: &str,
    what: &'static str,
) -> Result<Zeroizing<String>, Error> {
    let raw = if let Some(path) = file {
        check_private(path, what)?;
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| Error::Secret {
            what,
            reason: format!("cannot read {}: {e}", path.display()),
        })?)
    } else {
        match std::env::var(env_var) {
            Ok(v) => Zeroizing::new(v),
            Err(_) => {
                return Err(Error::Secret {
                    what,
                    reason: format!(
                        "set a file in the configuration or the environment variable {env_var}"
                    ),
                })
            }
        }
    };
    let trimmed = Zeroizing::new(raw.trim().to_owned());
    if trimmed.is_empty() {
        return Err(Error::Secret {
            what,
            reason: "it is empty".into(),
        });
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_or_env() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pin");
        std::fs::write(&p, "1234\n").unwrap();
        let mode = |m| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
        };
        // Readable by others: refused, whatever it holds.
        mode(0o644);
        let e = read(Some(&p), "X", "HSM PIN").unwrap_err().to_string();
        assert!(e.contains("open to other users (mode 0644)"), "{e}");
        mode(0o620);
        assert!(read(Some(&p), "X", "HSM PIN").is_err());
        mode(0o600);
        assert_eq!(
            read(Some(&p), "SK_UNSET_PIN", "HSM PIN").unwrap().as_str(),
            "1234"
        );
        let e = read(None, "SK_UNSET_PIN_XYZ", "HSM PIN")
            .unwrap_err()
            .to_string();
        assert!(e.contains("SK_UNSET_PIN_XYZ"), "{e}");
        std::fs::write(&p, "  \n").unwrap();
        assert!(read(Some(&p), "X", "HSM PIN").is_err());
        assert!(read(Some(&dir.path().join("nope")), "X", "HSM PIN").is_err());
    }
}
