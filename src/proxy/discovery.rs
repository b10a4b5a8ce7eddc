//! Learns the cluster's brokers at startup, so that every broker port is open again right after
//! a restart, before any client has asked for metadata; and checks, for `/readyz`, that some
//! bootstrap server answers Kafka requests.
//!
//! Each attempt is bounded (`kafka.connect_timeout_ms` per connect and per response), so a
//! server that accepts and never answers is logged and skipped instead of hanging startup.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::{ApiKey, MetadataRequest, RequestKind};

use super::own_connection::{common_version, OwnConnection, OwnRequestError};
use super::own_sasl::{self, OwnSaslError};
use super::Proxy;
use crate::kafka::rewrite::{rewrite_response, RewriteError};

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Request(#[from] OwnRequestError),
    #[error(transparent)]
    Sasl(#[from] OwnSaslError),
    #[error("{server}: the broker closed the connection instead of answering Metadata: the cluster requires SASL authentication; set [kafka.sasl] (mechanism, username, and password_env or password_file)")]
    SaslRequired { server: String },
    #[error("{server}: the broker does not offer the Metadata API")]
    NoMetadataApi { server: String },
    #[error("{server}: Metadata response: {source}")]
    Rewrite {
        server: String,
        source: RewriteError,
    },
}

impl DiscoveryError {
    /// Failures that retrying cannot fix without an operator: logged as errors, not warnings.
    fn needs_operator(&self) -> bool {
        matches!(
            self,
            DiscoveryError::SaslRequired { .. }
                | DiscoveryError::Sasl(
                    OwnSaslError::Password(_)
                        | OwnSaslError::Refused { .. }
                        | OwnSaslError::MechanismNotOffered { .. }
                        | OwnSaslError::ListenerWithoutSasl { .. }
                )
        )
    }
}

/// Retries until one bootstrap server has described the cluster.
pub async fn discover_brokers(proxy: Arc<Proxy>) {
    let mut delay = Duration::from_millis(250);
    loop {
        for server in &proxy.kafka().bootstrap_servers {
            match describe_cluster(&proxy, server).await {
                Ok(count) => {
                    tracing::info!(%server, brokers = count, "discovered cluster brokers");
                    return;
                }
                Err(e) if e.needs_operator() => {
                    tracing::error!(error = %e, "broker discovery failed; will retry")
                }
                Err(e) => tracing::warn!(error = %e, "broker discovery failed; will retry"),
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn describe_cluster(proxy: &Arc<Proxy>, server: &str) -> Result<usize, DiscoveryError> {
    let mut conn = OwnConnection::open(proxy, server).await?;
    let versions = conn.api_versions().await?;
    if let Some(sasl) = &proxy.kafka().sasl {
        own_sasl::authenticate(&mut conn, &versions, sasl).await?;
    }
    let metadata_version = common_version(&versions, ApiKey::Metadata).ok_or_else(|| {
        DiscoveryError::NoMetadataApi {
            server: server.to_owned(),
        }
    })?;

    // An empty topic list asks for brokers only (v1+; at v0 it means every topic, which is
    // harmless, only larger).
    let request = MetadataRequest::default().with_topics(Some(Vec::new()));
    let frame = match conn
        .call_raw(
            ApiKey::Metadata,
            metadata_version,
            RequestKind::Metadata(request),
        )
        .await
    {
        // A SASL listener answers ApiVersions, then drops a connection that skips SASL.
        Err(OwnRequestError::Closed { server, .. }) if proxy.kafka().sasl.is_none() => {
            return Err(DiscoveryError::SaslRequired { server })
        }
        other => other?,
    };
    let rewrite_failed = |source| DiscoveryError::Rewrite {
        server: server.to_owned(),
        source,
    };
    let listen = |node_id, port| proxy.ensure_broker_listener(node_id, port);
    let mut rewriter = proxy.directory.rewriter(&listen);
    rewrite_response(&frame, ApiKey::Metadata, metadata_version, &mut rewriter)
        .map_err(rewrite_failed)?;
    Ok(rewriter.learned)
}

/// `Ok(server)` once a bootstrap server has answered ApiVersions, which Kafka answers before
/// SASL, so readiness needs no credentials; else every server's failure.
pub async fn answering_bootstrap_server(proxy: &Proxy) -> Result<String, String> {
    let mut failures = Vec::new();
    for server in &proxy.kafka().bootstrap_servers {
        let answered = async {
            let mut conn = OwnConnection::open(proxy, server).await?;
            conn.api_versions().await
        };
        match answered.await {
            Ok(_) => return Ok(server.clone()),
            Err(e) => failures.push(e.to_string()),
        }
    }
    Err(failures.join("; "))
}
