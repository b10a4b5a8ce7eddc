//! Produce responses the proxy writes itself: Kafka's answer with some partitions turned into
//! errors, and a refusal of a whole request that never went to Kafka.

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceResponse, ResponseHeader, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::message::{MessageError, Response};
use super::produce::ProduceRequestView;

/// Kafka's UNKNOWN_TOPIC_OR_PARTITION: retriable.
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// Kafka's REQUEST_TIMED_OUT: retriable.
pub const REQUEST_TIMED_OUT: i16 = 7;
/// Kafka's INVALID_REQUEST: not retriable.
pub const INVALID_REQUEST: i16 = 42;
/// Kafka's KAFKA_STORAGE_ERROR: retriable.
pub const KAFKA_STORAGE_ERROR: i16 = 56;
/// Kafka's INVALID_RECORD: not retriable.
pub const INVALID_RECORD: i16 = 87;

/// An error the proxy gives one produced partition instead of Kafka's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionErrorAnswer {
    pub topic: String,
    pub partition: i32,
    pub error_code: i16,
    /// Sent from v8 on, where responses carry a message.
    pub message: String,
}

pub(super) fn error_partition(index: i32, code: i16, message: &str) -> PartitionProduceResponse {
    // As Kafka answers a failed partition: no offsets.
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
        .with_error_message(Some(StrBytes::from_string(message.to_owned())))
}

/// `frame`, Kafka's Produce response, with each partition of `errors` answered by its error
/// instead. Partitions not named keep Kafka's answer.
pub fn with_partition_errors(
    frame: &Bytes,
    version: i16,
    errors: &[PartitionErrorAnswer],
) -> Result<Bytes, MessageError> {
    let mut response = Response::decode(frame, ApiKey::Produce, version)?;
    if let ResponseKind::Produce(body) = &mut response.body {
        for topic in &mut body.responses {
            for partition in &mut topic.partition_responses {
                let named = errors
                    .iter()
                    .find(|e| *e.topic == *topic.name.0 && e.partition == partition.index);
                if let Some(error) = named {
                    *partition = error_partition(partition.index, error.error_code, &error.message);
                }
            }
        }
    }
    response.encode(ApiKey::Produce, version)
}

/// The answer to a Produce request the proxy refuses without forwarding it: every partition
/// gets `error_code`, with the message `message_for(topic)`.
pub fn refusal(
    correlation_id: i32,
    request: &ProduceRequestView,
    error_code: i16,
    message_for: impl Fn(&str) -> String,
) -> Result<Bytes, MessageError> {
    let topics = request
        .topics
        .iter()
        .map(|topic| {
            let message = message_for(&topic.name);
            TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_string(topic.name.clone())))
                .with_partition_responses(
                    topic
                        .partitions
                        .iter()
                        .map(|p| error_partition(p.partition, error_code, &message))
                        .collect(),
                )
        })
        .collect();
    Response {
        header: ResponseHeader::default().with_correlation_id(correlation_id),
        body: ResponseKind::Produce(ProduceResponse::default().with_responses(topics)),
    }
    .encode(ApiKey::Produce, request.version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::produce::{PartitionProduceData, ProduceResponseView, TopicProduceData};
    use kafka_protocol::protocol::Encodable;

    fn kafka_answer(version: i16) -> Bytes {
        let partition = |index, base_offset| {
            PartitionProduceResponse::default()
                .with_index(index)
                .with_base_offset(base_offset)
        };
        let body = ProduceResponse::default().with_responses(vec![
            TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_partition_responses(vec![partition(0, 100), partition(1, 200)]),
            TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("other")))
                .with_partition_responses(vec![partition(0, 300)]),
        ]);
        let mut buf = bytes::BytesMut::new();
        buf.extend_from_slice(&[0; 4]);
        ResponseHeader::default()
            .with_correlation_id(9)
            .encode(&mut buf, ApiKey::Produce.response_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        super::super::frame::seal(buf)
    }

    fn body(frame: &Bytes, version: i16) -> ProduceResponseView {
        let offset =
            crate::kafka::header::response_body_offset(frame, ApiKey::Produce, version).unwrap();
        ProduceResponseView::decode(version, frame.slice(offset..)).unwrap()
    }

    #[test]
    fn only_the_named_partitions_change_in_every_version() {
        for version in [3, 7, 8, 9, 11] {
            let frame = kafka_answer(version);
            let errors = [PartitionErrorAnswer {
                topic: "orders".into(),
                partition: 1,
                error_code: REQUEST_TIMED_OUT,
                message: "Kinesis did not confirm".into(),
            }];
            let out = body(
                &with_partition_errors(&frame, version, &errors).unwrap(),
                version,
            );
            let orders1 = out.partition("orders", 1).unwrap();
            assert_eq!((orders1.error_code, orders1.base_offset), (7, -1));
            let expected_message = (version >= 8).then(|| "Kinesis did not confirm".to_owned());
            assert_eq!(orders1.error_message, expected_message, "v{version}");
            assert_eq!(out.partition("orders", 0).unwrap().base_offset, 100);
            assert_eq!(out.partition("orders", 0).unwrap().error_code, 0);
            assert_eq!(out.partition("other", 0).unwrap().base_offset, 300);
        }
    }

    #[test]
    fn a_refusal_answers_every_partition_with_its_topics_message() {
        let request = ProduceRequestView {
            version: 9,
            transactional_id: Some("tx".into()),
            acks: -1,
            timeout_ms: 1000,
            topics: vec![TopicProduceData {
                name: "orders".into(),
                topic_id: None,
                partitions: vec![
                    PartitionProduceData {
                        partition: 0,
                        records: None,
                    },
                    PartitionProduceData {
                        partition: 2,
                        records: None,
                    },
                ],
            }],
        };
        let frame = refusal(5, &request, INVALID_REQUEST, |t| format!("{t} refused")).unwrap();
        let decoded = Response::decode(&frame, ApiKey::Produce, 9).unwrap();
        assert_eq!(decoded.header.correlation_id, 5);
        let out = body(&frame, 9);
        for p in [0, 2] {
            let answer = out.partition("orders", p).unwrap();
            assert_eq!(answer.error_code, INVALID_REQUEST);
            assert_eq!(answer.error_message.as_deref(), Some("orders refused"));
        }
    }
}
