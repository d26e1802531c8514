//! The control plane (SPEC.md 5.6): membership and other state-changing
//! operator commands, on a listener of their own that only operators can
//! use.
//!
//! The admin listener stays read-only (`/metrics`, `/livez`, `/readyz`);
//! everything that changes the group, or shows its membership, goes through
//! here. An operator's tool (`hsm-vault cluster ...`) holds an operator key;
//! every replica lists the operator keys it accepts (`control.operator_keys`)
//! and holds the fleet's control key (sealed in `fleet.sealed`), which the
//! tool pins. The channel is `Noise_KK` between the two, one request and
//! one answer per connection, so mere network reach to the port gets
//! nothing but a failed handshake.
//!
//! - [`protocol`]: the requests, the answers and their framing;
//! - [`server`]: the listener, with its pre-authentication limits;
//! - [`membership`]: what each request does, with the checks that keep a
//!   group able to reach a quorum;
//! - [`client`]: the tool's side.

pub mod client;
pub mod membership;
pub mod protocol;
pub mod server;
