//! The worker pool that runs the vault core off the async runtime.
//!
//! Core calls block on PKCS#11, fsync and (replicated) commits, so they run
//! on a fixed set of OS threads fed by a bounded queue. A full queue hands
//! the job straight back to the caller, who answers `overloaded` (and can
//! still recover whatever state the job carried) instead of buffering
//! without limit.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender, TrySendError};

/// A fixed pool of named worker threads running one handler over a bounded
/// queue of jobs.
pub struct WorkerPool<J> {
    tx: Option<Sender<J>>,
    threads: Vec<JoinHandle<()>>,
}

impl<J: Send + 'static> WorkerPool<J> {
    pub fn new(workers: usize, queue: usize, handler: impl Fn(J) + Send + Sync + 'static) -> Self {
        let (tx, rx) = bounded::<J>(queue);
        let handler = Arc::new(handler);
        let threads = (0..workers)
            .map(|i| {
                let rx = rx.clone();
                let handler = handler.clone();
                std::thread::Builder::new()
                    .name(format!("vault-worker-{i}"))
                    .spawn(move || {
                        for job in rx {
                            handler(job);
                        }
                    })
                    .unwrap_or_else(|e| panic!("cannot start worker thread: {e}"))
            })
            .collect();
        WorkerPool {
            tx: Some(tx),
            threads,
        }
    }

    /// Queues `job`, or hands it back at once if the queue is full.
    pub fn submit(&self, job: J) -> Result<(), J> {
        let Some(tx) = &self.tx else {
            return Err(job);
        };
        match tx.try_send(job) {
            Ok(()) => {
                metrics::gauge!("vault_worker_queue_depth").set(tx.len() as f64);
                Ok(())
            }
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => {
                metrics::counter!("vault_overloaded_total").increment(1);
                Err(job)
            }
        }
    }

    /// Stops accepting jobs and waits for queued ones to finish.
    pub fn shutdown(mut self) {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl<J> std::fmt::Debug for WorkerPool<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("threads", &self.threads.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn runs_jobs_and_hands_them_back_when_full() {
        let (started_tx, started_rx) = mpsc::channel::<u32>();
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let gate_rx = parking_lot::Mutex::new(gate_rx);
        let pool = WorkerPool::new(1, 1, move |job: u32| {
            let _ = started_tx.send(job);
            if job == 1 {
                let _ = gate_rx.lock().recv();
            }
        });
        pool.submit(1).unwrap();
        assert_eq!(started_rx.recv().unwrap(), 1); // the worker is busy now
        pool.submit(2).unwrap(); // fills the one queue slot
        assert_eq!(pool.submit(3), Err(3)); // handed back, not lost
        gate_tx.send(()).unwrap();
        pool.shutdown();
        assert_eq!(started_rx.recv().unwrap(), 2);
    }
}
