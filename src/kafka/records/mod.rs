//! Decoding of Kafka record data: v2 record batches (magic 2) and legacy message sets
//! (magic 0 and 1), with every codec Kafka supports (none, gzip, snappy, lz4, zstd).
//!
//! This runs off the proxy's hot path on bytes taken from client requests, so nothing in here
//! may panic or allocate in proportion to a length/count field that the input merely *claims*:
//! every malformed input yields a [`RecordsError`]. Memory is bounded by a [`DecodeBudget`]
//! (see [`DEFAULT_MAX_DECODE_BYTES`]), charged for decompressed bytes as they stream out and
//! for every decoded record a caller keeps; going past it gives [`RecordsError::OverLimit`].
//! [`records`] decodes lazily, one record at a time, and record headers stay wire bytes until
//! one is looked up ([`Headers::get`]), so a batch of ten million empty records or a record with
//! a million headers costs its decompressed bytes and nothing more.
//!
//! # Offsets
//!
//! In a Produce request the broker assigns offsets: the partition's records get
//! `response.base_offset + 0, +1, +2, ...` in the order they appear, across all batches of the
//! partition. [`Record::index`] is exactly that position (0-based, counted across every batch in
//! the bytes decoded), so **the Kafka offset of a produced record is `base_offset + index`**.
//! [`Record::offset`] is only what the producer wrote:
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

mod compression;
mod cursor;
mod legacy;
mod v2;

use std::cell::Cell;
use std::fmt;

use bytes::{Buf, Bytes};

pub use compression::{Codec, CodecSet};
use cursor::Cursor;
use legacy::{parse_legacy_message, InnerMessages, LegacyRecords};
use v2::{parse_v2_header, V2Records};
pub use v2::{HeaderIter, Headers};

/// Default limit of a [`DecodeBudget`]: what one decode of one partition's records may hold.
/// The mirror decodes on a few threads at once, so its decode memory is a small multiple of
/// this; a legitimate batch (Kafka's default `max.message.bytes` is 1 MiB) stays far below it
/// even at a 30x compression ratio.
pub const DEFAULT_MAX_DECODE_BYTES: usize = 64 * 1024 * 1024;

/// Size of the `offset: i64, size: i32` prefix shared by v2 batches and legacy messages.
const LOG_OVERHEAD: usize = 12;
/// Position of the magic byte within an entry's body (after offset and size), for every format.
const MAGIC_POS: usize = 4;

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
    /// Headers, parsed only on demand. Always empty for magic 0/1.
    pub headers: Headers,
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
    /// The producer of the first transactional batch, if any: Kafka takes one batch per
    /// partition in a Produce request, so that is the partition's transaction.
    pub transaction: Option<ProducerEpoch>,
    /// Some batch is a control batch.
    pub control: bool,
    /// Highest magic seen; -1 for empty data.
    pub magic: i8,
}

/// A producer session as a batch header names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProducerEpoch {
    pub producer_id: i64,
    pub epoch: i16,
}

impl BatchSummary {
    /// Some batch is transactional.
    pub fn transactional(&self) -> bool {
        self.transaction.is_some()
    }
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
    #[error("decoding needs more than its limit of {limit} bytes ({spending})")]
    OverLimit { spending: Spending, limit: usize },
}

type Result<T, E = RecordsError> = std::result::Result<T, E>;

/// What a decode spent its budget on, for [`RecordsError::OverLimit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spending {
    /// Decompressed bytes, which the decode holds while it iterates over them.
    Decompressed(Codec),
    /// Decoded records the caller keeps: [`decode_batches`]' records, or what a caller makes
    /// of the records it iterates over and charges with [`DecodeBudget::charge`].
    Records,
}

impl fmt::Display for Spending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Spending::Decompressed(codec) => write!(f, "{codec} output"),
            Spending::Records => f.write_str("decoded records"),
        }
    }
}

/// The memory one decode may hold: decompressed bytes and kept records are charged to it as
/// they are produced, and never released, so the limit bounds the decode's peak. Shared by
/// reference between the decoder and the caller building on its records.
#[derive(Debug)]
pub struct DecodeBudget {
    limit: usize,
    used: Cell<usize>,
}

impl DecodeBudget {
    pub fn new(limit: usize) -> Self {
        DecodeBudget {
            limit,
            used: Cell::new(0),
        }
    }

    /// Takes `bytes` from the budget, or fails with [`RecordsError::OverLimit`] if they do not
    /// fit (then nothing is taken).
    pub fn charge(&self, spending: Spending, bytes: usize) -> Result<()> {
        let used = self.used.get();
        match used.checked_add(bytes).filter(|total| *total <= self.limit) {
            Some(total) => {
                self.used.set(total);
                Ok(())
            }
            None => Err(RecordsError::OverLimit {
                spending,
                limit: self.limit,
            }),
        }
    }

    pub fn used(&self) -> usize {
        self.used.get()
    }

    fn remaining(&self) -> usize {
        self.limit - self.used.get()
    }
}

/// Decode every batch in a produce partition's `records` bytes (v2 batches and legacy message
/// sets, every codec), keeping uncompressed keys/values/headers as slices of `data`. Headers
/// are validated (UTF-8 keys, exact lengths) but not parsed into values. Memory is bounded by
/// [`DEFAULT_MAX_DECODE_BYTES`].
pub fn decode_batches(data: Bytes) -> Result<Vec<Batch>> {
    decode_batches_with_limit(data, DEFAULT_MAX_DECODE_BYTES)
}

/// [`decode_batches`] with an explicit limit on its memory: decompressed bytes plus the
/// batches and records it returns.
pub fn decode_batches_with_limit(data: Bytes, limit: usize) -> Result<Vec<Batch>> {
    let budget = DecodeBudget::new(limit);
    let mut batches = Batches::new(data, &budget);
    let mut decoded = Vec::new();
    let mut index = 0usize;
    while let Some((mut batch, mut records)) = batches.next_batch()? {
        budget.charge(Spending::Records, std::mem::size_of::<Batch>())?;
        while let Some(record) = records.next_record(index)? {
            budget.charge(Spending::Records, std::mem::size_of::<Record>())?;
            record.headers.validate()?;
            batch.records.push(record);
            index += 1;
        }
        batch.record_count = batch.records.len();
        decoded.push(batch);
    }
    Ok(decoded)
}

/// The records of a produce partition's `data`, decoded one at a time, with their positions
/// as [`Record::index`]. Control batches' records (transaction markers) are decoded, and
/// counted in the positions, but not returned. Decompressed bytes are charged to `budget`;
/// the first error ends the iteration.
pub fn records(data: Bytes, budget: &DecodeBudget) -> Records<'_> {
    Records {
        batches: Batches::new(data, budget),
        current: None,
        next_index: 0,
    }
}

/// See [`records`].
pub struct Records<'b> {
    batches: Batches<'b>,
    /// The batch being read, and whether it is a control batch.
    current: Option<(BatchRecords, bool)>,
    next_index: usize,
}

impl Records<'_> {
    fn advance(&mut self) -> Result<Option<Record>> {
        loop {
            if let Some((records, is_control)) = &mut self.current {
                if let Some(record) = records.next_record(self.next_index)? {
                    self.next_index += 1;
                    if *is_control {
                        continue;
                    }
                    return Ok(Some(record));
                }
            }
            match self.batches.next_batch()? {
                Some((batch, records)) => self.current = Some((records, batch.is_control)),
                None => return Ok(None),
            }
        }
    }
}

impl Iterator for Records<'_> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.advance().transpose();
        if matches!(item, Some(Err(_))) {
            self.batches.rest.clear();
            self.current = None;
        }
        item
    }
}

/// Count records and list codecs without decoding records. v2 batches are not decompressed
/// (the header carries the record count) but their CRC is verified; legacy compressed wrapper
/// messages must be decompressed (and their inner messages validated, one at a time) to be
/// counted. Memory is bounded by [`DEFAULT_MAX_DECODE_BYTES`].
pub fn summarize(data: &Bytes) -> Result<BatchSummary> {
    summarize_with_limit(data, DEFAULT_MAX_DECODE_BYTES)
}

/// [`summarize`] with an explicit limit on the decompressed bytes it holds.
pub fn summarize_with_limit(data: &Bytes, limit: usize) -> Result<BatchSummary> {
    let budget = DecodeBudget::new(limit);
    let mut summary = BatchSummary {
        batches: 0,
        records: 0,
        codecs: CodecSet::default(),
        idempotent: false,
        transaction: None,
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
                if header.is_transactional() && summary.transaction.is_none() {
                    summary.transaction = Some(ProducerEpoch {
                        producer_id: header.producer_id,
                        epoch: header.producer_epoch,
                    });
                }
                summary.control |= header.is_control();
            }
            0 | 1 => {
                let message = parse_legacy_message(entry.offset, entry.body, magic)?;
                summary.codecs.insert(message.codec);
                let mut count = 1;
                if message.codec != Codec::None {
                    count = 0;
                    let mut inner = InnerMessages::new(&message, &budget)?;
                    while inner.next_message()?.is_some() {
                        count += 1;
                    }
                }
                summary.records = summary.records.saturating_add(count);
            }
            _ => return Err(RecordsError::UnsupportedMagic(magic)),
        }
        summary.magic = summary.magic.max(magic);
        summary.batches += 1;
    }
    Ok(summary)
}

/// The header of a produced partition's one v2 batch, which is all a broker takes from
/// Produce v3 on; read without decompressing records, but CRC-checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducedBatch {
    /// -1 when not idempotent.
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: usize,
    pub is_transactional: bool,
}

/// The one v2 batch `data` must be; anything else (several batches, a legacy message set,
/// bytes after the batch) is an error, as a broker refuses it.
pub fn sole_v2_batch(data: &Bytes) -> Result<ProducedBatch> {
    let mut rest = data.clone();
    let entry = next_entry(&mut rest, 0)?.ok_or(RecordsError::Truncated {
        what: "record batch",
        needed: LOG_OVERHEAD,
        remaining: 0,
    })?;
    if entry.magic != 2 {
        return Err(RecordsError::UnsupportedMagic(entry.magic));
    }
    if !rest.is_empty() {
        return Err(RecordsError::Invalid {
            what: "produced records",
            reason: "more than one record batch (Produce v3+ takes exactly one)".to_owned(),
        });
    }
    let header = parse_v2_header(entry.offset, entry.body)?;
    Ok(ProducedBatch {
        producer_id: header.producer_id,
        producer_epoch: header.producer_epoch,
        base_sequence: header.base_sequence,
        record_count: header.record_count,
        is_transactional: header.is_transactional(),
    })
}

// ---------------------------------------------------------------------------------------------
// Batches

/// Splits record data into batches and opens each for decoding.
struct Batches<'b> {
    rest: Bytes,
    seen: usize,
    budget: &'b DecodeBudget,
}

impl<'b> Batches<'b> {
    fn new(data: Bytes, budget: &'b DecodeBudget) -> Self {
        Batches {
            rest: data,
            seen: 0,
            budget,
        }
    }

    /// The next batch's fields (with no records yet) and its records to decode.
    fn next_batch(&mut self) -> Result<Option<(Batch, BatchRecords)>> {
        let Some(entry) = next_entry(&mut self.rest, self.seen)? else {
            return Ok(None);
        };
        self.seen += 1;
        let opened = match entry.magic {
            2 => {
                let header = parse_v2_header(entry.offset, entry.body)?;
                let batch = Batch {
                    magic: 2,
                    codec: header.codec,
                    base_offset: header.base_offset,
                    producer_id: header.producer_id,
                    producer_epoch: header.producer_epoch,
                    base_sequence: header.base_sequence,
                    is_transactional: header.is_transactional(),
                    is_control: header.is_control(),
                    record_count: 0,
                    records: Vec::new(),
                };
                (
                    batch,
                    BatchRecords::V2(V2Records::new(header, self.budget)?),
                )
            }
            0 | 1 => {
                let message = parse_legacy_message(entry.offset, entry.body, entry.magic)?;
                let batch = Batch {
                    magic: message.magic,
                    codec: message.codec,
                    base_offset: entry.offset,
                    producer_id: -1,
                    producer_epoch: -1,
                    base_sequence: -1,
                    is_transactional: false,
                    is_control: false,
                    record_count: 0,
                    records: Vec::new(),
                };
                let records = LegacyRecords::new(message, self.budget)?;
                (batch, BatchRecords::Legacy(records))
            }
            magic => return Err(RecordsError::UnsupportedMagic(magic)),
        };
        Ok(Some(opened))
    }
}

/// The records of one batch, decoded one at a time.
enum BatchRecords {
    V2(V2Records),
    Legacy(LegacyRecords),
}

impl BatchRecords {
    fn next_record(&mut self, index: usize) -> Result<Option<Record>> {
        match self {
            BatchRecords::V2(records) => records.next_record(index),
            BatchRecords::Legacy(records) => records.next_record(index),
        }
    }
}

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

#[cfg(test)]
mod tests;
