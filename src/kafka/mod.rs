//! The Kafka wire protocol: frames, request headers, version negotiation, response rewriting
//! and the Produce decoding that the mirror needs.

pub mod frame;
pub mod header;
pub mod message;
pub mod produce;
pub mod produce_answer;
pub mod produce_split;
pub mod records;
pub mod rewrite;
pub mod standalone_answers;
pub mod transaction;
pub mod versions;
