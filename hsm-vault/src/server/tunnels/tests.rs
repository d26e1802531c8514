//! The link's tunnel table driven by hand: no sockets, no sleeps, no
//! vault. A tunnel's state is a [`Fake`] that remembers whether its
//! session was ended, so a test (and the property test at the end) can
//! prove that no pending login is ever dropped without being abandoned.

#![allow(clippy::unwrap_used)]

use std::cell::RefCell;

use proptest::prelude::*;

use super::*;

thread_local! {
    /// Fakes with a pending login dropped without `EndSession`.
    static LOST: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

#[derive(Debug)]
struct Fake {
    name: u32,
    deadline: Option<Instant>,
    ended: bool,
}

impl Fake {
    fn idle(name: u32) -> Box<Fake> {
        Box::new(Fake {
            name,
            deadline: None,
            ended: false,
        })
    }

    fn pending(name: u32, deadline: Instant) -> Box<Fake> {
        Box::new(Fake {
            name,
            deadline: Some(deadline),
            ended: false,
        })
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if self.deadline.is_some() && !self.ended {
            LOST.with(|l| l.borrow_mut().push(self.name));
        }
    }
}

impl TunnelState for Fake {
    fn login_deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

fn lost() -> Vec<u32> {
    LOST.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

const IDLE: Duration = Duration::from_secs(120);
const DRAIN: Duration = Duration::from_secs(10);

fn table(leader: bool) -> TunnelTable<Fake> {
    TunnelTable::new(
        TableSettings {
            max_tunnels: 3,
            idle_timeout: IDLE,
            drain_deadline: DRAIN,
        },
        leader,
    )
}

fn acct() -> AccountId {
    AccountId::new("alice").unwrap()
}

fn open(id: u64) -> LinkFrame {
    LinkFrame::Open {
        tunnel: LinkTunnelId(id),
        account: acct(),
        handshake: vec![1, 2, 3],
    }
}

fn data(id: u64) -> LinkFrame {
    LinkFrame::Data {
        tunnel: LinkTunnelId(id),
        payload: vec![9],
    }
}

fn chatd_close(id: u64) -> LinkFrame {
    LinkFrame::Close {
        tunnel: LinkTunnelId(id),
        code: TunnelCloseCode::Normal,
    }
}

/// Everything the table asked for, split by kind. Ended sessions are
/// marked ended (the vault's `close` ran) and dropped.
#[derive(Default, Debug)]
struct Out {
    sent: Vec<VaultLinkFrame>,
    jobs: Vec<Job<Fake>>,
    ended: Vec<u32>,
}

fn drain(t: &mut TunnelTable<Fake>) -> Out {
    let mut out = Out::default();
    while let Some(a) = t.poll_action() {
        match a {
            Action::Send(f) => out.sent.push(f),
            Action::Submit(j) => out.jobs.push(j),
            Action::EndSession(mut s) => {
                s.ended = true;
                out.ended.push(s.name);
            }
        }
    }
    out
}

fn closed(id: u64, code: TunnelCloseCode) -> VaultLinkFrame {
    VaultLinkFrame::Close {
        tunnel: LinkTunnelId(id),
        code,
    }
}

/// Opens tunnel `id` and completes its handshake, leaving it at rest with
/// state `state`.
fn opened(t: &mut TunnelTable<Fake>, now: Instant, id: u64, state: Box<Fake>) {
    t.on_frame(now, open(id)).unwrap();
    let out = drain(t);
    assert!(matches!(out.jobs.as_slice(), [Job::Handshake { .. }]));
    t.on_job_done(
        now,
        JobDone {
            id: LinkTunnelId(id),
            tunnel: Some(state),
            reply: Reply::Data(b"msg2".to_vec()),
        },
    );
    let out = drain(t);
    assert_eq!(
        out.sent,
        vec![VaultLinkFrame::Data {
            tunnel: LinkTunnelId(id),
            payload: b"msg2".to_vec()
        }]
    );
}

/// Takes the one request job the table submitted, returning its tunnel.
fn take_request(out: Out) -> (LinkTunnelId, Box<Fake>) {
    match out.jobs.into_iter().next() {
        Some(Job::Request { id, tunnel, .. }) => (id, tunnel),
        other => panic!("expected a request job, got {other:?}"),
    }
}

#[test]
fn an_open_runs_its_handshake_then_requests_run_one_at_a_time() {
    let now = Instant::now();
    let mut t = table(true);
    opened(&mut t, now, 1, Fake::idle(1));
    t.on_frame(now, data(1)).unwrap();
    let (id, tunnel) = take_request(drain(&mut t));
    t.on_job_done(
        now,
        JobDone {
            id,
            tunnel: Some(tunnel),
            reply: Reply::Data(b"answer".to_vec()),
        },
    );
    let out = drain(&mut t);
    assert_eq!(out.sent.len(), 1);
    assert_eq!(t.len(), 1);
    assert!(lost().is_empty());
}

#[test]
fn tunnel_ids_that_do_not_increase_end_the_link() {
    let now = Instant::now();
    let mut t = table(true);
    t.on_frame(now, open(5)).unwrap();
    // The race loadgen found: two opens overtaking each other on the way.
    assert!(matches!(
        t.on_frame(now, open(4)),
        Err(LinkEnd::TunnelIdReused(_))
    ));
    assert!(matches!(
        t.on_frame(now, open(5)),
        Err(LinkEnd::TunnelIdReused(_))
    ));
    assert!(t.on_frame(now, open(9)).is_ok());
    // Refused opens count too: an id is never reused, even one refused.
    let mut f = table(false);
    f.on_frame(now, open(1)).unwrap();
    assert!(f.on_frame(now, open(1)).is_err());
}

#[test]
fn opens_are_refused_when_not_leader_or_when_full() {
    let now = Instant::now();
    let mut t = table(false);
    t.on_frame(now, open(1)).unwrap();
    let out = drain(&mut t);
    assert_eq!(out.sent, vec![closed(1, TunnelCloseCode::NotLeader)]);
    assert!(out.jobs.is_empty());
    assert!(t.is_empty());

    let mut t = table(true);
    for id in 1..=3 {
        t.on_frame(now, open(id)).unwrap();
    }
    let _ = drain(&mut t);
    t.on_frame(now, open(4)).unwrap();
    let out = drain(&mut t);
    assert_eq!(out.sent, vec![closed(4, TunnelCloseCode::TooManyTunnels)]);
    assert_eq!(t.len(), 3);
}

#[test]
fn frames_for_a_tunnel_that_is_gone_are_ignored() {
    let now = Instant::now();
    let mut t = table(true);
    t.on_frame(now, data(7)).unwrap();
    t.on_frame(now, chatd_close(7)).unwrap();
    let out = drain(&mut t);
    assert!(out.sent.is_empty() && out.jobs.is_empty());
}

#[test]
fn a_second_request_while_one_is_in_flight_closes_the_tunnel() {
    let now = Instant::now();
    let mut t = table(true);
    opened(&mut t, now, 1, Fake::idle(1));
    t.on_frame(now, data(1)).unwrap();
    let (id, _) = take_request(drain(&mut t));
    t.on_frame(now, data(1)).unwrap();
    assert!(drain(&mut t).jobs.is_empty(), "no second job");
    // The first job comes back having started a login: it is abandoned.
    t.on_job_done(
        now,
        JobDone {
            id,
            tunnel: Some(Fake::pending(11, now + IDLE)),
            reply: Reply::Data(b"ke2".to_vec()),
        },
    );
    let out = drain(&mut t);
    assert_eq!(out.sent, vec![closed(1, TunnelCloseCode::ProtocolError)]);
    assert_eq!(out.ended, vec![11]);
    assert!(t.is_empty());
    assert!(lost().is_empty());
}

#[test]
fn chatd_closing_a_tunnel_ends_its_session_at_rest_or_when_its_job_returns() {
    let now = Instant::now();
    let mut t = table(true);
    opened(&mut t, now, 1, Fake::pending(1, now + IDLE));
    t.on_frame(now, chatd_close(1)).unwrap();
    let out = drain(&mut t);
    assert_eq!(out.ended, vec![1]);
    assert!(out.sent.is_empty(), "chatd closed it; no close goes back");

    opened(&mut t, now, 2, Fake::idle(2));
    t.on_frame(now, data(2)).unwrap();
    let (id, _) = take_request(drain(&mut t));
    t.on_frame(now, chatd_close(2)).unwrap();
    t.on_job_done(
        now,
        JobDone {
            id,
            tunnel: Some(Fake::pending(22, now + IDLE)),
            reply: Reply::Data(b"ke2".to_vec()),
        },
    );
    let out = drain(&mut t);
    assert_eq!(out.ended, vec![22]);
    assert!(out.sent.is_empty(), "the answer has nowhere to go");
    assert!(lost().is_empty());
}

#[test]
fn a_job_that_closes_or_loses_its_tunnel_closes_it() {
    let now = Instant::now();
    let mut t = table(true);
    t.on_frame(now, open(1)).unwrap();
    let _ = drain(&mut t);
    t.on_job_done(
        now,
        JobDone {
            id: LinkTunnelId(1),
            tunnel: None,
            reply: Reply::Close(TunnelCloseCode::HandshakeFailed),
        },
    );
    assert_eq!(
        drain(&mut t).sent,
        vec![closed(1, TunnelCloseCode::HandshakeFailed)]
    );
    t.on_frame(now, open(2)).unwrap();
    let _ = drain(&mut t);
    t.on_job_done(
        now,
        JobDone {
            id: LinkTunnelId(2),
            tunnel: None,
            reply: Reply::Nothing,
        },
    );
    assert_eq!(
        drain(&mut t).sent,
        vec![closed(2, TunnelCloseCode::InternalError)]
    );
    assert!(t.is_empty());
}

#[test]
fn idle_tunnels_close_at_their_idle_timeout() {
    let t0 = Instant::now();
    let mut t = table(true);
    opened(&mut t, t0, 1, Fake::idle(1));
    opened(&mut t, t0 + Duration::from_secs(60), 2, Fake::idle(2));
    let wake = t.poll_timeout().unwrap();
    assert!(wake <= t0 + IDLE, "the table wakes in time for tunnel 1");
    t.handle_timeout(t0 + IDLE - Duration::from_secs(1))
        .unwrap();
    assert!(drain(&mut t).sent.is_empty(), "not idle yet");
    t.handle_timeout(t0 + IDLE).unwrap();
    assert_eq!(
        drain(&mut t).sent,
        vec![closed(1, TunnelCloseCode::IdleTimeout)]
    );
    // Activity moves the deadline.
    t.on_frame(t0 + Duration::from_secs(170), data(2)).unwrap();
    let (id, tunnel) = take_request(drain(&mut t));
    t.on_job_done(
        t0 + Duration::from_secs(170),
        JobDone {
            id,
            tunnel: Some(tunnel),
            reply: Reply::Nothing,
        },
    );
    t.handle_timeout(t0 + Duration::from_secs(200)).unwrap();
    assert!(drain(&mut t).sent.is_empty());
    let wake = t.poll_timeout().unwrap();
    assert!(wake <= t0 + Duration::from_secs(290));
    t.handle_timeout(t0 + Duration::from_secs(290)).unwrap();
    assert_eq!(
        drain(&mut t).sent,
        vec![closed(2, TunnelCloseCode::IdleTimeout)]
    );
    assert_eq!(t.poll_timeout(), None, "nothing left to wait for");
}

#[test]
fn a_pending_login_expires_through_a_job_and_the_tunnel_stays_open() {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(60);
    let mut t = table(true);
    opened(&mut t, t0, 1, Fake::pending(1, deadline));
    assert!(t.poll_timeout().unwrap() <= deadline);
    t.handle_timeout(deadline).unwrap();
    let out = drain(&mut t);
    let Some(Job::Expire { id, mut tunnel }) = out.jobs.into_iter().next() else {
        panic!("expected an expire job");
    };
    // The vault expired the login: the session is idle again.
    tunnel.deadline = None;
    t.on_job_done(
        deadline,
        JobDone {
            id,
            tunnel: Some(tunnel),
            reply: Reply::Nothing,
        },
    );
    assert!(drain(&mut t).sent.is_empty());
    assert_eq!(t.len(), 1);
    assert!(lost().is_empty());
}

#[test]
fn a_leader_change_closes_every_tunnel_then_reports_status() {
    let now = Instant::now();
    let mut t = table(true);
    opened(&mut t, now, 1, Fake::pending(1, now + IDLE));
    opened(&mut t, now, 2, Fake::idle(2));
    t.on_frame(now, data(2)).unwrap();
    let (id, _) = take_request(drain(&mut t));
    t.on_role(false, Some("10.0.0.2:7100".into()));
    let out = drain(&mut t);
    assert_eq!(
        out.sent,
        vec![
            closed(1, TunnelCloseCode::LeaderChanged),
            VaultLinkFrame::Status {
                leader: false,
                leader_hint: Some("10.0.0.2:7100".into())
            }
        ]
    );
    assert_eq!(out.ended, vec![1]);
    t.on_job_done(
        now,
        JobDone {
            id,
            tunnel: Some(Fake::idle(2)),
            reply: Reply::Data(b"late".to_vec()),
        },
    );
    assert_eq!(
        drain(&mut t).sent,
        vec![closed(2, TunnelCloseCode::LeaderChanged)]
    );
    t.on_frame(now, open(3)).unwrap();
    assert_eq!(
        drain(&mut t).sent,
        vec![closed(3, TunnelCloseCode::NotLeader)]
    );
    assert!(lost().is_empty());
}

#[test]
fn a_drain_closes_tunnels_at_rest_at_once_and_busy_ones_when_answered() {
    let t0 = Instant::now();
    let mut t = table(true);
    opened(&mut t, t0, 1, Fake::idle(1));
    opened(&mut t, t0, 2, Fake::idle(2));
    t.on_frame(t0, data(2)).unwrap();
    let (id, _) = take_request(drain(&mut t));
    t.start_drain(t0);
    assert!(!t.accepts_frames());
    assert_eq!(
        drain(&mut t).sent,
        vec![closed(1, TunnelCloseCode::Draining)]
    );
    assert!(!t.is_finished());
    assert_eq!(t.poll_timeout(), Some(t0 + DRAIN));
    t.on_job_done(
        t0,
        JobDone {
            id,
            tunnel: Some(Fake::pending(2, t0 + IDLE)),
            reply: Reply::Data(b"ke2".to_vec()),
        },
    );
    let out = drain(&mut t);
    assert_eq!(out.sent.len(), 2, "the answer, then the close");
    assert_eq!(out.sent[1], closed(2, TunnelCloseCode::Draining));
    assert_eq!(out.ended, vec![2], "its pending login is abandoned");
    assert!(t.is_finished());
    assert!(lost().is_empty());
}

#[test]
fn a_drain_that_outlasts_its_deadline_ends_the_link() {
    let t0 = Instant::now();
    let mut t = table(true);
    opened(&mut t, t0, 1, Fake::idle(1));
    t.on_frame(t0, data(1)).unwrap();
    let _job = drain(&mut t);
    t.start_drain(t0);
    assert!(t
        .handle_timeout(t0 + DRAIN - Duration::from_millis(1))
        .is_ok());
    assert_eq!(t.handle_timeout(t0 + DRAIN), Err(LinkEnd::DrainDeadline));
}

#[test]
fn a_refused_job_closes_its_tunnel_as_overloaded_and_still_ends_its_session() {
    let now = Instant::now();
    let mut t = table(true);
    opened(&mut t, now, 1, Fake::pending(1, now + IDLE));
    t.on_frame(now, data(1)).unwrap();
    let job = drain(&mut t).jobs.pop().unwrap();
    t.on_job_refused(job);
    let out = drain(&mut t);
    assert_eq!(out.sent, vec![closed(1, TunnelCloseCode::Overloaded)]);
    assert_eq!(out.ended, vec![1]);
    t.on_frame(now, open(2)).unwrap();
    let job = drain(&mut t).jobs.pop().unwrap();
    t.on_job_refused(job);
    assert_eq!(
        drain(&mut t).sent,
        vec![closed(2, TunnelCloseCode::Overloaded)]
    );
    assert!(t.is_empty());
    assert!(lost().is_empty());
}

#[test]
fn closing_the_link_ends_every_session_at_rest() {
    let now = Instant::now();
    let mut t = table(true);
    opened(&mut t, now, 1, Fake::pending(1, now + IDLE));
    opened(&mut t, now, 2, Fake::idle(2));
    t.close_link();
    let out = drain(&mut t);
    assert_eq!(out.ended, vec![1]);
    assert!(out.sent.is_empty());
    assert!(t.is_empty());
    assert!(lost().is_empty());
}

/// One step of a random session between chatd, the table and the pool.
#[derive(Debug, Clone)]
enum Step {
    Open,
    Data(u8),
    Close(u8),
    /// The oldest job finishes; `u8` picks its outcome.
    Finish(u8),
    Refuse,
    Role(bool),
    Drain,
    Advance(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Open),
        4 => any::<u8>().prop_map(Step::Data),
        2 => any::<u8>().prop_map(Step::Close),
        5 => any::<u8>().prop_map(Step::Finish),
        1 => Just(Step::Refuse),
        1 => any::<bool>().prop_map(Step::Role),
        1 => Just(Step::Drain),
        2 => any::<u8>().prop_map(Step::Advance),
    ]
}

proptest! {
    /// Whatever chatd sends, whatever the pool does and whenever time
    /// passes: no session with a pending login is ever dropped without
    /// being ended, and no frame ever names a tunnel id chatd did not open.
    #[test]
    fn no_pending_login_is_ever_dropped(steps in prop::collection::vec(step(), 1..80)) {
        let _ = lost();
        let t0 = Instant::now();
        let mut now = t0;
        let mut t = table(true);
        let mut next_id = 0u64;
        let mut names = 0u32;
        let mut jobs: VecDeque<Job<Fake>> = VecDeque::new();
        let mut link_ended = false;
        for s in steps {
            match s {
                Step::Open => {
                    next_id += 1;
                    if t.accepts_frames() && t.on_frame(now, open(next_id)).is_err() {
                        link_ended = true;
                    }
                }
                Step::Data(i) if next_id > 0 && t.accepts_frames() => {
                    t.on_frame(now, data(1 + u64::from(i) % next_id)).unwrap();
                }
                Step::Close(i) if next_id > 0 && t.accepts_frames() => {
                    t.on_frame(now, chatd_close(1 + u64::from(i) % next_id)).unwrap();
                }
                Step::Finish(o) => {
                    if let Some(job) = jobs.pop_front() {
                        names += 1;
                        let pending = o % 2 == 0;
                        let state = |name| if pending {
                            Fake::pending(name, now + Duration::from_secs(u64::from(o)))
                        } else {
                            Fake::idle(name)
                        };
                        let done = match job {
                            Job::Handshake { id, .. } if o % 5 == 0 => JobDone {
                                id, tunnel: None, reply: Reply::Close(TunnelCloseCode::HandshakeFailed),
                            },
                            Job::Handshake { id, .. } => JobDone {
                                id, tunnel: Some(state(names)), reply: Reply::Data(vec![2]),
                            },
                            Job::Request { id, mut tunnel, .. } if o % 7 == 0 => {
                                // The job closed the tunnel and ended its session.
                                tunnel.ended = true;
                                JobDone { id, tunnel: None, reply: Reply::Close(TunnelCloseCode::ProtocolError) }
                            }
                            Job::Request { id, mut tunnel, .. } | Job::Expire { id, mut tunnel } => {
                                // The vault moved the session on.
                                tunnel.ended = true;
                                JobDone { id, tunnel: Some(state(names)), reply: Reply::Data(vec![3]) }
                            }
                        };
                        t.on_job_done(now, done);
                    }
                }
                Step::Refuse => {
                    if let Some(job) = jobs.pop_back() {
                        t.on_job_refused(job);
                    }
                }
                Step::Role(leader) => t.on_role(leader, None),
                Step::Drain => t.start_drain(now),
                Step::Advance(secs) => {
                    now += Duration::from_secs(u64::from(secs));
                    if t.handle_timeout(now).is_err() {
                        link_ended = true;
                    }
                }
                _ => {}
            }
            while let Some(a) = t.poll_action() {
                match a {
                    Action::Send(VaultLinkFrame::Data { tunnel, .. } | VaultLinkFrame::Close { tunnel, .. }) => {
                        prop_assert!(tunnel.0 >= 1 && tunnel.0 <= next_id);
                    }
                    Action::Send(VaultLinkFrame::Status { .. }) => {}
                    Action::Submit(j) => jobs.push_back(j),
                    Action::EndSession(mut s) => s.ended = true,
                }
            }
            if link_ended || t.is_finished() {
                break;
            }
        }
        // The link ends: sessions at rest end now; the runner ends those
        // its jobs still hold when it finds the link gone.
        t.close_link();
        while let Some(a) = t.poll_action() {
            if let Action::EndSession(mut s) = a {
                s.ended = true;
            }
        }
        for job in jobs {
            if let Job::Request { mut tunnel, .. } | Job::Expire { mut tunnel, .. } = job {
                tunnel.ended = true;
            }
        }
        prop_assert_eq!(lost(), Vec::<u32>::new());
    }
}
