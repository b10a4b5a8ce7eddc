//! The stage's accounting of what it could not mirror, and the streams' independence: a real
//! stage and real writers, in front of an unreachable Kinesis or a fake one
//! ([`FakeKinesis`]).
//!
//! Decoding runs on the stage's own threads, which tokio's paused clock does not see (it would
//! race ahead while they work), so these tests run on the real clock, waiting on conditions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde_json::json;

use super::{Mirror, ProduceExchange, EXCHANGE_QUEUE};
use crate::config::{
    MirrorRoute, PartitionKeyRule, RouteMode, StreamTarget, WhenFull, DEFAULT_PRIMARY_TIMEOUT_MS,
};
use crate::kinesis::spool::{Spool, SpoolEntry};
use crate::kinesis::test_support::{
    all_stored, control_plane, entry_data, spilling_settings, wait_until, writer_settings,
    FakeKinesis, SPOOL_MAX_BYTES,
};
use crate::telemetry::inventory::{ClientKey, Inventory};
use crate::telemetry::metrics::{Metrics, MirrorResult};

const VERSION: i16 = 7;

/// The body of a Produce v7 request with `acks` of `values`, keyed `key-N`, to partition 0 of
/// `topic`.
fn produce_request(topic: &str, acks: i16, values: &[Bytes]) -> Bytes {
    produce_request_of(topic, acks, values, None)
}

/// An acks=0 [`produce_request`] of `records` records, its batch transactional when
/// `producer` (id, epoch) is given.
pub(super) fn acks0_produce(topic: &str, records: usize, producer: Option<(i64, i16)>) -> Bytes {
    let producer = producer.map(|(id, epoch)| Producer {
        id,
        epoch,
        base_sequence: -1,
        transactional: true,
    });
    produce_request_of(
        topic,
        0,
        &vec![Bytes::from_static(b"value"); records],
        producer,
    )
}

/// An acks=all [`produce_request`] from idempotent producer `producer_id` (epoch 0), its
/// batch starting at sequence `base_sequence`.
pub(super) fn idempotent_produce(
    topic: &str,
    values: &[Bytes],
    producer_id: i64,
    base_sequence: i32,
) -> Bytes {
    let producer = Producer {
        id: producer_id,
        epoch: 0,
        base_sequence,
        transactional: false,
    };
    produce_request_of(topic, -1, values, Some(producer))
}

/// Who produced a test batch.
#[derive(Clone, Copy)]
struct Producer {
    id: i64,
    epoch: i16,
    base_sequence: i32,
    transactional: bool,
}

fn produce_request_of(
    topic: &str,
    acks: i16,
    values: &[Bytes],
    producer: Option<Producer>,
) -> Bytes {
    let (producer_id, producer_epoch) = producer.map_or((-1, -1), |p| (p.id, p.epoch));
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Record {
            transactional: producer.is_some_and(|p| p.transactional),
            control: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: producer.map_or(-1, |p| p.base_sequence.wrapping_add(i as i32)),
            timestamp: 0,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(value.clone()),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut batch = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut batch,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch.freeze()))])]);
    let mut body = BytesMut::new();
    request.encode(&mut body, VERSION).unwrap();
    body.freeze()
}

/// Writer settings whose Kinesis never answers, with a spool in `spool`.
fn unreachable_kinesis(spool: &std::path::Path) -> crate::kinesis::writer::WriterSettings {
    let mut settings = spilling_settings(spool, 1 << 30);
    settings.kinesis.endpoint_url = Some("http://127.0.0.1:9".into());
    settings
}

/// The whole frame of Kafka's Produce v7 answer storing partition 0 of `topic` from
/// `base_offset`.
pub(super) fn produce_response(topic: &str, base_offset: i64) -> Bytes {
    let response = ProduceResponse::default().with_responses(vec![TopicProduceResponse::default()
        .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
        .with_partition_responses(vec![PartitionProduceResponse::default()
            .with_index(0)
            .with_base_offset(base_offset)])]);
    let mut body = BytesMut::new();
    response.encode(&mut body, VERSION).unwrap();
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32 + 4);
    frame.put_i32(1); // correlation id
    frame.put(body);
    frame.freeze()
}

pub(super) fn client() -> Arc<ClientKey> {
    Arc::new(ClientKey {
        client_id: "stage-test".into(),
        address: [127, 0, 0, 1].into(),
    })
}

/// An acks=1 Produce of `values` to partition 0 of `topic`, which Kafka stored from
/// `base_offset`.
pub(super) fn stored(topic: &str, base_offset: i64, values: &[Bytes]) -> ProduceExchange {
    ProduceExchange {
        client: client(),
        version: VERSION,
        request_body: produce_request(topic, 1, values),
        response_frame: Some(produce_response(topic, base_offset)),
        deliveries: Default::default(),
    }
}

pub(super) fn route(topic: &str, stream: &str) -> MirrorRoute {
    MirrorRoute {
        topic: topic.into(),
        target: StreamTarget::new(stream, None, None).unwrap(),
        percent: 100.0,
        partition_key: PartitionKeyRule::Key,
        mode: RouteMode::Mirror,
        primary_timeout: Duration::from_millis(DEFAULT_PRIMARY_TIMEOUT_MS),
        partitions: 1,
    }
}

/// A stage routing `orders` at `percent` to a writer whose Kinesis endpoint is unreachable,
/// its metrics, and its spool directory (kept while the test runs).
pub(super) async fn unreachable_mirror(percent: f64) -> (Mirror, Arc<Metrics>, tempfile::TempDir) {
    let spool = tempfile::tempdir().unwrap();
    let settings = unreachable_kinesis(spool.path());
    let metrics = Arc::new(Metrics::new());
    let route = MirrorRoute {
        percent,
        ..route("orders", "orders-stream")
    };
    let mirror = Mirror::start(
        &[route],
        settings,
        metrics.clone(),
        Arc::new(Inventory::default()),
    )
    .await;
    (mirror, metrics, spool)
}

#[tokio::test]
async fn exchanges_shed_from_a_full_queue_count_as_dropped_for_the_dual_write_ratio() {
    // The setting under test: `durability = "memory"` (the test helpers' setting) with the
    // default `when_full = "spill"`, the one mode that sheds without a log to read the
    // exchanges back from (see deferred_tests.rs for the default, logged, mode).
    let (mirror, metrics, _spool) = unreachable_mirror(50.0).await;
    assert!(mirror.wal.is_none(), "memory mode keeps no log");
    let client = client();
    let body = acks0_produce("orders", 10, None);
    // On this single-threaded runtime the stage cannot run between these hand-overs, so the
    // queue fills and the last exchanges are shed, deterministically.
    let shed = 3;
    for _ in 0..EXCHANGE_QUEUE + shed {
        mirror
            .hand_over(ProduceExchange {
                client: client.clone(),
                version: VERSION,
                request_body: body.clone(),
                response_frame: None,
                deliveries: Default::default(),
            })
            .await;
    }
    assert_eq!(metrics.mirror_dropped_requests.get(), shed as u64);
    let dropped = metrics
        .mirror_records
        .with_label_values(&["orders", "orders-stream", "dropped"])
        .get();
    assert_eq!(dropped, (shed * 10 / 2) as u64, "10 records each, at 50%");
    assert_eq!(
        metrics.dual_write.ratio("orders"),
        Some(0.0),
        "nothing delivered, the shed records decided: the ratio shows the loss"
    );
}

#[test]
fn spooled_records_show_an_outage_in_the_ratio_until_replay_delivers_them() {
    let metrics = Metrics::new();
    metrics.mirror_outcome("t", "s", MirrorResult::Spooled, 30);
    assert_eq!(metrics.dual_write.ratio("t"), Some(0.0));
    metrics.mirror_outcome("t", "s", MirrorResult::Sent, 30);
    assert_eq!(metrics.dual_write.ratio("t"), Some(0.5));
}

#[tokio::test]
async fn a_reload_repoints_a_topic_to_another_region_and_to_an_arn_each_with_its_own_writer() {
    let spool = tempfile::tempdir().unwrap();
    let settings = unreachable_kinesis(spool.path());
    let route = |stream: &str, region: Option<&str>| MirrorRoute {
        target: StreamTarget::new(stream, region, None).unwrap(),
        ..route("orders", "orders-stream")
    };
    let arn = "arn:aws:kinesis:ap-south-1:123456789012:stream/orders-stream";
    let mirror = Mirror::start(
        &[route("orders-stream", None)],
        settings,
        Arc::new(Metrics::new()),
        Arc::new(Inventory::default()),
    )
    .await;
    let in_force = |mirror: &Mirror| mirror.routes()["orders"].stream.clone();
    assert_eq!(in_force(&mirror), "orders-stream");
    mirror
        .apply_routes(&[route("orders-stream", Some("eu-west-1"))])
        .await;
    assert_eq!(in_force(&mirror), "orders-stream in eu-west-1");
    mirror.apply_routes(&[route(arn, None)]).await;
    assert_eq!(in_force(&mirror), arn);
    let mut streams: Vec<String> = mirror
        .streams()
        .await
        .iter()
        .map(|s| s.stream.clone())
        .collect();
    streams.sort();
    assert_eq!(
        streams,
        [arn, "orders-stream", "orders-stream in eu-west-1"],
        "a writer each: the same name in another region is another stream"
    );
}

/// The data each stream stored, in the order stored.
pub(super) type Stored = Arc<Mutex<HashMap<String, Vec<String>>>>;

/// Kinesis for two streams: while `a_down` is set, `stream-a` is down (every call fails);
/// otherwise each stream stores every entry.
pub(super) fn kinesis_with_a_down(a_down: &Arc<AtomicBool>, stored: &Stored) -> FakeKinesis {
    let (a_down, stored) = (a_down.clone(), stored.clone());
    FakeKinesis::new(move |operation, body| {
        let stream = body["StreamName"].as_str().unwrap_or_default();
        if stream == "stream-a" && a_down.load(Ordering::Acquire) {
            return (500, json!({"__type": "InternalFailure", "message": "down"}));
        }
        if let Some(answer) = control_plane(operation) {
            return answer;
        }
        let mut stored = stored.lock().unwrap();
        stored
            .entry(stream.to_owned())
            .or_default()
            .extend(entry_data(body));
        all_stored(body)
    })
}

/// A mirror of `topic-a` to `stream-a`, whose writer is stuck while its Kinesis is down, and
/// of `topic-b` to `stream-b`, which delivers everything.
struct OneStreamStuck {
    mirror: Mirror,
    metrics: Arc<Metrics>,
    a_down: Arc<AtomicBool>,
    stored: Stored,
    _spool: tempfile::TempDir,
}

/// A stage with no routes yet whose writers call `kinesis`, and its metrics.
pub(super) async fn mirror_in_front_of(
    settings: crate::kinesis::writer::WriterSettings,
    kinesis: FakeKinesis,
) -> (Mirror, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let mirror = Mirror::start(
        &[],
        settings,
        metrics.clone(),
        Arc::new(Inventory::default()),
    )
    .await;
    mirror.writers.lock().await.clients = kinesis.clients();
    (mirror, metrics)
}

impl OneStreamStuck {
    async fn start(when_full: WhenFull) -> OneStreamStuck {
        let spool = tempfile::tempdir().unwrap();
        let mut settings =
            writer_settings(spool.path(), 1 << 30, when_full, Duration::from_secs(600));
        // No spool takes a record. stream-b never needs one. stream-a's writer finds records
        // of an earlier run in its spool, so it spills what it takes until the spool drains,
        // which it cannot while its Kinesis is down: the writer holds the records and takes no
        // more, as it does when both Kinesis and the spool's disk are out.
        settings.spool.max_bytes = 1;
        // So that stream-a's backlog, once its Kinesis is back, takes a second, not ten.
        settings.kinesis.shard_rate_factor = 100.0;
        let (a_down, stored) = (Arc::new(AtomicBool::new(true)), Stored::default());
        let (mirror, metrics) =
            mirror_in_front_of(settings, kinesis_with_a_down(&a_down, &stored)).await;
        let (earlier_run, _) =
            Spool::open(&spool.path().join("stream-a"), SPOOL_MAX_BYTES).unwrap();
        earlier_run
            .append(&[SpoolEntry {
                stream: "stream-a".into(),
                partition_key: "key".into(),
                explicit_hash_key: None,
                data: Bytes::from_static(b"earlier"),
                topic: "earlier-run".into(),
                partition: 0,
                offset: 0,
                enqueued_unix_ms: 0,
            }])
            .unwrap();
        drop(earlier_run);
        mirror
            .apply_routes(&[route("topic-a", "stream-a"), route("topic-b", "stream-b")])
            .await;
        OneStreamStuck {
            mirror,
            metrics,
            a_down,
            stored,
            _spool: spool,
        }
    }

    fn mirrored(&self, topic: &str, result: MirrorResult) -> u64 {
        let stream = topic.replace("topic", "stream");
        self.metrics
            .mirror_records
            .with_label_values(&[topic, &stream, result.as_str()])
            .get()
    }

    fn kafka_records(&self, topic: &str) -> u64 {
        self.metrics
            .kafka_records
            .with_label_values(&[topic, "ok"])
            .get()
    }

    fn stored(&self, stream: &str) -> Vec<String> {
        let stored = self.stored.lock().unwrap();
        stored.get(stream).cloned().unwrap_or_default()
    }

    /// Waits until the stage has taken every exchange handed over.
    async fn stage_drained(&self, what: &str) {
        wait_until(what, Duration::from_secs(10), || {
            self.mirror.queued_bytes.get() == 0
        })
        .await;
    }
}

/// Values `b-N` for offsets `offsets`: what stream-b should store, in order.
fn b_values(offsets: std::ops::Range<i64>) -> Vec<Bytes> {
    offsets.map(|o| Bytes::from(format!("b-{o}"))).collect()
}

fn b_data(offsets: std::ops::Range<i64>) -> Vec<String> {
    offsets.map(|o| format!("b-{o}")).collect()
}

/// Value padding: 1 KiB values, so that a few dozen batches of 100 fill a stream's queue.
const PAD: char = '.';

/// 100 values `a-N` of 1 KiB for offsets from `first`.
fn a_values(first: i64) -> Vec<Bytes> {
    (first..first + 100)
        .map(|o| Bytes::from(format!("{:.<1024}", format!("a-{o}"))))
        .collect()
}

/// Records produced to topic-a in the spill and drop tests: more than stream-a's writer
/// (at most 8,192 in its input and held) and its queue (8 MiB, about 6,200 of these records)
/// can take.
const A_RECORDS: u64 = 20_000;

async fn a_stuck_stream_sheds_only_its_own_records(when_full: WhenFull) {
    let t = OneStreamStuck::start(when_full).await;
    let rounds = A_RECORDS as i64 / 1_000;
    for round in 0..rounds {
        for i in 0..10 {
            let first = (round * 10 + i) * 100;
            t.mirror
                .hand_over(stored("topic-a", first, &a_values(first)))
                .await;
        }
        let b = b_values(round * 10..round * 10 + 10);
        t.mirror.hand_over(stored("topic-b", round * 10, &b)).await;
        t.mirror.hand_over(stored("unrouted", round * 10, &b)).await;
        t.stage_drained("the stage to drain its queue while stream-a is stuck")
            .await;
    }
    let b_records = rounds * 10;
    wait_until(
        "stream-b to deliver every record",
        Duration::from_secs(20),
        || t.mirrored("topic-b", MirrorResult::Sent) == b_records as u64,
    )
    .await;
    assert_eq!(
        t.stored("stream-b"),
        b_data(0..b_records),
        "all, once, in Kafka order"
    );
    assert_eq!(t.mirrored("topic-b", MirrorResult::Dropped), 0);
    assert_eq!(t.metrics.dual_write.ratio("topic-b"), Some(1.0));

    let shed = t.mirrored("topic-a", MirrorResult::Dropped);
    println!("stream-a shed {shed} of {A_RECORDS} records");
    assert_eq!(shed % 100, 0, "whole partitions are shed: {shed}");
    assert!(
        (A_RECORDS - 8_192 - 6_300..=A_RECORDS - 4_096).contains(&shed),
        "stream-a sheds what its writer and queue cannot hold: {shed}"
    );
    assert_eq!(
        t.metrics.dual_write.ratio("topic-a"),
        Some(0.0),
        "the ratio shows stream-a's loss"
    );
    assert_eq!(
        t.metrics.mirror_dropped_requests.get(),
        0,
        "the stage never shed a whole exchange"
    );
    for (topic, records) in [
        ("topic-a", A_RECORDS),
        ("topic-b", b_records as u64),
        ("unrouted", b_records as u64),
    ] {
        assert_eq!(t.kafka_records(topic), records, "{topic} counted");
    }
}

#[tokio::test]
async fn in_spill_mode_a_stuck_stream_sheds_only_its_own_records() {
    a_stuck_stream_sheds_only_its_own_records(WhenFull::Spill).await;
}

#[tokio::test]
async fn in_drop_mode_a_stuck_stream_sheds_only_its_own_records() {
    a_stuck_stream_sheds_only_its_own_records(WhenFull::Drop).await;
}

/// Waits until `count` has stood still for a second, and returns it: whoever advances it is
/// held.
async fn wait_until_still(what: &str, count: &AtomicUsize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = (count.load(Ordering::Acquire), std::time::Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = count.load(Ordering::Acquire);
        if now != last.0 {
            last = (now, std::time::Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(1) {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
    }
}

#[tokio::test]
async fn in_block_mode_a_stuck_stream_holds_only_the_connections_that_produce_to_it() {
    let t = OneStreamStuck::start(WhenFull::Block).await;
    let handed_a = Arc::new(AtomicUsize::new(0));
    let a_exchanges = 1_000;
    let producer_a = tokio::spawn({
        let (mirror, handed_a) = (t.mirror.clone(), handed_a.clone());
        async move {
            for i in 0..a_exchanges {
                let first = i as i64 * 100;
                mirror
                    .hand_over(stored("topic-a", first, &a_values(first)))
                    .await;
                handed_a.fetch_add(1, Ordering::AcqRel);
            }
        }
    });
    let held_at = wait_until_still("stream-a's producer to be held", &handed_a).await;
    println!("stream-a's producer is held after {held_at} exchanges");
    assert!(
        held_at < a_exchanges,
        "block mode holds stream-a's producer"
    );

    let patience = Duration::from_secs(5);
    tokio::time::timeout(
        patience,
        t.mirror.hand_over(stored("unrouted", 0, &b_values(0..100))),
    )
    .await
    .expect("a connection producing to an unrouted topic is not held by stream-a's backlog");
    for i in 0..10 {
        let exchange = stored("topic-b", i * 10, &b_values(i * 10..i * 10 + 10));
        tokio::time::timeout(patience, t.mirror.hand_over(exchange))
            .await
            .expect("a connection producing to stream-b is not held by stream-a's backlog");
    }
    wait_until(
        "stream-b to deliver every record",
        Duration::from_secs(20),
        || t.mirrored("topic-b", MirrorResult::Sent) == 100,
    )
    .await;
    assert_eq!(t.stored("stream-b"), b_data(0..100));
    wait_until(
        "the unrouted topic's records to be counted",
        Duration::from_secs(20),
        || t.kafka_records("unrouted") == 100,
    )
    .await;
    assert_eq!(
        handed_a.load(Ordering::Acquire),
        held_at,
        "stream-a's producer is still held"
    );
    assert_eq!(t.mirrored("topic-a", MirrorResult::Dropped), 0);
    producer_a.abort();
}

/// Shutdown moves every record handed over into its writer, so a stream that works delivers
/// all of them; a stuck stream cannot hold it up past its deadline, and every record owed to
/// that stream is still counted.
#[tokio::test]
async fn shutdown_flushes_every_stream_and_a_stuck_one_only_until_the_deadline() {
    let t = OneStreamStuck::start(WhenFull::Spill).await;
    for first in (0..A_RECORDS as i64).step_by(100) {
        t.mirror
            .hand_over(stored("topic-a", first, &a_values(first)))
            .await;
    }
    for i in 0..10 {
        let exchange = stored("topic-b", i * 10, &b_values(i * 10..i * 10 + 10));
        t.mirror.hand_over(exchange).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    tokio::time::timeout(Duration::from_secs(30), t.mirror.shut_down(deadline))
        .await
        .expect("a stuck stream does not hold shutdown past its deadline");
    assert_eq!(
        t.stored("stream-b"),
        b_data(0..100),
        "every record handed to stream-b is delivered before shutdown ends"
    );
    wait_until(
        "every record of stream-a to be counted",
        Duration::from_secs(20),
        || {
            t.mirrored("topic-a", MirrorResult::Dropped)
                + t.mirrored("topic-a", MirrorResult::Failed)
                == A_RECORDS
        },
    )
    .await;
}

/// A reload that removes a stream's route leaves what was queued for it to drain, in order.
#[tokio::test]
async fn records_queued_for_a_stream_whose_route_a_reload_removes_are_still_delivered_in_order() {
    let t = OneStreamStuck::start(WhenFull::Spill).await;
    // More than stream-a's writer takes while stuck (at most 8,192), fewer than its writer and
    // queue hold together (at least 4,097 and about 6,200): some wait in its queue, none is
    // shed.
    let records = 9_000;
    for first in (0..records).step_by(100) {
        t.mirror
            .hand_over(stored("topic-a", first, &a_values(first)))
            .await;
    }
    t.stage_drained("the stage to take every exchange").await;
    let queue = t.mirror.routes()["topic-a"].queue.clone();
    assert!(queue.held_bytes() > 0, "records wait in stream-a's queue");
    t.mirror.apply_routes(&[route("topic-b", "stream-b")]).await;
    t.a_down.store(false, Ordering::Release);
    wait_until(
        "stream-a to deliver what was queued for it",
        Duration::from_secs(60),
        || t.stored("stream-a").len() == records as usize + 1,
    )
    .await;
    let delivered: Vec<String> = t
        .stored("stream-a")
        .iter()
        .map(|data| data.trim_end_matches(PAD).to_owned())
        .collect();
    let expected: Vec<String> = std::iter::once("earlier".to_owned())
        .chain((0..records).map(|o| format!("a-{o}")))
        .collect();
    assert!(
        delivered == expected,
        "the earlier run's record, then all, once, in Kafka order"
    );
    assert_eq!(queue.held_bytes(), 0);
    assert_eq!(t.mirrored("topic-a", MirrorResult::Dropped), 0);
}
