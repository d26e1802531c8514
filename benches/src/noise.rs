//! The bare Noise responder cost, the in-process reference the load
//! generator puts next to chatd's (Noise_IK, channel 1) and the vault's
//! (Noise_NK, channel 3) handshake rates.
//!
//! Only `read_first` + `write_response` on one thread, with first messages
//! built beforehand: no sockets, no WebSocket, no directory, no runtime.

use std::hint::black_box;
use std::time::{Duration, Instant};

use protocol_spec::ids::{AccountId, FleetId};
use protocol_spec::keys::StaticSecret;
use protocol_spec::messages::chatd::{ClientHello, ServerHello};
use protocol_spec::messages::vault::{TunnelHello, VaultHello};
use protocol_spec::messages::WireMessage;
use protocol_spec::noise::{Initiator, Responder};

/// A random static key from the OS.
pub fn random_static() -> StaticSecret {
    let mut seed = [0u8; 32];
    testkit::fill_random(&mut seed);
    StaticSecret::from_bytes(seed)
}

/// Which responder to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Noise_IK, client → chatd.
    Ik,
    /// Noise_NK, client → vault tunnel.
    Nk,
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat`
/// (nanoseconds); `None` where the kernel does not expose it.
pub fn thread_cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// The result of [`bare_responder`].
#[derive(Debug, Clone, Copy)]
pub struct BareCost {
    /// Wall time per handshake of the fastest round.
    pub wall: Duration,
    /// This thread's CPU time per handshake in that round (equal to `wall`
    /// when the thread was never descheduled).
    pub cpu: Duration,
}

impl BareCost {
    /// Handshakes per second of one core.
    pub fn per_core_sec(&self) -> f64 {
        1.0 / self.cpu.as_secs_f64().max(1e-12)
    }
}

/// Times `rounds` rounds of `per_round` responder handshakes (`read_first`
/// + `write_response`) and returns the fastest round's cost per handshake.
pub fn bare_responder(pattern: Pattern, rounds: usize, per_round: usize) -> BareCost {
    let server = random_static();
    let device = random_static();
    let account = AccountId::new("bench-account").expect("account id");
    let fleet = FleetId::new("bench-fleet").expect("fleet id");
    let client_hello = ClientHello {
        account: account.clone(),
        enrolment_code: None,
        client_software: "loadgen".into(),
    }
    .encode();
    let server_hello = ServerHello {
        enrolled_now: false,
        max_frame_len: 4096,
        max_tunnels: 4,
        idle_timeout_secs: 60,
    }
    .encode();
    let vault_hello = VaultHello {
        fleet_id: fleet,
        max_attempts: 10,
    }
    .encode();
    // Distinct first messages (each with its own ephemeral key), cycled.
    let firsts: Vec<Vec<u8>> = (0..64)
        .map(|_| {
            let init = match pattern {
                Pattern::Ik => Initiator::client_chatd(&device, &server.public_key()),
                Pattern::Nk => Initiator::tunnel(&server.public_key(), &account),
            }
            .expect("initiator");
            let payload = match pattern {
                Pattern::Ik => client_hello.clone(),
                Pattern::Nk => TunnelHello.encode(),
            };
            init.write_first(&payload).expect("write_first").0
        })
        .collect();
    let one = |m1: &[u8]| {
        let responder = match pattern {
            Pattern::Ik => Responder::client_chatd(&server),
            Pattern::Nk => Responder::tunnel(&server, &account),
        }
        .expect("responder");
        let first = responder.read_first(m1).expect("read_first");
        let reply = match pattern {
            Pattern::Ik => &server_hello,
            Pattern::Nk => &vault_hello,
        };
        black_box(first.state.write_response(reply).expect("write_response"));
    };
    // Warm up caches and the allocator.
    for m1 in firsts.iter().take(16) {
        one(m1);
    }
    let mut best: Option<BareCost> = None;
    let per_round = per_round.max(1);
    for _ in 0..rounds.max(1) {
        let cpu0 = thread_cpu_time();
        let t0 = Instant::now();
        for i in 0..per_round {
            one(&firsts[i % firsts.len()]);
        }
        let wall = t0.elapsed() / per_round as u32;
        let cpu = match (cpu0, thread_cpu_time()) {
            (Some(a), Some(b)) if b > a => (b - a) / per_round as u32,
            _ => wall,
        };
        let round = BareCost { wall, cpu };
        if best.is_none_or(|b| round.cpu < b.cpu) {
            best = Some(round);
        }
    }
    best.unwrap_or_else(|| unreachable!("at least one round ran"))
}
