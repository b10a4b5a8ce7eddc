//! `[kafka]`: the upstream cluster, and how the proxy's own connections reach it; or, when the
//! table is absent, the conditions of standalone mode (no Kafka at all).

use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::listener::ListenerConfig;
use super::mirror::{MirrorRoute, RouteMode};
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
        if route.mode != RouteMode::KinesisOnly {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::parse;

    const STANDALONE: &str = "[listener]\nbootstrap_port = 19092\n[kinesis]\nregion = \"us-east-1\"\n[spool]\ndir = \"/tmp/s\"\n";

    fn route(topic: &str, keys: &str) -> String {
        format!(
            "[[mirror]]\ntopic = \"{topic}\"\nstream = \"{topic}-stream\"\npercent = 100\n{keys}"
        )
    }

    #[test]
    fn without_kafka_kinesis_only_routes_run_standalone_with_their_partitions() {
        let config = parse(&format!(
            "{STANDALONE}{}{}",
            route("orders", "mode = \"kinesis-only\"\npartitions = 6\n"),
            route("payments", "mode = \"kinesis-only\"\n")
        ))
        .unwrap();
        assert!(config.kafka.is_none());
        assert_eq!(config.mirror[0].partitions, 6);
        assert_eq!(config.mirror[1].partitions, 1, "default");
        let summary = config.to_string();
        assert!(summary.contains("absent: standalone"), "{summary}");
        assert!(summary.contains("consumers"), "{summary}");
        assert!(
            summary.contains("topic orders -> orders-stream, 6 partitions"),
            "{summary}"
        );
    }

    #[test]
    fn without_kafka_a_route_of_another_mode_is_an_error_naming_it() {
        let text = format!(
            "{STANDALONE}{}{}",
            route("orders", "mode = \"kinesis-only\"\n"),
            route("payments", "mode = \"kinesis-primary\"\n")
        );
        let err = parse(&text).unwrap_err();
        assert!(err.starts_with("proxy.toml:12: "), "{err}");
        assert!(
            err.contains("route of topic `payments`")
                && err.contains("\"kinesis-primary\" needs Kafka")
                && err.contains("mode = \"kinesis-only\""),
            "{err}"
        );
        // No mode means "mirror", which needs Kafka just as much.
        let err = parse(&format!("{STANDALONE}{}", route("orders", ""))).unwrap_err();
        assert!(
            err.contains("route of topic `orders`") && err.contains("\"mirror\" needs Kafka"),
            "{err}"
        );
    }

    #[test]
    fn without_kafka_there_must_be_a_route_and_no_sasl_requirement() {
        let err = parse(STANDALONE).unwrap_err();
        assert!(err.contains("[kafka] is absent"), "{err}");
        let err = parse(&format!(
            "{}{}",
            STANDALONE.replace("[listener]\n", "[listener]\nsasl_required = true\n"),
            route("orders", "mode = \"kinesis-only\"\n")
        ))
        .unwrap_err();
        assert!(
            err.contains("listener.sasl_required: needs [kafka]"),
            "{err}"
        );
    }

    #[test]
    fn partitions_are_bounded() {
        for (value, problem) in [("0", "greater than 0"), ("10001", "more than 10000")] {
            let err = parse(&format!(
                "{STANDALONE}{}",
                route(
                    "orders",
                    &format!("mode = \"kinesis-only\"\npartitions = {value}\n")
                )
            ))
            .unwrap_err();
            assert!(
                err.starts_with("proxy.toml:12: ") && err.contains(problem),
                "{value}: {err}"
            );
        }
    }
}
