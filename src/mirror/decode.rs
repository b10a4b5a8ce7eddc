//! Decoding off the async runtime: each produced partition is summarized, decoded, sampled and
//! turned into Kinesis records on a small pool of dedicated threads, so a heavy batch costs a
//! decode thread and never a runtime worker that other connections need.
//!
//! The pool is a fixed set of std threads rather than `spawn_blocking`: the blocking pool grows
//! to hundreds of threads, each of which could then hold a decode's memory, and it is shared
//! with the spool's file I/O, which must not wait behind a decompression bomb.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::partition_key::kinesis_key;
use super::sampling::{is_sampled, record_sample_point};
use super::{Route, Verdict};
use crate::kafka::records::{
    self, summarize, BatchSummary, DecodeBudget, RecordsError, Spending, DEFAULT_MAX_DECODE_BYTES,
};
use crate::kinesis::request::MirrorRecord;

/// Decode threads. Two, so one heavy batch leaves a thread for everyone else's.
pub(super) const DECODE_THREADS: usize = 2;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads running jobs in the order they are submitted.
pub(super) struct DecodePool {
    jobs: mpsc::Sender<Job>,
}

impl DecodePool {
    /// Starts `threads` threads, which end when the pool is dropped.
    pub(super) fn start(threads: usize) -> DecodePool {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("kkp-decode-{i}"))
                .spawn(move || loop {
                    let Ok(job) = queue.lock().expect("no job runs under the lock").recv() else {
                        return;
                    };
                    // A bug in the decoder must not shrink the pool: the job's receiver sees
                    // its sender dropped, and the thread takes the next job.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                })
                .expect("spawn a decode thread");
        }
        DecodePool { jobs }
    }

    /// Runs `work` on a pool thread; the receiver resolves with its result, or with an error if
    /// it panicked.
    pub(super) fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> oneshot::Receiver<T> {
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(work());
        });
        // The threads only stop once this sender is dropped, so the send cannot fail.
        let _ = self.jobs.send(job);
        result
    }
}

/// What the mirror makes of one produced partition.
pub(super) struct Decoded {
    /// For the metrics and the producer inventory.
    pub(super) summary: Result<BatchSummary, RecordsError>,
    /// `None` when the partition is not mirrored (no route, or Kafka rejected it).
    pub(super) mirrored: Option<Result<Mirrored, RecordsError>>,
}

/// The sampled records of a partition, ready for the stream's writer.
#[derive(Default)]
pub(super) struct Mirrored {
    pub(super) records: Vec<MirrorRecord>,
    /// Records not sampled.
    pub(super) skipped: u64,
}

/// Summarizes `records`, produced to `partition` of `topic`, and, when `route` mirrors them,
/// builds their Kinesis records. Each step is bounded by [`DEFAULT_MAX_DECODE_BYTES`].
pub(super) fn decode_partition(
    route: Option<&Route>,
    topic: &Arc<str>,
    partition: i32,
    records: Bytes,
    verdict: Verdict,
) -> Decoded {
    let summary = summarize(&records);
    let mirrored = match (route, verdict, &summary) {
        (Some(route), Verdict::Accepted { .. } | Verdict::Unacknowledged, Ok(_)) => {
            Some(mirror_records(route, topic, partition, records, verdict))
        }
        _ => None,
    };
    Decoded { summary, mirrored }
}

/// The sampled records of a partition as Kinesis records. They are all built before any is
/// sent, so a batch over the limit is skipped whole rather than mirrored in part; the records
/// built count against the same budget as the decompressed bytes.
fn mirror_records(
    route: &Route,
    topic: &Arc<str>,
    partition: i32,
    data: Bytes,
    verdict: Verdict,
) -> Result<Mirrored, RecordsError> {
    // The client already has Kafka's answer: this is as close to the ack as the mirror gets.
    let acked_at = Instant::now();
    let base_offset = match verdict {
        Verdict::Accepted { base_offset } => base_offset,
        _ => -1,
    };
    let budget = DecodeBudget::new(DEFAULT_MAX_DECODE_BYTES);
    let mut mirrored = Mirrored::default();
    for record in records::records(data, &budget) {
        let record = record?;
        let point = record_sample_point(&route.partition_key, &record, partition)?;
        if !is_sampled(point, route.percent) {
            mirrored.skipped += 1;
            continue;
        }
        // acks=0 gives no offsets; the position in the request stands in for them.
        let offset = if base_offset >= 0 {
            base_offset + record.index as i64
        } else {
            record.index as i64
        };
        let record = MirrorRecord {
            topic: topic.clone(),
            partition,
            offset,
            offset_from_kafka: base_offset >= 0,
            key: kinesis_key(&route.partition_key, &record, partition)?,
            // Copied out: a slice would pin the whole request frame (or decompressed batch)
            // until its last record is delivered, so a full budget could hold several times
            // its size.
            data: record
                .value
                .as_deref()
                .map_or_else(Bytes::new, Bytes::copy_from_slice),
            acked_at,
            // Given by the stage, once it knows how many records the partition owes.
            delivery: None,
            logged: None,
        };
        budget.charge(Spending::Records, record.memory_bytes())?;
        mirrored.records.push(record);
    }
    Ok(mirrored)
}
