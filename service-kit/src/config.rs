//! Configuration: defaults, then a TOML file, then environment variables.
//!
//! An environment variable `PREFIX_SECTION__KEY=value` overrides `key` in
//! `[section]`; `PREFIX_KEY` overrides a top-level key. Values are parsed as
//! TOML scalars or arrays where they look like one (`PREFIX_LINK__CHATD_KEYS=["ab.."]`).
//!
//! Kubernetes puts variables of its own under the same prefixes: for every
//! Service in a pod's namespace it injects `NAME_SERVICE_HOST`,
//! `NAME_PORT=tcp://…`, `NAME_PORT_7000_TCP_ADDR` and their kin, so a
//! Service called `chatd` hands chatd `CHATD_PORT`. Those are not
//! configuration and are skipped ([`is_service_link`]); every other
//! variable under the prefix still has to name a real key.

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
            .filter(move |k| {
                !ignored.iter().any(|i| k.as_str().eq_ignore_ascii_case(i))
                    && !is_service_link(k.as_str())
            })
            .split("__"),
    );
    fig.extract().map_err(|e| Error::Config(e.to_string()))
}

/// Whether `key` (a variable's name after the prefix) has the shape of a
/// Kubernetes service link variable: `[NAME_]SERVICE_HOST`,
/// `[NAME_]SERVICE_PORT[_PORTNAME]`, `[NAME_]PORT`, or
/// `[NAME_]PORT_<number>_<TCP|UDP|SCTP>[_PROTO|_PORT|_ADDR]`. A
/// configuration key always separates its section with `__`, which a
/// Service name (a DNS label turned upper case, `-` to `_`) does not
/// produce, so no real key is skipped.
pub fn is_service_link(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    if key.contains("__") {
        return false;
    }
    // The parts after NAME: try every split point, since NAME may itself
    // contain underscores (`CHATD_ADMIN_SERVICE_HOST` is the Service
    // `chatd-admin`).
    let parts: Vec<&str> = key.split('_').collect();
    (0..parts.len()).any(|start| {
        let name_ok = parts[..start].iter().all(|p| !p.is_empty());
        name_ok && is_link_suffix(&parts[start..])
    })
}

fn is_link_suffix(parts: &[&str]) -> bool {
    let is_proto = |p: &str| matches!(p, "TCP" | "UDP" | "SCTP");
    let is_number = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    match parts {
        ["SERVICE", "HOST"] | ["SERVICE", "PORT"] | ["PORT"] => true,
        // A named port: `SERVICE_PORT_WS`, `SERVICE_PORT_METRICS_HTTP`.
        ["SERVICE", "PORT", rest @ ..] => rest.iter().all(|p| !p.is_empty()),
        ["PORT", n, proto] => is_number(n) && is_proto(proto),
        ["PORT", n, proto, "PROTO" | "PORT" | "ADDR"] => is_number(n) && is_proto(proto),
        _ => false,
    }
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

    /// What Kubernetes injects into every pod of a namespace holding the
    /// Services `sktest` (ports `ws` 7000 and `admin` 7080) and
    /// `sktest-admin`: none of it is configuration.
    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API, test only
    fn kubernetes_service_links_are_not_configuration() {
        figment::Jail::expect_with(|jail| {
            for (k, v) in [
                ("SKTEST_SERVICE_HOST", "10.0.0.5"),
                ("SKTEST_SERVICE_PORT", "7000"),
                ("SKTEST_SERVICE_PORT_WS", "7000"),
                ("SKTEST_SERVICE_PORT_ADMIN", "7080"),
                ("SKTEST_PORT", "tcp://10.0.0.5:7000"),
                ("SKTEST_PORT_7000_TCP", "tcp://10.0.0.5:7000"),
                ("SKTEST_PORT_7000_TCP_PROTO", "tcp"),
                ("SKTEST_PORT_7000_TCP_PORT", "7000"),
                ("SKTEST_PORT_7000_TCP_ADDR", "10.0.0.5"),
                ("SKTEST_PORT_7080_UDP_ADDR", "10.0.0.5"),
                ("SKTEST_ADMIN_SERVICE_HOST", "10.0.0.6"),
                ("SKTEST_ADMIN_PORT", "tcp://10.0.0.6:7080"),
                ("SKTEST_ADMIN_PORT_7080_TCP_ADDR", "10.0.0.6"),
                ("SKTEST_INNER__PORT", "9"),
            ] {
                jail.set_env(k, v);
            }
            let c: Conf = load(None, "SKTEST_", &[]).unwrap();
            assert_eq!(c.inner.port, 9, "real keys still apply");
            // A misspelt key is still refused (one shaped like a service
            // link, `SKTEST_INNER_PORT`, is taken for the Service
            // `sktest-inner` and skipped: the price of sharing a prefix).
            jail.set_env("SKTEST_INNER_PORTS", "9");
            assert!(load::<Conf>(None, "SKTEST_", &[]).is_err());
            Ok(())
        });
        for key in [
            "PORT",
            "SERVICE_HOST",
            "X_PORT_53_UDP",
            "A_B_SERVICE_PORT_HTTP",
        ] {
            assert!(is_service_link(key), "{key}");
        }
        for key in [
            "INNER__PORT",
            "PORTS",
            "PORT_X_TCP",
            "PORT_7000_HTTP",
            "SERVICE",
            "_PORT",
            "LINK__SERVICE_HOST",
        ] {
            assert!(!is_service_link(key), "{key}");
        }
    }
}
