//! A spool entry and its on-disk encoding, the frame payload of the spool's "On-disk format".

use bytes::Bytes;

use super::segment_log::{begin_frame, end_frame, FRAME_HEADER_BYTES};
use super::SpoolError;

/// The largest encoded entry (payload) a frame may hold. Larger entries are refused by
/// `append`, and a larger length read from disk is treated as corruption.
pub const MAX_PAYLOAD_BYTES: u32 = 32 * 1024 * 1024;

const FORMAT_VERSION: u8 = 1;
const FLAG_BATCH_END: u8 = 0x01;
const FLAG_EXPLICIT_HASH_KEY: u8 = 0x02;
const KNOWN_FLAGS: u8 = FLAG_BATCH_END | FLAG_EXPLICIT_HASH_KEY;
/// version, flags, enqueued_unix_ms, partition, offset, and four length prefixes.
pub(super) const MIN_PAYLOAD_BYTES: u32 = 1 + 1 + 8 + 4 + 8 + 4 * 4;

/// One record waiting for Kinesis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolEntry {
    pub stream: String,
    pub partition_key: String,
    pub explicit_hash_key: Option<u128>,
    pub data: Bytes,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// When the Kafka ack came, for lag metrics.
    pub enqueued_unix_ms: u64,
}

pub(super) fn encoded_payload_len(e: &SpoolEntry) -> u64 {
    u64::from(MIN_PAYLOAD_BYTES)
        + if e.explicit_hash_key.is_some() { 16 } else { 0 }
        + e.stream.len() as u64
        + e.partition_key.len() as u64
        + e.topic.len() as u64
        + e.data.len() as u64
}

pub(super) fn encode_frame(
    e: &SpoolEntry,
    batch_end: bool,
    out: &mut Vec<u8>,
) -> Result<(), SpoolError> {
    let plen = encoded_payload_len(e);
    if plen > u64::from(MAX_PAYLOAD_BYTES) {
        return Err(SpoolError::TooLarge {
            bytes: plen,
            max: u64::from(MAX_PAYLOAD_BYTES),
        });
    }
    out.reserve(FRAME_HEADER_BYTES as usize + plen as usize);
    let start = begin_frame(out);
    let mut flags = 0;
    if batch_end {
        flags |= FLAG_BATCH_END;
    }
    if e.explicit_hash_key.is_some() {
        flags |= FLAG_EXPLICIT_HASH_KEY;
    }
    out.push(FORMAT_VERSION);
    out.push(flags);
    out.extend_from_slice(&e.enqueued_unix_ms.to_le_bytes());
    out.extend_from_slice(&e.partition.to_le_bytes());
    out.extend_from_slice(&e.offset.to_le_bytes());
    if let Some(hash) = e.explicit_hash_key {
        out.extend_from_slice(&hash.to_le_bytes());
    }
    for field in [
        e.stream.as_bytes(),
        e.partition_key.as_bytes(),
        e.topic.as_bytes(),
        &e.data[..],
    ] {
        out.extend_from_slice(&(field.len() as u32).to_le_bytes());
        out.extend_from_slice(field);
    }
    debug_assert_eq!((out.len() - start) as u64, FRAME_HEADER_BYTES + plen);
    end_frame(out, start);
    Ok(())
}

/// Decodes a payload; returns the entry and whether it ends its batch.
pub(super) fn decode_payload(payload: &Bytes) -> Result<(SpoolEntry, bool), String> {
    let mut r = PayloadReader {
        buf: payload,
        pos: 0,
    };
    let version = r.take(1)?[0];
    if version != FORMAT_VERSION {
        return Err(format!("unknown format version {version}"));
    }
    let flags = r.take(1)?[0];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(format!("unknown flags {flags:#04x}"));
    }
    let enqueued_unix_ms = u64::from_le_bytes(r.array()?);
    let partition = i32::from_le_bytes(r.array()?);
    let offset = i64::from_le_bytes(r.array()?);
    let explicit_hash_key = if flags & FLAG_EXPLICIT_HASH_KEY != 0 {
        Some(u128::from_le_bytes(r.array()?))
    } else {
        None
    };
    let stream = r.string("stream")?;
    let partition_key = r.string("partition_key")?;
    let topic = r.string("topic")?;
    let len = r.len_prefix()?;
    let start = r.pos;
    r.take(len)?;
    let data = payload.slice(start..start + len);
    if r.pos != payload.len() {
        return Err(format!("{} trailing bytes", payload.len() - r.pos));
    }
    Ok((
        SpoolEntry {
            stream,
            partition_key,
            explicit_hash_key,
            data,
            topic,
            partition,
            offset,
            enqueued_unix_ms,
        },
        flags & FLAG_BATCH_END != 0,
    ))
}

struct PayloadReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> PayloadReader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() - self.pos < n {
            return Err(format!(
                "field of {n} bytes overruns the payload at byte {}",
                self.pos
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn len_prefix(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn string(&mut self, field: &str) -> Result<String, String> {
        let len = self.len_prefix()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{field} is not UTF-8"))
    }
}
