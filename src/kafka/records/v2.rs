//! v2 record batches (magic 2): the batch header, records decoded one at a time, and headers
//! kept as wire bytes until someone asks for one.

use bytes::Bytes;

use super::compression::{decompress, Codec};
use super::cursor::Cursor;
use super::{DecodeBudget, Record, RecordsError, Result};

/// v2 batch header bytes after the `batchLength` field (partitionLeaderEpoch .. recordCount).
const V2_HEADER_LEN: usize = 49;

pub(super) struct V2Header {
    pub(super) base_offset: i64,
    attributes: i16,
    pub(super) codec: Codec,
    base_timestamp: i64,
    max_timestamp: i64,
    pub(super) producer_id: i64,
    pub(super) producer_epoch: i16,
    pub(super) base_sequence: i32,
    pub(super) record_count: usize,
    /// Records section, possibly compressed.
    records: Bytes,
}

impl V2Header {
    fn log_append_time(&self) -> bool {
        self.attributes & 0x08 != 0
    }
    pub(super) fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }
    pub(super) fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

/// Parse and CRC-check a v2 batch header. `body` starts at partitionLeaderEpoch.
pub(super) fn parse_v2_header(base_offset: i64, body: Bytes) -> Result<V2Header> {
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

/// The records of one v2 batch, decoded one at a time from its (decompressed) bytes: nothing
/// is sized from the record count the batch claims.
pub(super) struct V2Records {
    base_offset: i64,
    /// What every record's timestamp is relative to, or, for LogAppendTime, is.
    timestamp_base: i64,
    log_append_time: bool,
    cursor: Cursor,
    left: usize,
}

impl V2Records {
    pub(super) fn new(header: V2Header, budget: &DecodeBudget) -> Result<Self> {
        let compressed =
            header.codec != Codec::None && !(header.records.is_empty() && header.record_count == 0);
        let data = if compressed {
            decompress(header.codec, &header.records, 2, budget)?
        } else {
            header.records.clone()
        };
        Ok(V2Records {
            base_offset: header.base_offset,
            timestamp_base: if header.log_append_time() {
                header.max_timestamp
            } else {
                header.base_timestamp
            },
            log_append_time: header.log_append_time(),
            cursor: Cursor::new(data),
            left: header.record_count,
        })
    }

    /// The next record, which gets `index`; `None` after the last one the header counts.
    pub(super) fn next_record(&mut self, index: usize) -> Result<Option<Record>> {
        if self.left == 0 {
            if self.cursor.remaining() != 0 {
                return Err(RecordsError::TrailingBytes {
                    what: "v2 batch records",
                    remaining: self.cursor.remaining(),
                });
            }
            return Ok(None);
        }
        self.left -= 1;
        let length = self.cursor.varint_len("record length")?;
        let mut record = Cursor::new(self.cursor.take(length, "record")?);
        let _attributes = record.i8("record attributes")?;
        let timestamp_delta = record.varlong("record timestamp delta")?;
        let offset_delta = record.varint("record offset delta")?;
        let key = record.varint_bytes("record key")?;
        let value = record.varint_bytes("record value")?;
        let count = record.varint_len("record header count")?;
        Ok(Some(Record {
            offset: self.base_offset.wrapping_add(i64::from(offset_delta)),
            timestamp: if self.log_append_time {
                self.timestamp_base
            } else {
                self.timestamp_base.wrapping_add(timestamp_delta)
            },
            key,
            value,
            headers: Headers {
                count,
                wire: record.into_rest(),
            },
            index,
        }))
    }
}

/// A v2 record's headers, kept as their wire bytes and parsed only when asked for: a record
/// with a million headers costs its bytes and nothing more. Magic 0 and 1 have none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// As the record claims it; only parsing tells whether the bytes hold that many.
    count: usize,
    wire: Bytes,
}

impl Headers {
    /// How many headers the record claims to have.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The headers in wire order (duplicates kept), as key and value bytes.
    pub fn iter(&self) -> HeaderIter {
        HeaderIter {
            cursor: Cursor::new(self.wire.clone()),
            left: self.count,
        }
    }

    /// The value of the first header named `name`, `None` when there is none or it is null.
    /// Only the headers before it are parsed, and nothing is allocated.
    pub fn get(&self, name: &str) -> Result<Option<Bytes>> {
        for header in self.iter() {
            let (key, value) = header?;
            if key == name.as_bytes() {
                return Ok(value);
            }
        }
        Ok(None)
    }

    /// Checks every header parses, with a UTF-8 key, and that they fill the record exactly.
    pub fn validate(&self) -> Result<()> {
        for header in self.iter() {
            let (key, _) = header?;
            std::str::from_utf8(&key).map_err(|_| RecordsError::InvalidHeaderKey)?;
        }
        Ok(())
    }

    /// Headers holding `pairs`, encoded as a record carries them.
    #[cfg(test)]
    pub(crate) fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>) -> Self {
        fn put_varint(out: &mut Vec<u8>, v: i64) {
            let mut z = ((v << 1) ^ (v >> 63)) as u64;
            while z >= 0x80 {
                out.push((z as u8) | 0x80);
                z >>= 7;
            }
            out.push(z as u8);
        }
        let mut wire = Vec::new();
        let mut count = 0;
        for (key, value) in pairs {
            put_varint(&mut wire, key.len() as i64);
            wire.extend_from_slice(key.as_bytes());
            match value {
                None => put_varint(&mut wire, -1),
                Some(v) => {
                    put_varint(&mut wire, v.len() as i64);
                    wire.extend_from_slice(v);
                }
            }
            count += 1;
        }
        Headers {
            count,
            wire: Bytes::from(wire),
        }
    }
}

/// Parses [`Headers`] one at a time: key bytes and value (`None` for null), zero-copy.
pub struct HeaderIter {
    cursor: Cursor,
    left: usize,
}

impl HeaderIter {
    fn parse(&mut self) -> Result<Option<(Bytes, Option<Bytes>)>> {
        if self.left == 0 {
            if self.cursor.remaining() != 0 {
                return Err(RecordsError::TrailingBytes {
                    what: "record",
                    remaining: self.cursor.remaining(),
                });
            }
            return Ok(None);
        }
        self.left -= 1;
        let key_len = self.cursor.varint_len("record header key length")?;
        let key = self.cursor.take(key_len, "record header key")?;
        let value = self.cursor.varint_bytes("record header value")?;
        Ok(Some((key, value)))
    }
}

impl Iterator for HeaderIter {
    type Item = Result<(Bytes, Option<Bytes>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.parse().transpose();
        if matches!(item, Some(Err(_))) {
            self.left = 0;
            self.cursor = Cursor::new(Bytes::new());
        }
        item
    }
}
