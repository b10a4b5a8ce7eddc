//! The answers a standalone proxy (no Kafka behind it) gives itself: ApiVersions, Metadata,
//! InitProducerId, and the UNSUPPORTED_VERSION refusal of everything else. Built with
//! kafka-protocol's types; Produce is answered by the mirror.

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, FetchResponse, FindCoordinatorResponse,
    InitProducerIdRequest, InitProducerIdResponse, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, RequestKind, ResponseHeader, ResponseKind, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError;

use super::message::{MessageError, Response};
use super::versions::{decoded_range, unsupported_version_response, UNSUPPORTED_VERSION};

/// The only broker of a standalone proxy.
pub const NODE_ID: i32 = 0;

#[derive(Debug, thiserror::Error)]
pub enum StandaloneAnswerError {
    #[error("cannot decode {api_key:?} v{version} request: {reason}")]
    Request {
        api_key: ApiKey,
        version: i16,
        reason: String,
    },
    #[error(transparent)]
    Response(#[from] MessageError),
}

/// The APIs a standalone proxy serves, with the versions it answers: those kafka-protocol
/// encodes, and Produce as far as the proxy decodes it (v3 is the first with record batches,
/// which idempotent producers need).
fn served_apis() -> [ApiVersion; 4] {
    [
        version_range(ApiKey::Produce),
        version_range(ApiKey::Metadata),
        version_range(ApiKey::ApiVersions),
        version_range(ApiKey::InitProducerId),
    ]
}

/// What ApiVersions offers: the served APIs, and Fetch (from v4) and ListOffsets, which are
/// refused when they come. librdkafka infers the broker's record format and codecs from the
/// Fetch versions it offers (record batches need Fetch v4, zstd Fetch v10): without them it
/// produces legacy message sets and no idempotence. Offering ListOffsets makes its consumers
/// ask, and fail on the answer, instead of waiting.
pub fn offered_apis() -> Vec<ApiVersion> {
    let mut offered = served_apis().to_vec();
    offered.push(version_range(ApiKey::Fetch).with_min_version(4));
    offered.push(version_range(ApiKey::ListOffsets));
    offered
}

fn version_range(api: ApiKey) -> ApiVersion {
    let crate_range = api.valid_versions();
    let (min, max) = decoded_range(api).unwrap_or((crate_range.min, crate_range.max));
    ApiVersion::default()
        .with_api_key(api as i16)
        .with_min_version(min.max(crate_range.min))
        .with_max_version(max)
}

/// Whether the proxy answers `api_key` at `version` in standalone mode (anything else is
/// refused with UNSUPPORTED_VERSION).
pub fn serves(api_key: i16, version: i16) -> bool {
    served_apis()
        .iter()
        .any(|api| api.api_key == api_key && (api.min_version..=api.max_version).contains(&version))
}

/// The ApiVersions answer: the offered APIs; above the highest ApiVersions version, Kafka's
/// v0 UNSUPPORTED_VERSION answer, so the client retries lower.
pub fn api_versions(version: i16, correlation_id: i32) -> Result<Bytes, MessageError> {
    if version > ApiKey::ApiVersions.valid_versions().max {
        return Ok(unsupported_version_response(correlation_id));
    }
    let body = ApiVersionsResponse::default().with_api_keys(offered_apis());
    answer(
        ApiKey::ApiVersions,
        version,
        correlation_id,
        ResponseKind::ApiVersions(body),
    )
}

/// Where clients reach the standalone proxy, and what it calls its cluster.
pub struct Broker<'a> {
    pub host: &'a str,
    pub port: u16,
    pub cluster_id: &'a str,
}

/// A topic the standalone proxy serves: a kinesis-only route.
pub struct ServedTopic<'a> {
    pub name: &'a str,
    pub partitions: i32,
}

/// The Metadata answer: the proxy as the only broker and controller; the requested topics
/// (every served topic when the request asks for all), each partition led by the proxy;
/// a topic not served is UNKNOWN_TOPIC_OR_PARTITION, and never created.
pub fn metadata(
    version: i16,
    correlation_id: i32,
    request_body: &Bytes,
    broker: &Broker<'_>,
    served: &[ServedTopic<'_>],
) -> Result<Bytes, StandaloneAnswerError> {
    let request: MetadataRequest = decode(ApiKey::Metadata, version, request_body)?;
    let known = |name: &str| served.iter().find(|t| t.name == name);
    let topics = match &request.topics {
        // Before v1 an empty list means every topic; from v1 on null does.
        None => served.iter().map(served_topic).collect(),
        Some(all) if all.is_empty() && version == 0 => served.iter().map(served_topic).collect(),
        Some(requested) => requested
            .iter()
            .map(|t| match t.name.as_ref().map(|n| n.as_str()) {
                Some(name) => known(name).map_or_else(
                    || missing_topic(Some(name), ResponseError::UnknownTopicOrPartition.code()),
                    served_topic,
                ),
                // Asked by id: the proxy gives its topics no id, so none is known.
                None => missing_topic(None, ResponseError::UnknownTopicId.code()),
            })
            .collect(),
    };
    let body = MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(NODE_ID))
            .with_host(StrBytes::from_string(broker.host.to_owned()))
            .with_port(i32::from(broker.port))])
        .with_cluster_id(Some(StrBytes::from_string(broker.cluster_id.to_owned())))
        .with_controller_id(BrokerId(NODE_ID))
        .with_topics(topics);
    Ok(answer(
        ApiKey::Metadata,
        version,
        correlation_id,
        ResponseKind::Metadata(body),
    )?)
}

fn served_topic(topic: &ServedTopic<'_>) -> MetadataResponseTopic {
    let partitions = (0..topic.partitions)
        .map(|index| {
            MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_leader_id(BrokerId(NODE_ID))
                .with_leader_epoch(0)
                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                .with_isr_nodes(vec![BrokerId(NODE_ID)])
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(topic.name)))
        .with_partitions(partitions)
}

fn missing_topic(name: Option<&str>, error_code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(name.map(topic_name))
        .with_error_code(error_code)
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// The transactional id of an InitProducerId request, `None` for an idempotent producer.
pub fn init_producer_id_transactional_id(
    version: i16,
    request_body: &Bytes,
) -> Result<Option<String>, StandaloneAnswerError> {
    let request: InitProducerIdRequest = decode(ApiKey::InitProducerId, version, request_body)?;
    Ok(request.transactional_id.map(|id| id.to_string()))
}

/// An InitProducerId answer: the producer id and epoch, or an error code.
pub fn init_producer_id(
    version: i16,
    correlation_id: i32,
    outcome: Result<(i64, i16), i16>,
) -> Result<Bytes, MessageError> {
    let body = match outcome {
        Ok((producer_id, epoch)) => InitProducerIdResponse::default()
            .with_producer_id(producer_id.into())
            .with_producer_epoch(epoch),
        Err(error_code) => InitProducerIdResponse::default()
            .with_producer_id((-1).into())
            .with_producer_epoch(-1)
            .with_error_code(error_code),
    };
    answer(
        ApiKey::InitProducerId,
        version,
        correlation_id,
        ResponseKind::InitProducerId(body),
    )
}

/// UNSUPPORTED_VERSION for a request the standalone proxy does not serve: in the API's own
/// response shape for the consumer APIs clients send first (Fetch, ListOffsets,
/// FindCoordinator), each requested partition or key refused; for any other API, Kafka's
/// v0 ApiVersions error frame, as a broker answers a version it does not know.
pub fn unsupported(api_key: i16, version: i16, correlation_id: i32, request_body: &Bytes) -> Bytes {
    let shaped = ApiKey::try_from(api_key)
        .ok()
        .and_then(|api| unsupported_in_shape(api, version, correlation_id, request_body));
    shaped.unwrap_or_else(|| unsupported_version_response(correlation_id))
}

fn unsupported_in_shape(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    request_body: &Bytes,
) -> Option<Bytes> {
    let valid = api.valid_versions();
    if !(valid.min..=valid.max).contains(&version) {
        return None;
    }
    let request = RequestKind::decode(api, &mut request_body.clone(), version).ok()?;
    let body = match request {
        RequestKind::Fetch(request) => {
            let topics = request
                .topics
                .into_iter()
                .map(|topic| {
                    let partitions = topic
                        .partitions
                        .iter()
                        .map(|p| {
                            PartitionData::default()
                                .with_partition_index(p.partition)
                                .with_error_code(UNSUPPORTED_VERSION)
                        })
                        .collect();
                    FetchableTopicResponse::default()
                        .with_topic(topic.topic)
                        .with_topic_id(topic.topic_id)
                        .with_partitions(partitions)
                })
                .collect();
            // The top-level error code exists from v7 on.
            let error_code = if version >= 7 { UNSUPPORTED_VERSION } else { 0 };
            ResponseKind::Fetch(
                FetchResponse::default()
                    .with_error_code(error_code)
                    .with_responses(topics),
            )
        }
        RequestKind::ListOffsets(request) => {
            let topics = request
                .topics
                .into_iter()
                .map(|topic| {
                    let partitions = topic
                        .partitions
                        .iter()
                        .map(|p| {
                            ListOffsetsPartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(UNSUPPORTED_VERSION)
                        })
                        .collect();
                    ListOffsetsTopicResponse::default()
                        .with_name(topic.name)
                        .with_partitions(partitions)
                })
                .collect();
            ResponseKind::ListOffsets(ListOffsetsResponse::default().with_topics(topics))
        }
        // Up to v3 one key and a top-level answer; from v4 a batch of keys.
        RequestKind::FindCoordinator(_) if version < 4 => ResponseKind::FindCoordinator(
            FindCoordinatorResponse::default()
                .with_error_code(UNSUPPORTED_VERSION)
                .with_node_id(BrokerId(-1)),
        ),
        RequestKind::FindCoordinator(request) => {
            let coordinators = request
                .coordinator_keys
                .into_iter()
                .map(|key| {
                    Coordinator::default()
                        .with_key(key)
                        .with_node_id(BrokerId(-1))
                        .with_error_code(UNSUPPORTED_VERSION)
                })
                .collect();
            ResponseKind::FindCoordinator(
                FindCoordinatorResponse::default().with_coordinators(coordinators),
            )
        }
        _ => return None,
    };
    answer(api, version, correlation_id, body).ok()
}

fn decode<T: Decodable>(
    api_key: ApiKey,
    version: i16,
    body: &Bytes,
) -> Result<T, StandaloneAnswerError> {
    T::decode(&mut body.clone(), version).map_err(|e| StandaloneAnswerError::Request {
        api_key,
        version,
        reason: e.to_string(),
    })
}

fn answer(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: ResponseKind,
) -> Result<Bytes, MessageError> {
    Response {
        header: ResponseHeader::default().with_correlation_id(correlation_id),
        body,
    }
    .encode(api_key, version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{FetchRequest, FindCoordinatorRequest, ListOffsetsRequest};
    use kafka_protocol::protocol::Encodable;

    const BROKER: Broker<'static> = Broker {
        host: "proxy.example",
        port: 9092,
        cluster_id: "cluster-1",
    };

    fn served() -> Vec<ServedTopic<'static>> {
        vec![
            ServedTopic {
                name: "orders",
                partitions: 3,
            },
            ServedTopic {
                name: "payments",
                partitions: 1,
            },
        ]
    }

    fn encode<T: Encodable>(body: &T, version: i16) -> Bytes {
        let mut buf = bytes::BytesMut::new();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    fn decoded(frame: &Bytes, api: ApiKey, version: i16) -> ResponseKind {
        let response = Response::decode(frame, api, version).unwrap();
        assert_eq!(response.header.correlation_id, 7);
        response.body
    }

    fn metadata_at(version: i16, topics: Option<Vec<&str>>) -> MetadataResponse {
        let request = MetadataRequest::default().with_topics(topics.map(|names| {
            names
                .into_iter()
                .map(|n| MetadataRequestTopic::default().with_name(Some(topic_name(n))))
                .collect()
        }));
        let frame = metadata(version, 7, &encode(&request, version), &BROKER, &served()).unwrap();
        let ResponseKind::Metadata(body) = decoded(&frame, ApiKey::Metadata, version) else {
            unreachable!()
        };
        body
    }

    #[test]
    fn api_versions_offer_what_the_proxy_serves_and_the_fetch_versions_librdkafka_needs() {
        for version in 0..=ApiKey::ApiVersions.valid_versions().max {
            let frame = api_versions(version, 7).unwrap();
            let ResponseKind::ApiVersions(body) = decoded(&frame, ApiKey::ApiVersions, version)
            else {
                unreachable!()
            };
            assert_eq!(body.error_code, 0);
            let keys: Vec<_> = body
                .api_keys
                .iter()
                .map(|a| (a.api_key, a.min_version))
                .collect();
            assert_eq!(
                keys,
                vec![(0, 3), (3, 0), (18, 0), (22, 0), (1, 4), (2, 1)],
                "v{version}"
            );
            assert_eq!(body.api_keys[0].max_version, 12, "Produce");
        }
        let too_new = api_versions(99, 7).unwrap();
        assert_eq!(too_new, unsupported_version_response(7));
        assert!(serves(ApiKey::Produce as i16, 9));
        assert!(!serves(ApiKey::Produce as i16, 2));
        assert!(!serves(ApiKey::Fetch as i16, 4), "offered, but refused");
        assert!(
            !serves(ApiKey::ListOffsets as i16, 7),
            "offered, but refused"
        );
    }

    #[test]
    fn metadata_names_the_proxy_as_the_only_broker_and_lists_requested_topics() {
        for version in [1, 4, 9, 12, 13] {
            let body = metadata_at(version, Some(vec!["orders", "unknown"]));
            assert_eq!(body.brokers.len(), 1);
            assert_eq!(body.brokers[0].host.as_str(), "proxy.example");
            assert_eq!(body.brokers[0].port, 9092);
            assert_eq!(body.controller_id, BrokerId(0));
            if version >= 2 {
                assert_eq!(body.cluster_id.as_deref(), Some("cluster-1"));
            }
            assert_eq!(body.topics.len(), 2);
            let orders = &body.topics[0];
            assert_eq!(orders.error_code, 0);
            assert_eq!(orders.partitions.len(), 3);
            for (i, p) in orders.partitions.iter().enumerate() {
                assert_eq!(p.partition_index, i as i32);
                assert_eq!(p.leader_id, BrokerId(0));
                assert_eq!(p.replica_nodes, vec![BrokerId(0)]);
                assert_eq!(p.isr_nodes, vec![BrokerId(0)]);
            }
            assert_eq!(body.topics[1].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
            assert!(body.topics[1].partitions.is_empty());
        }
    }

    #[test]
    fn metadata_for_all_topics_lists_every_route() {
        let all = |body: MetadataResponse| -> Vec<String> {
            body.topics
                .iter()
                .map(|t| t.name.as_ref().unwrap().to_string())
                .collect()
        };
        assert_eq!(all(metadata_at(9, None)), vec!["orders", "payments"]);
        assert_eq!(
            all(metadata_at(0, Some(vec![]))),
            vec!["orders", "payments"]
        );
        assert!(all(metadata_at(9, Some(vec![]))).is_empty());
    }

    #[test]
    fn init_producer_id_reads_the_transactional_id_and_answers_ids_or_an_error() {
        for version in 0..=5 {
            let idempotent = InitProducerIdRequest::default().with_transactional_id(None);
            let body = encode(&idempotent, version);
            assert_eq!(
                init_producer_id_transactional_id(version, &body).unwrap(),
                None
            );
            let transactional = InitProducerIdRequest::default().with_transactional_id(Some(
                kafka_protocol::messages::TransactionalId(StrBytes::from_static_str("txn-1")),
            ));
            let body = encode(&transactional, version);
            assert_eq!(
                init_producer_id_transactional_id(version, &body).unwrap(),
                Some("txn-1".to_owned())
            );
            let frame = init_producer_id(version, 7, Ok((1_000_123, 0))).unwrap();
            let ResponseKind::InitProducerId(ok) = decoded(&frame, ApiKey::InitProducerId, version)
            else {
                unreachable!()
            };
            assert_eq!(
                (ok.error_code, ok.producer_id.0, ok.producer_epoch),
                (0, 1_000_123, 0)
            );
            let frame = init_producer_id(version, 7, Err(53)).unwrap();
            let ResponseKind::InitProducerId(err) =
                decoded(&frame, ApiKey::InitProducerId, version)
            else {
                unreachable!()
            };
            assert_eq!((err.error_code, err.producer_id.0), (53, -1));
        }
    }

    #[test]
    fn consumer_requests_are_refused_in_their_own_shape() {
        let fetch = FetchRequest::default().with_topics(vec![FetchTopic::default()
            .with_topic(topic_name("orders"))
            .with_partitions(vec![
                FetchPartition::default().with_partition(0),
                FetchPartition::default().with_partition(1),
            ])]);
        for version in [4, 11, 12] {
            let frame = unsupported(1, version, 7, &encode(&fetch, version));
            let ResponseKind::Fetch(body) = decoded(&frame, ApiKey::Fetch, version) else {
                unreachable!()
            };
            let codes: Vec<_> = body.responses[0]
                .partitions
                .iter()
                .map(|p| (p.partition_index, p.error_code))
                .collect();
            assert_eq!(codes, vec![(0, 35), (1, 35)], "Fetch v{version}");
        }
        let list = ListOffsetsRequest::default().with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name("orders"))
            .with_partitions(vec![ListOffsetsPartition::default().with_partition_index(2)])]);
        for version in [1, 7] {
            let frame = unsupported(2, version, 7, &encode(&list, version));
            let ResponseKind::ListOffsets(body) = decoded(&frame, ApiKey::ListOffsets, version)
            else {
                unreachable!()
            };
            assert_eq!(body.topics[0].partitions[0].error_code, 35);
        }
        for version in [1, 4] {
            let group = StrBytes::from_static_str("group");
            let find = if version < 4 {
                FindCoordinatorRequest::default().with_key(group)
            } else {
                FindCoordinatorRequest::default().with_coordinator_keys(vec![group])
            };
            let frame = unsupported(10, version, 7, &encode(&find, version));
            let ResponseKind::FindCoordinator(body) =
                decoded(&frame, ApiKey::FindCoordinator, version)
            else {
                unreachable!()
            };
            let code = if version >= 4 {
                body.coordinators[0].error_code
            } else {
                body.error_code
            };
            assert_eq!(code, 35, "FindCoordinator v{version}");
        }
        // Anything else, and a version the crate cannot decode: the v0 ApiVersions error frame.
        assert_eq!(
            unsupported(ApiKey::JoinGroup as i16, 5, 7, &Bytes::new()),
            unsupported_version_response(7)
        );
        assert_eq!(
            unsupported(1, 99, 7, &Bytes::new()),
            unsupported_version_response(7)
        );
    }
}
