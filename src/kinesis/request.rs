//! PutRecords request building: the records the mirror hands to a writer, Kinesis' request
//! limits, and request entries.

use std::sync::Arc;
use std::time::Instant;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use bytes::Bytes;

use crate::mirror::partition_key::KinesisKey;

/// PutRecords limits.
pub const MAX_BATCH_ENTRIES: usize = 500;
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;

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
