//! PutRecords request building: cutting batches within Kinesis' limits, grouped by the shard
//! the proxy predicts, and turning records into request entries.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use bytes::Bytes;

use super::shard_map::ShardMap;
use crate::mirror::partition_key::KinesisKey;

/// PutRecords limits.
pub const MAX_BATCH_ENTRIES: usize = 500;
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;

/// A record on its way to Kinesis, with where it came from in Kafka.
#[derive(Debug, Clone)]
pub struct MirrorRecord {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: KinesisKey,
    pub data: Bytes,
}

impl MirrorRecord {
    /// What Kinesis counts against its per-record and per-request limits.
    pub fn kinesis_bytes(&self) -> usize {
        self.data.len() + self.key.partition_key.len()
    }
}

/// A record with the shard the proxy's map predicts for it.
pub struct Routed {
    pub record: MirrorRecord,
    pub predicted: Option<Arc<str>>,
}

/// Takes the next batch off the front of `queue`: at most 500 entries and 5 MiB, grouped by
/// predicted shard, with each shard's records in queue order.
pub fn take_batch(
    queue: &mut VecDeque<MirrorRecord>,
    queued_bytes: &mut usize,
    map: &ShardMap,
) -> Vec<Routed> {
    let mut bytes = 0;
    let mut taken = Vec::new();
    while let Some(next) = queue.front() {
        let size = next.kinesis_bytes();
        if taken.len() == MAX_BATCH_ENTRIES || (bytes + size > MAX_BATCH_BYTES && !taken.is_empty())
        {
            break;
        }
        bytes += size;
        let record = queue.pop_front().expect("front exists");
        let shard = map.shard_for_hash(record.key.routing_hash());
        taken.push((shard.map(|s| s.id.as_str()).unwrap_or(""), record));
    }
    *queued_bytes -= bytes;
    // Stable: per-shard order is kept.
    taken.sort_by(|a, b| a.0.cmp(b.0));
    let mut interned: HashMap<String, Arc<str>> = HashMap::new();
    taken
        .into_iter()
        .map(|(shard, record)| {
            let predicted = (!shard.is_empty()).then(|| {
                interned
                    .entry(shard.to_owned())
                    .or_insert_with(|| Arc::from(shard))
                    .clone()
            });
            Routed { record, predicted }
        })
        .collect()
}

/// The request entry for a record.
pub fn entry(record: &MirrorRecord) -> PutRecordsRequestEntry {
    PutRecordsRequestEntry::builder()
        .data(Blob::new(record.data.to_vec()))
        .partition_key(record.key.partition_key.clone())
        .set_explicit_hash_key(record.key.explicit_hash_key.map(|h| h.to_string()))
        .build()
        .expect("data and partition key are set")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::shard_map::tests::even;

    fn record(key: &str, size: usize) -> MirrorRecord {
        MirrorRecord {
            topic: Arc::from("t"),
            partition: 0,
            offset: 0,
            key: KinesisKey {
                partition_key: key.to_owned(),
                explicit_hash_key: None,
            },
            data: Bytes::from(vec![b'x'; size]),
        }
    }

    fn queue_of(records: Vec<MirrorRecord>) -> (VecDeque<MirrorRecord>, usize) {
        let bytes = records.iter().map(MirrorRecord::kinesis_bytes).sum();
        (records.into(), bytes)
    }

    #[test]
    fn batches_stop_at_500_entries() {
        let (mut q, mut bytes) =
            queue_of((0..1200).map(|i| record(&format!("k{i}"), 10)).collect());
        let map = even(4);
        assert_eq!(take_batch(&mut q, &mut bytes, &map).len(), 500);
        assert_eq!(take_batch(&mut q, &mut bytes, &map).len(), 500);
        assert_eq!(take_batch(&mut q, &mut bytes, &map).len(), 200);
        assert_eq!(bytes, 0);
    }

    #[test]
    fn batches_stop_at_5_mib_counting_partition_keys() {
        // 5 records of 1 MiB data + 2-byte keys: the fifth would pass 5 MiB.
        let (mut q, mut bytes) = queue_of(
            (0..6)
                .map(|i| record(&format!("k{i}"), 1024 * 1024))
                .collect(),
        );
        let map = even(1);
        let first = take_batch(&mut q, &mut bytes, &map);
        assert_eq!(first.len(), 4);
        assert!(
            first
                .iter()
                .map(|r| r.record.kinesis_bytes())
                .sum::<usize>()
                <= MAX_BATCH_BYTES
        );
        assert_eq!(take_batch(&mut q, &mut bytes, &map).len(), 2);
    }

    #[test]
    fn batch_is_grouped_by_predicted_shard_keeping_order() {
        let (mut q, mut bytes) =
            queue_of((0..100).map(|i| record(&format!("key-{i}"), 1)).collect());
        let map = even(4);
        let batch = take_batch(&mut q, &mut bytes, &map);
        let shards: Vec<&str> = batch
            .iter()
            .map(|r| r.predicted.as_deref().unwrap())
            .collect();
        let mut sorted = shards.clone();
        sorted.sort();
        assert_eq!(shards, sorted, "grouped by shard");
        for shard in sorted.iter().collect::<std::collections::BTreeSet<_>>() {
            let keys: Vec<usize> = batch
                .iter()
                .filter(|r| r.predicted.as_deref() == Some(*shard))
                .map(|r| r.record.key.partition_key[4..].parse().unwrap())
                .collect();
            assert!(
                keys.windows(2).all(|w| w[0] < w[1]),
                "queue order within {shard}"
            );
        }
        for r in &batch {
            let expected = map.shard_for_hash(r.record.key.routing_hash()).unwrap();
            assert_eq!(r.predicted.as_deref(), Some(expected.id.as_str()));
        }
    }
}
