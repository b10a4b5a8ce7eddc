//! Reads a transaction's outcome from Kafka's log, for the mirror's held records whose EndTxn
//! the proxy never saw: the first control batch of the producer after the held batch, in the
//! same partition, is its transaction's COMMIT or ABORT marker. Uses the proxy's own
//! connections (TLS and SASL as configured), to the partition's leader.

use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::{
    ApiKey, FetchRequest, MetadataRequest, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::own_connection::{common_version, OwnConnection, OwnRequestError};
use super::own_sasl::{self, OwnSaslError};
use super::Proxy;
use crate::kafka::records::{decode_batches, RecordsError};
use crate::kafka::transaction::marker_outcome;
use crate::mirror::{MarkerLookup, TransactionMarkers};

/// Bytes one Fetch may return, and decode: a marker usually follows its batch closely.
const FETCH_BYTES: i32 = 1024 * 1024;
/// Fetches one look-up makes before it gives up until its next try: a partition busy with
/// other producers can put much between a batch and its marker.
const MAX_FETCHES: usize = 16;

/// Why the proxy could not read from a partition's leader (also used by
/// [`super::log_end_offsets`]).
#[derive(Debug, thiserror::Error)]
pub(super) enum MarkerReadError {
    #[error(transparent)]
    Request(#[from] OwnRequestError),
    #[error(transparent)]
    Sasl(#[from] OwnSaslError),
    #[error("{server}: the broker does not offer {api:?}")]
    NoApi { server: String, api: ApiKey },
    #[error("the cluster names no leader for {topic}/{partition}")]
    NoLeader { topic: String, partition: i32 },
    #[error("{topic}/{partition}: Fetch answered error code {code}")]
    Fetch {
        topic: String,
        partition: i32,
        code: i16,
    },
    #[error("{topic}/{partition}: {source}")]
    Records {
        topic: String,
        partition: i32,
        source: RecordsError,
    },
}

/// The mirror's reader of transaction markers, through this proxy's connections.
pub fn transaction_markers(proxy: &Arc<Proxy>) -> Arc<dyn TransactionMarkers> {
    Arc::new(KafkaMarkers {
        proxy: Arc::downgrade(proxy),
    })
}

struct KafkaMarkers {
    /// Weak: the proxy owns the mirror, which owns this.
    proxy: Weak<Proxy>,
}

impl TransactionMarkers for KafkaMarkers {
    fn outcome(&self, lookup: MarkerLookup) -> BoxFuture<'static, Option<bool>> {
        let proxy = self.proxy.clone();
        Box::pin(async move {
            let proxy = proxy.upgrade()?;
            match read_outcome(&proxy, &lookup).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    tracing::warn!(error = %e, topic = %lookup.topic, partition = lookup.partition,
                        "cannot read a held transaction's outcome from Kafka; will try again");
                    None
                }
            }
        })
    }
}

/// A connection to `server`, authenticated as configured, and the versions it speaks.
pub(super) async fn connect(
    proxy: &Proxy,
    server: &str,
) -> Result<(OwnConnection, kafka_protocol::messages::ApiVersionsResponse), MarkerReadError> {
    let mut conn = OwnConnection::open(proxy, server).await?;
    let versions = conn.api_versions().await?;
    if let Some(sasl) = &proxy.kafka().sasl {
        own_sasl::authenticate(&mut conn, &versions, sasl).await?;
    }
    Ok((conn, versions))
}

pub(super) fn version_of(
    versions: &kafka_protocol::messages::ApiVersionsResponse,
    conn: &OwnConnection,
    api: ApiKey,
) -> Result<i16, MarkerReadError> {
    common_version(versions, api).ok_or_else(|| MarkerReadError::NoApi {
        server: conn.server().to_owned(),
        api,
    })
}

/// The address of the leader of `topic`/`partition`, and its topic's metadata (Fetch v13+
/// names topics by id).
pub(super) async fn find_leader(
    proxy: &Proxy,
    topic: &str,
    partition: i32,
) -> Result<(String, MetadataResponseTopic), MarkerReadError> {
    let no_leader = || MarkerReadError::NoLeader {
        topic: topic.to_owned(),
        partition,
    };
    let server = proxy
        .kafka()
        .bootstrap_servers
        .first()
        .ok_or_else(no_leader)?;
    let (mut conn, versions) = connect(proxy, server).await?;
    let version = version_of(&versions, &conn, ApiKey::Metadata)?;
    let requested = MetadataRequestTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.to_owned()))));
    let request = MetadataRequest::default().with_topics(Some(vec![requested]));
    let ResponseKind::Metadata(metadata) = conn
        .call(ApiKey::Metadata, version, RequestKind::Metadata(request))
        .await?
    else {
        unreachable!("decoded as Metadata")
    };
    let found = metadata
        .topics
        .into_iter()
        .find(|t| t.name.as_ref().is_some_and(|n| *n.0 == *topic))
        .ok_or_else(no_leader)?;
    let leader = found
        .partitions
        .iter()
        .find(|p| p.partition_index == partition)
        .map(|p| p.leader_id)
        .ok_or_else(no_leader)?;
    let broker = metadata
        .brokers
        .iter()
        .find(|b| b.node_id == leader)
        .ok_or_else(no_leader)?;
    Ok((format!("{}:{}", broker.host, broker.port), found))
}

/// Reads forward from the held batch for its producer's next marker: `None` when there is
/// none yet (the transaction is still open, or more than [`MAX_FETCHES`] away).
async fn read_outcome(
    proxy: &Proxy,
    lookup: &MarkerLookup,
) -> Result<Option<bool>, MarkerReadError> {
    let (leader, metadata) = find_leader(proxy, &lookup.topic, lookup.partition).await?;
    let (mut conn, versions) = connect(proxy, &leader).await?;
    let version = version_of(&versions, &conn, ApiKey::Fetch)?;
    let (topic, partition) = (lookup.topic.to_string(), lookup.partition);
    let mut offset = lookup.offset;
    for _ in 0..MAX_FETCHES {
        let mut fetch_topic =
            FetchTopic::default().with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(FETCH_BYTES)]);
        fetch_topic = if version >= 13 {
            fetch_topic.with_topic_id(metadata.topic_id)
        } else {
            fetch_topic.with_topic(TopicName(StrBytes::from_string(topic.clone())))
        };
        // Read uncommitted: the markers themselves are what is read.
        let request = FetchRequest::default()
            .with_max_bytes(FETCH_BYTES)
            .with_topics(vec![fetch_topic]);
        let ResponseKind::Fetch(response) = conn
            .call(ApiKey::Fetch, version, RequestKind::Fetch(request))
            .await?
        else {
            unreachable!("decoded as Fetch")
        };
        let Some(data) = response
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == partition)
        else {
            return Ok(None);
        };
        if data.error_code != 0 {
            return Err(MarkerReadError::Fetch {
                topic,
                partition,
                code: data.error_code,
            });
        }
        let batches = match data.records {
            Some(records) if !records.is_empty() => {
                decode_batches(records).map_err(|source| MarkerReadError::Records {
                    topic: topic.clone(),
                    partition,
                    source,
                })?
            }
            _ => return Ok(None),
        };
        let mut next = offset;
        for batch in &batches {
            if batch.base_offset >= lookup.offset && batch.producer_id == lookup.producer_id {
                if let Some(committed) = marker_outcome(batch) {
                    return Ok(Some(committed));
                }
            }
            let last = batch.records.last().map_or(batch.base_offset, |r| r.offset);
            next = next.max(last + 1);
        }
        if next == offset {
            return Ok(None);
        }
        offset = next;
    }
    Ok(None)
}
