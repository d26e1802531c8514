//! The one shutdown signal. SIGTERM asks for a graceful drain; SIGINT (or a
//! second SIGTERM) asks to stop now.

use tokio::sync::watch;

/// What the process has been asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shutdown {
    Running,
    /// Stop taking new work, finish what is open, then exit.
    Drain,
    /// Exit promptly.
    Fast,
}

/// Runs a server process's main task: a multi-threaded tokio runtime whose
/// threads are named `thread_name`, the signal listener, and `serve` with
/// its receiver. Errs only when the runtime cannot be built.
pub fn run_server<T, Fut>(
    thread_name: &str,
    serve: impl FnOnce(watch::Receiver<Shutdown>) -> Fut,
) -> std::io::Result<T>
where
    Fut: std::future::Future<Output = T>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(thread_name)
        .build()?;
    Ok(rt.block_on(async { serve(listen()).await }))
}

/// Spawns the signal listener and returns a receiver of the current state.
/// Must be called inside a tokio runtime.
pub fn listen() -> watch::Receiver<Shutdown> {
    let (tx, rx) = watch::channel(Shutdown::Running);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; shutdown only by kill -9");
            return;
        };
        loop {
            let next = tokio::select! {
                _ = term.recv() => if *tx.borrow() == Shutdown::Running { Shutdown::Drain } else { Shutdown::Fast },
                _ = int.recv() => Shutdown::Fast,
            };
            tracing::info!(?next, "shutdown requested");
            let _ = tx.send(next);
            if next == Shutdown::Fast {
                return;
            }
        }
    });
    rx
}

/// Resolves once the state is at least `level`.
pub async fn reached(rx: &mut watch::Receiver<Shutdown>, level: Shutdown) {
    let _ = rx.wait_for(|s| *s >= level).await;
}
