//! Key-consistent sampling.
//!
//! Whether a record is mirrored depends only on a hash of its Kafka key and the percentage, so
//! at a given percentage a key is always in or always out, and raising the percentage only adds
//! keys. The hash is xxh3, deliberately not MD5: sampling "MD5 below a threshold" would put a
//! 25% sample entirely on the first quarter of the shards.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Fixed so that the same keys are in or out across restarts and proxy instances.
const SEED: u64 = 0x6b6b_705f_7361_6d70; // "kkp_samp"

/// A record's position in the sampling space `0..2^64`.
pub fn sample_point(key: Option<&[u8]>, partition: i32, offset: i64) -> u64 {
    match key {
        Some(key) => xxh3_64_with_seed(key, SEED),
        // Null keys have no identity to keep consistent; spread them by position instead.
        None => {
            let mut position = [0u8; 12];
            position[..4].copy_from_slice(&partition.to_be_bytes());
            position[4..].copy_from_slice(&offset.to_be_bytes());
            xxh3_64_with_seed(&position, SEED)
        }
    }
}

/// Whether a record at `point` is mirrored at `percent` (0..=100).
pub fn is_sampled(point: u64, percent: f64) -> bool {
    let threshold = (percent.clamp(0.0, 100.0) / 100.0 * 2f64.powi(64)) as u128;
    u128::from(point) < threshold
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::shard_map::hash_key;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("key-{i:06}")).collect()
    }

    #[test]
    fn edges_are_none_and_all() {
        for k in keys(1000) {
            let p = sample_point(Some(k.as_bytes()), 0, 0);
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
                .map(|k| is_sampled(sample_point(Some(k.as_bytes()), 0, 0), pct))
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
            if is_sampled(sample_point(Some(k.as_bytes()), 0, 0), 25.0) {
                per_quarter[(hash_key(&k) >> 126) as usize] += 1;
            }
        }
        let total: usize = per_quarter.iter().sum();
        for count in per_quarter {
            let share = count as f64 / total as f64;
            assert!((share - 0.25).abs() < 0.03, "{per_quarter:?}");
        }
    }

    #[test]
    fn null_keys_spread_by_position() {
        let sampled = (0..10_000)
            .filter(|o| is_sampled(sample_point(None, 3, *o), 50.0))
            .count();
        assert!((4_700..5_300).contains(&sampled), "{sampled}");
        assert_eq!(sample_point(None, 1, 2), sample_point(None, 1, 2));
        assert_ne!(sample_point(None, 1, 2), sample_point(None, 2, 1));
    }
}
