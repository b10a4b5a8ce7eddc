//! Produce requests that name topics the proxy answers itself (kinesis-only routes): the
//! request split into the part Kafka gets and the part answered locally, the local answers
//! encoded as a Produce response, and the two responses merged in the order of the request.
//!
//! A request that does not mix is never re-encoded: the record batches stay the slices of the
//! client's frame. A mixed one is, and kafka-protocol copies each batch once into the new body.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData as WirePartition, TopicProduceData as WireTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ProduceRequest, ProduceResponse, ResponseHeader, ResponseKind, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::message::{MessageError, Response};
use super::produce::ProduceRequestView;
use super::produce_answer::error_partition;

/// How a Produce request divides between Kafka and the proxy.
#[derive(Debug)]
pub enum ProduceSplit {
    /// No topic is answered locally: the request goes to Kafka as it is.
    Kafka,
    /// Every topic is answered locally; nothing goes to Kafka.
    Local(ProduceRequestView),
    /// Both: Kafka gets `kafka_body`, the proxy answers `local`, and `order` is the request's
    /// topic order, which the merged response follows.
    Mixed {
        kafka_body: Bytes,
        local: ProduceRequestView,
        order: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("cannot encode the Kafka part of a Produce v{version} request: {reason}")]
pub struct ProduceSplitError {
    version: i16,
    reason: String,
}

/// Splits `request` by topic: `is_local` names the topics the proxy answers.
pub fn split(
    request: ProduceRequestView,
    is_local: impl Fn(&str) -> bool,
) -> Result<ProduceSplit, ProduceSplitError> {
    let local_count = request.topics.iter().filter(|t| is_local(&t.name)).count();
    if local_count == 0 {
        return Ok(ProduceSplit::Kafka);
    }
    if local_count == request.topics.len() {
        return Ok(ProduceSplit::Local(request));
    }
    let order = request.topics.iter().map(|t| t.name.clone()).collect();
    let (local_topics, kafka_topics) = request.topics.into_iter().partition(|t| is_local(&t.name));
    let kafka = ProduceRequestView {
        topics: kafka_topics,
        ..request
    };
    let kafka_body = encode_request_body(&kafka)?;
    Ok(ProduceSplit::Mixed {
        kafka_body,
        local: ProduceRequestView {
            topics: local_topics,
            ..kafka
        },
        order,
    })
}

/// The body (after the header) of `request`, encoded at its version.
pub fn encode_request_body(request: &ProduceRequestView) -> Result<Bytes, ProduceSplitError> {
    let wire = ProduceRequest::default()
        .with_transactional_id(
            request
                .transactional_id
                .as_ref()
                .map(|id| TransactionalId(StrBytes::from_string(id.clone()))),
        )
        .with_acks(request.acks)
        .with_timeout_ms(request.timeout_ms)
        .with_topic_data(
            request
                .topics
                .iter()
                .map(|topic| {
                    WireTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic.name.clone())))
                        .with_partition_data(
                            topic
                                .partitions
                                .iter()
                                .map(|p| {
                                    WirePartition::default()
                                        .with_index(p.partition)
                                        .with_records(p.records.clone())
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    let mut body = BytesMut::new();
    wire.encode(&mut body, request.version)
        .map_err(|e| ProduceSplitError {
            version: request.version,
            reason: e.to_string(),
        })?;
    Ok(body.freeze())
}

/// The proxy's answer to one produced partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionAnswer {
    pub partition: i32,
    /// 0: stored, its first record at `base_offset`.
    pub error_code: i16,
    pub base_offset: i64,
    /// Why it failed (sent from v8 on); `None` on success.
    pub message: Option<String>,
}

/// The answers to one produced topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicAnswers {
    pub topic: String,
    pub partitions: Vec<PartitionAnswer>,
}

/// A whole Produce response frame carrying `topics`, answering request `correlation_id`.
pub fn local_response(
    version: i16,
    correlation_id: i32,
    topics: &[TopicAnswers],
) -> Result<Bytes, MessageError> {
    let topics = topics
        .iter()
        .map(|topic| {
            TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_string(topic.topic.clone())))
                .with_partition_responses(topic.partitions.iter().map(partition_response).collect())
        })
        .collect();
    Response {
        header: ResponseHeader::default().with_correlation_id(correlation_id),
        body: ResponseKind::Produce(ProduceResponse::default().with_responses(topics)),
    }
    .encode(ApiKey::Produce, version)
}

fn partition_response(answer: &PartitionAnswer) -> PartitionProduceResponse {
    if answer.error_code != 0 {
        let message = answer.message.as_deref().unwrap_or_default();
        return error_partition(answer.partition, answer.error_code, message);
    }
    // The proxy keeps no log start: -1, as Kafka answers when it does not know it.
    PartitionProduceResponse::default()
        .with_index(answer.partition)
        .with_base_offset(answer.base_offset)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
}

/// Kafka's response to the Kafka part and the proxy's to the local part of a mixed request,
/// as one response with its topics in `order` (Kafka's header and throttle time).
pub fn merge(
    kafka_frame: &Bytes,
    local_frame: &Bytes,
    version: i16,
    order: &[String],
) -> Result<Bytes, MessageError> {
    let mut kafka = Response::decode(kafka_frame, ApiKey::Produce, version)?;
    let local = Response::decode(local_frame, ApiKey::Produce, version)?;
    let (ResponseKind::Produce(kafka_body), ResponseKind::Produce(local_body)) =
        (&mut kafka.body, local.body)
    else {
        unreachable!("decoded as Produce")
    };
    let mut unplaced: Vec<TopicProduceResponse> = std::mem::take(&mut kafka_body.responses);
    unplaced.extend(local_body.responses);
    let mut merged = Vec::with_capacity(unplaced.len());
    for name in order {
        if let Some(at) = unplaced.iter().position(|t| *t.name.0 == **name) {
            merged.push(unplaced.remove(at));
        }
    }
    // Anything the request did not name (no broker sends that) is kept rather than lost.
    merged.extend(unplaced);
    kafka_body.responses = merged;
    kafka.encode(ApiKey::Produce, version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::produce::{
        PartitionProduceData, ProduceResponseView, TopicProduceData, MAX_VERSION,
    };

    /// Produce versions a split must handle: those the proxy lets clients use (names, not ids).
    const VERSIONS: std::ops::RangeInclusive<i16> = 3..=12;

    fn request(version: i16, topics: &[&str]) -> ProduceRequestView {
        ProduceRequestView {
            version,
            transactional_id: None,
            acks: -1,
            timeout_ms: 30_000,
            topics: topics
                .iter()
                .enumerate()
                .map(|(i, name)| TopicProduceData {
                    name: (*name).to_owned(),
                    topic_id: None,
                    partitions: vec![PartitionProduceData {
                        partition: i as i32,
                        records: Some(Bytes::from(format!("batch of {name}"))),
                    }],
                })
                .collect(),
        }
    }

    fn body(frame: &Bytes, version: i16) -> ProduceResponseView {
        let offset =
            crate::kafka::header::response_body_offset(frame, ApiKey::Produce, version).unwrap();
        ProduceResponseView::decode(version, frame.slice(offset..)).unwrap()
    }

    fn answers(topic: &str, partition: i32, base_offset: i64) -> TopicAnswers {
        TopicAnswers {
            topic: topic.to_owned(),
            partitions: vec![PartitionAnswer {
                partition,
                error_code: 0,
                base_offset,
                message: None,
            }],
        }
    }

    #[test]
    fn a_request_splits_only_when_it_mixes() {
        assert!(VERSIONS.end() <= &MAX_VERSION);
        let is_local = |t: &str| t.starts_with("ko-");
        for version in VERSIONS {
            let all_kafka = split(request(version, &["a", "b"]), is_local).unwrap();
            assert!(matches!(all_kafka, ProduceSplit::Kafka), "v{version}");
            let all_local = request(version, &["ko-a", "ko-b"]);
            match split(all_local.clone(), is_local).unwrap() {
                ProduceSplit::Local(local) => assert_eq!(local, all_local, "untouched"),
                other => panic!("v{version}: {other:?}"),
            }
            let mixed = request(version, &["a", "ko-x", "b", "ko-y"]);
            let ProduceSplit::Mixed {
                kafka_body,
                local,
                order,
            } = split(mixed.clone(), is_local).unwrap()
            else {
                panic!("v{version}: not split")
            };
            assert_eq!(order, ["a", "ko-x", "b", "ko-y"]);
            let kafka = ProduceRequestView::decode(version, kafka_body).unwrap();
            let names = |r: &ProduceRequestView| -> Vec<String> {
                r.topics.iter().map(|t| t.name.clone()).collect()
            };
            assert_eq!(names(&kafka), ["a", "b"], "v{version}");
            assert_eq!(names(&local), ["ko-x", "ko-y"]);
            assert_eq!(kafka.topics[1], mixed.topics[2], "records carried over");
            assert_eq!((kafka.acks, kafka.timeout_ms), (-1, 30_000));
        }
    }

    #[test]
    fn the_transactional_id_survives_re_encoding() {
        let mut mixed = request(11, &["a", "ko-x"]);
        mixed.transactional_id = Some("tx-1".into());
        let ProduceSplit::Mixed { kafka_body, .. } = split(mixed, |t| t == "ko-x").unwrap() else {
            panic!("not split")
        };
        let kafka = ProduceRequestView::decode(11, kafka_body).unwrap();
        assert_eq!(kafka.transactional_id.as_deref(), Some("tx-1"));
    }

    #[test]
    fn merged_answers_follow_the_request_order_in_every_version() {
        for version in VERSIONS {
            let kafka =
                local_response(version, 41, &[answers("b", 2, 500), answers("a", 0, 7)]).unwrap();
            let mut refused = answers("ko-y", 3, -1);
            refused.partitions[0].error_code = 45;
            refused.partitions[0].message = Some("out of order".into());
            let local = local_response(version, 41, &[answers("ko-x", 1, 90), refused]).unwrap();
            let order: Vec<String> = ["a", "ko-x", "b", "ko-y"].map(String::from).to_vec();
            let merged = merge(&kafka, &local, version, &order).unwrap();
            let decoded = Response::decode(&merged, ApiKey::Produce, version).unwrap();
            assert_eq!(decoded.header.correlation_id, 41);
            let view = body(&merged, version);
            let names: Vec<&str> = view.topics.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names, ["a", "ko-x", "b", "ko-y"], "v{version}");
            assert_eq!(view.partition("a", 0).unwrap().base_offset, 7);
            assert_eq!(view.partition("ko-x", 1).unwrap().base_offset, 90);
            assert_eq!(view.partition("b", 2).unwrap().base_offset, 500);
            let y = view.partition("ko-y", 3).unwrap();
            assert_eq!((y.error_code, y.base_offset), (45, -1));
            let message = (version >= 8).then(|| "out of order".to_owned());
            assert_eq!(y.error_message, message, "v{version}");
        }
    }
}
