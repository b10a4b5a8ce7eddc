//! The stage's accounting of what it could not mirror, with a real stage and writer whose
//! Kinesis endpoint is unreachable (nothing here needs delivery).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::{Mirror, ProduceExchange, EXCHANGE_QUEUE};
use crate::config::{MirrorRoute, PartitionKeyRule, StreamTarget, WhenFull};
use crate::kinesis::test_support::writer_settings;
use crate::telemetry::inventory::{ClientKey, Inventory};
use crate::telemetry::metrics::Metrics;

const VERSION: i16 = 7;

/// The body of an acks=0 Produce v7 request of `records` keyed records to `topic`.
fn acks0_request(topic: &str, records: usize) -> Bytes {
    let records: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 0,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from_static(b"value")),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut batch = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut batch,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    let request =
        ProduceRequest::default()
            .with_acks(0)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch.freeze()))])]);
    let mut body = BytesMut::new();
    request.encode(&mut body, VERSION).unwrap();
    body.freeze()
}

/// Writer settings whose Kinesis never answers, with a spool in `spool`.
fn unreachable_kinesis(spool: &std::path::Path) -> crate::kinesis::writer::WriterSettings {
    let mut settings = writer_settings(spool, 1 << 30, WhenFull::Spill, Duration::from_secs(600));
    settings.kinesis.endpoint_url = Some("http://127.0.0.1:9".into());
    settings
}

#[tokio::test]
async fn exchanges_shed_from_a_full_queue_count_as_dropped_for_the_dual_write_ratio() {
    let spool = tempfile::tempdir().unwrap();
    let settings = unreachable_kinesis(spool.path());
    let metrics = Arc::new(Metrics::new());
    let route = MirrorRoute {
        topic: "orders".into(),
        target: StreamTarget::new("orders-stream", None, None).unwrap(),
        percent: 50.0,
        partition_key: PartitionKeyRule::Key,
    };
    let mirror = Mirror::start(
        &[route],
        settings,
        metrics.clone(),
        Arc::new(Inventory::default()),
    )
    .await;
    let client = Arc::new(ClientKey {
        client_id: "shed-test".into(),
        address: [127, 0, 0, 1].into(),
    });
    let body = acks0_request("orders", 10);
    // On this single-threaded runtime the stage cannot run between these hand-overs, so the
    // queue fills and the last exchanges are shed, deterministically.
    let shed = 3;
    for _ in 0..EXCHANGE_QUEUE + shed {
        mirror
            .hand_over(ProduceExchange {
                client: client.clone(),
                version: VERSION,
                request_body: body.clone(),
                response_frame: None,
            })
            .await;
    }
    assert_eq!(metrics.mirror_dropped_requests.get(), shed as u64);
    let dropped = metrics
        .mirror_records
        .with_label_values(&["orders", "orders-stream", "dropped"])
        .get();
    assert_eq!(dropped, (shed * 10 / 2) as u64, "10 records each, at 50%");
    assert_eq!(
        metrics.dual_write.ratio("orders"),
        Some(0.0),
        "nothing delivered, the shed records decided: the ratio shows the loss"
    );
}

#[test]
fn spooled_records_show_an_outage_in_the_ratio_until_replay_delivers_them() {
    let metrics = Metrics::new();
    use crate::telemetry::metrics::MirrorResult;
    metrics.mirror_outcome("t", "s", MirrorResult::Spooled, 30);
    assert_eq!(metrics.dual_write.ratio("t"), Some(0.0));
    metrics.mirror_outcome("t", "s", MirrorResult::Sent, 30);
    assert_eq!(metrics.dual_write.ratio("t"), Some(0.5));
}

#[tokio::test]
async fn a_reload_repoints_a_topic_to_another_region_and_to_an_arn_each_with_its_own_writer() {
    let spool = tempfile::tempdir().unwrap();
    let settings = unreachable_kinesis(spool.path());
    let route = |stream: &str, region: Option<&str>| MirrorRoute {
        topic: "orders".into(),
        target: StreamTarget::new(stream, region, None).unwrap(),
        percent: 100.0,
        partition_key: PartitionKeyRule::Key,
    };
    let arn = "arn:aws:kinesis:ap-south-1:123456789012:stream/orders-stream";
    let mirror = Mirror::start(
        &[route("orders-stream", None)],
        settings,
        Arc::new(Metrics::new()),
        Arc::new(Inventory::default()),
    )
    .await;
    let in_force = |mirror: &Mirror| mirror.routes()["orders"].stream.clone();
    assert_eq!(in_force(&mirror), "orders-stream");
    mirror
        .apply_routes(&[route("orders-stream", Some("eu-west-1"))])
        .await;
    assert_eq!(in_force(&mirror), "orders-stream in eu-west-1");
    mirror.apply_routes(&[route(arn, None)]).await;
    assert_eq!(in_force(&mirror), arn);
    let mut streams: Vec<String> = mirror
        .streams()
        .await
        .iter()
        .map(|s| s.stream.clone())
        .collect();
    streams.sort();
    assert_eq!(
        streams,
        [arn, "orders-stream", "orders-stream in eu-west-1"],
        "a writer each: the same name in another region is another stream"
    );
}
