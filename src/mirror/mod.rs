//! Record extraction and sampling: turns Produce exchanges into Kinesis records.
//!
//! Connections hand every Produce request, with its response, to this stage after the response
//! has already gone back to the client; all decoding, decompression and sampling happens here,
//! off the Kafka path. Only partitions Kafka accepted (error code 0) are mirrored, and each
//! record's Kafka offset is the response's base offset plus its position in the request.

pub mod partition_key;
pub mod sampling;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use tokio::sync::mpsc;

use crate::kafka::header::response_body_offset;
use crate::kafka::produce::{ProduceRequestView, ProduceResponseView};
use crate::kafka::records::{decode_batches, summarize};
use crate::kinesis::request::MirrorRecord;
use crate::kinesis::writer::{StreamState, StreamWriter};
use crate::ops::config::{KinesisConfig, MirrorRoute};
use crate::ops::metrics::Metrics;
use partition_key::{kinesis_key, PartitionKeyRule};
use sampling::{is_sampled, sample_point};

/// Produce exchanges the stage may hold before connections start dropping them.
const EXCHANGE_QUEUE: usize = 8 * 1024;

/// A Produce request and, unless it was sent with acks=0, its response.
pub struct ProduceExchange {
    pub version: i16,
    /// The request body (after the header), sliced from the frame without copying.
    pub request_body: Bytes,
    /// The whole response frame; `None` for acks=0.
    pub response_frame: Option<Bytes>,
}

/// A topic's route to a stream.
pub struct Route {
    pub stream: String,
    pub percent: f64,
    pub partition_key: PartitionKeyRule,
    pub writer: StreamWriter,
}

/// The handle connections report Produce exchanges to.
#[derive(Clone)]
pub struct Mirror {
    tx: mpsc::Sender<ProduceExchange>,
    metrics: Arc<Metrics>,
    streams: Vec<Arc<StreamState>>,
}

impl Mirror {
    /// Starts the stage and one writer per stream the routes name. `client` may be `None` only
    /// when there are no routes.
    pub fn start(
        routes: &[MirrorRoute],
        client: Option<aws_sdk_kinesis::Client>,
        kinesis: &KinesisConfig,
        metrics: Arc<Metrics>,
    ) -> Mirror {
        let mut writers: HashMap<String, StreamWriter> = HashMap::new();
        if let Some(client) = client {
            for route in routes {
                writers.entry(route.stream.clone()).or_insert_with(|| {
                    StreamWriter::spawn(&route.stream, client.clone(), kinesis, metrics.clone())
                });
            }
        }
        let streams = writers.values().map(|w| w.state().clone()).collect();
        let table: HashMap<String, Route> = routes
            .iter()
            .map(|r| {
                metrics
                    .mirror_percent
                    .with_label_values(&[&r.topic])
                    .set(r.percent);
                let route = Route {
                    stream: r.stream.clone(),
                    percent: r.percent,
                    partition_key: r.partition_key.clone(),
                    writer: writers
                        .get(&r.stream)
                        .expect("a writer for every routed stream")
                        .clone(),
                };
                (r.topic.clone(), route)
            })
            .collect();
        let (tx, rx) = mpsc::channel(EXCHANGE_QUEUE);
        let stage = Stage {
            routes: table,
            metrics: metrics.clone(),
        };
        tokio::spawn(stage.run(rx));
        Mirror {
            tx,
            metrics,
            streams,
        }
    }

    /// The routed streams, for health reporting.
    pub fn streams(&self) -> &[Arc<StreamState>] {
        &self.streams
    }

    /// Hands an exchange to the stage without waiting: the Kafka path never blocks on the
    /// mirror. A full queue drops the exchange and counts it.
    pub fn observe(&self, exchange: ProduceExchange) {
        if self.tx.try_send(exchange).is_err() {
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
    routes: HashMap<String, Route>,
    metrics: Arc<Metrics>,
}

impl Stage {
    async fn run(self, mut rx: mpsc::Receiver<ProduceExchange>) {
        let mut last_warning: Option<Instant> = None;
        while let Some(exchange) = rx.recv().await {
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
        for topic in request.topics {
            let route = self.routes.get(&topic.name);
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
                match (route, verdict) {
                    (Some(route), Verdict::Accepted { .. } | Verdict::Unacknowledged) => {
                        self.mirror_partition(
                            route,
                            &topic_name,
                            partition.partition,
                            records,
                            verdict,
                        )
                        .await
                    }
                    _ => match summarize(&records) {
                        Ok(summary) => {
                            self.count_kafka(&topic_name, verdict, summary.records as u64)
                        }
                        Err(e) => {
                            self.decode_error(&topic_name, partition.partition, &e.to_string())
                        }
                    },
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
        let base_offset = match verdict {
            Verdict::Accepted { base_offset } => base_offset,
            _ => -1,
        };
        let open_shards = route.writer.state().open_shards();
        let mut total = 0u64;
        let mut skipped = 0u64;
        for record in batches
            .iter()
            .filter(|b| !b.is_control)
            .flat_map(|b| &b.records)
        {
            total += 1;
            // acks=0 gives no offsets; the position in the request stands in for them.
            let offset = if base_offset >= 0 {
                base_offset + record.index as i64
            } else {
                record.index as i64
            };
            if !is_sampled(
                sample_point(record.key.as_deref(), partition, offset),
                route.percent,
            ) {
                skipped += 1;
                continue;
            }
            let mirrored = MirrorRecord {
                topic: topic.clone(),
                partition,
                offset,
                key: kinesis_key(&route.partition_key, record, partition, open_shards),
                data: record.value.clone().unwrap_or_default(),
            };
            if route.writer.send(mirrored).await.is_err() {
                self.metrics
                    .mirror_records
                    .with_label_values(&[&**topic, route.stream.as_str(), "failed"])
                    .inc();
            }
        }
        self.count_kafka(topic, verdict, total);
        if skipped > 0 {
            self.metrics
                .mirror_records
                .with_label_values(&[&**topic, route.stream.as_str(), "skipped"])
                .inc_by(skipped);
        }
    }
}
