//! A stream that refuses records, and a dead-letter file that is full, on tokio's paused clock
//! with a fake Kinesis.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::DeadLetterLimits;
use crate::kinesis::dead_letter::DeadLetterFile;
use crate::kinesis::test_support::{
    all_stored, control_plane, entry_data, outcomes, record, spilling_settings, wait_until,
    FakeKinesis,
};
use crate::kinesis::writer::{StreamWriter, WriterSettings};
use crate::telemetry::metrics::Metrics;

/// What the fake stream saw: the data it stored, in order, and when each PutRecords came.
#[derive(Default)]
struct Seen {
    stored: Mutex<Vec<String>>,
    puts: Mutex<Vec<tokio::time::Instant>>,
}

/// How a stream refuses records.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refusal {
    AccessDenied,
    /// Fails its control plane too.
    StreamMissing,
    /// KMS refusals come per entry, in an answered request.
    KmsAccessDenied,
    /// Not the stream: one record, `value-3`, is invalid, and refused with every request
    /// that carries it.
    BadRecord,
}

impl Refusal {
    /// The answer to a PutRecords of `entries` entries.
    fn answer(self, entries: usize) -> (u16, Value) {
        let request_refused = |code: &str| {
            (
                400,
                json!({"__type": code, "message": "refused by the test"}),
            )
        };
        match self {
            Refusal::AccessDenied => request_refused("AccessDeniedException"),
            Refusal::StreamMissing => request_refused("ResourceNotFoundException"),
            Refusal::BadRecord => request_refused("ValidationException"),
            Refusal::KmsAccessDenied => {
                let failed: Vec<Value> = (0..entries)
                    .map(|_| json!({"ErrorCode": "KMSAccessDeniedException", "ErrorMessage": "key denied"}))
                    .collect();
                (
                    200,
                    json!({"FailedRecordCount": entries, "Records": failed}),
                )
            }
        }
    }
}

/// A one-shard stream that refuses every PutRecords while `refusing`; a missing stream
/// fails its control plane too.
fn refusing_kinesis(refusing: &Arc<AtomicBool>, seen: &Arc<Seen>, refusal: Refusal) -> FakeKinesis {
    let (refusing, seen) = (refusing.clone(), seen.clone());
    FakeKinesis::new(move |operation, body| {
        let refused = refusing.load(Ordering::Relaxed);
        if operation != "PutRecords" {
            if refused && refusal == Refusal::StreamMissing {
                return refusal.answer(0);
            }
            return control_plane(operation).expect("a Kinesis operation the writer uses");
        }
        seen.puts
            .lock()
            .expect("lock")
            .push(tokio::time::Instant::now());
        let data = entry_data(body);
        if refused && (refusal != Refusal::BadRecord || data.iter().any(|d| d == "value-3")) {
            return refusal.answer(data.len());
        }
        seen.stored.lock().expect("lock").extend(data);
        all_stored(body)
    })
}

fn settings_with_dead_letters(dir: &std::path::Path, limits: DeadLetterLimits) -> WriterSettings {
    let mut settings = spilling_settings(dir, 1 << 20);
    let file = DeadLetterFile::open(&dir.join("dead-letters.jsonl")).expect("dead-letter file");
    settings.dead_letters = Some(Arc::new(file.with_limits(limits)));
    settings
}

/// A stream that refuses records for two minutes, then takes them: no record is
/// dead-lettered, every one waits in the spool, the stream is probed with backoff (not every
/// 200 ms), and once it takes records again every one is delivered, once and in order. The old
/// writer dead-lettered every queued record every 200 ms.
///
/// A stream missing from the start has no shard map, so it is never sent to: its records go
/// to the spool as soon as a describe finds it missing.
async fn refused_records_wait_in_the_spool_and_are_delivered_in_order(
    refusal: Refusal,
    from_start: bool,
) {
    let refusing = Arc::new(AtomicBool::new(from_start));
    let seen = Arc::new(Seen::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = settings_with_dead_letters(dir.path(), DeadLetterLimits::default());
    let metrics = Arc::new(Metrics::new());
    let kinesis = refusing_kinesis(&refusing, &seen, refusal);
    let writer = StreamWriter::spawn("s", kinesis.client(), &settings, metrics.clone());
    let count = |result: &str| outcomes(&metrics, result);
    writer.send(record(0)).await.expect("writer is running");
    if !from_start {
        wait_until("the first record stored", Duration::from_secs(10), || {
            seen.stored.lock().expect("lock").len() == 1
        })
        .await;
        refusing.store(true, Ordering::Relaxed);
    }
    let refused_at = tokio::time::Instant::now();
    for offset in 1..100 {
        writer
            .send(record(offset))
            .await
            .expect("writer is running");
        if offset % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    wait_until(
        "every refused record spooled",
        Duration::from_secs(30),
        || count("spooled") == if from_start { 100 } else { 99 },
    )
    .await;
    tokio::time::sleep_until(refused_at + Duration::from_secs(120)).await;
    assert_eq!(
        count("dead_letter"),
        0,
        "a refusing stream's records are not given up on"
    );
    assert!(writer.state().is_refused() && !writer.state().is_healthy());
    let error = writer.state().last_error().expect("an error");
    assert!(error.contains("spool"), "{error}");
    assert_eq!(
        metrics.stream_healthy.with_label_values(&["s"]).get(),
        0,
        "a describe that answers does not make a refusing stream healthy"
    );
    assert!(writer.state().spool_bytes() > 0);
    let puts: Vec<tokio::time::Instant> = seen.puts.lock().expect("lock").clone();
    let refused_puts: Vec<_> = puts.iter().filter(|t| **t >= refused_at).collect();
    let gaps: Vec<Duration> = refused_puts.windows(2).map(|w| *w[1] - *w[0]).collect();
    println!(
        "{} PutRecords in 120 s of refusal; gaps {gaps:?}",
        refused_puts.len()
    );
    assert!(
        refused_puts.len() <= 20,
        "probes back off: {} PutRecords in 120 s",
        refused_puts.len()
    );
    assert!(
        from_start || gaps.last().is_some_and(|g| *g >= Duration::from_secs(15)),
        "the probes' gaps grow to the cap: {gaps:?}"
    );

    refusing.store(false, Ordering::Relaxed);
    wait_until("every record delivered", Duration::from_secs(60), || {
        count("sent") == 100 && writer.state().spool_bytes() == 0
    })
    .await;
    let expected: Vec<String> = (0..100).map(|o| format!("value-{o}")).collect();
    assert_eq!(
        *seen.stored.lock().expect("lock"),
        expected,
        "each once, in order"
    );
    assert!(writer.state().is_healthy() && !writer.state().is_refused());
    assert_eq!(count("dead_letter"), 0);
    assert!(
        DeadLetterFile::read_all(&dir.path().join("dead-letters.jsonl"))
            .expect("read")
            .is_empty()
    );
}

#[tokio::test(start_paused = true)]
async fn refusing_streams_spool_probe_and_deliver_in_order() {
    for (refusal, from_start) in [
        (Refusal::AccessDenied, false),
        (Refusal::StreamMissing, false),
        (Refusal::StreamMissing, true),
        (Refusal::KmsAccessDenied, false),
    ] {
        refused_records_wait_in_the_spool_and_are_delivered_in_order(refusal, from_start).await;
    }
}

/// The dead-letter file is full (one letter in it, no rotated file allowed): a record Kinesis
/// refuses for good waits in memory, the stream takes no new records, and nothing is dropped;
/// once the file is taken away (as `spool replay` does), the letter is written and the
/// stream flows again.
#[tokio::test(start_paused = true)]
async fn a_full_dead_letter_file_blocks_the_stream_instead_of_dropping() {
    let seen = Arc::new(Seen::default());
    let kinesis = refusing_kinesis(&Arc::new(AtomicBool::new(true)), &seen, Refusal::BadRecord);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("dead-letters.jsonl");
    std::fs::write(&path, "{}\n").expect("an earlier letter");
    let settings = settings_with_dead_letters(
        dir.path(),
        DeadLetterLimits {
            max_bytes: 1,
            rotated_files: 0,
        },
    );
    let metrics = Arc::new(Metrics::new());
    let writer = StreamWriter::spawn("s", kinesis.client(), &settings, metrics.clone());
    let count = |result: &str| outcomes(&metrics, result);
    let waiting = || metrics.dead_letters_waiting.with_label_values(&["s"]).get();
    for offset in 0..10 {
        writer
            .send(record(offset))
            .await
            .expect("writer is running");
    }
    wait_until("the bad record waits", Duration::from_secs(30), || {
        waiting() == 1
    })
    .await;
    for offset in 10..20 {
        writer
            .send(record(offset))
            .await
            .expect("writer is running");
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(waiting(), 1, "still waiting");
    assert_eq!(count("dead_letter"), 0, "not counted as written");
    assert_eq!(count("dropped"), 0);
    let stored = seen.stored.lock().expect("lock").len();
    assert_eq!(
        stored, 9,
        "the stream takes no new records while a letter waits"
    );

    std::fs::remove_file(&path).expect("the operator takes the file away");
    wait_until(
        "the letter written and the rest delivered",
        Duration::from_secs(30),
        || count("dead_letter") == 1 && count("sent") == 19,
    )
    .await;
    assert_eq!(waiting(), 0);
    let letters = DeadLetterFile::read_all(&path).expect("read");
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].offset, letters[0].error_code.as_str()),
        (3, "ValidationException")
    );
}
