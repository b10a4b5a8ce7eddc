//! Writes the seed corpus: a few small, valid inputs per fuzz target, built with the same
//! encoders as the targets and with kafka-protocol's message encoders.
//!
//!     cd fuzz && cargo run --example gen_corpus    # writes corpus/<target>/seed-*
//!
//! Seeds are named `seed-*` so they are told apart from what fuzzing adds (content-hash names).

use std::fs;
use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_kinesis_proxy::kafka::message::Response;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::fetch_response::NodeEndpoint as FetchNodeEndpoint;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::NodeEndpoint;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, DescribeClusterResponse, FetchResponse,
    FindCoordinatorResponse, MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader, ResponseKind, TopicName, TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kkp_fuzz::{
    compress, encode_v2_records, legacy_message, v2_batch, FuzzRecord, SnappyFraming, V2Fields,
};

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

fn records(n: usize) -> Vec<FuzzRecord> {
    (0..n)
        .map(|i| FuzzRecord {
            attributes: 0,
            timestamp_delta: i as i64,
            offset_delta: i as i32,
            key: Some(format!("key-{i}").into_bytes()),
            value: if i == 1 {
                None
            } else {
                Some(format!("value {i} value {i} value {i}").into_bytes())
            },
            headers: if i == 0 {
                vec![("h".into(), Some(b"v".to_vec())), ("n".into(), None)]
            } else {
                vec![]
            },
        })
        .collect()
}

const CODECS: [(&str, u8); 5] = [
    ("none", 0),
    ("gzip", 1),
    ("snappy", 2),
    ("lz4", 3),
    ("zstd", 4),
];

/// A v2 batch of `n` records with codec `id`.
fn batch(id: u8, n: usize, snappy: SnappyFraming, producer_id: i64) -> Vec<u8> {
    let section = encode_v2_records(&records(n));
    let payload = compress(id, &section, snappy);
    let fields = V2Fields {
        base_offset: 0,
        partition_leader_epoch: -1,
        last_offset_delta: n as i32 - 1,
        base_timestamp: 1_700_000_000_000,
        max_timestamp: 1_700_000_000_000 + n as i64,
        producer_id,
        producer_epoch: if producer_id < 0 { -1 } else { 0 },
        base_sequence: if producer_id < 0 { -1 } else { 0 },
    };
    v2_batch(&fields, i16::from(id), n as i32, &payload)
}

/// A legacy message set: a wrapper of `n` inner messages (codec `id`), or `n` plain messages.
fn legacy(magic: i8, id: u8, n: usize) -> Vec<u8> {
    let mut inner = Vec::new();
    for (i, r) in records(n).iter().enumerate() {
        let offset = if magic == 1 && id != 0 {
            i as i64
        } else {
            10 + i as i64
        };
        inner.extend(legacy_message(
            offset,
            magic,
            0,
            1_600_000_000_000,
            r.key.as_deref(),
            r.value.as_deref(),
        ));
    }
    if id == 0 {
        return inner;
    }
    let payload = compress(id, &inner, SnappyFraming::Xerial { block: 32 * 1024 });
    legacy_message(12, magic, id as i8, 1_600_000_000_000, None, Some(&payload))
}

fn request_frame(version: i16, body: &[u8]) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("seed")));
    let mut buf = BytesMut::from(&[0u8; 4][..]);
    header
        .encode(&mut buf, ApiKey::Produce.request_header_version(version))
        .unwrap();
    buf.extend_from_slice(body);
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    buf.to_vec()
}

/// Produce v0..=2 body, encoded by hand (kafka-protocol starts at v3).
fn produce_legacy_body(records: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_i16(1); // acks
    b.put_i32(5000);
    b.put_i32(1);
    b.put_i16(5);
    b.extend_from_slice(b"topic");
    b.put_i32(1);
    b.put_i32(0);
    b.put_i32(records.len() as i32);
    b.extend_from_slice(records);
    b
}

fn produce_body(version: i16, records: Vec<u8>) -> Vec<u8> {
    let mut topic = if version >= 13 {
        // kafka-protocol has no setter for the v13 topic id: decode one.
        let mut raw = vec![7u8; 16];
        raw.extend_from_slice(&[1, 0]);
        TopicProduceData::decode(&mut Bytes::from(raw), 13).unwrap()
    } else {
        TopicProduceData::default().with_name(TopicName(StrBytes::from_static_str("topic")))
    };
    topic = topic.with_partition_data(vec![PartitionProduceData::default()
        .with_index(3)
        .with_records(Some(Bytes::from(records)))]);
    let request = ProduceRequest::default()
        .with_transactional_id(if version >= 3 {
            Some(TransactionalId(StrBytes::from_static_str("tx")))
        } else {
            None
        })
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![topic]);
    let mut buf = BytesMut::new();
    request.encode(&mut buf, version).unwrap();
    buf.to_vec()
}

fn response(api_key: ApiKey, version: i16, body: ResponseKind) -> Vec<u8> {
    let frame = Response {
        header: ResponseHeader::default().with_correlation_id(11),
        body,
    }
    .encode(api_key, version)
    .unwrap();
    let index = [
        ApiKey::Metadata,
        ApiKey::FindCoordinator,
        ApiKey::DescribeCluster,
        ApiKey::ApiVersions,
        ApiKey::Produce,
        ApiKey::Fetch,
    ]
    .iter()
    .position(|k| *k == api_key)
    .unwrap();
    let mut out = vec![index as u8, (version - api_key.valid_versions().min) as u8];
    out.extend_from_slice(&frame[4..]);
    out
}

fn main() {
    // record_batches: every codec in v2 (snappy both ways), legacy magic 0 and 1, several
    // batches in a row, an idempotent batch.
    for (name, id) in CODECS {
        write(
            "record_batches",
            &format!("v2-{name}"),
            &batch(id, 3, SnappyFraming::Xerial { block: 64 }, -1),
        );
    }
    write(
        "record_batches",
        "v2-snappy-raw",
        &batch(2, 3, SnappyFraming::Raw, -1),
    );
    write(
        "record_batches",
        "v2-idempotent",
        &batch(0, 2, SnappyFraming::Raw, 42),
    );
    let mut two = batch(0, 1, SnappyFraming::Raw, -1);
    two.extend(batch(1, 2, SnappyFraming::Raw, -1));
    write("record_batches", "v2-two-batches", &two);
    for magic in [0i8, 1] {
        for (name, id) in &CODECS[..4] {
            write(
                "record_batches",
                &format!("magic{magic}-{name}"),
                &legacy(magic, *id, 2),
            );
        }
    }

    // produce_request: whole frames at old, middle, flexible and topic-id versions.
    write(
        "produce_request",
        "v0-magic0",
        &request_frame(0, &produce_legacy_body(&legacy(0, 0, 2))),
    );
    write(
        "produce_request",
        "v2-magic1-gzip",
        &request_frame(2, &produce_legacy_body(&legacy(1, 1, 2))),
    );
    for (version, id) in [(3i16, 0u8), (7, 2), (9, 3), (12, 4), (13, 1)] {
        let body = produce_body(version, batch(id, 2, SnappyFraming::Raw, -1));
        write(
            "produce_request",
            &format!("v{version}"),
            &request_frame(version, &body),
        );
    }

    // frame_header: limit byte (4 = 1 KiB), chunk byte, then a stream of request frames.
    let mut stream = vec![4u8, 5];
    stream.extend(request_frame(
        9,
        &produce_body(9, batch(0, 1, SnappyFraming::Raw, -1)),
    ));
    let mut metadata = BytesMut::from(&[0u8; 4][..]);
    RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(12)
        .with_correlation_id(8)
        .with_client_id(Some(StrBytes::from_static_str("c")))
        .encode(&mut metadata, ApiKey::Metadata.request_header_version(12))
        .unwrap();
    metadata.extend_from_slice(&[2, 0, 0, 0]);
    let size = (metadata.len() - 4) as i32;
    metadata[..4].copy_from_slice(&size.to_be_bytes());
    stream.extend_from_slice(&metadata);
    write("frame_header", "produce-metadata", &stream);
    let mut v0 = vec![5u8, 16];
    v0.extend_from_slice(&[0, 0, 0, 8, 0, 18, 0, 0, 0, 0, 0, 1]); // ApiVersions v0
    write("frame_header", "api-versions-v0", &v0);

    // response_rewrite: each API at a few versions, with brokers to rewrite.
    let host = |s: &'static str| StrBytes::from_static_str(s);
    for version in [0i16, 1, 4, 9, 12, 13] {
        let body = MetadataResponse::default()
            .with_brokers(vec![
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(1))
                    .with_host(host("kafka-1"))
                    .with_port(9092),
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(2))
                    .with_host(host("kafka-2"))
                    .with_port(9093),
            ])
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(TopicName(host("t"))))
                .with_partitions(vec![MetadataResponsePartition::default()
                    .with_leader_id(BrokerId(1))
                    .with_replica_nodes(vec![BrokerId(1), BrokerId(2)])
                    .with_isr_nodes(vec![BrokerId(1)])])]);
        write(
            "response_rewrite",
            &format!("metadata-v{version}"),
            &response(ApiKey::Metadata, version, ResponseKind::Metadata(body)),
        );
    }
    for version in [0i16, 3] {
        let body = FindCoordinatorResponse::default()
            .with_node_id(BrokerId(3))
            .with_host(host("kafka-3"))
            .with_port(9094);
        write(
            "response_rewrite",
            &format!("find-coordinator-v{version}"),
            &response(
                ApiKey::FindCoordinator,
                version,
                ResponseKind::FindCoordinator(body),
            ),
        );
    }
    let body = FindCoordinatorResponse::default().with_coordinators(vec![
        Coordinator::default()
            .with_key(host("g1"))
            .with_node_id(BrokerId(4))
            .with_host(host("kafka-4"))
            .with_port(1),
        Coordinator::default()
            .with_key(host("g2"))
            .with_error_code(15)
            .with_node_id(BrokerId(-1))
            .with_port(-1),
    ]);
    write(
        "response_rewrite",
        "find-coordinator-v4",
        &response(
            ApiKey::FindCoordinator,
            4,
            ResponseKind::FindCoordinator(body),
        ),
    );
    for version in [0i16, 1] {
        let body =
            DescribeClusterResponse::default().with_brokers(vec![DescribeClusterBroker::default()
                .with_broker_id(BrokerId(7))
                .with_host(host("kafka-7"))
                .with_port(9092)]);
        write(
            "response_rewrite",
            &format!("describe-cluster-v{version}"),
            &response(
                ApiKey::DescribeCluster,
                version,
                ResponseKind::DescribeCluster(body),
            ),
        );
    }
    for version in [0i16, 3] {
        let entry = |k: ApiKey, max: i16| {
            ApiVersion::default()
                .with_api_key(k as i16)
                .with_min_version(0)
                .with_max_version(max)
        };
        let body = ApiVersionsResponse::default().with_api_keys(vec![
            entry(ApiKey::Produce, 99),
            entry(ApiKey::Metadata, 99),
            entry(ApiKey::Fetch, 5),
            entry(ApiKey::OffsetCommit, 9),
        ]);
        write(
            "response_rewrite",
            &format!("api-versions-v{version}"),
            &response(
                ApiKey::ApiVersions,
                version,
                ResponseKind::ApiVersions(body),
            ),
        );
    }
    let body = ProduceResponse::default().with_node_endpoints(vec![NodeEndpoint::default()
        .with_node_id(BrokerId(2))
        .with_host(host("kafka-2"))
        .with_port(9092)]);
    write(
        "response_rewrite",
        "produce-v11",
        &response(ApiKey::Produce, 11, ResponseKind::Produce(body)),
    );
    let body = FetchResponse::default().with_node_endpoints(vec![FetchNodeEndpoint::default()
        .with_node_id(BrokerId(5))
        .with_host(host("kafka-5"))
        .with_port(9092)]);
    write(
        "response_rewrite",
        "fetch-v16",
        &response(ApiKey::Fetch, 16, ResponseKind::Fetch(body)),
    );
}
