//! Micro-benchmarks of the mirror's decoding: a Produce v9 request (one topic, 6 partitions,
//! 16 records of 1 KiB each per partition, ~100 KiB of payload) decoded to its partitions, and
//! every record extracted, for each codec Kafka supports.
//!
//! * `produce_view/decode`: `ProduceRequestView::decode` alone (elements = requests).
//! * `extract/<codec>`: view decode + `decode_batches` of every partition: the work the mirror
//!   does per routed request (elements = records).
//! * `extract_payload/<codec>`: the same, counted in uncompressed key+value bytes.
//! * `summarize/<codec>`: `summarize` of every partition, what the mirror does for topics
//!   without a route (bytes = wire record bytes; CRC-checked, not decompressed).
//!
//! `cargo bench --bench produce`; under `cargo test --all-targets` each case runs once.

mod support;

use std::hint::black_box;

use criterion::{criterion_group, Criterion, Throughput};
use kafka_kinesis_proxy::kafka::produce::ProduceRequestView;
use kafka_kinesis_proxy::kafka::records::{decode_batches, summarize};
use kafka_protocol::records::Compression;

const PARTITIONS: i32 = 6;
const PER_PARTITION: usize = 16;

fn extract_all(version: i16, body: &bytes::Bytes) -> usize {
    let view = ProduceRequestView::decode(version, body.clone()).expect("produce");
    let mut n = 0;
    for topic in view.topics {
        for partition in topic.partitions {
            let records = partition.records.expect("records");
            for batch in decode_batches(records).expect("batches") {
                n += batch.records.len();
            }
        }
    }
    n
}

fn view(c: &mut Criterion) {
    let input = support::produce(Compression::None, PARTITIONS, PER_PARTITION);
    let mut group = c.benchmark_group("produce_view");
    // Record data stays a zero-copy slice, so the cost is per request: counted in requests.
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode", |b| {
        b.iter(|| {
            ProduceRequestView::decode(support::PRODUCE_VERSION, black_box(input.body.clone()))
                .expect("produce")
        })
    });
    group.finish();
}

fn extract(c: &mut Criterion) {
    let inputs: Vec<_> = support::CODECS
        .iter()
        .map(|(name, codec)| (*name, support::produce(*codec, PARTITIONS, PER_PARTITION)))
        .collect();
    let mut group = c.benchmark_group("extract");
    for (name, input) in &inputs {
        assert_eq!(
            extract_all(support::PRODUCE_VERSION, &input.body) as u64,
            input.records
        );
        group.throughput(Throughput::Elements(input.records));
        group.bench_function(*name, |b| {
            b.iter(|| extract_all(support::PRODUCE_VERSION, black_box(&input.body)))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("extract_payload");
    for (name, input) in &inputs {
        group.throughput(Throughput::Bytes(input.payload));
        group.bench_function(*name, |b| {
            b.iter(|| extract_all(support::PRODUCE_VERSION, black_box(&input.body)))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("summarize");
    for (name, input) in &inputs {
        let view = ProduceRequestView::decode(support::PRODUCE_VERSION, input.body.clone())
            .expect("produce");
        let parts: Vec<bytes::Bytes> = view.topics[0]
            .partitions
            .iter()
            .map(|p| p.records.clone().expect("records"))
            .collect();
        let wire: usize = parts.iter().map(|p| p.len()).sum();
        group.throughput(Throughput::Bytes(wire as u64));
        group.bench_function(*name, |b| {
            b.iter(|| {
                parts
                    .iter()
                    .map(|p| summarize(black_box(p)).expect("summary").records)
                    .sum::<usize>()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, view, extract);
fn main() {
    support::criterion_main(&[benches]);
}
