//! What a stream's writer accepted recently, per Kafka partition, so that a batch Kafka
//! acknowledges twice is mirrored once.
//!
//! A producer that retries a batch Kafka already stored (its first answer was lost, or a
//! leader failover cut the connection) gets the same offsets back, and the proxy hands the
//! exchange to the mirror a second time. A record is identified by its Kafka offset plus a
//! digest of what Kinesis would store: offsets alone are not unique, because under acks=1 a
//! failover can truncate the log and give the same offsets to other records.
//!
//! This is a set, not a high-water mark: two connections producing to one partition can be
//! answered, and so reach the writer, out of order. Each partition keeps its last
//! [`PER_PARTITION`] records, and the whole structure stays within a byte bound counted from
//! the capacities of its allocations; past that, the least recently used partition is
//! forgotten. A retry older than its partition's window is mirrored again.
//!
//! It lives in the writer, not in the sampling stage, because a record's fate (queued,
//! spooled, dead-lettered) begins there, per stream: a topic re-pointed to another stream is
//! not a duplicate in the new one. The window forgets on restart: after a crash, a replay of
//! the write-ahead log is kept from storing a record twice by the log's done marks
//! (`mirror::wal::marks`: records settled before the crash are not handed on again) and, for
//! the replayed records that may have been stored just before it, by reading their shards
//! back first (`read_back`, through `PutRecordsService::put_resuming`) and sending only what
//! is not found.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::mem::size_of;
use std::sync::Arc;

use xxhash_rust::xxh3::Xxh3;

use super::request::MirrorRecord;

/// Records remembered per partition: an idempotent producer has at most 5 batches in flight
/// per partition, and a retry arrives right after the failure that caused it, so a window
/// this deep covers retries at well over a hundred thousand records a second.
pub const PER_PARTITION: usize = 16 * 1024;
/// The bound on the whole structure, per stream.
pub const MAX_BYTES: usize = 64 * 1024 * 1024;

/// A record as the window knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RecordId {
    offset: i64,
    digest: u64,
}

/// Digest of what Kinesis stores for a record: partition key, explicit hash key and data.
/// Two records Kinesis could not tell apart at one Kafka offset are the same record.
pub fn digest(record: &MirrorRecord) -> u64 {
    let mut hasher = Xxh3::new();
    let key = record.key.partition_key.as_bytes();
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key);
    match record.key.explicit_hash_key {
        Some(hash_key) => {
            hasher.update(&[1]);
            hasher.update(&hash_key.to_le_bytes());
        }
        None => hasher.update(&[0]),
    }
    hasher.update(&record.data);
    hasher.digest()
}

/// One partition's recent records, in the order they were accepted.
#[derive(Default)]
struct PartitionWindow {
    seen: HashSet<RecordId>,
    order: VecDeque<RecordId>,
    /// When the partition was last touched, in accepted records: for forgetting the least
    /// recently used partition.
    last_used: u64,
}

impl PartitionWindow {
    /// Heap bytes held, from the allocations' capacities: hashbrown keeps a power-of-two
    /// number of buckets (at most 7/8 full) of one id plus one control byte each.
    fn bytes(&self) -> usize {
        let buckets = if self.seen.capacity() == 0 {
            0
        } else {
            (self.seen.capacity() * 8 / 7).next_power_of_two()
        };
        buckets * (size_of::<RecordId>() + 1)
            + self.order.capacity() * size_of::<RecordId>()
            + size_of::<PartitionWindow>()
            + PARTITION_ENTRY_BYTES
    }
}

/// The partition map's own entry per partition: the key (an `Arc<str>` and the partition
/// number), the window, and the bucket's control byte, rounded up.
const PARTITION_ENTRY_BYTES: usize = 64;

/// The recently accepted records of one stream, per topic-partition.
pub struct RecentRecords {
    partitions: HashMap<(Arc<str>, i32), PartitionWindow>,
    per_partition: usize,
    max_bytes: usize,
    /// Bytes held, as of each partition's last change.
    bytes: usize,
    clock: u64,
}

impl Default for RecentRecords {
    fn default() -> Self {
        RecentRecords::new(PER_PARTITION, MAX_BYTES)
    }
}

impl RecentRecords {
    pub fn new(per_partition: usize, max_bytes: usize) -> RecentRecords {
        RecentRecords {
            partitions: HashMap::new(),
            per_partition: per_partition.max(1),
            max_bytes,
            bytes: 0,
            clock: 0,
        }
    }

    /// Remembers the record at `offset` of `topic`/`partition`, and says whether it is new:
    /// `false` means the same record (same offset, same digest) is still in the window.
    pub fn first_time(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        offset: i64,
        digest: u64,
    ) -> bool {
        self.clock += 1;
        let id = RecordId { offset, digest };
        let key = (topic.clone(), partition);
        // A new window's own entry counts too: it did not exist before.
        let before = self.partitions.get(&key).map_or(0, PartitionWindow::bytes);
        let window = self.partitions.entry(key.clone()).or_default();
        window.last_used = self.clock;
        if window.seen.contains(&id) {
            return false;
        }
        if window.order.len() >= self.per_partition {
            if let Some(oldest) = window.order.pop_front() {
                window.seen.remove(&oldest);
            }
        }
        window.seen.insert(id);
        window.order.push_back(id);
        let after = window.bytes();
        self.bytes = self.bytes + after - before;
        self.forget_least_recent_beyond_bound(&key);
        true
    }

    /// Heap bytes the structure holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Forgets whole partitions, least recently used first, until the bound holds; never the
    /// partition just touched (one window alone is always allowed).
    fn forget_least_recent_beyond_bound(&mut self, keep: &(Arc<str>, i32)) {
        while self.bytes > self.max_bytes {
            let victim = self
                .partitions
                .iter()
                .filter(|(k, _)| *k != keep)
                .min_by_key(|(_, w)| w.last_used)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { break };
            if let Some(window) = self.partitions.remove(&victim) {
                self.bytes -= window.bytes();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> Arc<str> {
        Arc::from("orders")
    }

    #[test]
    fn a_record_seen_again_is_a_duplicate() {
        let mut recent = RecentRecords::new(8, usize::MAX);
        assert!(recent.first_time(&topic(), 0, 100, 7));
        assert!(!recent.first_time(&topic(), 0, 100, 7));
        // The same offset in another partition or topic is another record.
        assert!(recent.first_time(&topic(), 1, 100, 7));
        assert!(recent.first_time(&Arc::from("other"), 0, 100, 7));
    }

    #[test]
    fn an_offset_reused_after_truncation_with_other_contents_is_new() {
        let mut recent = RecentRecords::new(8, usize::MAX);
        assert!(recent.first_time(&topic(), 0, 100, 7));
        assert!(
            recent.first_time(&topic(), 0, 100, 8),
            "truncation reused offset 100"
        );
        // Both are remembered: a retry of either is still a duplicate.
        assert!(!recent.first_time(&topic(), 0, 100, 7));
        assert!(!recent.first_time(&topic(), 0, 100, 8));
    }

    #[test]
    fn answers_out_of_order_are_all_remembered() {
        let mut recent = RecentRecords::new(64, usize::MAX);
        // Connection B's batch (offsets 10..20) reaches the writer before connection A's
        // (0..10): a high-water mark would take A's records for duplicates.
        for offset in (10..20).chain(0..10) {
            assert!(
                recent.first_time(&topic(), 0, offset, offset as u64),
                "offset {offset}"
            );
        }
        for offset in 0..20 {
            assert!(
                !recent.first_time(&topic(), 0, offset, offset as u64),
                "offset {offset}"
            );
        }
    }

    #[test]
    fn a_partition_keeps_its_last_records_only() {
        let mut recent = RecentRecords::new(4, usize::MAX);
        for offset in 0..6 {
            assert!(recent.first_time(&topic(), 0, offset, 1));
        }
        // 0 and 1 fell out of the window: a retry that old is mirrored again.
        assert!(recent.first_time(&topic(), 0, 0, 1));
        assert!(!recent.first_time(&topic(), 0, 5, 1));
        let window = &recent.partitions[&(topic(), 0)];
        assert_eq!(window.order.len(), 4);
        assert_eq!(window.seen.len(), 4);
    }

    #[test]
    fn memory_stays_within_its_bound_by_forgetting_idle_partitions() {
        let per_partition = 1024;
        let mut one = RecentRecords::new(per_partition, usize::MAX);
        for offset in 0..per_partition as i64 {
            one.first_time(&topic(), 0, offset, 1);
        }
        let window_bytes = one.bytes();
        // Counted from capacities: at least what the ids themselves take, twice (set and
        // order), and not wildly more.
        assert!(
            window_bytes >= 2 * per_partition * size_of::<RecordId>(),
            "{window_bytes}"
        );
        assert!(
            window_bytes <= 6 * per_partition * size_of::<RecordId>(),
            "{window_bytes}"
        );

        let bound = 3 * window_bytes;
        let mut recent = RecentRecords::new(per_partition, bound);
        for partition in 0..10 {
            for offset in 0..per_partition as i64 {
                recent.first_time(&topic(), partition, offset, 1);
                assert!(recent.bytes() <= bound, "{} > {bound}", recent.bytes());
            }
        }
        let recomputed: usize = recent.partitions.values().map(PartitionWindow::bytes).sum();
        assert_eq!(recent.bytes(), recomputed);
        // The partitions written last are kept; the first ones were forgotten.
        assert!(recent.partitions.contains_key(&(topic(), 9)));
        assert!(!recent.partitions.contains_key(&(topic(), 0)));
        assert!(!recent.first_time(&topic(), 9, 5, 1));
    }

    #[test]
    fn the_digest_covers_what_kinesis_stores() {
        use crate::kinesis::request::KinesisKey;
        let record = |key: &str, hash: Option<u128>, data: &'static [u8]| MirrorRecord {
            topic: topic(),
            partition: 0,
            offset: 1,
            offset_from_kafka: true,
            key: KinesisKey {
                partition_key: key.to_owned(),
                explicit_hash_key: hash,
            },
            data: bytes::Bytes::from_static(data),
            acked_at: std::time::Instant::now(),
            delivery: None,
            logged: None,
        };
        let base = digest(&record("k", None, b"v"));
        assert_eq!(base, digest(&record("k", None, b"v")));
        assert_ne!(base, digest(&record("k", None, b"w")));
        assert_ne!(base, digest(&record("j", None, b"v")));
        assert_ne!(base, digest(&record("k", Some(0), b"v")));
        // Length-prefixed: moving a byte from key to data changes the digest.
        assert_ne!(
            digest(&record("kv", None, b"")),
            digest(&record("k", None, b"v"))
        );
    }
}
