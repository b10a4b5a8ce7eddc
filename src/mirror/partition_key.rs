//! Kinesis partition keys for Kafka records.
//!
//! Rules (documented in README):
//! - `key`: the Kafka key as UTF-8; a key that is not UTF-8 is hex-encoded; a key longer than
//!   256 characters (Kinesis' limit) becomes `md5:` + the hex MD5 of its bytes. A null or empty
//!   key falls back to the `partition` rule.
//! - `partition`: the partition number as the partition key, with an ExplicitHashKey at the
//!   middle of the partition's slot in an even split of the hash space into as many slots as
//!   the stream has open shards, so partitions spread over shards instead of all hashing by
//!   their short decimal strings.
//! - `header:NAME`: the value of header NAME under the `key` rules, else the `key` rule.

use md5::{Digest, Md5};

use crate::config::PartitionKeyRule;
use crate::kafka::records::Record;

/// Kinesis' maximum partition key length, in Unicode characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisKey {
    pub partition_key: String,
    pub explicit_hash_key: Option<u128>,
}

impl KinesisKey {
    /// The 128-bit value Kinesis routes this record by.
    pub fn routing_hash(&self) -> u128 {
        self.explicit_hash_key
            .unwrap_or_else(|| crate::kinesis::shard_map::hash_key(&self.partition_key))
    }
}

/// The bytes `record`'s partition key is made from under `rule`: the header's or the Kafka
/// key's, whichever the rule picks, if not null or empty; `None` when the partition rule
/// applies.
pub fn routing_key_bytes<'r>(rule: &PartitionKeyRule, record: &'r Record) -> Option<&'r [u8]> {
    routing_key_of(rule, record.key.as_deref(), |name| {
        header_value(record, name)
    })
}

/// [`routing_key_bytes`] over a record's parts: its Kafka key, and `header` giving the value
/// of its first header named so. Readers that decode records with another client (`verify`)
/// key them with this, so they key exactly as the mirror does.
pub fn routing_key_of<'r>(
    rule: &PartitionKeyRule,
    kafka_key: Option<&'r [u8]>,
    header: impl FnOnce(&str) -> Option<&'r [u8]>,
) -> Option<&'r [u8]> {
    let non_empty = |bytes: &'r [u8]| (!bytes.is_empty()).then_some(bytes);
    let kafka_key = || kafka_key.and_then(non_empty);
    match rule {
        PartitionKeyRule::Partition => None,
        PartitionKeyRule::Key => kafka_key(),
        PartitionKeyRule::Header(name) => header(name).and_then(non_empty).or_else(kafka_key),
    }
}

/// The value of `record`'s first header named `name`.
pub(super) fn header_value<'r>(record: &'r Record, name: &str) -> Option<&'r [u8]> {
    record
        .headers
        .iter()
        .find(|(h, _)| h == name)
        .and_then(|(_, v)| v.as_deref())
}

/// The Kinesis key of `record`, produced to `partition`, for a stream with `open_shards` shards.
pub fn kinesis_key(
    rule: &PartitionKeyRule,
    record: &Record,
    partition: i32,
    open_shards: usize,
) -> KinesisKey {
    kinesis_key_of(routing_key_bytes(rule, record), partition, open_shards)
}

/// The Kinesis key of a record whose routing key (from [`routing_key_of`]) is `routing_key`.
pub fn kinesis_key_of(
    routing_key: Option<&[u8]>,
    partition: i32,
    open_shards: usize,
) -> KinesisKey {
    routing_key.map_or_else(
        || partition_key_for(partition, open_shards),
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
    if text.chars().count() <= MAX_PARTITION_KEY_CHARS {
        text
    } else {
        format!("md5:{}", hex::encode(Md5::digest(bytes)))
    }
}

fn partition_key_for(partition: i32, open_shards: usize) -> KinesisKey {
    let slots = open_shards.max(1) as u128;
    let width = u128::MAX / slots;
    let slot = u128::from(partition.unsigned_abs()) % slots;
    KinesisKey {
        partition_key: partition.to_string(),
        explicit_hash_key: Some(width * slot + width / 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(key: Option<&[u8]>, headers: Vec<(&str, Option<&[u8]>)>) -> Record {
        Record {
            index: 0,
            offset: 0,
            timestamp: 0,
            key: key.map(Bytes::copy_from_slice),
            value: None,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.map(Bytes::copy_from_slice)))
                .collect(),
        }
    }

    #[test]
    fn key_rule_utf8_hex_and_digest() {
        let k = kinesis_key(
            &PartitionKeyRule::Key,
            &record(Some(b"order-1"), vec![]),
            0,
            4,
        );
        assert_eq!(
            k,
            KinesisKey {
                partition_key: "order-1".into(),
                explicit_hash_key: None
            }
        );
        let k = kinesis_key(
            &PartitionKeyRule::Key,
            &record(Some(&[0xff, 0x00]), vec![]),
            0,
            4,
        );
        assert_eq!(k.partition_key, "ff00");
        let long = "x".repeat(257);
        let k = kinesis_key(
            &PartitionKeyRule::Key,
            &record(Some(long.as_bytes()), vec![]),
            0,
            4,
        );
        assert_eq!(
            k.partition_key,
            format!("md5:{}", hex::encode(Md5::digest(long.as_bytes())))
        );
        let exact = "é".repeat(256);
        assert_eq!(
            kinesis_key(
                &PartitionKeyRule::Key,
                &record(Some(exact.as_bytes()), vec![]),
                0,
                4
            )
            .partition_key,
            exact
        );
    }

    #[test]
    fn null_and_empty_keys_use_the_partition_rule() {
        for key in [None, Some(&b""[..])] {
            let k = kinesis_key(&PartitionKeyRule::Key, &record(key, vec![]), 5, 4);
            assert_eq!(k.partition_key, "5");
            assert!(k.explicit_hash_key.is_some());
        }
    }

    #[test]
    fn partition_rule_spreads_partitions_over_shards() {
        let map = crate::kinesis::shard_map::ShardMap::even(4);
        let shards: Vec<String> = (0..4)
            .map(|p| {
                let k = kinesis_key(
                    &PartitionKeyRule::Partition,
                    &record(Some(b"ignored"), vec![]),
                    p,
                    4,
                );
                map.shard_for_hash(k.routing_hash()).unwrap().id.clone()
            })
            .collect();
        let distinct: std::collections::BTreeSet<_> = shards.iter().collect();
        assert_eq!(distinct.len(), 4, "{shards:?}");
    }

    #[test]
    fn header_rule_falls_back_to_key() {
        let rule = PartitionKeyRule::Header("tenant".into());
        let with = record(Some(b"k"), vec![("tenant", Some(b"acme"))]);
        assert_eq!(kinesis_key(&rule, &with, 0, 1).partition_key, "acme");
        let without = record(Some(b"k"), vec![("other", Some(b"x"))]);
        assert_eq!(kinesis_key(&rule, &without, 0, 1).partition_key, "k");
        let null_header = record(Some(b"k"), vec![("tenant", None)]);
        assert_eq!(kinesis_key(&rule, &null_header, 0, 1).partition_key, "k");
    }
}
