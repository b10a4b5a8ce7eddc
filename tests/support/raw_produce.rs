//! Produce requests built by hand, for tests that need exact control over what reaches the
//! proxy and Kafka (a corrupt CRC, invalid acks, a socket reset at a chosen moment).

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw Produce v7 request: `records` (keys and values) for one partition, as one batch unless
/// `batch_per_record`.
pub struct RawProduce<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub acks: i16,
    /// -1 for a plain batch; otherwise an idempotent batch from this producer id, epoch 0,
    /// first sequence 5.
    pub producer_id: i64,
    /// Flip the batch's last byte after sealing it, so its CRC no longer matches.
    pub corrupt_crc: bool,
    /// Each record in a batch of its own, instead of one batch for all.
    pub batch_per_record: bool,
    pub records: Vec<(String, Vec<u8>)>,
}

impl RawProduce<'_> {
    /// The Produce version of every frame built here.
    pub const VERSION: i16 = 7;

    pub fn new(topic: &str, records: Vec<(String, Vec<u8>)>) -> RawProduce<'_> {
        RawProduce {
            topic,
            partition: 0,
            acks: -1,
            producer_id: -1,
            corrupt_crc: false,
            batch_per_record: false,
            records,
        }
    }

    /// The request frame, size prefix included, with correlation id 1.
    pub fn frame(&self) -> Bytes {
        produce_frame(self.topic, self.partition, self.acks, self.batch())
    }

    /// The partition's record batch (or batches) alone.
    pub fn batch(&self) -> Bytes {
        let producer_id = self.producer_id;
        let per_record = self.batch_per_record;
        let records: Vec<Record> = self
            .records
            .iter()
            .enumerate()
            .map(|(i, (key, value))| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id,
                producer_epoch: if producer_id < 0 { -1 } else { 0 },
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder starts a new batch where offset - sequence changes, and takes the
                // batch's base sequence from its first record: -1 for no producer id.
                sequence: match (producer_id < 0, per_record) {
                    (true, false) => i as i32 - 1,
                    (true, true) => -1,
                    (false, false) => 5 + i as i32,
                    (false, true) => panic!("batch_per_record is for plain batches"),
                },
                timestamp: 0,
                key: Some(Bytes::copy_from_slice(key.as_bytes())),
                value: Some(Bytes::copy_from_slice(value)),
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
        if self.corrupt_crc {
            // The last byte belongs to the last record, which the CRC covers.
            let last = batch.len() - 1;
            batch[last] ^= 0xff;
        }
        batch.freeze()
    }
}

/// A Produce v7 request frame (size prefix included, correlation id 1) carrying `records`, as
/// they are, to `partition` of `topic`.
pub fn produce_frame(topic: &str, partition: i32, acks: i16, records: Bytes) -> Bytes {
    produce_frame_of(acks, &[(topic, partition, records)])
}

/// A Produce v7 request frame like [`produce_frame`], for several topics and partitions, in
/// the order given (a topic's partitions must be adjacent).
pub fn produce_frame_of(acks: i16, partitions: &[(&str, i32, Bytes)]) -> Bytes {
    let version = RawProduce::VERSION;
    let mut topics: Vec<TopicProduceData> = Vec::new();
    for (topic, partition, records) in partitions {
        let data = PartitionProduceData::default()
            .with_index(*partition)
            .with_records(Some(records.clone()));
        match topics.last_mut() {
            Some(last) if *last.name.0 == **topic => last.partition_data.push(data),
            _ => topics.push(
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string((*topic).to_owned())))
                    .with_partition_data(vec![data]),
            ),
        }
    }
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(topics);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("raw-test")));
    let mut frame = BytesMut::from(&[0u8; 4][..]);
    header
        .encode(&mut frame, ApiKey::Produce.request_header_version(version))
        .unwrap();
    request.encode(&mut frame, version).unwrap();
    let size = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    frame.freeze()
}

/// Sends a Produce `frame` built here on `conn` and decodes its response.
pub async fn send(conn: &mut TcpStream, frame: &Bytes) -> ProduceResponse {
    conn.write_all(frame).await.unwrap();
    let size = conn.read_i32().await.expect("a Produce response");
    let mut body = vec![0u8; size as usize];
    conn.read_exact(&mut body).await.unwrap();
    let mut body = Bytes::from(body);
    let version = RawProduce::VERSION;
    ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(version)).unwrap();
    ProduceResponse::decode(&mut body, version).unwrap()
}
