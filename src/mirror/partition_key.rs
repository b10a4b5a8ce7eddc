//! Kinesis partition keys for Kafka records.
//!
//! Rules (documented in README):
//! - `key`: the Kafka key as UTF-8; a key that is not UTF-8 is hex-encoded; a key longer than
//!   256 UTF-16 code units (Kinesis' limit, as the KPL counts it) becomes `md5:` + the hex MD5 of its bytes. A null or empty
//!   key falls back to the `partition` rule.
//! - `partition`: the partition number as the partition key, with a fixed ExplicitHashKey: the
//!   128-bit bit-reversal of the partition number (0 → 0, 1 → 2^127, 2 → 2^126, 3 → 2^127 +
//!   2^126, ...). Any number of partitions spreads evenly over the hash space (exactly so over
//!   a power-of-two count of even shards), and since the hash key does not depend on the shard
//!   count, a reshard keeps each partition in its parent shard's children, as Kinesis lineage
//!   expects.
//! - `header:NAME`: the value of header NAME under the `key` rules, else the `key` rule.

use bytes::Bytes;
use md5::{Digest, Md5};

use crate::config::PartitionKeyRule;
use crate::kafka::records::{Record, RecordsError};
use crate::kinesis::request::{partition_key_length, KinesisKey, MAX_PARTITION_KEY_LENGTH};

/// The bytes `record`'s partition key is made from under `rule`: the header's or the Kafka
/// key's, whichever the rule picks, if not null or empty; `None` when the partition rule
/// applies. Only `header:NAME` parses headers, and only as far as the first NAME; that fails
/// when the headers before it are malformed.
pub fn routing_key_bytes(
    rule: &PartitionKeyRule,
    record: &Record,
) -> Result<Option<Bytes>, RecordsError> {
    let header = match rule {
        PartitionKeyRule::Header(name) => record.headers.get(name)?,
        _ => None,
    };
    Ok(routing_key_of(rule, record.key.clone(), header))
}

/// [`routing_key_bytes`] over a record's parts: its Kafka key, and the value of its first
/// header named by a `header:NAME` rule. Readers that decode records with another client
/// (`verify`) key them with this, so they key exactly as the mirror does.
pub fn routing_key_of<K: AsRef<[u8]>>(
    rule: &PartitionKeyRule,
    kafka_key: Option<K>,
    header: Option<K>,
) -> Option<K> {
    let non_empty = |bytes: &K| !bytes.as_ref().is_empty();
    match rule {
        PartitionKeyRule::Partition => None,
        PartitionKeyRule::Key => kafka_key.filter(non_empty),
        PartitionKeyRule::Header(_) => header
            .filter(non_empty)
            .or_else(|| kafka_key.filter(non_empty)),
    }
}

/// The Kinesis key of `record`, produced to `partition`.
pub fn kinesis_key(
    rule: &PartitionKeyRule,
    record: &Record,
    partition: i32,
) -> Result<KinesisKey, RecordsError> {
    Ok(kinesis_key_of(
        routing_key_bytes(rule, record)?.as_deref(),
        partition,
    ))
}

/// The Kinesis key of a record of `partition` whose routing key (from [`routing_key_of`]) is
/// `routing_key`.
pub fn kinesis_key_of(routing_key: Option<&[u8]>, partition: i32) -> KinesisKey {
    routing_key.map_or_else(
        || partition_key_for(partition),
        |bytes| KinesisKey {
            partition_key: key_from_bytes(bytes),
            explicit_hash_key: None,
        },
    )
}

fn key_from_bytes(bytes: &[u8]) -> String {
    let text = match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => hex::encode(bytes),
    };
    if partition_key_length(&text) <= MAX_PARTITION_KEY_LENGTH {
        text
    } else {
        format!("md5:{}", hex::encode(Md5::digest(bytes)))
    }
}

fn partition_key_for(partition: i32) -> KinesisKey {
    KinesisKey {
        partition_key: partition.to_string(),
        explicit_hash_key: Some(u128::from(partition.unsigned_abs()).reverse_bits()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::records::Headers;

    fn record(key: Option<&[u8]>, headers: Vec<(&str, Option<&[u8]>)>) -> Record {
        Record {
            index: 0,
            offset: 0,
            timestamp: 0,
            key: key.map(Bytes::copy_from_slice),
            value: None,
            headers: Headers::encode(headers),
        }
    }

    /// [`kinesis_key`] of a record whose headers are well formed.
    fn key_of(rule: &PartitionKeyRule, record: &Record, partition: i32) -> KinesisKey {
        kinesis_key(rule, record, partition).unwrap()
    }

    #[test]
    fn key_rule_utf8_hex_and_digest() {
        let k = key_of(&PartitionKeyRule::Key, &record(Some(b"order-1"), vec![]), 0);
        assert_eq!(
            k,
            KinesisKey {
                partition_key: "order-1".into(),
                explicit_hash_key: None
            }
        );
        let k = key_of(
            &PartitionKeyRule::Key,
            &record(Some(&[0xff, 0x00]), vec![]),
            0,
        );
        assert_eq!(k.partition_key, "ff00");
        let long = "x".repeat(257);
        let k = key_of(
            &PartitionKeyRule::Key,
            &record(Some(long.as_bytes()), vec![]),
            0,
        );
        assert_eq!(
            k.partition_key,
            format!("md5:{}", hex::encode(Md5::digest(long.as_bytes())))
        );
        // 129 characters outside the Basic Multilingual Plane are 258 UTF-16 code units, over
        // Kinesis' limit although only 129 characters: hashed, so Kinesis cannot reject them.
        let astral = "😀".repeat(129);
        assert!(key_of(
            &PartitionKeyRule::Key,
            &record(Some(astral.as_bytes()), vec![]),
            0
        )
        .partition_key
        .starts_with("md5:"));
        let exact = "é".repeat(256);
        assert_eq!(
            key_of(
                &PartitionKeyRule::Key,
                &record(Some(exact.as_bytes()), vec![]),
                0
            )
            .partition_key,
            exact
        );
    }

    #[test]
    fn null_and_empty_keys_use_the_partition_rule() {
        for key in [None, Some(&b""[..])] {
            let k = key_of(&PartitionKeyRule::Key, &record(key, vec![]), 5);
            assert_eq!(k.partition_key, "5");
            assert!(k.explicit_hash_key.is_some());
        }
    }

    #[test]
    fn partition_rule_spreads_partitions_over_shards_and_follows_splits() {
        let shard_of = |shards: u32, p: i32| {
            let k = key_of(
                &PartitionKeyRule::Partition,
                &record(Some(b"ignored"), vec![]),
                p,
            );
            let map = crate::kinesis::shard_map::ShardMap::even(shards);
            let id = map.shard_for_hash(k.routing_hash()).unwrap().id.clone();
            map.shards().iter().position(|s| s.id == id).unwrap()
        };
        // 16 partitions over 4 even shards: 4 each.
        let mut per_shard = [0; 4];
        for p in 0..16 {
            per_shard[shard_of(4, p)] += 1;
        }
        assert_eq!(per_shard, [4; 4]);
        // Every shard split in two: each partition lands in a child of the shard it was in,
        // whatever the split, because its hash key does not depend on the shard count.
        for p in 0..64 {
            assert_eq!(shard_of(8, p) / 2, shard_of(4, p), "partition {p}");
        }
        assert_eq!(
            key_of(&PartitionKeyRule::Partition, &record(None, vec![]), 1).explicit_hash_key,
            Some(1u128 << 127)
        );
    }

    #[test]
    fn header_rule_falls_back_to_key() {
        let rule = PartitionKeyRule::Header("tenant".into());
        let with = record(Some(b"k"), vec![("tenant", Some(b"acme"))]);
        assert_eq!(key_of(&rule, &with, 0).partition_key, "acme");
        let without = record(Some(b"k"), vec![("other", Some(b"x"))]);
        assert_eq!(key_of(&rule, &without, 0).partition_key, "k");
        let null_header = record(Some(b"k"), vec![("tenant", None)]);
        assert_eq!(key_of(&rule, &null_header, 0).partition_key, "k");
    }
}
