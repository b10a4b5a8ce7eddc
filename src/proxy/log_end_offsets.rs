//! Reads a partition's latest offset from Kafka, for kinesis-only routes: after a live switch,
//! a partition's synthetic offsets start no lower, so they never repeat offsets Kafka gave
//! out. Uses the proxy's own connections (TLS and SASL as configured), to the leader.

use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, ListOffsetsRequest, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::transaction_markers::{connect, find_leader, version_of, MarkerReadError};
use super::Proxy;
use crate::mirror::LogEndOffsets;

/// ListOffsets' timestamp for "the latest offset".
const LATEST: i64 = -1;

#[derive(Debug, thiserror::Error)]
enum LogEndError {
    #[error(transparent)]
    Reach(#[from] MarkerReadError),
    #[error("{topic}/{partition}: ListOffsets answered error code {code}")]
    ListOffsets {
        topic: String,
        partition: i32,
        code: i16,
    },
    #[error("{topic}/{partition}: ListOffsets did not answer the partition")]
    NoAnswer { topic: String, partition: i32 },
}

/// The mirror's reader of Kafka's log-end offsets, through this proxy's connections.
pub fn log_end_offsets(proxy: &Arc<Proxy>) -> Arc<dyn LogEndOffsets> {
    Arc::new(KafkaLogEnds {
        proxy: Arc::downgrade(proxy),
    })
}

struct KafkaLogEnds {
    /// Weak: the proxy owns the mirror, which owns this.
    proxy: Weak<Proxy>,
}

impl LogEndOffsets for KafkaLogEnds {
    fn log_end_offset(&self, topic: Arc<str>, partition: i32) -> BoxFuture<'static, Option<i64>> {
        let proxy = self.proxy.clone();
        Box::pin(async move {
            let proxy = proxy.upgrade()?;
            match read_log_end(&proxy, &topic, partition).await {
                Ok(offset) => Some(offset),
                Err(e) => {
                    tracing::warn!(error = %e, %topic, partition,
                        "cannot read a kinesis-only partition's log-end offset from Kafka; its Produce gets a retriable error");
                    None
                }
            }
        })
    }
}

/// The partition's latest offset, as its leader gives it to consumers (the high watermark:
/// every record acknowledged with acks=all lies below it).
async fn read_log_end(proxy: &Proxy, topic: &str, partition: i32) -> Result<i64, LogEndError> {
    let (leader, _) = find_leader(proxy, topic, partition).await?;
    let (mut conn, versions) = connect(proxy, &leader).await?;
    let version = version_of(&versions, &conn, ApiKey::ListOffsets)?;
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(partition)
                .with_timestamp(LATEST)])]);
    let ResponseKind::ListOffsets(response) = conn
        .call(
            ApiKey::ListOffsets,
            version,
            RequestKind::ListOffsets(request),
        )
        .await
        .map_err(MarkerReadError::from)?
    else {
        unreachable!("decoded as ListOffsets")
    };
    let answer = response
        .topics
        .into_iter()
        .flat_map(|t| t.partitions)
        .find(|p| p.partition_index == partition)
        .ok_or_else(|| LogEndError::NoAnswer {
            topic: topic.to_owned(),
            partition,
        })?;
    if answer.error_code != 0 {
        return Err(LogEndError::ListOffsets {
            topic: topic.to_owned(),
            partition,
            code: answer.error_code,
        });
    }
    Ok(answer.offset)
}
