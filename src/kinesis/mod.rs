//! The Kinesis writer: stream inspection, shard routing, PutRecords batching, sending and
//! retries.

pub mod client;
pub mod dead_letter;
pub mod request;
pub mod retry;
pub mod shard_map;
pub mod spool;
pub mod writer;
