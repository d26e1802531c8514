//! openraft's tasks on a thread of their own.
//!
//! openraft 0.9 keeps one replication request in flight per follower. When
//! a follower's answer commits entries, the Raft core first tells every
//! replication task the new commit index, then hands that follower's task
//! the entries appended meanwhile. On the multi-threaded runtime the task
//! could wake in between and send the commit index alone, so the waiting
//! entries left one round trip later: between replicas far apart, commits
//! under load paid two round trips instead of one. On one thread the task
//! runs only once the core yields, with both queued, and sends them
//! together. Storage still runs on a blocking pool (every fsync is
//! `spawn_blocking`), so the thread only moves messages.

use std::future::Future;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::Error;

/// A current-thread tokio runtime driven by its own OS thread, until
/// dropped.
pub struct RaftThread {
    handle: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RaftThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaftThread")
    }
}

/// How long stopping waits for the thread's blocking tasks (an fsync in
/// progress) before leaving them to the process exit.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl RaftThread {
    pub fn start() -> Result<Self, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("raft-blocking")
            .build()
            .map_err(|e| Error::io("the raft runtime", e))?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_timeout(STOP_TIMEOUT);
            })
            .map_err(|e| Error::io("the raft thread", e))?;
        Ok(RaftThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `f` on the thread; whatever it spawns stays there.
    pub async fn run<F>(&self, f: F) -> Result<F::Output, Error>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(f)
            .await
            .map_err(|e| Error::Startup(format!("the raft thread failed: {e}")))
    }
}

impl Drop for RaftThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
