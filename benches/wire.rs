//! Micro-benchmarks of the forwarding path's per-frame work: splitting a read buffer into
//! frames (`FrameCodec`; elements = frames, 32 Produce frames of ~100 KiB or 4,096 Metadata
//! frames of ~60 bytes per iteration) and parsing request headers (`RequestHeader::parse`),
//! plus the `peek_acks` look every Produce request gets (elements = requests).
//!
//! `cargo bench --bench wire`; under `cargo test --all-targets` each case runs once.

mod support;

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use kafka_kinesis_proxy::kafka::frame::FrameCodec;
use kafka_kinesis_proxy::kafka::header::RequestHeader;
use kafka_kinesis_proxy::kafka::produce::peek_acks;
use kafka_protocol::records::Compression;
use tokio_util::codec::Decoder;

const MAX_FRAME: usize = 100 * 1024 * 1024;

/// `copies` frames back to back, as they sit in a socket read buffer.
fn stream_of(frame: &Bytes, copies: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(frame.len() * copies);
    for _ in 0..copies {
        buf.extend_from_slice(frame);
    }
    buf.freeze()
}

fn frames(c: &mut Criterion) {
    let produce = support::produce(Compression::None, 6, 16).frame; // ~100 KiB
    let metadata = support::metadata_frame(); // ~60 bytes
    let mut group = c.benchmark_group("frame_split");
    for (name, frame, copies) in [
        ("produce_100KiB", &produce, 32),
        ("metadata_small", &metadata, 4096),
    ] {
        let stream = stream_of(frame, copies);
        // Splitting is zero-copy (`BytesMut::split_to`), so the cost is per frame, not per
        // byte: counted in frames.
        group.throughput(Throughput::Elements(copies as u64));
        group.bench_function(name, |b| {
            let mut codec = FrameCodec::new(MAX_FRAME);
            b.iter_batched_ref(
                || BytesMut::from(&stream[..]),
                |buf| {
                    let mut n = 0usize;
                    while let Some(frame) = codec.decode(buf).expect("valid frames") {
                        n += frame.len();
                    }
                    black_box(n)
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn headers(c: &mut Criterion) {
    let produce = support::produce(Compression::None, 6, 16);
    let metadata = support::metadata_frame();
    let mut group = c.benchmark_group("request_header");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_produce_v9", |b| {
        b.iter(|| RequestHeader::parse(black_box(&produce.frame)).expect("header"))
    });
    group.bench_function("parse_metadata_v12", |b| {
        b.iter(|| RequestHeader::parse(black_box(&metadata)).expect("header"))
    });
    let offset = RequestHeader::parse(&produce.frame)
        .expect("header")
        .body_offset
        .expect("known api");
    group.bench_function("peek_acks_produce_v9", |b| {
        b.iter(|| peek_acks(9, black_box(&produce.frame[offset..])).expect("acks"))
    });
    group.finish();
}

criterion_group!(benches, frames, headers);
fn main() {
    support::criterion_main(&[benches]);
}
