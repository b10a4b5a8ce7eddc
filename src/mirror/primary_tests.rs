//! kinesis-primary through the whole mirror: the stage, the stream's queue and a writer in
//! front of a fake Kinesis that can be down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;

use super::tests::{
    kinesis_with_a_down, mirror_in_front_of, produce_response, route, stored, Stored,
};
use super::PrimaryAnswer;
use crate::config::{MirrorRoute, RouteMode};
use crate::kafka::header::response_body_offset;
use crate::kafka::produce::ProduceResponseView;
use crate::kinesis::test_support::spilling_settings;

fn primary_route(timeout: Duration) -> MirrorRoute {
    MirrorRoute {
        mode: RouteMode::KinesisPrimary,
        primary_timeout: timeout,
        ..route("topic-a", "stream-a")
    }
}

/// The error code `answer` gives partition 0 of `topic-a`, answered `received` ago or now.
async fn answered(answer: PrimaryAnswer, base_offset: i64) -> (i16, Duration) {
    let started = Instant::now();
    let frame = answer
        .settle(produce_response("topic-a", base_offset), started)
        .await
        .unwrap();
    let offset = response_body_offset(&frame, ApiKey::Produce, 7).unwrap();
    let view = ProduceResponseView::decode(7, frame.slice(offset..)).unwrap();
    let code = view.partition("topic-a", 0).unwrap().error_code;
    (code, started.elapsed())
}

#[tokio::test]
async fn a_retry_kafka_reports_as_a_duplicate_waits_for_its_originals_delivery() {
    let spool = tempfile::tempdir().unwrap();
    let mut settings = spilling_settings(spool.path(), 1 << 30);
    settings.kinesis.shard_rate_factor = 100.0;
    let (down, kinesis) = (Arc::new(AtomicBool::new(true)), Stored::default());
    let (mirror, metrics) =
        mirror_in_front_of(settings, kinesis_with_a_down(&down, &kinesis)).await;
    let timeout = Duration::from_millis(800);
    mirror.apply_routes(&[primary_route(timeout)]).await;
    let values: Vec<Bytes> = (0..3).map(|i| Bytes::from(format!("v{i}"))).collect();

    // Kinesis is down: the original and Kafka's duplicate answer to its retry both time out.
    let original = mirror
        .hand_over(stored("topic-a", 10, &values))
        .await
        .unwrap();
    let retry = mirror
        .hand_over(stored("topic-a", 10, &values))
        .await
        .unwrap();
    let (code, took) = answered(retry, 10).await;
    assert_eq!(code, 7, "REQUEST_TIMED_OUT, not an acknowledgement");
    assert!(took >= timeout, "answered after {took:?}");
    assert_eq!(answered(original, 10).await.0, 7);
    assert_eq!(
        metrics
            .primary_errors
            .with_label_values(&["topic-a", "timeout"])
            .get(),
        2
    );

    // Kinesis is back: the next retry is acknowledged once the original's records are in,
    // and they are in once. (Given a delivery of its own, the retry's records would be
    // skipped as duplicates, and it would fail.)
    down.store(false, Ordering::Release);
    mirror
        .apply_routes(&[primary_route(Duration::from_secs(30))])
        .await;
    let retry = mirror
        .hand_over(stored("topic-a", 10, &values))
        .await
        .unwrap();
    let (code, took) = answered(retry, 10).await;
    assert_eq!(code, 0, "acknowledged after {took:?}");
    let in_kinesis = kinesis
        .lock()
        .unwrap()
        .get("stream-a")
        .cloned()
        .unwrap_or_default();
    assert_eq!(in_kinesis, ["v0", "v1", "v2"]);

    // A new batch of a topic back in mirror mode does not wait.
    mirror.apply_routes(&[route("topic-a", "stream-a")]).await;
    assert!(mirror
        .hand_over(stored("topic-a", 13, &values))
        .await
        .is_none());
}
