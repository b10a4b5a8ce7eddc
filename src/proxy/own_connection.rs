//! A connection the proxy opens for its own requests (discovery, the readiness probe): one
//! request at a time, and every response awaited with a deadline, so a server that accepts and
//! never answers costs a timeout, not a hung task.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, RequestKind, ResponseKind,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::FramedRead;

use super::tls::{StreamReader, StreamWriter};
use super::Proxy;
use crate::kafka::frame::{seal, FrameCodec, SIZE_PREFIX};
use crate::kafka::message::Response;

const CLIENT_ID: &str = "kafka-kinesis-proxy";

/// The largest response the proxy's own requests accept (a Metadata response of a large
/// cluster).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum OwnRequestError {
    #[error("{server}: cannot connect: {source}")]
    Connect {
        server: String,
        source: std::io::Error,
    },
    #[error("{server}: no {api:?} response within {timeout_ms} ms (kafka.connect_timeout_ms)")]
    Timeout {
        server: String,
        api: ApiKey,
        timeout_ms: u128,
    },
    #[error("{server}: the broker closed the connection instead of answering {api:?}")]
    Closed { server: String, api: ApiKey },
    #[error("{server}: {api:?}: {source}")]
    Io {
        server: String,
        api: ApiKey,
        source: crate::kafka::frame::FrameError,
    },
    #[error("{server}: {api:?}: {reason}")]
    Protocol {
        server: String,
        api: ApiKey,
        reason: String,
    },
}

pub struct OwnConnection {
    server: String,
    frames: FramedRead<StreamReader, FrameCodec>,
    wr: StreamWriter,
    timeout: Duration,
    next_correlation_id: i32,
}

impl OwnConnection {
    /// Connects to `server` (`HOST:PORT`), over TLS when `[kafka.tls]` is set. Connecting and
    /// each response are bounded by `kafka.connect_timeout_ms`.
    pub async fn open(proxy: &Proxy, server: &str) -> Result<OwnConnection, OwnRequestError> {
        let stream = proxy
            .connect_to(server)
            .await
            .map_err(|source| OwnRequestError::Connect {
                server: server.to_owned(),
                source,
            })?;
        let (rd, wr) = stream.into_split();
        Ok(OwnConnection {
            server: server.to_owned(),
            frames: FramedRead::new(rd, FrameCodec::new(MAX_RESPONSE_BYTES)),
            wr,
            timeout: proxy.kafka().connect_timeout,
            next_correlation_id: 0,
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends `request` and decodes its response.
    pub async fn call(
        &mut self,
        api_key: ApiKey,
        version: i16,
        request: RequestKind,
    ) -> Result<ResponseKind, OwnRequestError> {
        let frame = self.call_raw(api_key, version, request).await?;
        let response =
            Response::decode(&frame, api_key, version).map_err(|e| OwnRequestError::Protocol {
                server: self.server.clone(),
                api: api_key,
                reason: e.to_string(),
            })?;
        Ok(response.body)
    }

    /// Sends `request` and returns its response frame, after checking its correlation id.
    pub async fn call_raw(
        &mut self,
        api_key: ApiKey,
        version: i16,
        request: RequestKind,
    ) -> Result<Bytes, OwnRequestError> {
        let protocol = |reason: String| OwnRequestError::Protocol {
            server: self.server.clone(),
            api: api_key,
            reason,
        };
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0; SIZE_PREFIX]);
        header
            .encode(&mut buf, api_key.request_header_version(version))
            .map_err(|e| protocol(e.to_string()))?;
        request
            .encode(&mut buf, version)
            .map_err(|e| protocol(e.to_string()))?;

        let exchange = async {
            self.wr.write_all(&seal(buf)).await?;
            self.frames.next().await.transpose()
        };
        let frame = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                return Err(OwnRequestError::Timeout {
                    server: self.server.clone(),
                    api: api_key,
                    timeout_ms: self.timeout.as_millis(),
                })
            }
            Ok(Err(source)) => {
                return Err(OwnRequestError::Io {
                    server: self.server.clone(),
                    api: api_key,
                    source,
                })
            }
            Ok(Ok(None)) => {
                return Err(OwnRequestError::Closed {
                    server: self.server.clone(),
                    api: api_key,
                })
            }
            Ok(Ok(Some(frame))) => frame,
        };
        let answered_id = frame
            .get(SIZE_PREFIX..SIZE_PREFIX + 4)
            .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")));
        if answered_id != Some(correlation_id) {
            return Err(protocol(format!(
                "response carries correlation id {answered_id:?}, expected {correlation_id}"
            )));
        }
        Ok(frame)
    }

    /// ApiVersions v0, which every broker answers, before SASL too.
    pub async fn api_versions(&mut self) -> Result<ApiVersionsResponse, OwnRequestError> {
        let response = self
            .call(
                ApiKey::ApiVersions,
                0,
                RequestKind::ApiVersions(ApiVersionsRequest::default()),
            )
            .await?;
        let ResponseKind::ApiVersions(versions) = response else {
            unreachable!("decoded as ApiVersions")
        };
        if versions.error_code != 0 {
            return Err(OwnRequestError::Protocol {
                server: self.server.clone(),
                api: ApiKey::ApiVersions,
                reason: format!("error code {}", versions.error_code),
            });
        }
        Ok(versions)
    }
}

/// The highest version of `api` both the broker (per `versions`) and this proxy speak.
pub fn common_version(versions: &ApiVersionsResponse, api: ApiKey) -> Option<i16> {
    let ours = api.valid_versions();
    versions
        .api_keys
        .iter()
        .find(|k| k.api_key == api as i16)
        .filter(|k| k.max_version >= ours.min && k.min_version <= ours.max)
        .map(|k| k.max_version.min(ours.max))
}
