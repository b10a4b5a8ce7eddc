//! Unit tests of the writer's state machine, on tokio's paused clock and with a Kinesis client
//! that fails every call before it reaches the network, so nothing depends on real time or on a
//! Kinesis endpoint.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_kinesis::config::{BehaviorVersion, ConfigBag, Credentials, Intercept, Region};
use aws_sdk_kinesis::error::BoxError;
use aws_sdk_kinesis::Client;
use bytes::Bytes;
use serde_json::{json, Value};

use super::{runs, StreamWriter, WriterSettings};
use crate::config::WhenFull;
use crate::kinesis::spool::Spool;
use crate::kinesis::test_support::{
    all_stored, control_plane, entry_data, record, wait_until, writer_settings, FakeKinesis,
    SPOOL_MAX_BYTES,
};
use crate::telemetry::metrics::Metrics;

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
    writer_settings(spool_dir, buffer_bytes, when_full, Duration::from_secs(600))
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

/// What a fake Kinesis saw: the data of every entry it stored, in order, and the
/// DescribeStreamSummary calls.
#[derive(Default)]
struct Seen {
    stored: std::sync::Mutex<Vec<String>>,
    describes: std::sync::atomic::AtomicUsize,
}

/// A one-shard stream whose DescribeStreamSummary answers `describe` (or, when `None`, like a
/// healthy stream), and whose PutRecords stores everything.
fn kinesis_with_describe(seen: &Arc<Seen>, describe: Option<(u16, Value)>) -> FakeKinesis {
    let seen = seen.clone();
    FakeKinesis::new(move |operation, body| {
        match operation {
            "DescribeStreamSummary" => {
                seen.describes.fetch_add(1, Ordering::Relaxed);
                if let Some(answer) = &describe {
                    return answer.clone();
                }
            }
            "PutRecords" => {
                seen.stored.lock().expect("lock").extend(entry_data(body));
                return all_stored(body);
            }
            _ => {}
        }
        control_plane(operation).expect("a Kinesis operation the writer uses")
    })
}

async fn deliver_and_check_health(kinesis: FakeKinesis, seen: &Arc<Seen>) -> Arc<Metrics> {
    let spool_dir = tempfile::tempdir().expect("tempdir");
    let settings = settings(spool_dir.path(), 1 << 20, WhenFull::Spill);
    let metrics = Arc::new(Metrics::new());
    let writer = StreamWriter::spawn("s", kinesis.client(), &settings, metrics.clone());
    for offset in 0..10 {
        writer
            .send(record(offset))
            .await
            .expect("writer is running");
    }
    wait_until("every record stored", Duration::from_secs(60), || {
        seen.stored.lock().expect("lock").len() == 10
    })
    .await;
    assert!(
        writer.state().is_healthy(),
        "answered PutRecords prove the stream healthy: {:?}",
        writer.state().last_error()
    );
    metrics
}

/// Item 12: DescribeStreamSummary throttled on every call (the account's 20 calls per second
/// used up by other proxies) must neither halt dispatch nor mark the stream unhealthy. The old
/// writer marked it unhealthy and dispatched nothing.
#[tokio::test(start_paused = true)]
async fn a_throttled_describe_neither_halts_delivery_nor_marks_the_stream_down() {
    let seen = Arc::new(Seen::default());
    let throttled = (
        400,
        json!({"__type": "LimitExceededException", "message": "Rate exceeded"}),
    );
    let metrics =
        deliver_and_check_health(kinesis_with_describe(&seen, Some(throttled)), &seen).await;
    assert!(
        metrics
            .stream_probes
            .with_label_values(&["s", "throttled"])
            .get()
            >= 1
    );
}

/// Item 12: a DescribeStreamSummary slower than the probe timeout, likewise.
#[tokio::test(start_paused = true)]
async fn a_slow_describe_neither_halts_delivery_nor_marks_the_stream_down() {
    let seen = Arc::new(Seen::default());
    let kinesis =
        kinesis_with_describe(&seen, None).slow("DescribeStreamSummary", Duration::from_secs(60));
    deliver_and_check_health(kinesis, &seen).await;
}

/// Item 12: with traffic, answered PutRecords prove health, so the control plane is called
/// only for the shard-map refresh; the old writer described every stream every 5 s.
#[tokio::test(start_paused = true)]
async fn traffic_spares_the_control_plane() {
    let seen = Arc::new(Seen::default());
    let spool_dir = tempfile::tempdir().expect("tempdir");
    let settings = settings(spool_dir.path(), 1 << 20, WhenFull::Spill);
    let refresh = settings.kinesis.shard_map_refresh;
    let writer = StreamWriter::spawn(
        "s",
        kinesis_with_describe(&seen, None).client(),
        &settings,
        Arc::new(Metrics::new()),
    );
    let minutes = 5;
    for offset in 0..minutes * 60 {
        writer
            .send(record(offset))
            .await
            .expect("writer is running");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let describes = seen.describes.load(Ordering::Relaxed);
    let refreshes = (minutes * 60) as usize / refresh.as_secs() as usize;
    println!("{describes} DescribeStreamSummary calls in {minutes} minutes of traffic");
    assert!(
        describes <= 1 + refreshes,
        "{describes} describes: one at start and one per shard-map refresh at most"
    );
    assert_eq!(
        seen.stored.lock().expect("lock").len(),
        minutes as usize * 60
    );
}

/// Item 14: Kinesis refuses a whole request for one bad entry (a request-level
/// ValidationException). Only that entry is dead-lettered; the old writer dead-lettered every
/// entry of the request.
#[tokio::test(start_paused = true)]
async fn one_bad_entry_is_dead_lettered_alone() {
    let seen = Arc::new(Seen::default());
    let kinesis = {
        let seen = seen.clone();
        FakeKinesis::new(move |operation, body| {
            if operation != "PutRecords" {
                return control_plane(operation).expect("a Kinesis operation the writer uses");
            }
            let data = entry_data(body);
            if data.iter().any(|d| d == "value-7") {
                return (
                    400,
                    json!({"__type": "ValidationException", "message": "1 validation error"}),
                );
            }
            seen.stored.lock().expect("lock").extend(data);
            all_stored(body)
        })
    };
    let spool_dir = tempfile::tempdir().expect("tempdir");
    let settings = settings(spool_dir.path(), 1 << 20, WhenFull::Spill);
    let metrics = Arc::new(Metrics::new());
    let writer = StreamWriter::spawn("s", kinesis.client(), &settings, metrics.clone());
    for offset in 0..20 {
        writer
            .send(record(offset))
            .await
            .expect("writer is running");
    }
    let dead_letters = || {
        metrics
            .mirror_records
            .with_label_values(&["orders", "s", "dead_letter"])
            .get()
    };
    wait_until("every record settled", Duration::from_secs(60), || {
        seen.stored.lock().expect("lock").len() + dead_letters() as usize >= 20
    })
    .await;
    assert_eq!(dead_letters(), 1, "only the bad entry");
    let stored = seen.stored.lock().expect("lock").clone();
    let expected: Vec<String> = (0..20)
        .filter(|&o| o != 7)
        .map(|o| format!("value-{o}"))
        .collect();
    assert_eq!(stored, expected, "the rest delivered, in order");
}
