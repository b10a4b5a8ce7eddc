//! EndTxn exchanges, read for the mirror: which producer's transaction ended, and whether it
//! was committed. Rare and small, so the kafka-protocol types decode them whole.

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, EndTxnRequest, EndTxnResponse};
use kafka_protocol::protocol::Decodable;

use super::header::{response_body_offset, HeaderError};
use super::records::ProducerEpoch;

/// A transaction the coordinator ended, as an EndTxn exchange tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndedTransaction {
    /// The producer and the epoch its batches carried (the request's; with transactions v2
    /// the response names the next, bumped epoch).
    pub producer: ProducerEpoch,
    pub committed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum EndTxnError {
    #[error("EndTxn v{version} request: {reason}")]
    Request { version: i16, reason: String },
    #[error("EndTxn v{version} response header: {source}")]
    ResponseHeader { version: i16, source: HeaderError },
    #[error("EndTxn v{version} response: {reason}")]
    Response { version: i16, reason: String },
}

/// The transaction an EndTxn request ended, or `None` when the coordinator answered with an
/// error: then nothing ended (the client retries, or the coordinator decides on its own).
pub fn ended_transaction(
    version: i16,
    request_body: &Bytes,
    response_frame: &Bytes,
) -> Result<Option<EndedTransaction>, EndTxnError> {
    let request = EndTxnRequest::decode(&mut request_body.clone(), version).map_err(|e| {
        EndTxnError::Request {
            version,
            reason: e.to_string(),
        }
    })?;
    let offset = response_body_offset(response_frame, ApiKey::EndTxn, version)
        .map_err(|source| EndTxnError::ResponseHeader { version, source })?;
    let response =
        EndTxnResponse::decode(&mut response_frame.slice(offset..), version).map_err(|e| {
            EndTxnError::Response {
                version,
                reason: e.to_string(),
            }
        })?;
    if response.error_code != 0 {
        return Ok(None);
    }
    Ok(Some(EndedTransaction {
        producer: ProducerEpoch {
            producer_id: request.producer_id.0,
            epoch: request.producer_epoch,
        },
        committed: request.committed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::{ProducerId, ResponseHeader, TransactionalId};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn exchange(version: i16, committed: bool, error_code: i16) -> (Bytes, Bytes) {
        let request = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_static_str("t")))
            .with_producer_id(ProducerId(42))
            .with_producer_epoch(3)
            .with_committed(committed);
        let mut body = BytesMut::new();
        request.encode(&mut body, version).unwrap();
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[0; 4]);
        ResponseHeader::default()
            .with_correlation_id(7)
            .encode(&mut frame, ApiKey::EndTxn.response_header_version(version))
            .unwrap();
        EndTxnResponse::default()
            .with_error_code(error_code)
            .with_producer_id(ProducerId(42))
            .with_producer_epoch(4)
            .encode(&mut frame, version)
            .unwrap();
        (body.freeze(), frame.freeze())
    }

    #[test]
    fn reads_the_request_epoch_of_a_successful_end() {
        for version in 0..=5 {
            let (request, response) = exchange(version, version % 2 == 0, 0);
            let ended = ended_transaction(version, &request, &response).unwrap();
            assert_eq!(
                ended,
                Some(EndedTransaction {
                    producer: ProducerEpoch {
                        producer_id: 42,
                        epoch: 3
                    },
                    committed: version % 2 == 0,
                }),
                "v{version}"
            );
        }
    }

    #[test]
    fn an_error_ends_nothing() {
        let (request, response) = exchange(5, true, 51);
        assert_eq!(ended_transaction(5, &request, &response).unwrap(), None);
    }
}
