//! The TOML configuration: parsing, defaults and validation.
//!
//! Every error names the file, the line and the key, because an operator editing the file during
//! a cutover must be able to fix it without reading source code. Unknown keys are errors: a typo
//! that silently disables a setting is worse than a refusal to start.
//!
//! Configuration is the floor of the crate: every stage may import it, and it imports nothing
//! above it. Each section's types, parsing and validation live in that section's file.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

mod admin;
mod display;
mod kafka;
mod kinesis;
mod listener;
mod mirror;
mod sasl;
mod stream_target;
mod tls;

pub use admin::{
    AdminConfig, DeadLetterLimits, SpoolConfig, DEFAULT_FSYNC_BYTES, DEFAULT_FSYNC_INTERVAL_MS,
    DEFAULT_MAX_TOPIC_LABELS, WAL_DIR_NAME,
};
pub use kafka::KafkaConfig;
pub use kinesis::{KinesisConfig, WriteOrdering};
pub use listener::{
    BrokerPortMap, ListenerConfig, PortMapError, DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_UNAUTHENTICATED_FRAME_BYTES,
};
pub use mirror::{
    Durability, MirrorBufferConfig, MirrorRoute, PartitionKeyRule, RouteMode,
    UnknownPartitionKeyRule, WhenFull, DEFAULT_PRIMARY_TIMEOUT_MS,
};
pub use sasl::{KafkaSaslConfig, Password, PasswordError, PasswordSource, SaslMechanism};
pub use stream_target::{spool_dir_of_label, stream_of_label, StreamTarget, TargetError};
pub use tls::{ClientCertificate, KafkaTlsConfig, ListenerTlsConfig, DEFAULT_HANDSHAKE_TIMEOUT};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listener: ListenerConfig,
    pub kafka: KafkaConfig,
    pub admin: AdminConfig,
    /// How long a SIGTERM waits for in-flight work before spooling what is left.
    pub shutdown_grace: Duration,
    pub kinesis: KinesisConfig,
    pub mirror: Vec<MirrorRoute>,
    pub mirror_buffer: MirrorBufferConfig,
    pub spool: SpoolConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0)]
    Invalid(Located),
}

/// A problem at a place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

impl Config {
    /// The sections that cannot change while the proxy runs and differ between `self` and
    /// `new`: listeners, upstream connections and the Kinesis client are built once.
    pub fn restart_required(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.listener != new.listener {
            changed.push("listener");
        }
        if self.kafka != new.kafka {
            changed.push("kafka");
        }
        if self.admin != new.admin {
            changed.push("admin");
        }
        if self.kinesis != new.kinesis {
            changed.push("kinesis");
        }
        if self.mirror_buffer != new.mirror_buffer {
            changed.push("mirror_buffer");
        }
        if self.spool != new.spool {
            changed.push("spool");
        }
        changed
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let locate = |span: Option<Range<usize>>, message: String| {
            ConfigError::Invalid(Located {
                path: path.to_owned(),
                line: span.map_or(1, |s| line_of(text, s.start)),
                message,
            })
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // toml's own message repeats the source snippet; keep the first line only.
            let message = e.message().lines().next().unwrap_or_default().to_string();
            locate(e.span(), message)
        })?;
        raw.validate()
            .map_err(|(span, message)| locate(span, message))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

type Invalid = (Option<Range<usize>>, String);

fn invalid<T>(span: Range<usize>, message: impl Into<String>) -> Result<T, Invalid> {
    Err((Some(span), message.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    shutdown_grace_secs: Option<Spanned<u64>>,
    listener: Spanned<listener::RawListener>,
    kafka: Spanned<kafka::RawKafka>,
    admin: Option<admin::RawAdmin>,
    kinesis: Option<kinesis::RawKinesis>,
    #[serde(default)]
    mirror: Vec<Spanned<mirror::RawMirror>>,
    mirror_buffer: Option<mirror::RawMirrorBuffer>,
    spool: Option<Spanned<admin::RawSpool>>,
}

impl RawConfig {
    fn validate(self) -> Result<Config, Invalid> {
        let listener_span = self.listener.span();
        let listener = listener::validate_listener(self.listener.into_inner(), listener_span)?;
        let kafka = kafka::validate_kafka(self.kafka.into_inner())?;
        let admin = admin::validate_admin(self.admin, &listener)?;
        let kinesis = kinesis::validate_kinesis(self.kinesis)?;
        let mirror = mirror::validate_mirror(self.mirror)?;
        let mirror_buffer = mirror::validate_mirror_buffer(self.mirror_buffer)?;
        let spool = admin::validate_spool(self.spool, !mirror.is_empty())?;
        let shutdown_grace = Duration::from_secs(positive(
            self.shutdown_grace_secs.as_ref(),
            30,
            "shutdown_grace_secs",
        )?);
        Ok(Config {
            listener,
            kafka,
            admin,
            shutdown_grace,
            kinesis,
            mirror,
            mirror_buffer,
            spool,
        })
    }
}

fn positive(value: Option<&Spanned<u64>>, default: u64, key: &str) -> Result<u64, Invalid> {
    match value {
        None => Ok(default),
        Some(v) if *v.get_ref() == 0 => invalid(v.span(), format!("{key}: must be greater than 0")),
        Some(v) => Ok(*v.get_ref()),
    }
}

/// Parsing helpers shared by the unit tests of every config section.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::Path;

    use super::Config;

    /// `text` parsed as `proxy.toml`, with the error as its message.
    pub(crate) fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("proxy.toml"), text).map_err(|e| e.to_string())
    }

    /// The smallest valid config, for a section's test to append its table to.
    pub(crate) const BASE: &str = "[listener]\n[kafka]\nbootstrap_servers = [\"a:1\"]\n";
}

#[cfg(test)]
mod tests {
    use super::test_support::parse;
    use super::*;

    const MINIMAL: &str =
        "[listener]\nbootstrap_port = 19092\n[kafka]\nbootstrap_servers = [\"127.0.0.1:9092\"]\n";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.listener.bind.to_string(), "127.0.0.1");
        assert_eq!(c.listener.advertised_host, "127.0.0.1");
        assert_eq!(c.listener.broker_ports.base, 19100);
        assert_eq!(c.listener.max_frame_bytes, 100 * 1024 * 1024);
        assert_eq!(c.kafka.bootstrap_servers, vec!["127.0.0.1:9092"]);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("[listener]\nbootstrap_port = 19092\nbootstrap_prot = 1\n[kafka]\nbootstrap_servers = [\"a:1\"]\n")
            .unwrap_err();
        assert!(err.starts_with("proxy.toml:3: "), "{err}");
        assert!(err.contains("bootstrap_prot"), "{err}");
    }

    #[test]
    fn explicit_port_colliding_with_bootstrap_is_rejected() {
        let err = parse("[listener]\nbootstrap_port = 19092\nbroker_ports = { 1001 = 19092 }\n[kafka]\nbootstrap_servers = [\"a:1\"]\n")
            .unwrap_err();
        assert!(err.starts_with("proxy.toml:3: "), "{err}");
        assert!(
            err.contains("collides with listener.bootstrap_port"),
            "{err}"
        );
    }

    #[test]
    fn bad_node_id_and_bad_server_are_located() {
        let err =
            parse("[listener]\nbroker_ports = { x = 1 }\n[kafka]\nbootstrap_servers = [\"a:1\"]\n")
                .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:2: ") && err.contains("`x`"),
            "{err}"
        );
        let err =
            parse("[listener]\n[kafka]\nbootstrap_servers = [\n  \"a:1\",\n  \"nohost\",\n]\n")
                .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:5: ") && err.contains("`nohost`"),
            "{err}"
        );
    }

    #[test]
    fn unspecified_bind_requires_advertised_host() {
        let err = parse("[listener]\nbind = \"0.0.0.0\"\n[kafka]\nbootstrap_servers = [\"a:1\"]\n")
            .unwrap_err();
        assert!(err.contains("listener.advertised_host: required"), "{err}");
    }

    #[test]
    fn mirror_routes_are_validated_with_locations() {
        let base = "[listener]\n[kafka]\nbootstrap_servers = [\"a:1\"]\n[kinesis]\nregion = \"us-east-1\"\n[spool]\ndir = \"/tmp/s\"\n";
        let ok = parse(&format!("{base}[[mirror]]\ntopic = \"orders\"\nstream = \"orders-stream\"\npercent = 25.5\npartition_key = \"header:tenant\"\n")).unwrap();
        assert_eq!(ok.mirror[0].percent, 25.5);
        assert_eq!(
            ok.mirror[0].partition_key,
            PartitionKeyRule::Header("tenant".into())
        );
        assert_eq!(ok.kinesis.linger, Duration::from_millis(50));
        let err = parse(&format!(
            "{base}[[mirror]]\ntopic = \"orders\"\nstream = \"s\"\npercent = 101\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("proxy.toml:11: ") && err.contains("101"),
            "{err}"
        );
        let err = parse(&format!("{base}[[mirror]]\ntopic = \"t\"\nstream = \"s\"\npercent = 1\n[[mirror]]\ntopic = \"t\"\nstream = \"s2\"\npercent = 1\n")).unwrap_err();
        assert!(
            err.starts_with("proxy.toml:13: ") && err.contains("more than one"),
            "{err}"
        );
        let err = parse(&format!("{base}[[mirror]]\ntopic = \"t\"\nstream = \"s\"\npercent = 1\npartition_key = \"value\"\n")).unwrap_err();
        assert!(
            err.starts_with("proxy.toml:12: ") && err.contains("partition_key"),
            "{err}"
        );
        let err = parse(&format!(
            "{base}[[mirror]]\ntopic = \"t\"\nstream = \"bad name\"\npercent = 1\n"
        ))
        .unwrap_err();
        assert!(err.starts_with("proxy.toml:10: "), "{err}");
        let no_spool = "[listener]\n[kafka]\nbootstrap_servers = [\"a:1\"]\n[[mirror]]\ntopic = \"t\"\nstream = \"s\"\npercent = 1\n";
        assert!(parse(no_spool).unwrap_err().contains("spool.dir: required"));
        let err = parse(&format!("{base}[mirror_buffer]\nwhen_full = \"wait\"\n")).unwrap_err();
        assert!(
            err.starts_with("proxy.toml:9: ") && err.contains("when_full"),
            "{err}"
        );
    }
}
