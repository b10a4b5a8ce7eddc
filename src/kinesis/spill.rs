//! Spilling and replay: the writer's spool side.
//!
//! When the budget is full (`when_full = "spill"`), or a record has waited longer than
//! `record_ttl` or used up `max_attempts`, the stream starts spilling: everything queued moves
//! to its spool, and new records are appended there too. Records already in flight finish from
//! memory, and replay starts only once nothing is queued or in flight and the stream is healthy,
//! so a key's records reach the shard in order across an outage. When the spool is empty again,
//! records flow directly.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::lanes::Queued;
use super::request::MirrorRecord;
use super::spool::{Spool, SpoolEntry, SpoolPosition};
use super::writer::WriterTask;
use crate::mirror::partition_key::KinesisKey;
use crate::ops::metrics::MirrorResult;

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
        if self.spilling {
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

    /// Appends records to the spool (entering spill mode). A full spool falls back to
    /// blocking: the first record that does not fit is held until the spool drains.
    pub(super) async fn spill(&mut self, records: Vec<MirrorRecord>) {
        let Some(spool) = self.spool.clone() else {
            // No spool (it failed to open): block rather than lose anything.
            self.held.extend(records);
            return;
        };
        if !self.spilling {
            tracing::warn!(stream = %self.state.stream, "mirror spilling to the spool");
        }
        self.spilling = true;
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

    /// Records that waited past `record_ttl` or used up `max_attempts` move the queue to the
    /// spool, once the requests in flight (whose records are older still) have settled.
    pub(super) async fn spill_if_waited_too_long(&mut self) {
        let too_old = self
            .lanes
            .oldest_in_memory()
            .is_some_and(|(enqueued, attempts)| {
                enqueued.elapsed() >= self.settings.kinesis.record_ttl
                    || attempts >= self.settings.kinesis.max_attempts
            });
        if too_old && !self.spilling && self.spool.is_some() {
            self.spill_pending = true;
        }
        if self.spill_pending && self.requests_in_flight == 0 {
            self.spill_pending = false;
            tracing::warn!(stream = %self.state.stream, "records waited past record_ttl or max_attempts; moving the queue to the spool");
            let queued = self.lanes.drain_queued();
            let records: Vec<MirrorRecord> = queued
                .into_iter()
                .map(|q| {
                    self.settings.budget.release(q.record.memory_bytes() as u64);
                    q.record
                })
                .collect();
            self.spill(records).await;
        }
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
        if self.closing.is_some()
            || !self.spilling
            || !self.lanes.is_idle()
            || self.requests_in_flight > 0
            || !self.state.is_healthy()
        {
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
    use crate::kinesis::test_support::{
        all_stored, control_plane, entry_data, record, wait_until, writer_settings, FakeKinesis,
    };
    use crate::kinesis::writer::StreamWriter;
    use crate::ops::config::WhenFull;
    use crate::ops::metrics::Metrics;

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
}
