//! # service-kit
//!
//! The pieces every E2EBK server binary shares, so there is one way to do
//! each: configuration (TOML file, then environment overrides), structured
//! logging, the admin listener (`/metrics`, `/livez`, `/readyz`), the
//! shutdown signal (SIGTERM drains, SIGINT is fast), jittered exponential
//! backoff, and reading secrets (PINs) from files or the environment.

pub mod admin;
pub mod backoff;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod rate;
pub mod records;
pub mod secret;
pub mod shutdown;
pub mod slots;

/// Errors from this crate; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config file {0} does not exist")]
    ConfigMissing(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{what}: {reason}")]
    Secret { what: &'static str, reason: String },
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}
