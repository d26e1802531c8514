//! The tunnels of one chatd link, as a sans-IO state machine (SPEC.md 5.3,
//! 5.4 and 6.3).
//!
//! [`TunnelTable`] owns every tunnel of one link and makes every decision
//! about them: which opens are refused, which frame is a protocol error,
//! when a tunnel idles out, when a pending login expires, how the link
//! drains. It does no IO and reads no clock: the driver
//! ([`super::link`]) feeds it inputs with the time —
//! [`TunnelTable::on_frame`], [`TunnelTable::on_job_done`],
//! [`TunnelTable::on_role`], [`TunnelTable::start_drain`],
//! [`TunnelTable::handle_timeout`] — and carries out the [`Action`]s it
//! queues (send a frame, submit a job, end a session), in order, from
//! [`TunnelTable::poll_action`]. [`TunnelTable::poll_timeout`] says when
//! the driver must call [`TunnelTable::handle_timeout`] next.
//!
//! A tunnel's state (its Noise transport and vault session, `T`) travels
//! into each job and comes back with the job's result, so each tunnel has
//! at most one request in flight and needs no lock. While a job holds it
//! the tunnel's slot is `Busy`.
//!
//! A session ends one way: [`Action::EndSession`], which the driver turns
//! into the vault's `close` (abandoning a pending login, which on a
//! record's last attempt erases it). Sessions with nothing to abandon are
//! simply dropped.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use protocol_spec::codes::TunnelCloseCode;
use protocol_spec::ids::{AccountId, LinkTunnelId};
use protocol_spec::messages::link::{LinkFrame, VaultLinkFrame};
use protocol_spec::tunnel_ids::{IdNotIncreasing, TunnelIdSequence};

/// The slack of the idle and expiry deadlines: a full pass over the
/// tunnels happens at most this often, however many deadlines there are.
pub const SWEEP_GRANULARITY: Duration = Duration::from_secs(1);

/// What the table needs to know about a tunnel's state.
pub trait TunnelState {
    /// When the tunnel's pending login expires, if one is pending. A
    /// session with none has nothing to abandon when it ends.
    fn login_deadline(&self) -> Option<Instant>;
}

/// Per-link settings.
#[derive(Debug, Clone)]
pub struct TableSettings {
    /// Most tunnels open at once (SPEC 5.4 `max_tunnels`).
    pub max_tunnels: u32,
    /// A tunnel at rest with no frame for this long is closed.
    pub idle_timeout: Duration,
    /// How long a drain waits for tunnels with a request in flight.
    pub drain_deadline: Duration,
}

/// Work for the vault's worker pool.
pub enum Job<T> {
    /// Answer a new tunnel's Noise_NK handshake.
    Handshake {
        id: LinkTunnelId,
        account: AccountId,
        handshake: Vec<u8>,
    },
    /// Open, handle and answer one sealed request.
    Request {
        id: LinkTunnelId,
        tunnel: Box<T>,
        payload: Vec<u8>,
    },
    /// The pending login's deadline passed.
    Expire { id: LinkTunnelId, tunnel: Box<T> },
}

impl<T> Job<T> {
    pub fn id(&self) -> LinkTunnelId {
        match self {
            Job::Handshake { id, .. } | Job::Request { id, .. } | Job::Expire { id, .. } => *id,
        }
    }
}

impl<T> std::fmt::Debug for Job<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Job::Handshake { .. } => "Handshake",
            Job::Request { .. } => "Request",
            Job::Expire { .. } => "Expire",
        };
        write!(f, "Job::{kind}({})", self.id())
    }
}

/// What a finished job produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Relay these bytes to the client.
    Data(Vec<u8>),
    /// Close the tunnel with this code. The job has ended the session.
    Close(TunnelCloseCode),
    Nothing,
}

/// A job's result: the tunnel's state back (none after a failed handshake
/// or a close) and what to tell chatd.
pub struct JobDone<T> {
    pub id: LinkTunnelId,
    pub tunnel: Option<Box<T>>,
    pub reply: Reply,
}

impl<T> std::fmt::Debug for JobDone<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "JobDone({}, tunnel: {}, {:?})",
            self.id,
            self.tunnel.is_some(),
            self.reply
        )
    }
}

/// What the driver must do, in the order queued.
pub enum Action<T> {
    /// Send this frame to chatd (waiting for room: a chatd that stops
    /// reading stops the link reading it).
    Send(VaultLinkFrame),
    /// Queue this job; if the pool is full, hand it back with
    /// [`TunnelTable::on_job_refused`].
    Submit(Job<T>),
    /// End this session (abandoning its pending login).
    EndSession(Box<T>),
}

impl<T> std::fmt::Debug for Action<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Send(frame) => write!(f, "Send({frame:?})"),
            Action::Submit(job) => write!(f, "Submit({job:?})"),
            Action::EndSession(_) => f.write_str("EndSession"),
        }
    }
}

/// Why the link must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkEnd {
    /// chatd broke the tunnel-id rule (SPEC 5.3): a protocol error.
    #[error(transparent)]
    TunnelIdReused(#[from] IdNotIncreasing),
    /// A drain's deadline passed with requests still in flight.
    #[error("drain deadline passed")]
    DrainDeadline,
}

enum SlotState<T> {
    /// Between requests: the table holds the tunnel.
    AtRest(Box<T>),
    /// A job holds the tunnel (or is making it). `then_close`: close with
    /// this code once the job returns.
    Busy { then_close: Option<TunnelCloseCode> },
}

struct Slot<T> {
    state: SlotState<T>,
    last_activity: Instant,
}

/// Every tunnel of one link.
pub struct TunnelTable<T> {
    settings: TableSettings,
    slots: HashMap<LinkTunnelId, Slot<T>>,
    ids: TunnelIdSequence<LinkTunnelId>,
    leader: bool,
    drain_deadline: Option<Instant>,
    /// No deadline of a tunnel at rest is earlier than this (a lower bound,
    /// made exact by each sweep).
    next_sweep: Option<Instant>,
    actions: VecDeque<Action<T>>,
}

impl<T> std::fmt::Debug for TunnelTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelTable")
            .field("tunnels", &self.slots.len())
            .field("leader", &self.leader)
            .field("draining", &self.drain_deadline.is_some())
            .finish_non_exhaustive()
    }
}

impl<T: TunnelState> TunnelTable<T> {
    pub fn new(settings: TableSettings, leader: bool) -> Self {
        TunnelTable {
            settings,
            slots: HashMap::new(),
            ids: TunnelIdSequence::new(),
            leader,
            drain_deadline: None,
            next_sweep: None,
            actions: VecDeque::new(),
        }
    }

    /// Tunnels open now.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether the driver should read frames from chatd: not while
    /// draining (a drained link takes no new work).
    pub fn accepts_frames(&self) -> bool {
        self.drain_deadline.is_none()
    }

    /// A drain has finished: the link can close.
    pub fn is_finished(&self) -> bool {
        self.drain_deadline.is_some() && self.slots.is_empty()
    }

    /// The next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action<T>> {
        self.actions.pop_front()
    }

    /// When [`TunnelTable::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.next_sweep, self.drain_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One frame from chatd.
    pub fn on_frame(&mut self, now: Instant, frame: LinkFrame) -> Result<(), LinkEnd> {
        match frame {
            LinkFrame::Open {
                tunnel,
                account,
                handshake,
            } => {
                self.ids.open(tunnel)?;
                let refuse = if !self.leader {
                    Some(TunnelCloseCode::NotLeader)
                } else if self.slots.len() >= self.settings.max_tunnels as usize {
                    Some(TunnelCloseCode::TooManyTunnels)
                } else if self.drain_deadline.is_some() {
                    Some(TunnelCloseCode::Draining)
                } else {
                    None
                };
                if let Some(code) = refuse {
                    metrics::counter!("vault_tunnel_opens_total", "result" => code.label())
                        .increment(1);
                    self.send(VaultLinkFrame::Close { tunnel, code });
                    return Ok(());
                }
                self.slots.insert(
                    tunnel,
                    Slot {
                        state: SlotState::Busy { then_close: None },
                        last_activity: now,
                    },
                );
                metrics::gauge!("vault_tunnels").increment(1.0);
                self.submit(Job::Handshake {
                    id: tunnel,
                    account,
                    handshake,
                });
            }
            LinkFrame::Data { tunnel, payload } => {
                // A frame for a tunnel that is gone crossed its close.
                let Some(slot) = self.slots.get_mut(&tunnel) else {
                    return Ok(());
                };
                slot.last_activity = now;
                match std::mem::replace(&mut slot.state, SlotState::Busy { then_close: None }) {
                    SlotState::AtRest(t) => self.submit(Job::Request {
                        id: tunnel,
                        tunnel: t,
                        payload,
                    }),
                    SlotState::Busy { .. } => {
                        // One request at a time per tunnel (SPEC 6.3).
                        slot.state = SlotState::Busy {
                            then_close: Some(TunnelCloseCode::ProtocolError),
                        };
                    }
                }
            }
            LinkFrame::Close { tunnel, .. } => {
                if let Some(slot) = self.slots.remove(&tunnel) {
                    metrics::gauge!("vault_tunnels").decrement(1.0);
                    // A job in flight finds no slot when it returns and
                    // ends the session then.
                    if let SlotState::AtRest(t) = slot.state {
                        self.end_session(t);
                    }
                }
            }
        }
        Ok(())
    }

    /// A job came back.
    pub fn on_job_done(&mut self, now: Instant, done: JobDone<T>) {
        let JobDone { id, tunnel, reply } = done;
        let Some(slot) = self.slots.get_mut(&id) else {
            // Closed while the job ran.
            if let Some(t) = tunnel {
                self.end_session(t);
            }
            return;
        };
        slot.last_activity = now;
        let then_close = match &slot.state {
            SlotState::Busy { then_close } => *then_close,
            SlotState::AtRest(_) => None,
        };
        if let Some(code) = then_close {
            if let Some(t) = tunnel {
                self.end_session(t);
            }
            self.remove_and_close(id, code);
            return;
        }
        match reply {
            Reply::Data(payload) => self.send(VaultLinkFrame::Data {
                tunnel: id,
                payload,
            }),
            Reply::Close(code) => {
                self.remove_and_close(id, code);
                return;
            }
            Reply::Nothing => {}
        }
        let Some(t) = tunnel else {
            self.remove_and_close(id, TunnelCloseCode::InternalError);
            return;
        };
        if self.drain_deadline.is_some() {
            self.end_session(t);
            self.remove_and_close(id, TunnelCloseCode::Draining);
            return;
        }
        let due = t
            .login_deadline()
            .map_or(now + self.settings.idle_timeout, |d| {
                d.min(now + self.settings.idle_timeout)
            });
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.state = SlotState::AtRest(t);
        }
        self.schedule(due);
    }

    /// The pool was full: the job comes back unrun. The tunnel closes as
    /// overloaded, and a session the job carried is ended all the same.
    pub fn on_job_refused(&mut self, job: Job<T>) {
        let id = job.id();
        match job {
            Job::Request { tunnel, .. } | Job::Expire { tunnel, .. } => self.end_session(tunnel),
            Job::Handshake { .. } => {}
        }
        self.remove_and_close(id, TunnelCloseCode::Overloaded);
    }

    /// This replica's role changed. A replica that is no longer the leader
    /// closes every tunnel, then tells chatd (SPEC 5.4).
    pub fn on_role(&mut self, leader: bool, leader_hint: Option<String>) {
        self.leader = leader;
        if !leader {
            self.close_all(TunnelCloseCode::LeaderChanged);
        }
        self.send(VaultLinkFrame::Status {
            leader,
            leader_hint,
        });
    }

    /// Starts draining: tunnels at rest close now, tunnels with a request
    /// in flight once it is answered or at the drain deadline.
    pub fn start_drain(&mut self, now: Instant) {
        if self.drain_deadline.is_some() {
            return;
        }
        self.drain_deadline = Some(now + self.settings.drain_deadline);
        let at_rest: Vec<LinkTunnelId> = self
            .slots
            .iter()
            .filter(|(_, s)| matches!(s.state, SlotState::AtRest(_)))
            .map(|(id, _)| *id)
            .collect();
        for id in at_rest {
            self.close_at_rest(id, TunnelCloseCode::Draining);
        }
    }

    /// Deadlines: idle tunnels close, pending logins past their deadline
    /// expire, a drain past its deadline ends the link.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), LinkEnd> {
        if self.drain_deadline.is_some_and(|d| now >= d) {
            return Err(LinkEnd::DrainDeadline);
        }
        if self.next_sweep.is_some_and(|s| now >= s) {
            self.sweep(now);
        }
        Ok(())
    }

    /// The link is ending: every session at rest ends now. Sessions held by
    /// jobs are ended by the job runner, which finds the link gone.
    pub fn close_link(&mut self) {
        self.actions.clear();
        for (_, slot) in self.slots.drain() {
            metrics::gauge!("vault_tunnels").decrement(1.0);
            if let SlotState::AtRest(t) = slot.state {
                if t.login_deadline().is_some() {
                    self.actions.push_back(Action::EndSession(t));
                }
            }
        }
    }

    fn sweep(&mut self, now: Instant) {
        let idle = self.settings.idle_timeout;
        let mut idled = Vec::new();
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for (id, slot) in &self.slots {
            let SlotState::AtRest(t) = &slot.state else {
                continue;
            };
            let idle_at = slot.last_activity + idle;
            if idle_at <= now {
                idled.push(*id);
                continue;
            }
            let mut due = idle_at;
            match t.login_deadline() {
                Some(d) if d <= now => {
                    expired.push(*id);
                    continue;
                }
                Some(d) => due = due.min(d),
                None => {}
            }
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        for id in idled {
            self.close_at_rest(id, TunnelCloseCode::IdleTimeout);
        }
        for id in expired {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if let SlotState::AtRest(t) =
                std::mem::replace(&mut slot.state, SlotState::Busy { then_close: None })
            {
                self.submit(Job::Expire { id, tunnel: t });
            }
        }
        self.next_sweep = next.map(|n| n.max(now + SWEEP_GRANULARITY));
    }

    fn schedule(&mut self, due: Instant) {
        self.next_sweep = Some(self.next_sweep.map_or(due, |s| s.min(due)));
    }

    fn close_all(&mut self, code: TunnelCloseCode) {
        let ids: Vec<LinkTunnelId> = self.slots.keys().copied().collect();
        for id in ids {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            match &mut slot.state {
                SlotState::AtRest(_) => self.close_at_rest(id, code),
                SlotState::Busy { then_close } => *then_close = Some(code),
            }
        }
    }

    /// Closes a tunnel the table holds, ending its session.
    fn close_at_rest(&mut self, id: LinkTunnelId, code: TunnelCloseCode) {
        let at_rest = matches!(
            self.slots.get(&id),
            Some(Slot {
                state: SlotState::AtRest(_),
                ..
            })
        );
        if !at_rest {
            return;
        }
        if let Some(Slot {
            state: SlotState::AtRest(t),
            ..
        }) = self.slots.remove(&id)
        {
            metrics::gauge!("vault_tunnels").decrement(1.0);
            self.end_session(t);
            self.closed(id, code);
        }
    }

    fn remove_and_close(&mut self, id: LinkTunnelId, code: TunnelCloseCode) {
        if self.slots.remove(&id).is_some() {
            metrics::gauge!("vault_tunnels").decrement(1.0);
        }
        self.closed(id, code);
    }

    fn closed(&mut self, id: LinkTunnelId, code: TunnelCloseCode) {
        metrics::counter!("vault_tunnel_closes_total", "code" => code.label()).increment(1);
        self.send(VaultLinkFrame::Close { tunnel: id, code });
    }

    fn end_session(&mut self, t: Box<T>) {
        // Nothing to abandon: dropping the state ends the session.
        if t.login_deadline().is_some() {
            self.actions.push_back(Action::EndSession(t));
        }
    }

    fn send(&mut self, frame: VaultLinkFrame) {
        self.actions.push_back(Action::Send(frame));
    }

    fn submit(&mut self, job: Job<T>) {
        self.actions.push_back(Action::Submit(job));
    }
}

#[cfg(test)]
mod tests;
