//! `shard-for`: the open shard the mirror would send a Kafka record to now. The record's key
//! goes through the mirror's own rules (the route's `partition_key`, hex for keys that are not
//! UTF-8, `md5:` for keys over Kinesis' length limit, the partition rule for null and empty
//! keys), so the answer is the mirror's, not that of the raw key.

use crate::config::{Config, PartitionKeyRule, StreamTarget, TargetError};
use crate::kinesis::client::{load_shard_map, Clients, StreamError};
use crate::kinesis::request::KinesisKey;
use crate::mirror::partition_key::{kinesis_key_of, routing_key_of};

/// The command line of `shard-for`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The Kafka topic whose `[[mirror]]` route (stream, region, role and `partition_key`)
    /// applies.
    #[arg(long, required_unless_present = "stream", conflicts_with = "stream")]
    pub topic: Option<String>,
    /// Kinesis stream instead of a route (a name, an ARN, or a route's label as `/routes`
    /// shows it); keyed by the `key` rule.
    #[arg(long)]
    pub stream: Option<String>,
    /// The Kafka record's key, as UTF-8 text.
    #[arg(long, conflicts_with = "key_hex")]
    pub key: Option<String>,
    /// The Kafka record's key, hex-encoded (for keys that are not UTF-8).
    #[arg(long)]
    pub key_hex: Option<String>,
    /// The value of the header a `header:NAME` route keys by.
    #[arg(long)]
    pub header: Option<String>,
    /// The Kafka partition: what a null or empty key, or a `partition` route, is keyed by.
    #[arg(long)]
    pub partition: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShardForError {
    #[error("topic `{0}` has no [[mirror]] route in the config: pass --stream")]
    NoRoute(String),
    #[error("--stream: {0}")]
    Target(#[from] TargetError),
    #[error("--key-hex: {0}")]
    KeyHex(#[from] hex::FromHexError),
    #[error("the record is keyed by its partition (its key is null or empty, or the route's partition_key is \"partition\"): pass --partition")]
    NoPartition,
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(
        "no open shard of `{stream}` covers hash key {hash} (the stream is resharding; retry)"
    )]
    NoShard { stream: String, hash: u128 },
}

/// Where the mirror would send the record: its Kinesis key and the open shard it maps to.
#[derive(Debug)]
pub struct Placement {
    pub key: KinesisKey,
    pub hash: u128,
    pub shard_id: String,
}

pub async fn run(config: &Config, options: &Options) -> Result<Placement, ShardForError> {
    let (target, rule) = match (&options.topic, &options.stream) {
        (Some(topic), _) => {
            let route = config
                .mirror
                .iter()
                .find(|r| &r.topic == topic)
                .ok_or_else(|| ShardForError::NoRoute(topic.clone()))?;
            (route.target.clone(), route.partition_key.clone())
        }
        (None, stream) => (
            stream
                .as_deref()
                .unwrap_or_default()
                .parse::<StreamTarget>()?,
            PartitionKeyRule::Key,
        ),
    };
    let key = kinesis_key(&rule, options)?;
    let client = Clients::new(config.kinesis.clone()).client(&target).await;
    let stream = target.to_string();
    let map = load_shard_map(&client, &stream).await?;
    let hash = key.routing_hash();
    let shard = map
        .shard_for_hash(hash)
        .ok_or(ShardForError::NoShard { stream, hash })?;
    Ok(Placement {
        shard_id: shard.id.clone(),
        key,
        hash,
    })
}

/// The record's Kinesis key, by the mirror's rules.
fn kinesis_key(rule: &PartitionKeyRule, options: &Options) -> Result<KinesisKey, ShardForError> {
    let kafka_key = match (&options.key, &options.key_hex) {
        (Some(text), _) => Some(text.as_bytes().to_vec()),
        (None, Some(hex)) => Some(hex::decode(hex)?),
        (None, None) => None,
    };
    let header = options.header.as_ref().map(|h| h.as_bytes().to_vec());
    let routing = routing_key_of(rule, kafka_key, header);
    match (routing, options.partition) {
        (Some(bytes), partition) => Ok(kinesis_key_of(Some(&bytes), partition.unwrap_or(0))),
        (None, Some(partition)) => Ok(kinesis_key_of(None, partition)),
        (None, None) => Err(ShardForError::NoPartition),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::shard_map::hash_key;

    fn options(key: Option<&str>, key_hex: Option<&str>, partition: Option<i32>) -> Options {
        Options {
            topic: None,
            stream: Some("s".into()),
            key: key.map(str::to_owned),
            key_hex: key_hex.map(str::to_owned),
            header: None,
            partition,
        }
    }

    #[test]
    fn keys_the_mirror_transforms_are_placed_by_their_transformed_key() {
        let rule = PartitionKeyRule::Key;
        let long = "k".repeat(300);
        let key = kinesis_key(&rule, &options(Some(&long), None, None)).unwrap();
        assert!(key.partition_key.starts_with("md5:"), "{key:?}");
        assert_ne!(
            key.routing_hash(),
            hash_key(&long),
            "not the raw key's hash"
        );
        let key = kinesis_key(&rule, &options(None, Some("ff00"), None)).unwrap();
        assert_eq!(key.partition_key, "ff00");
        let key = kinesis_key(&rule, &options(Some(""), None, Some(3))).unwrap();
        assert_eq!(
            key,
            kinesis_key_of(None, 3),
            "an empty key follows the partition rule"
        );
        assert!(matches!(
            kinesis_key(&rule, &options(None, None, None)),
            Err(ShardForError::NoPartition)
        ));
        let header = Options {
            header: Some("tenant-7".into()),
            ..options(Some("order-1"), None, None)
        };
        let key = kinesis_key(&PartitionKeyRule::Header("tenant".into()), &header).unwrap();
        assert_eq!(key.partition_key, "tenant-7");
    }
}
