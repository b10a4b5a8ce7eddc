//! PutRecords request building: the records the mirror hands to a writer, Kinesis' request
//! limits, and request entries.

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use bytes::Bytes;

/// Where a record goes in Kinesis: its partition key, and the explicit hash key that overrides
/// the key's MD5 for routing when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisKey {
    pub partition_key: String,
    pub explicit_hash_key: Option<u128>,
}

impl KinesisKey {
    /// The 128-bit value Kinesis routes this record by.
    pub fn routing_hash(&self) -> u128 {
        self.explicit_hash_key
            .unwrap_or_else(|| super::shard_map::hash_key(&self.partition_key))
    }
}

/// PutRecords limits: 500 entries and 10 MiB (a record alone may take up to 10 MiB, if the
/// stream's MaxRecordSizeInKiB says so).
pub const MAX_BATCH_ENTRIES: usize = 500;
pub const MAX_BATCH_BYTES: usize = 10 * 1024 * 1024;

/// Kinesis' limit on a partition key's length, counted by [`partition_key_length`].
pub const MAX_PARTITION_KEY_LENGTH: usize = 256;

/// A partition key's length as Kinesis and the KPL count it: UTF-16 code units (Java's
/// `String.length()`), so a character outside the Basic Multilingual Plane counts twice and
/// 129 such characters are already too many.
pub fn partition_key_length(key: &str) -> usize {
    key.encode_utf16().count()
}

/// Memory a queued record takes besides its data and key: the lane entry (about 180 bytes,
/// doubled while a lane's queue grows) and the allocator's headers. Measured, rounded up.
const RECORD_OVERHEAD_BYTES: usize = 320;

/// A record on its way to Kinesis, with where it came from in Kafka.
#[derive(Debug, Clone)]
pub struct MirrorRecord {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// Whether `offset` is Kafka's. An acks=0 record has no offset: `offset` is then its
    /// position in its request, which says nothing about whether it was mirrored before.
    pub offset_from_kafka: bool,
    pub key: KinesisKey,
    pub data: Bytes,
    /// When Kafka acknowledged it (or, for acks=0, when it was sent), for the lag metric.
    pub acked_at: Instant,
    /// Its part in its partition's delivery, when its route is `kinesis-primary` and a
    /// producer waits for it.
    pub delivery: Option<super::delivery::DeliveryToken>,
    /// Its handle in the log that keeps it until the writer is done with it.
    pub logged: Option<std::sync::Arc<dyn super::settle::Settle>>,
}

impl MirrorRecord {
    /// What Kinesis counts against its per-record and per-request limits.
    pub fn kinesis_bytes(&self) -> usize {
        self.data.len() + self.key.partition_key.len()
    }

    /// What it costs the memory budget: its bytes, plus what holding it costs besides (its
    /// place in a lane and its allocations), so that the budget bounds the process's memory
    /// and not just the payload's.
    pub fn memory_bytes(&self) -> usize {
        self.kinesis_bytes() + RECORD_OVERHEAD_BYTES
    }

    /// The writer is done with it for good (see [`super::settle`]).
    pub fn settled(&self) {
        if let Some(logged) = &self.logged {
            logged.settled();
        }
    }

    /// See [`super::settle::Settle::maybe_stored_since`].
    pub fn maybe_stored_since(&self) -> Option<std::time::SystemTime> {
        self.logged.as_ref()?.maybe_stored_since()
    }
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

    #[test]
    fn partition_key_length_counts_utf16_code_units() {
        assert_eq!(partition_key_length("customer-1"), 10);
        assert_eq!(
            partition_key_length(&"é".repeat(256)),
            256,
            "BMP: one unit each"
        );
        let emoji = "😀".repeat(129);
        assert_eq!(emoji.chars().count(), 129);
        assert_eq!(partition_key_length(&emoji), 258);
        assert!(partition_key_length(&emoji) > MAX_PARTITION_KEY_LENGTH);
    }
}
