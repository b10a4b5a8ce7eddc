//! Transaction control for the mirror: which producer's transaction an EndTxn ended, what
//! transaction timeout an InitProducerId asked for, and which outcome a control batch (a
//! COMMIT or ABORT marker in a partition's log) records. Rare and small, so the
//! kafka-protocol types decode the exchanges whole.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, EndTxnRequest, EndTxnResponse, InitProducerIdRequest, InitProducerIdResponse,
};
use kafka_protocol::protocol::Decodable;

use super::header::{response_body_offset, HeaderError};
use super::records::{Batch, ProducerEpoch};

/// A transaction the coordinator ended, as an EndTxn exchange tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndedTransaction {
    /// The producer and the epoch its batches carried (the request's; with transactions v2
    /// the response names the next, bumped epoch).
    pub producer: ProducerEpoch,
    pub committed: bool,
}

/// A transactional producer the coordinator (re)initialized, and its transaction timeout:
/// past it, the coordinator aborts a transaction on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitializedProducer {
    pub producer_id: i64,
    pub transaction_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TxnControlError {
    #[error("{api:?} v{version} request: {reason}")]
    Request {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("{api:?} v{version} response header: {source}")]
    ResponseHeader {
        api: ApiKey,
        version: i16,
        source: HeaderError,
    },
    #[error("{api:?} v{version} response: {reason}")]
    Response {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

/// Decodes a request body and its response frame.
fn decode_exchange<Req: Decodable, Resp: Decodable>(
    api: ApiKey,
    version: i16,
    request_body: &Bytes,
    response_frame: &Bytes,
) -> Result<(Req, Resp), TxnControlError> {
    let request =
        Req::decode(&mut request_body.clone(), version).map_err(|e| TxnControlError::Request {
            api,
            version,
            reason: e.to_string(),
        })?;
    let offset = response_body_offset(response_frame, api, version).map_err(|source| {
        TxnControlError::ResponseHeader {
            api,
            version,
            source,
        }
    })?;
    let response = Resp::decode(&mut response_frame.slice(offset..), version).map_err(|e| {
        TxnControlError::Response {
            api,
            version,
            reason: e.to_string(),
        }
    })?;
    Ok((request, response))
}

/// The transaction an EndTxn request ended, or `None` when the coordinator answered with an
/// error: then nothing ended (the client retries, or the coordinator decides on its own).
pub fn ended_transaction(
    version: i16,
    request_body: &Bytes,
    response_frame: &Bytes,
) -> Result<Option<EndedTransaction>, TxnControlError> {
    let (request, response): (EndTxnRequest, EndTxnResponse) =
        decode_exchange(ApiKey::EndTxn, version, request_body, response_frame)?;
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

/// The transactional producer an InitProducerId exchange initialized; `None` for an
/// idempotent-only producer or an error answer.
pub fn initialized_producer(
    version: i16,
    request_body: &Bytes,
    response_frame: &Bytes,
) -> Result<Option<InitializedProducer>, TxnControlError> {
    let (request, response): (InitProducerIdRequest, InitProducerIdResponse) = decode_exchange(
        ApiKey::InitProducerId,
        version,
        request_body,
        response_frame,
    )?;
    if response.error_code != 0 || request.transactional_id.is_none() {
        return Ok(None);
    }
    Ok(Some(InitializedProducer {
        producer_id: response.producer_id.0,
        transaction_timeout: Duration::from_millis(request.transaction_timeout_ms.max(0) as u64),
    }))
}

/// The outcome a control batch records for its producer's transaction: `Some(true)` for a
/// COMMIT marker, `Some(false)` for ABORT, `None` for anything else.
pub fn marker_outcome(batch: &Batch) -> Option<bool> {
    if !batch.is_control {
        return None;
    }
    // A control record's key is a version (i16) then a type: 0 ABORT, 1 COMMIT.
    let key = batch.records.first()?.key.as_deref()?;
    match key.get(2..4)? {
        [0, 0] => Some(false),
        [0, 1] => Some(true),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::{ProducerId, ResponseHeader, TransactionalId};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    /// A request body and a response frame (size prefix and header included).
    pub(crate) fn encode(
        api: ApiKey,
        version: i16,
        request: impl Encodable,
        response: impl Encodable,
    ) -> (Bytes, Bytes) {
        let mut body = BytesMut::new();
        request.encode(&mut body, version).unwrap();
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[0; 4]);
        ResponseHeader::default()
            .with_correlation_id(7)
            .encode(&mut frame, api.response_header_version(version))
            .unwrap();
        response.encode(&mut frame, version).unwrap();
        (body.freeze(), frame.freeze())
    }

    fn exchange(version: i16, committed: bool, error_code: i16) -> (Bytes, Bytes) {
        let request = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_static_str("t")))
            .with_producer_id(ProducerId(42))
            .with_producer_epoch(3)
            .with_committed(committed);
        let response = EndTxnResponse::default()
            .with_error_code(error_code)
            .with_producer_id(ProducerId(42))
            .with_producer_epoch(4);
        encode(ApiKey::EndTxn, version, request, response)
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
    fn reads_a_transactional_producers_timeout() {
        for version in 0..=5 {
            let request = InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("t"))))
                .with_transaction_timeout_ms(5_000);
            let response = InitProducerIdResponse::default()
                .with_producer_id(ProducerId(42))
                .with_producer_epoch(0);
            let (request, response) = encode(ApiKey::InitProducerId, version, request, response);
            let init = initialized_producer(version, &request, &response).unwrap();
            assert_eq!(
                init,
                Some(InitializedProducer {
                    producer_id: 42,
                    transaction_timeout: Duration::from_secs(5)
                }),
                "v{version}"
            );
        }
    }

    /// A control batch as Kafka writes one: key = version 0, then the marker type.
    fn marker(control: bool, kind: u8) -> Batch {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let record = Record {
            transactional: true,
            control,
            partition_leader_epoch: 0,
            producer_id: 9,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: 40,
            sequence: -1,
            timestamp: 0,
            key: Some(Bytes::from(vec![0, 0, 0, kind])),
            value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0])),
            headers: Default::default(),
            delete_horizon: false,
        };
        let mut data = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut data, [&record], &options).unwrap();
        crate::kafka::records::decode_batches(data.freeze())
            .unwrap()
            .remove(0)
    }

    #[test]
    fn reads_commit_and_abort_markers() {
        assert_eq!(marker_outcome(&marker(true, 1)), Some(true));
        assert_eq!(marker_outcome(&marker(true, 0)), Some(false));
        assert_eq!(
            marker_outcome(&marker(false, 1)),
            None,
            "not a control batch"
        );
        assert_eq!(
            marker_outcome(&marker(true, 7)),
            None,
            "not a transaction marker"
        );
    }

    #[test]
    fn an_error_ends_nothing() {
        let (request, response) = exchange(5, true, 51);
        assert_eq!(ended_transaction(5, &request, &response).unwrap(), None);
    }
}
