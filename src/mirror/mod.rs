//! Record extraction and sampling: turns Produce exchanges into Kinesis records.
//!
//! Connections hand every Produce request, with its response, to this stage just before the
//! response goes back to the client; all decoding, decompression and sampling happens here,
//! off the Kafka path, on the decode threads of [`decode`]. Only partitions Kafka accepted
//! (error code 0) are mirrored, and each record's Kafka offset is the response's base offset
//! plus its position in the request. Transactional records wait in [`transactions`] until the
//! EndTxn exchange that ends their transaction, which connections hand over the same way.

mod backlog;
mod decode;
#[cfg(test)]
mod deferred_tests;
mod intake;
pub(crate) mod kinesis_only;
pub mod partition_key;
mod primary;
#[cfg(test)]
mod primary_tests;
pub mod sampling;
mod stage;
mod stage_transactions;
mod stream_queue;
#[cfg(test)]
mod tests;
mod transactions;
pub(crate) mod wal;

use kinesis_only::KinesisOnly;
pub use kinesis_only::{KinesisOnlyError, LocalAnswer, LogEndOffsets};
pub use primary::PrimaryAnswer;
use primary::{Deliveries, Primary};
use stage_transactions::sweep_lookups;
pub use stage_transactions::{TxnControl, TxnControlExchange};
pub use transactions::{MarkerLookup, TransactionMarkers};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use tokio::sync::mpsc;

use crate::config::{MirrorRoute, PartitionKeyRule, RouteMode, StreamTarget, WhenFull};
use crate::kafka::header::{response_body_offset, HeaderError};
use crate::kafka::message::MessageError;
use crate::kafka::produce::{ProduceDecodeError, ProduceRequestView, ProduceResponseView};
use crate::kafka::transaction::TxnControlError;
use crate::kinesis::client::Clients;
use crate::kinesis::spool::streams_with_records;
use crate::kinesis::writer::{StreamState, StreamWriter, WriterSettings};
use crate::telemetry::inventory::{ClientKey, Inventory};
use crate::telemetry::metrics::Metrics;
use decode::DECODE_THREADS;
use stage::Stage;
use stream_queue::{Rooms, StreamQueue, StreamQueues};
use transactions::{HeldId, Transactions};
use wal::{ExchangeLog, Wal};

/// Produce exchanges the stage may hold before connections start deferring them to the log, or
/// dropping them (spill and drop modes: deep, so a spool fsync never costs an exchange)...
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
    /// kinesis-primary partitions whose producer waits for their delivery; filled in by
    /// [`Mirror::hand_over`].
    pub(crate) deliveries: Deliveries,
}

impl ProduceExchange {
    /// The frame bytes it keeps alive while it waits for the stage.
    fn bytes(&self) -> usize {
        self.request_body.len() + self.response_frame.as_ref().map_or(0, Bytes::len)
    }
}

/// Bytes of the exchanges waiting for the stage or being decoded by it, and a wake-up for the
/// inputs that wait for room by bytes (the catch-up and the startup replay).
#[derive(Default)]
pub(crate) struct StageBytes {
    bytes: AtomicUsize,
    freed: tokio::sync::Notify,
}

impl StageBytes {
    fn add(&self, bytes: usize) -> usize {
        self.bytes.fetch_add(bytes, Ordering::AcqRel)
    }

    fn release(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.freed.notify_waiters();
    }

    fn get(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Whether `bytes` more fit beside `before` within [`EXCHANGE_QUEUE_BYTES`]: always when
    /// none wait, so that one exchange alone always fits.
    fn fits(before: usize, bytes: usize) -> bool {
        before == 0 || before + bytes <= EXCHANGE_QUEUE_BYTES
    }

    /// Waits until `bytes` more fit.
    async fn room_for(&self, bytes: usize) {
        wait_until_woken(&self.freed, None, || StageBytes::fits(self.get(), bytes)).await;
    }
}

/// Waits on `wake` until `done()` holds, looking again at least every `recheck` (for
/// conditions that can change without a wake-up). Each look comes after registering for the
/// wake-up, so that one sent between the look and the wait is not missed.
async fn wait_until_woken(
    wake: &tokio::sync::Notify,
    recheck: Option<std::time::Duration>,
    done: impl Fn() -> bool,
) {
    loop {
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if done() {
            return;
        }
        match recheck {
            Some(every) => drop(tokio::time::timeout(every, woken).await),
            None => woken.await,
        }
    }
}

/// What connections send the stage: exchanges (with the room block mode took for them in
/// their streams' queues), or a marker that resolves once every exchange sent before it has
/// been processed.
enum StageInput {
    /// With its entry in the write-ahead log, when it was logged.
    Exchange(ProduceExchange, Rooms, Option<Arc<ExchangeLog>>),
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
    pub mode: RouteMode,
    pub primary_timeout: std::time::Duration,
    /// Standalone: the topic's partitions in the proxy's Metadata answers.
    pub partitions: i32,
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
    queued_bytes: Arc<StageBytes>,
    /// What connections do when the stage has no room for an exchange: wait (`block`), defer
    /// it to the log (`spill`, with a log) or shed it.
    when_full: WhenFull,
    deferred: Arc<intake::Deferred>,
    metrics: Arc<Metrics>,
    routes: Arc<ArcSwap<RouteTable>>,
    writers: Arc<tokio::sync::Mutex<Writers>>,
    queues: Arc<StreamQueues>,
    /// Where held transactions' outcomes are read, once the proxy can reach Kafka.
    markers: Arc<OnceLock<Arc<dyn TransactionMarkers>>>,
    /// Whether any route is kinesis-primary or kinesis-only: if not, no exchange is looked
    /// into on the connection's side, as before there were modes.
    any_kinesis_mode: Arc<AtomicBool>,
    primary: Arc<Primary>,
    kinesis_only: Arc<KinesisOnly>,
    /// The write-ahead log of exchanges, unless `mirror_buffer.durability = "memory"`.
    wal: Option<Arc<Wal>>,
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
        let clients = Clients::new(settings.kinesis.clone());
        Mirror::start_with(routes, settings, metrics, inventory, clients).await
    }

    /// [`Mirror::start`] with the Kinesis `clients` its writers use.
    pub(crate) async fn start_with(
        routes: &[MirrorRoute],
        settings: WriterSettings,
        metrics: Arc<Metrics>,
        inventory: Arc<Inventory>,
        clients: Clients,
    ) -> Mirror {
        let block = settings.buffer.when_full == WhenFull::Block;
        let spool = (settings.spool.dir.clone(), settings.spool.max_bytes);
        let (wal, replay) = wal::open_in_background(&settings, &metrics).await;
        let (tx, rx) = mpsc::channel(if block {
            EXCHANGE_QUEUE_BLOCKING
        } else {
            EXCHANGE_QUEUE
        });
        let table = Arc::new(ArcSwap::from_pointee(RouteTable::new()));
        let queued_bytes = Arc::new(StageBytes::default());
        let markers = Arc::new(OnceLock::new());
        let hold = wal.is_some() && settings.buffer.when_full == WhenFull::Spill;
        let queues = Arc::new(StreamQueues::new(block, hold, metrics.clone()));
        let stage = Stage {
            queues: queues.clone(),
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
            any_kinesis_mode: Arc::new(AtomicBool::new(false)),
            primary: Arc::new(Primary::default()),
            kinesis_only: Arc::new(KinesisOnly::new(
                spool.0.as_ref().map(|dir| dir.join(kinesis_only::DIR)),
            )),
            wal,
            tx,
            queued_bytes,
            when_full: settings.buffer.when_full,
            deferred: Default::default(),
            queues,
            metrics,
            routes: table,
            writers: Arc::new(tokio::sync::Mutex::new(Writers {
                clients,
                settings,
                by_target: HashMap::new(),
            })),
        };
        mirror.apply_routes(routes).await;
        if let (Some(dir), max_bytes) = spool {
            mirror.drain_stranded_spools(dir, max_bytes, routes).await;
        }
        if let Some(replay) = replay {
            mirror.replay_wal(replay).await;
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
            // The kinesis-only state is no spool.
            streams_with_records(&dir, max_bytes, |name| {
                name == kinesis_only::DIR || routed.iter().any(|r| r == name)
            })
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
                    mode: r.mode,
                    primary_timeout: r.primary_timeout,
                    partitions: r.partitions,
                    writer,
                };
                table.insert(r.topic.clone(), Arc::new(route));
            }
        }
        self.metrics
            .topic_labels
            .set_routed(routes.iter().map(|r| r.topic.clone()));
        self.any_kinesis_mode.store(
            routes.iter().any(|r| r.mode.waits_for_kinesis()),
            Ordering::Release,
        );
        let table = Arc::new(table);
        self.primary.keep_only(&table);
        self.kinesis_only.apply_routes(&table);
        let previous = self.routes.swap(table);
        for topic in previous
            .keys()
            .filter(|t| !routes.iter().any(|r| &r.topic == *t))
        {
            let _ = self.metrics.mirror_percent.remove_label_values(&[topic]);
            self.show_mode(topic, None);
        }
        for r in routes {
            self.metrics
                .mirror_percent
                .with_label_values(&[&r.topic])
                .set(r.percent);
            let before = previous.get(&r.topic).map(|p| p.mode);
            if before != Some(r.mode) {
                tracing::info!(topic = %r.topic, mode = %r.mode, previous = before.map(RouteMode::name), "route mode in force");
            }
            self.show_mode(&r.topic, Some(r.mode));
        }
    }

    /// `route_mode{topic,mode}`: 1 for `mode`, the others removed.
    fn show_mode(&self, topic: &str, mode: Option<RouteMode>) {
        for other in RouteMode::ALL {
            if Some(other) == mode {
                self.metrics
                    .route_mode
                    .with_label_values(&[topic, other.name()])
                    .set(1);
            } else {
                let _ = self
                    .metrics
                    .route_mode
                    .remove_label_values(&[topic, other.name()]);
            }
        }
    }

    /// Shutdown: processes every exchange already handed over and moves its records into the
    /// writers' inputs, then lets each writer deliver until `deadline` and spool the rest.
    pub async fn shut_down(&self, deadline: std::time::Instant) {
        self.stop_catch_up();
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
        self.kinesis_only.shut_down().await;
        if let Some(wal) = &self.wal {
            wal.flush().await;
        }
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
    /// Returns what the response must wait for when it names kinesis-primary partitions.
    pub async fn hand_over(&self, mut exchange: ProduceExchange) -> Option<PrimaryAnswer> {
        let answer = if self.any_kinesis_mode.load(Ordering::Acquire) {
            self.primary
                .open(&mut exchange, &self.routes.load(), &self.metrics)
        } else {
            None
        };
        let logged = self.log_exchange(&exchange).await;
        self.stage_exchange(exchange, logged).await;
        answer
    }

    /// The proxy's own answer to a Produce request (`version`, `body`) that a kinesis-primary
    /// or kinesis-only route refuses: a transactional one naming such a topic. `None` to
    /// forward it, as always when no route is in either mode (then nothing is decoded).
    pub fn refusal(
        &self,
        version: i16,
        body: &Bytes,
        correlation_id: i32,
    ) -> Option<Result<Bytes, MessageError>> {
        if !self.any_kinesis_mode.load(Ordering::Acquire) {
            return None;
        }
        // An undecodable request is Kafka's to refuse.
        let request = ProduceRequestView::decode(version, body.clone()).ok()?;
        primary::refuse_transactional(&self.routes.load(), &request, correlation_id)
    }

    /// Hands a transaction-control exchange to the stage, behind every Produce exchange handed
    /// over before it. It waits for room even when Produce exchanges are shed: losing an
    /// EndTxn would hold its transaction's records until a look-up in Kafka decides them.
    /// These requests are rare, and only they wait.
    pub async fn hand_over_txn_control(&self, exchange: TxnControlExchange) {
        if let Some(wal) = &self.wal {
            wal.append_txn_control(&exchange).await;
        }
        if let Some(exchange) = self.defer_txn_control(exchange) {
            let _ = self.tx.send(StageInput::TxnControl(exchange)).await;
        }
    }

    /// Lets the stage read the outcomes of transactions it never saw end from Kafka.
    pub fn read_markers_with(&self, markers: Arc<dyn TransactionMarkers>) {
        let _ = self.markers.set(markers);
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
