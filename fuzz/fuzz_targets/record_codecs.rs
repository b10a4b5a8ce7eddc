//! Structure-aware record data: the fuzzer describes records (or gives raw record-section
//! bytes), a codec (none, gzip, snappy raw or xerial-framed, lz4, zstd) and a format (v2 batch,
//! or a legacy magic 0/1 wrapper message); the target encodes, compresses and wraps them with a
//! correct length and CRC, so `decode_batches` gets past the checksum and decompression into the
//! record parsers. Optional damage (a wrong record count, a flipped byte in the compressed
//! payload, trailing bytes) then steers it into the error paths behind decompression.
//!
//! Invariants: no panic; `kkp_fuzz::check_records`; and when nothing was damaged, the data
//! decodes and gives back exactly the records that were encoded.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use kafka_kinesis_proxy::kafka::records::Codec;
use kkp_fuzz::{
    compress, encode_v2_records, legacy_message, v2_batch, FuzzRecord, SnappyFraming, V2Fields,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Format {
    V2 {
        fields: V2Fields,
        flags: u8,
    },
    Legacy {
        magic1: bool,
        base_offset: i64,
        timestamp: i64,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    codec: u8,
    /// `None`: one raw snappy block; `Some(n)`: xerial stream of blocks of n+1 input bytes.
    xerial_block: Option<u16>,
    format: Format,
    records: Vec<FuzzRecord>,
    /// Replaces the encoded records (uncompressed section) with these bytes.
    raw_records: Option<Vec<u8>>,
    /// Added to the claimed record count.
    count_skew: i8,
    /// XORs a byte of the compressed payload: (position, mask).
    flip: Option<(u16, u8)>,
    /// Appended after the batch (a partial second batch, or garbage).
    trailing: Vec<u8>,
}

fn damage(payload: &mut [u8], flip: Option<(u16, u8)>) -> bool {
    match flip {
        Some((pos, mask)) if mask != 0 && !payload.is_empty() => {
            let i = pos as usize % payload.len();
            payload[i] ^= mask;
            true
        }
        _ => false,
    }
}

fuzz_target!(|input: Input| {
    let codec = input.codec % 5;
    let snappy = match input.xerial_block {
        None => SnappyFraming::Raw,
        Some(n) => SnappyFraming::Xerial {
            block: usize::from(n) + 1,
        },
    };
    let records = &input.records;
    let mut data;
    let damaged;
    match &input.format {
        Format::V2 { fields, flags } => {
            let section = match &input.raw_records {
                Some(raw) => raw.clone(),
                None => encode_v2_records(records),
            };
            let mut payload = if codec == 0 {
                section
            } else {
                compress(codec, &section, snappy)
            };
            let flipped = damage(&mut payload, input.flip);
            let count = (records.len() as i32).wrapping_add(i32::from(input.count_skew));
            // Low bits: codec; then timestamp type, transactional, control.
            let attributes = i16::from(codec) | (i16::from(*flags & 0x7) << 3);
            data = v2_batch(fields, attributes, count, &payload);
            damaged = flipped || input.raw_records.is_some() || input.count_skew != 0;
        }
        Format::Legacy {
            magic1,
            base_offset,
            timestamp,
        } => {
            let magic = if *magic1 { 1 } else { 0 };
            let mut inner = Vec::new();
            for (i, r) in records.iter().enumerate() {
                // Magic 1 inner offsets are relative; magic 0 ones absolute.
                let offset = if *magic1 {
                    i as i64
                } else {
                    base_offset.wrapping_add(i as i64)
                };
                let ts = timestamp.wrapping_add(r.timestamp_delta);
                inner.extend(legacy_message(
                    offset,
                    magic,
                    0,
                    ts,
                    r.key.as_deref(),
                    r.value.as_deref(),
                ));
            }
            if let Some(raw) = &input.raw_records {
                inner = raw.clone();
            }
            if codec == 0 {
                data = inner;
                damaged = damage(&mut data, input.flip) || input.raw_records.is_some();
            } else {
                let mut payload = compress(codec, &inner, snappy);
                if magic == 0 && codec == 3 && payload.len() > 6 {
                    // Kafka before 0.10 wrote a wrong LZ4 header checksum (KAFKA-3160); the
                    // decoder must recompute it for magic 0.
                    payload[6] ^= input.count_skew as u8;
                }
                let flipped = damage(&mut payload, input.flip);
                data = legacy_message(
                    *base_offset,
                    magic,
                    codec as i8,
                    *timestamp,
                    None,
                    Some(&payload),
                );
                damaged = flipped || input.raw_records.is_some();
            }
        }
    }
    data.extend_from_slice(&input.trailing);
    let data = Bytes::from(data);

    let decoded = kkp_fuzz::check_records(&data);
    if damaged || !input.trailing.is_empty() {
        return;
    }
    let legacy_expected_to_fail = match &input.format {
        Format::V2 { .. } => false,
        // zstd needs magic 2; a wrapper needs at least one inner message.
        Format::Legacy { .. } => codec == 4 || (codec != 0 && records.is_empty()),
    };
    if legacy_expected_to_fail {
        assert!(decoded.is_none(), "invalid legacy wrapper accepted");
        return;
    }
    let Some(batches) = decoded else {
        panic!("well-formed {} data rejected", CODECS[codec as usize]);
    };
    let got: Vec<_> = batches.iter().flat_map(|b| &b.records).collect();
    assert_eq!(got.len(), records.len(), "record count");
    for (r, want) in got.iter().zip(records) {
        assert_eq!(r.key.as_deref(), want.key.as_deref(), "key");
        assert_eq!(r.value.as_deref(), want.value.as_deref(), "value");
        if let Format::V2 { fields, flags } = &input.format {
            let headers: Vec<_> = r
                .headers
                .iter()
                .map(|header| {
                    let (k, v) = header.expect("decode_batches validated every header");
                    let k = String::from_utf8(k.to_vec()).expect("validated UTF-8 key");
                    (k, v.map(|v| v.to_vec()))
                })
                .collect();
            assert_eq!(headers, want.headers, "headers");
            assert_eq!(
                r.offset,
                fields
                    .base_offset
                    .wrapping_add(i64::from(want.offset_delta)),
                "offset"
            );
            let ts = if flags & 1 != 0 {
                fields.max_timestamp
            } else {
                fields.base_timestamp.wrapping_add(want.timestamp_delta)
            };
            assert_eq!(r.timestamp, ts, "timestamp");
        }
    }
    for b in &batches {
        assert_eq!(b.codec, CODECS[codec as usize]);
    }
});

const CODECS: [Codec; 5] = [
    Codec::None,
    Codec::Gzip,
    Codec::Snappy,
    Codec::Lz4,
    Codec::Zstd,
];
