//! A whole mirror (stage, writers, log) in front of a fake Kinesis, "killed" by copying its
//! log as a kill -9 leaves it (written, page cache included) and restarted on the copy.
//! Real clock: decoding and the log run on their own threads.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::Durability;
use crate::kinesis::test_support::{spilling_settings, wait_until};
use crate::mirror::tests::{kinesis_with_a_down, route, stored, Stored};
use crate::mirror::wal::wal_dir;
use crate::mirror::Mirror;
use crate::telemetry::inventory::Inventory;
use crate::telemetry::metrics::Metrics;

fn values(prefix: &str, n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{prefix}-{i}")))
        .collect()
}

/// A mirror of `topic-a` to `stream-a` with the default durability, its log in `spool`.
async fn mirror(spool: &Path, a_down: &Arc<AtomicBool>, stored: &Stored) -> Mirror {
    let mut settings = spilling_settings(spool, 1 << 30);
    settings.buffer.durability = Durability::Wal;
    let kinesis = kinesis_with_a_down(a_down, stored);
    Mirror::start_with(
        &[route("topic-a", "stream-a")],
        settings,
        Arc::new(Metrics::new()),
        Arc::new(Inventory::default()),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_an_outage_loses_nothing_and_the_restart_sends_nothing_twice() {
    let (first_spool, second_spool) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
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
    // The marks of the delivered records are written at once; wait for them rather than
    // race the copy against the log's thread.
    first
        .wal
        .as_ref()
        .expect("the default config logs")
        .flush()
        .await;
    copy_log(first_spool.path(), second_spool.path());

    let after_kill = Stored::default();
    let second = mirror(
        second_spool.path(),
        &Arc::new(AtomicBool::new(false)),
        &after_kill,
    )
    .await;
    wait_until(
        "the waiting records in Kinesis",
        Duration::from_secs(20),
        || stream_a(&after_kill).len() >= 4,
    )
    .await;
    second
        .shut_down(std::time::Instant::now() + Duration::from_secs(5))
        .await;
    let mut sent = stream_a(&after_kill);
    sent.sort();
    assert_eq!(
        sent,
        ["waiting-0", "waiting-1", "waiting-2", "waiting-3"],
        "every record Kafka acknowledged, none delivered before the kill"
    );
}
