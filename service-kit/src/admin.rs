//! The admin listener: `/metrics` (Prometheus text format), `/livez` (the
//! process is up) and `/readyz` (it should receive traffic now).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use parking_lot::Mutex;

use crate::Error;

/// The `[admin]` section of a server's configuration. Each binary's
/// defaults give it its own port.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener (`/metrics`, `/livez`, `/readyz`).
    pub listen: String,
}

impl AdminConfig {
    pub fn listening_on(addr: &str) -> Self {
        AdminConfig {
            listen: addr.to_owned(),
        }
    }
}

/// Readiness as the process sees it, with a reason when not ready.
#[derive(Debug)]
pub struct Health {
    ready: AtomicBool,
    reason: Mutex<&'static str>,
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Health {
            ready: AtomicBool::new(false),
            reason: Mutex::new("starting"),
        })
    }

    pub fn set_ready(&self) {
        *self.reason.lock() = "";
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Marks the process not ready, with a static reason shown on `/readyz`.
    pub fn set_not_ready(&self, reason: &'static str) {
        *self.reason.lock() = reason;
        self.ready.store(false, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Latency buckets (seconds) shared by every `*_seconds` histogram: 50 µs
/// to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Installs the global Prometheus recorder, registers the binary's
/// metrics `table` (HELP text, counters at zero: see
/// [`crate::metrics::register`]), adds the standard `process_*` metrics,
/// and keeps histograms drained and process metrics fresh (every 5 s).
/// Call once, inside a tokio runtime.
pub fn install_metrics(table: &[crate::metrics::MetricDef]) -> Result<PrometheusHandle, Error> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| Error::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| Error::Metrics(e.to_string()))?;
    crate::metrics::register(table);
    let process = metrics_process::Collector::default();
    process.describe();
    process.collect();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            process.collect();
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

#[derive(Clone)]
struct AdminState {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

/// Binds the admin listener.
pub async fn bind(addr: &str) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// Serves the admin endpoints, plus `extra` routes of the binary (the
/// vault's `/cluster/*`), until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    metrics: PrometheusHandle,
    extra: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState { health, metrics })
        .merge(extra);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "admin listener failed");
    }
}

async fn render_metrics(State(s): State<AdminState>) -> String {
    s.metrics.render()
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    if s.health.is_ready() {
        (StatusCode::OK, "ready\n".into())
    } else {
        let reason = *s.health.reason.lock();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
    }
}
