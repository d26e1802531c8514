//! Shared by the vault's process-level tests: running vault flows over a
//! link the way a client behind chatd would.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use backup_client::vault_flow::{
    self, FlowError, NewRegistration, PasswordLogin, PasswordRegistration,
};
use protocol_spec::ids::AccountId;
use protocol_spec::messages::vault::{RegistrationMode, StatusReport, VaultRequest, VaultResponse};
use protocol_spec::root_key::RootKey;
use testkit::link::{LinkClient, Tunnel, TunnelError};
use testkit::vault::{FleetInfo, VaultFixture, VaultProcess};

pub fn account(s: &str) -> AccountId {
    AccountId::new(s).unwrap()
}

pub fn key(seed: u8) -> RootKey {
    RootKey::from_entropy([seed; 30])
}

pub fn link(f: &VaultFixture, p: &VaultProcess) -> LinkClient {
    LinkClient::connect(p.link_addr, &f.chatd_key, &f.fleet.link_key).expect("link connects")
}

pub fn tunnel(l: &mut LinkClient, fleet: &FleetInfo, a: &AccountId) -> Tunnel {
    l.open_tunnel(a, &fleet.tunnel_key).expect("tunnel opens")
}

/// The prepared form (SPEC 7.8) every client flow takes.
pub fn prepared(password: &[u8]) -> protocol_spec::password::Password {
    protocol_spec::password::Password::prepare(std::str::from_utf8(password).unwrap()).unwrap()
}

/// Registers in `t`; returns the RegisterFinish request that was sent (so
/// tests can look for its bytes) and the answer.
pub fn register_in(
    l: &mut LinkClient,
    t: &mut Tunnel,
    fleet: &FleetInfo,
    password: &[u8],
    k: &RootKey,
    mode: RegistrationMode,
) -> (Option<VaultRequest>, Result<NewRegistration, FlowError>) {
    let (flow, start) = PasswordRegistration::start(&prepared(password), mode).unwrap();
    let r = l.request(t, &start).expect("register start answered");
    let finish = match flow.finish(&r, &t.account, &fleet.fleet_id, k) {
        Ok(f) => f,
        Err(e) => return (None, Err(e)),
    };
    let r = l.request(t, &finish).expect("register finish answered");
    (Some(finish), vault_flow::registered(&r, mode))
}

pub fn register(
    l: &mut LinkClient,
    fleet: &FleetInfo,
    a: &AccountId,
    password: &[u8],
    k: &RootKey,
) -> VaultRequest {
    let mut t = tunnel(l, fleet, a);
    let (req, res) = register_in(l, &mut t, fleet, password, k, RegistrationMode::Create);
    res.expect("registered");
    l.close_tunnel(t).unwrap();
    req.unwrap()
}

/// A full login in `t`. The tunnel stays open.
pub fn login_in(
    l: &mut LinkClient,
    t: &mut Tunnel,
    fleet: &FleetInfo,
    password: &[u8],
) -> Result<RootKey, FlowError> {
    let (flow, start) = PasswordLogin::start(&prepared(password)).unwrap();
    let r = l.request(t, &start).map_err(tunnel_err)?;
    let (finish, verified) = flow.finish(&r, &t.account, &fleet.fleet_id)?;
    let r = l.request(t, &finish).map_err(tunnel_err)?;
    verified.key(&r, &t.account)
}

/// A login in a fresh tunnel, closed afterwards (a wrong password simply
/// abandons the login, as the reference client does).
pub fn login(
    l: &mut LinkClient,
    fleet: &FleetInfo,
    a: &AccountId,
    password: &[u8],
) -> Result<RootKey, FlowError> {
    let mut t = tunnel(l, fleet, a);
    let r = login_in(l, &mut t, fleet, password);
    l.close_tunnel(t).unwrap();
    r
}

fn tunnel_err(e: TunnelError) -> FlowError {
    panic!("tunnel failed during a flow: {e}")
}

pub fn status(l: &mut LinkClient, fleet: &FleetInfo, a: &AccountId) -> StatusReport {
    let mut t = tunnel(l, fleet, a);
    let r = l
        .request(&mut t, &VaultRequest::Status)
        .expect("status answered");
    l.close_tunnel(t).unwrap();
    vault_flow::status_from(&r).unwrap_or_else(|e| panic!("status failed: {e} ({r:?})"))
}

/// Sends a LoginStart and reports whether KE2 came back (tunnel closed after).
pub fn login_start_only(
    l: &mut LinkClient,
    fleet: &FleetInfo,
    a: &AccountId,
) -> Result<VaultResponse, TunnelError> {
    let mut t = l.open_tunnel(a, &fleet.tunnel_key)?;
    let (_flow, start) = PasswordLogin::start(&prepared(b"guess")).unwrap();
    let r = l.request(&mut t, &start);
    let _ = l.close_tunnel(t);
    r
}
