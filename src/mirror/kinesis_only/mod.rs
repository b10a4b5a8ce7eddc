//! Kinesis-only routes: the proxy answers Produce requests itself, with Kinesis as the only
//! system of record. [`state`] gives out the partitions' synthetic offsets and judges
//! idempotent producers' batches as a broker would; [`producer_ids`] hands out producer ids
//! when there is no Kafka to ask; [`local`] answers the kinesis-only part of a Produce
//! request: it places the batches in [`state`], hands them to the mirror as an exchange
//! carrying its own answer, and answers once Kinesis has them.

mod journal;
mod ledger;
mod local;
#[cfg(test)]
mod local_tests;
// The standalone proxy's InitProducerId.
pub(crate) mod producer_ids;
pub(crate) mod state;

pub(super) use local::KinesisOnly;
pub use local::{KinesisOnlyError, LocalAnswer, LogEndOffsets, DIR};
