//! What the write-ahead log's frames hold, and their encoding. Every payload starts with a
//! kind byte; integers are little-endian.
//!
//! ```text
//! exchange (1): u64 id, u64 unix_ms, i16 version, u8 flags (bit 0: a response follows),
//!               u16 len + UTF-8 client id, u32 len + request body, [u32 len + response frame]
//! settled  (2): u32 n, n × (u64 exchange id, u32 partition index, i64 offset)
//! complete (3): u32 n, n × u64 exchange id
//! txn      (4): u8 api (1 EndTxn, 2 InitProducerId), i16 version, u32 len + request body,
//!               u32 len + response frame
//! ```
//!
//! Transaction-control entries are never marked: they are replayed, in log order, from every
//! segment still there, so that held transactional records are decided as before the crash.
//!
//! A record is named by its exchange, the index of its partition among the exchange's
//! produced partitions, and its offset (Kafka's, or its position in the request for acks=0):
//! all three are fixed by the exchange's bytes, so a replay names its records the same way.

use bytes::{BufMut, Bytes};

use crate::kinesis::segment_log::{begin_frame, end_frame};
use crate::mirror::{TxnControl, TxnControlExchange};

const KIND_EXCHANGE: u8 = 1;
const KIND_SETTLED: u8 = 2;
const KIND_COMPLETE: u8 = 3;
const KIND_TXN_CONTROL: u8 = 4;
const API_END_TXN: u8 = 1;
const API_INIT_PRODUCER_ID: u8 = 2;
const FLAG_RESPONSE: u8 = 0x01;
/// kind, id, unix_ms, version, flags, client id length, request length.
pub(super) const MIN_PAYLOAD_BYTES: u32 = 1 + 4;
/// A Produce request is at most the listener's frame limit; this only catches garbage.
pub(super) const MAX_PAYLOAD_BYTES: u32 = 1 << 30;

/// One record of a logged exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RecordId {
    pub(crate) exchange: u64,
    pub(crate) partition_index: u32,
    pub(crate) offset: i64,
}

/// A Produce exchange as logged: the bytes the connection already holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LoggedExchange {
    pub(crate) id: u64,
    pub(crate) unix_ms: u64,
    pub(crate) version: i16,
    pub(crate) client_id: String,
    pub(crate) request_body: Bytes,
    /// `None` for acks=0: Kafka gave no verdict.
    pub(crate) response_frame: Option<Bytes>,
}

/// What an append logs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Logged {
    Exchange(LoggedExchange),
    /// EndTxn or InitProducerId, with Kafka's answer.
    TxnControl {
        api: TxnControl,
        version: i16,
        request_body: Bytes,
        response_frame: Bytes,
    },
}

/// A frame's meaning.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Entry {
    Logged(Logged),
    Settled(Vec<RecordId>),
    Complete(Vec<u64>),
}

impl Logged {
    pub(crate) fn txn_control(exchange: &TxnControlExchange) -> Logged {
        Logged::TxnControl {
            api: exchange.api,
            version: exchange.version,
            request_body: exchange.request_body.clone(),
            response_frame: exchange.response_frame.clone(),
        }
    }

    /// Bytes its frame takes.
    pub(super) fn frame_bytes(&self) -> u64 {
        match self {
            Logged::Exchange(e) => e.frame_bytes(),
            Logged::TxnControl {
                request_body,
                response_frame,
                ..
            } => 8 + 1 + 1 + 2 + 4 + request_body.len() as u64 + 4 + response_frame.len() as u64,
        }
    }

    /// Appends its frame to `out`.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Logged::Exchange(e) => e.encode(out),
            Logged::TxnControl {
                api,
                version,
                request_body,
                response_frame,
            } => {
                let start = begin_frame(out);
                out.put_u8(KIND_TXN_CONTROL);
                out.put_u8(match api {
                    TxnControl::EndTxn => API_END_TXN,
                    TxnControl::InitProducerId => API_INIT_PRODUCER_ID,
                });
                out.put_i16_le(*version);
                out.put_u32_le(request_body.len() as u32);
                out.put_slice(request_body);
                out.put_u32_le(response_frame.len() as u32);
                out.put_slice(response_frame);
                end_frame(out, start);
            }
        }
    }

    /// The transaction-control exchange it logged, to replay.
    pub(crate) fn into_txn_control(self) -> Option<TxnControlExchange> {
        match self {
            Logged::Exchange(_) => None,
            Logged::TxnControl {
                api,
                version,
                request_body,
                response_frame,
            } => Some(TxnControlExchange {
                api,
                version,
                request_body,
                response_frame,
            }),
        }
    }
}

impl LoggedExchange {
    /// Bytes its frame takes.
    pub(super) fn frame_bytes(&self) -> u64 {
        8 + 1
            + 8
            + 8
            + 2
            + 1
            + 2
            + self.client_id.len().min(u16::MAX as usize) as u64
            + 4
            + self.request_body.len() as u64
            + self
                .response_frame
                .as_ref()
                .map_or(0, |r| 4 + r.len() as u64)
    }

    /// Appends its frame to `out`.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let start = begin_frame(out);
        out.put_u8(KIND_EXCHANGE);
        out.put_u64_le(self.id);
        out.put_u64_le(self.unix_ms);
        out.put_i16_le(self.version);
        out.put_u8(if self.response_frame.is_some() {
            FLAG_RESPONSE
        } else {
            0
        });
        let client = &self.client_id.as_bytes()[..self.client_id.len().min(u16::MAX as usize)];
        out.put_u16_le(client.len() as u16);
        out.put_slice(client);
        out.put_u32_le(self.request_body.len() as u32);
        out.put_slice(&self.request_body);
        if let Some(response) = &self.response_frame {
            out.put_u32_le(response.len() as u32);
            out.put_slice(response);
        }
        end_frame(out, start);
    }
}

/// Appends a frame naming settled records.
pub(super) fn encode_settled(records: &[RecordId], out: &mut Vec<u8>) {
    let start = begin_frame(out);
    out.put_u8(KIND_SETTLED);
    out.put_u32_le(records.len() as u32);
    for r in records {
        out.put_u64_le(r.exchange);
        out.put_u32_le(r.partition_index);
        out.put_i64_le(r.offset);
    }
    end_frame(out, start);
}

/// Appends a frame naming exchanges whose records are all settled.
pub(super) fn encode_complete(exchanges: &[u64], out: &mut Vec<u8>) {
    let start = begin_frame(out);
    out.put_u8(KIND_COMPLETE);
    out.put_u32_le(exchanges.len() as u32);
    for id in exchanges {
        out.put_u64_le(*id);
    }
    end_frame(out, start);
}

/// Decodes a payload whose checksum matched.
pub(super) fn decode(payload: Bytes) -> Result<Entry, String> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    match r.u8()? {
        KIND_EXCHANGE => {
            let id = r.u64()?;
            let unix_ms = r.u64()?;
            let version = r.u16()? as i16;
            let flags = r.u8()?;
            let client_len = r.u16()? as usize;
            let client_id = String::from_utf8_lossy(&r.take(client_len)?).into_owned();
            let request_len = r.u32()? as usize;
            let request_body = r.take(request_len)?;
            let response_frame = if flags & FLAG_RESPONSE != 0 {
                let len = r.u32()? as usize;
                Some(r.take(len)?)
            } else {
                None
            };
            r.end()?;
            Ok(Entry::Logged(Logged::Exchange(LoggedExchange {
                id,
                unix_ms,
                version,
                client_id,
                request_body,
                response_frame,
            })))
        }
        KIND_TXN_CONTROL => {
            let api = match r.u8()? {
                API_END_TXN => TxnControl::EndTxn,
                API_INIT_PRODUCER_ID => TxnControl::InitProducerId,
                other => return Err(format!("unknown transaction-control api {other}")),
            };
            let version = r.u16()? as i16;
            let len = r.u32()? as usize;
            let request_body = r.take(len)?;
            let len = r.u32()? as usize;
            let response_frame = r.take(len)?;
            r.end()?;
            Ok(Entry::Logged(Logged::TxnControl {
                api,
                version,
                request_body,
                response_frame,
            }))
        }
        KIND_SETTLED => {
            let n = r.u32()?;
            let mut records = Vec::with_capacity((n as usize).min(r.remaining() / 20));
            for _ in 0..n {
                records.push(RecordId {
                    exchange: r.u64()?,
                    partition_index: r.u32()?,
                    offset: r.u64()? as i64,
                });
            }
            r.end()?;
            Ok(Entry::Settled(records))
        }
        KIND_COMPLETE => {
            let n = r.u32()?;
            let mut ids = Vec::with_capacity((n as usize).min(r.remaining() / 8));
            for _ in 0..n {
                ids.push(r.u64()?);
            }
            r.end()?;
            Ok(Entry::Complete(ids))
        }
        kind => Err(format!("unknown entry kind {kind}")),
    }
}

struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<Bytes, String> {
        if self.remaining() < n {
            return Err(format!(
                "field of {n} bytes overruns the payload at byte {}",
                self.pos
            ));
        }
        self.pos += n;
        Ok(self.buf.slice(self.pos - n..self.pos))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?[..].try_into().expect("N bytes"))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn end(&self) -> Result<(), String> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(format!("{n} trailing bytes")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::segment_log::FRAME_HEADER_BYTES;

    fn payload(frame: &[u8]) -> Bytes {
        Bytes::copy_from_slice(&frame[FRAME_HEADER_BYTES as usize..])
    }

    #[test]
    fn entries_round_trip_and_frame_bytes_is_exact() {
        for response_frame in [Some(Bytes::from_static(b"response")), None] {
            let exchange = LoggedExchange {
                id: 7,
                unix_ms: 1_700_000_000_000,
                version: 9,
                client_id: "producer-1".into(),
                request_body: Bytes::from_static(b"request body"),
                response_frame,
            };
            let logged = Logged::Exchange(exchange);
            let mut out = Vec::new();
            logged.encode(&mut out);
            assert_eq!(out.len() as u64, logged.frame_bytes());
            assert_eq!(decode(payload(&out)), Ok(Entry::Logged(logged)));
        }
        for api in [TxnControl::EndTxn, TxnControl::InitProducerId] {
            let logged = Logged::TxnControl {
                api,
                version: 3,
                request_body: Bytes::from_static(b"end"),
                response_frame: Bytes::from_static(b"ended"),
            };
            let mut out = Vec::new();
            logged.encode(&mut out);
            assert_eq!(out.len() as u64, logged.frame_bytes());
            assert_eq!(decode(payload(&out)), Ok(Entry::Logged(logged)));
        }
        let records = vec![RecordId {
            exchange: 3,
            partition_index: 1,
            offset: -1,
        }];
        let mut out = Vec::new();
        encode_settled(&records, &mut out);
        assert_eq!(decode(payload(&out)), Ok(Entry::Settled(records)));
        let mut out = Vec::new();
        encode_complete(&[4, 5], &mut out);
        assert_eq!(decode(payload(&out)), Ok(Entry::Complete(vec![4, 5])));
        assert!(decode(Bytes::from_static(&[9])).is_err());
    }
}
