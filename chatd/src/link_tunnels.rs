//! The tunnels chatd multiplexes on one link to the vault (SPEC.md 5.3),
//! as a sans-IO table.
//!
//! [`LinkTunnels`] picks each tunnel's link id, remembers which client
//! connection and tunnel it belongs to (`R`, its route), and decides what
//! every frame from the vault means: relay to the route, close a tunnel
//! whose connection stopped reading, follow a leader change. Connections
//! on many tasks share one link, so the table sits behind the link's lock;
//! it does no IO of its own. The one ordering rule it enforces is the
//! vault's: link ids must reach the vault in increasing order, so
//! [`LinkTunnels::open`] queues the `Open` frame itself, under the same
//! borrow that drew the id, and no racing open can overtake it.

use std::collections::HashMap;

use protocol_spec::codes::TunnelCloseCode;
use protocol_spec::ids::{AccountId, LinkTunnelId};
use protocol_spec::messages::link::{LinkFrame, VaultLinkFrame};
use protocol_spec::tunnel_ids::TunnelIdSequence;

/// What the vault sent for one tunnel, for its route.
#[derive(Debug, PartialEq, Eq)]
pub enum TunnelEvent {
    Data(Vec<u8>),
    Closed(TunnelCloseCode),
}

/// What a frame from the vault leaves for the link to do.
#[derive(Debug, PartialEq, Eq)]
pub enum VaultFrameOutcome {
    /// Nothing more.
    Done,
    /// Send this to the vault: the route could not take its data, so the
    /// tunnel is closed rather than stall the link for everyone.
    Send(LinkFrame),
    /// The replica stopped being the leader: retire the link and follow the
    /// hint.
    NotLeader { hint: Option<String> },
}

/// The tunnels of one link.
#[derive(Debug)]
pub struct LinkTunnels<R> {
    routes: HashMap<LinkTunnelId, R>,
    ids: TunnelIdSequence<LinkTunnelId>,
    retired: bool,
}

impl<R> Default for LinkTunnels<R> {
    fn default() -> Self {
        LinkTunnels {
            routes: HashMap::new(),
            ids: TunnelIdSequence::new(),
            retired: false,
        }
    }
}

impl<R> LinkTunnels<R> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the link is retired (dead or no longer to the leader).
    pub fn is_retired(&self) -> bool {
        self.retired
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Opens a tunnel for `route`: draws the next link id and hands the
    /// `Open` frame to `queue` before returning, so ids reach the vault in
    /// the order they were drawn however opens race. `None` (and nothing
    /// queued) once the link is retired or out of ids.
    pub fn open(
        &mut self,
        route: R,
        account: &AccountId,
        handshake: Vec<u8>,
        queue: impl FnOnce(LinkFrame),
    ) -> Option<LinkTunnelId> {
        if self.retired {
            return None;
        }
        let id = self.ids.next_id()?;
        self.routes.insert(id, route);
        queue(LinkFrame::Open {
            tunnel: id,
            account: account.clone(),
            handshake,
        });
        Some(id)
    }

    /// The client side ends a tunnel. The `Close` to send the vault, unless
    /// the vault closed it first or the link is gone.
    pub fn close(&mut self, id: LinkTunnelId, code: TunnelCloseCode) -> Option<LinkFrame> {
        let had_route = self.routes.remove(&id).is_some();
        (had_route && !self.retired).then_some(LinkFrame::Close { tunnel: id, code })
    }

    /// A frame from the vault. `deliver` hands an event to a route and
    /// returns whether the route took it (a connection whose queue is full
    /// does not).
    pub fn on_vault_frame(
        &mut self,
        frame: VaultLinkFrame,
        mut deliver: impl FnMut(&R, TunnelEvent) -> bool,
    ) -> VaultFrameOutcome {
        match frame {
            VaultLinkFrame::Data { tunnel, payload } => {
                // A tunnel closed meanwhile: the data has nowhere to go.
                let Some(route) = self.routes.get(&tunnel) else {
                    return VaultFrameOutcome::Done;
                };
                if deliver(route, TunnelEvent::Data(payload)) {
                    return VaultFrameOutcome::Done;
                }
                metrics::counter!("chatd_queue_drops_total").increment(1);
                self.routes.remove(&tunnel);
                VaultFrameOutcome::Send(LinkFrame::Close {
                    tunnel,
                    code: TunnelCloseCode::InternalError,
                })
            }
            VaultLinkFrame::Close { tunnel, code } => {
                if let Some(route) = self.routes.remove(&tunnel) {
                    // The connection learns of it when it reads; a full
                    // queue means it is being cut as a slow consumer.
                    let _ = deliver(&route, TunnelEvent::Closed(code));
                }
                VaultFrameOutcome::Done
            }
            VaultLinkFrame::Status {
                leader: false,
                leader_hint,
            } => VaultFrameOutcome::NotLeader { hint: leader_hint },
            VaultLinkFrame::Status { leader: true, .. } => VaultFrameOutcome::Done,
        }
    }

    /// Retires the link: no more opens, and every route is handed back to
    /// be told its tunnel closed.
    pub fn retire(&mut self) -> Vec<R> {
        self.retired = true;
        self.routes.drain().map(|(_, r)| r).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn acct() -> AccountId {
        AccountId::new("alice").unwrap()
    }

    fn open(t: &mut LinkTunnels<u32>, route: u32, wire: &mut Vec<LinkFrame>) -> LinkTunnelId {
        t.open(route, &acct(), vec![1], |f| wire.push(f)).unwrap()
    }

    fn data(id: LinkTunnelId) -> VaultLinkFrame {
        VaultLinkFrame::Data {
            tunnel: id,
            payload: vec![7],
        }
    }

    #[test]
    fn opens_draw_increasing_ids_and_queue_their_open_at_once() {
        let mut t = LinkTunnels::new();
        let mut wire = Vec::new();
        let a = open(&mut t, 10, &mut wire);
        let b = open(&mut t, 20, &mut wire);
        assert_eq!((a, b), (LinkTunnelId(1), LinkTunnelId(2)));
        assert!(matches!(
            wire.as_slice(),
            [
                LinkFrame::Open {
                    tunnel: LinkTunnelId(1),
                    ..
                },
                LinkFrame::Open {
                    tunnel: LinkTunnelId(2),
                    ..
                }
            ]
        ));
    }

    #[test]
    fn data_goes_to_its_route_and_a_full_route_loses_its_tunnel() {
        let mut t = LinkTunnels::new();
        let mut wire = Vec::new();
        let a = open(&mut t, 10, &mut wire);
        let mut got = Vec::new();
        let out = t.on_vault_frame(data(a), |r, e| {
            got.push((*r, e));
            true
        });
        assert_eq!(out, VaultFrameOutcome::Done);
        assert_eq!(got, vec![(10, TunnelEvent::Data(vec![7]))]);
        let out = t.on_vault_frame(data(a), |_, _| false);
        assert_eq!(
            out,
            VaultFrameOutcome::Send(LinkFrame::Close {
                tunnel: a,
                code: TunnelCloseCode::InternalError
            })
        );
        assert!(t.is_empty());
        // Later data for it crossed the close: ignored.
        assert_eq!(
            t.on_vault_frame(data(a), |_, _| panic!("delivered")),
            VaultFrameOutcome::Done
        );
    }

    #[test]
    fn a_tunnel_closes_once_whichever_side_closes_first() {
        let mut t = LinkTunnels::new();
        let mut wire = Vec::new();
        let a = open(&mut t, 10, &mut wire);
        let b = open(&mut t, 20, &mut wire);
        let mut told = Vec::new();
        let close_a = VaultLinkFrame::Close {
            tunnel: a,
            code: TunnelCloseCode::IdleTimeout,
        };
        t.on_vault_frame(close_a, |r, e| {
            told.push((*r, e));
            true
        });
        assert_eq!(
            told,
            vec![(10, TunnelEvent::Closed(TunnelCloseCode::IdleTimeout))]
        );
        assert_eq!(
            t.close(a, TunnelCloseCode::Normal),
            None,
            "the vault closed it"
        );
        assert_eq!(
            t.close(b, TunnelCloseCode::Normal),
            Some(LinkFrame::Close {
                tunnel: b,
                code: TunnelCloseCode::Normal
            })
        );
        assert_eq!(t.close(b, TunnelCloseCode::Normal), None);
    }

    #[test]
    fn a_leader_change_and_retirement() {
        let mut t = LinkTunnels::new();
        let mut wire = Vec::new();
        let _ = open(&mut t, 10, &mut wire);
        let _ = open(&mut t, 20, &mut wire);
        let status = VaultLinkFrame::Status {
            leader: false,
            leader_hint: Some("h:1".into()),
        };
        assert_eq!(
            t.on_vault_frame(status, |_, _| true),
            VaultFrameOutcome::NotLeader {
                hint: Some("h:1".into())
            }
        );
        let mut routes = t.retire();
        routes.sort_unstable();
        assert_eq!(routes, vec![10, 20]);
        assert!(t.is_retired());
        assert_eq!(t.open(30, &acct(), vec![], |_| panic!("queued")), None);
        assert_eq!(t.close(LinkTunnelId(1), TunnelCloseCode::Normal), None);
    }

    proptest! {
        /// However opens, closes and vault frames interleave, the `Open`
        /// frames leave in strictly increasing id order, so the vault's
        /// check (the same rule) never ends the link.
        #[test]
        fn opens_reach_the_vault_in_order(ops in prop::collection::vec(0u8..4, 1..200)) {
            let mut t = LinkTunnels::new();
            let mut wire = Vec::new();
            let mut open_ids = Vec::new();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    0 | 1 => open_ids.push(open(&mut t, i as u32, &mut wire)),
                    2 => if let Some(id) = open_ids.pop() {
                        if let Some(f) = t.close(id, TunnelCloseCode::Normal) { wire.push(f) }
                    },
                    _ => if let Some(id) = open_ids.first() {
                        let f = VaultLinkFrame::Close { tunnel: *id, code: TunnelCloseCode::Normal };
                        t.on_vault_frame(f, |_, _| true);
                    },
                }
            }
            let mut vault_side = TunnelIdSequence::<LinkTunnelId>::new();
            for f in wire {
                if let LinkFrame::Open { tunnel, .. } = f {
                    prop_assert!(vault_side.open(tunnel).is_ok());
                }
            }
        }
    }
}
