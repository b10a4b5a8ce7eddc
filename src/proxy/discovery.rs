//! Learns the cluster's brokers at startup, so that every broker port is open again right after
//! a restart, before any client has asked for metadata.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, MetadataRequest, RequestHeader, RequestKind, ResponseKind,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::FramedRead;

use super::tls::{StreamReader, StreamWriter};
use super::Proxy;
use crate::kafka::frame::{seal, FrameCodec, SIZE_PREFIX};
use crate::kafka::message::Response;
use crate::kafka::rewrite::rewrite_response;

const CLIENT_ID: &str = "kafka-kinesis-proxy";

/// Retries until one bootstrap server has described the cluster.
pub async fn discover_brokers(proxy: Arc<Proxy>) {
    let mut delay = Duration::from_millis(250);
    loop {
        for server in &proxy.config.kafka.bootstrap_servers {
            match describe_cluster(&proxy, server).await {
                Ok(count) => {
                    tracing::info!(%server, brokers = count, "discovered cluster brokers");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%server, error = %e, "broker discovery failed; will retry")
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn describe_cluster(proxy: &Arc<Proxy>, server: &str) -> anyhow::Result<usize> {
    let (rd, wr) = proxy.connect_to(server).await?.into_split();
    let mut conn = Exchange {
        frames: FramedRead::new(rd, FrameCodec::new(64 * 1024 * 1024)),
        wr,
    };

    let versions = conn
        .call(
            ApiKey::ApiVersions,
            0,
            RequestKind::ApiVersions(ApiVersionsRequest::default()),
        )
        .await?;
    let versions = Response::decode(&versions, ApiKey::ApiVersions, 0)?;
    let ResponseKind::ApiVersions(versions) = versions.body else {
        unreachable!("decoded as ApiVersions")
    };
    let metadata_version = versions
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Metadata as i16)
        .map(|k| k.max_version.min(ApiKey::Metadata.valid_versions().max))
        .ok_or_else(|| anyhow::anyhow!("broker does not offer the Metadata API"))?;

    // An empty topic list asks for brokers only (v1+; at v0 it means every topic, which is
    // harmless, only larger).
    let request = MetadataRequest::default().with_topics(Some(Vec::new()));
    let frame = conn
        .call(
            ApiKey::Metadata,
            metadata_version,
            RequestKind::Metadata(request),
        )
        .await?;
    let mut rewriter = proxy.directory.rewriter();
    rewrite_response(&frame, ApiKey::Metadata, metadata_version, &mut rewriter)?;
    let count = rewriter.learned.len();
    for (node_id, port) in rewriter.learned {
        proxy.ensure_broker_listener(node_id, port);
    }
    Ok(count)
}

/// A minimal request/response client for the proxy's own requests.
struct Exchange {
    frames: FramedRead<StreamReader, FrameCodec>,
    wr: StreamWriter,
}

impl Exchange {
    async fn call(
        &mut self,
        api_key: ApiKey,
        version: i16,
        request: RequestKind,
    ) -> anyhow::Result<Bytes> {
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(i32::from(version))
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0; SIZE_PREFIX]);
        header.encode(&mut buf, api_key.request_header_version(version))?;
        request.encode(&mut buf, version)?;
        self.wr.write_all(&seal(buf)).await?;
        Ok(self
            .frames
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("connection closed"))??)
    }
}
