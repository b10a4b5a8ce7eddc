//! Micro-benchmarks of the mirror's per-record decisions and of PutRecords request building:
//!
//! * `sampling/<keyed|unkeyed>`: `sample_point` + `is_sampled` at 10%, by key or (unkeyed) by
//!   partition and value (elements = records).
//! * `key_to_shard/<n>_shards`: MD5 of a 16-byte partition key + `ShardMap::shard_for_hash`
//!   on a stream of 4, 64 and 1,024 evenly split shards (elements = records).
//! * `kinesis_key_to_shard/<n>_shards`: the same from a decoded `Record` through
//!   `kinesis_key` (which builds the partition key string) and `routing_hash`.
//! * `put_records/500x1KiB`: 500 queued 1 KiB records through the writer's per-shard lanes
//!   (`Lanes::fill_request`) + `entry` for each, i.e. one full PutRecords request's entries
//!   (elements = records).
//!
//! `cargo bench --bench mirror`; under `cargo test --all-targets` each case runs once.

mod support;

use std::collections::VecDeque;

use kafka_kinesis_proxy::config::WriteOrdering;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use kafka_kinesis_proxy::config::PartitionKeyRule;
use kafka_kinesis_proxy::kafka::records::Record;
use kafka_kinesis_proxy::kinesis::lanes::{Lanes, Queued};
use kafka_kinesis_proxy::kinesis::request::{entry, MirrorRecord};
use kafka_kinesis_proxy::kinesis::shard_map::{hash_key, ShardMap};
use kafka_kinesis_proxy::mirror::partition_key::kinesis_key;
use kafka_kinesis_proxy::mirror::sampling::{is_sampled, sample_point};

const KEYS: usize = 1024;

fn keys() -> Vec<String> {
    (0..KEYS as u64)
        .map(|i| String::from_utf8(support::key(i * 7919).to_vec()).expect("ascii"))
        .collect()
}

fn sampling(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("sampling");
    group.throughput(Throughput::Elements(KEYS as u64));
    group.bench_function("keyed", |b| {
        b.iter(|| {
            keys.iter()
                .filter(|k| is_sampled(sample_point(Some(black_box(k.as_bytes())), 3, None), 10.0))
                .count()
        })
    });
    group.bench_function("unkeyed", |b| {
        b.iter(|| {
            keys.iter()
                .filter(|v| is_sampled(sample_point(None, 3, Some(black_box(v.as_bytes()))), 10.0))
                .count()
        })
    });
    group.finish();
}

fn shard_lookup(c: &mut Criterion) {
    let keys = keys();
    let mut rng = support::Rng::new(3);
    let records: Vec<Record> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Record {
            offset: i as i64,
            timestamp: 1_700_000_000_000,
            key: Some(bytes::Bytes::from(k.clone())),
            value: Some(support::value(&mut rng)),
            headers: Default::default(),
            index: i,
        })
        .collect();
    let mut group = c.benchmark_group("key_to_shard");
    group.throughput(Throughput::Elements(KEYS as u64));
    for n in [4u32, 64, 1024] {
        let map = ShardMap::even(n);
        group.bench_function(format!("{n}_shards"), |b| {
            b.iter(|| {
                keys.iter()
                    .filter_map(|k| map.shard_for_hash(hash_key(black_box(k))))
                    .count()
            })
        });
    }
    group.finish();
    let mut group = c.benchmark_group("kinesis_key_to_shard");
    group.throughput(Throughput::Elements(KEYS as u64));
    for n in [4u32, 64, 1024] {
        let map = ShardMap::even(n);
        group.bench_function(format!("{n}_shards"), |b| {
            b.iter(|| {
                records
                    .iter()
                    .filter_map(|r| {
                        let key = kinesis_key(&PartitionKeyRule::Key, black_box(r), 3)
                            .expect("no headers to parse");
                        map.shard_for_hash(key.routing_hash())
                    })
                    .count()
            })
        });
    }
    group.finish();
}

fn put_records(c: &mut Criterion) {
    let map = ShardMap::even(4);
    let mut rng = support::Rng::new(5);
    let topic: Arc<str> = Arc::from("bench");
    let queue: VecDeque<MirrorRecord> = (0..500u64)
        .map(|i| {
            let record = Record {
                offset: i as i64,
                timestamp: 1_700_000_000_000,
                key: Some(support::key(i * 7919)),
                value: Some(support::value(&mut rng)),
                headers: Default::default(),
                index: i as usize,
            };
            MirrorRecord {
                topic: topic.clone(),
                partition: (i % 6) as i32,
                offset: i as i64,
                offset_from_kafka: true,
                key: kinesis_key(&PartitionKeyRule::Key, &record, (i % 6) as i32)
                    .expect("no headers to parse"),
                data: record.value.clone().expect("value"),
                acked_at: std::time::Instant::now(),
                delivery: None,
                logged: None,
            }
        })
        .collect();
    let mut group = c.benchmark_group("put_records");
    group.throughput(Throughput::Elements(500));
    group.bench_function("500x1KiB", |b| {
        b.iter_batched(
            || {
                let now = std::time::Instant::now();
                // A high rate factor: the bench measures batching, not the rate limit.
                let mut lanes = Lanes::new(WriteOrdering::None, 10.0);
                for record in queue.iter().cloned() {
                    lanes.push(Queued::new(record, now), &map, now);
                }
                (lanes, now)
            },
            |(mut lanes, now)| {
                let request = lanes.fill_request(now);
                let entries: Vec<_> = request.iter().map(|(_, q)| entry(&q.record)).collect();
                assert_eq!(entries.len(), 500);
                (entries, request)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, sampling, shard_lookup, put_records);
fn main() {
    support::criterion_main(&[benches]);
}
