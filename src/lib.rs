//! kafka-kinesis-proxy: a Kafka wire-protocol proxy that forwards every request to the real
//! cluster and mirrors a configurable share of produced records into Amazon Kinesis.
//!
//! The modules follow the data path: `kafka` (wire protocol), `proxy` (listeners, connections,
//! address rewriting), `mirror` (record extraction and sampling), `kinesis` (shard routing and
//! the PutRecords writer), `ops` (config, metrics, admin HTTP, logs).

pub mod kafka;
pub mod kinesis;
pub mod mirror;
pub mod ops;
pub mod proxy;
