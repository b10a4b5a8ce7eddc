//! Kinesis MD5 shard routing, computed by the proxy itself: the MD5 of the partition key, read
//! as a big-endian 128-bit integer, falls into the open shard whose inclusive `HashKeyRange`
//! contains it. An explicit hash key replaces the MD5.

use md5::{Digest, Md5};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub id: String,
    pub start: u128,
    pub end: u128,
}

/// The open shards of one stream, sorted by hash range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardMap {
    shards: Vec<Shard>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardMapError {
    #[error("shard {shard}: hash key `{value}` is not a decimal 128-bit integer")]
    BadHashKey { shard: String, value: String },
    #[error("shard {shard}: starting hash key is above its ending hash key")]
    EmptyRange { shard: String },
    #[error("open shards {first} and {second} overlap")]
    Overlap { first: String, second: String },
    #[error("the stream has no open shard")]
    NoShards,
}

/// The routing hash of a partition key.
pub fn hash_key(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

impl ShardMap {
    /// Builds the map from `(shard id, starting hash key, ending hash key)` of open shards, as
    /// ListShards returns them (decimal strings).
    pub fn from_ranges<'a>(
        ranges: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>,
    ) -> Result<Self, ShardMapError> {
        let parse = |shard: &str, value: &str| {
            value
                .parse::<u128>()
                .map_err(|_| ShardMapError::BadHashKey {
                    shard: shard.to_owned(),
                    value: value.to_owned(),
                })
        };
        let mut shards = Vec::new();
        for (id, start, end) in ranges {
            let (start, end) = (parse(id, start)?, parse(id, end)?);
            if start > end {
                return Err(ShardMapError::EmptyRange {
                    shard: id.to_owned(),
                });
            }
            shards.push(Shard {
                id: id.to_owned(),
                start,
                end,
            });
        }
        if shards.is_empty() {
            return Err(ShardMapError::NoShards);
        }
        shards.sort_by_key(|s| s.start);
        if let Some(pair) = shards.windows(2).find(|w| w[1].start <= w[0].end) {
            return Err(ShardMapError::Overlap {
                first: pair[0].id.clone(),
                second: pair[1].id.clone(),
            });
        }
        Ok(ShardMap { shards })
    }

    /// `shards` open shards (at least one) splitting the hash key space evenly, with the ids
    /// CreateStream gives them.
    pub fn even(shards: u32) -> ShardMap {
        let n = u128::from(shards.max(1));
        let step = u128::MAX / n;
        let shards = (0..n)
            .map(|i| Shard {
                id: format!("shardId-{i:012}"),
                start: step * i,
                end: if i == n - 1 {
                    u128::MAX
                } else {
                    step * (i + 1) - 1
                },
            })
            .collect();
        ShardMap { shards }
    }

    /// The open shard whose range contains `hash`. `None` only if the open shards leave a gap,
    /// which Kinesis never does for a stream at rest (it can mid-reshard).
    pub fn shard_for_hash(&self, hash: u128) -> Option<&Shard> {
        let idx = self.shards.partition_point(|s| s.start <= hash);
        let shard = self.shards.get(idx.checked_sub(1)?)?;
        (hash <= shard.end).then_some(shard)
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_hash_key_matches_known_vectors() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(hash_key(""), 0xd41d8cd98f00b204e9800998ecf8427e);
        assert_eq!(hash_key("abc"), 0x900150983cd24fb0d6963f7d28e17f72);
    }

    #[test]
    fn routes_by_inclusive_range_with_binary_search() {
        let map = ShardMap::even(4);
        let shards = map.shards().to_vec();
        for s in &shards {
            assert_eq!(map.shard_for_hash(s.start).unwrap().id, s.id);
            assert_eq!(map.shard_for_hash(s.end).unwrap().id, s.id);
        }
        assert_eq!(map.shard_for_hash(0).unwrap().id, "shardId-000000000000");
        assert_eq!(
            map.shard_for_hash(u128::MAX).unwrap().id,
            "shardId-000000000003"
        );
        // "abc" hashes to 0x9001..., the third quarter.
        assert_eq!(
            map.shard_for_hash(hash_key("abc")).unwrap().id,
            "shardId-000000000002"
        );
    }

    #[test]
    fn gaps_overlaps_and_garbage_are_detected() {
        let gap = ShardMap::from_ranges([("a", "0", "9"), ("b", "20", "30")]).unwrap();
        assert_eq!(gap.shard_for_hash(15), None);
        assert_eq!(gap.shard_for_hash(31), None);
        assert!(matches!(
            ShardMap::from_ranges([("a", "0", "10"), ("b", "10", "30")]),
            Err(ShardMapError::Overlap { .. })
        ));
        assert!(matches!(
            ShardMap::from_ranges([("a", "x", "1")]),
            Err(ShardMapError::BadHashKey { .. })
        ));
        assert!(matches!(
            ShardMap::from_ranges([("a", "5", "1")]),
            Err(ShardMapError::EmptyRange { .. })
        ));
        assert_eq!(ShardMap::from_ranges([]), Err(ShardMapError::NoShards));
    }
}
