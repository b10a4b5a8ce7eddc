//! Spilling and replay: the writer's spool side.
//!
//! When the budget is full (`when_full = "spill"`), the stream starts spilling: the records
//! queued in memory are appended to its spool, then the new ones, so the spool holds each
//! key's records in arrival order. Records in flight finish from memory, and replay starts
//! only once nothing is queued or in flight and the stream is healthy, so a key's records
//! reach the shard in order across an outage.
//!
//! When a lane's oldest record has waited longer than `record_ttl` or used up `max_attempts`,
//! that lane alone spills: its queue moves to the spool once its requests in flight settle,
//! and its new records follow, while the other shards' lanes send on. Replay starts once the
//! spilled lanes are idle. An outage spills every lane, one by one. When the spool is empty
//! again, records flow directly.
//!
//! Replay reads the spool ahead in windows while the memory budget has room, so each lane
//! takes its replayed records at its own pace: one throttled shard holds back only the
//! acknowledgement of the windows it has records in (the spool's checkpoint moves past a
//! window once every lane has settled its records), not the other shards' deliveries.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::lanes::{Queued, ReplayWindow};
use super::request::MirrorRecord;
use super::shard_map::ShardMap;
use super::spool::{Spool, SpoolEntry, SpoolPosition};
use super::writer::WriterTask;
use crate::config::spool_dir_of_label;
use crate::kinesis::request::KinesisKey;
use crate::telemetry::metrics::MirrorResult;

/// Entries read back from the spool at a time.
const REPLAY_WINDOW: usize = 2000;

/// The spool entries read back and not yet acknowledged, in windows, oldest first. A window
/// is acknowledged once every one of its records, and of every window before it, is
/// delivered or dead-lettered.
pub(super) struct Replay {
    windows: VecDeque<Window>,
    /// The id of `windows[0]`; ids grow by one per window read.
    first: ReplayWindow,
}

struct Window {
    /// The window's last entry.
    upto: SpoolPosition,
    /// Its records not yet delivered or dead-lettered.
    outstanding: usize,
}

impl Replay {
    fn new() -> Replay {
        Replay {
            windows: VecDeque::new(),
            first: 0,
        }
    }

    /// A record of `window` is delivered or dead-lettered.
    pub(super) fn settled(&mut self, window: ReplayWindow) {
        let index = window.checked_sub(self.first).map(|i| i as usize);
        if let Some(window) = index.and_then(|i| self.windows.get_mut(i)) {
            window.outstanding -= 1;
        }
    }

    /// Takes the windows settled from the oldest on, returning the last position they cover.
    fn take_settled(&mut self) -> Option<SpoolPosition> {
        let mut upto = None;
        while let Some(window) = self.windows.front().filter(|w| w.outstanding == 0) {
            upto = Some(window.upto);
            self.windows.pop_front();
            self.first += 1;
        }
        upto
    }

    /// The id the next window read gets, and where it starts reading.
    fn next(&self) -> (ReplayWindow, Option<SpoolPosition>) {
        (
            self.first + self.windows.len() as ReplayWindow,
            self.windows.back().map(|w| w.upto),
        )
    }
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
            if queued.from_spool.is_none() {
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
            self.lanes.push(Queued::new(record, now), &map, now);
        }
    }

    /// The records queued in memory (not in flight, nor replayed), in order, with their
    /// budget released: the stream starts spilling, and they go to the spool first.
    pub(super) fn take_memory_queues(&mut self) -> Vec<MirrorRecord> {
        let queued = self.lanes.drain_from_memory();
        self.release(queued)
    }

    /// Queued records leave memory: their budget is released.
    fn release(&self, queued: Vec<Queued>) -> Vec<MirrorRecord> {
        queued
            .into_iter()
            .map(|q| {
                self.settings.budget.release(q.record.memory_bytes() as u64);
                q.record
            })
            .collect()
    }

    /// Moves the lanes to a new shard map. Resharding moves spilled lanes' keys to lanes that
    /// are not, so the whole stream spills (its replay waits for all of memory), and what
    /// memory holds goes to the spool first.
    pub(super) async fn reroute(&mut self, map: &ShardMap, had_map: bool) {
        let spill_all = had_map
            && !self.spilling
            && self.lanes.any_spilled()
            && *map != **self.state.map.load();
        self.lanes.reroute(map, Instant::now());
        if spill_all {
            self.spilling = true;
            let queued = self.take_memory_queues();
            if !queued.is_empty() {
                self.spill(queued).await;
            }
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
                    if let Some(token) = &record.delivery {
                        token.spooled();
                    }
                    record.settled();
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
        let dir: PathBuf = dir.join(spool_dir_of_label(&self.state.stream));
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
        let records = self.release(overdue);
        self.spill(records).await;
    }

    /// After deliveries: acknowledge the replay windows that are settled, leave spill mode
    /// when the spool is empty, start replay when the spilled lanes (after a full budget, all
    /// of memory) are idle, and read ahead while replaying and the budget has room.
    pub(super) async fn after_progress(&mut self) {
        let Some(spool) = self.spool.clone() else {
            return;
        };
        if let Some(upto) = self.replay.as_mut().and_then(Replay::take_settled) {
            let acked = tokio::task::spawn_blocking({
                let spool = spool.clone();
                move || spool.acknowledge(upto)
            })
            .await
            .expect("spool acknowledge task");
            if let Err(e) = acked {
                tracing::error!(stream = %self.state.stream, error = %e, "cannot acknowledge replayed spool entries; they will be sent again");
            }
            self.publish_spool_bytes(&spool);
        }
        if self.replay.as_ref().is_some_and(|r| r.windows.is_empty()) {
            self.replay = None;
        }
        if self.closing.is_some() || !self.may_replay() {
            return;
        }
        let may_read = match &self.replay {
            // Read ahead once a quarter of the limit is free, not for every few records
            // delivered: each read costs a window's worth of disk reads.
            Some(_) => {
                self.settings.budget.used() + self.read_ahead_limit() / 4 <= self.read_ahead_limit()
            }
            None if self.spilling => self.lanes.is_idle() && self.requests_in_flight == 0,
            None => self.lanes.any_spilled() && self.lanes.spilled_are_idle(),
        };
        if !may_read {
            return;
        }
        let (window, after) = self.replay.as_ref().map_or((0, None), Replay::next);
        let peeked = tokio::task::spawn_blocking({
            let spool = spool.clone();
            move || match after {
                Some(after) => spool.peek_after(after, REPLAY_WINDOW),
                None => spool.peek(REPLAY_WINDOW),
            }
        })
        .await
        .expect("spool peek task");
        match peeked {
            Ok(entries) if entries.is_empty() => {
                if self.replay.is_none() {
                    tracing::info!(stream = %self.state.stream, "spool drained; records flow directly again");
                    self.spilling = false;
                    self.lanes.clear_spilled();
                }
            }
            Ok(entries) => self.replay_window(window, entries),
            Err(e) => {
                tracing::error!(stream = %self.state.stream, error = %e, "cannot read the spool; will retry")
            }
        }
    }

    /// Reading ahead stops at half the memory budget, so that the records of shards that are
    /// not spilled still find room and do not spill the whole stream.
    fn read_ahead_limit(&self) -> u64 {
        self.settings.buffer.max_bytes / 2
    }

    /// Queues entries read back from the spool as window `window`. The first window is taken
    /// whole, even over the budget, so that replay always moves; windows read ahead take only
    /// what fits under the read-ahead limit, and the rest is read again later.
    fn replay_window(&mut self, window: ReplayWindow, entries: Vec<(SpoolPosition, SpoolEntry)>) {
        let limit = self.read_ahead_limit();
        let now = Instant::now();
        let map = self.state.map.load();
        let replay = self.replay.get_or_insert_with(Replay::new);
        let first = replay.windows.is_empty();
        let mut taken = Window {
            upto: entries[0].0,
            outstanding: 0,
        };
        for (position, entry) in entries {
            let record = record_from_spool(entry);
            let bytes = record.memory_bytes() as u64;
            if first {
                self.settings.budget.force_reserve(bytes);
            } else if self.settings.budget.used() + bytes > limit
                || !self.settings.budget.try_reserve(bytes)
            {
                break;
            }
            self.lanes
                .push(Queued::replayed(record, now, window), &map, now);
            taken.upto = position;
            taken.outstanding += 1;
        }
        if taken.outstanding > 0 {
            replay.windows.push_back(taken);
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
        delivery: None,
        logged: None,
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
        all_stored, control_plane, entry_data, record, spilling_settings, two_shards, wait_until,
        writer_settings, FakeKinesis, HALF, SPOOL_MAX_BYTES,
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

    /// A two-shard stream: hash keys below `HALF` go to shard 0, the rest to shard 1, which
    /// throttles every entry while `hot` is set. It keeps the data it stores, in order.
    fn hot_and_cold_kinesis(
        hot: &Arc<AtomicBool>,
        stored: &Arc<Mutex<Vec<String>>>,
    ) -> FakeKinesis {
        let (hot, stored) = (hot.clone(), stored.clone());
        FakeKinesis::new(move |operation, body| match operation {
            "ListShards" => two_shards("shardId-0", "shardId-1"),
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
    }

    /// A writer of stream `s` that spills when `budget` is full, and not for `record_ttl`.
    fn spilling_writer(
        spool_dir: &std::path::Path,
        budget: u64,
        kinesis: FakeKinesis,
    ) -> (StreamWriter, crate::kinesis::writer::WriterSettings) {
        let settings = spilling_settings(spool_dir, budget);
        let writer =
            StreamWriter::spawn("s", kinesis.client(), &settings, Arc::new(Metrics::new()));
        (writer, settings)
    }

    /// Record `offset`, on the cold shard 0 if even, the hot shard 1 if odd.
    fn cold_or_hot(offset: i64) -> MirrorRecord {
        let mut r = record(offset);
        r.key.explicit_hash_key = Some(if offset % 2 == 0 { 1 } else { HALF + 1 });
        r
    }

    /// The stored data of the hot shard's records.
    fn hot_records(stored: &[String]) -> Vec<&String> {
        stored
            .iter()
            .filter(|d| {
                d.trim_start_matches("value-")
                    .parse::<i64>()
                    .expect("offset")
                    % 2
                    == 1
            })
            .collect()
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
        let hot = Arc::new(AtomicBool::new(true));
        let stored = Arc::new(Mutex::new(Vec::new()));
        let kinesis = hot_and_cold_kinesis(&hot, &stored);
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
                    writer
                        .send(cold_or_hot(offset))
                        .await
                        .expect("writer is running");
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
        let hot_order = hot_records(&stored);
        let expected: Vec<String> = (1..60).step_by(2).map(|o| format!("value-{o}")).collect();
        assert_eq!(
            hot_order,
            expected.iter().collect::<Vec<_>>(),
            "the hot shard's records in order"
        );
        assert_eq!(stored.len(), 60, "each once");
    }

    /// Item 6: records queued in memory, then the budget fills, more arrive, and the proxy
    /// shuts down with Kinesis down. The spool must hold each key's records in arrival order:
    /// the old writer left the older records in memory while the newer went to the spool, and
    /// the shutdown appended the older after them.
    #[tokio::test(start_paused = true)]
    async fn a_full_budget_spools_what_memory_holds_before_newer_records() {
        const RECORDS: i64 = 30;
        let down = Arc::new(AtomicBool::new(true));
        let stored = Arc::new(Mutex::new(Vec::new()));
        let spool_dir = tempfile::tempdir().expect("tempdir");
        let keyed = |offset: i64| {
            let mut r = record(offset);
            r.key.partition_key = format!("key-{}", offset % 3);
            r
        };
        // Room for the first ten records.
        let budget = 10 * keyed(0).memory_bytes() as u64;
        let (writer, settings) =
            spilling_writer(spool_dir.path(), budget, flaky_kinesis(&down, &stored));
        for offset in 0..10 {
            writer.send(keyed(offset)).await.expect("writer is running");
        }
        wait_until("ten records in memory", Duration::from_secs(10), || {
            settings.budget.used() == budget
        })
        .await;
        for offset in 10..RECORDS {
            writer.send(keyed(offset)).await.expect("writer is running");
        }
        writer.shut_down(Instant::now()).await;
        drop(writer);
        let (spool, _) =
            Spool::open(&spool_dir.path().join("s"), SPOOL_MAX_BYTES).expect("open spool");
        let spooled: Vec<(String, i64)> = spool
            .peek(1000)
            .expect("peek")
            .into_iter()
            .map(|(_, entry)| (entry.partition_key, entry.offset))
            .collect();
        assert_eq!(spooled.len(), RECORDS as usize, "every record spooled");
        for key in 0..3 {
            let offsets: Vec<i64> = spooled
                .iter()
                .filter(|(k, _)| *k == format!("key-{key}"))
                .map(|(_, o)| *o)
                .collect();
            let arrival: Vec<i64> = (0..RECORDS).filter(|o| o % 3 == key).collect();
            assert_eq!(offsets, arrival, "key-{key} in arrival order");
        }
        assert!(stored.lock().expect("lock").is_empty());
    }

    /// Item 13: the spool holds 3,000 records, alternately for a cold shard and a hot one
    /// that throttles everything. Replay must deliver the cold shard's 1,500 at its own pace
    /// while the hot shard's wait; the old replay read 2,000 entries at a time and read no
    /// more until all of them were delivered, so the cold shard stopped at 1,000. Once the
    /// hot shard takes records again, they arrive in order and the spool empties.
    #[tokio::test(start_paused = true)]
    async fn replay_goes_at_each_shards_pace() {
        const RECORDS: i64 = 3000;
        let spool_dir = tempfile::tempdir().expect("tempdir");
        let spooled_bytes = {
            let (spool, _) =
                Spool::open(&spool_dir.path().join("s"), SPOOL_MAX_BYTES).expect("open spool");
            let entries: Vec<SpoolEntry> = (0..RECORDS)
                .map(|offset| spool_entry("s", &cold_or_hot(offset)))
                .collect();
            spool.append(&entries).expect("append");
            spool.bytes()
        };
        let hot = Arc::new(AtomicBool::new(true));
        let stored = Arc::new(Mutex::new(Vec::new()));
        let (writer, _) = spilling_writer(
            spool_dir.path(),
            16 << 20,
            hot_and_cold_kinesis(&hot, &stored),
        );
        let started = tokio::time::Instant::now();
        wait_until(
            "the cold shard's spooled records delivered while the hot shard throttles",
            Duration::from_secs(60),
            || stored.lock().expect("lock").len() == RECORDS as usize / 2,
        )
        .await;
        let cold_took = started.elapsed();
        assert!(
            hot_records(&stored.lock().expect("lock")).is_empty(),
            "the hot shard took nothing"
        );
        // Every window holds hot records not yet delivered: none may be acknowledged.
        assert_eq!(
            writer.state().spool_bytes(),
            spooled_bytes,
            "the spool's checkpoint stays before the hot shard's first record"
        );
        hot.store(false, Ordering::Relaxed);
        wait_until("the spool replayed", Duration::from_secs(120), || {
            stored.lock().expect("lock").len() == RECORDS as usize
                && writer.state().spool_bytes() == 0
        })
        .await;
        let stored = stored.lock().expect("lock");
        let expected: Vec<String> = (1..RECORDS)
            .step_by(2)
            .map(|o| format!("value-{o}"))
            .collect();
        assert_eq!(
            hot_records(&stored),
            expected.iter().collect::<Vec<_>>(),
            "the hot shard's records in order"
        );
        assert!(cold_took < Duration::from_secs(10), "{cold_took:?}");
    }
}
