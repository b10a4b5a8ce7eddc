//! The local answer of kinesis-only routes through the whole mirror: the synthetic log, the
//! stage, the stream's queue and a writer in front of a fake Kinesis that can be down.
//!
//! Decoding runs on the stage's own threads, which tokio's paused clock does not see (and the
//! writer's blocking work holds the paused clock back), so these tests run on the real clock,
//! with short timeouts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;

use super::super::tests::{
    client, idempotent_produce, kinesis_with_a_down, mirror_in_front_of, route, Stored,
};
use super::super::Mirror;
use super::LocalAnswer;
use crate::config::{MirrorRoute, RouteMode};
use crate::kafka::header::response_body_offset;
use crate::kafka::produce::{ProduceRequestView, ProduceResponseView};
use crate::kafka::produce_split::encode_request_body;
use crate::kinesis::test_support::spilling_settings;

const VERSION: i16 = 7;

fn kinesis_only_route(timeout: Duration) -> MirrorRoute {
    MirrorRoute {
        mode: RouteMode::KinesisOnly,
        primary_timeout: timeout,
        ..route("topic-a", "stream-a")
    }
}

/// A mirror with `topic-a` kinesis-only to `stream-a`, which is down while `down` is set.
struct Rig {
    mirror: Mirror,
    down: Arc<AtomicBool>,
    stored: Stored,
    /// Its spool, and under it the kinesis-only state.
    spool: tempfile::TempDir,
}

impl Rig {
    /// With Kinesis `down` or not, answers waiting at most `timeout`, and the kinesis-only
    /// state copied from `state_of`'s, if given (that one keeps its lock and its records).
    async fn start(down: bool, timeout: Duration, state_of: Option<&Rig>) -> Rig {
        let spool = tempfile::tempdir().unwrap();
        if let Some(earlier) = state_of {
            let state = spool.path().join(super::DIR);
            std::fs::create_dir(&state).unwrap();
            for file in std::fs::read_dir(earlier.spool.path().join(super::DIR)).unwrap() {
                let file = file.unwrap();
                std::fs::copy(file.path(), state.join(file.file_name())).unwrap();
            }
        }
        let (down, stored) = (Arc::new(AtomicBool::new(down)), Stored::default());
        let mut settings = spilling_settings(spool.path(), 1 << 30);
        settings.kinesis.shard_rate_factor = 100.0;
        let (mirror, _) = mirror_in_front_of(settings, kinesis_with_a_down(&down, &stored)).await;
        mirror.apply_routes(&[kinesis_only_route(timeout)]).await;
        Rig {
            mirror,
            down,
            stored,
            spool,
        }
    }

    /// What `stream-a` stored, in order.
    fn in_stream(&self) -> Vec<String> {
        let stored = self.stored.lock().unwrap();
        stored.get("stream-a").cloned().unwrap_or_default()
    }
}

/// Places the batch of `body` and hands it to the mirror, as a connection does in request order.
async fn start(mirror: &Mirror, body: &Bytes) -> LocalAnswer {
    let request = ProduceRequestView::decode(VERSION, body.clone()).unwrap();
    mirror
        .answer_locally(client(), request, Some(body.clone()), 1, Instant::now())
        .await
        .unwrap()
        .expect("acks=all is answered")
}

/// Partition 0's error code and base offset in the settled answer, and how long settling took.
async fn settled(answer: LocalAnswer) -> (i16, i64, Duration) {
    let started = tokio::time::Instant::now();
    let frame = answer.settle().await.unwrap();
    let offset = response_body_offset(&frame, ApiKey::Produce, VERSION).unwrap();
    let view = ProduceResponseView::decode(VERSION, frame.slice(offset..)).unwrap();
    let partition = view.partition("topic-a", 0).unwrap();
    (
        partition.error_code,
        partition.base_offset,
        started.elapsed(),
    )
}

fn values(range: std::ops::Range<usize>) -> Vec<Bytes> {
    range.map(|i| Bytes::from(format!("v{i}"))).collect()
}

#[tokio::test]
async fn a_batch_kinesis_does_not_confirm_in_time_is_answered_request_timed_out() {
    let timeout = Duration::from_secs(1);
    let rig = Rig::start(true, timeout, None).await;
    let mirror = &rig.mirror;
    let body = idempotent_produce("topic-a", &values(0..3), 7, 0);
    let (code, base_offset, took) = settled(start(mirror, &body).await).await;
    assert_eq!((code, base_offset), (7, -1), "REQUEST_TIMED_OUT, retriable");
    // Counted from the request's arrival, a moment before the answer starts waiting.
    assert!(
        took >= timeout - Duration::from_millis(200) && took <= timeout + Duration::from_secs(1),
        "answered at the route's primary_timeout_ms, after {took:?}"
    );
    assert!(rig.in_stream().is_empty());
}

#[tokio::test]
async fn a_retry_while_the_original_is_in_flight_waits_for_it_and_kinesis_gets_the_batch_once() {
    let timeout = Duration::from_millis(800);
    let rig = Rig::start(true, timeout, None).await;
    let mirror = &rig.mirror;
    let batch = idempotent_produce("topic-a", &values(0..3), 7, 0);

    // Kinesis is down: the original and its retry both time out, and the retry is not sent.
    let original = start(mirror, &batch).await;
    let retry = start(mirror, &batch).await;
    let (code, _, took) = settled(retry).await;
    assert_eq!(code, 7);
    assert!(
        took >= timeout - Duration::from_millis(50),
        "after {took:?}"
    );
    assert_eq!(settled(original).await.0, 7);

    // Kinesis is back: the next retry is acknowledged with the original's offsets once the
    // original's records are in, and they are in once.
    rig.down.store(false, Ordering::Release);
    mirror
        .apply_routes(&[kinesis_only_route(Duration::from_secs(30))])
        .await;
    let (code, base_offset, _) = settled(start(mirror, &batch).await).await;
    assert_eq!((code, base_offset), (0, 0));
    assert_eq!(rig.in_stream(), ["v0", "v1", "v2"]);
    // Delivered now: a late retry is answered at once, and nothing is sent.
    let (code, base_offset, _) = settled(start(mirror, &batch).await).await;
    assert_eq!((code, base_offset), (0, 0));

    // The producer's next batch follows it.
    let next = idempotent_produce("topic-a", &values(3..5), 7, 3);
    let (code, base_offset, _) = settled(start(mirror, &next).await).await;
    assert_eq!((code, base_offset), (0, 3));
    assert_eq!(rig.in_stream(), ["v0", "v1", "v2", "v3", "v4"]);
}

#[tokio::test]
async fn a_retry_after_a_restart_lost_the_delivery_is_sent_again_once_under_its_offsets() {
    let first = Rig::start(true, Duration::from_millis(300), None).await;
    let batch = idempotent_produce("topic-a", &values(0..3), 9, 0);
    assert_eq!(settled(start(&first.mirror, &batch).await).await.0, 7);

    // A new process over the same state, with a Kinesis that works.
    let rig = Rig::start(false, Duration::from_secs(30), Some(&first)).await;
    let second = &rig.mirror;
    let (code, base_offset, _) = settled(start(second, &batch).await).await;
    assert_eq!((code, base_offset), (0, 0), "its original offsets");
    let (code, base_offset, _) = settled(start(second, &batch).await).await;
    assert_eq!((code, base_offset), (0, 0));
    assert_eq!(rig.in_stream(), ["v0", "v1", "v2"], "sent again once");
    // The first process's counter is in force: a new batch does not reuse those offsets.
    let next = idempotent_produce("topic-a", &values(3..4), 9, 3);
    let (code, base_offset, _) = settled(start(second, &next).await).await;
    assert_eq!((code, base_offset), (0, 3));
}

#[tokio::test]
async fn a_transactional_produce_is_refused_naming_the_topic_and_the_mode() {
    let rig = Rig::start(false, Duration::from_secs(1), None).await;
    let mirror = &rig.mirror;
    let body = idempotent_produce("topic-a", &values(0..1), 7, 0);
    // v9 answers carry error messages.
    let version = 9;
    let request = ProduceRequestView {
        version,
        transactional_id: Some("tx".into()),
        ..ProduceRequestView::decode(VERSION, body).unwrap()
    };
    let body = encode_request_body(&request).unwrap();
    let frame = mirror.refusal(version, &body, 5).unwrap().unwrap();
    let offset = response_body_offset(&frame, ApiKey::Produce, version).unwrap();
    let view = ProduceResponseView::decode(version, frame.slice(offset..)).unwrap();
    let answer = view.partition("topic-a", 0).unwrap();
    assert_eq!(answer.error_code, 42, "INVALID_REQUEST");
    assert_eq!(
        answer.error_message.as_deref(),
        Some("topic topic-a is in route mode kinesis-only, which does not take transactional producers")
    );
    assert!(rig.in_stream().is_empty());
}

/// A hostile or misconfigured client naming partitions the proxy's Metadata never gave out
/// gets UNKNOWN_TOPIC_OR_PARTITION, as from a broker, and takes no offset counter.
#[tokio::test]
async fn a_partition_beyond_the_routes_partitions_is_unknown() {
    let rig = Rig::start(false, Duration::from_secs(1), None).await;
    for partition in [1, 1 << 30, -1] {
        let mut request =
            ProduceRequestView::decode(VERSION, idempotent_produce("topic-a", &values(0..2), 7, 0))
                .unwrap();
        request.topics[0].partitions[0].partition = partition;
        let body = encode_request_body(&request).unwrap();
        let frame = start(&rig.mirror, &body).await.settle().await.unwrap();
        let offset = response_body_offset(&frame, ApiKey::Produce, VERSION).unwrap();
        let view = ProduceResponseView::decode(VERSION, frame.slice(offset..)).unwrap();
        let answer = view.partition("topic-a", partition).unwrap();
        assert_eq!(
            (answer.error_code, answer.base_offset),
            (3, -1),
            "partition {partition}"
        );
    }
    assert!(rig.in_stream().is_empty());
    // The route's one partition still starts at offset 0.
    let body = idempotent_produce("topic-a", &values(0..1), 7, 0);
    assert_eq!(settled(start(&rig.mirror, &body).await).await.0, 0);
    assert_eq!(rig.in_stream(), ["v0"]);
}

#[tokio::test]
async fn a_partition_that_is_not_one_v2_batch_is_refused_as_a_broker_refuses_it() {
    let rig = Rig::start(false, Duration::from_secs(1), None).await;
    let mut request =
        ProduceRequestView::decode(VERSION, idempotent_produce("topic-a", &values(0..2), 7, 0))
            .unwrap();
    let records = request.topics[0].partitions[0].records.clone().unwrap();
    // Two batches in one partition: Produce v3+ takes exactly one.
    let twice = [records.clone(), records].concat();
    request.topics[0].partitions[0].records = Some(Bytes::from(twice));
    let body = encode_request_body(&request).unwrap();
    let (code, base_offset, _) = settled(start(&rig.mirror, &body).await).await;
    assert_eq!((code, base_offset), (87, -1), "INVALID_RECORD");
    // Nothing was given an offset: the producer's next batch starts at 0.
    let next = idempotent_produce("topic-a", &values(0..1), 8, 0);
    let (code, base_offset, _) = settled(start(&rig.mirror, &next).await).await;
    assert_eq!((code, base_offset), (0, 0));
    assert_eq!(rig.in_stream(), ["v0"]);
}
