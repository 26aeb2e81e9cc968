//! The Prometheus endpoint: `GET /metrics` on its own listener, OpenMetrics text format.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

const CONTENT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` and serves the registry; returns the bound address and the server task.
pub async fn start(
    addr: SocketAddr,
    registry: Registry,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let registry = Arc::new(registry);
    let app = axum::Router::new().route(
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
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind metrics listener {addr}"))?;
    let bound = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server stopped: {e}");
        }
    });
    Ok((bound, handle))
}
