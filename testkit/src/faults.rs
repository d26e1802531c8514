//! A fault-injecting TCP proxy for loopback tests: it forwards to a target
//! and can cut everything, or everything from one source address, on demand
//! (closing live connections too). Put one in front of each replica's peer
//! listener and give each replica its own source address (127.0.0.x) to cut
//! a replica off in both directions. It can also hold every byte for a
//! while before passing it on ([`FaultProxy::set_delay`]): a slow link or
//! a distant replica, as this kernel has no netem.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Rules {
    all: bool,
    sources: HashSet<IpAddr>,
}

struct Live {
    source: IpAddr,
    a: TcpStream,
    b: TcpStream,
}

/// A running proxy.
pub struct FaultProxy {
    pub addr: SocketAddr,
    rules: Arc<Mutex<Rules>>,
    live: Arc<Mutex<Vec<Live>>>,
    /// One-way delay, in microseconds, for every byte in either direction.
    delay_us: Arc<AtomicU64>,
}

impl FaultProxy {
    /// Listens on `listen` (e.g. `127.0.0.1:0`) and forwards to `target`.
    pub fn start(listen: &str, target: SocketAddr) -> Self {
        let listener = TcpListener::bind(listen).expect("bind fault proxy");
        let addr = listener.local_addr().expect("addr");
        let rules: Arc<Mutex<Rules>> = Arc::default();
        let live: Arc<Mutex<Vec<Live>>> = Arc::default();
        let delay_us: Arc<AtomicU64> = Arc::default();
        let (r, l, d) = (rules.clone(), live.clone(), delay_us.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let Ok(peer) = client.peer_addr() else {
                    continue;
                };
                {
                    let rules = r.lock().expect("rules");
                    if rules.all || rules.sources.contains(&peer.ip()) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                }
                let Ok(server) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                    l.lock().expect("live").push(Live {
                        source: peer.ip(),
                        a: c2,
                        b: s2,
                    });
                }
                let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                pump(c, s, d.clone());
                pump(server, client, d.clone());
            }
        });
        FaultProxy {
            addr,
            rules,
            live,
            delay_us,
        }
    }

    /// Holds every byte crossing the proxy, either way, for `one_way`
    /// before passing it on (order kept; `Duration::ZERO` to stop). Applies
    /// at once to live connections too.
    pub fn set_delay(&self, one_way: Duration) {
        let us = u64::try_from(one_way.as_micros()).unwrap_or(u64::MAX);
        self.delay_us.store(us, Ordering::SeqCst);
    }

    /// Refuses (and cuts) every connection, or lets them through again.
    pub fn cut_all(&self, on: bool) {
        self.rules.lock().expect("rules").all = on;
        if on {
            self.kill(|_| true);
        }
    }

    /// Refuses (and cuts) connections from `source`, or lets them through.
    pub fn cut_source(&self, source: IpAddr, on: bool) {
        let mut rules = self.rules.lock().expect("rules");
        if on {
            rules.sources.insert(source);
        } else {
            rules.sources.remove(&source);
        }
        drop(rules);
        if on {
            self.kill(|ip| ip == source);
        }
    }

    fn kill(&self, which: impl Fn(IpAddr) -> bool) {
        self.live.lock().expect("live").retain(|c| {
            if which(c.source) {
                let _ = c.a.shutdown(Shutdown::Both);
                let _ = c.b.shutdown(Shutdown::Both);
                false
            } else {
                true
            }
        });
    }
}

/// Copies `from` to `to`: a reader thread stamps each chunk with when it
/// is due, a writer thread sends it then, so a delay holds every byte for
/// the same time without slowing the stream down.
fn pump(mut from: TcpStream, mut to: TcpStream, delay_us: Arc<AtomicU64>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let Ok(reader_side) = from.try_clone() else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return, // dropping tx ends the writer
                Ok(n) => {
                    let due =
                        Instant::now() + Duration::from_micros(delay_us.load(Ordering::SeqCst));
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            let wait = due.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            if to.write_all(&chunk).is_err() {
                let _ = reader_side.shutdown(Shutdown::Both);
                return;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
