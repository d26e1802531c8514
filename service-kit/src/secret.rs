//! Reading secrets such as HSM PINs: from a file (owner-only permissions
//! recommended) or an environment variable, never from the command line.

use std::path::Path;

use zeroize::Zeroizing;

use crate::Error;

/// Reads a secret from `file` if given, else from the environment variable
/// `env_var`. Surrounding whitespace (a trailing newline) is removed.
pub fn read(
    file: Option<&Path>,
    env_var: &str,
    what: &'static str,
) -> Result<Zeroizing<String>, Error> {
    let raw = if let Some(path) = file {
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
