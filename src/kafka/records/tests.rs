use super::compression::{fix_lz4_header_checksum, lz4_header_checksum, XERIAL_MAGIC};
use super::*;
use bytes::{BufMut, BytesMut};
use kafka_protocol::records::{
    Compression, Record as KpRecord, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use proptest::prelude::*;
use std::borrow::Cow;
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
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
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
    let broken = (xxhash_rust::xxh32::xxh32(&frame[0..hc], 0) >> 8) as u8;
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

/// Decoded headers as owned pairs, so they compare with a test record's.
fn decoded_headers(h: &Headers) -> Vec<(String, Option<Bytes>)> {
    h.iter()
        .map(|h| {
            let (k, v) = h.unwrap();
            (String::from_utf8(k.to_vec()).unwrap(), v)
        })
        .collect()
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
            assert_eq!(
                decoded_headers(&g.headers),
                owned_headers(w),
                "headers of record {i}"
            );
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
    assert!(s.idempotent && s.transactional() && !s.control);
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
    assert!(s.control && s.transactional() && s.idempotent);
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
            RecordsError::OverLimit {
                spending: Spending::Decompressed(codec),
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
            RecordsError::OverLimit { .. }
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
        RecordsError::OverLimit {
            spending: Spending::Decompressed(Codec::Snappy),
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
        assert!(!s.idempotent && !s.transactional());
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
fn lz4_header_checksum_matches_the_lz4_library() {
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

// ---- bounded memory -----------------------------------------------------------------

/// Counts the bytes each thread has allocated, so a test can measure its own peak while other
/// tests run on other threads.
struct PeakAllocator;

thread_local! {
    static LIVE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static PEAK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn track(grow: usize, shrink: usize) {
    let _ = LIVE.try_with(|live| {
        let now = (live.get() + grow).saturating_sub(shrink);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is passed on to the system allocator unchanged; only counted.
unsafe impl std::alloc::GlobalAlloc for PeakAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        track(layout.size(), 0);
        std::alloc::System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        track(0, layout.size());
        std::alloc::System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        track(new, layout.size());
        std::alloc::System.realloc(ptr, layout, new)
    }
}

#[global_allocator]
static ALLOCATOR: PeakAllocator = PeakAllocator;

/// What `work` allocated on this thread at its peak, beyond what was live before it.
fn peak_allocation<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.with(|live| live.get());
    PEAK.with(|peak| peak.set(before));
    let result = work();
    (result, PEAK.with(|peak| peak.get()) - before)
}

/// A zstd v2 batch of `count` records with neither key nor value, and `headers` (already
/// encoded, `header_count` of them) on each.
fn zstd_batch_of_empty_records(count: usize, header_count: usize, headers: &[u8]) -> Bytes {
    let mut plain = Vec::new();
    for i in 0..count {
        let mut body = vec![0u8]; // attributes
        put_varint(&mut body, 0); // timestamp delta
        put_varint(&mut body, i as i64);
        put_varint(&mut body, -1); // key
        put_varint(&mut body, -1); // value
        put_varint(&mut body, header_count as i64);
        body.extend_from_slice(headers);
        put_varint(&mut plain, body.len() as i64);
        plain.extend(body);
    }
    let section = zstd::encode_all(&plain[..], 3).unwrap();
    let opts = V2Opts {
        attributes: Codec::Zstd.id() as i16,
        ..V2Opts::default()
    };
    Bytes::from(v2_batch_raw(&opts, count as i32, 0, &section))
}

#[test]
fn many_empty_records_decode_lazily_in_bounded_memory() {
    const COUNT: usize = 1_000_000;
    let data = zstd_batch_of_empty_records(COUNT, 0, &[]);
    let budget = DecodeBudget::new(DEFAULT_MAX_DECODE_BYTES);
    let (count, peak) = peak_allocation(|| {
        records(data.clone(), &budget)
            .map(|r| r.map(|r| r.index))
            .try_fold(0, |n, index| {
                assert_eq!(index?, n);
                Ok::<_, RecordsError>(n + 1)
            })
            .unwrap()
    });
    assert_eq!(count, COUNT);
    // Iterating holds the decompressed bytes (charged) and one record at a time: far less
    // than the million records a Vec would hold.
    let decompressed = budget.used();
    assert!(decompressed < 12 * COUNT, "{decompressed}");
    assert!(
        peak < 2 * decompressed + (4 << 20),
        "peak {peak} for {decompressed} decompressed bytes"
    );
    assert!(peak < COUNT * std::mem::size_of::<Record>() / 4, "{peak}");
    assert_eq!(summarize(&data).unwrap().records, COUNT);
}

#[test]
fn a_million_headers_are_looked_up_without_being_built() {
    const COUNT: usize = 1_000_000;
    // Each header: an empty key and a null value, two bytes; "tenant" comes last.
    let mut headers = [0u8, 1].repeat(COUNT - 1);
    put_varint_bytes(&mut headers, Some(b"tenant"));
    put_varint_bytes(&mut headers, Some(b"acme"));
    let data = zstd_batch_of_empty_records(1, COUNT, &headers);
    let budget = DecodeBudget::new(DEFAULT_MAX_DECODE_BYTES);
    let ((tenant, missing, claimed), peak) = peak_allocation(|| {
        let mut all = records(data.clone(), &budget);
        let record = all.next().unwrap().unwrap();
        assert!(all.next().is_none());
        let tenant = record.headers.get("tenant").unwrap();
        let missing = record.headers.get("missing").unwrap();
        (tenant, missing, record.headers.len())
    });
    assert_eq!(tenant.as_deref(), Some(&b"acme"[..]));
    assert_eq!((missing, claimed), (None, COUNT));
    // The headers' wire bytes and nothing per header.
    assert!(peak < 4 * 2 * COUNT + (4 << 20), "peak {peak}");
    // Strict decoding validates them all, still without building them.
    let batches = decode_batches(data).unwrap();
    assert!(batches[0].records[0].headers.validate().is_ok());
}

#[test]
fn over_limit_batches_give_the_typed_error_without_inflating() {
    // 64 MiB of zeros in a few KiB of zstd, against a 1 MiB limit.
    let plain = vec![0u8; 64 << 20];
    let section = zstd::encode_all(&plain[..], 3).unwrap();
    drop(plain);
    assert!(section.len() < 64 << 10, "{}", section.len());
    let opts = V2Opts {
        attributes: Codec::Zstd.id() as i16,
        ..V2Opts::default()
    };
    let data = Bytes::from(v2_batch_raw(&opts, 1, 0, &section));
    let limit = 1 << 20;
    let (err, peak) =
        peak_allocation(|| decode_batches_with_limit(data.clone(), limit).unwrap_err());
    assert_eq!(
        err,
        RecordsError::OverLimit {
            spending: Spending::Decompressed(Codec::Zstd),
            limit
        }
    );
    assert!(peak < 2 * limit + (4 << 20), "peak {peak}");
    let budget = DecodeBudget::new(limit);
    assert!(matches!(
        records(data, &budget).next(),
        Some(Err(RecordsError::OverLimit { .. }))
    ));

    // Records kept by decode_batches count too: a million empty records are 8 MiB of bytes
    // but far more as decoded records.
    let data = zstd_batch_of_empty_records(1_000_000, 0, &[]);
    assert_eq!(
        decode_batches_with_limit(data, 32 << 20).unwrap_err(),
        RecordsError::OverLimit {
            spending: Spending::Records,
            limit: 32 << 20
        }
    );
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
