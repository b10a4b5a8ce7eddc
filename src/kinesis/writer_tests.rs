//! Unit tests of the writer's state machine, on tokio's paused clock and with a Kinesis client
//! that fails every call before it reaches the network, so nothing depends on real time or on a
//! Kinesis endpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_kinesis::config::{BehaviorVersion, ConfigBag, Credentials, Intercept, Region};
use aws_sdk_kinesis::error::BoxError;
use aws_sdk_kinesis::Client;
use bytes::Bytes;
use prometheus::IntGauge;

use super::{runs, StreamWriter, WriterSettings};
use crate::config::{KinesisConfig, MirrorBufferConfig, SpoolConfig, WhenFull, WriteOrdering};
use crate::kinesis::budget::Budget;
use crate::kinesis::request::MirrorRecord;
use crate::kinesis::spool::Spool;
use crate::mirror::partition_key::KinesisKey;
use crate::telemetry::metrics::Metrics;

const SPOOL_MAX_BYTES: u64 = 1 << 30;

#[test]
fn runs_count_adjacent_equal_labels() {
    let labels = ["a", "a", "b", "a", "a", "a"];
    assert_eq!(runs(labels.into_iter()), vec![("a", 2), ("b", 1), ("a", 3)]);
    assert!(runs(std::iter::empty()).is_empty());
}

/// Fails every call before it is serialized: Kinesis is unreachable, with a retryable error
/// (no error code), so the stream stays unhealthy and nothing is dispatched.
#[derive(Debug)]
struct KinesisUnreachable;

impl Intercept for KinesisUnreachable {
    fn name(&self) -> &'static str {
        "KinesisUnreachable"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        Err("Kinesis is unreachable (injected by the test)".into())
    }
}

fn unreachable_kinesis() -> Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .interceptor(KinesisUnreachable)
        .build();
    Client::from_conf(config)
}

fn settings(spool_dir: &std::path::Path, buffer_bytes: u64, when_full: WhenFull) -> WriterSettings {
    WriterSettings {
        kinesis: KinesisConfig {
            region: Some("us-east-1".into()),
            endpoint_url: None,
            linger: Duration::from_millis(20),
            max_in_flight_requests: 4,
            max_attempts: 10,
            shard_map_refresh: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
            ordering: WriteOrdering::PerKey,
            shard_rate_factor: 1.0,
            record_ttl: Duration::from_secs(600),
        },
        buffer: MirrorBufferConfig {
            max_bytes: buffer_bytes,
            when_full,
        },
        spool: SpoolConfig {
            dir: Some(spool_dir.to_owned()),
            max_bytes: SPOOL_MAX_BYTES,
        },
        budget: Arc::new(Budget::new(
            buffer_bytes,
            IntGauge::new("test_budget", "test").expect("gauge"),
        )),
        dead_letters: None,
    }
}

fn record(offset: i64) -> MirrorRecord {
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
    }
}

/// Entries waiting in a stream's spool, as a restarted proxy would find them.
fn spooled_entries(spool_dir: &std::path::Path, stream: &str) -> u64 {
    let (_, report) = Spool::open(&spool_dir.join(stream), SPOOL_MAX_BYTES).expect("open spool");
    report.entries
}

/// Records still in the writer's input when shutdown comes are accounted for like the rest.
/// The setup leaves records in the input deterministically: with no memory budget and
/// `when_full = "block"`, the first records taken wait in `held`, which stops the writer from
/// taking more input, and the sender only finishes once the input holds the rest (more than
/// the input's capacity were sent, so some were taken and some were not).
#[tokio::test(start_paused = true)]
async fn shutdown_spools_records_still_in_the_input() {
    let spool_dir = tempfile::tempdir().expect("tempdir");
    let settings = settings(spool_dir.path(), 0, WhenFull::Block);
    let writer = StreamWriter::spawn(
        "orders-stream",
        unreachable_kinesis(),
        &settings,
        Arc::new(Metrics::new()),
    );
    let sent = super::QUEUE_CAPACITY as i64 + 10;
    let sender = tokio::spawn({
        let writer = writer.clone();
        async move {
            for offset in 0..sent {
                writer
                    .send(record(offset))
                    .await
                    .expect("writer is running");
            }
        }
    });
    sender.await.expect("sender");
    // The deadline has passed already: the writer spools what it holds instead of waiting
    // for a Kinesis that will not come back.
    writer.shut_down(Instant::now()).await;
    assert_eq!(
        spooled_entries(spool_dir.path(), "orders-stream"),
        sent as u64,
        "every record handed to the writer before shutdown must be in the spool"
    );
}

/// Item 9 of the mirror-correctness issue, by construction: two producer connections to one
/// partition are answered out of order (B's batch, offsets 10..20, reaches the writer before
/// A's, 0..10), then both producers retry and Kafka acknowledges both batches again with the
/// same offsets. Each record must be kept once; a record that a truncated log put at a reused
/// offset (5, with other contents) is a new record. Kinesis is unreachable, so what the writer
/// kept is what the shutdown spools.
#[tokio::test(start_paused = true)]
async fn retried_batches_answered_out_of_order_are_kept_once() {
    let spool_dir = tempfile::tempdir().expect("tempdir");
    let settings = settings(spool_dir.path(), 1 << 20, WhenFull::Spill);
    let metrics = Arc::new(Metrics::new());
    let writer = StreamWriter::spawn(
        "orders-stream",
        unreachable_kinesis(),
        &settings,
        metrics.clone(),
    );
    let batch_a = 0..10;
    let batch_b = 10..20;
    let arrivals = batch_b
        .clone()
        .chain(batch_a.clone())
        .chain(batch_a)
        .chain(batch_b);
    for offset in arrivals {
        writer
            .send(record(offset))
            .await
            .expect("writer is running");
    }
    let mut reused = record(5);
    reused.data = Bytes::from_static(b"another record, after truncation");
    writer.send(reused).await.expect("writer is running");
    // acks=0 records have no offsets: their positions repeat across requests, so they are
    // never taken for duplicates.
    for _ in 0..2 {
        let mut unacknowledged = record(0);
        unacknowledged.offset_from_kafka = false;
        writer
            .send(unacknowledged)
            .await
            .expect("writer is running");
    }
    writer.shut_down(Instant::now()).await;
    assert_eq!(
        spooled_entries(spool_dir.path(), "orders-stream"),
        20 + 1 + 2,
        "each acknowledged record once, the reused offset's new record, and both acks=0 records"
    );
    let duplicates = metrics
        .mirror_records
        .with_label_values(&["orders", "orders-stream", "duplicate"])
        .get();
    assert_eq!(
        duplicates, 20,
        "every retried record counted as a duplicate"
    );
}
