//! The HTTP endpoints of `runner-updater run`: `POST /trigger` (a pass now), `/metrics`
//! (Prometheus text format), `/healthz`
//! (the loop is alive: a pass ended recently) and `/readyz` (records loaded, AWS readable).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use runner_updater_ports::Clock;
use runner_updater_runtime::metrics::Metrics;

/// What the endpoints read.
pub struct Endpoints {
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The clock (liveness compares the last pass with now).
    pub clock: Arc<dyn Clock>,
    /// How old the last pass may be for `/healthz` to answer 200.
    pub liveness: Duration,
    /// Woken by `POST /trigger`: the loop starts its next pass now.
    pub trigger: Arc<tokio::sync::Notify>,
}

async fn trigger(State(endpoints): State<Arc<Endpoints>>) -> impl IntoResponse {
    endpoints.trigger.notify_one();
    (
        StatusCode::ACCEPTED,
        "a pass over every runner starts now\n",
    )
}

async fn metrics(
    State(endpoints): State<Arc<Endpoints>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            endpoints.metrics.render_openmetrics(),
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            endpoints.metrics.render(),
        )
    }
}

async fn healthz(State(endpoints): State<Arc<Endpoints>>) -> impl IntoResponse {
    if endpoints
        .metrics
        .alive(endpoints.clock.now(), endpoints.liveness)
    {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no pass ended within the last {}s\n",
                endpoints.liveness.as_secs()
            ),
        )
    }
}

async fn readyz(State(endpoints): State<Arc<Endpoints>>) -> impl IntoResponse {
    if endpoints.metrics.ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: records not loaded yet, or AWS cannot be read\n",
        )
    }
}

/// Serves the endpoints on `listener` until `shutdown` completes.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    endpoints: Arc<Endpoints>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/trigger", axum::routing::post(trigger))
        .with_state(endpoints);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
