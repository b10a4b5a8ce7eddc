//! The admin HTTP endpoint:
//! - `/metrics`: Prometheus text;
//! - `/livez`: the process is serving;
//! - `/readyz`: 200 only when a bootstrap server answers ApiVersions, else 503 with a JSON body
//!   saying what is wrong. It answers for the Kafka path only, which is what decides whether
//!   clients should be sent to this instance: a mirror outage does not change it;
//! - `/readyz/mirror`: 200 only when every routed stream is healthy (its latest PutRecords or
//!   probe was answered), else 503 with each stream's error;
//! - `/routes`: every route with its percent, mode, stream state, shard count, records mirrored,
//!   success ratio and backlog (records queued in memory, spool bytes), and the whole mirror's
//!   backlog: where it waits, how old it is, how close the disk limit, the durability in force;
//! - `/clients`: the producer inventory.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use super::backlog::{Backlog, BacklogSettings};
use crate::mirror::Mirror;
use crate::proxy::Proxy;
use crate::telemetry::inventory::Inventory;
use crate::telemetry::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (admin.bind): {source}")]
pub struct AdminBindError {
    addr: SocketAddr,
    source: std::io::Error,
}

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub mirror: Mirror,
    pub inventory: Arc<Inventory>,
    pub proxy: Arc<Proxy>,
    pub backlog: BacklogSettings,
}

/// Binds the admin listener; serving starts when the returned future is awaited.
pub async fn bind(
    addr: SocketAddr,
    state: AdminState,
) -> Result<impl std::future::Future<Output = std::io::Result<()>>, AdminBindError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminBindError { addr, source })?;
    tracing::info!(%addr, "admin endpoint open");
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/readyz/mirror", get(readyz_mirror))
        .route("/routes", get(routes))
        .route("/clients", get(clients))
        .with_state(state);
    Ok(async move { axum::serve(listener, app).await })
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let mut problems = Vec::new();
    if let Some(problem) = state.proxy.kafka_problem() {
        problems.push(format!(
            "kafka: no bootstrap server answers ApiVersions: {problem}"
        ));
    }
    readiness(problems)
}

fn readiness(problems: Vec<String>) -> impl IntoResponse {
    let ready = problems.is_empty();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": ready, "problems": problems })),
    )
}

async fn readyz_mirror(State(state): State<AdminState>) -> impl IntoResponse {
    let routes = state.mirror.routes();
    let mut problems: Vec<String> = routes
        .values()
        .map(|route| route.writer.state())
        .filter(|stream| !stream.is_healthy())
        .map(|stream| {
            let why = stream
                .last_error()
                .unwrap_or_else(|| "not answered yet".to_owned());
            format!("stream `{}`: {why}", stream.stream)
        })
        .collect();
    // Topics routed to one stream share its writer.
    problems.sort();
    problems.dedup();
    readiness(problems)
}

#[derive(Serialize)]
struct RouteView {
    topic: String,
    /// The stream's label, as metrics name it: `STREAM[ in REGION][ as ROLE_ARN]`.
    stream: String,
    stream_name: String,
    stream_arn: Option<String>,
    /// `None`: `[kinesis].region`.
    region: Option<String>,
    role_arn: Option<String>,
    percent: f64,
    partition_key: String,
    /// `mirror` or `kinesis-primary`.
    mode: &'static str,
    /// kinesis-primary: how long a Produce response waits for Kinesis.
    primary_timeout_ms: u128,
    stream_healthy: bool,
    /// Why the stream is unhealthy, as `/readyz/mirror` says.
    stream_error: Option<String>,
    open_shards: usize,
    records_sent: u64,
    records_failed: u64,
    records_skipped: u64,
    /// Records of the stream queued in its writer's memory, neither sent nor spooled.
    queued_records: u64,
    /// Bytes waiting in the stream's spool (the backlog to replay).
    spool_bytes: u64,
    /// Over the dual-write window; absent when no record's fate was decided in it.
    success_ratio: Option<f64>,
}

async fn routes(State(state): State<AdminState>) -> impl IntoResponse {
    let m = &state.metrics;
    let count = |topic: &str, stream: &str, result: &str| {
        m.mirror_records
            .with_label_values(&[topic, stream, result])
            .get()
    };
    let mut views: Vec<RouteView> = state
        .mirror
        .routes()
        .iter()
        .map(|(topic, route)| RouteView {
            topic: topic.clone(),
            stream: route.stream.clone(),
            stream_name: route.target.name().to_owned(),
            stream_arn: route.target.arn().map(str::to_owned),
            region: route.target.region().map(str::to_owned),
            role_arn: route.target.role_arn().map(str::to_owned),
            percent: route.percent,
            partition_key: route.partition_key.to_string(),
            mode: route.mode.name(),
            primary_timeout_ms: route.primary_timeout.as_millis(),
            stream_healthy: route.writer.state().is_healthy(),
            stream_error: route.writer.state().last_error(),
            open_shards: route.writer.state().open_shards(),
            records_sent: count(topic, &route.stream, "sent"),
            records_failed: count(topic, &route.stream, "failed"),
            records_skipped: count(topic, &route.stream, "skipped"),
            queued_records: route.writer.state().queued_records(),
            spool_bytes: route.writer.state().spool_bytes(),
            success_ratio: m.dual_write.ratio(topic),
        })
        .collect();
    views.sort_by(|a, b| a.topic.cmp(&b.topic));
    let backlog = Backlog::read(state.backlog, &state.mirror, m);
    Json(json!({ "routes": views, "backlog": backlog }))
}

async fn clients(State(state): State<AdminState>) -> impl IntoResponse {
    Json(json!({ "clients": state.inventory.snapshot() }))
}
