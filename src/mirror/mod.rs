//! Record extraction and sampling: turns Produce exchanges into Kinesis records.
//!
//! Connections hand every Produce request, with its response, to this stage just before the
//! response goes back to the client; all decoding, decompression and sampling happens here,
//! off the Kafka path, on the decode threads of [`decode`]. Only partitions Kafka accepted
//! (error code 0) are mirrored, and each record's Kafka offset is the response's base offset
//! plus its position in the request. Transactional records wait in [`transactions`] until the
//! EndTxn exchange that ends their transaction, which connections hand over the same way.

mod decode;
pub mod partition_key;
pub mod sampling;
mod stage_transactions;
mod stream_queue;
#[cfg(test)]
mod tests;
mod transactions;

use stage_transactions::sweep_lookups;
pub use stage_transactions::{TxnControl, TxnControlExchange};
pub use transactions::{MarkerLookup, TransactionMarkers};

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use tokio::sync::mpsc;

use crate::config::{MirrorRoute, PartitionKeyRule, StreamTarget, WhenFull};
use crate::kafka::header::{response_body_offset, HeaderError};
use crate::kafka::produce::{ProduceDecodeError, ProduceRequestView, ProduceResponseView};
use crate::kafka::records::summarize;
use crate::kafka::transaction::TxnControlError;
use crate::kinesis::client::Clients;
use crate::kinesis::spool::streams_with_records;
use crate::kinesis::writer::{StreamState, StreamWriter, WriterSettings};
use crate::telemetry::inventory::{ClientKey, Inventory, ProducerTraits};
use crate::telemetry::metrics::{Metrics, MirrorResult};
use decode::{decode_partition, DecodePool, Decoded, DECODE_THREADS};
use stream_queue::{make_room, Room, Rooms, StreamQueue, StreamQueues};
use transactions::{HeldId, Transactions};

/// Produce exchanges the stage may hold before connections start dropping them (spill and
/// drop modes: deep, so a spool fsync never costs an exchange)...
const EXCHANGE_QUEUE: usize = 8 * 1024;
/// ...as long as they hold no more than this many bytes, counting those the stage is decoding:
/// waiting exchanges pin whole request frames outside the memory budget, so this is what keeps
/// the proxy's memory within the budget plus a fixed allowance when the stage falls behind.
pub const EXCHANGE_QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// ...or, in block mode, start waiting: shallow, so the memory budget is what bounds memory.
const EXCHANGE_QUEUE_BLOCKING: usize = 16;
/// Held transactional records reserve at most 1/this of `mirror_buffer.max_bytes`.
const HELD_BUDGET_SHARE: u64 = 2;
/// Partitions being decoded, or decoded and waiting to go to their streams' queues, at once:
/// each holds up to [`crate::kafka::records::DEFAULT_MAX_DECODE_BYTES`], so this bounds decode
/// memory.
pub const DECODE_WINDOW: usize = DECODE_THREADS;

/// A Produce request and, unless it was sent with acks=0, its response.
pub struct ProduceExchange {
    /// Who produced, for the producer inventory.
    pub client: Arc<ClientKey>,
    pub version: i16,
    /// The request body (after the header), sliced from the frame without copying.
    pub request_body: Bytes,
    /// The whole response frame; `None` for acks=0.
    pub response_frame: Option<Bytes>,
}

impl ProduceExchange {
    /// The frame bytes it keeps alive while it waits for the stage.
    fn bytes(&self) -> usize {
        self.request_body.len() + self.response_frame.as_ref().map_or(0, Bytes::len)
    }
}

/// What connections send the stage: exchanges (with the room block mode took for them in
/// their streams' queues), or a marker that resolves once every exchange sent before it has
/// been processed.
enum StageInput {
    Exchange(ProduceExchange, Rooms),
    TxnControl(TxnControlExchange),
    Flush(tokio::sync::oneshot::Sender<()>),
    /// Time to look up transactions unresolved past their timeout.
    LookupSweep,
    /// A look-up's answer.
    MarkerRead(HeldId, Option<bool>),
}

/// A topic's route to a stream.
pub struct Route {
    /// Where the records go: the stream, its region and role.
    pub target: StreamTarget,
    /// The target's label, as metrics name the stream.
    pub stream: String,
    pub percent: f64,
    pub partition_key: PartitionKeyRule,
    pub writer: StreamWriter,
    /// The stream's queue in front of `writer`.
    pub(crate) queue: Arc<StreamQueue>,
}

/// The routes in force, by topic. Swapped whole on reload, so a Produce exchange sees either
/// the old table or the new one, never a mix.
pub type RouteTable = HashMap<String, Arc<Route>>;

/// The handle connections report Produce exchanges to.
#[derive(Clone)]
pub struct Mirror {
    tx: mpsc::Sender<StageInput>,
    /// Bytes of the exchanges waiting for the stage.
    queued_bytes: Arc<AtomicUsize>,
    /// `when_full = "block"`: connections wait for room instead of dropping exchanges.
    block: bool,
    metrics: Arc<Metrics>,
    routes: Arc<ArcSwap<RouteTable>>,
    writers: Arc<tokio::sync::Mutex<Writers>>,
    queues: Arc<StreamQueues>,
    /// Where held transactions' outcomes are read, once the proxy can reach Kafka.
    markers: Arc<OnceLock<Arc<dyn TransactionMarkers>>>,
}

/// One writer per stream target (its name or ARN, region and role), created on first use and
/// kept for the life of the process, each with the client of its region and role.
struct Writers {
    settings: WriterSettings,
    clients: Clients,
    by_target: HashMap<StreamTarget, StreamWriter>,
}

impl Writers {
    async fn writer(&mut self, target: &StreamTarget, metrics: &Arc<Metrics>) -> StreamWriter {
        if let Some(writer) = self.by_target.get(target) {
            return writer.clone();
        }
        let client = self.clients.client(target).await;
        // The label names the stream in metrics and spool entries, and is how the writer
        // addresses it: by name or ARN, its spool directory told apart by region and role.
        let label = target.to_string();
        let writer = StreamWriter::spawn(&label, client, &self.settings, metrics.clone());
        self.by_target.insert(target.clone(), writer.clone());
        writer
    }
}

impl Mirror {
    /// Starts the stage with `routes`, and a writer for each stream they name.
    pub async fn start(
        routes: &[MirrorRoute],
        settings: WriterSettings,
        metrics: Arc<Metrics>,
        inventory: Arc<Inventory>,
    ) -> Mirror {
        let block = settings.buffer.when_full == WhenFull::Block;
        let spool = (settings.spool.dir.clone(), settings.spool.max_bytes);
        let (tx, rx) = mpsc::channel(if block {
            EXCHANGE_QUEUE_BLOCKING
        } else {
            EXCHANGE_QUEUE
        });
        let table = Arc::new(ArcSwap::from_pointee(RouteTable::new()));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let markers = Arc::new(OnceLock::new());
        let stage = Stage {
            input: tx.downgrade(),
            markers: markers.clone(),
            queued_bytes: queued_bytes.clone(),
            routes: table.clone(),
            metrics: metrics.clone(),
            inventory,
            transactions: Transactions::new(
                settings.budget.clone(),
                settings.buffer.max_bytes / HELD_BUDGET_SHARE,
            ),
        };
        tokio::spawn(stage.run(rx));
        tokio::spawn(sweep_lookups(tx.downgrade()));
        let mirror = Mirror {
            markers,
            tx,
            queued_bytes,
            block,
            queues: Arc::new(StreamQueues::new(block, metrics.clone())),
            metrics,
            routes: table,
            writers: Arc::new(tokio::sync::Mutex::new(Writers {
                clients: Clients::new(settings.kinesis.clone()),
                settings,
                by_target: HashMap::new(),
            })),
        };
        mirror.apply_routes(routes).await;
        if let (Some(dir), max_bytes) = spool {
            mirror.drain_stranded_spools(dir, max_bytes, routes).await;
        }
        mirror
    }

    /// Spools left by an earlier run for streams no route names any more (the route was
    /// removed while records waited) get a writer too, which replays them: records Kafka
    /// acknowledged are delivered whatever the config says now.
    async fn drain_stranded_spools(&self, dir: PathBuf, max_bytes: u64, routes: &[MirrorRoute]) {
        // Routed streams' writers open their own spools, concurrently: never touch those.
        let routed: Vec<String> = routes.iter().map(|r| r.target.spool_dir_name()).collect();
        let found = tokio::task::spawn_blocking(move || {
            streams_with_records(&dir, max_bytes, |name| routed.iter().any(|r| r == name))
        })
        .await
        .unwrap_or_default();
        let mut writers = self.writers.lock().await;
        for (stream, records) in found {
            // Entries name their stream by its target's label, which says where it is.
            let target = match stream.parse::<StreamTarget>() {
                Ok(target) => target,
                Err(e) => {
                    tracing::error!(%stream, records, error = %e, "a spool from an earlier run names no stream the mirror can reach; its records stay there");
                    continue;
                }
            };
            tracing::warn!(%stream, records, "the spool of a stream no route names holds records from an earlier run; delivering them");
            writers.writer(&target, &self.metrics).await;
        }
    }

    /// Puts `routes` in force for the next Produce exchange: percentages, partition keys, and
    /// added, removed or re-pointed topics. New streams get a writer first.
    pub async fn apply_routes(&self, routes: &[MirrorRoute]) {
        let mut table = RouteTable::new();
        {
            let mut writers = self.writers.lock().await;
            for r in routes {
                let writer = writers.writer(&r.target, &self.metrics).await;
                let stream = r.target.to_string();
                let route = Route {
                    target: r.target.clone(),
                    // Queues are keyed like writers: by the target's label.
                    queue: self.queues.queue(&stream, &writer),
                    stream,
                    percent: r.percent,
                    partition_key: r.partition_key.clone(),
                    writer,
                };
                table.insert(r.topic.clone(), Arc::new(route));
            }
        }
        self.metrics
            .topic_labels
            .set_routed(routes.iter().map(|r| r.topic.clone()));
        let previous = self.routes.swap(Arc::new(table));
        for topic in previous
            .keys()
            .filter(|t| !routes.iter().any(|r| &r.topic == *t))
        {
            let _ = self.metrics.mirror_percent.remove_label_values(&[topic]);
        }
        for r in routes {
            self.metrics
                .mirror_percent
                .with_label_values(&[&r.topic])
                .set(r.percent);
        }
    }

    /// Shutdown: processes every exchange already handed over and moves its records into the
    /// writers' inputs, then lets each writer deliver until `deadline` and spool the rest.
    pub async fn shut_down(&self, deadline: std::time::Instant) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.tx.send(StageInput::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
        // A stuck writer would hold its queue's flush forever: at the deadline its writer
        // shuts down anyway, and the records its queue still holds are counted as failed.
        let _ = tokio::time::timeout_at(deadline.into(), self.queues.flush()).await;
        let writers: Vec<StreamWriter> = self
            .writers
            .lock()
            .await
            .by_target
            .values()
            .cloned()
            .collect();
        futures::future::join_all(writers.iter().map(|w| w.shut_down(deadline))).await;
    }

    /// The routes in force.
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    /// Every stream with a writer, for health reporting.
    pub async fn streams(&self) -> Vec<Arc<StreamState>> {
        let writers = self.writers.lock().await;
        writers
            .by_target
            .values()
            .map(|w| w.state().clone())
            .collect()
    }

    /// Hands an exchange to the stage. With `when_full = "block"` this waits while a stream
    /// the exchange routes to is backed up (or the stage itself, short of CPU), which holds
    /// the connection's next response and so slows the producer; otherwise it never waits.
    pub async fn hand_over(&self, exchange: ProduceExchange) {
        let bytes = exchange.bytes();
        if self.block {
            // Only the topics are decoded, not the records. An undecodable request takes no
            // room; the stage counts it.
            let rooms =
                match ProduceRequestView::decode(exchange.version, exchange.request_body.clone()) {
                    Ok(request) => make_room(&request, &self.routes.load_full()).await,
                    Err(_) => Rooms::new(),
                };
            self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
            if self
                .tx
                .send(StageInput::Exchange(exchange, rooms))
                .await
                .is_err()
            {
                self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            }
        } else {
            self.observe(exchange, bytes);
        }
    }

    /// Hands a transaction-control exchange to the stage, behind every Produce exchange handed
    /// over before it. It waits for room even when Produce exchanges are shed: losing an
    /// EndTxn would hold its transaction's records until a look-up in Kafka decides them.
    /// These requests are rare, and only they wait.
    pub async fn hand_over_txn_control(&self, exchange: TxnControlExchange) {
        let _ = self.tx.send(StageInput::TxnControl(exchange)).await;
    }

    /// Lets the stage read the outcomes of transactions it never saw end from Kafka.
    pub fn read_markers_with(&self, markers: Arc<dyn TransactionMarkers>) {
        let _ = self.markers.set(markers);
    }

    /// Hands an exchange to the stage without waiting: the Kafka path never blocks on the
    /// mirror. A full queue (by count or by bytes; one exchange alone always fits) drops the
    /// exchange and counts it.
    fn observe(&self, exchange: ProduceExchange, bytes: usize) {
        let before = self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        let fits = before == 0 || before + bytes <= EXCHANGE_QUEUE_BYTES;
        let shed = if fits {
            match self
                .tx
                .try_send(StageInput::Exchange(exchange, Rooms::new()))
            {
                Ok(()) => return,
                Err(full) => match full.into_inner() {
                    StageInput::Exchange(exchange, _) => exchange,
                    _ => unreachable!("a Produce exchange was sent"),
                },
            }
        } else {
            exchange
        };
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.metrics.mirror_dropped_requests.inc();
        self.count_shed(&shed);
        tracing::warn!("mirror queue full: a Produce request was not mirrored (kafka_kinesis_proxy_mirror_dropped_requests_total)");
    }

    /// Counts the records a shed exchange owed the mirror as dropped, so that the dual-write
    /// ratio shows the loss. Only batch headers are read: the proxy is short of CPU already.
    fn count_shed(&self, exchange: &ProduceExchange) {
        let Ok(partitions) = produced_partitions(exchange, &self.routes.load()) else {
            return;
        };
        for produced in partitions.iter().filter(|p| p.is_mirrored()) {
            let (Some(route), Ok(summary)) = (&produced.route, summarize(&produced.records)) else {
                continue;
            };
            self.metrics.mirror_outcome(
                &produced.topic,
                &route.stream,
                MirrorResult::Dropped,
                sampled_estimate(summary.records, route.percent),
            );
        }
    }
}

/// One produced partition of an exchange, with Kafka's verdict on it and its route.
struct ProducedPartition {
    topic: Arc<str>,
    partition: i32,
    records: Bytes,
    verdict: Verdict,
    route: Option<Arc<Route>>,
}

impl ProducedPartition {
    /// Whether the mirror owes this partition's sampled records to Kinesis.
    fn is_mirrored(&self) -> bool {
        self.route.is_some() && self.verdict != Verdict::Rejected
    }
}

/// The partitions `exchange` produced, parsed from its request and response without decoding
/// any record.
fn produced_partitions(
    exchange: &ProduceExchange,
    routes: &RouteTable,
) -> Result<Vec<ProducedPartition>, StageError> {
    let version = exchange.version;
    let request = ProduceRequestView::decode(version, exchange.request_body.clone())
        .map_err(StageError::Request)?;
    let response = match &exchange.response_frame {
        None => None,
        Some(frame) => {
            let offset = response_body_offset(frame, ApiKey::Produce, version)
                .map_err(StageError::ResponseHeader)?;
            Some(
                ProduceResponseView::decode(version, frame.slice(offset..))
                    .map_err(StageError::Response)?,
            )
        }
    };
    let mut produced = Vec::new();
    for topic in request.topics {
        let route = routes.get(&topic.name).cloned();
        let topic_name: Arc<str> = Arc::from(topic.name.as_str());
        for partition in topic.partitions {
            let Some(records) = partition.records else {
                continue;
            };
            let verdict = match &response {
                None => Verdict::Unacknowledged,
                Some(r) => match r.partition(&topic.name, partition.partition) {
                    Some(p) if p.error_code == 0 => Verdict::Accepted {
                        base_offset: p.base_offset,
                    },
                    _ => Verdict::Rejected,
                },
            };
            produced.push(ProducedPartition {
                topic: topic_name.clone(),
                partition: partition.partition,
                records,
                verdict,
                route: route.clone(),
            });
        }
    }
    Ok(produced)
}

/// How many of `records` a route at `percent` samples, for records the mirror lost before it
/// could sample them: an estimate, exact at 0% and 100%.
fn sampled_estimate(records: usize, percent: f64) -> u64 {
    (records as f64 * percent / 100.0).round() as u64
}

/// Kafka's verdict on one produced partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accepted {
        base_offset: i64,
    },
    Rejected,
    /// acks=0: no response, mirrored on send.
    Unacknowledged,
}

/// Why a Produce exchange could not be read at all (each partition's own records failing to
/// decode is a [`PartitionError`]).
#[derive(Debug, thiserror::Error)]
enum StageError {
    #[error("request: {0}")]
    Request(ProduceDecodeError),
    #[error("response header: {0}")]
    ResponseHeader(HeaderError),
    #[error("response: {0}")]
    Response(ProduceDecodeError),
    #[error(transparent)]
    TxnControl(#[from] TxnControlError),
}

/// Why a partition's records were not mirrored.
#[derive(Debug, thiserror::Error)]
enum PartitionError {
    #[error(transparent)]
    Records(#[from] crate::kafka::records::RecordsError),
    #[error("the decoder panicked")]
    DecoderPanicked,
}

/// Keeps an exchange's bytes counted in the queue's bytes until its last partition is done,
/// since until then its partitions' records pin its frames.
struct QueuedBytes {
    counter: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for QueuedBytes {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// One produced partition of an exchange, to decode.
struct PartitionWork {
    client: Arc<ClientKey>,
    topic: Arc<str>,
    partition: i32,
    records: Bytes,
    verdict: Verdict,
    route: Option<Arc<Route>>,
    /// Block mode: the room taken for it in its stream's queue.
    room: Option<Arc<Room>>,
    _queued: Arc<QueuedBytes>,
}

/// What the stage does next, in arrival order.
enum Work {
    Partition(PartitionWork),
    /// These wait for every partition before them, like [`Work::Flush`].
    TxnControl(TxnControlExchange),
    MarkerRead(HeldId, Option<bool>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A partition on the decode pool, and where its result will come from.
struct InFlight {
    work: PartitionWork,
    result: tokio::sync::oneshot::Receiver<Decoded>,
}

struct Stage {
    queued_bytes: Arc<AtomicUsize>,
    routes: Arc<ArcSwap<RouteTable>>,
    metrics: Arc<Metrics>,
    inventory: Arc<Inventory>,
    /// Transactional records waiting for their EndTxn, with their topic and route.
    transactions: Transactions<(Arc<str>, Arc<Route>)>,
    markers: Arc<OnceLock<Arc<dyn TransactionMarkers>>>,
    /// For look-ups' answers; weak, so that the stage still ends when the mirror is dropped.
    input: mpsc::WeakSender<StageInput>,
}

impl Stage {
    /// Expands exchanges into partitions, keeps up to [`DECODE_WINDOW`] of them on the decode
    /// pool, and hands their records to their streams' queues strictly in arrival order, so a
    /// partition's records reach its stream in Kafka order whichever thread decoded them. It
    /// never waits for a writer: each stream's queue does.
    async fn run(mut self, mut rx: mpsc::Receiver<StageInput>) {
        let pool = DecodePool::start(DECODE_THREADS);
        let mut waiting: VecDeque<Work> = VecDeque::new();
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut last_warning: Option<Instant> = None;
        loop {
            while in_flight.len() < DECODE_WINDOW {
                match waiting.pop_front() {
                    Some(Work::Partition(work)) => in_flight.push_back(self.submit(&pool, work)),
                    Some(barrier) if in_flight.is_empty() => self.after_partitions(barrier),
                    Some(barrier) => {
                        waiting.push_front(barrier);
                        break;
                    }
                    None => break,
                }
            }
            // Read ahead while the pool works, so the next exchange's partitions are ready
            // when a decode thread frees up; wait for input only when there is nothing else.
            let input = if !waiting.is_empty() {
                None
            } else if in_flight.is_empty() {
                match rx.recv().await {
                    Some(input) => Some(input),
                    None => return,
                }
            } else {
                rx.try_recv().ok()
            };
            if let Some(input) = input {
                if let Err(reason) = self.expand(input, &mut waiting) {
                    self.metrics
                        .mirror_decode_errors
                        .with_label_values(&["(request)"])
                        .inc();
                    // At most one line a second: a misbehaving client must not flood the log.
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                        tracing::warn!(%reason, "cannot decode a Produce exchange for mirroring; Kafka was unaffected");
                        last_warning = Some(Instant::now());
                    }
                }
                continue;
            }
            if let Some(InFlight { work, result }) = in_flight.pop_front() {
                let decoded = result.await.map_err(|_| PartitionError::DecoderPanicked);
                self.finish(work, decoded);
            }
        }
    }

    fn submit(&self, pool: &DecodePool, work: PartitionWork) -> InFlight {
        let route = work.route.clone();
        let topic = work.topic.clone();
        let (partition, records, verdict) = (work.partition, work.records.clone(), work.verdict);
        let result = pool
            .run(move || decode_partition(route.as_deref(), &topic, partition, records, verdict));
        InFlight { work, result }
    }

    /// Queues `input`'s partitions (or its flush) in `waiting`.
    fn expand(
        &mut self,
        input: StageInput,
        waiting: &mut VecDeque<Work>,
    ) -> Result<(), StageError> {
        let (exchange, rooms) = match input {
            StageInput::Exchange(exchange, rooms) => (exchange, rooms),
            StageInput::Flush(done) => {
                waiting.push_back(Work::Flush(done));
                return Ok(());
            }
            StageInput::TxnControl(control) => {
                waiting.push_back(Work::TxnControl(control));
                return Ok(());
            }
            StageInput::MarkerRead(id, outcome) => {
                waiting.push_back(Work::MarkerRead(id, outcome));
                return Ok(());
            }
            StageInput::LookupSweep => {
                self.start_lookups();
                return Ok(());
            }
        };
        let queued = Arc::new(QueuedBytes {
            counter: self.queued_bytes.clone(),
            bytes: exchange.bytes(),
        });
        for produced in produced_partitions(&exchange, &self.routes.load())? {
            let room = produced
                .route
                .as_ref()
                .and_then(|route| rooms.get(&route.stream).cloned());
            waiting.push_back(Work::Partition(PartitionWork {
                client: exchange.client.clone(),
                topic: produced.topic,
                partition: produced.partition,
                records: produced.records,
                verdict: produced.verdict,
                route: produced.route,
                room,
                _queued: queued.clone(),
            }));
        }
        Ok(())
    }

    /// Counts a decoded partition and hands its records to its stream's queue.
    fn finish(&mut self, work: PartitionWork, decoded: Result<Decoded, PartitionError>) {
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(e) => return self.decode_error(&work, &e, 0),
        };
        let records = decoded.summary.as_ref().map_or(0, |s| s.records);
        let transaction = decoded.summary.as_ref().ok().and_then(|s| s.transaction);
        match decoded.summary {
            Ok(summary) => {
                // Any topic a client names: bounded before it becomes a label or an entry.
                let topic = self.metrics.topic_labels.label(&work.topic);
                let traits = ProducerTraits {
                    idempotent: summary.idempotent,
                    transactional: summary.transactional(),
                };
                let records = summary.records as u64;
                self.inventory.produced(
                    &work.client,
                    topic,
                    records,
                    traits,
                    summary.codecs.iter(),
                );
                self.count_kafka(topic, work.verdict, records);
            }
            Err(e) => return self.decode_error(&work, &e.into(), 0),
        }
        let (Some(route), Some(mirrored)) = (&work.route, decoded.mirrored) else {
            return;
        };
        let mirrored = match mirrored {
            Ok(mirrored) => mirrored,
            Err(e) => return self.decode_error(&work, &e.into(), records),
        };
        self.hand_on(transaction, &work.topic, route, mirrored.records, work.room);
        if mirrored.skipped > 0 {
            self.metrics.mirror_outcome(
                &work.topic,
                &route.stream,
                MirrorResult::Skipped,
                mirrored.skipped,
            );
        }
    }

    /// Work that waits for every partition before it to be handed on.
    fn after_partitions(&mut self, barrier: Work) {
        match barrier {
            Work::Partition(_) => unreachable!("partitions are not barriers"),
            Work::Flush(done) => {
                self.report_held();
                let _ = done.send(());
            }
            Work::TxnControl(control) => self.txn_control(&control),
            Work::MarkerRead(id, outcome) => self.marker_read(id, outcome),
        }
    }

    fn count_kafka(&self, topic: &str, verdict: Verdict, records: u64) {
        match verdict {
            Verdict::Accepted { .. } => self
                .metrics
                .kafka_records
                .with_label_values(&[topic, "ok"])
                .inc_by(records),
            Verdict::Rejected => self
                .metrics
                .kafka_records
                .with_label_values(&[topic, "error"])
                .inc_by(records),
            Verdict::Unacknowledged => self
                .metrics
                .kafka_unacked_records
                .with_label_values(&[topic])
                .inc_by(records),
        }
    }

    /// A partition the mirror skips: Kafka stored it, so its client, topic and partition are
    /// enough to find it. Its `records` (0 when unknown) count as undecodable, so that the
    /// dual-write ratio shows them.
    fn decode_error(&self, work: &PartitionWork, reason: &PartitionError, records: usize) {
        self.metrics
            .mirror_decode_errors
            .with_label_values(&[self.metrics.topic_labels.label(&work.topic)])
            .inc();
        if let (Some(route), true) = (&work.route, work.verdict != Verdict::Rejected) {
            self.metrics.mirror_outcome(
                &work.topic,
                &route.stream,
                MirrorResult::Undecodable,
                sampled_estimate(records, route.percent).max(1),
            );
        }
        tracing::warn!(
            client_id = %work.client.client_id,
            client_address = %work.client.address,
            topic = %work.topic,
            partition = work.partition,
            %reason,
            "cannot decode produced records for mirroring; Kafka was unaffected, the mirror skips them"
        );
    }
}
