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
use crate::config::{MirrorRoute, PartitionKeyRule, WhenFull};
use crate::kinesis::test_support::writer_settings;
use crate::telemetry::inventory::{ClientKey, Inventory};
use crate::telemetry::metrics::Metrics;

const VERSION: i16 = 7;

/// The body of an acks=0 Produce v7 request of `records` keyed records to `topic`.
fn acks0_request(topic: &str, records: usize) -> Bytes {
    acks0_produce(topic, records, None)
}

/// [`acks0_request`], its batch transactional when `producer` (id, epoch) is given.
pub(super) fn acks0_produce(topic: &str, records: usize, producer: Option<(i64, i16)>) -> Bytes {
    let (producer_id, producer_epoch) = producer.unwrap_or((-1, -1));
    let records: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: producer.is_some(),
            control: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch,
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

/// A stage routing `orders` at `percent` to a writer whose Kinesis endpoint is unreachable,
/// its metrics, and its spool directory (kept while the test runs).
pub(super) async fn unreachable_mirror(percent: f64) -> (Mirror, Arc<Metrics>, tempfile::TempDir) {
    let spool = tempfile::tempdir().unwrap();
    let mut settings = writer_settings(
        spool.path(),
        1 << 30,
        WhenFull::Spill,
        Duration::from_secs(600),
    );
    settings.kinesis.endpoint_url = Some("http://127.0.0.1:9".into());
    let metrics = Arc::new(Metrics::new());
    let route = MirrorRoute {
        topic: "orders".into(),
        stream: "orders-stream".into(),
        percent,
        partition_key: PartitionKeyRule::Key,
    };
    let mirror = Mirror::start(
        &[route],
        settings,
        metrics.clone(),
        Arc::new(Inventory::default()),
    )
    .await;
    (mirror, metrics, spool)
}

#[tokio::test]
async fn exchanges_shed_from_a_full_queue_count_as_dropped_for_the_dual_write_ratio() {
    let (mirror, metrics, _spool) = unreachable_mirror(50.0).await;
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
