//! Unit-test fixtures of the writer. A fake Kinesis: an HTTP connector that answers each call from a closure,
//! given the operation (`PutRecords`, `DescribeStreamSummary`...) and the JSON body. Nothing
//! touches the network, so tests run on tokio's paused clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::http::{HttpRequest, HttpResponse};
use aws_sdk_kinesis::config::{
    BehaviorVersion, Credentials, HttpClient, Region, RuntimeComponents,
};
use aws_sdk_kinesis::Client;
use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use prometheus::IntGauge;
use serde_json::{json, Value};

use super::budget::Budget;
use super::client::Clients;
use super::request::MirrorRecord;
use super::writer::WriterSettings;
use crate::config::{
    DeadLetterLimits, Durability, KinesisConfig, MirrorBufferConfig, SpoolConfig, WhenFull,
    WriteOrdering,
};
use crate::kinesis::request::KinesisKey;

type Handler = dyn Fn(&str, &Value) -> (u16, Value) + Send + Sync;
type Cutter = dyn Fn(&str, &Value) -> Option<Cut> + Send + Sync;

/// Where a call's connection is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Before the handler sees the call: nothing lands.
    BeforeLanding,
    /// After the handler answered: what it stored stays, and the answer is lost.
    AfterLanding,
}

#[derive(Clone)]
pub struct FakeKinesis {
    handler: Arc<Handler>,
    /// An operation answered only after a delay, and the delay.
    slow: Option<(&'static str, Duration)>,
    /// Which calls have their connection cut, and where.
    cut: Option<Arc<Cutter>>,
}

impl std::fmt::Debug for FakeKinesis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeKinesis")
    }
}

impl FakeKinesis {
    /// `handler(operation, body)` gives the HTTP status and the JSON answer.
    pub fn new(handler: impl Fn(&str, &Value) -> (u16, Value) + Send + Sync + 'static) -> Self {
        FakeKinesis {
            handler: Arc::new(handler),
            slow: None,
            cut: None,
        }
    }

    /// Cuts the connection of the calls `cut(operation, body)` names, where it says.
    pub fn cutting(
        mut self,
        cut: impl Fn(&str, &Value) -> Option<Cut> + Send + Sync + 'static,
    ) -> Self {
        self.cut = Some(Arc::new(cut));
        self
    }

    /// Answers `operation` only after `delay`.
    pub fn slow(mut self, operation: &'static str, delay: Duration) -> Self {
        self.slow = Some((operation, delay));
        self
    }

    pub fn client(&self) -> Client {
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .http_client(self.clone())
            .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
            .build();
        Client::from_conf(config)
    }

    /// Clients whose default region and credentials reach this fake.
    pub fn clients(&self) -> Clients {
        Clients::serving(kinesis_config(Duration::from_secs(60)), self.client())
    }
}

impl HttpConnector for FakeKinesis {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let operation = request
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.rsplit('.').next())
            .unwrap_or_default()
            .to_owned();
        let body: Value = request
            .body()
            .bytes()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(Value::Null);
        let cut = self.cut.as_ref().and_then(|cut| cut(&operation, &body));
        let reset = || {
            let reset = std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset (injected by the test)",
            );
            HttpConnectorFuture::ready(Err(ConnectorError::io(reset.into())))
        };
        if cut == Some(Cut::BeforeLanding) {
            return reset();
        }
        let (status, answer) = (self.handler)(&operation, &body);
        if cut == Some(Cut::AfterLanding) {
            return reset();
        }
        let response = HttpResponse::new(
            StatusCode::try_from(status).expect("valid status"),
            SdkBody::from(answer.to_string()),
        );
        match self.slow {
            Some((slow, delay)) if slow == operation => HttpConnectorFuture::new(async move {
                tokio::time::sleep(delay).await;
                Ok(response)
            }),
            _ => HttpConnectorFuture::ready(Ok(response)),
        }
    }
}

impl HttpClient for FakeKinesis {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

/// A one-shard stream's answers to the control plane, for handlers that only care about
/// PutRecords.
pub fn control_plane(operation: &str) -> Option<(u16, Value)> {
    match operation {
        "DescribeStreamSummary" => Some((
            200,
            json!({"StreamDescriptionSummary": {
                "StreamName": "s", "StreamARN": "arn:aws:kinesis:us-east-1:0:stream/s",
                "StreamStatus": "ACTIVE", "RetentionPeriodHours": 24,
                "StreamCreationTimestamp": 0, "EnhancedMonitoring": [],
                "OpenShardCount": 1}}),
        )),
        "ListShards" => Some((
            200,
            json!({"Shards": [{"ShardId": "shardId-0",
                "HashKeyRange": {"StartingHashKey": "0",
                    "EndingHashKey": "340282366920938463463374607431768211455"},
                "SequenceNumberRange": {"StartingSequenceNumber": "1"}}]}),
        )),
        _ => None,
    }
}

/// The middle of the hash key space.
pub const HALF: u128 = 1 << 127;

/// ListShards' answer for two open shards: `low` below `HALF`, `high` from it.
pub fn two_shards(low: &str, high: &str) -> (u16, Value) {
    (
        200,
        json!({"Shards": [
            {"ShardId": low, "HashKeyRange": {"StartingHashKey": "0",
                "EndingHashKey": (HALF - 1).to_string()},
             "SequenceNumberRange": {"StartingSequenceNumber": "1"}},
            {"ShardId": high, "HashKeyRange": {"StartingHashKey": HALF.to_string(),
                "EndingHashKey": u128::MAX.to_string()},
             "SequenceNumberRange": {"StartingSequenceNumber": "1"}}]}),
    )
}

/// Every entry of a PutRecords body stored in shard 0.
pub fn all_stored(body: &Value) -> (u16, Value) {
    let stored: Vec<Value> = body["Records"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|_| json!({"SequenceNumber": "1", "ShardId": "shardId-0"}))
        .collect();
    (200, json!({"FailedRecordCount": 0, "Records": stored}))
}

/// A one-shard stream's data plane: PutRecords stores every entry, with increasing sequence
/// numbers, and GetShardIterator (TRIM_HORIZON, AFTER_SEQUENCE_NUMBER, AT_TIMESTAMP) and
/// GetRecords read them back; the control plane answers as [`control_plane`].
#[derive(Default)]
pub struct FakeStream {
    records: std::sync::Mutex<Vec<Value>>,
}

impl FakeStream {
    pub fn answer(&self, operation: &str, body: &Value) -> (u16, Value) {
        let mut records = self.records.lock().expect("records lock");
        match operation {
            "PutRecords" => {
                let mut stored = Vec::new();
                for entry in body["Records"].as_array().map_or(&[][..], Vec::as_slice) {
                    let sequence = (1_000_000 + records.len()).to_string();
                    let arrival = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .expect("after the epoch")
                        .as_secs_f64();
                    records.push(json!({"SequenceNumber": sequence,
                        "ApproximateArrivalTimestamp": arrival,
                        "Data": entry["Data"], "PartitionKey": entry["PartitionKey"]}));
                    stored.push(json!({"SequenceNumber": sequence, "ShardId": "shardId-0"}));
                }
                (200, json!({"FailedRecordCount": 0, "Records": stored}))
            }
            "GetShardIterator" => {
                let position = |field: &str, after: &dyn Fn(&Value, &Value) -> bool| {
                    records
                        .iter()
                        .position(|r| after(&r[field], &body[field]))
                        .unwrap_or(records.len())
                };
                let index = match body["ShardIteratorType"].as_str() {
                    Some("TRIM_HORIZON") => 0,
                    Some("AFTER_SEQUENCE_NUMBER") => {
                        let number = |v: &Value| v.as_str().and_then(|s| s.parse::<u64>().ok());
                        position("SequenceNumber", &|stored, _| {
                            number(stored) > number(&body["StartingSequenceNumber"])
                        })
                    }
                    Some("AT_TIMESTAMP") => position("ApproximateArrivalTimestamp", &|r, at| {
                        r.as_f64() >= at.as_f64()
                    }),
                    other => panic!("iterator type {other:?} is not faked"),
                };
                (200, json!({"ShardIterator": index.to_string()}))
            }
            "GetRecords" => {
                let from: usize = body["ShardIterator"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("an iterator this fake gave");
                let limit = body["Limit"].as_u64().unwrap_or(10_000) as usize;
                let page: Vec<Value> = records.iter().skip(from).take(limit).cloned().collect();
                let next = from + page.len();
                let behind = if next < records.len() { 1000 } else { 0 };
                (
                    200,
                    json!({"Records": page, "NextShardIterator": next.to_string(),
                        "MillisBehindLatest": behind}),
                )
            }
            _ => control_plane(operation).expect("a Kinesis operation the writer uses"),
        }
    }

    /// The data of every stored record, decoded, in the order stored.
    pub fn stored_data(&self) -> Vec<String> {
        let records = self.records.lock().expect("records lock");
        entry_data(&json!({ "Records": *records }))
    }
}

pub const SPOOL_MAX_BYTES: u64 = 1 << 30;

fn kinesis_config(record_ttl: Duration) -> KinesisConfig {
    KinesisConfig {
        region: Some("us-east-1".into()),
        endpoint_url: None,
        linger: Duration::from_millis(20),
        max_in_flight_requests: 4,
        max_attempts: 10,
        shard_map_refresh: Duration::from_secs(60),
        request_timeout: Duration::from_secs(5),
        ordering: WriteOrdering::PerKey,
        shard_rate_factor: 1.0,
        record_ttl,
    }
}

/// A writer's settings with a spool in `spool_dir`, a budget of `buffer_bytes`, and records
/// spilled after `record_ttl`.
/// [`writer_settings`] that spill when `buffer_bytes` are full and keep records 600 s.
pub fn spilling_settings(spool_dir: &std::path::Path, buffer_bytes: u64) -> WriterSettings {
    writer_settings(
        spool_dir,
        buffer_bytes,
        WhenFull::Spill,
        Duration::from_secs(600),
    )
}

pub fn writer_settings(
    spool_dir: &std::path::Path,
    buffer_bytes: u64,
    when_full: WhenFull,
    record_ttl: Duration,
) -> WriterSettings {
    WriterSettings {
        kinesis: kinesis_config(record_ttl),
        buffer: MirrorBufferConfig {
            max_bytes: buffer_bytes,
            when_full,
            durability: Durability::Memory,
        },
        spool: SpoolConfig {
            dir: Some(spool_dir.to_owned()),
            max_bytes: SPOOL_MAX_BYTES,
            dead_letters: DeadLetterLimits::default(),
            fsync_interval: Duration::from_millis(crate::config::DEFAULT_FSYNC_INTERVAL_MS),
            fsync_bytes: crate::config::DEFAULT_FSYNC_BYTES,
        },
        budget: Arc::new(Budget::new(
            buffer_bytes,
            IntGauge::new("test_budget", "test").expect("gauge"),
        )),
        dead_letters: None,
    }
}

/// Record `offset` of partition 0 of `orders`: key `key-OFFSET`, value `value-OFFSET`.
pub fn record(offset: i64) -> MirrorRecord {
    MirrorRecord {
        topic: Arc::from("orders"),
        partition: 0,
        offset,
        offset_from_kafka: true,
        key: KinesisKey {
            partition_key: format!("key-{offset}"),
            explicit_hash_key: None,
        },
        data: Bytes::from(format!("value-{offset}")),
        acked_at: Instant::now(),
        delivery: None,
        logged: None,
    }
}

/// Records of `orders` that `mirror_records_total` counts for stream `s` with `result`.
pub fn outcomes(metrics: &crate::telemetry::metrics::Metrics, result: &str) -> u64 {
    metrics
        .mirror_records
        .with_label_values(&["orders", "s", result])
        .get()
}

/// The data of a PutRecords body's entries, decoded.
pub fn entry_data(body: &Value) -> Vec<String> {
    body["Records"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|r| {
            let data = {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(r["Data"].as_str().unwrap_or_default())
            }
            .expect("base64 data");
            String::from_utf8(data).expect("utf-8 data")
        })
        .collect()
}

/// Waits, on the test's clock, until `done` holds; fails after `limit`.
pub async fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
