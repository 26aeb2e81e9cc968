//! The Prometheus endpoint: `GET /metrics` on its own listener, OpenMetrics text format,
//! served under the bounds of [`crate::http`] (timeouts, a connection cap). The same
//! listener answers `GET /healthz` (the process serves: 200) and `GET /readyz` (200 when
//! the node is ready, 503 with the reason otherwise: a storage flush stuck, the database
//! failing, a core task dead).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::http;

const CONTENT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the node is ready to serve (`Err` with the reason when not).
pub(crate) type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Binds `addr` and serves the registry; returns the bound address and the server task.
/// The listener counts itself in `http_metrics` (`pylon_http_*{listener="metrics"}`,
/// registered in `registry` by the caller, which shares them with the admin listener).
pub(crate) async fn start(
    addr: SocketAddr,
    config: &http::Config,
    registry: Registry,
    http_metrics: http::Metrics,
    ready: Readiness,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let registry = Arc::new(registry);
    let ready = move || match ready() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    };
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || std::future::ready(ready())))
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => ([(CONTENT_TYPE, CONTENT)], body).into_response(),
                        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed")
                            .into_response(),
                    }
                }
            }),
        );
    let listener = http::Listener::bind(addr, "metrics", config.clone(), http_metrics)
        .await
        .with_context(|| format!("cannot bind the metrics listener {addr} (metrics.listen)"))?;
    let bound = listener.local_addr()?;
    let handle = tokio::spawn(listener.serve(app));
    Ok((bound, handle))
}
