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
use crate::kinesis::test_support::spilling_settings;

const VERSION: i16 = 7;

fn kinesis_only_route(timeout: Duration) -> MirrorRoute {
    MirrorRoute {
        mode: RouteMode::KinesisOnly,
        primary_timeout: timeout,
        ..route("topic-a", "stream-a")
    }
}

/// A mirror with `topic-a` kinesis-only to `stream-a`, which is down while `down` is set, its
/// state under `spool`.
async fn kinesis_only_mirror(
    spool: &std::path::Path,
    down: &Arc<AtomicBool>,
    stored: &Stored,
    timeout: Duration,
) -> Mirror {
    let mut settings = spilling_settings(spool, 1 << 30);
    settings.kinesis.shard_rate_factor = 100.0;
    let (mirror, _) = mirror_in_front_of(settings, kinesis_with_a_down(down, stored)).await;
    mirror.apply_routes(&[kinesis_only_route(timeout)]).await;
    mirror
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

fn in_stream(stored: &Stored) -> Vec<String> {
    let stored = stored.lock().unwrap();
    stored.get("stream-a").cloned().unwrap_or_default()
}

#[tokio::test]
async fn a_batch_kinesis_does_not_confirm_in_time_is_answered_request_timed_out() {
    let spool = tempfile::tempdir().unwrap();
    let (down, stored) = (Arc::new(AtomicBool::new(true)), Stored::default());
    let timeout = Duration::from_secs(1);
    let mirror = kinesis_only_mirror(spool.path(), &down, &stored, timeout).await;
    let body = idempotent_produce("topic-a", &values(0..3), 7, 0);
    let (code, base_offset, took) = settled(start(&mirror, &body).await).await;
    assert_eq!((code, base_offset), (7, -1), "REQUEST_TIMED_OUT, retriable");
    // Counted from the request's arrival, a moment before the answer starts waiting.
    assert!(
        took >= timeout - Duration::from_millis(200) && took <= timeout + Duration::from_secs(1),
        "answered at the route's primary_timeout_ms, after {took:?}"
    );
    assert!(in_stream(&stored).is_empty());
}

#[tokio::test]
async fn a_retry_while_the_original_is_in_flight_waits_for_it_and_kinesis_gets_the_batch_once() {
    let spool = tempfile::tempdir().unwrap();
    let (down, stored) = (Arc::new(AtomicBool::new(true)), Stored::default());
    let timeout = Duration::from_millis(800);
    let mirror = kinesis_only_mirror(spool.path(), &down, &stored, timeout).await;
    let batch = idempotent_produce("topic-a", &values(0..3), 7, 0);

    // Kinesis is down: the original and its retry both time out, and the retry is not sent.
    let original = start(&mirror, &batch).await;
    let retry = start(&mirror, &batch).await;
    let (code, _, took) = settled(retry).await;
    assert_eq!(code, 7);
    assert!(
        took >= timeout - Duration::from_millis(50),
        "after {took:?}"
    );
    assert_eq!(settled(original).await.0, 7);

    // Kinesis is back: the next retry is acknowledged with the original's offsets once the
    // original's records are in, and they are in once.
    down.store(false, Ordering::Release);
    mirror
        .apply_routes(&[kinesis_only_route(Duration::from_secs(30))])
        .await;
    let (code, base_offset, _) = settled(start(&mirror, &batch).await).await;
    assert_eq!((code, base_offset), (0, 0));
    assert_eq!(in_stream(&stored), ["v0", "v1", "v2"]);
    // Delivered now: a late retry is answered at once, and nothing is sent.
    let (code, base_offset, _) = settled(start(&mirror, &batch).await).await;
    assert_eq!((code, base_offset), (0, 0));

    // The producer's next batch follows it.
    let next = idempotent_produce("topic-a", &values(3..5), 7, 3);
    let (code, base_offset, _) = settled(start(&mirror, &next).await).await;
    assert_eq!((code, base_offset), (0, 3));
    assert_eq!(in_stream(&stored), ["v0", "v1", "v2", "v3", "v4"]);
}

#[tokio::test]
async fn a_retry_after_a_restart_lost_the_delivery_is_sent_again_once_under_its_offsets() {
    let first_spool = tempfile::tempdir().unwrap();
    let (down, lost) = (Arc::new(AtomicBool::new(true)), Stored::default());
    let timeout = Duration::from_millis(300);
    let first = kinesis_only_mirror(first_spool.path(), &down, &lost, timeout).await;
    let batch = idempotent_produce("topic-a", &values(0..3), 9, 0);
    assert_eq!(settled(start(&first, &batch).await).await.0, 7);

    // A new process over the same state (copied: the first one keeps its lock and its
    // undeliverable records), with a Kinesis that works.
    let second_spool = tempfile::tempdir().unwrap();
    let state = second_spool.path().join(super::DIR);
    std::fs::create_dir(&state).unwrap();
    for file in std::fs::read_dir(first_spool.path().join(super::DIR)).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), state.join(file.file_name())).unwrap();
    }
    let (up, stored) = (Arc::new(AtomicBool::new(false)), Stored::default());
    let second =
        kinesis_only_mirror(second_spool.path(), &up, &stored, Duration::from_secs(30)).await;
    let (code, base_offset, _) = settled(start(&second, &batch).await).await;
    assert_eq!((code, base_offset), (0, 0), "its original offsets");
    let (code, base_offset, _) = settled(start(&second, &batch).await).await;
    assert_eq!((code, base_offset), (0, 0));
    assert_eq!(in_stream(&stored), ["v0", "v1", "v2"], "sent again once");
    // The first process's counter is in force: a new batch does not reuse those offsets.
    let next = idempotent_produce("topic-a", &values(3..4), 9, 3);
    let (code, base_offset, _) = settled(start(&second, &next).await).await;
    assert_eq!((code, base_offset), (0, 3));
}
