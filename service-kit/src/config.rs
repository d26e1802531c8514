//! Configuration: defaults, then a TOML file, then environment variables.
//!
//! An environment variable `PREFIX_SECTION__KEY=value` overrides `key` in
//! `[section]`; `PREFIX_KEY` overrides a top-level key. Values are parsed as
//! TOML scalars or arrays where they look like one (`PREFIX_LINK__CHATD_KEYS=["ab.."]`).

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Error;

/// Loads `T` from its defaults, the TOML file at `path` (if given; it must
/// exist), and environment variables starting with `env_prefix`, except the
/// ones named in `not_config` (secrets and switches that share the prefix,
/// like `PIN`).
pub fn load<T>(path: Option<&Path>, env_prefix: &str, not_config: &[&str]) -> Result<T, Error>
where
    T: DeserializeOwned + Serialize + Default,
{
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(p) = path {
        if !p.exists() {
            return Err(Error::ConfigMissing(p.display().to_string()));
        }
        fig = fig.merge(Toml::file_exact(p));
    }
    let ignored: Vec<String> = not_config.iter().map(|k| k.to_ascii_lowercase()).collect();
    fig = fig.merge(
        Env::prefixed(env_prefix)
            .filter(move |k| !ignored.iter().any(|i| k.as_str().eq_ignore_ascii_case(i)))
            .split("__"),
    );
    fig.extract().map_err(|e| Error::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        name: String,
        inner: Inner,
    }
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Inner {
        port: u16,
        keys: Vec<String>,
    }
    impl Default for Conf {
        fn default() -> Self {
            Conf {
                name: "default".into(),
                inner: Inner {
                    port: 1,
                    keys: vec![],
                },
            }
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API, test only
    fn file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "name = \"file\"\n[inner]\nport = 2\n").unwrap();
        let c: Conf = load(Some(&p), "SKTEST_NONE_", &[]).unwrap();
        assert_eq!(c.name, "file");
        assert_eq!(c.inner.port, 2);
        figment::Jail::expect_with(|jail| {
            jail.set_env("SKTEST_INNER__PORT", "3");
            jail.set_env("SKTEST_INNER__KEYS", "[\"a\", \"b\"]");
            jail.set_env("SKTEST_PIN", "1234");
            assert!(
                load::<Conf>(Some(&p), "SKTEST_", &[]).is_err(),
                "unknown keys refused"
            );
            let c: Conf = load(Some(&p), "SKTEST_", &["PIN"]).unwrap();
            assert_eq!(c.inner.port, 3);
            assert_eq!(c.inner.keys, vec!["a", "b"]);
            Ok(())
        });
        assert!(matches!(
            load::<Conf>(Some(&dir.path().join("missing.toml")), "X_", &[]),
            Err(Error::ConfigMissing(_))
        ));
        std::fs::write(&p, "name = 5\n").unwrap();
        assert!(matches!(
            load::<Conf>(Some(&p), "X_", &[]),
            Err(Error::Config(_))
        ));
    }
}
