//! The Kinesis writer: stream inspection, shard routing, per-shard lanes with rate limits,
//! PutRecords requests, retries, the memory budget, the spool and the dead-letter file.

pub mod budget;
pub mod client;
pub mod dead_letter;
pub mod delivery;
pub mod health;
pub mod lanes;
pub mod rate;
pub mod read_back;
pub mod recent;
mod refusal;
pub mod replay;
pub mod request;
pub mod retry;
pub mod segment_log;
pub mod service;
pub mod settle;
pub mod shard_map;
pub mod spill;
pub mod spool;
#[cfg(test)]
pub(crate) mod test_support;
mod undeliverable;
pub mod writer;
