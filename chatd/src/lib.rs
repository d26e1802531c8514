//! # chatd
//!
//! The connection front-end. It authenticates clients (Noise_IK inside a
//! WebSocket, device keys checked against the account directory, one-time
//! enrolment codes for new devices) and relays their vault tunnels over a
//! pool of Noise_KK links to the vault leader. It never holds a key that
//! could open a tunnel.
//!
//! | module | owns |
//! | --- | --- |
//! | [`server`] | the listener, accept loop, admin listener and shutdown phases |
//! | [`conn`] | one client connection as IO: upgrade, handshake, the driver loop |
//! | [`admission`] | who gets in: pre-upgrade checks and handshake outcomes as close codes |
//! | [`session`] | one admitted connection as a sans-IO state machine (frames, tunnels, budgets, liveness, drain) |
//! | [`leader`] | following the vault leader: the pool of links to it |
//! | [`vault_link`] | one Noise_KK link to a replica, and the tunnel handles connections hold |
//! | [`link_tunnels`] | the tunnels of one link as a sans-IO table (ids, routes, vault frames) |
//! | [`directory`] | accounts, device keys, enrolment codes, revocations (SQLite) |
//! | [`revocations`] | following revocations so open connections close within a second |
//! | [`rate_limits`] | token buckets: per address, per connection, per account |
//! | [`proxy_protocol`] | PROXY protocol v2 on the listener: the client's address behind a load balancer |
//! | [`metrics`] | the table of every metric chatd exports |
//! | [`config`], [`keys`] | the TOML configuration; chatd's key files |
//!
//! One tunnel request, hop by hop: [`conn`] reads a WebSocket message and
//! hands it to the connection's [`session::ClientSession`], which asks to
//! relay it; the tunnel's [`vault_link::TunnelHandle`] queues it on its
//! link; the vault's answer comes back through the link's
//! [`link_tunnels::LinkTunnels`] to the connection, and the session seals
//! it for the client.

pub mod admission;
pub mod config;
pub mod conn;
pub mod directory;
pub mod keys;
pub mod leader;
pub mod link_tunnels;
pub mod metrics;
pub mod proxy_protocol;
pub mod rate_limits;
pub mod revocations;
pub mod server;
pub mod session;
pub mod vault_link;

/// The crate's one error type; messages say what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("key file: {0}")]
    Keys(String),
    #[error("account directory: {0}")]
    Directory(String),
    #[error("cannot listen on {0}")]
    Bind(String),
    #[error(transparent)]
    Service(#[from] service_kit::Error),
    #[error(transparent)]
    Protocol(#[from] protocol_spec::Error),
}
