//! Why a connection ended on error.

use super::client_frames::ClientFrameError;
use crate::kafka::frame::FrameError;
use crate::kafka::header::HeaderError;
use crate::kafka::produce::ProduceDecodeError;
use crate::kafka::rewrite::RewriteError;
use crate::mirror::KinesisOnlyError;
use crate::proxy::sasl::SaslError;

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("client frame: {0}")]
    ClientFrame(ClientFrameError),
    #[error("upstream frame: {0}")]
    UpstreamFrame(FrameError),
    #[error("request header: {0}")]
    Header(#[from] HeaderError),
    #[error(transparent)]
    Sasl(#[from] SaslError),
    #[error("{api} v{version} request: {source}")]
    Request {
        api: String,
        version: i16,
        source: ProduceDecodeError,
    },
    #[error("{api} v{version} response: {source}")]
    Response {
        api: String,
        version: i16,
        source: RewriteError,
    },
    #[error("upstream answered correlation id {got}, expected {expected} ({api} v{version})")]
    CorrelationMismatch {
        expected: i32,
        got: i32,
        api: String,
        version: i16,
    },
    #[error("Produce for kinesis-only topics: {0}")]
    KinesisOnly(#[from] KinesisOnlyError),
    #[error("upstream sent a response nobody asked for")]
    Unsolicited,
    #[error("write to client: {0}")]
    ClientWrite(std::io::Error),
    #[error("write to upstream: {0}")]
    UpstreamWrite(std::io::Error),
}
