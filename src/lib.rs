//! kafka-kinesis-proxy: a Kafka wire-protocol proxy that forwards every request to the real
//! cluster and mirrors a configurable share of produced records into Amazon Kinesis.
//!
//! The modules follow the data path: `kafka` (wire protocol) → `proxy` (listeners, connections,
//! address rewriting, TLS, SASL) → `mirror` (record extraction and sampling) → `kinesis` (shard
//! routing and the PutRecords writer). `config` and `telemetry` are the floor every stage may
//! use; `admin` (admin HTTP, reload, status) is the roof that reads them all. `verify` reads
//! Kafka and Kinesis back and judges the mirror by its own sampling and keying.

pub mod admin;
pub mod config;
pub mod kafka;
pub mod kinesis;
pub mod mirror;
pub mod proxy;
pub mod telemetry;
pub mod verify;
