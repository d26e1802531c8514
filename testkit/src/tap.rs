//! A recording TCP proxy on loopback: everything that crosses it, both
//! directions, is appended to one buffer, so tests can prove what a party
//! in the middle would (not) see.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

pub type Recording = Arc<Mutex<Vec<u8>>>;

/// Starts a proxy to `target`; returns its address and the recording.
pub fn start(target: SocketAddr) -> (SocketAddr, Recording) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind tap");
    let addr = listener.local_addr().expect("tap addr");
    let rec: Recording = Arc::new(Mutex::new(Vec::new()));
    let r = rec.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(target) else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            pump(
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
                r.clone(),
            );
            pump(server, client, r.clone());
        }
    });
    (addr, rec)
}

fn pump(mut from: TcpStream, mut to: TcpStream, rec: Recording) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown(std::net::Shutdown::Write);
                    return;
                }
                Ok(n) => {
                    rec.lock().expect("recording").extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
}
