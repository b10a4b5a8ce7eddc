//! Prometheus metrics. The names are a public interface (dashboards and alerts depend on them),
//! so they are defined here in one place.

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const PREFIX: &str = "kafka_kinesis_proxy";

pub struct Metrics {
    registry: Registry,
    /// Records produced through the proxy, by Kafka's verdict (`ok` or `error`).
    pub kafka_records: IntCounterVec,
    /// Records produced with acks=0: Kafka gives no verdict, so they are mirrored on send.
    pub kafka_unacked_records: IntCounterVec,
    /// Mirror outcomes per record: sent, failed, skipped (not sampled), oversize, retried.
    pub mirror_records: IntCounterVec,
    /// Produce data the mirror could not decode, per topic (the Kafka path is unaffected).
    pub mirror_decode_errors: IntCounterVec,
    pub mirror_percent: GaugeVec,
    /// Produce requests not mirrored because the mirror stage's queue was full.
    pub mirror_dropped_requests: IntCounter,
    /// 1 when the stream was described successfully, else 0.
    pub stream_healthy: IntGaugeVec,
    pub putrecords_duration: HistogramVec,
    pub shard_records: IntCounterVec,
    pub shard_map_mispredictions: IntCounterVec,
    pub connections: IntGaugeVec,
}

fn name(short: &str) -> String {
    format!("{PREFIX}_{short}")
}

impl Metrics {
    pub fn new() -> Metrics {
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
            "Records by mirror outcome: sent, failed, skipped (not sampled), oversize, retried.",
            &["topic", "stream", "result"],
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
        let stream_healthy = IntGaugeVec::new(
            Opts::new(
                name("stream_healthy"),
                "1 when the stream was described successfully, else 0.",
            ),
            &["stream"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(stream_healthy.clone()))
            .expect("unique metric");
        let mirror_dropped_requests = IntCounter::new(
            name("mirror_dropped_requests_total"),
            "Produce requests not mirrored because the mirror stage's queue was full.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(mirror_dropped_requests.clone()))
            .expect("unique metric");
        let connections = IntGaugeVec::new(
            Opts::new(name("connections"), "Open client connections."),
            &["listener"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(connections.clone()))
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
        Metrics {
            registry,
            kafka_records,
            kafka_unacked_records,
            mirror_records,
            mirror_decode_errors,
            mirror_percent,
            mirror_dropped_requests,
            stream_healthy,
            putrecords_duration,
            shard_records,
            shard_map_mispredictions,
            connections,
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
