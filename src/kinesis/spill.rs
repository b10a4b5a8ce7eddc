//! Spilling and replay: the writer's spool side.
//!
//! When the budget is full (`when_full = "spill"`), the stream starts spilling: new records
//! are appended to its spool. Records already in memory finish from there, and replay starts
//! only once nothing is queued or in flight and the stream is healthy, so a key's records
//! reach the shard in order across an outage.
//!
//! When a lane's oldest record has waited longer than `record_ttl` or used up `max_attempts`,
//! that lane alone spills: its queue moves to the spool once its requests in flight settle,
//! and its new records follow, while the other shards' lanes send on. Replay starts once the
//! spilled lanes are idle. An outage spills every lane, one by one. When the spool is empty
//! again, records flow directly.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::lanes::Queued;
use super::request::MirrorRecord;
use super::spool::{Spool, SpoolEntry, SpoolPosition};
use super::writer::WriterTask;
use crate::kinesis::request::KinesisKey;
use crate::telemetry::metrics::MirrorResult;

/// Entries read back from the spool at a time.
const REPLAY_WINDOW: usize = 2000;

/// Spool entries being replayed: acknowledged once every one is delivered or dead-lettered.
pub(super) struct Replay {
    pub(super) upto: SpoolPosition,
    pub(super) outstanding: usize,
}

impl WriterTask {
    /// At the shutdown deadline: what is still in memory goes to the spool. Records replayed
    /// from the spool are simply let go: they are still there, unacknowledged.
    pub(super) async fn spool_remaining(&mut self) {
        let mut records = Vec::new();
        for queued in self.lanes.drain_queued() {
            self.settings
                .budget
                .release(queued.record.memory_bytes() as u64);
            if !queued.from_spool {
                records.push(queued.record);
            }
        }
        records.extend(self.held.drain(..));
        self.replay = None;
        if !records.is_empty() {
            self.spill(records).await;
            // A spool that cannot take them (full, or failed to open) hands them back: there is
            // nowhere else durable, so say exactly what is lost.
            for record in self.held.drain(..) {
                tracing::error!(
                    stream = %self.state.stream, topic = %record.topic, partition = record.partition, offset = record.offset,
                    "shutdown: record could be neither delivered nor spooled"
                );
                self.metrics.mirror_outcome(
                    &record.topic,
                    &self.state.stream,
                    MirrorResult::Dropped,
                    1,
                );
            }
        }
    }

    pub(super) async fn retry_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        // Before trying to reserve: a release from now on wakes the writer.
        self.releases.mark_seen();
        if self.spilling || self.lanes.any_spilled() {
            if self.spool.is_some() {
                let held: Vec<MirrorRecord> = self.held.drain(..).collect();
                self.spill(held).await;
            }
            return;
        }
        let now = Instant::now();
        while let Some(record) = self.held.front() {
            if !self
                .settings
                .budget
                .try_reserve(record.memory_bytes() as u64)
            {
                return;
            }
            let record = self.held.pop_front().expect("front exists");
            let map = self.state.map.load();
            self.lanes.push(Queued::new(record, now, false), &map, now);
        }
    }

    /// Appends records to the spool. A full spool falls back to blocking: the first record
    /// that does not fit is held until the spool drains.
    pub(super) async fn spill(&mut self, records: Vec<MirrorRecord>) {
        let Some(spool) = self.spool.clone() else {
            // No spool (it failed to open): block rather than lose anything.
            self.held.extend(records);
            return;
        };
        let entries: Vec<SpoolEntry> = records
            .iter()
            .map(|r| spool_entry(&self.state.stream, r))
            .collect();
        let appended = tokio::task::spawn_blocking({
            let spool = spool.clone();
            move || spool.append(&entries)
        })
        .await
        .expect("spool append task");
        match appended {
            Ok(()) => {
                for record in &records {
                    self.count(&record.topic, MirrorResult::Spooled, 1);
                }
                self.publish_spool_bytes(&spool);
            }
            Err(e) => {
                // Full, or a disk error: fall back to blocking, never to loss. The records wait
                // in order and are retried as the spool drains.
                if self.held.is_empty() {
                    tracing::warn!(stream = %self.state.stream, error = %e, "cannot spool: blocking the mirror until the spool takes records again");
                }
                self.held.extend(records);
            }
        }
    }

    /// Publishes the spool's size to `/routes` and `spool_bytes`.
    pub(super) fn publish_spool_bytes(&self, spool: &Spool) {
        self.state
            .spool_bytes
            .store(spool.bytes(), Ordering::Release);
        self.metrics
            .spool_bytes
            .with_label_values(&[&self.state.stream])
            .set(spool.bytes() as i64);
    }

    pub(super) async fn open_spool(&mut self) {
        let Some(dir) = self.settings.spool.dir.clone() else {
            return;
        };
        let dir: PathBuf = dir.join(&self.state.stream);
        let max = self.settings.spool.max_bytes;
        let opened = tokio::task::spawn_blocking(move || Spool::open(&dir, max))
            .await
            .expect("spool open task");
        match opened {
            Ok((spool, report)) => {
                for tail in &report.truncated {
                    tracing::warn!(
                        stream = %self.state.stream, segment = %tail.segment.display(), at = tail.at_offset,
                        dropped_bytes = tail.dropped_bytes, reason = %tail.reason,
                        "spool tail was torn or corrupt; truncated at the last good record"
                    );
                }
                if report.entries > 0 {
                    tracing::info!(stream = %self.state.stream, entries = report.entries, bytes = report.bytes, "spool holds records from before; replaying");
                    self.spilling = true;
                }
                self.publish_spool_bytes(&spool);
                self.spool = Some(Arc::new(spool));
            }
            Err(e) => {
                tracing::error!(stream = %self.state.stream, error = %e, "cannot open the spool; the mirror will block instead of spilling")
            }
        }
    }

    /// The queues of lanes whose records waited past `record_ttl` or used up `max_attempts`
    /// move to the spool, each once its requests in flight (whose records are older still)
    /// have settled.
    pub(super) async fn spill_if_waited_too_long(&mut self) {
        if self.spilling || self.spool.is_none() {
            return;
        }
        let kinesis = &self.settings.kinesis;
        let overdue =
            self.lanes
                .take_overdue(Instant::now(), kinesis.record_ttl, kinesis.max_attempts);
        if overdue.is_empty() {
            return;
        }
        tracing::warn!(stream = %self.state.stream, records = overdue.len(), "records waited past record_ttl or max_attempts; moving their shard's queue to the spool");
        let records: Vec<MirrorRecord> = overdue
            .into_iter()
            .map(|q| {
                self.settings.budget.release(q.record.memory_bytes() as u64);
                q.record
            })
            .collect();
        self.spill(records).await;
    }

    /// After deliveries: acknowledge a finished replay window, leave spill mode when the
    /// spool is empty, and start the next replay window when memory is idle.
    pub(super) async fn after_progress(&mut self) {
        let Some(spool) = self.spool.clone() else {
            return;
        };
        if let Some(replay) = &self.replay {
            if replay.outstanding > 0 {
                return;
            }
            let upto = replay.upto;
            let acked = tokio::task::spawn_blocking({
                let spool = spool.clone();
                move || spool.acknowledge(upto)
            })
            .await
            .expect("spool acknowledge task");
            if let Err(e) = acked {
                tracing::error!(stream = %self.state.stream, error = %e, "cannot acknowledge replayed spool entries; they will be sent again");
            }
            self.replay = None;
            self.publish_spool_bytes(&spool);
        }
        // A stream-wide spill replays once all memory is idle; spilled lanes, once they are.
        let memory_busy = if self.spilling {
            !self.lanes.is_idle() || self.requests_in_flight > 0
        } else {
            !self.lanes.any_spilled() || !self.lanes.spilled_are_idle()
        };
        if self.closing.is_some() || memory_busy || !self.may_replay() {
            return;
        }
        let peeked = tokio::task::spawn_blocking({
            let spool = spool.clone();
            move || spool.peek(REPLAY_WINDOW)
        })
        .await
        .expect("spool peek task");
        match peeked {
            Ok(entries) if entries.is_empty() => {
                tracing::info!(stream = %self.state.stream, "spool drained; records flow directly again");
                self.spilling = false;
                self.lanes.clear_spilled();
            }
            Ok(entries) => {
                let now = Instant::now();
                let upto = entries.last().expect("not empty").0;
                let map = self.state.map.load();
                let count = entries.len();
                for (_, entry) in entries {
                    let record = record_from_spool(entry);
                    self.settings
                        .budget
                        .force_reserve(record.memory_bytes() as u64);
                    self.lanes.push(Queued::new(record, now, true), &map, now);
                }
                self.replay = Some(Replay {
                    upto,
                    outstanding: count,
                });
            }
            Err(e) => {
                tracing::error!(stream = %self.state.stream, error = %e, "cannot read the spool; will retry")
            }
        }
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn spool_entry(stream: &str, record: &MirrorRecord) -> SpoolEntry {
    let acked_ms =
        unix_ms(SystemTime::now()).saturating_sub(record.acked_at.elapsed().as_millis() as u64);
    SpoolEntry {
        stream: stream.to_owned(),
        partition_key: record.key.partition_key.clone(),
        explicit_hash_key: record.key.explicit_hash_key,
        data: record.data.clone(),
        topic: record.topic.to_string(),
        partition: record.partition,
        offset: record.offset,
        enqueued_unix_ms: acked_ms,
    }
}

fn record_from_spool(entry: SpoolEntry) -> MirrorRecord {
    let waited = unix_ms(SystemTime::now()).saturating_sub(entry.enqueued_unix_ms);
    let now = Instant::now();
    MirrorRecord {
        topic: Arc::from(entry.topic.as_str()),
        partition: entry.partition,
        offset: entry.offset,
        // Replayed from the spool, past the window of recent records.
        offset_from_kafka: false,
        key: KinesisKey {
            partition_key: entry.partition_key,
            explicit_hash_key: entry.explicit_hash_key,
        },
        data: entry.data,
        acked_at: now
            .checked_sub(Duration::from_millis(waited))
            .unwrap_or(now),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::config::WhenFull;
    use crate::kinesis::test_support::{
        all_stored, control_plane, entry_data, record, wait_until, writer_settings, FakeKinesis,
    };
    use crate::kinesis::writer::StreamWriter;
    use crate::telemetry::metrics::Metrics;

    /// A one-shard stream that can be down (every call answered 500) and that keeps what it
    /// stores.
    fn flaky_kinesis(down: &Arc<AtomicBool>, stored: &Arc<Mutex<Vec<String>>>) -> FakeKinesis {
        let (down, stored) = (down.clone(), stored.clone());
        FakeKinesis::new(move |operation, body| {
            if down.load(Ordering::Relaxed) {
                return (500, json!({"__type": "InternalFailure", "message": "down"}));
            }
            if operation == "PutRecords" {
                stored.lock().expect("lock").extend(entry_data(body));
                return all_stored(body);
            }
            control_plane(operation).expect("a Kinesis operation the writer uses")
        })
    }

    /// The spill/replay state machine across an outage: records that waited past
    /// `record_ttl` move to the spool in order, later ones follow them there, and once the
    /// stream answers again the spool is replayed, in order, until empty, when records flow
    /// directly again.
    #[tokio::test(start_paused = true)]
    async fn an_outage_spills_in_order_and_recovery_replays_until_the_spool_is_empty() {
        let down = Arc::new(AtomicBool::new(false));
        let stored = Arc::new(Mutex::new(Vec::new()));
        let spool_dir = tempfile::tempdir().expect("tempdir");
        let settings = writer_settings(
            spool_dir.path(),
            1 << 20,
            WhenFull::Spill,
            Duration::from_secs(2),
        );
        let metrics = Arc::new(Metrics::new());
        let writer = StreamWriter::spawn(
            "s",
            flaky_kinesis(&down, &stored).client(),
            &settings,
            metrics.clone(),
        );
        let count = |result: &str| {
            metrics
                .mirror_records
                .with_label_values(&["orders", "s", result])
                .get()
        };
        writer.send(record(0)).await.expect("writer is running");
        wait_until("the first record stored", Duration::from_secs(10), || {
            stored.lock().expect("lock").len() == 1
        })
        .await;
        down.store(true, Ordering::Relaxed);
        for offset in 1..50 {
            writer
                .send(record(offset))
                .await
                .expect("writer is running");
        }
        wait_until("the queue spilled", Duration::from_secs(60), || {
            count("spooled") == 49
        })
        .await;
        assert!(!writer.state().is_healthy());
        for offset in 50..100 {
            writer
                .send(record(offset))
                .await
                .expect("writer is running");
        }
        wait_until("new records spooled too", Duration::from_secs(10), || {
            count("spooled") == 99
        })
        .await;
        assert!(writer.state().spool_bytes() > 0);
        down.store(false, Ordering::Relaxed);
        wait_until("the spool replayed", Duration::from_secs(120), || {
            count("sent") == 100 && writer.state().spool_bytes() == 0
        })
        .await;
        assert!(writer.state().is_healthy());
        writer.send(record(100)).await.expect("writer is running");
        wait_until("direct delivery again", Duration::from_secs(10), || {
            count("sent") == 101
        })
        .await;
        assert_eq!(
            count("spooled"),
            99,
            "no more spilling once the spool is empty"
        );
        let expected: Vec<String> = (0..=100).map(|o| format!("value-{o}")).collect();
        assert_eq!(
            *stored.lock().expect("lock"),
            expected,
            "in order, once each"
        );
    }

    /// Item 13: one shard throttles everything sent to it. Only its lane spills when its
    /// records pass `record_ttl`; the other shard's records keep going straight to Kinesis
    /// (the old writer spilled the whole stream, so they went to the spool too). Once the hot
    /// shard takes records again, its spool is replayed in order.
    #[tokio::test(start_paused = true)]
    async fn a_hot_shard_spills_alone() {
        const HALF: u128 = 1 << 127;
        let hot = Arc::new(AtomicBool::new(true));
        let stored = Arc::new(Mutex::new(Vec::new()));
        let kinesis = {
            let (hot, stored) = (hot.clone(), stored.clone());
            FakeKinesis::new(move |operation, body| match operation {
                "ListShards" => (
                    200,
                    json!({"Shards": [
                        {"ShardId": "shardId-0", "HashKeyRange": {"StartingHashKey": "0",
                            "EndingHashKey": (HALF - 1).to_string()},
                         "SequenceNumberRange": {"StartingSequenceNumber": "1"}},
                        {"ShardId": "shardId-1", "HashKeyRange": {"StartingHashKey": HALF.to_string(),
                            "EndingHashKey": u128::MAX.to_string()},
                         "SequenceNumberRange": {"StartingSequenceNumber": "1"}}]}),
                ),
                "PutRecords" => {
                    let data = entry_data(body);
                    let mut failed = 0;
                    let results: Vec<_> = body["Records"]
                        .as_array()
                        .expect("records")
                        .iter()
                        .zip(data)
                        .map(|(entry, data)| {
                            let hash: u128 = entry["ExplicitHashKey"]
                                .as_str()
                                .expect("explicit hash key")
                                .parse()
                                .expect("decimal");
                            if hash >= HALF && hot.load(Ordering::Relaxed) {
                                failed += 1;
                                return json!({"ErrorCode": "ProvisionedThroughputExceededException",
                                    "ErrorMessage": "Rate exceeded"});
                            }
                            stored.lock().expect("lock").push(data);
                            let shard = if hash >= HALF {
                                "shardId-1"
                            } else {
                                "shardId-0"
                            };
                            json!({"SequenceNumber": "1", "ShardId": shard})
                        })
                        .collect();
                    (
                        200,
                        json!({"FailedRecordCount": failed, "Records": results}),
                    )
                }
                _ => control_plane(operation).expect("a Kinesis operation the writer uses"),
            })
        };
        let spool_dir = tempfile::tempdir().expect("tempdir");
        let settings = writer_settings(
            spool_dir.path(),
            1 << 20,
            WhenFull::Spill,
            Duration::from_secs(2),
        );
        let metrics = Arc::new(Metrics::new());
        let writer = StreamWriter::spawn("s", kinesis.client(), &settings, metrics.clone());
        let count = |result: &str| {
            metrics
                .mirror_records
                .with_label_values(&["orders", "s", result])
                .get()
        };
        // Even offsets go to the cold shard 0, odd ones to the hot shard 1.
        let send = |offsets: std::ops::Range<i64>| {
            let writer = writer.clone();
            async move {
                for offset in offsets {
                    let mut r = record(offset);
                    r.key.explicit_hash_key = Some(if offset % 2 == 0 { 1 } else { HALF + 1 });
                    writer.send(r).await.expect("writer is running");
                }
            }
        };
        let cold_stored = |upto: i64| {
            let stored = stored.lock().expect("lock");
            (0..upto)
                .step_by(2)
                .all(|o| stored.contains(&format!("value-{o}")))
        };
        send(0..40).await;
        wait_until(
            "the hot shard's lane spilled",
            Duration::from_secs(60),
            || count("spooled") == 20,
        )
        .await;
        assert!(cold_stored(40));
        send(40..60).await;
        wait_until(
            "the cold shard's new records stored",
            Duration::from_secs(10),
            || cold_stored(60),
        )
        .await;
        wait_until(
            "the hot shard's new records spooled",
            Duration::from_secs(10),
            || count("spooled") == 30,
        )
        .await;
        assert_eq!(count("spooled"), 30, "only the hot shard's records spill");
        hot.store(false, Ordering::Relaxed);
        wait_until("the spool replayed", Duration::from_secs(120), || {
            count("sent") == 60 && writer.state().spool_bytes() == 0
        })
        .await;
        let stored = stored.lock().expect("lock");
        let hot_order: Vec<&String> = stored
            .iter()
            .filter(|d| {
                d.trim_start_matches("value-")
                    .parse::<i64>()
                    .expect("offset")
                    % 2
                    == 1
            })
            .collect();
        let expected: Vec<String> = (1..60).step_by(2).map(|o| format!("value-{o}")).collect();
        assert_eq!(
            hot_order,
            expected.iter().collect::<Vec<_>>(),
            "the hot shard's records in order"
        );
        assert_eq!(stored.len(), 60, "each once");
    }
}
