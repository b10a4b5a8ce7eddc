//! Reads a stream back: every shard, closed parents included, from the window's start to the
//! tip, reduced to a key hash and a data digest per record.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use aws_sdk_kinesis::Client;
use futures::{StreamExt, TryStreamExt};
use indicatif::ProgressBar;

use super::compare::{digest, key_hash, KinesisEntry};
use super::VerifyError;
use crate::kinesis::client::{list_all_shards, NamesStream, StreamError};

/// Shards read at the same time; each shard allows 5 GetRecords per second.
const CONCURRENT_SHARDS: usize = 4;
/// The most GetRecords returns at once.
const RECORDS_PER_CALL: i32 = 10_000;
/// Wait after a throttled GetRecords, the period of a shard's read limit.
const THROTTLE_BACKOFF: Duration = Duration::from_secs(1);

/// A Kinesis sequence number (decimal, up to 57 digits in practice) kept in 24 bytes instead
/// of a string: the leading digits and the last 38.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SequenceNumber {
    high: u64,
    low: u128,
}

const LOW_DIGITS: usize = 38;

impl SequenceNumber {
    pub fn parse(text: &str) -> Option<SequenceNumber> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let split = text.len().saturating_sub(LOW_DIGITS);
        let high = match &text[..split] {
            "" => 0,
            digits => digits.parse().ok()?,
        };
        Some(SequenceNumber {
            high,
            low: text[split..].parse().ok()?,
        })
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.high {
            0 => write!(f, "{}", self.low),
            high => write!(f, "{high}{:0width$}", self.low, width = LOW_DIGITS),
        }
    }
}

/// What was read: the records in stream order, and the shard ids they point at.
pub struct StreamRead {
    pub shard_ids: Vec<String>,
    pub records: Vec<KinesisEntry>,
}

struct ShardInfo {
    id: String,
    parents: Vec<String>,
}

/// Every record of `stream` from `start` (the trim horizon when `None`) to the tip. A key lives
/// in one shard at a time and moves to a child at a reshard, so reading parents before
/// children lists each key's records in the order the stream took them.
pub async fn read_stream(
    client: &Client,
    stream: &str,
    start: Option<SystemTime>,
    progress: &ProgressBar,
) -> Result<StreamRead, VerifyError> {
    let shards = parents_first(list_shards(client, stream).await?);
    let per_shard: Vec<Vec<KinesisEntry>> = futures::stream::iter(shards.iter().enumerate())
        .map(|(index, shard)| read_shard(client, stream, &shard.id, index as u32, start, progress))
        .buffered(CONCURRENT_SHARDS)
        .try_collect()
        .await?;
    Ok(StreamRead {
        shard_ids: shards.into_iter().map(|s| s.id).collect(),
        records: per_shard.concat(),
    })
}

/// Every shard ListShards still knows, open and closed, with its parents.
async fn list_shards(client: &Client, stream: &str) -> Result<Vec<ShardInfo>, VerifyError> {
    Ok(list_all_shards(client, stream)
        .await?
        .iter()
        .map(|s| ShardInfo {
            id: s.shard_id().to_owned(),
            parents: [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .map(str::to_owned)
                .collect(),
        })
        .collect())
}

/// `shards` with every shard after its parents. Parents already trimmed from the stream are
/// not listed and impose nothing.
fn parents_first(mut shards: Vec<ShardInfo>) -> Vec<ShardInfo> {
    let mut ordered: Vec<ShardInfo> = Vec::with_capacity(shards.len());
    while !shards.is_empty() {
        let listed = |id: &String| ordered.iter().any(|s| &s.id == id);
        let pending = |id: &String| shards.iter().any(|s| &s.id == id);
        let ready = shards
            .iter()
            .position(|s| s.parents.iter().all(|p| listed(p) || !pending(p)))
            // A cycle cannot come from Kinesis; take the rest as listed rather than loop.
            .unwrap_or(0);
        ordered.push(shards.remove(ready));
    }
    ordered
}

async fn read_shard(
    client: &Client,
    stream: &str,
    shard_id: &str,
    shard: u32,
    start: Option<SystemTime>,
    progress: &ProgressBar,
) -> Result<Vec<KinesisEntry>, VerifyError> {
    let request = client
        .get_shard_iterator()
        .stream(stream)
        .shard_id(shard_id);
    let request = match start {
        Some(at) => request
            .shard_iterator_type(ShardIteratorType::AtTimestamp)
            .timestamp(DateTime::from(at)),
        None => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
    };
    let mut iterator = request
        .send()
        .await
        .map_err(|e| StreamError::api(stream, "GetShardIterator", e))?
        .shard_iterator()
        .map(str::to_owned);
    let mut records = Vec::new();
    while let Some(current) = iterator.take() {
        let page = match client
            .get_records()
            .shard_iterator(&current)
            .limit(RECORDS_PER_CALL)
            .send()
            .await
        {
            Ok(page) => page,
            Err(e) => {
                let error = StreamError::api(stream, "GetRecords", e);
                if error.code() == Some("ProvisionedThroughputExceededException") {
                    tokio::time::sleep(THROTTLE_BACKOFF).await;
                    iterator = Some(current);
                    continue;
                }
                return Err(error.into());
            }
        };
        for record in page.records() {
            let text = record.sequence_number();
            let sequence =
                SequenceNumber::parse(text).ok_or_else(|| VerifyError::SequenceNumber {
                    shard: shard_id.to_owned(),
                    value: text.to_owned(),
                })?;
            records.push(KinesisEntry {
                key_hash: key_hash(record.partition_key().unwrap_or_default()),
                digest: digest(record.data().as_ref()),
                shard,
                sequence,
            });
        }
        progress.inc(page.records().len() as u64);
        // An open shard ends at its tip; a closed one where it hands no further iterator.
        let at_tip = page.records().is_empty() && page.millis_behind_latest().unwrap_or(0) == 0;
        if !at_tip {
            iterator = page.next_shard_iterator().map(str::to_owned);
        }
    }
    Ok(records)
}

/// The partition key of the record at `sequence` in `shard_id`, to name it in the report.
pub async fn partition_key_at(
    client: &Client,
    stream: &str,
    shard_id: &str,
    sequence: SequenceNumber,
) -> Result<Option<String>, VerifyError> {
    let iterator = client
        .get_shard_iterator()
        .stream(stream)
        .shard_id(shard_id)
        .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
        .starting_sequence_number(sequence.to_string())
        .send()
        .await
        .map_err(|e| StreamError::api(stream, "GetShardIterator", e))?;
    let Some(iterator) = iterator.shard_iterator() else {
        return Ok(None);
    };
    let page = client
        .get_records()
        .shard_iterator(iterator)
        .limit(1)
        .send()
        .await
        .map_err(|e| StreamError::api(stream, "GetRecords", e))?;
    Ok(page
        .records()
        .first()
        .and_then(|r| r.partition_key())
        .map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_keep_their_text_and_order() {
        let long = "49590338271490256608559692538361571095921575989136588898";
        for text in [long, "0", "12345678901234567890123456789012345678"] {
            assert_eq!(SequenceNumber::parse(text).unwrap().to_string(), text);
        }
        let a = SequenceNumber::parse("49590338271490256608559692538361571095921575989136588898");
        let b = SequenceNumber::parse("49590338271490256608559692540361571095921575989136588898");
        assert!(a < b);
        assert!(SequenceNumber::parse("99").unwrap() < a.unwrap());
        assert!(SequenceNumber::parse("12a").is_none());
        assert!(SequenceNumber::parse("").is_none());
    }

    #[test]
    fn children_come_after_their_parents() {
        let shard = |id: &str, parents: &[&str]| ShardInfo {
            id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
        };
        let ordered = parents_first(vec![
            shard("merged", &["left", "right"]),
            shard("left", &["root"]),
            shard("right", &["root"]),
            shard("root", &["trimmed"]),
        ]);
        let ids: Vec<&str> = ordered.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["root", "left", "right", "merged"]);
    }
}
