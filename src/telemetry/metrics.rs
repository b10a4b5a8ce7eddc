//! Prometheus metrics. The names are a public interface (dashboards and alerts depend on them),
//! so they are defined here in one place.

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use std::sync::OnceLock;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use prometheus::Histogram;

use super::dual_write::DualWriteRatio;
use super::topic_labels::TopicLabels;
use super::wal_metrics::WalMetrics;
use crate::config::DEFAULT_MAX_TOPIC_LABELS;

const PREFIX: &str = "kafka_kinesis_proxy";

/// Window of `dual_write_success_ratio`.
pub const DUAL_WRITE_WINDOW: Duration = Duration::from_secs(300);

/// Slots for per-API timers: every API key below this, plus one for unknown keys.
const API_SLOTS: usize = 128;

/// What happened to a record the mirror was responsible for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorResult {
    Sent,
    Failed,
    Skipped,
    Oversize,
    Spooled,
    DeadLetter,
    Dropped,
    /// Lost before sampling: the partition's data could not be decoded (estimated at the
    /// route's percent).
    Undecodable,
    /// Already mirrored: a producer's retry that Kafka acknowledged again with the same
    /// offsets.
    Duplicate,
    /// Produced in a transaction that aborted: `read_committed` consumers never see it.
    Aborted,
}

impl MirrorResult {
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorResult::Sent => "sent",
            MirrorResult::Failed => "failed",
            MirrorResult::Skipped => "skipped",
            MirrorResult::Oversize => "oversize",
            MirrorResult::Spooled => "spooled",
            MirrorResult::DeadLetter => "dead_letter",
            MirrorResult::Dropped => "dropped",
            MirrorResult::Undecodable => "undecodable",
            MirrorResult::Duplicate => "duplicate",
            MirrorResult::Aborted => "aborted",
        }
    }
}

/// The latency histograms of one API, resolved once so the hot path skips label lookups.
pub struct ApiTimers {
    /// Client-seen time: request read to response written.
    pub request: Histogram,
    /// The broker's part: request written upstream to response read.
    pub upstream: Histogram,
}

pub struct Metrics {
    registry: Registry,
    /// The `topic` label of per-topic series, bounded.
    pub topic_labels: TopicLabels,
    /// Records produced through the proxy, by Kafka's verdict (`ok` or `error`).
    pub kafka_records: IntCounterVec,
    /// Records produced with acks=0: Kafka gives no verdict, so they are mirrored on send.
    pub kafka_unacked_records: IntCounterVec,
    /// Mirror outcomes per record: sent, failed, skipped (not sampled), oversize, ...
    pub mirror_records: IntCounterVec,
    /// PutRecords attempts beyond the first (`retry`), and read-backs of requests of unknown
    /// fate, per entry (`ambiguous_found`, `ambiguous_resent`, `ambiguous_unreadable`).
    pub mirror_attempts: IntCounterVec,
    /// Produce data the mirror could not decode, per topic (the Kafka path is unaffected).
    pub mirror_decode_errors: IntCounterVec,
    pub mirror_percent: GaugeVec,
    /// 1 for each routed topic's mode in force (`mirror` or `kinesis-primary`).
    pub route_mode: IntGaugeVec,
    /// kinesis-primary: time a Produce response waited for Kinesis.
    pub primary_added: HistogramVec,
    /// kinesis-primary: partitions answered with an error because of Kinesis.
    pub primary_errors: IntCounterVec,
    /// Produce requests not mirrored because the mirror stage's queue was full.
    pub mirror_dropped_requests: IntCounter,
    /// 1 when the stream was described successfully, else 0.
    pub stream_healthy: IntGaugeVec,
    pub stream_probes: IntCounterVec,
    pub putrecords_duration: HistogramVec,
    pub shard_records: IntCounterVec,
    pub shard_map_mispredictions: IntCounterVec,
    pub connections: IntGaugeVec,
    /// Client connections refused at accept or cut by a limit, by reason.
    pub connections_refused: IntCounterVec,
    /// Request and response bytes all connections hold, against `listener.max_buffered_bytes`.
    pub buffered_bytes: IntGauge,
    pub config_reloads: IntCounterVec,
    /// 1, labelled with the hash of the config text in force.
    pub config_info: IntGaugeVec,
    /// 1 when the file on disk changed a section that needs a restart to apply.
    pub config_restart_required: IntGauge,
    pub dual_write: DualWriteRatio,
    /// Bytes of records queued in memory, against `mirror_buffer.max_bytes`.
    pub mirror_buffer_bytes: IntGauge,
    /// Records of transactions in progress, held until their EndTxn.
    pub mirror_transaction_held_records: IntGauge,
    pub spool_bytes: IntGaugeVec,
    /// The write-ahead log of Produce exchanges.
    pub wal: WalMetrics,
    /// Records given up on that wait for room in the dead-letter file, blocking their stream.
    pub dead_letters_waiting: IntGaugeVec,
    /// Kafka ack to Kinesis ack.
    pub mirror_lag: HistogramVec,
    pub shard_throttled: IntCounterVec,
    /// Each shard's current rate limit, records per second.
    pub shard_rate_limit_records_per_second: GaugeVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    api_timers: Vec<OnceLock<ApiTimers>>,
}

fn name(short: &str) -> String {
    format!("{PREFIX}_{short}")
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::with_topic_labels(DEFAULT_MAX_TOPIC_LABELS)
    }

    /// Metrics whose per-topic series label at most `max_topic_labels` unrouted topics.
    pub fn with_topic_labels(max_topic_labels: usize) -> Metrics {
        let registry = Registry::new();
        let counter = |short: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name(short), help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let kafka_records = counter(
            "kafka_records_total",
            "Records produced through the proxy, by Kafka's verdict.",
            &["topic", "result"],
        );
        let kafka_unacked_records = counter(
            "kafka_unacked_records_total",
            "Records produced with acks=0; Kafka gives no verdict, so they are mirrored on send.",
            &["topic"],
        );
        let mirror_records = counter(
            "mirror_records_total",
            "Records by mirror outcome: sent, failed, skipped (not sampled), oversize, spooled, dead_letter, dropped, duplicate.",
            &["topic", "stream", "result"],
        );
        let mirror_attempts = counter(
            "mirror_attempts_total",
            "Records sent again to Kinesis (retry), and what reading back requests of unknown fate found of their entries (ambiguous_found, ambiguous_resent, ambiguous_unreadable).",
            &["stream", "kind"],
        );
        let mirror_decode_errors = counter(
            "mirror_decode_errors_total",
            "Produce requests whose records the mirror could not decode (Kafka is unaffected).",
            &["topic"],
        );
        let shard_records = counter(
            "shard_records_total",
            "Records delivered to each shard.",
            &["stream", "shard"],
        );
        let shard_map_mispredictions = counter(
            "shard_map_mispredictions_total",
            "Records Kinesis put on another shard than the proxy's map predicted.",
            &["stream"],
        );
        let mirror_percent = GaugeVec::new(
            Opts::new(name("mirror_percent"), "Mirror percentage in force."),
            &["topic"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(mirror_percent.clone()))
            .expect("unique metric");
        let route_mode = IntGaugeVec::new(
            Opts::new(
                name("route_mode"),
                "1 for the mode in force for each routed topic (mirror or kinesis-primary).",
            ),
            &["topic", "mode"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(route_mode.clone()))
            .expect("unique metric");
        let primary_errors = counter(
            "primary_errors_total",
            "kinesis-primary partitions answered with a retriable error: timeout (REQUEST_TIMED_OUT) or kinesis_failed (KAFKA_STORAGE_ERROR).",
            &["topic", "error"],
        );
        let primary_added = HistogramVec::new(
            HistogramOpts::new(
                name("primary_added_seconds"),
                "kinesis-primary: time a Produce response waited for Kinesis after Kafka answered.",
            )
            .buckets(exponential_buckets(0.005, 2.0, 14).expect("valid buckets")),
            &["topic"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(primary_added.clone()))
            .expect("unique metric");
        let stream_healthy = IntGaugeVec::new(
            Opts::new(
                name("stream_healthy"),
                "1 when the stream's latest PutRecords or probe was answered, else 0 (see /readyz/mirror).",
            ),
            &["stream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(stream_healthy.clone()))
            .expect("unique metric");
        let stream_probes = IntCounterVec::new(
            Opts::new(
                name("stream_probes_total"),
                "Control-plane probes of a stream (DescribeStreamSummary), by outcome: ok, error, throttled, timeout.",
            ),
            &["stream", "outcome"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(stream_probes.clone()))
            .expect("unique metric");
        let mirror_dropped_requests = IntCounter::new(
            name("mirror_dropped_requests_total"),
            "Produce requests not mirrored because the mirror stage's queue was full.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(mirror_dropped_requests.clone()))
            .expect("unique metric");
        let config_reloads = counter(
            "config_reloads_total",
            "Config reloads, by result (ok or error).",
            &["result"],
        );
        let config_info = IntGaugeVec::new(
            Opts::new(
                name("config_info"),
                "1, labelled with the hash of the config in force.",
            ),
            &["hash"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(config_info.clone()))
            .expect("unique metric");
        let config_restart_required = IntGauge::new(
            name("config_restart_required"),
            "1 when the config file changed a section that needs a restart to apply.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(config_restart_required.clone()))
            .expect("unique metric");
        let dual_write_gauge = GaugeVec::new(
            Opts::new(
                name("dual_write_success_ratio"),
                "Over the last 5 minutes: records delivered to Kinesis / sampled records whose fate is decided.",
            ),
            &["topic"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(dual_write_gauge.clone()))
            .expect("unique metric");
        let latency = |short: &str, help: &str| {
            let h = HistogramVec::new(
                HistogramOpts::new(name(short), help)
                    .buckets(exponential_buckets(0.0001, 2.0, 18).expect("valid buckets")),
                &["api"],
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let request_duration = latency(
            "request_duration_seconds",
            "Client-seen request latency through the proxy, by API.",
        );
        let upstream_duration = latency(
            "upstream_duration_seconds",
            "Broker part of the request latency, by API.",
        );
        let mirror_buffer_bytes = IntGauge::new(
            name("mirror_buffer_bytes"),
            "Bytes of records queued in memory for Kinesis.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(mirror_buffer_bytes.clone()))
            .expect("unique metric");
        let mirror_transaction_held_records = IntGauge::new(
            name("mirror_transaction_held_records"),
            "Records of transactions in progress, held until their transaction ends.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(mirror_transaction_held_records.clone()))
            .expect("unique metric");
        let spool_bytes = IntGaugeVec::new(
            Opts::new(name("spool_bytes"), "Bytes waiting in each stream's spool."),
            &["stream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(spool_bytes.clone()))
            .expect("unique metric");
        let dead_letters_waiting = IntGaugeVec::new(
            Opts::new(
                name("dead_letters_waiting"),
                "Records given up on that wait for room in the dead-letter file; while above 0 the stream takes no new records.",
            ),
            &["stream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(dead_letters_waiting.clone()))
            .expect("unique metric");
        let mirror_lag = HistogramVec::new(
            HistogramOpts::new(
                name("mirror_lag_seconds"),
                "Time from the Kafka ack to the Kinesis ack.",
            )
            .buckets(exponential_buckets(0.005, 2.0, 18).expect("valid buckets")),
            &["stream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(mirror_lag.clone()))
            .expect("unique metric");
        let shard_throttled = counter(
            "shard_throttled_total",
            "Entries Kinesis throttled, per shard.",
            &["stream", "shard"],
        );
        let shard_rate_limit_records_per_second = GaugeVec::new(
            Opts::new(
                name("shard_rate_limit_records_per_second"),
                "Each shard's current rate limit, records per second.",
            ),
            &["stream", "shard"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(shard_rate_limit_records_per_second.clone()))
            .expect("unique metric");
        let connections = IntGaugeVec::new(
            Opts::new(name("connections"), "Open client connections."),
            &["listener"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(connections.clone()))
            .expect("unique metric");
        let connections_refused = counter(
            "connections_refused_total",
            "Client connections refused or cut by a listener limit, by reason.",
            &["reason"],
        );
        let buffered_bytes = IntGauge::new(
            name("buffered_bytes"),
            "Request and response bytes held by all connections (listener.max_buffered_bytes).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(buffered_bytes.clone()))
            .expect("unique metric");
        let putrecords_duration = HistogramVec::new(
            HistogramOpts::new(
                name("putrecords_duration_seconds"),
                "PutRecords call latency.",
            )
            .buckets(exponential_buckets(0.001, 2.0, 15).expect("valid buckets")),
            &["stream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(putrecords_duration.clone()))
            .expect("unique metric");
        let wal = WalMetrics::register(&registry, name);
        Metrics {
            registry,
            topic_labels: TopicLabels::new(max_topic_labels),
            kafka_records,
            kafka_unacked_records,
            mirror_records,
            mirror_attempts,
            mirror_decode_errors,
            mirror_percent,
            route_mode,
            primary_added,
            primary_errors,
            mirror_dropped_requests,
            stream_healthy,
            stream_probes,
            putrecords_duration,
            shard_records,
            shard_map_mispredictions,
            connections,
            connections_refused,
            buffered_bytes,
            config_reloads,
            config_info,
            config_restart_required,
            dual_write: DualWriteRatio::new(dual_write_gauge, DUAL_WRITE_WINDOW),
            mirror_buffer_bytes,
            mirror_transaction_held_records,
            spool_bytes,
            wal,
            dead_letters_waiting,
            mirror_lag,
            shard_throttled,
            shard_rate_limit_records_per_second,
            request_duration,
            upstream_duration,
            api_timers: (0..=API_SLOTS).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Bytes waiting in every stream's spool, as `spool_bytes` shows them.
    pub fn spool_bytes_total(&self) -> u64 {
        use prometheus::core::Collector;
        self.spool_bytes
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_gauge().value().max(0.0) as u64)
            .sum()
    }

    /// A client connection refused at accept, or cut by a listener limit, for `reason`.
    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused.with_label_values(&[reason]).inc();
    }

    /// The latency histograms for `api_key`.
    pub fn api_timers(&self, api_key: i16) -> &ApiTimers {
        let slot = usize::try_from(api_key)
            .ok()
            .filter(|k| *k < API_SLOTS)
            .unwrap_or(API_SLOTS);
        self.api_timers[slot].get_or_init(|| {
            let api = match ApiKey::try_from(api_key) {
                Ok(key) => format!("{key:?}"),
                Err(()) => "unknown".to_owned(),
            };
            ApiTimers {
                request: self.request_duration.with_label_values(&[&api]),
                upstream: self.upstream_duration.with_label_values(&[&api]),
            }
        })
    }

    /// Counts `n` records of `topic` mirrored to `stream` with `result`, and feeds the
    /// dual-write ratio with the ones whose fate is now decided.
    pub fn mirror_outcome(&self, topic: &str, stream: &str, result: MirrorResult, n: u64) {
        self.mirror_records
            .with_label_values(&[topic, stream, result.as_str()])
            .inc_by(n);
        match result {
            MirrorResult::Sent => self.dual_write.record(topic, n, 0),
            // Spooled records are not delivered now: counted as such, so that an outage that
            // spools everything shows as one instead of leaving the ratio without data. Replay
            // counts them again as sent when it delivers them.
            MirrorResult::Failed
            | MirrorResult::Oversize
            | MirrorResult::DeadLetter
            | MirrorResult::Dropped
            | MirrorResult::Undecodable
            | MirrorResult::Spooled => self.dual_write.record(topic, 0, n),
            // Not the mirror's to deliver (not sampled, or aborted), or decided by the first
            // copy.
            MirrorResult::Skipped | MirrorResult::Duplicate | MirrorResult::Aborted => {}
        }
    }

    /// The shard-labelled series of `shards` of `stream`, which have closed: a closed shard
    /// takes no more records, and its series would stay flat forever.
    pub fn forget_shards<'s>(&self, stream: &str, shards: impl IntoIterator<Item = &'s str>) {
        for shard in shards {
            let labels = [stream, shard];
            let _ = self.shard_records.remove_label_values(&labels);
            let _ = self.shard_throttled.remove_label_values(&labels);
            let _ = self
                .shard_rate_limit_records_per_second
                .remove_label_values(&labels);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("Prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
