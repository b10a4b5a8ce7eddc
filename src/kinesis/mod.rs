//! The Kinesis writer: stream inspection, shard routing, per-shard lanes with rate limits,
//! PutRecords requests, retries, the memory budget, the spool and the dead-letter file.

pub mod budget;
pub mod client;
pub mod dead_letter;
pub mod lanes;
pub mod rate;
pub mod recent;
pub mod replay;
pub mod request;
pub mod retry;
pub mod shard_map;
pub mod spool;
pub mod writer;
