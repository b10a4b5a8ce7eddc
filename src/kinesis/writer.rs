//! One writer per Kinesis stream: queues mirrored records, cuts PutRecords batches (at most 500
//! entries and 5 MiB, after a linger), sends them with bounded concurrency, and resends only the
//! entries that failed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use aws_sdk_kinesis::Client;
use tokio::sync::{mpsc, Notify, Semaphore};

use super::client::{describe, load_shard_map, DEFAULT_MAX_RECORD_BYTES};
use super::request::{entry, take_batch, MirrorRecord, Routed, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
use super::retry::{is_retryable, Backoff};
use super::shard_map::ShardMap;
use crate::ops::config::KinesisConfig;
use crate::ops::metrics::{Metrics, MirrorResult};

/// Records a writer may hold queued before the mirror waits for it.
const QUEUE_CAPACITY: usize = 16 * 1024;

/// How often an unhealthy stream is described again.
const HEALTH_RETRY: Duration = Duration::from_secs(5);

/// The handle the mirror stage sends records through.
#[derive(Clone)]
pub struct StreamWriter {
    tx: mpsc::Sender<MirrorRecord>,
    state: Arc<StreamState>,
}

/// What the writer knows about its stream, shared with the mirror stage and the admin endpoint.
pub struct StreamState {
    pub stream: String,
    healthy: AtomicBool,
    last_error: std::sync::Mutex<Option<String>>,
    open_shards: AtomicUsize,
    map: ArcSwap<ShardMap>,
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
}

impl StreamWriter {
    /// Starts the writer task for `stream`. The stream is described first; a failure leaves the
    /// route unhealthy (logged, and `mirror_route_healthy` 0) and is retried, while Kafka
    /// traffic is unaffected.
    pub fn spawn(
        stream: &str,
        client: Client,
        config: &KinesisConfig,
        metrics: Arc<Metrics>,
    ) -> StreamWriter {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let state = Arc::new(StreamState {
            stream: stream.to_owned(),
            healthy: AtomicBool::new(false),
            last_error: std::sync::Mutex::new(None),
            open_shards: AtomicUsize::new(0),
            map: ArcSwap::from_pointee(ShardMap::default()),
        });
        let shared = Arc::new(Shared {
            client,
            state: state.clone(),
            metrics,
            backoff: Backoff::default(),
            max_attempts: config.max_attempts,
            refresh_now: Notify::new(),
        });
        let task = WriterTask {
            shared,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight_requests)),
            max_in_flight: config.max_in_flight_requests,
            linger: config.linger,
            refresh_every: config.shard_map_refresh,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            queue: VecDeque::new(),
            queued_bytes: 0,
            last_health_check: None,
        };
        tokio::spawn(task.run(rx));
        StreamWriter { tx, state }
    }

    pub fn state(&self) -> &Arc<StreamState> {
        &self.state
    }

    /// Queues a record; waits while the writer's queue is full.
    pub async fn send(&self, record: MirrorRecord) -> Result<(), MirrorRecord> {
        self.tx.send(record).await.map_err(|e| e.0)
    }
}

/// What the writer loop and its in-flight requests share.
struct Shared {
    client: Client,
    state: Arc<StreamState>,
    metrics: Arc<Metrics>,
    backoff: Backoff,
    max_attempts: u32,
    refresh_now: Notify,
}

struct WriterTask {
    shared: Arc<Shared>,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    linger: Duration,
    refresh_every: Duration,
    max_record_bytes: usize,
    queue: VecDeque<MirrorRecord>,
    queued_bytes: usize,
    last_health_check: Option<Instant>,
}

impl WriterTask {
    async fn run(mut self, mut rx: mpsc::Receiver<MirrorRecord>) {
        self.check_health().await;
        let mut probe = tokio::time::interval(HEALTH_RETRY);
        probe.tick().await;
        let mut refresh = tokio::time::interval(self.refresh_every);
        refresh.tick().await;
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                record = rx.recv() => match record {
                    Some(record) => {
                        self.enqueue(record);
                        if self.queue.len() >= MAX_BATCH_ENTRIES || self.queued_bytes >= MAX_BATCH_BYTES {
                            self.flush(false).await;
                        } else if deadline.is_none() && !self.queue.is_empty() {
                            deadline = Some(tokio::time::Instant::now() + self.linger);
                        }
                    }
                    None => break,
                },
                _ = sleep_until(deadline), if deadline.is_some() => {
                    deadline = None;
                    self.flush(true).await;
                }
                _ = refresh.tick() => self.refresh_map().await,
                _ = probe.tick() => self.probe_health().await,
                _ = self.shared.refresh_now.notified() => self.refresh_map().await,
            }
            if self.queue.is_empty() {
                deadline = None;
            }
        }
        // The mirror stage is gone: deliver what is queued and wait for every request.
        self.flush(true).await;
        let _ = self.in_flight.acquire_many(self.max_in_flight as u32).await;
    }

    fn enqueue(&mut self, record: MirrorRecord) {
        let size = record.kinesis_bytes();
        if size > self.max_record_bytes {
            let stream = &self.shared.state.stream;
            tracing::warn!(
                topic = %record.topic, partition = record.partition, offset = record.offset, %stream,
                bytes = size, limit = self.max_record_bytes,
                "record exceeds the stream's per-record limit (data plus partition key); not mirrored"
            );
            self.shared
                .metrics
                .mirror_outcome(&record.topic, stream, MirrorResult::Oversize, 1);
            return;
        }
        self.queued_bytes += size;
        self.queue.push_back(record);
    }

    /// Sends full batches, and with `all` the partial last one too.
    async fn flush(&mut self, all: bool) {
        if !self.shared.state.is_healthy() && !self.check_health().await {
            self.fail_queued("stream is unhealthy (see the DescribeStreamSummary error above)");
            return;
        }
        while !self.queue.is_empty() {
            let full =
                self.queue.len() >= MAX_BATCH_ENTRIES || self.queued_bytes >= MAX_BATCH_BYTES;
            if !all && !full {
                break;
            }
            let map = self.shared.state.map.load_full();
            let batch = take_batch(&mut self.queue, &mut self.queued_bytes, &map);
            let permit = self
                .in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            let shared = self.shared.clone();
            tokio::spawn(async move {
                shared.deliver(batch).await;
                drop(permit);
            });
        }
    }

    /// A light periodic check, so an outage shows in `/readyz` even without traffic: the
    /// stream is described (with a short timeout); a stream that comes back is fully
    /// re-checked, shard map included.
    async fn probe_health(&mut self) {
        let stream = self.shared.state.stream.clone();
        let described =
            tokio::time::timeout(HEALTH_RETRY, describe(&self.shared.client, &stream)).await;
        match described {
            Ok(Ok(_)) if self.shared.state.is_healthy() => {}
            Ok(Ok(_)) => {
                self.last_health_check = None;
                self.check_health().await;
            }
            Ok(Err(e)) => self.mark_unhealthy(e.to_string()),
            Err(_) => self.mark_unhealthy(format!(
                "stream `{stream}`: DescribeStreamSummary timed out"
            )),
        }
    }

    /// Records why the stream is unhealthy; logs only when that changes, not every probe.
    fn mark_unhealthy(&self, error: String) {
        let state = &self.shared.state;
        let mut last = state.last_error.lock().expect("stream state lock");
        if state.healthy.swap(false, Ordering::AcqRel) || last.as_deref() != Some(error.as_str()) {
            tracing::error!(%error, "mirror route unhealthy; Kafka traffic continues unaffected");
        }
        *last = Some(error);
        self.shared
            .metrics
            .stream_healthy
            .with_label_values(&[&state.stream])
            .set(0);
    }

    /// Describes the stream and loads its shard map; at most every HEALTH_RETRY.
    async fn check_health(&mut self) -> bool {
        if self
            .last_health_check
            .is_some_and(|t| t.elapsed() < HEALTH_RETRY)
        {
            return self.shared.state.is_healthy();
        }
        self.last_health_check = Some(Instant::now());
        let state = &self.shared.state;
        let stream = &state.stream;
        let outcome = async {
            let info = describe(&self.shared.client, stream).await?;
            let map = load_shard_map(&self.shared.client, stream).await?;
            Ok::<_, super::client::StreamError>((info, map))
        }
        .await;
        match outcome {
            Ok((info, map)) => {
                self.max_record_bytes = info.max_record_bytes;
                tracing::info!(%stream, status = %info.status, open_shards = map.len(), max_record_bytes = info.max_record_bytes, "stream ready");
                state.open_shards.store(map.len(), Ordering::Release);
                state.map.store(Arc::new(map));
                state.healthy.store(true, Ordering::Release);
                *state.last_error.lock().expect("stream state lock") = None;
                self.shared
                    .metrics
                    .stream_healthy
                    .with_label_values(&[stream])
                    .set(1);
            }
            Err(e) => self.mark_unhealthy(e.to_string()),
        }
        self.shared.state.is_healthy()
    }

    async fn refresh_map(&mut self) {
        let stream = &self.shared.state.stream;
        match load_shard_map(&self.shared.client, stream).await {
            Ok(map) => {
                if map != **self.shared.state.map.load() {
                    tracing::info!(%stream, open_shards = map.len(), "shard map changed");
                }
                self.shared
                    .state
                    .open_shards
                    .store(map.len(), Ordering::Release);
                self.shared.state.map.store(Arc::new(map));
            }
            Err(e) => {
                tracing::warn!(error = %e, "shard map refresh failed; keeping the previous map")
            }
        }
    }

    fn fail_queued(&mut self, reason: &str) {
        let records: Vec<MirrorRecord> = self.queue.drain(..).collect();
        self.queued_bytes = 0;
        if let Some(first) = records.first() {
            tracing::error!(
                stream = %self.shared.state.stream, records = records.len(), topic = %first.topic,
                partition = first.partition, first_offset = first.offset, reason, "mirror records failed"
            );
        }
        self.shared
            .count(records.iter().map(|r| &r.topic), MirrorResult::Failed);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Shared {
    fn count<'a>(&self, topics: impl Iterator<Item = &'a Arc<str>>, result: MirrorResult) {
        let mut per_topic: HashMap<&str, u64> = HashMap::new();
        for topic in topics {
            *per_topic.entry(topic).or_default() += 1;
        }
        for (topic, n) in per_topic {
            self.metrics
                .mirror_outcome(topic, &self.state.stream, result, n);
        }
    }

    /// Sends one batch until every entry is delivered or has used up its attempts.
    async fn deliver(&self, mut pending: Vec<Routed>) {
        let stream = self.state.stream.as_str();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let entries: Vec<PutRecordsRequestEntry> =
                pending.iter().map(|r| entry(&r.record)).collect();
            let started = Instant::now();
            let result = self
                .client
                .put_records()
                .stream_name(stream)
                .set_records(Some(entries))
                .send()
                .await;
            self.metrics
                .putrecords_duration
                .with_label_values(&[stream])
                .observe(started.elapsed().as_secs_f64());
            let last_error = match result {
                Ok(out) => {
                    let mut failed = Vec::new();
                    let mut first_error = None;
                    let mut delivered = Vec::new();
                    for (routed, result) in pending.into_iter().zip(out.records()) {
                        if let Some(code) = result.error_code() {
                            first_error.get_or_insert_with(|| {
                                format!("{code}: {}", result.error_message().unwrap_or(""))
                            });
                            failed.push(routed);
                            continue;
                        }
                        let shard = result.shard_id().unwrap_or("");
                        self.metrics
                            .shard_records
                            .with_label_values(&[stream, shard])
                            .inc();
                        if routed.predicted.as_deref() != Some(shard) {
                            self.metrics
                                .shard_map_mispredictions
                                .with_label_values(&[stream])
                                .inc();
                            // Kinesis routed elsewhere: the stream was resharded.
                            self.refresh_now.notify_one();
                        }
                        delivered.push(routed.record.topic);
                    }
                    self.count(delivered.iter(), MirrorResult::Sent);
                    if failed.is_empty() {
                        return;
                    }
                    pending = failed;
                    first_error.unwrap_or_default()
                }
                Err(e) if !is_retryable(e.code()) => {
                    self.give_up(&pending, &DisplayErrorContext(&e).to_string());
                    return;
                }
                Err(e) => {
                    // The whole request failed. After a timeout or a dropped connection Kinesis
                    // may have stored the records anyway, so the resend can duplicate them:
                    // PutRecords has no idempotence.
                    let error = DisplayErrorContext(&e).to_string();
                    tracing::warn!(%stream, attempt, records = pending.len(), %error, "PutRecords request failed; retrying");
                    error
                }
            };
            if attempt >= self.max_attempts {
                self.give_up(&pending, &last_error);
                return;
            }
            tracing::debug!(%stream, attempt, records = pending.len(), error = %last_error, "retrying PutRecords entries");
            self.count(
                pending.iter().map(|r| &r.record.topic),
                MirrorResult::Retried,
            );
            tokio::time::sleep(self.backoff.delay(attempt)).await;
        }
    }

    fn give_up(&self, records: &[Routed], error: &str) {
        if let Some(first) = records.first() {
            let r = &first.record;
            tracing::error!(
                stream = %self.state.stream, records = records.len(), topic = %r.topic, partition = r.partition,
                first_offset = r.offset, error, "mirror records failed"
            );
        }
        self.count(
            records.iter().map(|r| &r.record.topic),
            MirrorResult::Failed,
        );
    }
}
