//! A whole mirror (stage, writers, log) in front of a fake Kinesis, "killed" by copying its
//! log as a kill -9 leaves it (written, page cache included) and restarted on the copy.
//! Real clock: decoding and the log run on their own threads.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::{Durability, WhenFull};
use crate::kinesis::test_support::{
    control_plane, entry_data, spilling_settings, wait_until, FakeKinesis, SPOOL_MAX_BYTES,
};
use crate::mirror::deferred_tests::{burst, numbered, Run, RECORDS};
use crate::mirror::stage_transactions::tests::end_txn;
use crate::mirror::tests::{acks0_produce, kinesis_with_a_down, route, stored, Stored};
use crate::mirror::wal::{wal_dir, Wal};
use crate::mirror::{Mirror, ProduceExchange, EXCHANGE_QUEUE};
use crate::telemetry::inventory::ClientKey;
use crate::telemetry::inventory::Inventory;
use crate::telemetry::metrics::{Metrics, MirrorResult};

fn values(prefix: &str, n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{prefix}-{i}")))
        .collect()
}

/// A mirror of `topic-a` to `stream-a` with the default durability, its log in `spool`.
async fn mirror(spool: &Path, a_down: &Arc<AtomicBool>, stored: &Stored) -> Mirror {
    mirror_with_limit(spool, a_down, stored, SPOOL_MAX_BYTES).await
}

/// [`mirror`] with `spool.max_bytes` of `max_bytes`.
async fn mirror_with_limit(
    spool: &Path,
    a_down: &Arc<AtomicBool>,
    stored: &Stored,
    max_bytes: u64,
) -> Mirror {
    let observed = (Arc::new(Metrics::new()), Arc::new(Inventory::default()));
    let kinesis = kinesis_with_a_down(a_down, stored);
    mirror_observed(spool, kinesis, max_bytes, observed).await
}

/// [`mirror_with_limit`] in front of `kinesis`, counting into `metrics` and `inventory`.
async fn mirror_observed(
    spool: &Path,
    kinesis: FakeKinesis,
    max_bytes: u64,
    (metrics, inventory): (Arc<Metrics>, Arc<Inventory>),
) -> Mirror {
    let mut settings = spilling_settings(spool, 1 << 30);
    settings.buffer.durability = Durability::Wal;
    settings.spool.max_bytes = max_bytes;
    Mirror::start_with(
        &[route("topic-a", "stream-a")],
        settings,
        metrics,
        inventory,
        kinesis.clients(),
    )
    .await
}

/// What a kill -9 leaves of `from`'s log: its segments as written.
fn copy_log(from: &Path, to: &Path) {
    let (from, to) = (wal_dir(from), wal_dir(to));
    std::fs::create_dir_all(&to).unwrap();
    for file in std::fs::read_dir(&from).unwrap().flatten() {
        if file.path().extension().is_some_and(|e| e == "log") {
            std::fs::copy(file.path(), to.join(file.file_name())).unwrap();
        }
    }
}

fn stream_a(stored: &Stored) -> Vec<String> {
    stored
        .lock()
        .unwrap()
        .get("stream-a")
        .cloned()
        .unwrap_or_default()
}

/// Kills `first` as kill -9 would, once the marks it sent are written (they are written at
/// once; waiting for them spares the copy a race with the log's thread), restarts it on a
/// copy of its log in front of a Kinesis that is up, and returns what the restarted mirror
/// sent once it sent `expected` records.
async fn kill_and_restart(first: &Mirror, first_spool: &Path, expected: usize) -> Vec<String> {
    let observed = (Arc::new(Metrics::new()), Arc::new(Inventory::default()));
    kill_and_restart_observed(first, first_spool, expected, observed).await
}

/// [`kill_and_restart`], the restarted mirror counting into `metrics` and `inventory`.
async fn kill_and_restart_observed(
    first: &Mirror,
    first_spool: &Path,
    expected: usize,
    observed: (Arc<Metrics>, Arc<Inventory>),
) -> Vec<String> {
    first
        .wal
        .as_ref()
        .expect("the default config logs")
        .flush()
        .await;
    let second_spool = tempfile::tempdir().unwrap();
    copy_log(first_spool, second_spool.path());
    let after_kill = Stored::default();
    let up = Arc::new(AtomicBool::new(false));
    let kinesis = kinesis_with_a_down(&up, &after_kill);
    let second = mirror_observed(second_spool.path(), kinesis, SPOOL_MAX_BYTES, observed).await;
    wait_until("the records in Kinesis", Duration::from_secs(20), || {
        stream_a(&after_kill).len() >= expected
    })
    .await;
    second
        .shut_down(std::time::Instant::now() + Duration::from_secs(5))
        .await;
    stream_a(&after_kill)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_an_outage_loses_nothing_and_the_restart_sends_nothing_twice() {
    let first_spool = tempfile::tempdir().unwrap();
    let (a_down, before_kill) = (Arc::new(AtomicBool::new(false)), Stored::default());
    let first = mirror(first_spool.path(), &a_down, &before_kill).await;
    first
        .hand_over(stored("topic-a", 0, &values("delivered", 3)))
        .await;
    wait_until(
        "the first exchange in Kinesis",
        Duration::from_secs(20),
        || stream_a(&before_kill).len() == 3,
    )
    .await;
    a_down.store(true, Ordering::Release);
    // Answered to the client once hand_over returns; Kinesis is down, so the records wait
    // in memory (record_ttl_secs is 600 s).
    first
        .hand_over(stored("topic-a", 3, &values("waiting", 4)))
        .await;
    let mut sent = kill_and_restart(&first, first_spool.path(), 4).await;
    sent.sort();
    assert_eq!(
        sent,
        ["waiting-0", "waiting-1", "waiting-2", "waiting-3"],
        "every record Kafka acknowledged, none delivered before the kill"
    );
}

/// An acks=0 Produce of `records` records to `topic-a`, in producer 9's transaction.
fn transactional(records: usize) -> ProduceExchange {
    ProduceExchange {
        client: Arc::new(ClientKey {
            client_id: "txn".into(),
            address: [127, 0, 0, 1].into(),
        }),
        version: 7,
        request_body: acks0_produce("topic-a", records, Some((9, 0))),
        response_frame: None,
        deliveries: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_ended_before_the_kill_is_decided_by_its_logged_end_after_the_restart() {
    let first_spool = tempfile::tempdir().unwrap();
    let a_down = Arc::new(AtomicBool::new(true));
    let first = mirror(first_spool.path(), &a_down, &Stored::default()).await;
    first.hand_over(transactional(5)).await;
    first.hand_over_txn_control(end_txn(9, 0, true)).await;
    // No Kafka to look the transaction up in: only the logged EndTxn can decide it.
    let sent = kill_and_restart(&first, first_spool.path(), 5).await;
    assert_eq!(sent.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_holds_routed_answers_until_kinesis_frees_room_and_others_pass() {
    let spool = tempfile::tempdir().unwrap();
    let (a_down, kinesis) = (Arc::new(AtomicBool::new(true)), Stored::default());
    let mirror = mirror_with_limit(spool.path(), &a_down, &kinesis, 4096).await;
    // Three values of 1000 bytes, told apart by their start.
    let big = |prefix: &str| -> Vec<Bytes> {
        (0..3)
            .map(|i| {
                let mut value = format!("{prefix}-{i}-").into_bytes();
                value.resize(1000, b'v');
                Bytes::from(value)
            })
            .collect()
    };
    // ~3 KiB: the log takes it, and then has no room for another while Kinesis is down.
    mirror.hand_over(stored("topic-a", 0, &big("first"))).await;
    let second = tokio::spawn({
        let mirror = mirror.clone();
        let exchange = stored("topic-a", 3, &big("second"));
        async move { mirror.hand_over(exchange).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "a routed answer waits for room in the log"
    );
    // Another topic's answer does not wait.
    tokio::time::timeout(
        Duration::from_secs(1),
        mirror.hand_over(stored("topic-b", 0, &big("other"))),
    )
    .await
    .expect("an unrouted topic's answer never waits for the log");
    a_down.store(false, Ordering::Release);
    tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the routed answer resumes once delivered records free the log")
        .unwrap();
    wait_until(
        "all six records in Kinesis",
        Duration::from_secs(30),
        || stream_a(&kinesis).len() == 6,
    )
    .await;
}

#[tokio::test]
async fn in_drop_mode_an_exchange_shed_from_a_full_stage_is_not_replayed_after_a_restart() {
    // The setting under test: `when_full = "drop"`, with the default log.
    let first = Run::start(|settings| settings.buffer.when_full = WhenFull::Drop).await;
    let shed = 3;
    burst(&first.mirror, (0..EXCHANGE_QUEUE + shed).map(numbered)).await;
    assert_eq!(first.metrics.mirror_dropped_requests.get(), shed as u64);
    // Its shutdown writes every mark: the log is what a kill now would leave.
    first.finish((EXCHANGE_QUEUE + shed) * RECORDS).await;
    assert_eq!(stream_a(&first.kinesis).len(), EXCHANGE_QUEUE * RECORDS);
    let second_spool = tempfile::tempdir().unwrap();
    copy_log(first.spool.path(), second_spool.path());
    let after_restart = Stored::default();
    // Its start replays what the log holds, and its shutdown delivers it.
    let up = Arc::new(AtomicBool::new(false));
    let second = mirror(second_spool.path(), &up, &after_restart).await;
    second
        .shut_down(std::time::Instant::now() + Duration::from_secs(10))
        .await;
    assert_eq!(
        stream_a(&after_restart),
        Vec::<String>::new(),
        "the operator chose to drop them: not resurrected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_records_count_as_kafka_records_again_but_add_no_client_to_the_inventory() {
    let first_spool = tempfile::tempdir().unwrap();
    let a_down = Arc::new(AtomicBool::new(true));
    let first = mirror(first_spool.path(), &a_down, &Stored::default()).await;
    first
        .hand_over(stored("topic-a", 0, &values("waiting", 4)))
        .await;
    let (metrics, inventory) = (Arc::new(Metrics::new()), Arc::new(Inventory::default()));
    let observed = (metrics.clone(), inventory.clone());
    let sent = kill_and_restart_observed(&first, first_spool.path(), 4, observed).await;
    assert_eq!(sent.len(), 4);
    let clients: Vec<_> = inventory
        .snapshot()
        .into_iter()
        .map(|c| (c.client_id, c.address, c.records_per_topic))
        .collect();
    // The run that received them counted their client; this one saw no client at all.
    assert!(clients.is_empty(), "no client entry: {clients:?}");
    let kafka_ok = metrics
        .kafka_records
        .with_label_values(&["topic-a", "ok"])
        .get();
    let mirrored = metrics
        .mirror_records
        .with_label_values(&["topic-a", "stream-a", MirrorResult::Sent.as_str()])
        .get();
    // Counted where they are mirrored: this run's Kafka and mirror counts stay paired.
    assert_eq!((kafka_ok, mirrored), (4, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_replay_cut_short_by_a_read_error_leaves_nothing_counted_as_to_replay() {
    // A log an earlier run left with an exchange not delivered...
    let first_spool = tempfile::tempdir().unwrap();
    let first = mirror(
        first_spool.path(),
        &Arc::new(AtomicBool::new(true)),
        &Stored::default(),
    )
    .await;
    first
        .hand_over(stored("topic-a", 0, &values("waiting", 4)))
        .await;
    first.wal.as_ref().expect("logged").flush().await;
    let left = tempfile::tempdir().unwrap();
    copy_log(first_spool.path(), left.path());
    // ...opened, counting its bytes into a mirror's gauge, then unreadable when replayed.
    let run = Run::start(|_| {}).await;
    let spool = spilling_settings(left.path(), 1 << 30).spool;
    let (_log, replay) = Wal::open(
        &spool,
        Durability::Wal,
        run.metrics.wal.clone(),
        Arc::new(|| 0),
    )
    .unwrap()
    .expect("a log");
    let to_replay = run.metrics.wal.replay_remaining_bytes.get();
    assert!(to_replay > 0);
    for segment in std::fs::read_dir(wal_dir(left.path())).unwrap().flatten() {
        std::fs::remove_file(segment.path()).unwrap();
    }
    run.mirror.replay_wal(replay).await;
    assert_eq!(
        run.metrics.wal.replay_remaining_bytes.get(),
        0,
        "this run reads none of it back (it had {to_replay} bytes to replay): the mirror is not behind"
    );
}

/// Kinesis that stores every record but those whose data starts with `stuck`, which it
/// refuses (throttled) each time.
fn kinesis_refusing_stuck() -> FakeKinesis {
    FakeKinesis::new(|operation, body| {
        if let Some(answer) = control_plane(operation) {
            return answer;
        }
        let answers: Vec<serde_json::Value> = entry_data(body)
            .iter()
            .map(|data| match data.starts_with("stuck") {
                true => serde_json::json!({"ErrorCode": "ProvisionedThroughputExceededException",
                    "ErrorMessage": "slow down"}),
                false => serde_json::json!({"SequenceNumber": "1", "ShardId": "shardId-0"}),
            })
            .collect();
        let failed = answers
            .iter()
            .filter(|a| a.get("ErrorCode").is_some())
            .count();
        (
            200,
            serde_json::json!({"FailedRecordCount": failed, "Records": answers}),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_exchange_counts_as_kafka_records_only_what_it_mirrors_again() {
    let first_spool = tempfile::tempdir().unwrap();
    let first_metrics = Arc::new(Metrics::new());
    let observed = (first_metrics.clone(), Arc::new(Inventory::default()));
    let first = mirror_observed(
        first_spool.path(),
        kinesis_refusing_stuck(),
        SPOOL_MAX_BYTES,
        observed,
    )
    .await;
    // Keys key-0..key-2: the throttled key-1 does not hold the others up.
    let values =
        ["delivered-0", "stuck-1", "delivered-2"].map(|v| Bytes::from_static(v.as_bytes()));
    first.hand_over(stored("topic-a", 0, &values)).await;
    let sent = |metrics: &Metrics| {
        let labels = ["topic-a", "stream-a", MirrorResult::Sent.as_str()];
        metrics.mirror_records.with_label_values(&labels).get()
    };
    wait_until("two of three delivered", Duration::from_secs(20), || {
        sent(&first_metrics) == 2
    })
    .await;
    let metrics = Arc::new(Metrics::new());
    let observed = (metrics.clone(), Arc::new(Inventory::default()));
    let resent = kill_and_restart_observed(&first, first_spool.path(), 1, observed).await;
    assert_eq!(resent, ["stuck-1"]);
    let kafka_ok = metrics
        .kafka_records
        .with_label_values(&["topic-a", "ok"])
        .get();
    assert_eq!(
        (kafka_ok, sent(&metrics)),
        (1, 1),
        "the two delivered before the kill were counted, and mirrored, by the first run"
    );
}
