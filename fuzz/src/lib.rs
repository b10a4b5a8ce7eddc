//! Shared pieces of the fuzz targets: the record-data invariants every target that reaches
//! record bytes asserts, encoders that wrap fuzzer bytes in valid (checksummed, compressed)
//! record batches, and the address rewriter used by the response target. The seed-corpus
//! generator (`examples/gen_corpus.rs`) uses the same encoders.

use std::io::Write;

use bytes::{BufMut, Bytes};
use kafka_kinesis_proxy::kafka::records::{
    decode_batches_with_limit, summarize_with_limit, Batch, BatchSummary,
};
use kafka_kinesis_proxy::kafka::rewrite::AddressRewriter;
use kafka_protocol::protocol::StrBytes;

/// Decompression budget used by the targets. Far below the proxy's 128 MiB default so that a
/// 4 KiB zstd bomb costs milliseconds, not seconds; the budget code path is the same.
pub const LIMIT: usize = 1 << 20;

/// Runs `summarize` and `decode_batches` on the same bytes and checks that they agree:
/// whatever `decode_batches` accepts, `summarize` (which checks a subset) accepts too, with the
/// same batch and record counts, codecs and magic; every batch's `record_count` is its
/// `records.len()`, and record indexes run 0, 1, 2, ... across batches.
pub fn check_records(data: &Bytes) -> Option<Vec<Batch>> {
    let summary = summarize_with_limit(data, LIMIT);
    let batches = decode_batches_with_limit(data.clone(), LIMIT).ok()?;
    let summary: BatchSummary = match summary {
        Ok(s) => s,
        Err(e) => panic!("decode_batches accepted data that summarize rejects: {e}"),
    };
    assert_eq!(summary.batches, batches.len(), "batch count");
    let mut index = 0usize;
    let mut magic = -1i8;
    for batch in &batches {
        assert_eq!(batch.record_count, batch.records.len(), "record_count");
        assert!(
            summary.codecs.contains(batch.codec),
            "codec {:?}",
            batch.codec
        );
        magic = magic.max(batch.magic);
        for record in &batch.records {
            assert_eq!(record.index, index, "record index");
            index += 1;
        }
    }
    assert_eq!(
        summary.records, index,
        "summarize and decode_batches record counts"
    );
    assert_eq!(summary.magic, magic, "magic");
    Some(batches)
}

// ---------------------------------------------------------------------------------------------
// Record encoding

/// Codec ids as in the attributes field.
pub const NONE: u8 = 0;
pub const GZIP: u8 = 1;
pub const SNAPPY: u8 = 2;
pub const LZ4: u8 = 3;
pub const ZSTD: u8 = 4;

/// How snappy data is framed: one raw block (librdkafka) or the xerial stream of Java clients,
/// cut into blocks of at most this many input bytes.
#[derive(Debug, Clone, Copy)]
pub enum SnappyFraming {
    Raw,
    Xerial { block: usize },
}

/// Compresses `data` as Kafka producers do for codec `id` (0 = none .. 4 = zstd).
pub fn compress(id: u8, data: &[u8], snappy: SnappyFraming) -> Vec<u8> {
    match id {
        GZIP => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        SNAPPY => match snappy {
            SnappyFraming::Raw => snap::raw::Encoder::new().compress_vec(data).unwrap(),
            SnappyFraming::Xerial { block } => {
                let mut out = b"\x82SNAPPY\x00".to_vec();
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&1i32.to_be_bytes());
                for chunk in data.chunks(block.max(1)) {
                    let c = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
                    out.extend_from_slice(&(c.len() as i32).to_be_bytes());
                    out.extend_from_slice(&c);
                }
                out
            }
        },
        LZ4 => {
            let mut e = lz4::EncoderBuilder::new()
                .level(1)
                .build(Vec::new())
                .unwrap();
            e.write_all(data).unwrap();
            let (out, r) = e.finish();
            r.unwrap();
            out
        }
        ZSTD => zstd::bulk::compress(data, 1).unwrap(),
        _ => data.to_vec(),
    }
}

/// Zig-zag varint (Kafka's `varint`/`varlong`).
pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_varint_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// One v2 record as the fuzzer describes it.
#[derive(Debug, Clone, Default, arbitrary::Arbitrary)]
pub struct FuzzRecord {
    pub attributes: i8,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// The encoded records section (uncompressed) of a v2 batch.
pub fn encode_v2_records(records: &[FuzzRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let mut body = vec![r.attributes as u8];
        put_varint(&mut body, r.timestamp_delta);
        put_varint(&mut body, i64::from(r.offset_delta));
        put_varint_bytes(&mut body, r.key.as_deref());
        put_varint_bytes(&mut body, r.value.as_deref());
        put_varint(&mut body, r.headers.len() as i64);
        for (k, v) in &r.headers {
            put_varint_bytes(&mut body, Some(k.as_bytes()));
            put_varint_bytes(&mut body, v.as_deref());
        }
        put_varint(&mut out, body.len() as i64);
        out.extend_from_slice(&body);
    }
    out
}

/// The v2 batch header fields that do not depend on the records.
#[derive(Debug, Clone, Copy, Default, arbitrary::Arbitrary)]
pub struct V2Fields {
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

/// A whole v2 batch: `attributes` (codec in the low 3 bits), `record_count` as claimed and the
/// records section as given (already compressed), with a correct length and CRC32C.
pub fn v2_batch(f: &V2Fields, attributes: i16, record_count: i32, records: &[u8]) -> Vec<u8> {
    let mut crc_part = Vec::with_capacity(40 + records.len());
    crc_part.put_i16(attributes);
    crc_part.put_i32(f.last_offset_delta);
    crc_part.put_i64(f.base_timestamp);
    crc_part.put_i64(f.max_timestamp);
    crc_part.put_i64(f.producer_id);
    crc_part.put_i16(f.producer_epoch);
    crc_part.put_i32(f.base_sequence);
    crc_part.put_i32(record_count);
    crc_part.extend_from_slice(records);
    let mut out = Vec::with_capacity(61 + records.len());
    out.put_i64(f.base_offset);
    out.put_i32((4 + 1 + 4 + crc_part.len()) as i32);
    out.put_i32(f.partition_leader_epoch);
    out.put_i8(2);
    out.put_u32(crc32c::crc32c(&crc_part));
    out.extend_from_slice(&crc_part);
    out
}

/// A legacy (magic 0 or 1) message with offset and size prefix and a correct CRC32.
pub fn legacy_message(
    offset: i64,
    magic: i8,
    attributes: i8,
    timestamp: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Vec<u8> {
    let mut body = Vec::new();
    body.put_i8(magic);
    body.put_i8(attributes);
    if magic >= 1 {
        body.put_i64(timestamp);
    }
    for b in [key, value] {
        match b {
            None => body.put_i32(-1),
            Some(b) => {
                body.put_i32(b.len() as i32);
                body.extend_from_slice(b);
            }
        }
    }
    let mut out = Vec::with_capacity(16 + body.len());
    out.put_i64(offset);
    out.put_i32((4 + body.len()) as i32);
    out.put_u32(crc32fast::hash(&body));
    out.extend_from_slice(&body);
    out
}

// ---------------------------------------------------------------------------------------------
// Response rewriting

/// Host every rewritten broker gets.
pub const PROXY_HOST: &str = "proxy.fuzz";

/// Maps node N to `PROXY_HOST:20000 + (N mod 1000)`, deterministically (so rewriting a
/// rewritten response changes nothing); node ids below -1000 are unmappable, to exercise the
/// error path.
#[derive(Default)]
pub struct FuzzRewriter {
    pub calls: usize,
}

impl AddressRewriter for FuzzRewriter {
    fn rewrite(&mut self, node_id: i32, host: &mut StrBytes, port: &mut i32) -> bool {
        self.calls += 1;
        // Some brokers cannot be served: the rewrite leaves them out.
        if node_id < -1000 {
            return false;
        }
        *host = StrBytes::from_static_str(PROXY_HOST);
        *port = 20_000 + node_id.rem_euclid(1000);
        true
    }
}
