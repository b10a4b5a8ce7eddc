//! The Kinesis writer: stream inspection, shard routing, PutRecords batching, sending and
//! retries.

pub mod client;
pub mod request;
pub mod retry;
pub mod shard_map;
pub mod writer;
