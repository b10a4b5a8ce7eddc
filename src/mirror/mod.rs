//! Record extraction and sampling: turns Produce exchanges into Kinesis records.
//!
//! Connections hand every Produce request, with its response, to this stage after the response
//! has already gone back to the client; all decoding, decompression and sampling happens here,
//! off the Kafka path. Only partitions Kafka accepted (error code 0) are mirrored, and each
//! record's Kafka offset is the response's base offset plus its position in the request.

pub mod partition_key;
pub mod sampling;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use tokio::sync::mpsc;

use crate::config::{MirrorRoute, PartitionKeyRule, WhenFull};
use crate::kafka::header::response_body_offset;
use crate::kafka::produce::{ProduceRequestView, ProduceResponseView};
use crate::kafka::records::{decode_batches, summarize};
use crate::kinesis::client::build_client;
use crate::kinesis::request::MirrorRecord;
use crate::kinesis::writer::{StreamState, StreamWriter, WriterSettings};
use crate::telemetry::inventory::{ClientKey, Inventory};
use crate::telemetry::metrics::{Metrics, MirrorResult};
use partition_key::kinesis_key;
use sampling::{is_sampled, record_sample_point};

/// Produce exchanges the stage may hold before connections start dropping them (spill and
/// drop modes: deep, so a spool fsync never costs an exchange)...
const EXCHANGE_QUEUE: usize = 8 * 1024;
/// ...as long as they hold no more than this many bytes: waiting exchanges pin whole request
/// frames outside the memory budget, so this is what keeps the proxy's memory within the
/// budget plus a fixed allowance when the stage falls behind.
const EXCHANGE_QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// ...or, in block mode, start waiting: shallow, so the memory budget is what bounds memory.
const EXCHANGE_QUEUE_BLOCKING: usize = 16;

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

/// What connections send the stage: exchanges, or a marker that resolves once every exchange
/// sent before it has been processed.
enum StageInput {
    Exchange(ProduceExchange),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A topic's route to a stream.
pub struct Route {
    pub stream: String,
    pub percent: f64,
    pub partition_key: PartitionKeyRule,
    pub writer: StreamWriter,
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
}

/// One writer per stream, created on first use and kept for the life of the process.
struct Writers {
    settings: WriterSettings,
    client: Option<aws_sdk_kinesis::Client>,
    by_stream: HashMap<String, StreamWriter>,
}

impl Writers {
    async fn writer(&mut self, stream: &str, metrics: &Arc<Metrics>) -> StreamWriter {
        if let Some(writer) = self.by_stream.get(stream) {
            return writer.clone();
        }
        let client = match &self.client {
            Some(client) => client.clone(),
            None => self
                .client
                .insert(build_client(&self.settings.kinesis).await)
                .clone(),
        };
        let writer = StreamWriter::spawn(stream, client, &self.settings, metrics.clone());
        self.by_stream.insert(stream.to_owned(), writer.clone());
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
        let (tx, rx) = mpsc::channel(if block {
            EXCHANGE_QUEUE_BLOCKING
        } else {
            EXCHANGE_QUEUE
        });
        let table = Arc::new(ArcSwap::from_pointee(RouteTable::new()));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let stage = Stage {
            queued_bytes: queued_bytes.clone(),
            routes: table.clone(),
            metrics: metrics.clone(),
            inventory,
        };
        tokio::spawn(stage.run(rx));
        let mirror = Mirror {
            tx,
            queued_bytes,
            block,
            metrics,
            routes: table,
            writers: Arc::new(tokio::sync::Mutex::new(Writers {
                settings,
                client: None,
                by_stream: HashMap::new(),
            })),
        };
        mirror.apply_routes(routes).await;
        mirror
    }

    /// Puts `routes` in force for the next Produce exchange: percentages, partition keys, and
    /// added, removed or re-pointed topics. New streams get a writer first.
    pub async fn apply_routes(&self, routes: &[MirrorRoute]) {
        let mut table = RouteTable::new();
        {
            let mut writers = self.writers.lock().await;
            for r in routes {
                let route = Route {
                    stream: r.stream.clone(),
                    percent: r.percent,
                    partition_key: r.partition_key.clone(),
                    writer: writers.writer(&r.stream, &self.metrics).await,
                };
                table.insert(r.topic.clone(), Arc::new(route));
            }
        }
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

    /// Shutdown: processes every exchange already handed over, then lets each writer deliver
    /// until `deadline` and spool the rest.
    pub async fn shut_down(&self, deadline: std::time::Instant) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.tx.send(StageInput::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
        let writers: Vec<StreamWriter> = self
            .writers
            .lock()
            .await
            .by_stream
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
            .by_stream
            .values()
            .map(|w| w.state().clone())
            .collect()
    }

    /// Hands an exchange to the stage. With `when_full = "block"` this waits while the mirror
    /// is backed up, which holds the connection's next response and so slows the producer;
    /// otherwise it never waits.
    pub async fn hand_over(&self, exchange: ProduceExchange) {
        let bytes = exchange.bytes();
        if self.block {
            self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
            if self.tx.send(StageInput::Exchange(exchange)).await.is_err() {
                self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            }
        } else {
            self.observe(exchange, bytes);
        }
    }

    /// Hands an exchange to the stage without waiting: the Kafka path never blocks on the
    /// mirror. A full queue (by count or by bytes; one exchange alone always fits) drops the
    /// exchange and counts it.
    fn observe(&self, exchange: ProduceExchange, bytes: usize) {
        let before = self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        let fits = before == 0 || before + bytes <= EXCHANGE_QUEUE_BYTES;
        if !fits || self.tx.try_send(StageInput::Exchange(exchange)).is_err() {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.metrics.mirror_dropped_requests.inc();
            tracing::warn!("mirror queue full: a Produce request was not mirrored (kafka_kinesis_proxy_mirror_dropped_requests_total)");
        }
    }
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

struct Stage {
    queued_bytes: Arc<AtomicUsize>,
    routes: Arc<ArcSwap<RouteTable>>,
    metrics: Arc<Metrics>,
    inventory: Arc<Inventory>,
}

impl Stage {
    async fn run(self, mut rx: mpsc::Receiver<StageInput>) {
        let mut last_warning: Option<Instant> = None;
        while let Some(input) = rx.recv().await {
            let exchange = match input {
                StageInput::Exchange(exchange) => {
                    self.queued_bytes
                        .fetch_sub(exchange.bytes(), Ordering::AcqRel);
                    exchange
                }
                StageInput::Flush(done) => {
                    let _ = done.send(());
                    continue;
                }
            };
            if let Err(reason) = self.process(exchange).await {
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
        }
    }

    async fn process(&self, exchange: ProduceExchange) -> Result<(), String> {
        let version = exchange.version;
        let request = ProduceRequestView::decode(version, exchange.request_body)
            .map_err(|e| format!("request: {e}"))?;
        let response = match exchange.response_frame {
            None => None,
            Some(frame) => {
                let offset = response_body_offset(&frame, ApiKey::Produce, version)
                    .map_err(|e| format!("response header: {e}"))?;
                Some(
                    ProduceResponseView::decode(version, frame.slice(offset..))
                        .map_err(|e| format!("response: {e}"))?,
                )
            }
        };
        let routes = self.routes.load();
        for topic in request.topics {
            let route = routes.get(&topic.name).map(Arc::as_ref);
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
                let summary = match summarize(&records) {
                    Ok(summary) => summary,
                    Err(e) => {
                        self.decode_error(&topic_name, partition.partition, &e.to_string());
                        continue;
                    }
                };
                self.inventory
                    .produced(&exchange.client, &topic_name, &summary);
                self.count_kafka(&topic_name, verdict, summary.records as u64);
                if let (Some(route), Verdict::Accepted { .. } | Verdict::Unacknowledged) =
                    (route, verdict)
                {
                    self.mirror_partition(
                        route,
                        &topic_name,
                        partition.partition,
                        records,
                        verdict,
                    )
                    .await;
                }
            }
        }
        Ok(())
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

    fn decode_error(&self, topic: &str, partition: i32, reason: &str) {
        self.metrics
            .mirror_decode_errors
            .with_label_values(&[topic])
            .inc();
        tracing::warn!(
            topic,
            partition,
            reason,
            "cannot decode produced records for mirroring; Kafka was unaffected"
        );
    }

    async fn mirror_partition(
        &self,
        route: &Route,
        topic: &Arc<str>,
        partition: i32,
        records: Bytes,
        verdict: Verdict,
    ) {
        let batches = match decode_batches(records) {
            Ok(b) => b,
            Err(e) => return self.decode_error(topic, partition, &e.to_string()),
        };
        // The client already has Kafka's answer: this is as close to the ack as the mirror gets.
        let acked_at = std::time::Instant::now();
        let base_offset = match verdict {
            Verdict::Accepted { base_offset } => base_offset,
            _ => -1,
        };
        let open_shards = route.writer.state().open_shards();
        let mut skipped = 0u64;
        for record in batches
            .iter()
            .filter(|b| !b.is_control)
            .flat_map(|b| &b.records)
        {
            // acks=0 gives no offsets; the position in the request stands in for them.
            let offset = if base_offset >= 0 {
                base_offset + record.index as i64
            } else {
                record.index as i64
            };
            if !is_sampled(
                record_sample_point(&route.partition_key, record, partition),
                route.percent,
            ) {
                skipped += 1;
                continue;
            }
            let mirrored = MirrorRecord {
                topic: topic.clone(),
                partition,
                offset,
                offset_from_kafka: base_offset >= 0,
                key: kinesis_key(&route.partition_key, record, partition, open_shards),
                // Copied out: a slice would pin the whole request frame (or decompressed
                // batch) until its last record is delivered, so a full budget could hold
                // several times its size.
                data: record
                    .value
                    .as_deref()
                    .map_or_else(Bytes::new, Bytes::copy_from_slice),
                acked_at,
            };
            if route.writer.send(mirrored).await.is_err() {
                self.metrics
                    .mirror_outcome(topic, &route.stream, MirrorResult::Failed, 1);
            }
        }
        if skipped > 0 {
            self.metrics
                .mirror_outcome(topic, &route.stream, MirrorResult::Skipped, skipped);
        }
    }
}
