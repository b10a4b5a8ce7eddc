//! Key-consistent sampling.
//!
//! Whether a record is mirrored depends only on a hash of the key it is routed by and the
//! percentage, so at a given percentage a key is always in or always out, and raising the
//! percentage only adds keys. The hash is xxh3, deliberately not MD5: sampling "MD5 below a
//! threshold" would put a 25% sample entirely on the first quarter of the shards.
//!
//! Records without a key (null or empty) are sampled by a hash of their partition and value:
//! both are in Kafka, so anyone reading the topic can recompute which records were mirrored.

use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3};

use super::partition_key::{routing_key_bytes, routing_key_of};
use crate::config::PartitionKeyRule;
use crate::kafka::records::{Record, RecordsError};

/// Fixed so that the same keys are in or out across restarts and proxy instances.
const SEED: u64 = 0x6b6b_705f_7361_6d70; // "kkp_samp"

/// A position in the sampling space `0..2^64`: xxh3-64 of a non-empty `key`; for a null or
/// empty key, xxh3-64 of the partition number (4 bytes, big-endian) followed by the value's
/// bytes (none for a null value).
pub fn sample_point(key: Option<&[u8]>, partition: i32, value: Option<&[u8]>) -> u64 {
    match key.filter(|k| !k.is_empty()) {
        Some(key) => xxh3_64_with_seed(key, SEED),
        // No identity to keep consistent. The position within the request would do as a
        // spreader, but not for producers that send one record per request (all at position
        // 0), and nobody can recompute it afterwards; the value can be.
        None => {
            let mut hasher = Xxh3::with_seed(SEED);
            hasher.update(&partition.to_be_bytes());
            hasher.update(value.unwrap_or_default());
            hasher.digest()
        }
    }
}

/// Where `record`, produced to `partition` of a topic routed with `rule`, falls in the
/// sampling space: by the key it is routed by (a `header:NAME` route samples by the header,
/// so one Kinesis key's records are all in or all out). The `partition` rule samples by the
/// Kafka key instead: sampling by partition would turn a percentage into a choice of
/// partitions. Fails only when a `header:NAME` rule meets malformed headers.
pub fn record_sample_point(
    rule: &PartitionKeyRule,
    record: &Record,
    partition: i32,
) -> Result<u64, RecordsError> {
    let key = match rule {
        PartitionKeyRule::Partition => routing_key_bytes(&PartitionKeyRule::Key, record)?,
        rule => routing_key_bytes(rule, record)?,
    };
    Ok(sample_point(
        key.as_deref(),
        partition,
        record.value.as_deref(),
    ))
}

/// [`record_sample_point`] over a record's parts (see [`routing_key_of`]), for readers that
/// decode records with another client (`verify`).
pub fn sample_point_of(
    rule: &PartitionKeyRule,
    kafka_key: Option<&[u8]>,
    header: Option<&[u8]>,
    value: Option<&[u8]>,
    partition: i32,
) -> u64 {
    let rule = match rule {
        PartitionKeyRule::Partition => &PartitionKeyRule::Key,
        rule => rule,
    };
    sample_point(routing_key_of(rule, kafka_key, header), partition, value)
}

/// Whether a record at `point` is mirrored at `percent` (0..=100).
pub fn is_sampled(point: u64, percent: f64) -> bool {
    let threshold = (percent.clamp(0.0, 100.0) / 100.0 * 2f64.powi(64)) as u128;
    u128::from(point) < threshold
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::records::Headers;
    use crate::kinesis::shard_map::hash_key;
    use bytes::Bytes;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("key-{i:06}")).collect()
    }

    #[test]
    fn edges_are_none_and_all() {
        for k in keys(1000) {
            let p = sample_point(Some(k.as_bytes()), 0, None);
            assert!(!is_sampled(p, 0.0));
            assert!(is_sampled(p, 100.0));
        }
        assert!(is_sampled(u64::MAX, 100.0));
    }

    #[test]
    fn fraction_tracks_percent_and_raising_only_adds_keys() {
        let keys = keys(20_000);
        let set = |pct: f64| -> Vec<bool> {
            keys.iter()
                .map(|k| is_sampled(sample_point(Some(k.as_bytes()), 0, None), pct))
                .collect()
        };
        let (s25, s60) = (set(25.0), set(60.0));
        let frac = |s: &[bool]| s.iter().filter(|b| **b).count() as f64 / s.len() as f64;
        assert!((frac(&s25) - 0.25).abs() < 0.01, "{}", frac(&s25));
        assert!((frac(&s60) - 0.60).abs() < 0.01, "{}", frac(&s60));
        assert!(
            s25.iter().zip(&s60).all(|(a, b)| !a || *b),
            "25% set must be a subset of the 60% set"
        );
    }

    #[test]
    fn sample_is_independent_of_shard_routing() {
        // With 4 even shards, a 25% sample must still land on every shard roughly evenly.
        let mut per_quarter = [0usize; 4];
        for k in keys(20_000) {
            if is_sampled(sample_point(Some(k.as_bytes()), 0, None), 25.0) {
                per_quarter[(hash_key(&k) >> 126) as usize] += 1;
            }
        }
        let total: usize = per_quarter.iter().sum();
        for count in per_quarter {
            let share = count as f64 / total as f64;
            assert!((share - 0.25).abs() < 0.03, "{per_quarter:?}");
        }
    }

    /// A record at `index` of its request, with a `tenant` header when given.
    fn record(index: usize, key: Option<&[u8]>, value: &[u8], tenant: Option<&str>) -> Record {
        Record {
            index,
            offset: index as i64,
            timestamp: 0,
            key: key.map(Bytes::copy_from_slice),
            value: Some(Bytes::copy_from_slice(value)),
            headers: Headers::encode(tenant.map(|t| ("tenant", Some(t.as_bytes())))),
        }
    }

    /// How many of 1,000 records with `key` and distinct values, each alone in its request
    /// (so each at index 0), are sampled at 50%.
    fn sampled_at_half(key: Option<&[u8]>) -> usize {
        (0..1000)
            .filter(|i| {
                let r = record(0, key, format!("value-{i}").as_bytes(), None);
                is_sampled(
                    record_sample_point(&PartitionKeyRule::Key, &r, 3).unwrap(),
                    50.0,
                )
            })
            .count()
    }

    #[test]
    fn empty_keys_are_sampled_like_null_keys() {
        let sampled = sampled_at_half(Some(b""));
        assert!(
            (400..600).contains(&sampled),
            "{sampled} of 1000 empty-key records sampled at 50%"
        );
    }

    #[test]
    fn null_keys_are_sampled_by_partition_and_value_not_position() {
        let sampled = sampled_at_half(None);
        assert!(
            (400..600).contains(&sampled),
            "{sampled} of 1000 single-record requests sampled at 50%"
        );
        // The same record in another position, or from another request, lands on the same
        // point, so the decision can be recomputed from what Kafka stored.
        let rule = PartitionKeyRule::Key;
        let at = |index, partition| {
            record_sample_point(&rule, &record(index, None, b"v", None), partition).unwrap()
        };
        assert_eq!(at(0, 3), at(17, 3));
        assert_ne!(at(0, 3), at(0, 4));
    }

    #[test]
    fn header_routes_sample_by_the_header() {
        let rule = PartitionKeyRule::Header("tenant".into());
        let mut tenants_in = 0;
        for t in 0..200 {
            let tenant = format!("tenant-{t}");
            let decisions: std::collections::BTreeSet<bool> = (0..5)
                .map(|k| {
                    let key = format!("order-{t}-{k}");
                    let r = record(k, Some(key.as_bytes()), b"v", Some(&tenant));
                    is_sampled(record_sample_point(&rule, &r, 0).unwrap(), 50.0)
                })
                .collect();
            assert_eq!(
                decisions.len(),
                1,
                "{tenant}'s records split by their Kafka keys"
            );
            tenants_in += usize::from(decisions.contains(&true));
        }
        assert!(
            (70..130).contains(&tenants_in),
            "{tenants_in} of 200 tenants sampled at 50%"
        );
        // Without the header, the record routes (and so samples) by its Kafka key.
        let without = record(0, Some(b"order-1"), b"v", None);
        assert_eq!(
            record_sample_point(&rule, &without, 0).unwrap(),
            record_sample_point(&PartitionKeyRule::Key, &without, 0).unwrap()
        );
    }
}
