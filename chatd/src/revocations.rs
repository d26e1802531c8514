//! Revocations reach open connections within a second, in every chatd
//! process that shares the directory (SPEC.md 4.3).
//!
//! `chatd accounts revoke` records each revocation with a sequence number
//! in the directory. Each chatd process follows that sequence
//! ([`POLL_EVERY`]) and broadcasts what it finds to its connections, which
//! close if the revocation is theirs. If the directory cannot be read for
//! [`DOWN_AFTER`], a revocation might go unnoticed, so this fails closed:
//! every connection is told the directory is down and closes (retryably;
//! new handshakes need the directory too).

use std::sync::Arc;
use std::time::Duration;

use protocol_spec::ids::AccountId;
use protocol_spec::keys::PublicKey;
use service_kit::shutdown::Shutdown;
use tokio::sync::{broadcast, watch};

use crate::directory::Directory;

/// How often each process reads the directory's latest revocation.
pub const POLL_EVERY: Duration = Duration::from_millis(200);
/// Failed reads for this long make the feed fail closed.
pub const DOWN_AFTER: Duration = Duration::from_secs(1);
/// Revocations read at once.
const BATCH: usize = 256;

/// What connections hear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevocationEvent {
    Revoked {
        account: AccountId,
        /// One device, or every device of the account.
        device: Option<PublicKey>,
    },
    /// The directory cannot be read: close, retryably.
    DirectoryDown,
}

impl RevocationEvent {
    /// Whether this ends the connection of `device` of `account`.
    pub fn ends(&self, account: &AccountId, device: &PublicKey) -> bool {
        match self {
            RevocationEvent::Revoked {
                account: a,
                device: d,
            } => a == account && d.as_ref().is_none_or(|d| d == device),
            RevocationEvent::DirectoryDown => true,
        }
    }
}

/// The process's feed of revocations; connections subscribe.
#[derive(Debug, Clone)]
pub struct RevocationFeed {
    tx: broadcast::Sender<RevocationEvent>,
}

impl RevocationFeed {
    /// Starts following the directory from its latest revocation.
    pub async fn start(
        directory: Arc<dyn Directory>,
        shutdown: watch::Receiver<Shutdown>,
    ) -> Result<Self, crate::Error> {
        let (tx, _) = broadcast::channel(1024);
        let dir = directory.clone();
        let from = tokio::task::spawn_blocking(move || dir.latest_revocation())
            .await
            .map_err(|e| crate::Error::Directory(e.to_string()))??;
        tokio::spawn(follow(directory, from, tx.clone(), shutdown));
        Ok(RevocationFeed { tx })
    }

    /// A receiver for one connection. Subscribe before checking the device,
    /// so that a revocation in between is not missed.
    pub fn subscribe(&self) -> broadcast::Receiver<RevocationEvent> {
        self.tx.subscribe()
    }
}

async fn follow(
    directory: Arc<dyn Directory>,
    mut seen: u64,
    tx: broadcast::Sender<RevocationEvent>,
    mut shutdown: watch::Receiver<Shutdown>,
) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = service_kit::shutdown::reached(&mut shutdown, Shutdown::Fast) => return,
        }
        let dir = directory.clone();
        let read = tokio::task::spawn_blocking(move || dir.revocations_after(seen, BATCH)).await;
        match read {
            Ok(Ok(revocations)) => {
                failing_since = None;
                for r in revocations {
                    seen = seen.max(r.seq);
                    tracing::info!(account = %r.account, all_devices = r.device.is_none(), "revocation seen; closing its connections");
                    let _ = tx.send(RevocationEvent::Revoked {
                        account: r.account,
                        device: r.device,
                    });
                }
            }
            Ok(Err(e)) => {
                metrics::counter!("chatd_directory_errors_total", "op" => "revocations")
                    .increment(1);
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= DOWN_AFTER {
                    tracing::error!(error = %e, "cannot read revocations from the directory; closing connections until it answers");
                    let _ = tx.send(RevocationEvent::DirectoryDown);
                }
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_event_ends_the_connections_it_names() {
        let a = AccountId::new("a").unwrap();
        let b = AccountId::new("b").unwrap();
        let d1 = PublicKey([1; 32]);
        let d2 = PublicKey([2; 32]);
        let one = RevocationEvent::Revoked {
            account: a.clone(),
            device: Some(d1),
        };
        assert!(one.ends(&a, &d1));
        assert!(!one.ends(&a, &d2));
        assert!(!one.ends(&b, &d1));
        let all = RevocationEvent::Revoked {
            account: a.clone(),
            device: None,
        };
        assert!(all.ends(&a, &d2) && !all.ends(&b, &d2));
        assert!(RevocationEvent::DirectoryDown.ends(&b, &d2));
    }
}
