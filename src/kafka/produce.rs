//! Decoding of Produce (API key 0) request and response bodies, versions 0..=13.
//!
//! `body` is always the message body *after* the request/response header. The decoders keep the
//! partitions' record bytes as zero-copy slices of `body`; decode them with
//! [`crate::kafka::records`].
//!
//! This is a hand-written decoder for every version rather than a delegation to
//! `kafka_protocol::messages::{ProduceRequest, ProduceResponse}` for v3+: those decoders
//! pre-allocate arrays from the untrusted element count (`Vec::with_capacity(n)`), so a 12-byte
//! body claiming 2^31 topics aborts the whole process with a failed ~200 GB allocation. Here
//! allocations are bounded by the input size, and any malformed input is a
//! [`ProduceDecodeError`]. The tests check this decoder against kafka-protocol's encoders for
//! every version 3..=13.
//!
//! Version 13 identifies topics by id instead of name: for v13 `name` is empty and `topic_id`
//! holds the 16 id bytes (Kafka prints these as URL-safe base64; [`topic_id_hex`] gives hex).
//! For v0..=12 `topic_id` is `None`.

use bytes::{Buf, Bytes};

/// Lowest Produce version decoded here.
pub const MIN_VERSION: i16 = 0;
/// Highest Produce version decoded here.
pub const MAX_VERSION: i16 = 13;
/// Versions from this one on use the flexible (compact, tagged-field) encoding.
const FIRST_FLEXIBLE_VERSION: i16 = 9;
/// Versions from this one on carry a transactional id.
const FIRST_TRANSACTIONAL_VERSION: i16 = 3;
/// Versions from this one on identify topics by id.
const FIRST_TOPIC_ID_VERSION: i16 = 13;
/// Pre-allocation cap for arrays; bigger arrays grow as their elements actually decode.
const MAX_PREALLOCATED: usize = 1024;

/// A decoded Produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceRequestView {
    pub version: i16,
    /// `None` before v3 and for non-transactional producers.
    pub transactional_id: Option<String>,
    pub acks: i16,
    pub timeout_ms: i32,
    pub topics: Vec<TopicProduceData>,
}

/// One topic of a Produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicProduceData {
    /// Topic name; empty for v13, which sends `topic_id` instead.
    pub name: String,
    /// Topic id (v13+ only; `None` for v0..=12).
    pub topic_id: Option<[u8; 16]>,
    pub partitions: Vec<PartitionProduceData>,
}

/// One partition of a Produce request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProduceData {
    pub partition: i32,
    /// Raw record batches (v2) or message set (v0/v1), a slice of the request body.
    pub records: Option<Bytes>,
}

/// A decoded Produce response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceResponseView {
    pub version: i16,
    pub topics: Vec<TopicProduceResult>,
    /// 0 for v0, which has no throttle time.
    pub throttle_time_ms: i32,
}

/// One topic of a Produce response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicProduceResult {
    /// Topic name; empty for v13, which sends `topic_id` instead.
    pub name: String,
    /// Topic id (v13+ only; `None` for v0..=12).
    pub topic_id: Option<[u8; 16]>,
    pub partitions: Vec<PartitionProduceResult>,
}

/// One partition of a Produce response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProduceResult {
    pub partition: i32,
    /// 0 when Kafka accepted the partition's records.
    pub error_code: i16,
    /// Offset assigned to the partition's first record; record `index` i got `base_offset + i`.
    pub base_offset: i64,
    /// -1 unless the topic uses LogAppendTime (and always -1 before v2).
    pub log_append_time_ms: i64,
    /// -1 before v5.
    pub log_start_offset: i64,
    /// Per-record errors (v8+) that caused the batch to be rejected.
    pub record_errors: Vec<RecordError>,
    /// Partition-level error message (v8+).
    pub error_message: Option<String>,
}

/// A per-record error in a Produce response (v8+, Kafka's `BatchIndexAndErrorMessage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// Index of the offending record within the produced partition data.
    pub batch_index: i32,
    pub message: Option<String>,
}

/// What was wrong with a Produce body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceDecodeError {
    #[error("unsupported Produce version {0} (supported: {MIN_VERSION}..={MAX_VERSION})")]
    UnsupportedVersion(i16),
    #[error("Produce body truncated at `{field}` (byte {position}): needed {needed} bytes, {remaining} remain")]
    Truncated {
        field: &'static str,
        position: usize,
        needed: usize,
        remaining: usize,
    },
    #[error("invalid `{field}` in Produce body (byte {position}): {reason}")]
    Invalid {
        field: &'static str,
        position: usize,
        reason: String,
    },
    #[error("`{field}` in Produce body (byte {position}) is not valid UTF-8")]
    InvalidUtf8 {
        field: &'static str,
        position: usize,
    },
    #[error("{remaining} unexpected trailing bytes after the Produce body (byte {position})")]
    TrailingBytes { position: usize, remaining: usize },
}

type Result<T, E = ProduceDecodeError> = std::result::Result<T, E>;

fn check_version(version: i16) -> Result<()> {
    if (MIN_VERSION..=MAX_VERSION).contains(&version) {
        Ok(())
    } else {
        Err(ProduceDecodeError::UnsupportedVersion(version))
    }
}

/// Hex form of a v13 topic id (32 lower-case hex digits).
pub fn topic_id_hex(topic_id: &[u8; 16]) -> String {
    hex::encode(topic_id)
}

impl ProduceRequestView {
    /// Decode a Produce request body of the given version.
    pub fn decode(version: i16, body: Bytes) -> Result<Self> {
        check_version(version)?;
        let mut r = Reader::new(body, version >= FIRST_FLEXIBLE_VERSION);
        let transactional_id = if version >= FIRST_TRANSACTIONAL_VERSION {
            r.nullable_string("transactional_id")?
        } else {
            None
        };
        let acks = r.i16("acks")?;
        let timeout_ms = r.i32("timeout_ms")?;
        let topic_count = r.array_len("topics")?;
        let mut topics = Vec::with_capacity(topic_count.min(MAX_PREALLOCATED));
        for _ in 0..topic_count {
            let (name, topic_id) =
                r.topic_name_or_id(version, "topics[].name", "topics[].topic_id")?;
            let partition_count = r.array_len("topics[].partitions")?;
            let mut partitions = Vec::with_capacity(partition_count.min(MAX_PREALLOCATED));
            for _ in 0..partition_count {
                let partition = r.i32("topics[].partitions[].index")?;
                let records = r.nullable_bytes("topics[].partitions[].records")?;
                r.tagged_fields("topics[].partitions[] tagged fields")?;
                partitions.push(PartitionProduceData { partition, records });
            }
            r.tagged_fields("topics[] tagged fields")?;
            topics.push(TopicProduceData {
                name,
                topic_id,
                partitions,
            });
        }
        r.tagged_fields("tagged fields")?;
        r.finish()?;
        Ok(ProduceRequestView {
            version,
            transactional_id,
            acks,
            timeout_ms,
            topics,
        })
    }
}

/// Read only `acks` from a Produce request body, without decoding the rest and without
/// allocating (hot path: `acks == 0` means no response will come).
pub fn peek_acks(version: i16, body: &[u8]) -> Result<i16> {
    check_version(version)?;
    let mut r = SliceReader { buf: body, pos: 0 };
    if version >= FIRST_FLEXIBLE_VERSION {
        let len = r.uvarint("transactional_id")?;
        // Compact nullable string: 0 = null, else length + 1.
        if len > 0 {
            r.skip(len as usize - 1, "transactional_id")?;
        }
    } else if version >= FIRST_TRANSACTIONAL_VERSION {
        let len = r.i16("transactional_id")?;
        match len {
            -1 => {}
            len if len < -1 => {
                return Err(ProduceDecodeError::Invalid {
                    field: "transactional_id",
                    position: 0,
                    reason: format!("negative string length {len}"),
                })
            }
            len => r.skip(len as usize, "transactional_id")?,
        }
    }
    r.i16("acks")
}

impl ProduceResponseView {
    /// Decode a Produce response body of the given version.
    pub fn decode(version: i16, body: Bytes) -> Result<Self> {
        check_version(version)?;
        let mut r = Reader::new(body, version >= FIRST_FLEXIBLE_VERSION);
        let topic_count = r.array_len("responses")?;
        let mut topics = Vec::with_capacity(topic_count.min(MAX_PREALLOCATED));
        for _ in 0..topic_count {
            let (name, topic_id) =
                r.topic_name_or_id(version, "responses[].name", "responses[].topic_id")?;
            let partition_count = r.array_len("responses[].partition_responses")?;
            let mut partitions = Vec::with_capacity(partition_count.min(MAX_PREALLOCATED));
            for _ in 0..partition_count {
                partitions.push(decode_partition_result(&mut r, version)?);
            }
            r.tagged_fields("responses[] tagged fields")?;
            topics.push(TopicProduceResult {
                name,
                topic_id,
                partitions,
            });
        }
        let throttle_time_ms = if version >= 1 {
            r.i32("throttle_time_ms")?
        } else {
            0
        };
        // v10+ may carry node endpoints (tag 0) here; not needed, skipped like any tagged field.
        r.tagged_fields("tagged fields")?;
        r.finish()?;
        Ok(ProduceResponseView {
            version,
            topics,
            throttle_time_ms,
        })
    }

    /// The result for a topic (by name) and partition. Names are empty in v13 responses: use
    /// [`ProduceResponseView::partition_by_topic_id`] there. An empty `topic` never matches
    /// (Kafka topic names are never empty), so a v13 lookup by name gives `None` rather than
    /// some other topic's partition.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionProduceResult> {
        if topic.is_empty() {
            return None;
        }
        self.topics
            .iter()
            .filter(|t| t.name == topic)
            .flat_map(|t| &t.partitions)
            .find(|p| p.partition == partition)
    }

    /// The result for a topic (by v13 topic id) and partition.
    pub fn partition_by_topic_id(
        &self,
        topic_id: &[u8; 16],
        partition: i32,
    ) -> Option<&PartitionProduceResult> {
        self.topics
            .iter()
            .filter(|t| t.topic_id.as_ref() == Some(topic_id))
            .flat_map(|t| &t.partitions)
            .find(|p| p.partition == partition)
    }
}

fn decode_partition_result(r: &mut Reader, version: i16) -> Result<PartitionProduceResult> {
    let partition = r.i32("responses[].partition_responses[].index")?;
    let error_code = r.i16("responses[].partition_responses[].error_code")?;
    let base_offset = r.i64("responses[].partition_responses[].base_offset")?;
    let log_append_time_ms = if version >= 2 {
        r.i64("responses[].partition_responses[].log_append_time_ms")?
    } else {
        -1
    };
    let log_start_offset = if version >= 5 {
        r.i64("responses[].partition_responses[].log_start_offset")?
    } else {
        -1
    };
    let mut record_errors = Vec::new();
    let mut error_message = None;
    if version >= 8 {
        let count = r.array_len("responses[].partition_responses[].record_errors")?;
        record_errors.reserve(count.min(MAX_PREALLOCATED));
        for _ in 0..count {
            let batch_index =
                r.i32("responses[].partition_responses[].record_errors[].batch_index")?;
            let message =
                r.nullable_string("responses[].partition_responses[].record_errors[].message")?;
            r.tagged_fields("responses[].partition_responses[].record_errors[] tagged fields")?;
            record_errors.push(RecordError {
                batch_index,
                message,
            });
        }
        error_message = r.nullable_string("responses[].partition_responses[].error_message")?;
    }
    // v10+ may carry the current leader (tag 0) here; skipped like any tagged field.
    r.tagged_fields("responses[].partition_responses[] tagged fields")?;
    Ok(PartitionProduceResult {
        partition,
        error_code,
        base_offset,
        log_append_time_ms,
        log_start_offset,
        record_errors,
        error_message,
    })
}

/// Kafka protocol reader over `Bytes` (big-endian; compact + tagged fields when flexible).
struct Reader {
    buf: Bytes,
    total: usize,
    flexible: bool,
}

impl Reader {
    fn new(buf: Bytes, flexible: bool) -> Self {
        let total = buf.len();
        Reader {
            buf,
            total,
            flexible,
        }
    }

    fn position(&self) -> usize {
        self.total - self.buf.len()
    }

    fn truncated(&self, field: &'static str, needed: usize) -> ProduceDecodeError {
        ProduceDecodeError::Truncated {
            field,
            position: self.position(),
            needed,
            remaining: self.buf.len(),
        }
    }

    fn invalid(&self, field: &'static str, reason: String) -> ProduceDecodeError {
        ProduceDecodeError::Invalid {
            field,
            position: self.position(),
            reason,
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<Bytes> {
        if n > self.buf.len() {
            return Err(self.truncated(field, n));
        }
        Ok(self.buf.split_to(n))
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let Some(bytes) = self.buf.first_chunk::<N>() else {
            return Err(self.truncated(field, N));
        };
        let bytes = *bytes;
        self.buf.advance(N);
        Ok(bytes)
    }

    fn i16(&mut self, field: &'static str) -> Result<i16> {
        self.array(field).map(i16::from_be_bytes)
    }

    fn i32(&mut self, field: &'static str) -> Result<i32> {
        self.array(field).map(i32::from_be_bytes)
    }

    fn i64(&mut self, field: &'static str) -> Result<i64> {
        self.array(field).map(i64::from_be_bytes)
    }

    fn uvarint(&mut self, field: &'static str) -> Result<u32> {
        let (value, len) = read_uvarint(&self.buf).map_err(|e| match e {
            VarintError::Truncated(needed) => self.truncated(field, needed),
            VarintError::TooLong => self.invalid(field, "unsigned varint too long".into()),
        })?;
        self.buf.advance(len);
        Ok(value)
    }

    /// Compact length: 0 = null, otherwise length + 1.
    fn compact_len(&mut self, field: &'static str) -> Result<Option<usize>> {
        Ok(self.uvarint(field)?.checked_sub(1).map(|n| n as usize))
    }

    /// Classic length: -1 = null, other negative values are invalid.
    fn classic_len(&mut self, len: i32, field: &'static str) -> Result<Option<usize>> {
        match len {
            -1 => Ok(None),
            len if len < -1 => Err(self.invalid(field, format!("negative length {len}"))),
            len => Ok(Some(len as usize)),
        }
    }

    fn nullable_string(&mut self, field: &'static str) -> Result<Option<String>> {
        let len = if self.flexible {
            self.compact_len(field)?
        } else {
            let len = self.i16(field)?;
            self.classic_len(i32::from(len), field)?
        };
        let Some(len) = len else {
            return Ok(None);
        };
        let position = self.position();
        let bytes = self.take(len, field)?;
        match std::str::from_utf8(&bytes) {
            Ok(s) => Ok(Some(s.to_owned())),
            Err(_) => Err(ProduceDecodeError::InvalidUtf8 { field, position }),
        }
    }

    fn string(&mut self, field: &'static str) -> Result<String> {
        let position = self.position();
        self.nullable_string(field)?
            .ok_or_else(|| ProduceDecodeError::Invalid {
                field,
                position,
                reason: "null for a non-nullable string".into(),
            })
    }

    fn nullable_bytes(&mut self, field: &'static str) -> Result<Option<Bytes>> {
        let len = if self.flexible {
            self.compact_len(field)?
        } else {
            let len = self.i32(field)?;
            self.classic_len(len, field)?
        };
        len.map(|len| self.take(len, field)).transpose()
    }

    /// Length of a non-nullable array.
    fn array_len(&mut self, field: &'static str) -> Result<usize> {
        let position = self.position();
        let len = if self.flexible {
            self.compact_len(field)?
        } else {
            let len = self.i32(field)?;
            self.classic_len(len, field)?
        };
        len.ok_or_else(|| ProduceDecodeError::Invalid {
            field,
            position,
            reason: "null for a non-nullable array".into(),
        })
    }

    fn uuid(&mut self, field: &'static str) -> Result<[u8; 16]> {
        self.array(field)
    }

    fn topic_name_or_id(
        &mut self,
        version: i16,
        name_field: &'static str,
        id_field: &'static str,
    ) -> Result<(String, Option<[u8; 16]>)> {
        if version >= FIRST_TOPIC_ID_VERSION {
            Ok((String::new(), Some(self.uuid(id_field)?)))
        } else {
            Ok((self.string(name_field)?, None))
        }
    }

    /// Skip a tagged-field section (flexible versions only; a no-op otherwise).
    fn tagged_fields(&mut self, field: &'static str) -> Result<()> {
        if !self.flexible {
            return Ok(());
        }
        let count = self.uvarint(field)?;
        // Each field takes at least two bytes, so this loop is bounded by the input.
        for _ in 0..count {
            let _tag = self.uvarint(field)?;
            let size = self.uvarint(field)?;
            self.take(size as usize, field)?;
        }
        Ok(())
    }

    fn finish(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProduceDecodeError::TrailingBytes {
                position: self.position(),
                remaining: self.buf.len(),
            })
        }
    }
}

enum VarintError {
    Truncated(usize),
    TooLong,
}

/// Kafka unsigned varint (at most 5 bytes, value must fit in u32): (value, encoded length).
fn read_uvarint(buf: &[u8]) -> std::result::Result<(u32, usize), VarintError> {
    let mut value = 0u64;
    for i in 0..5 {
        let Some(&byte) = buf.get(i) else {
            return Err(VarintError::Truncated(i + 1));
        };
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return u32::try_from(value)
                .map(|v| (v, i + 1))
                .map_err(|_| VarintError::TooLong);
        }
    }
    Err(VarintError::TooLong)
}

/// Allocation-free reader for [`peek_acks`].
struct SliceReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl SliceReader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn truncated(&self, field: &'static str, needed: usize) -> ProduceDecodeError {
        ProduceDecodeError::Truncated {
            field,
            position: self.pos,
            needed,
            remaining: self.remaining(),
        }
    }

    fn skip(&mut self, n: usize, field: &'static str) -> Result<()> {
        if n > self.remaining() {
            return Err(self.truncated(field, n));
        }
        self.pos += n;
        Ok(())
    }

    fn i16(&mut self, field: &'static str) -> Result<i16> {
        let Some(bytes) = self.buf[self.pos..].first_chunk::<2>() else {
            return Err(self.truncated(field, 2));
        };
        self.pos += 2;
        Ok(i16::from_be_bytes(*bytes))
    }

    fn uvarint(&mut self, field: &'static str) -> Result<u32> {
        let (value, len) = read_uvarint(&self.buf[self.pos..]).map_err(|e| match e {
            VarintError::Truncated(needed) => self.truncated(field, needed),
            VarintError::TooLong => ProduceDecodeError::Invalid {
                field,
                position: self.pos,
                reason: "unsigned varint too long".into(),
            },
        })?;
        self.pos += len;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::produce_request::{
        PartitionProduceData as KpPartitionData, TopicProduceData as KpTopicData,
    };
    use kafka_protocol::messages::produce_response::{
        BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse,
        TopicProduceResponse,
    };
    use kafka_protocol::messages::{
        BrokerId, ProduceRequest, ProduceResponse, TopicName, TransactionalId,
    };
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
    use proptest::prelude::*;

    const TOPIC_ID_A: [u8; 16] =
        *b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10";
    const TOPIC_ID_B: [u8; 16] = [0xab; 16];

    /// Minimal big-endian encoder for the non-flexible v0..=2 bodies.
    #[derive(Default)]
    struct Enc(Vec<u8>);

    impl Enc {
        fn i16(mut self, v: i16) -> Self {
            self.0.put_i16(v);
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.put_i32(v);
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.put_i64(v);
            self
        }
        fn string(mut self, s: &str) -> Self {
            self.0.put_i16(s.len() as i16);
            self.0.extend_from_slice(s.as_bytes());
            self
        }
        fn bytes(mut self, b: Option<&[u8]>) -> Self {
            match b {
                None => self.0.put_i32(-1),
                Some(b) => {
                    self.0.put_i32(b.len() as i32);
                    self.0.extend_from_slice(b);
                }
            }
            self
        }
        fn done(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    fn sample_batch() -> Bytes {
        use kafka_protocol::records::*;
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"hello kinesis")),
            headers: Default::default(),
        };
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            [&record],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::Gzip,
            },
        )
        .unwrap();
        buf.freeze()
    }

    /// The request every version encodes: two topics, one null records field.
    fn expected_request(version: i16, txn: Option<&str>) -> ProduceRequestView {
        let v13 = version >= 13;
        let topic = |name: &str, id: [u8; 16], partitions| TopicProduceData {
            name: if v13 { String::new() } else { name.to_owned() },
            topic_id: v13.then_some(id),
            partitions,
        };
        ProduceRequestView {
            version,
            transactional_id: if version >= 3 {
                txn.map(str::to_owned)
            } else {
                None
            },
            acks: -1,
            timeout_ms: 30_000,
            topics: vec![
                topic(
                    "orders",
                    TOPIC_ID_A,
                    vec![
                        PartitionProduceData {
                            partition: 0,
                            records: Some(sample_batch()),
                        },
                        PartitionProduceData {
                            partition: 7,
                            records: Some(Bytes::from_static(b"\x00\x01opaque")),
                        },
                    ],
                ),
                topic(
                    "\u{fc}nicode-topic",
                    TOPIC_ID_B,
                    vec![PartitionProduceData {
                        partition: 2,
                        records: None,
                    }],
                ),
            ],
        }
    }

    /// A kafka-protocol topic with the given v13 id (the uuid type is not nameable from
    /// here, so it is obtained by decoding).
    fn kp_request_topic(id: [u8; 16]) -> KpTopicData {
        let mut raw = id.to_vec();
        raw.extend_from_slice(&[1, 0]); // empty compact partitions array, no tagged fields
        KpTopicData::decode(&mut Bytes::from(raw), 13).unwrap()
    }

    fn kp_response_topic(id: [u8; 16]) -> TopicProduceResponse {
        let mut raw = id.to_vec();
        raw.extend_from_slice(&[1, 0]);
        TopicProduceResponse::decode(&mut Bytes::from(raw), 13).unwrap()
    }

    /// Encode `view` with our own v0..=2 encoder or kafka-protocol's v3+ encoder.
    fn encode_request(view: &ProduceRequestView) -> Bytes {
        let version = view.version;
        if version <= 2 {
            let mut e = Enc::default()
                .i16(view.acks)
                .i32(view.timeout_ms)
                .i32(view.topics.len() as i32);
            for t in &view.topics {
                e = e.string(&t.name).i32(t.partitions.len() as i32);
                for p in &t.partitions {
                    e = e.i32(p.partition).bytes(p.records.as_deref());
                }
            }
            return e.done();
        }
        let topics = view
            .topics
            .iter()
            .map(|t| {
                kp_request_topic(t.topic_id.unwrap_or([0; 16]))
                    .with_name(TopicName(StrBytes::from_string(t.name.clone())))
                    .with_partition_data(
                        t.partitions
                            .iter()
                            .map(|p| {
                                KpPartitionData::default()
                                    .with_index(p.partition)
                                    .with_records(p.records.clone())
                            })
                            .collect(),
                    )
            })
            .collect();
        let mut request = ProduceRequest::default()
            .with_transactional_id(
                view.transactional_id
                    .clone()
                    .map(|s| TransactionalId(StrBytes::from_string(s))),
            )
            .with_acks(view.acks)
            .with_timeout_ms(view.timeout_ms)
            .with_topic_data(topics);
        if version >= 9 {
            request = request.with_unknown_tagged_field(5, Bytes::from_static(b"future"));
        }
        let mut buf = BytesMut::new();
        request.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    fn expected_response(version: i16) -> ProduceResponseView {
        let v13 = version >= 13;
        let result = |partition, error_code, base_offset| PartitionProduceResult {
            partition,
            error_code,
            base_offset,
            log_append_time_ms: if version >= 2 { 1_700_000_000_123 } else { -1 },
            log_start_offset: if version >= 5 { 17 } else { -1 },
            record_errors: if version >= 8 && error_code != 0 {
                vec![
                    RecordError {
                        batch_index: 3,
                        message: Some("bad record".into()),
                    },
                    RecordError {
                        batch_index: 4,
                        message: None,
                    },
                ]
            } else {
                vec![]
            },
            error_message: (version >= 8 && error_code != 0).then(|| "invalid record".into()),
        };
        ProduceResponseView {
            version,
            topics: vec![
                TopicProduceResult {
                    name: if v13 { String::new() } else { "orders".into() },
                    topic_id: v13.then_some(TOPIC_ID_A),
                    partitions: vec![result(0, 0, 4242), result(7, 87, -1)],
                },
                TopicProduceResult {
                    name: if v13 { String::new() } else { "other".into() },
                    topic_id: v13.then_some(TOPIC_ID_B),
                    partitions: vec![result(2, 0, 0)],
                },
            ],
            throttle_time_ms: if version >= 1 { 250 } else { 0 },
        }
    }

    fn encode_response(view: &ProduceResponseView) -> Bytes {
        let version = view.version;
        if version <= 2 {
            let mut e = Enc::default().i32(view.topics.len() as i32);
            for t in &view.topics {
                e = e.string(&t.name).i32(t.partitions.len() as i32);
                for p in &t.partitions {
                    e = e.i32(p.partition).i16(p.error_code).i64(p.base_offset);
                    if version >= 2 {
                        e = e.i64(p.log_append_time_ms);
                    }
                }
            }
            if version >= 1 {
                e = e.i32(view.throttle_time_ms);
            }
            return e.done();
        }
        let topics = view
            .topics
            .iter()
            .map(|t| {
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut r = PartitionProduceResponse::default()
                            .with_index(p.partition)
                            .with_error_code(p.error_code)
                            .with_base_offset(p.base_offset)
                            .with_log_append_time_ms(p.log_append_time_ms)
                            .with_log_start_offset(p.log_start_offset)
                            .with_record_errors(
                                p.record_errors
                                    .iter()
                                    .map(|e| {
                                        BatchIndexAndErrorMessage::default()
                                            .with_batch_index(e.batch_index)
                                            .with_batch_index_error_message(
                                                e.message.clone().map(StrBytes::from_string),
                                            )
                                    })
                                    .collect(),
                            )
                            .with_error_message(p.error_message.clone().map(StrBytes::from_string));
                        if version >= 10 && p.error_code != 0 {
                            // Tagged field 0: exercises skipping a known tagged struct.
                            r = r.with_current_leader(
                                LeaderIdAndEpoch::default()
                                    .with_leader_id(BrokerId(3))
                                    .with_leader_epoch(9),
                            );
                        }
                        r
                    })
                    .collect();
                kp_response_topic(t.topic_id.unwrap_or([0; 16]))
                    .with_name(TopicName(StrBytes::from_string(t.name.clone())))
                    .with_partition_responses(partitions)
            })
            .collect();
        let mut response = ProduceResponse::default()
            .with_responses(topics)
            .with_throttle_time_ms(view.throttle_time_ms);
        if version >= 10 {
            response = response.with_node_endpoints(vec![NodeEndpoint::default()
                .with_node_id(BrokerId(3))
                .with_host(StrBytes::from_static_str("broker-3"))
                .with_port(9092)
                .with_rack(Some(StrBytes::from_static_str("rack-a")))]);
        }
        if version >= 9 {
            response = response.with_unknown_tagged_field(7, Bytes::from_static(b"future"));
        }
        let mut buf = BytesMut::new();
        response.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    fn all_versions() -> impl Iterator<Item = i16> {
        MIN_VERSION..=MAX_VERSION
    }

    #[test]
    fn request_round_trip_every_version() {
        // Covers v0 and v2 (hand encoder), v3, v7, v9 (first flexible), v12 and v13 (topic ids)
        // via kafka-protocol's encoder, and everything in between.
        for version in all_versions() {
            for txn in [None, Some("txn-\u{e9}")] {
                let expected = expected_request(version, txn);
                let body = encode_request(&expected);
                let decoded = ProduceRequestView::decode(version, body.clone())
                    .unwrap_or_else(|e| panic!("v{version}: {e}"));
                assert_eq!(decoded, expected, "v{version}");
                assert_eq!(peek_acks(version, &body).unwrap(), decoded.acks);

                // Records are zero-copy slices of the body.
                let records = decoded.topics[0].partitions[0].records.as_ref().unwrap();
                let start = body.as_ptr() as usize;
                let at = records.as_ptr() as usize;
                assert!(at > start && at + records.len() <= start + body.len());

                // And they decode as the batch that was put in.
                let batches = crate::kafka::records::decode_batches(records.clone()).unwrap();
                assert_eq!(
                    batches[0].records[0].value.as_deref(),
                    Some(&b"hello kinesis"[..])
                );
            }
        }
    }

    #[test]
    fn request_v13_uses_topic_ids() {
        let decoded =
            ProduceRequestView::decode(13, encode_request(&expected_request(13, None))).unwrap();
        assert_eq!(decoded.topics[0].name, "");
        assert_eq!(decoded.topics[0].topic_id, Some(TOPIC_ID_A));
        assert_eq!(
            topic_id_hex(&decoded.topics[0].topic_id.unwrap()),
            "0102030405060708090a0b0c0d0e0f10"
        );
        let decoded =
            ProduceRequestView::decode(12, encode_request(&expected_request(12, None))).unwrap();
        assert_eq!(decoded.topics[0].topic_id, None);
    }

    #[test]
    fn response_round_trip_every_version() {
        for version in all_versions() {
            let expected = expected_response(version);
            let body = encode_response(&expected);
            let decoded = ProduceResponseView::decode(version, body)
                .unwrap_or_else(|e| panic!("v{version}: {e}"));
            assert_eq!(decoded, expected, "v{version}");
        }
    }

    #[test]
    fn response_partition_lookup() {
        let v7 = ProduceResponseView::decode(7, encode_response(&expected_response(7))).unwrap();
        let p = v7.partition("orders", 0).unwrap();
        assert_eq!((p.error_code, p.base_offset), (0, 4242));
        assert_eq!(v7.partition("orders", 7).unwrap().error_code, 87);
        assert_eq!(v7.partition("other", 2).unwrap().partition, 2);
        assert!(v7.partition("orders", 2).is_none());
        assert!(v7.partition("missing", 0).is_none());

        let v13 = ProduceResponseView::decode(13, encode_response(&expected_response(13))).unwrap();
        assert!(v13.partition("orders", 0).is_none());
        // Names are all empty in v13: a lookup by the (empty) name must not pick another topic.
        assert!(v13.partition("", 7).is_none());
        assert!(v13.partition("", 2).is_none());
        let p = v13.partition_by_topic_id(&TOPIC_ID_A, 7).unwrap();
        assert_eq!(p.error_code, 87);
        assert_eq!(p.record_errors.len(), 2);
        assert!(v13.partition_by_topic_id(&TOPIC_ID_B, 7).is_none());
    }

    #[test]
    fn hand_written_v0_to_v2_bytes() {
        // v0 request, byte for byte: acks=1, timeout=1000, [ "t", [ 3, "ab" ] ].
        let body = Bytes::from_static(
            b"\x00\x01\x00\x00\x03\xe8\x00\x00\x00\x01\x00\x01t\x00\x00\x00\x01\x00\x00\x00\x03\x00\x00\x00\x02ab",
        );
        let r = ProduceRequestView::decode(0, body.clone()).unwrap();
        assert_eq!(
            (r.acks, r.timeout_ms, r.transactional_id.as_deref()),
            (1, 1000, None)
        );
        assert_eq!(r.topics[0].name, "t");
        assert_eq!(r.topics[0].partitions[0].partition, 3);
        assert_eq!(
            r.topics[0].partitions[0].records.as_deref(),
            Some(&b"ab"[..])
        );
        assert_eq!(peek_acks(0, &body).unwrap(), 1);
        // The same bytes are not a valid v3 body (v3 starts with the transactional id).
        assert!(ProduceRequestView::decode(3, body).is_err());

        // v2 response: [ "t", [ 3, err 0, base 10, log_append_time 99 ] ], throttle 5.
        let body = Enc::default()
            .i32(1)
            .string("t")
            .i32(1)
            .i32(3)
            .i16(0)
            .i64(10)
            .i64(99)
            .i32(5)
            .done();
        let r = ProduceResponseView::decode(2, body.clone()).unwrap();
        let p = r.partition("t", 3).unwrap();
        assert_eq!((p.base_offset, p.log_append_time_ms), (10, 99));
        assert_eq!(r.throttle_time_ms, 5);
        // As v1 the log_append_time becomes trailing garbage.
        assert!(matches!(
            ProduceResponseView::decode(1, body).unwrap_err(),
            ProduceDecodeError::TrailingBytes { .. }
        ));
    }

    #[test]
    fn every_truncation_is_an_error() {
        for version in all_versions() {
            let request = encode_request(&expected_request(version, Some("txn")));
            for cut in 0..request.len() {
                let err = ProduceRequestView::decode(version, request.slice(..cut))
                    .expect_err("prefix must not decode");
                assert!(
                    matches!(err, ProduceDecodeError::Truncated { .. }),
                    "v{version} cut {cut}: {err}"
                );
            }
            let response = encode_response(&expected_response(version));
            for cut in 0..response.len() {
                let err = ProduceResponseView::decode(version, response.slice(..cut))
                    .expect_err("prefix must not decode");
                assert!(
                    matches!(err, ProduceDecodeError::Truncated { .. }),
                    "v{version} cut {cut}: {err}"
                );
            }
            // peek_acks needs exactly the bytes up to and including acks.
            let acks_end = match version {
                0..=2 => 2,
                3..=8 => 2 + 3 + 2,
                _ => 1 + 3 + 2,
            };
            assert_eq!(peek_acks(version, &request[..acks_end]).unwrap(), -1);
            for cut in 0..acks_end {
                assert!(matches!(
                    peek_acks(version, &request[..cut]).unwrap_err(),
                    ProduceDecodeError::Truncated { .. }
                ));
            }
        }
    }

    #[test]
    fn trailing_bytes_and_versions() {
        for version in all_versions() {
            let mut body = encode_request(&expected_request(version, None)).to_vec();
            body.push(0);
            assert!(matches!(
                ProduceRequestView::decode(version, Bytes::from(body)).unwrap_err(),
                ProduceDecodeError::TrailingBytes { remaining: 1, .. }
            ));
        }
        for version in [-1, 14, i16::MAX] {
            let e = ProduceDecodeError::UnsupportedVersion(version);
            assert_eq!(
                ProduceRequestView::decode(version, Bytes::new()),
                Err(e.clone())
            );
            assert_eq!(
                ProduceResponseView::decode(version, Bytes::new()),
                Err(e.clone())
            );
            assert_eq!(peek_acks(version, &[0, 1]), Err(e));
        }
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        // kafka-protocol 0.18 aborts the process on these (Vec::with_capacity(count)).
        let v3 = Bytes::from_static(&[0xff, 0xff, 0, 1, 0, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            ProduceRequestView::decode(3, v3).unwrap_err(),
            ProduceDecodeError::Truncated {
                field: "topics[].name",
                ..
            }
        ));
        let v9 = Bytes::from_static(&[0, 0, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(ProduceRequestView::decode(9, v9).is_err());
        let resp = Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(ProduceResponseView::decode(5, resp).is_err());
        // Many tagged fields claimed, none present.
        let v9 = Bytes::from_static(&[0, 0, 1, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(ProduceRequestView::decode(9, v9).is_err());
    }

    #[test]
    fn invalid_fields() {
        // Negative transactional id length (v3).
        let body = Bytes::from_static(&[0xff, 0xfe, 0, 1]);
        assert!(matches!(
            ProduceRequestView::decode(3, body.clone()).unwrap_err(),
            ProduceDecodeError::Invalid {
                field: "transactional_id",
                ..
            }
        ));
        assert!(matches!(
            peek_acks(3, &body).unwrap_err(),
            ProduceDecodeError::Invalid { .. }
        ));
        // Null topic name (v0).
        let body = Enc::default().i16(1).i32(0).i32(1).i16(-1).done();
        assert!(matches!(
            ProduceRequestView::decode(0, body).unwrap_err(),
            ProduceDecodeError::Invalid {
                field: "topics[].name",
                ..
            }
        ));
        // Null (non-nullable) topics array, flexible.
        let body = Bytes::from_static(&[0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            ProduceRequestView::decode(9, body).unwrap_err(),
            ProduceDecodeError::Invalid {
                field: "topics",
                ..
            }
        ));
        // Invalid UTF-8 topic name (v1), reporting its position.
        let body = Bytes::from_static(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0xc3]);
        assert_eq!(
            ProduceRequestView::decode(1, body).unwrap_err(),
            ProduceDecodeError::InvalidUtf8 {
                field: "topics[].name",
                position: 12
            }
        );
        // Over-long varint.
        let body = Bytes::from_static(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 0, 1]);
        assert!(matches!(
            ProduceRequestView::decode(9, body.clone()).unwrap_err(),
            ProduceDecodeError::Invalid {
                field: "transactional_id",
                ..
            }
        ));
        assert!(peek_acks(9, &body).is_err());
        // Negative records length other than -1.
        let body = Enc::default()
            .i16(1)
            .i32(0)
            .i32(1)
            .string("t")
            .i32(1)
            .i32(0)
            .i32(-5)
            .done();
        assert!(matches!(
            ProduceRequestView::decode(2, body).unwrap_err(),
            ProduceDecodeError::Invalid {
                field: "topics[].partitions[].records",
                ..
            }
        ));
    }

    #[test]
    fn error_messages_name_the_field() {
        let err = ProduceRequestView::decode(0, Bytes::from_static(&[0, 1, 0])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Produce body truncated at `timeout_ms` (byte 2): needed 4 bytes, 1 remain"
        );
        assert_eq!(
            ProduceDecodeError::UnsupportedVersion(14).to_string(),
            "unsupported Produce version 14 (supported: 0..=13)"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            version in -1i16..=14,
            data in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let body = Bytes::from(data);
            let request = ProduceRequestView::decode(version, body.clone());
            let acks = peek_acks(version, &body);
            if let Ok(request) = request {
                prop_assert_eq!(acks, Ok(request.acks));
            }
            let _ = ProduceResponseView::decode(version, body);
        }

        #[test]
        fn mutated_bodies_never_panic(
            version in 0i16..=13,
            response in any::<bool>(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let mut body = if response {
                encode_response(&expected_response(version)).to_vec()
            } else {
                encode_request(&expected_request(version, Some("t"))).to_vec()
            };
            for (i, byte) in edits {
                let i = i.index(body.len());
                body[i] = byte;
            }
            let body = Bytes::from(body);
            let _ = ProduceRequestView::decode(version, body.clone());
            let _ = ProduceResponseView::decode(version, body.clone());
            let _ = peek_acks(version, &body);
        }
    }
}
