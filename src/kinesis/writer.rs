//! One writer per Kinesis stream. It owns the stream's lanes (per-shard queues), its spool and
//! its share of the memory budget, and accounts for every record it is given: each ends
//! delivered, in the spool awaiting replay, or in the dead-letter file with a reason (or, only
//! with `when_full = "drop"`, counted as dropped).
//!
//! Spilling: when the budget is full (`when_full = "spill"`), or a record has waited longer than
//! `record_ttl` or used up `max_attempts`, the stream starts spilling: everything queued moves
//! to its spool, and new records are appended there too. Records already in flight finish from
//! memory, and replay starts only once nothing is queued or in flight, so a key's records reach
//! the shard in order across an outage. When the spool is empty again, records flow directly.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_kinesis::Client;
use tokio::sync::{mpsc, Notify};

use super::budget::Budget;
use super::client::{describe, load_shard_map, DEFAULT_MAX_RECORD_BYTES};
use super::dead_letter::{DeadLetter, DeadLetterFile};
use super::lanes::{Lanes, Queued, Request};
use super::recent::{self, RecentRecords};
use super::request::{entry, MirrorRecord};
use super::retry::{is_retryable, Backoff};
use super::shard_map::ShardMap;
use super::spool::{Spool, SpoolEntry, SpoolPosition};
use crate::config::{KinesisConfig, MirrorBufferConfig, SpoolConfig, WhenFull};
use crate::mirror::partition_key::KinesisKey;
use crate::telemetry::metrics::{Metrics, MirrorResult};

/// Records a writer may hold in its input channel, outside the memory budget: a few MiB, so
/// the budget is what bounds memory...
const QUEUE_CAPACITY: usize = 4096;
/// ...and the most taken from it at once: a spill appends them with one fsync, so a full
/// budget spills at disk bandwidth rather than at one fsync per few hundred records.
const ACCEPT_BATCH: usize = QUEUE_CAPACITY;

/// How often the stream is described, so an outage shows in `/readyz` without traffic.
const HEALTH_RETRY: Duration = Duration::from_secs(5);

/// Entries read back from the spool at a time.
const REPLAY_WINDOW: usize = 2000;

/// The error code Kinesis gives an entry when the shard is over its limits.
const THROTTLED: &str = "ProvisionedThroughputExceededException";

/// Everything a writer needs from the config, and what it shares with the other writers.
#[derive(Clone)]
pub struct WriterSettings {
    pub kinesis: KinesisConfig,
    pub buffer: MirrorBufferConfig,
    pub spool: SpoolConfig,
    pub budget: Arc<Budget>,
    pub dead_letters: Option<Arc<DeadLetterFile>>,
}

/// The handle the mirror stage sends records through.
#[derive(Clone)]
pub struct StreamWriter {
    tx: mpsc::Sender<MirrorRecord>,
    control: mpsc::Sender<Shutdown>,
    state: Arc<StreamState>,
}

/// Asks a writer to deliver what it can until `deadline`, spool the rest, and stop.
struct Shutdown {
    deadline: Instant,
    done: tokio::sync::oneshot::Sender<()>,
}

/// What the writer knows about its stream, shared with the mirror stage and the admin endpoint.
pub struct StreamState {
    pub stream: String,
    healthy: AtomicBool,
    last_error: std::sync::Mutex<Option<String>>,
    /// The last error will not go away by retrying (the stream is missing, or access denied).
    permanent_error: std::sync::Mutex<Option<String>>,
    open_shards: AtomicUsize,
    map: ArcSwap<ShardMap>,
    spool_bytes: std::sync::atomic::AtomicU64,
}

impl StreamState {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn open_shards(&self) -> usize {
        self.open_shards.load(Ordering::Acquire)
    }

    /// Why the stream was last found unhealthy.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("stream state lock").clone()
    }

    /// Bytes waiting in the stream's spool.
    pub fn spool_bytes(&self) -> u64 {
        self.spool_bytes.load(Ordering::Acquire)
    }
}

impl StreamWriter {
    /// Starts the writer task for `stream`. The stream is described first; a failure leaves the
    /// route unhealthy (logged, and `stream_healthy` 0) and is retried, while Kafka traffic is
    /// unaffected.
    pub fn spawn(
        stream: &str,
        client: Client,
        settings: &WriterSettings,
        metrics: Arc<Metrics>,
    ) -> StreamWriter {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let state = Arc::new(StreamState {
            stream: stream.to_owned(),
            healthy: AtomicBool::new(false),
            last_error: std::sync::Mutex::new(None),
            permanent_error: std::sync::Mutex::new(None),
            open_shards: AtomicUsize::new(0),
            map: ArcSwap::from_pointee(ShardMap::default()),
            spool_bytes: std::sync::atomic::AtomicU64::new(0),
        });
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (control, control_rx) = mpsc::channel(1);
        let task = WriterTask {
            client,
            state: state.clone(),
            metrics,
            settings: settings.clone(),
            lanes: Lanes::new(
                settings.kinesis.ordering,
                settings.kinesis.shard_rate_factor,
            ),
            requests_in_flight: 0,
            done_tx,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            last_health_check: None,
            refresh_now: Arc::new(Notify::new()),
            spool: None,
            spilling: false,
            spill_pending: false,
            replay: None,
            held: std::collections::VecDeque::new(),
            backoff: Backoff::default(),
            closing: None,
            recent: RecentRecords::default(),
        };
        tokio::spawn(task.run(rx, done_rx, control_rx));
        StreamWriter { tx, control, state }
    }

    /// Delivers what can be delivered before `deadline`, spools the rest (records still in the
    /// input included), and returns when the writer has stopped (in-flight requests included,
    /// each bounded by `request_timeout_ms`).
    pub async fn shut_down(&self, deadline: Instant) {
        let (done, finished) = tokio::sync::oneshot::channel();
        if self.control.send(Shutdown { deadline, done }).await.is_ok() {
            let _ = finished.await;
        }
    }

    pub fn state(&self) -> &Arc<StreamState> {
        &self.state
    }

    /// Queues a record; waits while the writer's input is full (which is how `when_full =
    /// "block"` pushes back on the Kafka path).
    pub async fn send(&self, record: MirrorRecord) -> Result<(), MirrorRecord> {
        self.tx.send(record).await.map_err(|e| e.0)
    }
}

/// The outcome of one PutRecords request, reported back to the writer loop.
struct Completion {
    request: Request,
    result: Result<Vec<EntryOutcome>, RequestFailure>,
}

enum EntryOutcome {
    /// `elsewhere`: the shard Kinesis stored it in, when not the lane's (a misprediction).
    Delivered {
        elsewhere: Option<String>,
    },
    Failed {
        code: String,
        message: String,
    },
}

struct RequestFailure {
    code: Option<String>,
    message: String,
}

/// Spool entries being replayed: acknowledged once every one is delivered or dead-lettered.
struct Replay {
    upto: SpoolPosition,
    outstanding: usize,
}

struct WriterTask {
    client: Client,
    state: Arc<StreamState>,
    metrics: Arc<Metrics>,
    settings: WriterSettings,
    lanes: Lanes,
    requests_in_flight: usize,
    done_tx: mpsc::UnboundedSender<Completion>,
    max_record_bytes: usize,
    last_health_check: Option<Instant>,
    refresh_now: Arc<Notify>,
    spool: Option<Arc<Spool>>,
    spilling: bool,
    /// Records waited too long and the queue must move to the spool, but requests are still
    /// in flight: their records are the oldest, and any that fail come back to the front of
    /// the queue. Nothing new is dispatched until they settle, then everything moves in order.
    /// Spilling at once left such records in memory for as long as Kinesis stayed down.
    spill_pending: bool,
    replay: Option<Replay>,
    /// Records waiting, in order, for room in the budget (`when_full = "block"`) or the
    /// spool; no input is taken while any wait.
    held: std::collections::VecDeque<MirrorRecord>,
    backoff: Backoff,
    /// Set on shutdown: the deadline, and whom to tell when done.
    closing: Option<Shutdown>,
    /// Records accepted lately, so that a batch Kafka acknowledges twice is mirrored once.
    recent: RecentRecords,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl WriterTask {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<MirrorRecord>,
        mut done: mpsc::UnboundedReceiver<Completion>,
        mut control: mpsc::Receiver<Shutdown>,
    ) {
        self.open_spool().await;
        self.check_health().await;
        let mut probe = tokio::time::interval(HEALTH_RETRY);
        let mut refresh = tokio::time::interval(self.settings.kinesis.shard_map_refresh);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        probe.tick().await;
        refresh.tick().await;
        let refresh_now = self.refresh_now.clone();
        let mut input_open = true;
        loop {
            let wake = self.next_wake();
            tokio::select! {
                record = rx.recv(), if input_open && self.held.is_empty() => match record {
                    Some(record) => {
                        let mut batch = vec![record];
                        while batch.len() < ACCEPT_BATCH {
                            match rx.try_recv() {
                                Ok(r) => batch.push(r),
                                Err(_) => break,
                            }
                        }
                        self.accept(batch).await;
                    }
                    None => input_open = false,
                },
                Some(completion) = done.recv() => self.complete(completion).await,
                _ = self.settings.budget.freed(), if !self.held.is_empty() => self.retry_held().await,
                _ = sleep_until(wake) => {}
                _ = tick.tick() => self.housekeeping().await,
                _ = probe.tick() => self.probe_health().await,
                _ = refresh.tick() => self.refresh_map().await,
                _ = refresh_now.notified() => self.refresh_map().await,
                Some(shutdown) = control.recv(), if self.closing.is_none() => {
                    tracing::info!(stream = %self.state.stream, "flushing the mirror before shutdown");
                    // Records already in the input were handed over before the shutdown and
                    // are owed an outcome like any other: closing the input lets the loop
                    // drain them into the queues (the branch above), and only then settle.
                    rx.close();
                    self.closing = Some(shutdown);
                }
            }
            let closing = self.closing.as_ref().map(|c| c.deadline);
            if closing.is_some_and(|deadline| Instant::now() >= deadline) {
                self.spool_remaining().await;
            }
            self.dispatch(!input_open || closing.is_some());
            let settled =
                self.lanes.is_idle() && self.requests_in_flight == 0 && self.held.is_empty();
            if settled && !input_open {
                break;
            }
        }
        if let Some(shutdown) = self.closing.take() {
            tracing::info!(stream = %self.state.stream, spool_bytes = self.state.spool_bytes(), "mirror writer stopped");
            let _ = shutdown.done.send(());
        }
    }

    /// At the shutdown deadline: what is still in memory goes to the spool. Records replayed
    /// from the spool are simply let go: they are still there, unacknowledged.
    async fn spool_remaining(&mut self) {
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

    /// Takes new records: into memory while the budget has room and the stream is not
    /// spilling; otherwise as `when_full` says.
    async fn accept(&mut self, batch: Vec<MirrorRecord>) {
        let now = Instant::now();
        let mut to_spool = Vec::new();
        for record in batch {
            if record.offset_from_kafka
                && !self.recent.first_time(
                    &record.topic,
                    record.partition,
                    record.offset,
                    recent::digest(&record),
                )
            {
                self.count(&record.topic, MirrorResult::Duplicate, 1);
                continue;
            }
            let size = record.kinesis_bytes();
            if size > self.max_record_bytes {
                self.oversize(record, size).await;
                continue;
            }
            if !self.held.is_empty() {
                self.held.push_back(record);
                continue;
            }
            if !to_spool.is_empty() || self.spilling {
                to_spool.push(record);
                continue;
            }
            if self
                .settings
                .budget
                .try_reserve(record.memory_bytes() as u64)
            {
                let map = self.state.map.load();
                self.lanes.push(Queued::new(record, now, false), &map, now);
                continue;
            }
            match self.settings.buffer.when_full {
                WhenFull::Spill => to_spool.push(record),
                WhenFull::Drop => self.drop_record(&record),
                // Taking no more input until the budget frees pushes back on the Kafka path.
                WhenFull::Block => self.held.push_back(record),
            }
        }
        if !to_spool.is_empty() {
            self.spill(to_spool).await;
        }
    }

    async fn retry_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
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

    fn drop_record(&self, record: &MirrorRecord) {
        tracing::warn!(
            stream = %self.state.stream, topic = %record.topic, partition = record.partition, offset = record.offset,
            "mirror buffer full: record dropped (mirror_buffer.when_full = \"drop\")"
        );
        self.count(&record.topic, MirrorResult::Dropped, 1);
    }

    async fn oversize(&mut self, record: MirrorRecord, size: usize) {
        tracing::warn!(
            topic = %record.topic, partition = record.partition, offset = record.offset, stream = %self.state.stream,
            bytes = size, limit = self.max_record_bytes,
            "record exceeds the stream's per-record limit (data plus partition key); not mirrored, written to the dead-letter file"
        );
        self.count(&record.topic, MirrorResult::Oversize, 1);
        let message = format!("record of {size} bytes exceeds the stream's limit of {} bytes (data plus partition key)", self.max_record_bytes);
        self.write_dead_letters(vec![(record, "RecordTooLarge".to_owned(), message)], false)
            .await;
    }

    /// Appends records to the spool (entering spill mode). A full spool falls back to
    /// blocking: the first record that does not fit is held until the spool drains.
    async fn spill(&mut self, records: Vec<MirrorRecord>) {
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
    fn publish_spool_bytes(&self, spool: &Spool) {
        self.state
            .spool_bytes
            .store(spool.bytes(), Ordering::Release);
        self.metrics
            .spool_bytes
            .with_label_values(&[&self.state.stream])
            .set(spool.bytes() as i64);
    }

    async fn open_spool(&mut self) {
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

    /// Sends what may go now. Partial requests wait for `linger` unless `flush`.
    fn dispatch(&mut self, flush: bool) {
        let now = Instant::now();
        while self.requests_in_flight < self.settings.kinesis.max_in_flight_requests
            && self.state.is_healthy()
            && !self.spill_pending
        {
            let oldest_waited = self
                .lanes
                .oldest_in_memory()
                .map(|(t, _)| now.duration_since(t));
            let ripe = flush
                || self.lanes.queued_records() >= super::request::MAX_BATCH_ENTRIES
                || oldest_waited.is_none_or(|w| w >= self.settings.kinesis.linger)
                || self.replay.is_some();
            if !ripe {
                return;
            }
            let request = self.lanes.fill_request(now);
            if request.is_empty() {
                return;
            }
            self.requests_in_flight += 1;
            let client = self.client.clone();
            let stream = self.state.stream.clone();
            let metrics = self.metrics.clone();
            let done = self.done_tx.clone();
            tokio::spawn(async move {
                let result = put_records(&client, &stream, &request, &metrics).await;
                let _ = done.send(Completion { request, result });
            });
        }
    }

    async fn complete(&mut self, completion: Completion) {
        self.requests_in_flight -= 1;
        let now = Instant::now();
        self.lanes.finished(&completion.request);
        let stream = self.state.stream.clone();
        let mut retry = Request::new();
        let mut dead = Vec::new();
        match completion.result {
            Ok(outcomes) => {
                self.record_deliveries(&completion.request, &outcomes);
                for ((lane, queued), outcome) in completion.request.into_iter().zip(outcomes) {
                    match outcome {
                        EntryOutcome::Delivered { .. } => {
                            self.lanes.delivered(&lane);
                            self.finished_with(&queued);
                        }
                        EntryOutcome::Failed { code, message } => {
                            if code == THROTTLED {
                                self.metrics
                                    .shard_throttled
                                    .with_label_values(&[stream.as_str(), &lane.shard])
                                    .inc();
                                self.lanes.throttled(&lane, now);
                            }
                            if is_retryable(Some(&code)) {
                                retry.push((lane, queued));
                            } else {
                                dead.push((queued, code, message));
                            }
                        }
                    }
                }
            }
            Err(failure) if !is_retryable(failure.code.as_deref()) => {
                let code = failure.code.unwrap_or_default();
                dead.extend(
                    completion
                        .request
                        .into_iter()
                        .map(|(_, q)| (q, code.clone(), failure.message.clone())),
                );
            }
            Err(failure) => {
                // The whole request failed. After a timeout or a dropped connection Kinesis
                // may have stored the records anyway, so the resend can duplicate them:
                // PutRecords has no idempotence.
                tracing::warn!(%stream, records = completion.request.len(), error = %failure.message, "PutRecords request failed; retrying");
                retry = completion.request;
            }
        }
        if !retry.is_empty() {
            for (_, queued) in &mut retry {
                queued.attempts += 1;
                self.count(&queued.record.topic, MirrorResult::Retried, 1);
            }
            let map = self.state.map.load();
            let backoff = self.backoff;
            self.lanes
                .requeue_front(retry, &map, now, |failures| backoff.delay(failures));
        }
        if !dead.is_empty() {
            self.dead_letter_queued(dead).await;
        }
        self.after_progress().await;
    }

    /// The metrics of a request's delivered entries. A request holds up to 500, so counters
    /// move once per run of equal labels (entries from one lane are adjacent) instead of once
    /// per record.
    fn record_deliveries(&self, request: &Request, outcomes: &[EntryOutcome]) {
        let stream = self.state.stream.as_str();
        let delivered: Vec<(&str, &MirrorRecord)> = request
            .iter()
            .zip(outcomes)
            .filter_map(|((lane, queued), outcome)| match outcome {
                EntryOutcome::Delivered { elsewhere } => {
                    Some((elsewhere.as_deref().unwrap_or(&*lane.shard), &queued.record))
                }
                EntryOutcome::Failed { .. } => None,
            })
            .collect();
        for (shard, n) in runs(delivered.iter().map(|(shard, _)| *shard)) {
            self.metrics
                .shard_records
                .with_label_values(&[stream, shard])
                .inc_by(n);
        }
        for (topic, n) in runs(delivered.iter().map(|(_, record)| &*record.topic)) {
            self.count(topic, MirrorResult::Sent, n);
        }
        let lag = self.metrics.mirror_lag.with_label_values(&[stream]);
        for (_, record) in &delivered {
            lag.observe(record.acked_at.elapsed().as_secs_f64());
        }
        let mispredicted = outcomes
            .iter()
            .filter(|o| matches!(o, EntryOutcome::Delivered { elsewhere: Some(_) }))
            .count();
        if mispredicted > 0 {
            self.metrics
                .shard_map_mispredictions
                .with_label_values(&[stream])
                .inc_by(mispredicted as u64);
            // Kinesis routed elsewhere: the stream was resharded.
            self.refresh_now.notify_one();
        }
    }

    /// Releases a record's budget and advances the replay window if it came from the spool.
    fn finished_with(&mut self, queued: &Queued) {
        self.settings
            .budget
            .release(queued.record.memory_bytes() as u64);
        if queued.from_spool {
            if let Some(replay) = &mut self.replay {
                replay.outstanding -= 1;
            }
        }
    }

    async fn dead_letter_queued(&mut self, dead: Vec<(Queued, String, String)>) {
        let mut letters = Vec::new();
        for (queued, code, message) in dead {
            self.finished_with(&queued);
            letters.push((queued.record, code, message));
        }
        self.write_dead_letters(letters, true).await;
    }

    async fn write_dead_letters(
        &mut self,
        letters: Vec<(MirrorRecord, String, String)>,
        count: bool,
    ) {
        let now = SystemTime::now();
        for (record, code, message) in &letters {
            tracing::error!(
                stream = %self.state.stream, topic = %record.topic, partition = record.partition, offset = record.offset,
                code = %code, %message, "record cannot be delivered; written to the dead-letter file"
            );
        }
        if let Some(file) = self.settings.dead_letters.clone() {
            let entries: Vec<DeadLetter> = letters
                .iter()
                .map(|(record, code, message)| {
                    DeadLetter::from_entry(
                        &spool_entry(&self.state.stream, record),
                        code,
                        message,
                        now,
                    )
                })
                .collect();
            let written = tokio::task::spawn_blocking(move || file.append(&entries))
                .await
                .expect("dead-letter task");
            if let Err(e) = written {
                tracing::error!(error = %e, "cannot write the dead-letter file; the records above are only in this log");
            }
        }
        // Counted once the file holds them, so that an operator (or a test) who sees the
        // count can read the letters.
        if count {
            for (record, _, _) in &letters {
                self.count(&record.topic, MirrorResult::DeadLetter, 1);
            }
        }
    }

    /// After deliveries: acknowledge a finished replay window, leave spill mode when the
    /// spool is empty, and start the next replay window when memory is idle.
    async fn after_progress(&mut self) {
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

    /// Every tick: publish rates, retry held records, and spill memory records that waited
    /// too long.
    async fn housekeeping(&mut self) {
        self.retry_held().await;
        self.dead_letter_if_undeliverable().await;
        for (shard, rate) in self.lanes.rates() {
            let labels = [self.state.stream.as_str(), shard];
            self.metrics
                .shard_rate_limit
                .with_label_values(&labels)
                .set(rate);
            // Present at 0 from the start, so dashboards show a flat line, not "no data".
            self.metrics.shard_throttled.with_label_values(&labels);
        }
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
        self.after_progress().await;
    }

    /// A stream that is missing, or that we may not write to, will not accept records by
    /// retrying: they go to the dead-letter file, to be re-sent with `spool replay` once the
    /// operator has fixed the cause.
    async fn dead_letter_if_undeliverable(&mut self) {
        let code = self
            .state
            .permanent_error
            .lock()
            .expect("stream state lock")
            .clone();
        let Some(code) = code else { return };
        let message = self.state.last_error().unwrap_or_default();
        let mut dead: Vec<(Queued, String, String)> = self
            .lanes
            .drain_queued()
            .into_iter()
            .map(|q| (q, code.clone(), message.clone()))
            .collect();
        let now = Instant::now();
        for record in self.held.drain(..) {
            self.settings
                .budget
                .force_reserve(record.memory_bytes() as u64);
            dead.push((
                Queued::new(record, now, false),
                code.clone(),
                message.clone(),
            ));
        }
        if !dead.is_empty() {
            self.dead_letter_queued(dead).await;
        }
    }

    fn next_wake(&self) -> Option<tokio::time::Instant> {
        let now = Instant::now();
        let linger = self
            .lanes
            .oldest_in_memory()
            .map(|(t, _)| t + self.settings.kinesis.linger);
        let lane = self.lanes.next_wake(now);
        let deadline = self.closing.as_ref().map(|c| c.deadline);
        [linger, lane, deadline]
            .into_iter()
            .flatten()
            .min()
            .map(|t| tokio::time::Instant::from_std(t.max(now)))
    }

    fn count(&self, topic: &str, result: MirrorResult, n: u64) {
        self.metrics
            .mirror_outcome(topic, &self.state.stream, result, n);
    }

    /// A light periodic check, so an outage shows in `/readyz` even without traffic: the
    /// stream is described (with a short timeout); a stream that comes back is fully
    /// re-checked, shard map included.
    async fn probe_health(&mut self) {
        let stream = self.state.stream.clone();
        let described = tokio::time::timeout(HEALTH_RETRY, describe(&self.client, &stream)).await;
        match described {
            Ok(Ok(_)) if self.state.is_healthy() => {}
            Ok(Ok(_)) => {
                self.last_health_check = None;
                self.check_health().await;
                self.after_progress().await;
            }
            Ok(Err(e)) => self.mark_unhealthy(e.to_string(), e.code()),
            Err(_) => self.mark_unhealthy(
                format!("stream `{stream}`: DescribeStreamSummary timed out"),
                None,
            ),
        }
    }

    /// Records why the stream is unhealthy; logs only when that changes, not every probe.
    fn mark_unhealthy(&self, error: String, code: Option<&str>) {
        let permanent = code.is_some_and(|c| !is_retryable(Some(c)));
        *self
            .state
            .permanent_error
            .lock()
            .expect("stream state lock") = permanent.then(|| code.unwrap_or_default().to_owned());
        let mut last = self.state.last_error.lock().expect("stream state lock");
        if self.state.healthy.swap(false, Ordering::AcqRel)
            || last.as_deref() != Some(error.as_str())
        {
            tracing::error!(%error, "mirror route unhealthy; Kafka traffic continues unaffected");
        }
        *last = Some(error);
        self.metrics
            .stream_healthy
            .with_label_values(&[&self.state.stream])
            .set(0);
    }

    /// Describes the stream and loads its shard map; at most every HEALTH_RETRY.
    async fn check_health(&mut self) -> bool {
        if self
            .last_health_check
            .is_some_and(|t| t.elapsed() < HEALTH_RETRY)
        {
            return self.state.is_healthy();
        }
        self.last_health_check = Some(Instant::now());
        let stream = self.state.stream.clone();
        let outcome = async {
            let info = describe(&self.client, &stream).await?;
            let map = load_shard_map(&self.client, &stream).await?;
            Ok::<_, super::client::StreamError>((info, map))
        }
        .await;
        match outcome {
            Ok((info, map)) => {
                self.max_record_bytes = info.max_record_bytes;
                tracing::info!(%stream, status = %info.status, open_shards = map.len(), max_record_bytes = info.max_record_bytes, "stream ready");
                self.install_map(map);
                self.state.healthy.store(true, Ordering::Release);
                *self.state.last_error.lock().expect("stream state lock") = None;
                *self
                    .state
                    .permanent_error
                    .lock()
                    .expect("stream state lock") = None;
                self.metrics
                    .stream_healthy
                    .with_label_values(&[&stream])
                    .set(1);
            }
            Err(e) => self.mark_unhealthy(e.to_string(), e.code()),
        }
        self.state.is_healthy()
    }

    fn install_map(&mut self, map: ShardMap) {
        self.state.open_shards.store(map.len(), Ordering::Release);
        self.lanes.reroute(&map, Instant::now());
        self.state.map.store(Arc::new(map));
    }

    async fn refresh_map(&mut self) {
        let stream = self.state.stream.clone();
        match load_shard_map(&self.client, &stream).await {
            Ok(map) => {
                if map != **self.state.map.load() {
                    tracing::info!(%stream, open_shards = map.len(), "shard map changed");
                }
                self.install_map(map);
            }
            Err(e) => {
                tracing::warn!(error = %e, "shard map refresh failed; keeping the previous map")
            }
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Sends one request; per-entry outcomes in request order, or why the whole request failed.
async fn put_records(
    client: &Client,
    stream: &str,
    request: &Request,
    metrics: &Metrics,
) -> Result<Vec<EntryOutcome>, RequestFailure> {
    let entries = request.iter().map(|(_, q)| entry(&q.record)).collect();
    let started = Instant::now();
    let result = client
        .put_records()
        .stream_name(stream)
        .set_records(Some(entries))
        .send()
        .await;
    metrics
        .putrecords_duration
        .with_label_values(&[stream])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(out) => {
            if out.records().len() != request.len() {
                return Err(RequestFailure {
                    code: None,
                    message: format!(
                        "PutRecords answered {} results for {} entries",
                        out.records().len(),
                        request.len()
                    ),
                });
            }
            Ok(out
                .records()
                .iter()
                .zip(request)
                .map(|(r, (lane, _))| match r.error_code() {
                    Some(code) => EntryOutcome::Failed {
                        code: code.to_owned(),
                        message: r.error_message().unwrap_or_default().to_owned(),
                    },
                    None => {
                        let shard = r.shard_id().unwrap_or_default();
                        EntryOutcome::Delivered {
                            elsewhere: (shard != &*lane.shard).then(|| shard.to_owned()),
                        }
                    }
                })
                .collect())
        }
        Err(e) => Err(RequestFailure {
            code: e.code().map(str::to_owned),
            message: DisplayErrorContext(&e).to_string(),
        }),
    }
}

/// Consecutive equal labels, counted: `a a b a` gives `(a, 2) (b, 1) (a, 1)`.
fn runs<'a>(labels: impl Iterator<Item = &'a str>) -> Vec<(&'a str, u64)> {
    let mut out: Vec<(&str, u64)> = Vec::new();
    for label in labels {
        match out.last_mut() {
            Some((last, n)) if *last == label => *n += 1,
            _ => out.push((label, 1)),
        }
    }
    out
}

fn spool_entry(stream: &str, record: &MirrorRecord) -> SpoolEntry {
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
#[path = "writer_tests.rs"]
mod tests;
