//! `[kafka]`: the upstream cluster, and how the proxy's own connections reach it; or, when the
//! table is absent, the conditions of standalone mode (no Kafka at all).

use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::listener::ListenerConfig;
use super::mirror::MirrorRoute;
use super::sasl::{self, KafkaSaslConfig};
use super::tls::{self, KafkaTlsConfig};
use super::{invalid, positive, Invalid};

#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConfig {
    pub bootstrap_servers: Vec<String>,
    pub connect_timeout: Duration,
    /// `None`: the proxy connects to brokers in plain TCP.
    pub tls: Option<KafkaTlsConfig>,
    /// Credentials of the proxy's own connections; `None`: they do not authenticate.
    pub sasl: Option<KafkaSaslConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKafka {
    bootstrap_servers: Spanned<Vec<Spanned<String>>>,
    connect_timeout_ms: Option<Spanned<u64>>,
    tls: Option<tls::RawKafkaTls>,
    sasl: Option<Spanned<sasl::RawKafkaSasl>>,
}

pub(super) fn validate_kafka(raw: RawKafka) -> Result<KafkaConfig, Invalid> {
    let servers_span = raw.bootstrap_servers.span();
    let servers = raw.bootstrap_servers.into_inner();
    if servers.is_empty() {
        return invalid(
            servers_span,
            "kafka.bootstrap_servers: list at least one HOST:PORT",
        );
    }
    let mut bootstrap_servers = Vec::with_capacity(servers.len());
    for server in servers {
        let text = server.get_ref();
        let valid = text.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            return invalid(
                server.span(),
                format!("kafka.bootstrap_servers: `{text}` is not HOST:PORT"),
            );
        }
        bootstrap_servers.push(server.into_inner());
    }
    let connect_timeout_ms = positive(
        raw.connect_timeout_ms.as_ref(),
        10_000,
        "kafka.connect_timeout_ms",
    )?;
    Ok(KafkaConfig {
        bootstrap_servers,
        connect_timeout: Duration::from_millis(connect_timeout_ms),
        tls: raw.tls.map(tls::validate_kafka_tls).transpose()?,
        sasl: raw
            .sasl
            .map(|table| {
                let span = table.span();
                sasl::validate_kafka_sasl(table.into_inner(), span)
            })
            .transpose()?,
    })
}

/// Standalone mode (no `[kafka]`): the proxy is the only broker, so every route must be one the
/// proxy can answer alone, and nobody is there to check SASL credentials.
/// `route_spans`: where each route's table is, in the order of `routes`.
pub(super) fn validate_standalone(
    listener: &ListenerConfig,
    routes: &[MirrorRoute],
    route_spans: &[Range<usize>],
    listener_span: Range<usize>,
) -> Result<(), Invalid> {
    if listener.sasl_required {
        return invalid(
            listener_span,
            "listener.sasl_required: needs [kafka], whose brokers check the credentials; without [kafka] (standalone) the proxy authenticates nobody. Remove sasl_required, or add [kafka]",
        );
    }
    if routes.is_empty() {
        return Err((
            None,
            "[kafka] is absent, so the proxy runs standalone, and then it needs at least one [[mirror]] route with mode = \"kinesis-only\" to have anything to serve; add [kafka] bootstrap_servers or a route".to_owned(),
        ));
    }
    for (route, span) in routes.iter().zip(route_spans) {
        if route.mode.name() != "kinesis-only" {
            return invalid(
                span.clone(),
                format!(
                    "mirror.mode (route of topic `{}`): \"{}\" needs Kafka, and [kafka] is absent; without Kafka (standalone) every route must be mode = \"kinesis-only\", or add [kafka]",
                    route.topic, route.mode
                ),
            );
        }
    }
    Ok(())
}
