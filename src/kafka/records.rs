//! Decoding of Kafka record data: v2 record batches (magic 2) and legacy message sets
//! (magic 0 and 1), with every codec Kafka supports (none, gzip, snappy, lz4, zstd).
//!
//! This runs off the proxy's hot path on bytes taken from client requests, so nothing in here
//! may panic or allocate in proportion to a length/count field that the input merely *claims*:
//! every malformed input yields a [`RecordsError`], and decompression is bounded by a byte budget
//! (see [`DEFAULT_MAX_DECOMPRESSED_BYTES`]).
//!
//! # Offsets
//!
//! In a Produce request the broker assigns offsets: the partition's records get
//! `response.base_offset + 0, +1, +2, ...` in the order they appear, across all batches of the
//! partition. [`Record::index`] is exactly that position (0-based, counted across every batch in
//! the bytes passed to [`decode_batches`]), so **the Kafka offset of a produced record is
//! `base_offset + index`**. [`Record::offset`] is only what the producer wrote:
//!
//! * v2 batches: `batch base_offset + offset_delta` (producers write base offset 0, so usually
//!   equal to the index within the batch);
//! * legacy magic 1, compressed: the inner (relative) offset;
//! * legacy magic 0, compressed: the inner offset as written (historically arbitrary);
//! * legacy uncompressed: the message's own offset field as written.
//!
//! Records are always returned in wire order, so callers may rely on ordering whatever the
//! `offset` values look like.
//!
//! # Partial trailing data
//!
//! A message set may end with a partial batch/message (fetch responses do this, and the broker
//! silently trims such a tail from produced data too). When at least one complete batch precedes
//! it, the partial tail is ignored; when the data holds no complete batch at all, the result is a
//! [`RecordsError::Truncated`] error. Inside a batch (including a decompressed legacy inner
//! message set) truncation is always an error.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;

use bytes::{Buf, Bytes};

/// Default cap on the total number of bytes [`decode_batches`] and [`summarize`] will produce by
/// decompressing, across all batches of one call. Exceeding it gives
/// [`RecordsError::DecompressedTooLarge`] (protects against decompression bombs).
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 128 * 1024 * 1024;

/// Size of the `offset: i64, size: i32` prefix shared by v2 batches and legacy messages.
const LOG_OVERHEAD: usize = 12;
/// v2 batch header bytes after the `batchLength` field (partitionLeaderEpoch .. recordCount).
const V2_HEADER_LEN: usize = 49;
/// Position of the magic byte within an entry's body (after offset and size), for every format.
const MAGIC_POS: usize = 4;
/// Smallest legacy message body (crc, magic, attributes, key len, value len) for magic 0.
const LEGACY_V0_MIN: usize = 14;
/// Same for magic 1 (adds the timestamp).
const LEGACY_V1_MIN: usize = 22;
/// Smallest encoded v2 record (length, attributes, timestamp delta, offset delta, key len,
/// value len, header count: one byte each). Used to bound pre-allocation.
const MIN_V2_RECORD_LEN: usize = 7;
/// xerial snappy-java stream magic (followed by version i32 and min-compatible-version i32).
const XERIAL_MAGIC: [u8; 8] = *b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;
/// LZ4 frame magic number, little endian.
const LZ4_FRAME_MAGIC: [u8; 4] = [0x04, 0x22, 0x4D, 0x18];

/// Compression codec of a batch (or legacy wrapper message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    const ALL: [Codec; 5] = [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ];

    /// The codec's id in the attributes field (0 = none .. 4 = zstd).
    pub fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Gzip => 1,
            Codec::Snappy => 2,
            Codec::Lz4 => 3,
            Codec::Zstd => 4,
        }
    }

    /// Lower-case name as Kafka spells it in `compression.type`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }

    /// The codec for an attributes id, if `magic` allows it (zstd needs magic 2).
    fn from_id(id: u8, magic: i8) -> Result<Codec, RecordsError> {
        let codec = match id {
            0 => Codec::None,
            1 => Codec::Gzip,
            2 => Codec::Snappy,
            3 => Codec::Lz4,
            4 if magic >= 2 => Codec::Zstd,
            _ => return Err(RecordsError::UnknownCodec { id, magic }),
        };
        Ok(codec)
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`Codec`]s (bit set). Displays as e.g. `gzip,lz4`; empty displays as `""`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct CodecSet(u8);

impl CodecSet {
    pub fn insert(&mut self, codec: Codec) {
        self.0 |= 1 << codec.id();
    }

    pub fn contains(&self, codec: Codec) -> bool {
        self.0 & (1 << codec.id()) != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }

    /// Codecs in the set, in id order.
    pub fn iter(&self) -> impl Iterator<Item = Codec> + '_ {
        Codec::ALL.into_iter().filter(|c| self.contains(*c))
    }
}

impl FromIterator<Codec> for CodecSet {
    fn from_iter<T: IntoIterator<Item = Codec>>(iter: T) -> Self {
        let mut set = CodecSet::default();
        for codec in iter {
            set.insert(codec);
        }
        set
    }
}

impl fmt::Debug for CodecSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl fmt::Display for CodecSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, codec) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(codec.name())?;
        }
        Ok(())
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Offset as written by the producer: `base_offset + offset_delta` for v2, the inner offset
    /// for legacy compressed sets (relative for magic 1, arbitrary for magic 0), the message's own
    /// offset for legacy uncompressed messages. Use [`Record::index`] to compute the Kafka offset.
    pub offset: i64,
    /// Milliseconds since the epoch; -1 when unknown (magic 0 has no timestamps). For batches
    /// flagged LogAppendTime this is the batch/wrapper timestamp, as Kafka reports it.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// Headers in wire order (duplicates kept). Always empty for magic 0/1.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Position of the record within the decoded data (0-based, across all batches). For a
    /// produced partition the record's Kafka offset is `response base_offset + index`.
    pub index: usize,
}

/// One v2 record batch, or one legacy top-level message (an uncompressed message forms a batch
/// of one record; a compressed wrapper message forms a batch of its inner messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub magic: i8,
    pub codec: Codec,
    /// v2: the header's baseOffset; legacy: the top-level (wrapper) message's offset.
    pub base_offset: i64,
    /// -1 when not idempotent (always -1 for legacy).
    pub producer_id: i64,
    /// -1 when not idempotent (always -1 for legacy).
    pub producer_epoch: i16,
    /// -1 when not idempotent (always -1 for legacy).
    pub base_sequence: i32,
    pub is_transactional: bool,
    /// Control batch (transaction markers); its records are control records, which still
    /// occupy offsets.
    pub is_control: bool,
    /// Number of records; equals `records.len()`.
    pub record_count: usize,
    pub records: Vec<Record>,
}

/// Cheap overview of a partition's record data, see [`summarize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSummary {
    /// Number of batches (v2) / top-level messages (legacy).
    pub batches: usize,
    /// Total number of records (control records included, as they occupy offsets).
    pub records: usize,
    pub codecs: CodecSet,
    /// Some batch has a producer id (>= 0).
    pub idempotent: bool,
    /// Some batch is transactional.
    pub transactional: bool,
    /// Some batch is a control batch.
    pub control: bool,
    /// Highest magic seen; -1 for empty data.
    pub magic: i8,
}

/// What was wrong with record data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    #[error("truncated {what}: needed {needed} bytes, only {remaining} remain")]
    Truncated {
        what: &'static str,
        needed: usize,
        remaining: usize,
    },
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error("malformed varint in {what}")]
    BadVarint { what: &'static str },
    #[error("{what} ended with {remaining} unexpected trailing bytes")]
    TrailingBytes {
        what: &'static str,
        remaining: usize,
    },
    #[error("unsupported magic {0} (expected 0, 1 or 2)")]
    UnsupportedMagic(i8),
    #[error("unknown compression codec id {id} for magic {magic}")]
    UnknownCodec { id: u8, magic: i8 },
    #[error(
        "CRC mismatch in magic {magic} data: stored {stored:#010x}, computed {computed:#010x}"
    )]
    CrcMismatch {
        magic: i8,
        stored: u32,
        computed: u32,
    },
    #[error("record header key is not valid UTF-8")]
    InvalidHeaderKey,
    #[error("{codec} decompression failed: {reason}")]
    Decompression { codec: Codec, reason: String },
    #[error("{codec} data decompresses past the limit of {limit} bytes")]
    DecompressedTooLarge { codec: Codec, limit: usize },
}

type Result<T, E = RecordsError> = std::result::Result<T, E>;

/// Decode every batch in a produce partition's `records` bytes (v2 batches and legacy message
/// sets, every codec), keeping uncompressed keys/values/headers as slices of `data`.
/// Decompression output is capped at [`DEFAULT_MAX_DECOMPRESSED_BYTES`] in total.
pub fn decode_batches(data: Bytes) -> Result<Vec<Batch>> {
    decode_batches_with_limit(data, DEFAULT_MAX_DECOMPRESSED_BYTES)
}

/// [`decode_batches`] with an explicit cap on the total decompressed bytes.
pub fn decode_batches_with_limit(data: Bytes, max_decompressed_bytes: usize) -> Result<Vec<Batch>> {
    let mut budget = Budget::new(max_decompressed_bytes);
    let mut rest = data;
    let mut batches = Vec::new();
    let mut index = 0usize;
    while let Some(entry) = next_entry(&mut rest, batches.len())? {
        let batch = match entry.magic {
            2 => decode_v2(entry, &mut budget, &mut index)?,
            0 | 1 => decode_legacy(entry, &mut budget, &mut index)?,
            magic => return Err(RecordsError::UnsupportedMagic(magic)),
        };
        batches.push(batch);
    }
    Ok(batches)
}

/// Count records and list codecs without decoding records. v2 batches are not decompressed
/// (the header carries the record count) but their CRC is verified; legacy compressed wrapper
/// messages must be decompressed (and their inner messages validated) to be counted. The
/// decompression cap is [`DEFAULT_MAX_DECOMPRESSED_BYTES`].
pub fn summarize(data: &Bytes) -> Result<BatchSummary> {
    summarize_with_limit(data, DEFAULT_MAX_DECOMPRESSED_BYTES)
}

/// [`summarize`] with an explicit cap on the total decompressed bytes.
pub fn summarize_with_limit(data: &Bytes, max_decompressed_bytes: usize) -> Result<BatchSummary> {
    let mut budget = Budget::new(max_decompressed_bytes);
    let mut summary = BatchSummary {
        batches: 0,
        records: 0,
        codecs: CodecSet::default(),
        idempotent: false,
        transactional: false,
        control: false,
        magic: -1,
    };
    let mut rest = data.clone();
    while let Some(entry) = next_entry(&mut rest, summary.batches)? {
        let magic = entry.magic;
        match magic {
            2 => {
                let header = parse_v2_header(entry.offset, entry.body)?;
                summary.records = summary.records.saturating_add(header.record_count);
                summary.codecs.insert(header.codec);
                summary.idempotent |= header.producer_id >= 0;
                summary.transactional |= header.is_transactional();
                summary.control |= header.is_control();
            }
            0 | 1 => {
                let message = parse_legacy_message(entry.offset, entry.body, magic)?;
                let count = if message.codec == Codec::None {
                    1
                } else {
                    inner_messages(&message, &mut budget)?.len()
                };
                summary.records = summary.records.saturating_add(count);
                summary.codecs.insert(message.codec);
            }
            _ => return Err(RecordsError::UnsupportedMagic(magic)),
        }
        summary.magic = summary.magic.max(magic);
        summary.batches += 1;
    }
    Ok(summary)
}

// ---------------------------------------------------------------------------------------------
// Entry splitting

/// One top-level v2 batch or legacy message: the leading offset, and the bytes after the size
/// field (exactly `size` long).
struct RawEntry {
    offset: i64,
    body: Bytes,
    magic: i8,
}

/// Split the next entry off `rest`. `complete_so_far` decides whether a partial tail is ignored
/// (some complete entry came before) or an error (nothing decodable at all).
fn next_entry(rest: &mut Bytes, complete_so_far: usize) -> Result<Option<RawEntry>> {
    if rest.is_empty() {
        return Ok(None);
    }
    let partial = |needed: usize, remaining: usize| {
        if complete_so_far > 0 {
            Ok(None)
        } else {
            Err(RecordsError::Truncated {
                what: "record batch",
                needed,
                remaining,
            })
        }
    };
    if rest.len() < LOG_OVERHEAD {
        return partial(LOG_OVERHEAD, rest.len());
    }
    let mut cursor = Cursor::new(rest.slice(..LOG_OVERHEAD));
    let offset = cursor.i64("batch offset")?;
    let size = cursor.i32("batch length")?;
    let size = usize::try_from(size).map_err(|_| RecordsError::Invalid {
        what: "batch length",
        reason: format!("negative length {size}"),
    })?;
    let total = LOG_OVERHEAD.saturating_add(size);
    if rest.len() < total {
        return partial(total, rest.len());
    }
    let mut body = rest.split_to(total);
    body.advance(LOG_OVERHEAD);
    if body.len() <= MAGIC_POS {
        return Err(RecordsError::Invalid {
            what: "batch length",
            reason: format!("{size} bytes cannot hold a magic byte"),
        });
    }
    let magic = body[MAGIC_POS] as i8;
    Ok(Some(RawEntry {
        offset,
        body,
        magic,
    }))
}

// ---------------------------------------------------------------------------------------------
// v2 record batches

struct V2Header {
    base_offset: i64,
    attributes: i16,
    codec: Codec,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    record_count: usize,
    /// Records section, possibly compressed.
    records: Bytes,
}

impl V2Header {
    fn log_append_time(&self) -> bool {
        self.attributes & 0x08 != 0
    }
    fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }
    fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

/// Parse and CRC-check a v2 batch header. `body` starts at partitionLeaderEpoch.
fn parse_v2_header(base_offset: i64, body: Bytes) -> Result<V2Header> {
    if body.len() < V2_HEADER_LEN {
        return Err(RecordsError::Invalid {
            what: "v2 batch length",
            reason: format!(
                "{} bytes is shorter than the {V2_HEADER_LEN}-byte batch header",
                body.len()
            ),
        });
    }
    let mut cursor = Cursor::new(body);
    let _partition_leader_epoch = cursor.i32("partition leader epoch")?;
    let magic = cursor.i8("magic")?;
    let stored = cursor.u32("batch crc")?;
    // The CRC (Castagnoli) covers everything from the attributes to the end of the batch.
    let computed = crc32c::crc32c(cursor.rest());
    if stored != computed {
        return Err(RecordsError::CrcMismatch {
            magic,
            stored,
            computed,
        });
    }
    let attributes = cursor.i16("batch attributes")?;
    let codec = Codec::from_id((attributes & 0x07) as u8, magic)?;
    let _last_offset_delta = cursor.i32("last offset delta")?;
    let base_timestamp = cursor.i64("base timestamp")?;
    let max_timestamp = cursor.i64("max timestamp")?;
    let producer_id = cursor.i64("producer id")?;
    let producer_epoch = cursor.i16("producer epoch")?;
    let base_sequence = cursor.i32("base sequence")?;
    let count = cursor.i32("record count")?;
    let record_count = usize::try_from(count).map_err(|_| RecordsError::Invalid {
        what: "record count",
        reason: format!("negative count {count}"),
    })?;
    Ok(V2Header {
        base_offset,
        attributes,
        codec,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        record_count,
        records: cursor.into_rest(),
    })
}

fn decode_v2(entry: RawEntry, budget: &mut Budget, index: &mut usize) -> Result<Batch> {
    let header = parse_v2_header(entry.offset, entry.body)?;
    let data =
        if header.codec == Codec::None || (header.records.is_empty() && header.record_count == 0) {
            header.records.clone()
        } else {
            decompress(header.codec, &header.records, 2, budget)?
        };
    let mut cursor = Cursor::new(data);
    let capacity = header
        .record_count
        .min(cursor.remaining() / MIN_V2_RECORD_LEN);
    let mut records = Vec::with_capacity(capacity);
    for _ in 0..header.record_count {
        records.push(decode_v2_record(&mut cursor, &header, *index)?);
        *index += 1;
    }
    if cursor.remaining() != 0 {
        return Err(RecordsError::TrailingBytes {
            what: "v2 batch records",
            remaining: cursor.remaining(),
        });
    }
    Ok(Batch {
        magic: 2,
        codec: header.codec,
        base_offset: header.base_offset,
        producer_id: header.producer_id,
        producer_epoch: header.producer_epoch,
        base_sequence: header.base_sequence,
        is_transactional: header.is_transactional(),
        is_control: header.is_control(),
        record_count: records.len(),
        records,
    })
}

fn decode_v2_record(cursor: &mut Cursor, header: &V2Header, index: usize) -> Result<Record> {
    let length = cursor.varint("record length")?;
    let length = usize::try_from(length).map_err(|_| RecordsError::Invalid {
        what: "record length",
        reason: format!("negative length {length}"),
    })?;
    let mut record = Cursor::new(cursor.take(length, "record")?);
    let _attributes = record.i8("record attributes")?;
    let timestamp_delta = record.varlong("record timestamp delta")?;
    let offset_delta = record.varint("record offset delta")?;
    let key = record.varint_bytes("record key")?;
    let value = record.varint_bytes("record value")?;
    let header_count = record.varint("record header count")?;
    let header_count = usize::try_from(header_count).map_err(|_| RecordsError::Invalid {
        what: "record header count",
        reason: format!("negative count {header_count}"),
    })?;
    // Every header takes at least two bytes, which bounds the allocation by the input size.
    let mut headers = Vec::with_capacity(header_count.min(record.remaining() / 2));
    for _ in 0..header_count {
        let key_len = record.varint("record header key length")?;
        let key_len = usize::try_from(key_len).map_err(|_| RecordsError::Invalid {
            what: "record header key length",
            reason: format!("negative length {key_len}"),
        })?;
        let key = record.take(key_len, "record header key")?;
        let key = std::str::from_utf8(&key)
            .map_err(|_| RecordsError::InvalidHeaderKey)?
            .to_owned();
        let value = record.varint_bytes("record header value")?;
        headers.push((key, value));
    }
    if record.remaining() != 0 {
        return Err(RecordsError::TrailingBytes {
            what: "record",
            remaining: record.remaining(),
        });
    }
    let timestamp = if header.log_append_time() {
        header.max_timestamp
    } else {
        header.base_timestamp.wrapping_add(timestamp_delta)
    };
    Ok(Record {
        offset: header.base_offset.wrapping_add(i64::from(offset_delta)),
        timestamp,
        key,
        value,
        headers,
        index,
    })
}

// ---------------------------------------------------------------------------------------------
// Legacy message sets (magic 0 and 1)

struct LegacyMessage {
    offset: i64,
    magic: i8,
    codec: Codec,
    log_append_time: bool,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
}

/// Parse and CRC-check one legacy message. `body` starts at the crc and is exactly the
/// message size long; `magic` is the byte at [`MAGIC_POS`] and must be 0 or 1.
fn parse_legacy_message(offset: i64, body: Bytes, magic: i8) -> Result<LegacyMessage> {
    let min = if magic == 0 {
        LEGACY_V0_MIN
    } else {
        LEGACY_V1_MIN
    };
    if body.len() < min {
        return Err(RecordsError::Invalid {
            what: "legacy message size",
            reason: format!(
                "{} bytes is shorter than the {min}-byte minimum for magic {magic}",
                body.len()
            ),
        });
    }
    let mut cursor = Cursor::new(body);
    let stored = cursor.u32("message crc")?;
    // The CRC (IEEE) covers everything from the magic byte to the end of the message.
    let computed = crc32fast::hash(cursor.rest());
    if stored != computed {
        return Err(RecordsError::CrcMismatch {
            magic,
            stored,
            computed,
        });
    }
    let _magic = cursor.i8("message magic")?;
    let attributes = cursor.i8("message attributes")?;
    let codec = Codec::from_id((attributes & 0x07) as u8, magic)?;
    let timestamp = if magic >= 1 {
        cursor.i64("message timestamp")?
    } else {
        -1
    };
    let key = cursor.i32_bytes("message key")?;
    let value = cursor.i32_bytes("message value")?;
    if cursor.remaining() != 0 {
        return Err(RecordsError::TrailingBytes {
            what: "legacy message",
            remaining: cursor.remaining(),
        });
    }
    Ok(LegacyMessage {
        offset,
        magic,
        codec,
        log_append_time: magic >= 1 && attributes & 0x08 != 0,
        timestamp,
        key,
        value,
    })
}

/// Decompress a legacy wrapper message and parse its inner message set (strictly: no partial
/// tail, no nested compression, inner magic equal to the wrapper's, at least one message).
fn inner_messages(wrapper: &LegacyMessage, budget: &mut Budget) -> Result<Vec<LegacyMessage>> {
    let Some(value) = &wrapper.value else {
        return Err(RecordsError::Invalid {
            what: "compressed wrapper message",
            reason: "value is null".into(),
        });
    };
    let data = decompress(wrapper.codec, value, wrapper.magic, budget)?;
    let mut cursor = Cursor::new(data);
    let mut messages = Vec::new();
    while cursor.remaining() > 0 {
        let offset = cursor.i64("inner message offset")?;
        let size = cursor.i32("inner message size")?;
        let size = usize::try_from(size).map_err(|_| RecordsError::Invalid {
            what: "inner message size",
            reason: format!("negative size {size}"),
        })?;
        let body = cursor.take(size, "inner message")?;
        let Some(&magic) = body.get(MAGIC_POS) else {
            return Err(RecordsError::Invalid {
                what: "inner message size",
                reason: format!("{size} bytes cannot hold a magic byte"),
            });
        };
        let magic = magic as i8;
        if magic != wrapper.magic {
            return Err(RecordsError::Invalid {
                what: "inner message magic",
                reason: format!(
                    "inner magic {magic} differs from wrapper magic {}",
                    wrapper.magic
                ),
            });
        }
        let message = parse_legacy_message(offset, body, magic)?;
        if message.codec != Codec::None {
            return Err(RecordsError::Invalid {
                what: "inner message",
                reason: format!("nested {} compression", message.codec),
            });
        }
        messages.push(message);
    }
    if messages.is_empty() {
        return Err(RecordsError::Invalid {
            what: "compressed wrapper message",
            reason: "no inner messages".into(),
        });
    }
    Ok(messages)
}

fn decode_legacy(entry: RawEntry, budget: &mut Budget, index: &mut usize) -> Result<Batch> {
    let message = parse_legacy_message(entry.offset, entry.body, entry.magic)?;
    let records = if message.codec == Codec::None {
        let record = Record {
            offset: message.offset,
            timestamp: message.timestamp,
            key: message.key.clone(),
            value: message.value.clone(),
            headers: Vec::new(),
            index: *index,
        };
        *index += 1;
        vec![record]
    } else {
        let inner = inner_messages(&message, budget)?;
        let mut records = Vec::with_capacity(inner.len());
        for m in inner {
            records.push(Record {
                offset: m.offset,
                timestamp: if message.log_append_time {
                    message.timestamp
                } else {
                    m.timestamp
                },
                key: m.key,
                value: m.value,
                headers: Vec::new(),
                index: *index,
            });
            *index += 1;
        }
        records
    };
    Ok(Batch {
        magic: message.magic,
        codec: message.codec,
        base_offset: entry.offset,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        is_transactional: false,
        is_control: false,
        record_count: records.len(),
        records,
    })
}

// ---------------------------------------------------------------------------------------------
// Decompression

/// Remaining decompressed bytes allowed for one decode/summarize call.
struct Budget {
    limit: usize,
    remaining: usize,
}

impl Budget {
    fn new(limit: usize) -> Self {
        Budget {
            limit,
            remaining: limit,
        }
    }

    fn consume(&mut self, codec: Codec, n: usize) -> Result<()> {
        if n > self.remaining {
            return Err(RecordsError::DecompressedTooLarge {
                codec,
                limit: self.limit,
            });
        }
        self.remaining -= n;
        Ok(())
    }

    /// Read `reader` to the end, but never more than one byte past the remaining budget.
    fn read_all(&mut self, codec: Codec, reader: impl Read) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        reader
            .take((self.remaining as u64).saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| decompression_error(codec, e))?;
        self.consume(codec, out.len())?;
        Ok(out)
    }
}

fn decompression_error(codec: Codec, reason: impl fmt::Display) -> RecordsError {
    RecordsError::Decompression {
        codec,
        reason: reason.to_string(),
    }
}

fn decompress(codec: Codec, data: &Bytes, magic: i8, budget: &mut Budget) -> Result<Bytes> {
    let out = match codec {
        Codec::None => return Ok(data.clone()),
        Codec::Gzip => budget.read_all(codec, flate2::read::MultiGzDecoder::new(&data[..]))?,
        Codec::Snappy => snappy_decompress(data, budget)?,
        Codec::Lz4 => lz4_decompress(data, magic, budget)?,
        Codec::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(&data[..])
                .map_err(|e| decompression_error(codec, e))?;
            budget.read_all(codec, decoder)?
        }
    };
    Ok(Bytes::from(out))
}

/// Snappy as Kafka writes it: the xerial snappy-java stream format (Java clients, legacy and
/// v2) or a single raw snappy block (librdkafka v2). Concatenated xerial streams are accepted.
fn snappy_decompress(data: &[u8], budget: &mut Budget) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if !data.starts_with(&XERIAL_MAGIC) {
        raw_snappy_append(data, &mut out, budget)?;
        return Ok(out);
    }
    let mut rest = data;
    while !rest.is_empty() {
        if rest.starts_with(&XERIAL_MAGIC) {
            // Header: magic, version i32, min compatible version i32.
            if rest.len() < XERIAL_HEADER_LEN {
                return Err(decompression_error(
                    Codec::Snappy,
                    "truncated xerial stream header",
                ));
            }
            rest = &rest[XERIAL_HEADER_LEN..];
            continue;
        }
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(decompression_error(
                Codec::Snappy,
                "truncated xerial block length",
            ));
        };
        let len = i32::from_be_bytes(*len);
        let block = usize::try_from(len)
            .ok()
            .and_then(|len| tail.get(..len))
            .ok_or_else(|| {
                decompression_error(
                    Codec::Snappy,
                    format!(
                        "xerial block length {len} invalid with {} bytes left",
                        tail.len()
                    ),
                )
            })?;
        raw_snappy_append(block, &mut out, budget)?;
        rest = &tail[block.len()..];
    }
    Ok(out)
}

fn raw_snappy_append(block: &[u8], out: &mut Vec<u8>, budget: &mut Budget) -> Result<()> {
    let len =
        snap::raw::decompress_len(block).map_err(|e| decompression_error(Codec::Snappy, e))?;
    // Check the claimed length before allocating for it.
    budget.consume(Codec::Snappy, len)?;
    let start = out.len();
    out.resize(start + len, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| decompression_error(Codec::Snappy, e))?;
    out.truncate(start + written);
    Ok(())
}

/// LZ4 frame format. Magic 0 messages were written with a wrong frame header checksum
/// (KAFKA-3160: computed over the magic number too), so for magic 0 the checksum is recomputed
/// before decoding instead of trusted.
fn lz4_decompress(data: &[u8], magic: i8, budget: &mut Budget) -> Result<Vec<u8>> {
    let input = if magic == 0 {
        fix_lz4_header_checksum(data)
    } else {
        Cow::Borrowed(data)
    };
    let mut decoder =
        lz4::Decoder::new(&input[..]).map_err(|e| decompression_error(Codec::Lz4, e))?;
    let out = budget.read_all(Codec::Lz4, &mut decoder)?;
    // The decoder reports a frame cut short as a clean end of stream; `finish` tells them apart.
    let (_, finished) = decoder.finish();
    finished.map_err(|_| decompression_error(Codec::Lz4, "truncated LZ4 frame"))?;
    Ok(out)
}

/// Replace the LZ4 frame descriptor checksum (HC) with the correct one, if the data looks like
/// an LZ4 frame and the checksum differs.
fn fix_lz4_header_checksum(data: &[u8]) -> Cow<'_, [u8]> {
    if data.len() < 7 || data[..4] != LZ4_FRAME_MAGIC {
        return Cow::Borrowed(data);
    }
    let flags = data[4];
    let mut hc_pos = 6; // magic(4) FLG BD
    if flags & 0x08 != 0 {
        hc_pos += 8; // content size
    }
    if flags & 0x01 != 0 {
        hc_pos += 4; // dictionary id
    }
    let Some(&stored) = data.get(hc_pos) else {
        return Cow::Borrowed(data);
    };
    let correct = lz4_header_checksum(&data[4..hc_pos]);
    if stored == correct {
        return Cow::Borrowed(data);
    }
    let mut fixed = data.to_vec();
    fixed[hc_pos] = correct;
    Cow::Owned(fixed)
}

/// LZ4 frame header checksum: second byte of xxh32(descriptor, seed 0).
fn lz4_header_checksum(descriptor: &[u8]) -> u8 {
    (xxh32(descriptor, 0) >> 8) as u8
}

/// xxHash32 (only used on the few bytes of an LZ4 frame descriptor).
fn xxh32(input: &[u8], seed: u32) -> u32 {
    const P1: u32 = 2_654_435_761;
    const P2: u32 = 2_246_822_519;
    const P3: u32 = 3_266_489_917;
    const P4: u32 = 668_265_263;
    const P5: u32 = 374_761_393;
    fn round(acc: u32, lane: u32) -> u32 {
        acc.wrapping_add(lane.wrapping_mul(P2))
            .rotate_left(13)
            .wrapping_mul(P1)
    }
    fn lane(chunk: &[u8]) -> u32 {
        u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])
    }

    let mut stripes = input.chunks_exact(16);
    let mut hash = if input.len() >= 16 {
        let mut v = [
            seed.wrapping_add(P1).wrapping_add(P2),
            seed.wrapping_add(P2),
            seed,
            seed.wrapping_sub(P1),
        ];
        for stripe in &mut stripes {
            for (i, acc) in v.iter_mut().enumerate() {
                *acc = round(*acc, lane(&stripe[i * 4..]));
            }
        }
        v[0].rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18))
    } else {
        seed.wrapping_add(P5)
    };
    hash = hash.wrapping_add(input.len() as u32);
    let tail = stripes.remainder();
    let mut words = tail.chunks_exact(4);
    for word in &mut words {
        hash = hash
            .wrapping_add(lane(word).wrapping_mul(P3))
            .rotate_left(17)
            .wrapping_mul(P4);
    }
    for &byte in words.remainder() {
        hash = hash
            .wrapping_add(u32::from(byte).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
    }
    hash ^= hash >> 15;
    hash = hash.wrapping_mul(P2);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(P3);
    hash ^= hash >> 16;
    hash
}

// ---------------------------------------------------------------------------------------------
// Byte cursor

/// Big-endian reader over a `Bytes`, handing out zero-copy slices.
struct Cursor {
    buf: Bytes,
}

impl Cursor {
    fn new(buf: Bytes) -> Self {
        Cursor { buf }
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn rest(&self) -> &[u8] {
        &self.buf
    }

    fn into_rest(self) -> Bytes {
        self.buf
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes> {
        if n > self.buf.len() {
            return Err(RecordsError::Truncated {
                what,
                needed: n,
                remaining: self.buf.len(),
            });
        }
        Ok(self.buf.split_to(n))
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let Some(bytes) = self.buf.first_chunk::<N>() else {
            return Err(RecordsError::Truncated {
                what,
                needed: N,
                remaining: self.buf.len(),
            });
        };
        let bytes = *bytes;
        self.buf.advance(N);
        Ok(bytes)
    }

    fn i8(&mut self, what: &'static str) -> Result<i8> {
        self.array::<1>(what).map(i8::from_be_bytes)
    }

    fn i16(&mut self, what: &'static str) -> Result<i16> {
        self.array(what).map(i16::from_be_bytes)
    }

    fn i32(&mut self, what: &'static str) -> Result<i32> {
        self.array(what).map(i32::from_be_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        self.array(what).map(u32::from_be_bytes)
    }

    fn i64(&mut self, what: &'static str) -> Result<i64> {
        self.array(what).map(i64::from_be_bytes)
    }

    /// Unsigned LEB128 of at most `max_len` bytes.
    fn uvarint(&mut self, max_len: usize, what: &'static str) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..max_len {
            let Some(&byte) = self.buf.get(i) else {
                return Err(RecordsError::Truncated {
                    what,
                    needed: i + 1,
                    remaining: self.buf.len(),
                });
            };
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.buf.advance(i + 1);
                return Ok(value);
            }
        }
        Err(RecordsError::BadVarint { what })
    }

    /// Zigzag varint (Kafka `varint`, up to 5 bytes).
    fn varint(&mut self, what: &'static str) -> Result<i32> {
        let raw = self.uvarint(5, what)? as u32;
        Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
    }

    /// Zigzag varlong (Kafka `varlong`, up to 10 bytes).
    fn varlong(&mut self, what: &'static str) -> Result<i64> {
        let raw = self.uvarint(10, what)?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    fn sized_bytes(&mut self, len: i64, what: &'static str) -> Result<Option<Bytes>> {
        match len {
            -1 => Ok(None),
            len if len < -1 => Err(RecordsError::Invalid {
                what,
                reason: format!("negative length {len}"),
            }),
            len => {
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                self.take(len, what).map(Some)
            }
        }
    }

    /// Varint length (-1 = null) followed by that many bytes.
    fn varint_bytes(&mut self, what: &'static str) -> Result<Option<Bytes>> {
        let len = self.varint(what)?;
        self.sized_bytes(i64::from(len), what)
    }

    /// i32 length (-1 = null) followed by that many bytes.
    fn i32_bytes(&mut self, what: &'static str) -> Result<Option<Bytes>> {
        let len = self.i32(what)?;
        self.sized_bytes(i64::from(len), what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::records::{
        Compression, Record as KpRecord, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use proptest::prelude::*;
    use std::io::Write;

    // ---- test encoders ------------------------------------------------------------------

    /// A record to encode: key, value, headers, timestamp.
    #[derive(Clone)]
    struct TRec {
        key: Option<&'static [u8]>,
        value: Option<&'static [u8]>,
        headers: Vec<(&'static str, Option<&'static [u8]>)>,
        timestamp: i64,
    }

    fn sample_records() -> Vec<TRec> {
        vec![
            TRec {
                key: Some(b"key-0"),
                value: Some(b"value zero"),
                headers: vec![("h1", Some(b"v1")), ("h-null", None)],
                timestamp: 1_700_000_000_000,
            },
            TRec {
                key: None,
                value: Some(b"no key here"),
                headers: vec![],
                timestamp: 1_700_000_000_005,
            },
            TRec {
                key: Some(b""),
                value: None,
                headers: vec![("dup", Some(b"a")), ("dup", Some(b"b"))],
                timestamp: 1_700_000_000_003,
            },
            TRec {
                key: Some(b"\x00\xff binary"),
                value: Some(&[0u8; 300]),
                headers: vec![("\u{e9}t\u{e9}", Some(b""))],
                timestamp: 1_700_000_000_010,
            },
        ]
    }

    fn put_varint(buf: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                buf.push(b);
                return;
            }
            buf.push(b | 0x80);
        }
    }

    fn put_varint_bytes(buf: &mut Vec<u8>, b: Option<&[u8]>) {
        match b {
            None => put_varint(buf, -1),
            Some(b) => {
                put_varint(buf, b.len() as i64);
                buf.extend_from_slice(b);
            }
        }
    }

    fn encode_v2_records(records: &[TRec], base_ts: i64) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let mut body = vec![0u8]; // attributes
            put_varint(&mut body, r.timestamp - base_ts);
            put_varint(&mut body, i as i64);
            put_varint_bytes(&mut body, r.key);
            put_varint_bytes(&mut body, r.value);
            put_varint(&mut body, r.headers.len() as i64);
            for (k, v) in &r.headers {
                put_varint_bytes(&mut body, Some(k.as_bytes()));
                put_varint_bytes(&mut body, *v);
            }
            put_varint(&mut out, body.len() as i64);
            out.extend_from_slice(&body);
        }
        out
    }

    /// Snappy framing choice for test compression.
    #[derive(Clone, Copy, PartialEq)]
    enum SnappyFraming {
        Xerial,
        Raw,
    }

    fn xerial_compress(data: &[u8], block: usize) -> Vec<u8> {
        let mut out = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
        for chunk in data.chunks(block.max(1)) {
            let c = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
            out.extend_from_slice(&(c.len() as i32).to_be_bytes());
            out.extend_from_slice(&c);
        }
        out
    }

    fn lz4_frame(data: &[u8]) -> Vec<u8> {
        let mut enc = lz4::EncoderBuilder::new().build(Vec::new()).unwrap();
        enc.write_all(data).unwrap();
        let (out, res) = enc.finish();
        res.unwrap();
        out
    }

    fn compress(codec: Codec, data: &[u8], snappy: SnappyFraming) -> Vec<u8> {
        match codec {
            Codec::None => data.to_vec(),
            Codec::Gzip => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Codec::Snappy => match snappy {
                SnappyFraming::Xerial => xerial_compress(data, 64),
                SnappyFraming::Raw => snap::raw::Encoder::new().compress_vec(data).unwrap(),
            },
            Codec::Lz4 => lz4_frame(data),
            Codec::Zstd => zstd::encode_all(data, 3).unwrap(),
        }
    }

    struct V2Opts {
        base_offset: i64,
        attributes: i16,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
        snappy: SnappyFraming,
    }

    impl Default for V2Opts {
        fn default() -> Self {
            V2Opts {
                base_offset: 0,
                attributes: 0,
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
                snappy: SnappyFraming::Xerial,
            }
        }
    }

    /// Assemble a v2 batch around an already encoded (and possibly compressed) records section.
    fn v2_batch_raw(opts: &V2Opts, count: i32, base_ts: i64, records_section: &[u8]) -> Vec<u8> {
        let mut after_crc = Vec::new();
        after_crc.put_i16(opts.attributes);
        after_crc.put_i32(count - 1);
        after_crc.put_i64(base_ts);
        after_crc.put_i64(base_ts + 10);
        after_crc.put_i64(opts.producer_id);
        after_crc.put_i16(opts.producer_epoch);
        after_crc.put_i32(opts.base_sequence);
        after_crc.put_i32(count);
        after_crc.extend_from_slice(records_section);
        let mut out = Vec::new();
        out.put_i64(opts.base_offset);
        out.put_i32((4 + 1 + 4 + after_crc.len()) as i32);
        out.put_i32(-1); // partition leader epoch
        out.put_i8(2);
        out.put_u32(crc32c::crc32c(&after_crc));
        out.extend_from_slice(&after_crc);
        out
    }

    fn v2_batch(codec: Codec, records: &[TRec], opts: V2Opts) -> Vec<u8> {
        let base_ts = records.iter().map(|r| r.timestamp).min().unwrap_or(0);
        let section = compress(codec, &encode_v2_records(records, base_ts), opts.snappy);
        let opts = V2Opts {
            attributes: opts.attributes | codec.id() as i16,
            ..opts
        };
        v2_batch_raw(&opts, records.len() as i32, base_ts, &section)
    }

    /// Re-seal a v2 batch after editing: fix batch length and CRC.
    fn reseal_v2(batch: &mut [u8]) {
        let len = (batch.len() - 12) as i32;
        batch[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    fn legacy_message(
        offset: i64,
        magic: i8,
        attributes: i8,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut m = Vec::new();
        m.put_i8(magic);
        m.put_i8(attributes);
        if magic == 1 {
            m.put_i64(timestamp);
        }
        for b in [key, value] {
            match b {
                None => m.put_i32(-1),
                Some(b) => {
                    m.put_i32(b.len() as i32);
                    m.extend_from_slice(b);
                }
            }
        }
        let mut out = Vec::new();
        out.put_i64(offset);
        out.put_i32((m.len() + 4) as i32);
        out.put_u32(crc32fast::hash(&m));
        out.extend_from_slice(&m);
        out
    }

    /// A legacy message set, compressed into one wrapper message when `codec` != None.
    /// Inner offsets are relative (0..n) like the Java producer writes them.
    fn legacy_set(magic: i8, codec: Codec, records: &[TRec], snappy: SnappyFraming) -> Vec<u8> {
        let mut inner = Vec::new();
        for (i, r) in records.iter().enumerate() {
            inner.extend(legacy_message(
                i as i64,
                magic,
                0,
                r.timestamp,
                r.key,
                r.value,
            ));
        }
        if codec == Codec::None {
            return inner;
        }
        let mut compressed = compress(codec, &inner, snappy);
        if codec == Codec::Lz4 && magic == 0 {
            break_lz4_header_checksum(&mut compressed);
        }
        let max_ts = records.iter().map(|r| r.timestamp).max().unwrap();
        legacy_message(
            records.len() as i64 - 1,
            magic,
            codec.id() as i8,
            max_ts,
            None,
            Some(&compressed),
        )
    }

    /// Reproduce KAFKA-3160: the header checksum computed over the frame magic too.
    fn break_lz4_header_checksum(frame: &mut [u8]) {
        let flags = frame[4];
        let mut hc = 6;
        if flags & 0x08 != 0 {
            hc += 8;
        }
        if flags & 0x01 != 0 {
            hc += 4;
        }
        let broken = (xxh32(&frame[0..hc], 0) >> 8) as u8;
        assert_ne!(
            broken, frame[hc],
            "test needs a checksum that actually differs"
        );
        frame[hc] = broken;
    }

    /// kafka-protocol records; `seq_base` is the first record's sequence (-1 when not
    /// idempotent, which keeps `offset - sequence` constant so the encoder makes one batch).
    fn kp_records(
        records: &[TRec],
        producer_id: i64,
        seq_base: i32,
        transactional: bool,
    ) -> Vec<KpRecord> {
        records
            .iter()
            .enumerate()
            .map(|(i, r)| KpRecord {
                transactional,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id,
                producer_epoch: if producer_id >= 0 { 3 } else { -1 },
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: seq_base + i as i32,
                timestamp: r.timestamp,
                key: r.key.map(Bytes::from_static),
                value: r.value.map(Bytes::from_static),
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| ((*k).into(), v.map(Bytes::from_static)))
                    .collect(),
            })
            .collect()
    }

    /// kafka-protocol headers live in an IndexMap, so duplicate header keys cannot be encoded
    /// with it: use records whose header keys are unique per record.
    fn unique_header_records() -> Vec<TRec> {
        let mut recs = sample_records();
        recs[2].headers = vec![("x", Some(b"a")), ("y", Some(b"b"))];
        recs
    }

    fn kp_encode(
        records: &[TRec],
        compression: Compression,
        producer_id: i64,
        seq_base: i32,
        txn: bool,
    ) -> Bytes {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &kp_records(records, producer_id, seq_base, txn),
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.freeze()
    }

    fn owned_headers(r: &TRec) -> Vec<(String, Option<Bytes>)> {
        r.headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(Bytes::from_static)))
            .collect()
    }

    /// Assert decoded records equal the originals byte for byte (headers only for v2).
    fn assert_records(got: &[Record], want: &[TRec], first_index: usize, with_headers: bool) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.key.as_deref(), w.key, "key of record {i}");
            assert_eq!(g.value.as_deref(), w.value, "value of record {i}");
            if with_headers {
                assert_eq!(g.headers, owned_headers(w), "headers of record {i}");
            } else {
                assert!(g.headers.is_empty());
            }
            assert_eq!(g.index, first_index + i);
        }
    }

    const ALL_CODECS: [Codec; 5] = Codec::ALL;

    fn kp_compression(codec: Codec) -> Compression {
        match codec {
            Codec::None => Compression::None,
            Codec::Gzip => Compression::Gzip,
            Codec::Snappy => Compression::Snappy,
            Codec::Lz4 => Compression::Lz4,
            Codec::Zstd => Compression::Zstd,
        }
    }

    // ---- v2 -----------------------------------------------------------------------------

    #[test]
    fn v2_every_codec_from_kafka_protocol_encoder() {
        let recs = unique_header_records();
        for codec in ALL_CODECS {
            let data = kp_encode(&recs, kp_compression(codec), -1, -1, false);
            let batches = decode_batches(data.clone()).unwrap_or_else(|e| panic!("{codec}: {e}"));
            assert_eq!(batches.len(), 1, "{codec}");
            let b = &batches[0];
            assert_eq!((b.magic, b.codec), (2, codec));
            assert_eq!(b.record_count, recs.len());
            assert_eq!(b.producer_id, -1);
            assert!(!b.is_transactional && !b.is_control);
            assert_records(&b.records, &recs, 0, true);
            for (i, r) in b.records.iter().enumerate() {
                assert_eq!(r.offset, i as i64);
                assert_eq!(r.timestamp, recs[i].timestamp);
            }
            let s = summarize(&data).unwrap();
            assert_eq!(s.records, recs.len());
            assert_eq!(s.batches, 1);
            assert_eq!(s.magic, 2);
            assert_eq!(s.codecs.iter().collect::<Vec<_>>(), vec![codec]);
        }
    }

    #[test]
    fn v2_every_codec_from_own_encoder_with_offsets_and_raw_snappy() {
        let recs = sample_records();
        let mut cases: Vec<(Codec, SnappyFraming)> = ALL_CODECS
            .iter()
            .map(|c| (*c, SnappyFraming::Xerial))
            .collect();
        cases.push((Codec::Snappy, SnappyFraming::Raw));
        for (codec, snappy) in cases {
            let data = v2_batch(
                codec,
                &recs,
                V2Opts {
                    base_offset: 1000,
                    snappy,
                    ..V2Opts::default()
                },
            );
            if codec == Codec::Snappy {
                let raw = snappy == SnappyFraming::Raw;
                assert_eq!(!data[61..].starts_with(&XERIAL_MAGIC), raw);
            }
            let batches = decode_batches(Bytes::from(data)).unwrap();
            let b = &batches[0];
            assert_eq!(b.codec, codec);
            assert_eq!(b.base_offset, 1000);
            assert_records(&b.records, &recs, 0, true);
            let offsets: Vec<i64> = b.records.iter().map(|r| r.offset).collect();
            assert_eq!(offsets, vec![1000, 1001, 1002, 1003]);
        }
    }

    #[test]
    fn v2_multiple_batches_continue_index_and_flags() {
        let recs = unique_header_records();
        let mut data = BytesMut::new();
        data.extend_from_slice(&kp_encode(&recs[..2], Compression::Lz4, 77, 40, true));
        data.extend_from_slice(&kp_encode(&recs[2..], Compression::Zstd, 77, 42, true));
        data.extend_from_slice(&v2_batch(Codec::Gzip, &recs[..1], V2Opts::default()));
        let data = data.freeze();
        let batches = decode_batches(data.clone()).unwrap();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0].codec, Codec::Lz4);
        assert_eq!(batches[1].codec, Codec::Zstd);
        assert_eq!(batches[2].codec, Codec::Gzip);
        assert!(batches[0].is_transactional && batches[1].is_transactional);
        assert_eq!(
            (
                batches[0].producer_id,
                batches[0].producer_epoch,
                batches[0].base_sequence
            ),
            (77, 3, 40)
        );
        assert_eq!(batches[1].base_sequence, 42);
        assert_records(&batches[0].records, &recs[..2], 0, true);
        assert_records(&batches[1].records, &recs[2..], 2, true);
        assert_records(&batches[2].records, &recs[..1], 4, true);
        let indexes: Vec<usize> = batches
            .iter()
            .flat_map(|b| b.records.iter().map(|r| r.index))
            .collect();
        assert_eq!(indexes, vec![0, 1, 2, 3, 4]);

        let s = summarize(&data).unwrap();
        assert_eq!(s.batches, 3);
        assert_eq!(s.records, 5);
        assert!(s.idempotent && s.transactional && !s.control);
        assert_eq!(s.codecs.to_string(), "gzip,lz4,zstd");
        assert_eq!(s.codecs.len(), 3);
        assert!(!s.codecs.contains(Codec::None));
    }

    #[test]
    fn v2_control_batch_and_log_append_time() {
        let recs = sample_records();
        let data = v2_batch(
            Codec::None,
            &recs[..1],
            V2Opts {
                attributes: 0x20 | 0x10 | 0x08,
                producer_id: 5,
                ..V2Opts::default()
            },
        );
        let b = &decode_batches(Bytes::from(data.clone())).unwrap()[0];
        assert!(b.is_control && b.is_transactional);
        // LogAppendTime: every record reports the batch max timestamp (base_ts + 10 here).
        assert_eq!(b.records[0].timestamp, recs[0].timestamp + 10);
        let s = summarize(&Bytes::from(data)).unwrap();
        assert!(s.control && s.transactional && s.idempotent);
    }

    #[test]
    fn v2_uncompressed_is_zero_copy() {
        let data = kp_encode(&sample_records(), Compression::None, -1, -1, false);
        let range = data.as_ptr() as usize..data.as_ptr() as usize + data.len();
        let batches = decode_batches(data.clone()).unwrap();
        for r in &batches[0].records {
            for b in [&r.key, &r.value].into_iter().flatten() {
                if !b.is_empty() {
                    assert!(range.contains(&(b.as_ptr() as usize)));
                }
            }
        }
    }

    #[test]
    fn v2_bad_crc_is_an_error() {
        let mut data = v2_batch(Codec::None, &sample_records(), V2Opts::default());
        let last = data.len() - 1;
        data[last] ^= 0x01;
        let err = decode_batches(Bytes::from(data.clone())).unwrap_err();
        assert!(
            matches!(err, RecordsError::CrcMismatch { magic: 2, .. }),
            "{err}"
        );
        assert!(matches!(
            summarize(&Bytes::from(data)).unwrap_err(),
            RecordsError::CrcMismatch { .. }
        ));
    }

    #[test]
    fn v2_every_truncation_of_a_single_batch_errors() {
        for codec in ALL_CODECS {
            let data = Bytes::from(v2_batch(codec, &sample_records(), V2Opts::default()));
            for cut in 1..data.len() {
                let err = decode_batches(data.slice(..cut)).unwrap_err();
                assert!(
                    matches!(err, RecordsError::Truncated { .. }),
                    "{codec} cut {cut}: {err}"
                );
                assert!(summarize(&data.slice(..cut)).is_err());
            }
        }
    }

    #[test]
    fn partial_trailing_batch_is_ignored_after_a_complete_one() {
        let recs = sample_records();
        let first = v2_batch(Codec::None, &recs[..2], V2Opts::default());
        let second = v2_batch(Codec::Gzip, &recs[2..], V2Opts::default());
        for cut in 1..second.len() {
            let mut data = first.clone();
            data.extend_from_slice(&second[..cut]);
            let data = Bytes::from(data);
            let batches = decode_batches(data.clone()).unwrap();
            assert_eq!(batches.len(), 1);
            assert_records(&batches[0].records, &recs[..2], 0, true);
            assert_eq!(summarize(&data).unwrap().records, 2);
        }
    }

    #[test]
    fn v2_record_level_corruption_with_valid_crc_errors() {
        let recs = sample_records();
        // Declared count larger than the records present.
        let mut data = v2_batch(Codec::None, &recs, V2Opts::default());
        data[57..61].copy_from_slice(&5i32.to_be_bytes());
        reseal_v2(&mut data);
        let err = decode_batches(Bytes::from(data.clone())).unwrap_err();
        assert!(matches!(err, RecordsError::Truncated { .. }), "{err}");
        // ... summarize trusts the header and does not look at the records.
        assert_eq!(summarize(&Bytes::from(data)).unwrap().records, 5);

        // Declared count smaller: trailing bytes.
        let mut data = v2_batch(Codec::None, &recs, V2Opts::default());
        data[57..61].copy_from_slice(&3i32.to_be_bytes());
        reseal_v2(&mut data);
        assert!(matches!(
            decode_batches(Bytes::from(data)).unwrap_err(),
            RecordsError::TrailingBytes { .. }
        ));

        // A huge count with no records must not allocate for it.
        let mut data = v2_batch(Codec::None, &[], V2Opts::default());
        data[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        reseal_v2(&mut data);
        assert!(matches!(
            decode_batches(Bytes::from(data)).unwrap_err(),
            RecordsError::Truncated { .. }
        ));

        // Negative count.
        let mut data = v2_batch(Codec::None, &recs, V2Opts::default());
        data[57..61].copy_from_slice(&(-2i32).to_be_bytes());
        reseal_v2(&mut data);
        assert!(matches!(
            decode_batches(Bytes::from(data)).unwrap_err(),
            RecordsError::Invalid {
                what: "record count",
                ..
            }
        ));

        // Invalid UTF-8 header key.
        let rec = TRec {
            key: None,
            value: None,
            headers: vec![("k", None)],
            timestamp: 0,
        };
        let mut data = v2_batch(Codec::None, &[rec], V2Opts::default());
        let pos = data.iter().rposition(|b| *b == b'k').unwrap();
        data[pos] = 0xff;
        reseal_v2(&mut data);
        assert_eq!(
            decode_batches(Bytes::from(data)).unwrap_err(),
            RecordsError::InvalidHeaderKey
        );

        // Corrupt compressed payload: CRC fine, summarize fine, decode fails.
        let mut data = v2_batch(Codec::Zstd, &recs, V2Opts::default());
        let n = data.len();
        data.truncate(n - 3);
        reseal_v2(&mut data);
        let data = Bytes::from(data);
        assert_eq!(summarize(&data).unwrap().records, 4);
        assert!(matches!(
            decode_batches(data).unwrap_err(),
            RecordsError::Decompression {
                codec: Codec::Zstd,
                ..
            }
        ));
    }

    #[test]
    fn unknown_codec_and_magic_error() {
        let mut data = v2_batch(Codec::None, &sample_records(), V2Opts::default());
        data[22] |= 0x07; // attributes low byte: codec 7
        reseal_v2(&mut data);
        assert_eq!(
            decode_batches(Bytes::from(data)).unwrap_err(),
            RecordsError::UnknownCodec { id: 7, magic: 2 }
        );

        let mut data = v2_batch(Codec::None, &sample_records(), V2Opts::default());
        data[16] = 3;
        assert_eq!(
            decode_batches(Bytes::from(data.clone())).unwrap_err(),
            RecordsError::UnsupportedMagic(3)
        );
        assert_eq!(
            summarize(&Bytes::from(data)).unwrap_err(),
            RecordsError::UnsupportedMagic(3)
        );

        // zstd is not valid in legacy message sets.
        let data = legacy_message(0, 1, 4, 0, None, Some(b"x"));
        assert_eq!(
            decode_batches(Bytes::from(data)).unwrap_err(),
            RecordsError::UnknownCodec { id: 4, magic: 1 }
        );
    }

    #[test]
    fn truncated_compressed_payloads_error() {
        let recs = sample_records();
        let plain = encode_v2_records(&recs, recs[0].timestamp);
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            for framing in [SnappyFraming::Xerial, SnappyFraming::Raw] {
                let full = compress(codec, &plain, framing);
                for cut in [1, full.len() / 2, full.len() - 1] {
                    let data = v2_batch_raw(
                        &V2Opts {
                            attributes: codec.id() as i16,
                            ..V2Opts::default()
                        },
                        recs.len() as i32,
                        recs[0].timestamp,
                        &full[..cut],
                    );
                    let err = decode_batches(Bytes::from(data)).unwrap_err();
                    assert!(
                        matches!(err, RecordsError::Decompression { codec: c, .. } if c == codec),
                        "{codec} cut {cut}: {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn decompression_is_bounded() {
        let big = TRec {
            key: None,
            value: Some(&[b'z'; 100_000]),
            headers: vec![],
            timestamp: 0,
        };
        let recs = vec![big.clone(), big.clone(), big];
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let data = Bytes::from(v2_batch(codec, &recs, V2Opts::default()));
            assert!(data.len() < 100_000, "{codec} should compress well");
            assert_eq!(
                decode_batches_with_limit(data.clone(), 250_000).unwrap_err(),
                RecordsError::DecompressedTooLarge {
                    codec,
                    limit: 250_000
                }
            );
            assert_eq!(
                decode_batches_with_limit(data.clone(), 400_000).unwrap()[0].records[2]
                    .value
                    .as_ref()
                    .unwrap()
                    .len(),
                100_000
            );
            // The budget is shared by all batches of one call.
            let mut two = data.to_vec();
            two.extend_from_slice(&data);
            assert!(matches!(
                decode_batches_with_limit(Bytes::from(two), 400_000).unwrap_err(),
                RecordsError::DecompressedTooLarge { .. }
            ));
        }
        // A raw snappy block claiming a huge length is rejected before allocating it.
        let mut claim = Vec::new();
        let mut n: u64 = u32::MAX as u64;
        while n >= 0x80 {
            claim.push((n as u8) | 0x80);
            n >>= 7;
        }
        claim.push(n as u8);
        claim.extend_from_slice(b"\x00garbage");
        let data = v2_batch_raw(
            &V2Opts {
                attributes: 2,
                ..V2Opts::default()
            },
            1,
            0,
            &claim,
        );
        assert!(matches!(
            decode_batches(Bytes::from(data)).unwrap_err(),
            RecordsError::DecompressedTooLarge {
                codec: Codec::Snappy,
                ..
            }
        ));
    }

    #[test]
    fn xerial_concatenated_streams() {
        let recs = sample_records();
        let plain = encode_v2_records(&recs, recs[0].timestamp);
        let (a, b) = plain.split_at(plain.len() / 2);
        let mut section = xerial_compress(a, 1000);
        section.extend(xerial_compress(b, 7));
        let data = v2_batch_raw(
            &V2Opts {
                attributes: 2,
                ..V2Opts::default()
            },
            recs.len() as i32,
            recs[0].timestamp,
            &section,
        );
        let batches = decode_batches(Bytes::from(data)).unwrap();
        assert_records(&batches[0].records, &recs, 0, true);
    }

    // ---- legacy -------------------------------------------------------------------------

    #[test]
    fn legacy_uncompressed_magic_0_and_1() {
        let recs = sample_records();
        for magic in [0i8, 1] {
            let data = Bytes::from(legacy_set(magic, Codec::None, &recs, SnappyFraming::Raw));
            let batches = decode_batches(data.clone()).unwrap();
            assert_eq!(
                batches.len(),
                recs.len(),
                "one batch per uncompressed message"
            );
            let records: Vec<Record> = batches.iter().flat_map(|b| b.records.clone()).collect();
            assert_records(&records, &recs, 0, false);
            for (i, (b, r)) in batches.iter().zip(&records).enumerate() {
                assert_eq!((b.magic, b.codec, b.record_count), (magic, Codec::None, 1));
                assert_eq!(
                    (b.producer_id, b.producer_epoch, b.base_sequence),
                    (-1, -1, -1)
                );
                assert_eq!(r.offset, i as i64);
                let ts = if magic == 0 { -1 } else { recs[i].timestamp };
                assert_eq!(r.timestamp, ts);
            }
            let s = summarize(&data).unwrap();
            assert_eq!((s.batches, s.records, s.magic), (4, 4, magic));
            assert!(!s.idempotent && !s.transactional);
            assert_eq!(s.codecs.to_string(), "none");
        }
    }

    #[test]
    fn legacy_compressed_every_codec_and_framing() {
        let recs = sample_records();
        let cases = [
            (Codec::Gzip, SnappyFraming::Raw),
            (Codec::Snappy, SnappyFraming::Xerial),
            (Codec::Snappy, SnappyFraming::Raw),
            (Codec::Lz4, SnappyFraming::Raw),
        ];
        for magic in [0i8, 1] {
            for (codec, framing) in cases {
                let data = Bytes::from(legacy_set(magic, codec, &recs, framing));
                let batches = decode_batches(data.clone())
                    .unwrap_or_else(|e| panic!("magic {magic} {codec}: {e}"));
                assert_eq!(batches.len(), 1);
                let b = &batches[0];
                assert_eq!((b.magic, b.codec, b.record_count), (magic, codec, 4));
                assert_eq!(b.base_offset, 3, "wrapper offset");
                assert_records(&b.records, &recs, 0, false);
                for (i, r) in b.records.iter().enumerate() {
                    assert_eq!(r.offset, i as i64, "inner offset");
                    let ts = if magic == 0 { -1 } else { recs[i].timestamp };
                    assert_eq!(r.timestamp, ts);
                }
                let s = summarize(&data).unwrap();
                assert_eq!((s.batches, s.records, s.magic), (1, 4, magic));
                assert_eq!(s.codecs.iter().collect::<Vec<_>>(), vec![codec]);
            }
        }
    }

    #[test]
    fn legacy_lz4_header_checksum_strict_for_magic_1() {
        // magic 0 with the KAFKA-3160 checksum decodes (tested above); the same broken frame in
        // a magic 1 message is rejected, as the Java broker does.
        let recs = sample_records();
        let mut inner = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            inner.extend(legacy_message(i as i64, 1, 0, 5, r.key, r.value));
        }
        let mut frame = lz4_frame(&inner);
        break_lz4_header_checksum(&mut frame);
        let data = legacy_message(3, 1, 3, 5, None, Some(&frame));
        assert!(matches!(
            decode_batches(Bytes::from(data)).unwrap_err(),
            RecordsError::Decompression {
                codec: Codec::Lz4,
                ..
            }
        ));
    }

    #[test]
    fn legacy_log_append_time_wrapper_timestamp_wins() {
        let recs = sample_records();
        let inner: Vec<u8> = recs
            .iter()
            .enumerate()
            .flat_map(|(i, r)| legacy_message(i as i64, 1, 0, r.timestamp, r.key, r.value))
            .collect();
        let data = legacy_message(
            3,
            1,
            0x08 | 1,
            42,
            None,
            Some(&compress(Codec::Gzip, &inner, SnappyFraming::Raw)),
        );
        let b = &decode_batches(Bytes::from(data)).unwrap()[0];
        assert!(b.records.iter().all(|r| r.timestamp == 42));
    }

    #[test]
    fn legacy_mixed_with_v2_and_partial_tail() {
        let recs = sample_records();
        let mut data = legacy_set(1, Codec::Snappy, &recs[..2], SnappyFraming::Xerial);
        data.extend(legacy_message(9, 0, 0, 0, Some(b"k"), Some(b"v")));
        data.extend(v2_batch(Codec::Lz4, &recs[2..], V2Opts::default()));
        let tail = legacy_message(10, 1, 0, 0, Some(b"k"), Some(b"partial"));
        data.extend_from_slice(&tail[..tail.len() - 2]);
        let data = Bytes::from(data);
        let batches = decode_batches(data.clone()).unwrap();
        assert_eq!(batches.len(), 3);
        assert_records(&batches[0].records, &recs[..2], 0, false);
        assert_eq!(batches[1].records[0].value.as_deref(), Some(&b"v"[..]));
        assert_eq!(batches[1].records[0].index, 2);
        assert_records(&batches[2].records, &recs[2..], 3, true);
        let s = summarize(&data).unwrap();
        assert_eq!((s.batches, s.records, s.magic), (3, 5, 2));
        assert_eq!(s.codecs.to_string(), "none,snappy,lz4");
    }

    #[test]
    fn legacy_bad_crc_and_malformed_wrappers() {
        let mut data = legacy_message(0, 1, 0, 1, Some(b"k"), Some(b"value"));
        let last = data.len() - 1;
        data[last] ^= 0x20;
        assert!(matches!(
            decode_batches(Bytes::from(data)).unwrap_err(),
            RecordsError::CrcMismatch { magic: 1, .. }
        ));

        // Bad CRC of an inner message.
        let mut inner = legacy_message(0, 0, 0, 0, Some(b"k"), Some(b"value"));
        let last = inner.len() - 1;
        inner[last] ^= 0x20;
        let data = legacy_message(
            0,
            0,
            1,
            0,
            None,
            Some(&compress(Codec::Gzip, &inner, SnappyFraming::Raw)),
        );
        assert!(matches!(
            decode_batches(Bytes::from(data)).unwrap_err(),
            RecordsError::CrcMismatch { magic: 0, .. }
        ));

        let gz = |b: &[u8]| compress(Codec::Gzip, b, SnappyFraming::Raw);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            // Null wrapper value.
            (
                legacy_message(0, 1, 1, 0, None, None),
                "compressed wrapper message",
            ),
            // Empty inner set.
            (
                legacy_message(0, 1, 1, 0, None, Some(&gz(b""))),
                "compressed wrapper message",
            ),
            // Inner magic differs from wrapper magic.
            (
                legacy_message(
                    0,
                    1,
                    1,
                    0,
                    None,
                    Some(&gz(&legacy_message(0, 0, 0, 0, None, Some(b"v")))),
                ),
                "inner message magic",
            ),
            // Nested compression.
            (
                legacy_message(
                    0,
                    1,
                    1,
                    0,
                    None,
                    Some(&gz(&legacy_message(0, 1, 1, 0, None, Some(b"v")))),
                ),
                "inner message",
            ),
        ];
        for (data, what) in cases {
            match decode_batches(Bytes::from(data)).unwrap_err() {
                RecordsError::Invalid { what: w, .. } => assert_eq!(w, what),
                other => panic!("expected Invalid({what}), got {other}"),
            }
        }

        // A partial inner message is an error (unlike a partial top-level tail).
        let inner = legacy_message(0, 1, 0, 0, None, Some(b"value"));
        let data = legacy_message(0, 1, 1, 0, None, Some(&gz(&inner[..inner.len() - 1])));
        assert!(matches!(
            decode_batches(Bytes::from(data)).unwrap_err(),
            RecordsError::Truncated { .. }
        ));

        // Every truncation of a single legacy message errors.
        let data = Bytes::from(legacy_set(
            1,
            Codec::Lz4,
            &sample_records(),
            SnappyFraming::Raw,
        ));
        for cut in 1..data.len() {
            assert!(matches!(
                decode_batches(data.slice(..cut)).unwrap_err(),
                RecordsError::Truncated { .. }
            ));
        }
    }

    #[test]
    fn empty_input() {
        assert!(decode_batches(Bytes::new()).unwrap().is_empty());
        let s = summarize(&Bytes::new()).unwrap();
        assert_eq!((s.batches, s.records, s.magic), (0, 0, -1));
        assert!(s.codecs.is_empty());
    }

    #[test]
    fn xxh32_matches_reference_and_lz4_library() {
        assert_eq!(xxh32(b"", 0), 0x02CC_5D05);
        assert_eq!(xxh32(b"abc", 0), 0x32D1_53FF);
        assert_eq!(
            xxh32(b"Nobody inspects the spammish repetition", 0),
            0xE229_3B2F
        );
        // The checksum we compute agrees with the one the C library writes.
        let frame = lz4_frame(b"hello");
        assert!(matches!(fix_lz4_header_checksum(&frame), Cow::Borrowed(_)));
        assert_eq!(lz4_header_checksum(&frame[4..6]), frame[6]);
    }

    #[test]
    fn codec_display() {
        let names: Vec<String> = Codec::ALL.iter().map(|c| c.to_string()).collect();
        assert_eq!(names, ["none", "gzip", "snappy", "lz4", "zstd"]);
        let set: CodecSet = [Codec::Zstd, Codec::None].into_iter().collect();
        assert_eq!(set.to_string(), "none,zstd");
        assert_eq!(format!("{set:?}"), "{None, Zstd}");
    }

    // ---- robustness ---------------------------------------------------------------------

    fn check_no_panic(data: Vec<u8>) {
        let data = Bytes::from(data);
        let decoded = decode_batches_with_limit(data.clone(), 1 << 20);
        let summary = summarize_with_limit(&data, 1 << 20);
        // Whatever decodes must also summarize to the same count.
        if let Ok(batches) = decoded {
            let summary = summary.expect("decode succeeded, summarize must too");
            let n: usize = batches.iter().map(|b| b.record_count).sum();
            assert_eq!(n, summary.records);
        }
    }

    /// An entry with a valid CRC around arbitrary content, so fuzzing gets past the checksum.
    fn sealed_entry(magic: i8, attributes: u8, body: &[u8], count: i32) -> Vec<u8> {
        if magic == 2 {
            let mut section = Vec::new();
            section.put_i16(i16::from(attributes));
            section.extend_from_slice(&[0u8; 36]);
            section.put_i32(count);
            section.extend_from_slice(body);
            let mut out = Vec::new();
            out.put_i64(0);
            out.put_i32((9 + section.len()) as i32);
            out.put_i32(0);
            out.put_i8(2);
            out.put_u32(crc32c::crc32c(&section));
            out.extend(section);
            out
        } else {
            let mut m = vec![magic as u8, attributes];
            m.extend_from_slice(body);
            let mut out = Vec::new();
            out.put_i64(0);
            out.put_i32((m.len() + 4) as i32);
            out.put_u32(crc32fast::hash(&m));
            out.extend(m);
            out
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            check_no_panic(data);
        }

        #[test]
        fn arbitrary_sealed_entries_never_panic(
            magic in 0i8..=2,
            attributes in any::<u8>(),
            count in -2i32..8,
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            check_no_panic(sealed_entry(magic, attributes, &body, count));
        }

        #[test]
        fn compressed_garbage_never_panics(
            magic in 0i8..=2,
            codec in 1u8..=4,
            count in 0i32..8,
            xerial in any::<bool>(),
            plain in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let codec = Codec::from_id(codec, 2).unwrap();
            let framing = if xerial { SnappyFraming::Xerial } else { SnappyFraming::Raw };
            let compressed = compress(codec, &plain, framing);
            let data = if magic == 2 {
                sealed_entry(2, codec.id(), &compressed, count)
            } else {
                legacy_message(0, magic, codec.id() as i8, 0, None, Some(&compressed))
            };
            check_no_panic(data);
        }

        #[test]
        fn mutated_valid_batches_never_panic(
            codec_i in 0usize..5,
            legacy in any::<bool>(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let codec = Codec::ALL[codec_i];
            let recs = sample_records();
            let mut data = if legacy && codec != Codec::Zstd {
                legacy_set(1, codec, &recs, SnappyFraming::Xerial)
            } else {
                v2_batch(codec, &recs, V2Opts::default())
            };
            // Mutate past the CRC field and re-seal so the mutation reaches the parsers.
            let start = if data[16] == 2 { 21 } else { 17 };
            for (idx, byte) in edits {
                let i = start + idx.index(data.len() - start);
                data[i] = byte;
            }
            if data[16] == 2 {
                reseal_v2(&mut data);
            } else {
                let crc = crc32fast::hash(&data[16..]);
                data[12..16].copy_from_slice(&crc.to_be_bytes());
            }
            check_no_panic(data);
        }
    }
}
