//! The default `when_full = "spill"` with the default write-ahead log: exchanges the stage has
//! no room for are deferred to the log and read back, never shed. A real stage and writers in
//! front of a [`FakeKinesis`] that stores everything; real clock (decoding runs on its own
//! threads), on a single-threaded runtime so that the stage cannot run while a test hands
//! exchanges over without awaiting.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::stage_transactions::tests::end_txn;
use super::tests::produce_response;
use super::tests::{acks0_produce, client, kinesis_with_a_down, route, stored, Stored};
use super::{Mirror, PrimaryAnswer, ProduceExchange, EXCHANGE_QUEUE};
use crate::config::{Durability, MirrorRoute, RouteMode};
use crate::kinesis::test_support::{spilling_settings, wait_until};
use crate::kinesis::writer::WriterSettings;
use crate::telemetry::inventory::Inventory;
use crate::telemetry::metrics::{Metrics, MirrorResult};

/// Records per exchange, keyed `key-0`, `key-1`.
pub(super) const RECORDS: usize = 2;

/// The exchange numbered `seq` of a run: [`RECORDS`] records to partition 0 of `topic-a`,
/// valued `SEQ-INDEX`, which Kafka stored from offset `seq * RECORDS`.
pub(super) fn numbered(seq: usize) -> ProduceExchange {
    let values: Vec<Bytes> = (0..RECORDS)
        .map(|i| Bytes::from(format!("{seq}-{i}")))
        .collect();
    stored("topic-a", (seq * RECORDS) as i64, &values)
}

/// The default settings (spill, write-ahead log) with a spool in `spool`, and a writer fast
/// enough that the stage, not Kinesis, is what falls behind.
fn default_settings(spool: &std::path::Path) -> WriterSettings {
    let mut settings = spilling_settings(spool, 1 << 30);
    // The test helpers default to memory; the product's default is the log.
    settings.buffer.durability = Durability::Wal;
    settings.kinesis.shard_rate_factor = 100.0;
    settings
}

/// A mirror of `topic-a` to `stream-a`, in front of a Kinesis that stores everything.
pub(super) struct Run {
    pub(super) mirror: Mirror,
    pub(super) kinesis: Stored,
    pub(super) metrics: Arc<Metrics>,
    pub(super) spool: tempfile::TempDir,
}

impl Run {
    /// With [`default_settings`], changed by `adjust`.
    pub(super) async fn start(adjust: impl FnOnce(&mut WriterSettings)) -> Run {
        let spool = tempfile::tempdir().unwrap();
        let mut settings = default_settings(spool.path());
        adjust(&mut settings);
        let (kinesis, metrics) = (Stored::default(), Arc::new(Metrics::new()));
        let mirror = Mirror::start_with(
            &[route("topic-a", "stream-a")],
            settings,
            metrics.clone(),
            Arc::new(Inventory::default()),
            kinesis_with_a_down(&Arc::new(AtomicBool::new(false)), &kinesis).clients(),
        )
        .await;
        Run {
            mirror,
            kinesis,
            metrics,
            spool,
        }
    }

    /// With the default settings, behind: `backlog` exchanges handed over as a [`burst`], the
    /// ones past the stage's queue deferred to the log.
    async fn behind(backlog: usize) -> Run {
        let run = Run::start(|_| {}).await;
        burst(&run.mirror, (0..backlog).map(numbered)).await;
        run
    }

    /// Waits until `records` records are in Kinesis or counted dropped, then shuts the mirror
    /// down, which writes every mark in the log.
    pub(super) async fn finish(&self, records: usize) {
        wait_until(
            "every record in Kinesis or dropped",
            Duration::from_secs(120),
            || stream_a(&self.kinesis).len() as u64 + dropped(&self.metrics) >= records as u64,
        )
        .await;
        self.mirror
            .shut_down(std::time::Instant::now() + Duration::from_secs(10))
            .await;
    }
}

/// Hands `exchanges` over as a burst faster than the stage can take any: each is logged
/// first, then all are handed to the stage without an await between them, so that on this
/// single-threaded runtime the stage does not run until the burst is over. Returns what each
/// exchange's response waits for, on a kinesis-primary route.
pub(super) async fn burst(
    mirror: &Mirror,
    exchanges: impl IntoIterator<Item = ProduceExchange>,
) -> Vec<Option<PrimaryAnswer>> {
    let (mut logged, mut answers) = (Vec::new(), Vec::new());
    for mut exchange in exchanges {
        // As `hand_over` opens them.
        answers.push(
            mirror
                .primary
                .open(&mut exchange, &mirror.routes.load(), &mirror.metrics),
        );
        let log = mirror.log_exchange(&exchange).await;
        assert!(log.is_some(), "the default config logs routed exchanges");
        logged.push((exchange, log));
    }
    for (exchange, log) in logged {
        // Spill and drop modes never wait here.
        futures::FutureExt::now_or_never(mirror.stage_exchange(exchange, log))
            .expect("handing over does not wait");
    }
    answers
}

fn stream_a(stored: &Stored) -> Vec<String> {
    let stored = stored.lock().unwrap();
    stored.get("stream-a").cloned().unwrap_or_default()
}

/// Asserts that stream-a holds every record of exchanges `0..exchanges` exactly once, and
/// each key's records in the order produced.
fn assert_all_once_in_order(stored: &Stored, exchanges: usize) {
    let data = stored_seqs(stored);
    let mut by_key: HashMap<usize, Vec<usize>> = HashMap::new();
    for &(key, seq) in &data {
        by_key.entry(key).or_default().push(seq);
    }
    assert_eq!(data.len(), exchanges * RECORDS, "every record exactly once");
    for (key, seqs) in by_key {
        let expected: Vec<usize> = (0..exchanges).collect();
        assert!(seqs == expected, "key-{key} out of order or incomplete");
    }
}

fn dropped(metrics: &Metrics) -> u64 {
    metrics
        .mirror_records
        .with_label_values(&["topic-a", "stream-a", MirrorResult::Dropped.as_str()])
        .get()
}

#[tokio::test]
async fn exchanges_past_a_full_stage_queue_are_read_back_from_the_log_not_shed() {
    let exchanges = EXCHANGE_QUEUE + 3000;
    let run = Run::behind(exchanges).await;
    let deferred_bytes = run.metrics.wal.replay_remaining_bytes.get();
    run.finish(exchanges * RECORDS).await;
    assert_eq!(run.metrics.mirror_dropped_requests.get(), 0, "nothing shed");
    assert_eq!(dropped(&run.metrics), 0, "no record counted dropped");
    assert!(
        deferred_bytes > 0,
        "the exchanges past the queue waited in the log"
    );
    assert_eq!(
        run.metrics.wal.replay_remaining_bytes.get(),
        0,
        "all read back"
    );
    assert_all_once_in_order(&run.kinesis, exchanges);
}

#[tokio::test]
async fn exchanges_arriving_during_the_catch_up_queue_behind_the_deferred_ones() {
    let backlog = EXCHANGE_QUEUE + 3000;
    let run = Run::behind(backlog).await;
    // Live exchanges, one at a time as a connection hands them over (each waits for its
    // append, so the stage and the catch-up run meanwhile), while the mirror is behind and
    // after it caught up.
    let (mut during, mut after, mut seq) = (0, 0, backlog);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while after < 100 {
        assert!(tokio::time::Instant::now() < deadline, "never caught up");
        if run.metrics.wal.replay_remaining_bytes.get() > 0 {
            during += 1;
        } else {
            after += 1;
        }
        run.mirror.hand_over(numbered(seq)).await;
        seq += 1;
    }
    run.finish(seq * RECORDS).await;
    assert!(
        during > 0,
        "live exchanges arrived while the mirror was behind"
    );
    assert_eq!(run.metrics.mirror_dropped_requests.get(), 0, "nothing shed");
    assert_eq!(run.metrics.wal.replay_remaining_bytes.get(), 0);
    assert_all_once_in_order(&run.kinesis, seq);
    eprintln!("backlog {backlog}, live during the catch-up {during}, after {after}");
}

#[tokio::test]
async fn a_deferred_kinesis_primary_exchange_is_answered_once_it_is_delivered() {
    // The setting under test: a kinesis-primary route, whose answers wait for delivery.
    let run = Run::start(|_| {}).await;
    let primary = MirrorRoute {
        mode: RouteMode::KinesisPrimary,
        primary_timeout: Duration::from_secs(120),
        ..route("topic-a", "stream-a")
    };
    run.mirror.apply_routes(&[primary]).await;
    let exchanges = EXCHANGE_QUEUE + 1000;
    let answers = burst(&run.mirror, (0..exchanges).map(numbered)).await;
    assert!(
        run.metrics.wal.replay_remaining_bytes.get() > 0,
        "some deferred"
    );
    let received = std::time::Instant::now();
    let answered =
        futures::future::join_all(answers.into_iter().enumerate().map(|(seq, answer)| {
            let response = produce_response("topic-a", (seq * RECORDS) as i64);
            async move {
                let answer = answer.expect("a kinesis-primary exchange waits for delivery");
                answer.settle(response.clone(), received).await.unwrap() == response
            }
        }))
        .await;
    let unchanged = answered.iter().filter(|ok| **ok).count();
    assert_eq!(
        unchanged, exchanges,
        "every response goes back as Kafka gave it: delivered, none timed out"
    );
    run.finish(exchanges * RECORDS).await;
    assert_all_once_in_order(&run.kinesis, exchanges);
}

#[tokio::test]
async fn a_transaction_ended_while_its_records_are_deferred_ends_after_them() {
    let run = Run::start(|_| {}).await;
    let backlog = EXCHANGE_QUEUE + 1000;
    // The last exchanges of the burst are producer 9's transaction, deferred to the log.
    let (transactional, records) = (10, 5);
    let txn = (0..transactional).map(|_| ProduceExchange {
        client: client(),
        version: 7,
        request_body: acks0_produce("topic-a", records, Some((9, 0))),
        response_frame: None,
        deliveries: Default::default(),
    });
    burst(&run.mirror, (0..backlog).map(numbered).chain(txn)).await;
    assert!(
        run.metrics.wal.replay_remaining_bytes.get() > 0,
        "some deferred"
    );
    // Its EndTxn comes while they wait: were it staged first, their records would be held
    // for a look-up in Kafka, which this mirror has none to make.
    run.mirror.hand_over_txn_control(end_txn(9, 0, true)).await;
    let expected = backlog * RECORDS + transactional * records;
    run.finish(expected).await;
    assert_eq!(
        stream_a(&run.kinesis).len(),
        expected,
        "the committed records too"
    );
}

/// The records in stream-a as (key, seq), in the order stored.
fn stored_seqs(stored: &Stored) -> Vec<(usize, usize)> {
    stream_a(stored)
        .iter()
        .map(|value| {
            let (seq, key) = value.split_once('-').expect("SEQ-INDEX");
            (key.parse().unwrap(), seq.parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn an_exchange_the_log_could_not_take_while_behind_does_not_overtake_the_deferred_ones() {
    let backlog = EXCHANGE_QUEUE + 3000;
    let run = Run::behind(backlog).await;
    // While the catch-up reads the backlog back, exchanges whose append failed (handed over
    // unlogged) to the same partition: later offsets than every deferred one.
    let (mut seq, mut unlogged_while_behind) = (backlog, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while run.metrics.wal.replay_remaining_bytes.get() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "never caught up");
        futures::FutureExt::now_or_never(run.mirror.stage_exchange(numbered(seq), None))
            .expect("handing over does not wait");
        (seq, unlogged_while_behind) = (seq + 1, unlogged_while_behind + 1);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    run.finish(seq * RECORDS).await;
    let mut last_by_key: HashMap<usize, usize> = HashMap::new();
    let mut out_of_order = 0;
    for (key, seq) in stored_seqs(&run.kinesis) {
        if last_by_key.insert(key, seq).is_some_and(|last| last > seq) {
            out_of_order += 1;
        }
    }
    let shed = run.metrics.mirror_dropped_requests.get();
    eprintln!("backlog {backlog}, unlogged while behind {unlogged_while_behind}, shed {shed}, out of order {out_of_order}");
    assert!(unlogged_while_behind > 0);
    assert_eq!(out_of_order, 0, "each key's records in the order produced");
    assert_eq!(
        shed, unlogged_while_behind as u64,
        "every unlogged exchange handed over while behind is shed, and counted"
    );
    assert_eq!(dropped(&run.metrics), shed * RECORDS as u64);
    assert_eq!(run.metrics.wal.replay_remaining_bytes.get(), 0);
}
