//! The log's threads run on real time (they are OS threads, outside tokio's clock), so these
//! tests wait on conditions with deadlines and bound durations loosely.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::appender::AppenderSettings;
use super::{Replay, Replayed, Wal, WalError};
use crate::config::Durability;
use crate::kinesis::segment_log::SegmentLogError;
use crate::telemetry::wal_metrics::WalMetrics;

fn settings(segment_bytes: u64, max_bytes: u64) -> AppenderSettings {
    AppenderSettings {
        segment_bytes,
        max_bytes,
        spooled_bytes: Arc::new(|| 0),
        fsync_interval: Duration::from_millis(10),
        fsync_bytes: 1 << 20,
        fsync_delay: Duration::ZERO,
    }
}

fn metrics() -> WalMetrics {
    WalMetrics::register(&prometheus::Registry::new(), str::to_owned)
}

/// Opens the log in `dir`, waiting for an earlier appender to let go of it.
fn open(
    dir: &Path,
    settings: AppenderSettings,
    durability: Durability,
) -> (Wal, Replay, WalMetrics) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = metrics();
    loop {
        match Wal::start(dir, settings.clone(), durability, metrics.clone()) {
            Ok((wal, replay)) => return (wal, replay, metrics),
            Err(WalError::Log(e)) if matches!(*e, SegmentLogError::Locked { .. }) => {
                assert!(
                    Instant::now() < deadline,
                    "the earlier appender never stopped"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("open: {e}"),
        }
    }
}

fn body(i: usize, bytes: usize) -> Bytes {
    Bytes::from(vec![i as u8; bytes])
}

/// Waits for `condition`; generous, since fsyncs on a disk shared with builds can take seconds.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    found.sort();
    found
}

/// `count` appends of `bytes` at once, in `sync` mode: each answers after the fsync covering
/// it. Returns how long they all took.
async fn sync_appends_at_once(wal: Wal, count: usize, bytes: usize) -> Duration {
    let wal = Arc::new(wal);
    let started = Instant::now();
    let appends: Vec<_> = (0..count)
        .map(|i| {
            let wal = wal.clone();
            tokio::spawn(async move { wal.append("c", 9, &body(i, bytes), None).await })
        })
        .collect();
    for append in appends {
        tokio::time::timeout(Duration::from_secs(60), append)
            .await
            .expect("fsynced")
            .unwrap()
            .expect("logged");
    }
    started.elapsed()
}

/// `count` appends of `bytes` one after another, in `wal` mode: none waits for an fsync.
async fn wal_appends(wal: &Wal, count: usize, bytes: usize) {
    for i in 0..count {
        wal.append("c", 9, &body(i, bytes), None)
            .await
            .expect("logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_mode_fsyncs_by_bytes_and_by_interval() {
    // By bytes: the interval is an hour, so only fsync_bytes can start these fsyncs.
    let dir = tempfile::tempdir().unwrap();
    let mut by_bytes = settings(1 << 30, 1 << 30);
    by_bytes.fsync_interval = Duration::from_secs(3600);
    by_bytes.fsync_bytes = 10 * 1024;
    let (wal, _replay, metrics) = open(dir.path(), by_bytes, Durability::Wal);
    // 20 frames of a little over 1 KiB: an fsync after each 10 KiB written, so 2 (1 when the
    // fsync thread merges them).
    wal_appends(&wal, 20, 1024).await;
    wait_until("an fsync", || {
        metrics.fsync_duration.get_sample_count() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let syncs = metrics.fsync_duration.get_sample_count();
    assert!((1..=2).contains(&syncs), "{syncs} fsyncs for ~21 KiB");

    // By interval: 50 appends share the fsyncs of the interval, one per 50 ms at most.
    let dir = tempfile::tempdir().unwrap();
    let mut by_time = settings(1 << 30, 1 << 30);
    by_time.fsync_interval = Duration::from_millis(50);
    let (wal, _replay, metrics) = open(dir.path(), by_time, Durability::Wal);
    let started = Instant::now();
    wal_appends(&wal, 50, 100).await;
    wait_until("an fsync", || {
        metrics.fsync_duration.get_sample_count() >= 1
    })
    .await;
    let syncs = metrics.fsync_duration.get_sample_count();
    let most = started.elapsed().as_millis() as u64 / 50 + 1;
    assert!(
        syncs <= most && syncs < 50,
        "{syncs} fsyncs for 50 appends in {:?} (at most {most})",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_append_waits_one_fsync_not_the_interval_and_concurrent_ones_share_them() {
    // The interval is an hour and fsync_bytes a gigabyte: a sync append must not wait for
    // either, or a producer whose requests go one at a time gets one answer per interval.
    let mut lazy = settings(1 << 30, 1 << 30);
    lazy.fsync_interval = Duration::from_secs(3600);
    lazy.fsync_bytes = 1 << 30;
    let dir = tempfile::tempdir().unwrap();
    let (wal, _replay, metrics) = open(dir.path(), lazy.clone(), Durability::Sync);
    for i in 0..10 {
        tokio::time::timeout(
            Duration::from_secs(30),
            wal.append("c", 9, &body(i, 100), None),
        )
        .await
        .expect("answered after its fsync, not the interval")
        .expect("logged");
    }
    assert_eq!(metrics.fsync_duration.get_sample_count(), 10, "one each");

    // 50 at once: those written while an fsync runs share the next one.
    let dir = tempfile::tempdir().unwrap();
    let (wal, _replay, metrics) = open(dir.path(), lazy, Durability::Sync);
    sync_appends_at_once(wal, 50, 100).await;
    let syncs = metrics.fsync_duration.get_sample_count();
    assert!((1..50).contains(&syncs), "{syncs} fsyncs for 50 appends");
}

#[tokio::test]
async fn sync_answers_after_the_fsync_and_wal_after_the_write() {
    let delay = Duration::from_millis(300);
    for (durability, slow) in [(Durability::Wal, false), (Durability::Sync, true)] {
        let dir = tempfile::tempdir().unwrap();
        let mut delayed = settings(1 << 30, 1 << 30);
        delayed.fsync_delay = delay;
        let (wal, _replay, metrics) = open(dir.path(), delayed, durability);
        let started = Instant::now();
        wal.append("c", 9, &body(1, 100), None)
            .await
            .expect("logged");
        let waited = started.elapsed();
        if slow {
            assert!(waited >= delay, "sync answered after {waited:?}");
            assert_eq!(metrics.fsync_duration.get_sample_count(), 1);
        } else {
            assert!(waited < delay / 2, "wal answered after {waited:?}");
            assert_eq!(
                metrics.fsync_duration.get_sample_count(),
                0,
                "before its fsync"
            );
        }
    }
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_the_exchanges_before_it_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, replay, _) = open(dir.path(), settings(1 << 30, 1 << 30), Durability::Wal);
    let mut logs = Vec::new();
    for i in 0..3 {
        logs.push(
            wal.append("c", 9, &body(i, 64), None)
                .await
                .expect("logged"),
        );
    }
    wal.flush().await;
    drop((wal, replay, logs));
    let newest = segments(dir.path()).pop().expect("a segment");
    let good = std::fs::metadata(&newest).unwrap().len();
    // Half a frame: a header announcing 100 bytes, and 10 of them.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap();
    file.write_all(&100u32.to_le_bytes()).unwrap();
    file.write_all(&[0u8; 14]).unwrap();
    drop(file);

    let (_wal, mut replay, _) = open(dir.path(), settings(1 << 30, 1 << 30), Durability::Wal);
    assert_eq!(
        std::fs::metadata(&newest).unwrap().len(),
        good,
        "cut at the last intact frame"
    );
    let replayed = replay.next_entries(10).unwrap();
    let bodies: Vec<Bytes> = replayed
        .iter()
        .map(|r| exchange_of(r).0.request_body.clone())
        .collect();
    assert_eq!(bodies, vec![body(0, 64), body(1, 64), body(2, 64)]);
}

#[tokio::test]
async fn a_restart_replays_only_what_is_not_done() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, replay, _) = open(dir.path(), settings(1 << 30, 1 << 30), Durability::Wal);
    // Exchange 1: all of its one partition's records done; it completes.
    let done = wal
        .append("c", 9, &body(1, 64), None)
        .await
        .expect("logged");
    done.staged(1);
    let mark = done.mark(0, 10).expect("a mark");
    mark.settled();
    done.partition_done();
    drop((mark, done));
    // Exchange 2: of two records, offset 20 delivered, offset 21 dropped unsettled.
    let half = wal
        .append("c", 9, &body(2, 64), None)
        .await
        .expect("logged");
    half.staged(1);
    let delivered = half.mark(0, 20).expect("a mark");
    let lost = half.mark(0, 21).expect("a mark");
    delivered.settled();
    half.partition_done();
    drop((delivered, lost, half));
    wal.flush().await;
    drop((wal, replay));

    let (_wal, mut replay, _) = open(dir.path(), settings(1 << 30, 1 << 30), Durability::Wal);
    let size = replay.size();
    assert_eq!((size.exchanges, size.skipped_delivered), (1, 1));
    let replayed = replay.next_entries(10).unwrap();
    assert_eq!(replayed.len(), 1);
    let (exchange, log) = exchange_of(&replayed[0]);
    assert_eq!(exchange.request_body, body(2, 64));
    assert!(
        log.mark(0, 20).is_none(),
        "delivered before the restart: skipped"
    );
    assert!(log.mark(0, 21).is_some(), "not delivered: sent again");
    assert!(replay.next_entries(10).unwrap().is_empty());
}

fn exchange_of(replayed: &Replayed) -> (&super::LoggedExchange, &Arc<super::ExchangeLog>) {
    match replayed {
        Replayed::Exchange(exchange, log) => (exchange, log),
        Replayed::TxnControl(_) => panic!("a Produce exchange was logged"),
    }
}

/// Logs an exchange and settles it whole, as the stage and a writer would.
async fn log_and_complete(wal: &Wal, i: usize, bytes: usize) {
    let log = wal
        .append("c", 9, &body(i, bytes), None)
        .await
        .expect("logged");
    complete(log);
}

fn complete(log: Arc<super::ExchangeLog>) {
    log.staged(1);
    log.mark(0, 0).expect("a mark").settled();
    log.partition_done();
}

#[tokio::test]
async fn segments_whose_exchanges_are_all_done_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _replay, metrics) = open(dir.path(), settings(4096, 1 << 30), Durability::Wal);
    // One undone exchange in the first segment pins it and every later one.
    let pinned = wal
        .append("c", 9, &body(0, 1000), None)
        .await
        .expect("logged");
    for i in 1..40 {
        log_and_complete(&wal, i, 1000).await;
    }
    wal.flush().await;
    let pinned_count = segments(dir.path()).len();
    assert!(
        pinned_count >= 8,
        "{pinned_count} segments of ~40 KiB in 4 KiB segments"
    );
    complete(pinned);
    log_and_complete(&wal, 99, 10).await;
    wal.flush().await;
    wait_until("the delivered segments deleted", || {
        segments(dir.path()).len() == 1
    })
    .await;
    wait_until("wal_bytes to follow", || metrics.bytes.get() < 4096).await;
}

#[tokio::test]
async fn a_full_log_holds_appends_until_delivered_exchanges_free_room() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _replay, _) = open(dir.path(), settings(2048, 8192), Durability::Wal);
    let wal = Arc::new(wal);
    let mut held = Vec::new();
    for i in 0..7 {
        held.push(
            wal.append("c", 9, &body(i, 1000), None)
                .await
                .expect("logged"),
        );
    }
    // 7 × ~1040 bytes: the next one would pass 8 KiB.
    let next = tokio::spawn({
        let wal = wal.clone();
        async move { wal.append("c", 9, &body(7, 1000), None).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!next.is_finished(), "a full log holds the append");
    for log in held.drain(..4) {
        complete(log);
    }
    let appended = tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("the append resumes once room is freed")
        .unwrap();
    assert!(appended.is_some());
}

#[tokio::test]
async fn what_the_spools_hold_counts_against_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let spooled = Arc::new(std::sync::atomic::AtomicU64::new(8192));
    let mut limited = settings(2048, 8192);
    limited.spooled_bytes = {
        let spooled = spooled.clone();
        Arc::new(move || spooled.load(std::sync::atomic::Ordering::Relaxed))
    };
    let (wal, _replay, _) = open(dir.path(), limited, Durability::Wal);
    let wal = Arc::new(wal);
    // With nothing of its own to free, the log takes one exchange whatever the spools hold.
    let first = wal
        .append("c", 9, &body(0, 100), None)
        .await
        .expect("logged");
    let next = tokio::spawn({
        let wal = wal.clone();
        async move { wal.append("c", 9, &body(1, 100), None).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!next.is_finished(), "the spools fill the limit");
    spooled.store(0, std::sync::atomic::Ordering::Relaxed);
    let appended = tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("the append resumes once the spools drain")
        .unwrap();
    assert!(appended.is_some());
    drop(first);
}

#[tokio::test]
async fn a_shed_exchange_stays_in_the_log_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, replay, _) = open(dir.path(), settings(1 << 30, 1 << 30), Durability::Wal);
    let shed = wal
        .append("c", 9, &body(1, 64), None)
        .await
        .expect("logged");
    shed.shed();
    drop(shed);
    wal.flush().await;
    drop((wal, replay));
    let (_wal, replay, _) = open(dir.path(), settings(1 << 30, 1 << 30), Durability::Wal);
    assert_eq!(replay.size().exchanges, 1);
}

#[tokio::test]
async fn a_full_log_whose_one_segment_is_done_frees_it_for_the_waiting_append() {
    let dir = tempfile::tempdir().unwrap();
    // Segments far larger than the limit: everything stays in the active segment.
    let (wal, _replay, _) = open(dir.path(), settings(1 << 30, 4096), Durability::Wal);
    let wal = Arc::new(wal);
    let first = wal
        .append("c", 9, &body(0, 3000), None)
        .await
        .expect("logged");
    let next = tokio::spawn({
        let wal = wal.clone();
        async move { wal.append("c", 9, &body(1, 3000), None).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!next.is_finished(), "the log is full");
    complete(first);
    let appended = tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("the done active segment is deleted for the waiting append")
        .unwrap();
    assert!(appended.is_some());
}
