//! A fast Kinesis-compatible endpoint for the end-to-end benchmark: answers
//! DescribeStreamSummary, ListShards and PutRecords (AWS JSON 1.1, the protocol
//! aws-sdk-kinesis speaks) with success, routing every PutRecords entry to the shard its MD5
//! hash key (or ExplicitHashKey) falls in, so the proxy sees no shard-map mispredictions.
//! Records are counted, not stored. `GET /stats` answers `records requests bytes`.
//!
//! It runs in a child process (the bench binary re-executed with `KKP_E2E_ROLE=kinesis-mock`)
//! so its CPU is measured apart from the proxy's and it can be pinned apart from it. It stands
//! in for a remote service, so it runs at nice 19: on a 2-core machine it must share a CPU
//! with the broker and the client, and there it takes only the CPU they leave, as a Kinesis
//! on other hosts would take none. Its CPU is still measured and reported.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use kafka_kinesis_proxy::kinesis::shard_map::{hash_key, ShardMap};
use serde::Deserialize;

const JSON: &str = "application/x-amz-json-1.1";

struct Mock {
    map: ShardMap,
    records: AtomicU64,
    requests: AtomicU64,
    bytes: AtomicU64,
    sequence: AtomicU64,
}

#[derive(Deserialize)]
struct PutRecordsIn {
    #[serde(rename = "StreamName", default)]
    stream: String,
    #[serde(rename = "Records")]
    records: Vec<EntryIn>,
}

/// `Data` is left out: serde skips it without decoding the base64.
#[derive(Deserialize)]
struct EntryIn {
    #[serde(rename = "PartitionKey")]
    partition_key: String,
    #[serde(rename = "ExplicitHashKey", default)]
    explicit_hash_key: Option<String>,
}

#[derive(Deserialize)]
struct StreamIn {
    #[serde(rename = "StreamName", default)]
    stream: String,
}

/// Serves on 127.0.0.1:`port` until killed.
pub fn run(port: u16, shards: u32) {
    // SAFETY: setpriority takes no pointers; who = 0 is this process (still one thread here).
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
        eprintln!(
            "kinesis-mock: cannot lower priority: {}",
            std::io::Error::last_os_error()
        );
    }
    let mock = Arc::new(Mock {
        map: ShardMap::even(shards),
        records: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        sequence: AtomicU64::new(1),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let app = Router::new()
            .route("/stats", get(stats))
            .fallback(handle)
            .with_state(mock);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the mock Kinesis port");
        axum::serve(listener, app).await.expect("serve");
    });
}

async fn stats(State(mock): State<Arc<Mock>>) -> String {
    format!(
        "{} {} {}\n",
        mock.records.load(Ordering::Relaxed),
        mock.requests.load(Ordering::Relaxed),
        mock.bytes.load(Ordering::Relaxed)
    )
}

fn reply(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, JSON)], body).into_response()
}

fn error(kind: &str, message: &str) -> Response {
    eprintln!("kinesis-mock: {kind}: {message}");
    reply(
        StatusCode::BAD_REQUEST,
        serde_json::json!({"__type": kind, "message": message}).to_string(),
    )
}

async fn handle(State(mock): State<Arc<Mock>>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/x-amz-json") {
        // aws-sdk-kinesis 1.x speaks AWS JSON 1.1; anything else (CBOR) is not answered.
        return error(
            "SerializationException",
            &format!("this mock speaks application/x-amz-json-1.1 only, got `{content_type}`"),
        );
    }
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    mock.requests.fetch_add(1, Ordering::Relaxed);
    mock.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    match target.strip_prefix("Kinesis_20131202.").unwrap_or(target) {
        "PutRecords" => put_records(&mock, &body),
        "DescribeStreamSummary" => {
            let stream = serde_json::from_slice::<StreamIn>(&body)
                .map(|s| s.stream)
                .unwrap_or_default();
            reply(
                StatusCode::OK,
                serde_json::json!({"StreamDescriptionSummary": {
                    "StreamName": stream,
                    "StreamARN": format!("arn:aws:kinesis:us-east-1:000000000000:stream/{stream}"),
                    "StreamStatus": "ACTIVE",
                    "StreamModeDetails": {"StreamMode": "PROVISIONED"},
                    "RetentionPeriodHours": 24,
                    "StreamCreationTimestamp": 1_700_000_000.0,
                    "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
                    "EncryptionType": "NONE",
                    "OpenShardCount": mock.map.len(),
                    "ConsumerCount": 0
                }})
                .to_string(),
            )
        }
        "ListShards" => {
            let shards: Vec<_> = mock
                .map
                .shards()
                .iter()
                .map(|shard| {
                    serde_json::json!({
                        "ShardId": shard.id,
                        "HashKeyRange": {
                            "StartingHashKey": shard.start.to_string(),
                            "EndingHashKey": shard.end.to_string(),
                        },
                        "SequenceNumberRange": {"StartingSequenceNumber": "1"}
                    })
                })
                .collect();
            reply(
                StatusCode::OK,
                serde_json::json!({ "Shards": shards }).to_string(),
            )
        }
        other => error(
            "UnknownOperationException",
            &format!("operation `{other}` is not mocked"),
        ),
    }
}

fn put_records(mock: &Mock, body: &[u8]) -> Response {
    let request: PutRecordsIn = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return error("SerializationException", &e.to_string()),
    };
    let _ = request.stream;
    let n = request.records.len() as u64;
    let first = mock.sequence.fetch_add(n, Ordering::Relaxed);
    let mut out = String::with_capacity(64 + request.records.len() * 96);
    out.push_str("{\"FailedRecordCount\":0,\"EncryptionType\":\"NONE\",\"Records\":[");
    for (i, entry) in request.records.iter().enumerate() {
        let hash = match entry
            .explicit_hash_key
            .as_deref()
            .and_then(|h| h.parse::<u128>().ok())
        {
            Some(h) => h,
            None => hash_key(&entry.partition_key),
        };
        let shard = mock
            .map
            .shard_for_hash(hash)
            .map_or("shardId-000000000000", |s| s.id.as_str());
        if i > 0 {
            out.push(',');
        }
        let _ = write!(
            out,
            "{{\"SequenceNumber\":\"{:056}\",\"ShardId\":\"{shard}\"}}",
            first + i as u64
        );
    }
    out.push_str("]}");
    mock.records.fetch_add(n, Ordering::Relaxed);
    reply(StatusCode::OK, out)
}
