//! Kinesis-only routes: the proxy answers Produce requests itself, with Kinesis as the only
//! system of record. [`state`] gives out the partitions' synthetic offsets and judges
//! idempotent producers' batches as a broker would; [`producer_ids`] hands out producer ids
//! when there is no Kafka to ask.

mod journal;
mod ledger;
pub(crate) mod producer_ids;
pub(crate) mod state;
