//! Legacy message sets (magic 0 and 1): a top-level message is one record, or a compressed
//! wrapper whose value is a message set of inner messages, parsed one at a time.

use bytes::Bytes;

use super::compression::{decompress, Codec};
use super::cursor::Cursor;
use super::{DecodeBudget, Headers, Record, RecordsError, Result, MAGIC_POS};

/// Smallest legacy message body (crc, magic, attributes, key len, value len) for magic 0.
const LEGACY_V0_MIN: usize = 14;
/// Same for magic 1 (adds the timestamp).
const LEGACY_V1_MIN: usize = 22;

pub(super) struct LegacyMessage {
    offset: i64,
    pub(super) magic: i8,
    pub(super) codec: Codec,
    log_append_time: bool,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
}

impl LegacyMessage {
    /// This message as the record at `index`; a wrapper's LogAppendTime stamps its inner
    /// records with its own timestamp.
    fn into_record(self, index: usize, wrapper_timestamp: Option<i64>) -> Record {
        Record {
            offset: self.offset,
            timestamp: wrapper_timestamp.unwrap_or(self.timestamp),
            key: self.key,
            value: self.value,
            headers: Headers::default(),
            index,
        }
    }
}

/// Parse and CRC-check one legacy message. `body` starts at the crc and is exactly the
/// message size long; `magic` is the byte at [`MAGIC_POS`] and must be 0 or 1.
pub(super) fn parse_legacy_message(offset: i64, body: Bytes, magic: i8) -> Result<LegacyMessage> {
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

/// The inner messages of a compressed wrapper, parsed one at a time from its decompressed
/// value; strictly: no partial tail, no nested compression, inner magic equal to the
/// wrapper's, at least one message.
pub(super) struct InnerMessages {
    cursor: Cursor,
    wrapper_magic: i8,
    seen: usize,
}

impl InnerMessages {
    pub(super) fn new(wrapper: &LegacyMessage, budget: &DecodeBudget) -> Result<Self> {
        let Some(value) = &wrapper.value else {
            return Err(RecordsError::Invalid {
                what: "compressed wrapper message",
                reason: "value is null".into(),
            });
        };
        Ok(InnerMessages {
            cursor: Cursor::new(decompress(wrapper.codec, value, wrapper.magic, budget)?),
            wrapper_magic: wrapper.magic,
            seen: 0,
        })
    }

    pub(super) fn next_message(&mut self) -> Result<Option<LegacyMessage>> {
        if self.cursor.remaining() == 0 {
            if self.seen == 0 {
                return Err(RecordsError::Invalid {
                    what: "compressed wrapper message",
                    reason: "no inner messages".into(),
                });
            }
            return Ok(None);
        }
        let offset = self.cursor.i64("inner message offset")?;
        let size = self.cursor.i32("inner message size")?;
        let size = usize::try_from(size).map_err(|_| RecordsError::Invalid {
            what: "inner message size",
            reason: format!("negative size {size}"),
        })?;
        let body = self.cursor.take(size, "inner message")?;
        let Some(&magic) = body.get(MAGIC_POS) else {
            return Err(RecordsError::Invalid {
                what: "inner message size",
                reason: format!("{size} bytes cannot hold a magic byte"),
            });
        };
        let magic = magic as i8;
        if magic != self.wrapper_magic {
            return Err(RecordsError::Invalid {
                what: "inner message magic",
                reason: format!(
                    "inner magic {magic} differs from wrapper magic {}",
                    self.wrapper_magic
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
        self.seen += 1;
        Ok(Some(message))
    }
}

/// The records of one top-level legacy message, decoded one at a time.
pub(super) enum LegacyRecords {
    /// An uncompressed message: one record, until taken.
    Single(Option<LegacyMessage>),
    Wrapped {
        inner: InnerMessages,
        /// The wrapper's timestamp when it is LogAppendTime, which then wins.
        log_append_time: Option<i64>,
    },
}

impl LegacyRecords {
    pub(super) fn new(message: LegacyMessage, budget: &DecodeBudget) -> Result<Self> {
        if message.codec == Codec::None {
            return Ok(LegacyRecords::Single(Some(message)));
        }
        Ok(LegacyRecords::Wrapped {
            inner: InnerMessages::new(&message, budget)?,
            log_append_time: message.log_append_time.then_some(message.timestamp),
        })
    }

    pub(super) fn next_record(&mut self, index: usize) -> Result<Option<Record>> {
        Ok(match self {
            LegacyRecords::Single(message) => message.take().map(|m| m.into_record(index, None)),
            LegacyRecords::Wrapped {
                inner,
                log_append_time,
            } => inner
                .next_message()?
                .map(|m| m.into_record(index, *log_append_time)),
        })
    }
}
