//! The vault link's tunnel table (`hsm_vault::server::tunnels`) driven by
//! an input-chosen schedule: opens, data and closes from chatd for any
//! tunnel id (in order, repeated, unknown, going backwards), jobs that
//! finish in any order with any outcome or are refused by a full pool,
//! leadership changes, a drain, and clock jumps of any size.
//!
//! What must hold: no panic; each tunnel has at most one job in flight;
//! the table only speaks about tunnels chatd opened; once the link ends
//! nothing more is sent; and no tunnel state holding a pending login is
//! ever dropped without its session being ended (which is what abandons
//! the login, and on a record's last attempt erases it).
#![no_main]

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use e2ebk_fuzz::Input;
use hsm_vault::server::tunnels::{
    Action, Job, JobDone, Reply, TableSettings, TunnelState, TunnelTable,
};
use libfuzzer_sys::fuzz_target;
use protocol_spec::codes::TunnelCloseCode;
use protocol_spec::ids::{AccountId, LinkTunnelId};
use protocol_spec::messages::link::{LinkFrame, VaultLinkFrame};

thread_local! {
    static LOST: RefCell<usize> = const { RefCell::new(0) };
}

/// A tunnel's state: remembers whether its session was ended.
#[derive(Debug)]
struct Fake {
    deadline: Option<Instant>,
    ended: bool,
}

impl Drop for Fake {
    fn drop(&mut self) {
        if self.deadline.is_some() && !self.ended {
            LOST.with(|l| *l.borrow_mut() += 1);
        }
    }
}

impl TunnelState for Fake {
    fn login_deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

fn end(mut s: Box<Fake>) {
    s.ended = true;
}

fuzz_target!(|data: &[u8]| {
    LOST.with(|l| *l.borrow_mut() = 0);
    let mut input = Input(data);
    let t0 = Instant::now();
    let mut now = t0;
    let mut table: TunnelTable<Fake> = TunnelTable::new(
        TableSettings {
            max_tunnels: 3,
            idle_timeout: Duration::from_secs(120),
            drain_deadline: Duration::from_secs(10),
        },
        true,
    );
    let account = AccountId::new("alice").unwrap();
    let mut highest = 0u64;
    let mut opened = BTreeSet::new();
    let mut jobs: VecDeque<Job<Fake>> = VecDeque::new();
    let mut link_ended = false;
    while let Some(op) = input.byte() {
        let arg = input.byte().unwrap_or(0);
        // Tunnel ids near the highest so far: repeats, the next, a gap,
        // and going backwards.
        let id = LinkTunnelId((highest + u64::from(arg % 4)).saturating_sub(1).max(1));
        match op % 10 {
            0 if table.accepts_frames() => {
                let handshake = input.bytes(usize::from(arg % 8));
                let frame = LinkFrame::Open {
                    tunnel: id,
                    account: account.clone(),
                    handshake,
                };
                highest = highest.max(id.0);
                opened.insert(id.0);
                link_ended |= table.on_frame(now, frame).is_err();
            }
            1 if table.accepts_frames() => {
                let payload = input.bytes(usize::from(arg % 16));
                link_ended |= table
                    .on_frame(
                        now,
                        LinkFrame::Data {
                            tunnel: id,
                            payload,
                        },
                    )
                    .is_err();
            }
            2 if table.accepts_frames() => {
                let code = TunnelCloseCode::from_value(u32::from(arg % 12))
                    .unwrap_or(TunnelCloseCode::Normal);
                link_ended |= table
                    .on_frame(now, LinkFrame::Close { tunnel: id, code })
                    .is_err();
            }
            3 | 4 => {
                // The oldest or the newest job finishes.
                let job = if op % 10 == 3 {
                    jobs.pop_front()
                } else {
                    jobs.pop_back()
                };
                if let Some(job) = job {
                    let pending = arg % 2 == 0;
                    let state = || {
                        Box::new(Fake {
                            deadline: pending
                                .then(|| now + Duration::from_secs(u64::from(arg % 64))),
                            ended: false,
                        })
                    };
                    let done = match job {
                        Job::Handshake { id, .. } if arg % 5 == 0 => JobDone {
                            id,
                            tunnel: None,
                            reply: Reply::Close(TunnelCloseCode::HandshakeFailed),
                        },
                        Job::Handshake { id, .. } => JobDone {
                            id,
                            tunnel: Some(state()),
                            reply: Reply::Data(vec![2]),
                        },
                        Job::Request { id, tunnel, .. } | Job::Expire { id, tunnel } => {
                            // The job moved the session on (or ended it).
                            end(tunnel);
                            match arg % 7 {
                                0 => JobDone {
                                    id,
                                    tunnel: None,
                                    reply: Reply::Close(TunnelCloseCode::ProtocolError),
                                },
                                1 => JobDone {
                                    id,
                                    tunnel: Some(state()),
                                    reply: Reply::Nothing,
                                },
                                _ => JobDone {
                                    id,
                                    tunnel: Some(state()),
                                    reply: Reply::Data(vec![3]),
                                },
                            }
                        }
                    };
                    table.on_job_done(now, done);
                }
            }
            5 => {
                if let Some(job) = jobs.pop_back() {
                    table.on_job_refused(job);
                }
            }
            6 => table.on_role(arg % 2 == 0, None),
            7 => table.start_drain(now),
            8 => {
                now += Duration::from_millis(u64::from(arg) * u64::from(arg) * 37);
                link_ended |= table.handle_timeout(now).is_err();
            }
            _ => {}
        }
        while let Some(action) = table.poll_action() {
            match action {
                Action::Send(VaultLinkFrame::Data { tunnel, .. })
                | Action::Send(VaultLinkFrame::Close { tunnel, .. }) => {
                    assert!(
                        opened.contains(&tunnel.0),
                        "spoke about tunnel {tunnel} chatd never opened"
                    );
                }
                Action::Send(_) => {}
                Action::Submit(job) => {
                    assert!(
                        jobs.iter().all(|j| j.id() != job.id()),
                        "two jobs in flight for tunnel {}",
                        job.id()
                    );
                    jobs.push_back(job);
                }
                Action::EndSession(s) => end(s),
            }
        }
        if link_ended || table.is_finished() {
            break;
        }
    }
    // The link ends: sessions at rest end now; the runner ends those its
    // jobs still hold when it finds the link gone.
    table.close_link();
    while let Some(action) = table.poll_action() {
        if let Action::EndSession(s) = action {
            end(s);
        }
    }
    for job in jobs {
        if let Job::Request { tunnel, .. } | Job::Expire { tunnel, .. } = job {
            end(tunnel);
        }
    }
    drop(table);
    assert_eq!(
        LOST.with(|l| *l.borrow()),
        0,
        "a pending login was dropped without ending its session"
    );
});
