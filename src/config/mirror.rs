//! `[[mirror]]` routes and `[mirror_buffer]`: which topics go to which streams, how records are
//! keyed and sampled, and what happens when the in-memory buffer is full.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::stream_target::{StreamTarget, TargetError};
use super::{invalid, positive, Invalid};

/// One `[[mirror]]` entry: a Kafka topic mirrored into a Kinesis stream.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorRoute {
    pub topic: String,
    /// The stream (`stream`), its region (`region`) and credentials (`role_arn`).
    pub target: StreamTarget,
    pub percent: f64,
    pub partition_key: PartitionKeyRule,
    /// Which system is the record's system of record (`mode`).
    pub mode: RouteMode,
    /// `kinesis-primary`: how long a Produce response waits for Kinesis (`primary_timeout_ms`).
    pub primary_timeout: Duration,
}

/// `primary_timeout_ms` unless set: below the 30 s request timeout of Kafka clients, so the
/// producer hears a retriable error before it gives up on the request itself.
pub const DEFAULT_PRIMARY_TIMEOUT_MS: u64 = 10_000;

/// A route's `mode`: which system a Produce is acknowledged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMode {
    /// Kafka alone; Kinesis gets a copy afterwards (the default).
    Mirror,
    /// Kafka and Kinesis both, before the producer hears back.
    KinesisPrimary,
}

impl RouteMode {
    /// The name `mode` takes in the config, in metrics and in `/routes`.
    pub fn name(self) -> &'static str {
        match self {
            RouteMode::Mirror => "mirror",
            RouteMode::KinesisPrimary => "kinesis-primary",
        }
    }
}

impl fmt::Display for RouteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a record's Kinesis partition key is chosen (rules documented in README and
/// `mirror::partition_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionKeyRule {
    Key,
    Partition,
    Header(String),
}

impl fmt::Display for PartitionKeyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionKeyRule::Key => f.write_str("key"),
            PartitionKeyRule::Partition => f.write_str("partition"),
            PartitionKeyRule::Header(name) => write!(f, "header:{name}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not one of \"key\", \"partition\", \"header:NAME\"")]
pub struct UnknownPartitionKeyRule(String);

impl std::str::FromStr for PartitionKeyRule {
    type Err = UnknownPartitionKeyRule;

    fn from_str(s: &str) -> Result<Self, UnknownPartitionKeyRule> {
        match s {
            "key" => Ok(PartitionKeyRule::Key),
            "partition" => Ok(PartitionKeyRule::Partition),
            _ => match s.strip_prefix("header:") {
                Some(name) if !name.is_empty() => Ok(PartitionKeyRule::Header(name.to_owned())),
                _ => Err(UnknownPartitionKeyRule(s.to_owned())),
            },
        }
    }
}

/// What to do when the in-memory mirror buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Append to the spool and keep Kafka at full speed.
    Spill,
    /// Delay the Kafka responses of routed topics, so producers slow down.
    Block,
    /// Shadow-mode experiments only: drop, count and log.
    Drop,
}

/// How much of an acknowledged Produce exchange survives a crash (`mirror_buffer.durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The exchange is written to the write-ahead log before the client is answered: a killed
    /// process loses nothing, a power loss at most the last fsync interval (the default).
    Wal,
    /// The client is answered once the fsync covering the exchange completes: a power loss
    /// loses nothing the client was told is stored.
    Sync,
    /// No write-ahead log: a crash loses what waits in memory (up to `record_ttl_secs`).
    Memory,
}

impl Durability {
    /// The name `durability` takes in the config.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Wal => "wal",
            Durability::Sync => "sync",
            Durability::Memory => "memory",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MirrorBufferConfig {
    pub max_bytes: u64,
    pub when_full: WhenFull,
    pub durability: Durability,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMirror {
    topic: Spanned<String>,
    stream: Spanned<String>,
    region: Option<Spanned<String>>,
    role_arn: Option<Spanned<String>>,
    percent: Spanned<f64>,
    partition_key: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    primary_timeout_ms: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMirrorBuffer {
    max_bytes: Option<Spanned<u64>>,
    when_full: Option<Spanned<String>>,
    durability: Option<Spanned<String>>,
}

pub(super) fn validate_mirror(raw: Vec<Spanned<RawMirror>>) -> Result<Vec<MirrorRoute>, Invalid> {
    let mut routes: Vec<MirrorRoute> = Vec::with_capacity(raw.len());
    for entry in raw {
        let entry = entry.into_inner();
        let topic = entry.topic.get_ref();
        if topic.is_empty() {
            return invalid(entry.topic.span(), "mirror.topic: must not be empty");
        }
        if routes.iter().any(|r| &r.topic == topic) {
            return invalid(entry.topic.span(), format!("mirror.topic: `{topic}` has more than one [[mirror]] entry; a topic maps to one stream"));
        }
        let target = validate_target(&entry)?;
        if target.spool_dir_name() == super::WAL_DIR_NAME {
            return invalid(entry.stream.span(), format!("mirror.stream (route of topic `{topic}`): a stream named `{}` would share its spool directory with the write-ahead log; name it by its ARN", super::WAL_DIR_NAME));
        }
        let percent = *entry.percent.get_ref();
        if !(0.0..=100.0).contains(&percent) {
            return invalid(
                entry.percent.span(),
                format!("mirror.percent: {percent} for topic `{topic}` is outside 0..=100"),
            );
        }
        let partition_key = match &entry.partition_key {
            None => PartitionKeyRule::Key,
            Some(rule) => rule
                .get_ref()
                .parse()
                .or_else(|e| invalid(rule.span(), format!("mirror.partition_key: {e}")))?,
        };
        let mode = match entry
            .mode
            .as_ref()
            .map(|m| (m.get_ref().as_str(), m.span()))
        {
            None | Some(("mirror", _)) => RouteMode::Mirror,
            Some(("kinesis-primary", _)) => RouteMode::KinesisPrimary,
            Some(("kinesis-only", span)) => {
                return invalid(span, format!("mirror.mode (route of topic `{topic}`): \"kinesis-only\" is not available yet; use \"mirror\" or \"kinesis-primary\""));
            }
            Some((other, span)) => {
                return invalid(span, format!("mirror.mode (route of topic `{topic}`): `{other}` is not one of \"mirror\", \"kinesis-primary\""));
            }
        };
        let primary_timeout = Duration::from_millis(positive(
            entry.primary_timeout_ms.as_ref(),
            DEFAULT_PRIMARY_TIMEOUT_MS,
            "mirror.primary_timeout_ms",
        )?);
        routes.push(MirrorRoute {
            topic: topic.clone(),
            target,
            percent,
            partition_key,
            mode,
            primary_timeout,
        });
    }
    Ok(routes)
}

/// The route's stream, region and role, each refused with its own key's location.
fn validate_target(entry: &RawMirror) -> Result<StreamTarget, Invalid> {
    fn text(key: &Option<Spanned<String>>) -> Option<&str> {
        key.as_ref().map(|k| k.get_ref().as_str())
    }
    let (region, role_arn) = (text(&entry.region), text(&entry.role_arn));
    StreamTarget::new(entry.stream.get_ref(), region, role_arn).or_else(|e| {
        let (key, span) = match &e {
            TargetError::NotAStreamName(_) | TargetError::NotAStreamArn(_) => {
                ("stream", entry.stream.span())
            }
            TargetError::NotARegion(_) | TargetError::RegionConflict { .. } => (
                "region",
                entry
                    .region
                    .as_ref()
                    .map_or(entry.stream.span(), Spanned::span),
            ),
            TargetError::NotARoleArn(_) => (
                "role_arn",
                entry
                    .role_arn
                    .as_ref()
                    .map_or(entry.stream.span(), Spanned::span),
            ),
        };
        let topic = entry.topic.get_ref();
        invalid(
            span,
            format!("mirror.{key} (route of topic `{topic}`): {e}"),
        )
    })
}

pub(super) fn validate_mirror_buffer(
    raw: Option<RawMirrorBuffer>,
) -> Result<MirrorBufferConfig, Invalid> {
    let (max_bytes, when_full, durability) = raw.map_or((None, None, None), |r| {
        (r.max_bytes, r.when_full, r.durability)
    });
    let max_bytes = positive(
        max_bytes.as_ref(),
        256 * 1024 * 1024,
        "mirror_buffer.max_bytes",
    )?;
    let when_full = match &when_full {
        None => WhenFull::Spill,
        Some(w) => match w.get_ref().as_str() {
            "spill" => WhenFull::Spill,
            "block" => WhenFull::Block,
            "drop" => WhenFull::Drop,
            other => {
                return invalid(
                    w.span(),
                    format!(
                    "mirror_buffer.when_full: `{other}` is not \"spill\", \"block\" or \"drop\""
                ),
                )
            }
        },
    };
    let durability = match &durability {
        None => Durability::Wal,
        Some(d) => match d.get_ref().as_str() {
            "wal" => Durability::Wal,
            "sync" => Durability::Sync,
            "memory" => Durability::Memory,
            other => {
                return invalid(
                    d.span(),
                    format!(
                        "mirror_buffer.durability: `{other}` is not \"wal\", \"sync\" or \"memory\""
                    ),
                )
            }
        },
    };
    Ok(MirrorBufferConfig {
        max_bytes,
        when_full,
        durability,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{parse, BASE};

    /// `BASE` with a spool and one route to `orders` whose keys are `route`.
    fn with_route(route: &str) -> String {
        format!("{BASE}[spool]\ndir = \"/tmp/s\"\n[[mirror]]\ntopic = \"orders\"\npercent = 10\n{route}")
    }

    #[test]
    fn a_route_names_its_stream_by_arn_with_its_own_region_and_role() {
        let arn = "arn:aws:kinesis:eu-west-1:123456789012:stream/orders";
        let role = "arn:aws:iam::123456789012:role/mirror";
        let config = parse(&with_route(&format!(
            "stream = \"{arn}\"\nrole_arn = \"{role}\"\n"
        )))
        .unwrap();
        let target = &config.mirror[0].target;
        assert_eq!(
            (target.arn(), target.region(), target.role_arn()),
            (Some(arn), Some("eu-west-1"), Some(role))
        );
        let config = parse(&with_route(
            "stream = \"orders\"\nregion = \"ap-south-1\"\n",
        ))
        .unwrap();
        assert_eq!(config.mirror[0].target.region(), Some("ap-south-1"));
        assert_eq!(config.mirror[0].target.arn(), None);
    }

    #[test]
    fn bad_route_keys_are_refused_naming_the_route_the_key_and_its_line() {
        let arn = "arn:aws:kinesis:eu-west-1:123456789012:stream/orders";
        let cases = [
            (
                "stream = \"arn:aws:kinesis:eu-west-1:1234:stream/orders\"\n".to_owned(),
                "proxy.toml:9: mirror.stream (route of topic `orders`): ",
                "not a Kinesis stream ARN",
            ),
            (
                format!("stream = \"{arn}\"\nregion = \"us-east-1\"\n"),
                "proxy.toml:10: mirror.region (route of topic `orders`): ",
                "conflicts with the stream ARN's region `eu-west-1`",
            ),
            (
                "stream = \"orders\"\nregion = \"\"\n".to_owned(),
                "proxy.toml:10: mirror.region (route of topic `orders`): ",
                "not an AWS region",
            ),
            (
                "stream = \"orders\"\nrole_arn = \"arn:aws:iam::123456789012:user/me\"\n"
                    .to_owned(),
                "proxy.toml:10: mirror.role_arn (route of topic `orders`): ",
                "not an IAM role ARN",
            ),
        ];
        for (route, prefix, cause) in cases {
            let err = parse(&with_route(&route)).unwrap_err();
            assert!(err.starts_with(prefix) && err.contains(cause), "{err}");
        }
    }

    #[test]
    fn mode_defaults_to_mirror_and_kinesis_only_is_refused_naming_the_route() {
        let config = parse(&with_route("stream = \"orders\"\n")).unwrap();
        assert_eq!(config.mirror[0].mode, RouteMode::Mirror);
        assert_eq!(config.mirror[0].primary_timeout, Duration::from_secs(10));
        let config = parse(&with_route(
            "stream = \"orders\"\nmode = \"kinesis-primary\"\nprimary_timeout_ms = 2500\n",
        ))
        .unwrap();
        assert_eq!(config.mirror[0].mode, RouteMode::KinesisPrimary);
        assert_eq!(
            config.mirror[0].primary_timeout,
            Duration::from_millis(2500)
        );
        let err = parse(&with_route(
            "stream = \"orders\"\nmode = \"kinesis-only\"\n",
        ))
        .unwrap_err();
        assert!(
            err.contains("route of topic `orders`") && err.contains("not available yet"),
            "{err}"
        );
        let err = parse(&with_route("stream = \"orders\"\nmode = \"primary\"\n")).unwrap_err();
        assert!(err.contains("`primary` is not one of"), "{err}");
    }

    #[test]
    fn durability_defaults_to_wal_and_unknown_modes_are_refused() {
        let config = parse(&with_route("stream = \"orders\"\n")).unwrap();
        assert_eq!(config.mirror_buffer.durability, Durability::Wal);
        for mode in [Durability::Wal, Durability::Sync, Durability::Memory] {
            let text = format!("{BASE}[mirror_buffer]\ndurability = \"{}\"\n", mode.name());
            assert_eq!(parse(&text).unwrap().mirror_buffer.durability, mode);
        }
        let err = parse(&with_route("stream = \"wal\"\n")).unwrap_err();
        assert!(err.contains("share its spool directory"), "{err}");
        let err = parse(&format!("{BASE}[mirror_buffer]\ndurability = \"disk\"\n")).unwrap_err();
        assert!(err.contains("mirror_buffer.durability: `disk`"), "{err}");
    }

    #[test]
    fn rules_parse() {
        assert_eq!("key".parse(), Ok(PartitionKeyRule::Key));
        assert_eq!("partition".parse(), Ok(PartitionKeyRule::Partition));
        assert_eq!(
            "header:tenant".parse(),
            Ok(PartitionKeyRule::Header("tenant".into()))
        );
        assert!("header:".parse::<PartitionKeyRule>().is_err());
        assert!("value".parse::<PartitionKeyRule>().is_err());
        for text in ["key", "partition", "header:tenant"] {
            assert_eq!(text.parse::<PartitionKeyRule>().unwrap().to_string(), text);
        }
    }
}
