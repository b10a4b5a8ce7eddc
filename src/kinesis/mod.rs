//! The Kinesis writer: shard routing, PutRecords batching, sending and retries.

pub mod shard_map;
