//! Record extraction and sampling: turns Produce exchanges that Kafka accepted into Kinesis
//! records.

pub mod partition_key;
pub mod sampling;
