//! Realistic inputs shared by the micro-benchmarks: 1 KiB JSON-like record values, v2 record
//! batches in every codec (encoded by kafka-protocol, as a Java or librdkafka producer would
//! write them), and whole Produce request frames.
#![allow(dead_code)]

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, RequestHeader, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// Size of one record value.
pub const VALUE_BYTES: usize = 1024;

/// Produce version the benches encode: v9 is the first flexible version and what current Java
/// clients and librdkafka negotiate with a 2.x+ broker (or lower), so it is a realistic middle.
pub const PRODUCE_VERSION: i16 = 9;

/// The codecs Kafka supports, with the names the bench ids use.
pub const CODECS: [(&str, Compression); 5] = [
    ("none", Compression::None),
    ("gzip", Compression::Gzip),
    ("snappy", Compression::Snappy),
    ("lz4", Compression::Lz4),
    ("zstd", Compression::Zstd),
];

/// Deterministic xorshift, so every run benchmarks the same bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// A record key like an order or user id (16 bytes of ASCII).
pub fn key(i: u64) -> Bytes {
    Bytes::from(format!("order-{i:010}"))
}

/// A 1 KiB JSON-like event: field names repeat and numbers vary, so it compresses about as
/// well as real event payloads do (roughly 3-5x), not like zeros or random noise.
pub fn value(rng: &mut Rng) -> Bytes {
    let mut s = String::with_capacity(VALUE_BYTES + 64);
    let mut n = 0u32;
    while s.len() < VALUE_BYTES {
        let r = rng.next();
        s.push_str(&format!(
            "{{\"event\":\"{}\",\"seq\":{},\"user\":\"u{:06}\",\"amount\":{}.{:02},\"ok\":{}}},",
            ["click", "view", "purchase", "refund"][(r & 3) as usize],
            n,
            (r >> 8) % 1_000_000,
            (r >> 28) % 10_000,
            (r >> 44) % 100,
            r & 1 == 0
        ));
        n += 1;
    }
    s.truncate(VALUE_BYTES);
    Bytes::from(s)
}

/// `count` records with keys starting at `first_key`.
pub fn records(count: usize, first_key: u64, rng: &mut Rng) -> Vec<Record> {
    (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(key(first_key + i as u64)),
            value: Some(value(rng)),
            headers: Default::default(),
        })
        .collect()
}

/// One v2 record batch holding `records`.
pub fn batch(records: &[Record], compression: Compression) -> Bytes {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode record batch");
    buf.freeze()
}

/// Key and value bytes in `records` (the payload a decoder hands out).
pub fn payload_bytes(records: &[Record]) -> u64 {
    records
        .iter()
        .map(|r| r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len()))
        .sum::<usize>() as u64
}

/// A Produce request as a producer with `linger` batching sends it: one topic, `partitions`
/// partitions, each holding one batch of `per_partition` records.
pub struct ProduceInput {
    /// The body after the request header.
    pub body: Bytes,
    /// The whole frame: size prefix, request header v2, body.
    pub frame: Bytes,
    /// Records in the request.
    pub records: u64,
    /// Uncompressed key + value bytes in the request.
    pub payload: u64,
}

pub fn produce(compression: Compression, partitions: i32, per_partition: usize) -> ProduceInput {
    let mut rng = Rng::new(7);
    let mut payload = 0;
    let partition_data = (0..partitions)
        .map(|p| {
            let recs = records(per_partition, p as u64 * 1_000_000, &mut rng);
            payload += payload_bytes(&recs);
            PartitionProduceData::default()
                .with_index(p)
                .with_records(Some(batch(&recs, compression)))
        })
        .collect();
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("bench")))
            .with_partition_data(partition_data)]);
    let mut body = BytesMut::new();
    request
        .encode(&mut body, PRODUCE_VERSION)
        .expect("encode produce");
    let body = body.freeze();
    let header = RequestHeader::default()
        .with_request_api_key(0)
        .with_request_api_version(PRODUCE_VERSION)
        .with_correlation_id(42)
        .with_client_id(Some(StrBytes::from_static_str("rdkafka-bench-producer")));
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    header.encode(&mut frame, 2).expect("encode header");
    frame.extend_from_slice(&body);
    let frame = kafka_kinesis_proxy::kafka::frame::seal(frame);
    ProduceInput {
        body,
        frame,
        records: partitions as u64 * per_partition as u64,
        payload,
    }
}

/// A small request frame (Metadata v12 for one topic), the other common kind on the wire.
pub fn metadata_frame() -> Bytes {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::MetadataRequest;
    let request = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("bench"))))]));
    let header = RequestHeader::default()
        .with_request_api_key(3)
        .with_request_api_version(12)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("rdkafka-bench-producer")));
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    header.encode(&mut frame, 2).expect("encode header");
    request.encode(&mut frame, 12).expect("encode metadata");
    kafka_kinesis_proxy::kafka::frame::seal(frame)
}

/// `criterion_main!` with one difference: under `cargo test --all-targets -- --test-threads 2`
/// (this crate's CI) a harness=false bench gets libtest's arguments, which Criterion's parser
/// rejects. Without `--bench` (that is, outside `cargo bench`) the bench re-runs itself with
/// just `--test`, Criterion's run-each-case-once mode, and exits with its status.
pub fn criterion_main(groups: &[fn()]) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let is_bench_or_test = args.iter().any(|a| a == "--bench" || a == "--test");
    if !is_bench_or_test {
        let exe = std::env::current_exe().expect("current exe");
        let status = std::process::Command::new(exe)
            .arg("--test")
            .status()
            .expect("re-run the bench in test mode");
        std::process::exit(status.code().unwrap_or(1));
    }
    for group in groups {
        group();
    }
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
