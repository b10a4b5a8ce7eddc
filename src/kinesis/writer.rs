//! One writer per Kinesis stream. It owns the stream's lanes (per-shard queues), its spool and
//! its share of the memory budget, and accounts for every record it is given: each ends
//! delivered, in the spool awaiting replay, or in the dead-letter file with a reason (or, only
//! with `when_full = "drop"`, counted as dropped).
//!
//! Its parts: this run loop, which takes records and dispatches requests; the PutRecords
//! service (`service.rs`); the stream's health and inspections (`health.rs`); spilling and
//! replay (`spill.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use tokio::sync::{mpsc, Notify};

use super::budget::BudgetReleases;
use super::client::DEFAULT_MAX_RECORD_BYTES;
use super::dead_letter::DeadLetterFile;
pub use super::health::StreamState;
use super::health::{inspect, Evidence, Health, Inspection};
use super::lanes::{Lanes, Queued, Request};
use super::recent::{self, RecentRecords};
use super::request::{entry, MirrorRecord};
use super::retry::{classify, Backoff, ErrorClass};
use super::service::{EntryOutcome, PutRecordsService, RequestFailure};
use super::spill::Replay;
use super::spool::Spool;
use super::undeliverable::Letter;
use crate::config::{KinesisConfig, MirrorBufferConfig, SpoolConfig, WhenFull};
use crate::telemetry::metrics::{Metrics, MirrorResult};

/// Records a writer may hold in its input channel, outside the memory budget: a few MiB, so
/// the budget is what bounds memory...
const QUEUE_CAPACITY: usize = 4096;
/// ...and the most taken from it at once: a spill appends them with one fsync, so a full
/// budget spills at disk bandwidth rather than at one fsync per few hundred records.
const ACCEPT_BATCH: usize = QUEUE_CAPACITY;

/// The error code Kinesis gives an entry when the shard is over its limits.
const THROTTLED: &str = "ProvisionedThroughputExceededException";

/// Everything a writer needs from the config, and what it shares with the other writers.
#[derive(Clone)]
pub struct WriterSettings {
    pub kinesis: KinesisConfig,
    pub buffer: MirrorBufferConfig,
    pub spool: SpoolConfig,
    pub budget: Arc<super::budget::Budget>,
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
pub(super) struct Shutdown {
    pub(super) deadline: Instant,
    done: tokio::sync::oneshot::Sender<()>,
}

impl StreamWriter {
    /// Starts the writer task for `stream`. The stream is inspected first; until it answers,
    /// the route is unhealthy (logged, and `stream_healthy` 0) and it is probed again, while
    /// Kafka traffic is unaffected.
    pub fn spawn(
        stream: &str,
        client: Client,
        settings: &WriterSettings,
        metrics: Arc<Metrics>,
    ) -> StreamWriter {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let state = Arc::new(StreamState::new(stream));
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (inspected_tx, inspected_rx) = mpsc::unbounded_channel();
        let (control, control_rx) = mpsc::channel(1);
        let task = WriterTask {
            service: PutRecordsService::new(client.clone(), stream),
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
            health: Health::new(tokio::time::Instant::now()),
            map_loaded: false,
            inspecting: false,
            inspect_again: false,
            inspected_tx,
            refresh_now: Arc::new(Notify::new()),
            releases: settings.budget.releases(),
            spool: None,
            spilling: false,
            replay: None,
            held: std::collections::VecDeque::new(),
            backoff: Backoff::default(),
            closing: None,
            recent: RecentRecords::default(),
            letters_waiting: std::collections::VecDeque::new(),
        };
        tokio::spawn(task.run(rx, done_rx, inspected_rx, control_rx));
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

    /// A writer with no task behind it: the test reads what it is sent from the receiver, and
    /// so decides when it takes records.
    #[cfg(test)]
    pub(crate) fn detached(stream: &str) -> (StreamWriter, mpsc::Receiver<MirrorRecord>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (control, _) = mpsc::channel(1);
        let state = Arc::new(StreamState::new(stream));
        (StreamWriter { tx, control, state }, rx)
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

pub(super) struct WriterTask {
    client: Client,
    service: PutRecordsService,
    pub(super) state: Arc<StreamState>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) settings: WriterSettings,
    pub(super) lanes: Lanes,
    pub(super) requests_in_flight: usize,
    done_tx: mpsc::UnboundedSender<Completion>,
    /// The stream's per-record limit, re-read with every inspection.
    pub(super) max_record_bytes: usize,
    pub(super) health: Health,
    /// A shard map was loaded: dispatch needs one, and nothing else.
    map_loaded: bool,
    /// An inspection is running; `inspect_again` asks for another when it ends.
    inspecting: bool,
    inspect_again: bool,
    inspected_tx: mpsc::UnboundedSender<Inspection>,
    refresh_now: Arc<Notify>,
    pub(super) releases: BudgetReleases,
    pub(super) spool: Option<Arc<Spool>>,
    pub(super) spilling: bool,
    pub(super) replay: Option<Replay>,
    /// Records waiting, in order, for room in the budget (`when_full = "block"`) or the
    /// spool; no input is taken while any wait.
    pub(super) held: std::collections::VecDeque<MirrorRecord>,
    backoff: Backoff,
    /// Set on shutdown: the deadline, and whom to tell when done.
    pub(super) closing: Option<Shutdown>,
    /// Records accepted lately, so that a batch Kafka acknowledges twice is mirrored once.
    recent: RecentRecords,
    /// Records given up on that the dead-letter file could not take yet; no input is taken
    /// while any wait.
    pub(super) letters_waiting: std::collections::VecDeque<Letter>,
}

impl WriterTask {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<MirrorRecord>,
        mut done: mpsc::UnboundedReceiver<Completion>,
        mut inspected: mpsc::UnboundedReceiver<Inspection>,
        mut control: mpsc::Receiver<Shutdown>,
    ) {
        self.open_spool().await;
        self.start_inspection();
        let mut refresh = tokio::time::interval(self.settings.kinesis.shard_map_refresh);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        refresh.tick().await;
        let refresh_now = self.refresh_now.clone();
        let mut input_open = true;
        loop {
            let wake = self.next_wake();
            let probe_at = self.health.next_probe();
            tokio::select! {
                record = rx.recv(), if input_open && self.held.is_empty() && self.letters_waiting.is_empty() => match record {
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
                Some(inspection) = inspected.recv() => self.inspected(inspection).await,
                _ = self.releases.freed(), if !self.held.is_empty() => self.retry_held().await,
                _ = sleep_until(wake) => {}
                _ = tick.tick() => self.housekeeping().await,
                _ = tokio::time::sleep_until(probe_at), if !self.inspecting => self.start_inspection(),
                _ = refresh.tick() => self.start_inspection(),
                _ = refresh_now.notified() => self.start_inspection(),
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
            self.state.queued_records.store(
                (self.lanes.queued_records() + self.held.len()) as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            let settled = self.lanes.is_idle()
                && self.requests_in_flight == 0
                && self.held.is_empty()
                && self.letters_waiting.is_empty();
            if settled && !input_open {
                break;
            }
        }
        if let Some(shutdown) = self.closing.take() {
            tracing::info!(stream = %self.state.stream, spool_bytes = self.state.spool_bytes(), "mirror writer stopped");
            let _ = shutdown.done.send(());
        }
    }

    /// Starts describing the stream and loading its shard map, off the loop: a slow control
    /// plane must not hold up records.
    fn start_inspection(&mut self) {
        if self.inspecting {
            self.inspect_again = true;
            return;
        }
        self.inspecting = true;
        let client = self.client.clone();
        let stream = self.state.stream.clone();
        let inspected = self.inspected_tx.clone();
        tokio::spawn(async move {
            let _ = inspected.send(inspect(&client, &stream).await);
        });
    }

    async fn inspected(&mut self, inspection: Inspection) {
        self.inspecting = false;
        let stream = self.state.stream.clone();
        match inspection.map {
            Ok(map) => {
                if !self.map_loaded || map != **self.state.map.load() {
                    tracing::info!(%stream, open_shards = map.len(), "shard map loaded");
                }
                self.reroute(&map, self.map_loaded).await;
                self.map_loaded = true;
                let previous = self.state.map.load_full();
                let closed = previous
                    .shards()
                    .iter()
                    .filter(|s| !map.shards().iter().any(|open| open.id == s.id));
                self.metrics
                    .forget_shards(&stream, closed.map(|s| s.id.as_str()));
                self.state.install_map(map);
            }
            Err(e) => {
                tracing::warn!(error = %e, "shard map refresh failed; keeping the previous map")
            }
        }
        let now = tokio::time::Instant::now();
        let outcome = match inspection.info {
            Ok(info) => {
                if info.max_record_bytes != self.max_record_bytes {
                    tracing::info!(%stream, max_record_bytes = info.max_record_bytes, "stream's per-record limit");
                    self.max_record_bytes = info.max_record_bytes;
                }
                self.health.observe(Evidence::Answered, now);
                self.state.mark_healthy(&self.metrics);
                "ok"
            }
            Err(e) => {
                if !self.map_loaded {
                    self.refused_before_map(&e).await;
                }
                let evidence = e.evidence();
                self.health.observe(evidence, now);
                if !self.health.is_healthy() {
                    self.state.mark_unhealthy(e.to_string(), &self.metrics);
                } else {
                    tracing::warn!(error = %e, "stream probe unanswered; the stream stays healthy while it takes records");
                }
                e.outcome()
            }
        };
        self.metrics
            .stream_probes
            .with_label_values(&[&stream, outcome])
            .inc();
        if !self.map_loaded {
            // Nothing is dispatched without a map: try again soon, whatever the describe said.
            self.health.observe(Evidence::Unanswered, now);
        }
        if std::mem::take(&mut self.inspect_again) {
            self.start_inspection();
        }
        self.after_progress().await;
    }

    /// Takes new records: into memory while the budget has room and the stream is not
    /// spilling; otherwise as `when_full` says.
    async fn accept(&mut self, batch: Vec<MirrorRecord>) {
        let now = Instant::now();
        let mut to_spool = Vec::new();
        // Once one record spills for want of budget, the rest of the batch follows it.
        let mut budget_spilled = false;
        let lanes_spilled = self.lanes.any_spilled();
        let map = self.state.map.load();
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
            if self.spilling
                || budget_spilled
                || (lanes_spilled && self.lanes.is_spilled(record.key.routing_hash(), &map, now))
            {
                to_spool.push(record);
                continue;
            }
            if self
                .settings
                .budget
                .try_reserve(record.memory_bytes() as u64)
            {
                self.lanes.push(Queued::new(record, now), &map, now);
                continue;
            }
            match self.settings.buffer.when_full {
                WhenFull::Spill => {
                    if !self.spilling {
                        tracing::warn!(stream = %self.state.stream, "memory budget full: mirror spilling to the spool");
                        // What memory holds is older than this record: it goes first.
                        to_spool.splice(0..0, self.take_memory_queues());
                    }
                    self.spilling = true;
                    budget_spilled = true;
                    to_spool.push(record);
                }
                WhenFull::Drop => self.drop_record(&record),
                // Taking no more input until the budget frees pushes back on the Kafka path.
                WhenFull::Block => self.held.push_back(record),
            }
        }
        if !to_spool.is_empty() {
            self.spill(to_spool).await;
        }
    }

    /// Sends what may go now. Partial requests wait for `linger` unless `flush`.
    fn dispatch(&mut self, flush: bool) {
        let now = Instant::now();
        while self.requests_in_flight < self.settings.kinesis.max_in_flight_requests
            && self.map_loaded
            && self.health.may_send(tokio::time::Instant::now())
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
            self.state
                .in_flight_records
                .fetch_add(request.len() as u64, std::sync::atomic::Ordering::Relaxed);
            self.health.sent();
            let service = self.service.clone();
            let metrics = self.metrics.clone();
            let done = self.done_tx.clone();
            tokio::spawn(async move {
                let entries = request.iter().map(|(_, q)| entry(&q.record)).collect();
                let maybe_stored: Vec<_> = request
                    .iter()
                    .map(|(_, q)| q.record.maybe_stored_since())
                    .collect();
                let result = service
                    .put_resuming(entries, &maybe_stored, Some(&metrics))
                    .await;
                let _ = done.send(Completion { request, result });
            });
        }
    }

    async fn complete(&mut self, completion: Completion) {
        self.requests_in_flight -= 1;
        self.state.in_flight_records.fetch_sub(
            completion.request.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        let now = Instant::now();
        self.lanes.finished(&completion.request);
        let stream = self.state.stream.clone();
        let mut retry = Request::new();
        let mut refused = Request::new();
        let mut dead = Vec::new();
        self.judge_stream(&completion.result);
        let answered = match completion.result {
            // A request of unknown fate, read back: each entry's outcome is known after all.
            Err(RequestFailure {
                read_back: Some(outcomes),
                ..
            }) => Ok(outcomes),
            result => result,
        };
        match answered {
            Ok(outcomes) => {
                self.record_deliveries(&completion.request, &outcomes);
                for ((lane, queued), outcome) in completion.request.into_iter().zip(outcomes) {
                    match outcome {
                        EntryOutcome::Delivered { .. } => {
                            if let Some(token) = &queued.record.delivery {
                                token.delivered();
                            }
                            queued.record.settled();
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
                            match classify(Some(&code)) {
                                ErrorClass::Transient => retry.push((lane, queued)),
                                ErrorClass::StreamRefused => refused.push((lane, queued)),
                                ErrorClass::RecordRefused => dead.push((queued, code, message)),
                            }
                        }
                    }
                }
            }
            Err(failure) if classify(failure.code.as_deref()) == ErrorClass::StreamRefused => {
                refused = completion.request;
            }
            // The service bisects these down to the one entry that is to blame.
            Err(failure) if classify(failure.code.as_deref()) == ErrorClass::RecordRefused => {
                let code = failure.code.unwrap_or_default();
                dead.extend(
                    completion
                        .request
                        .into_iter()
                        .map(|(_, q)| (q, code.clone(), failure.message.clone())),
                );
            }
            Err(failure) => {
                // The whole request failed, and either stored nothing or could not be read
                // back: resent whole, which duplicates whatever it did store.
                tracing::warn!(%stream, records = completion.request.len(), error = %failure.message, "PutRecords request failed; retrying");
                retry = completion.request;
            }
        }
        if !retry.is_empty() {
            for (_, queued) in &mut retry {
                queued.attempts += 1;
            }
            self.metrics
                .mirror_attempts
                .with_label_values(&[stream.as_str(), "retry"])
                .inc_by(retry.len() as u64);
            let map = self.state.map.load();
            let backoff = self.backoff;
            self.lanes
                .requeue_front(retry, &map, now, |failures| backoff.delay(failures));
        }
        if !refused.is_empty() {
            self.hold_refused(refused);
        }
        if !dead.is_empty() {
            self.dead_letter_queued(dead).await;
        }
        self.spool_refused().await;
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
            .filter_map(|((_, queued), outcome)| match outcome {
                EntryOutcome::Delivered { shard } => Some((shard.as_str(), &queued.record)),
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
        let mispredicted = request
            .iter()
            .zip(outcomes)
            .filter(|((lane, _), outcome)| {
                matches!(outcome, EntryOutcome::Delivered { shard } if *shard != *lane.shard)
            })
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

    /// Releases a record's budget and settles it in its replay window if it came from the
    /// spool.
    pub(super) fn finished_with(&mut self, queued: &Queued) {
        self.settings
            .budget
            .release(queued.record.memory_bytes() as u64);
        if let (Some(window), Some(replay)) = (queued.from_spool, &mut self.replay) {
            replay.settled(window);
        }
    }

    /// Every tick: publish rates, retry held records, and spill memory records that waited
    /// too long.
    async fn housekeeping(&mut self) {
        self.retry_held().await;
        self.write_waiting_letters().await;
        self.spool_refused().await;
        for (shard, rate) in self.lanes.rates() {
            let labels = [self.state.stream.as_str(), shard];
            self.metrics
                .shard_rate_limit_records_per_second
                .with_label_values(&labels)
                .set(rate);
            // Present at 0 from the start, so dashboards show a flat line, not "no data".
            self.metrics.shard_throttled.with_label_values(&labels);
        }
        self.spill_if_waited_too_long().await;
        self.after_progress().await;
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

    pub(super) fn count(&self, topic: &str, result: MirrorResult, n: u64) {
        self.metrics
            .mirror_outcome(topic, &self.state.stream, result, n);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
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

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
