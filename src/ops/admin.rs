//! The admin HTTP endpoint: `/metrics` (Prometheus text) and `/livez`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (admin.bind): {source}")]
pub struct AdminBindError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Binds the admin listener; serving starts when the returned future is awaited.
pub async fn bind(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<impl std::future::Future<Output = std::io::Result<()>>, AdminBindError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminBindError { addr, source })?;
    tracing::info!(%addr, "admin endpoint open");
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/livez", get(|| async { "ok\n" }))
        .with_state(metrics);
    Ok(async move { axum::serve(listener, app).await })
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}
