//! The TOML configuration: parsing, defaults and validation.
//!
//! Every error names the file, the line and the key, because an operator editing the file during
//! a cutover must be able to fix it without reading source code. Unknown keys are errors: a typo
//! that silently disables a setting is worse than a refusal to start.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::mirror::partition_key::PartitionKeyRule;

mod sasl;
mod tls;

pub use sasl::{KafkaSaslConfig, Password, PasswordError, PasswordSource, SaslMechanism};
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

#[derive(Debug, Clone, PartialEq)]
pub struct MirrorBufferConfig {
    pub max_bytes: u64,
    pub when_full: WhenFull,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpoolConfig {
    /// Spool segments and the dead-letter file live here; required once routes exist.
    pub dir: Option<PathBuf>,
    pub max_bytes: u64,
}

impl SpoolConfig {
    /// The JSON-lines file of records that can never be delivered.
    pub fn dead_letter_file(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join("dead-letters.jsonl"))
    }
}

/// Ordering guarantee of the Kinesis writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOrdering {
    /// A key's records reach its shard in Kafka order, even across retries.
    PerKey,
    /// Throughput first: retries may reorder records.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub bind: std::net::SocketAddr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KinesisConfig {
    /// `None`: aws-config's region chain (AWS_REGION, profile, IMDS).
    pub region: Option<String>,
    /// `None`: normal AWS endpoint resolution, including AWS_ENDPOINT_URL_KINESIS.
    pub endpoint_url: Option<String>,
    pub linger: Duration,
    pub max_in_flight_requests: usize,
    pub max_attempts: u32,
    pub shard_map_refresh: Duration,
    /// Per-attempt PutRecords timeout.
    pub request_timeout: Duration,
    pub ordering: WriteOrdering,
    /// Scales each shard's 1,000 records/s and 1 MiB/s token bucket.
    pub shard_rate_factor: f64,
    /// After this long in memory a record leaves the memory queue for the spool.
    pub record_ttl: Duration,
}

/// One `[[mirror]]` entry: a Kafka topic mirrored into a Kinesis stream.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorRoute {
    pub topic: String,
    pub stream: String,
    pub percent: f64,
    pub partition_key: PartitionKeyRule,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub bind: IpAddr,
    pub advertised_host: String,
    pub bootstrap_port: u16,
    pub broker_ports: BrokerPortMap,
    pub max_frame_bytes: usize,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// `None`: clients speak plain TCP.
    pub tls: Option<ListenerTlsConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KafkaConfig {
    pub bootstrap_servers: Vec<String>,
    pub connect_timeout: Duration,
    /// `None`: the proxy connects to brokers in plain TCP.
    pub tls: Option<KafkaTlsConfig>,
    /// Credentials of the proxy's own connections; `None`: they do not authenticate.
    pub sasl: Option<KafkaSaslConfig>,
}

/// How upstream broker node ids map to proxy ports: an explicit entry wins, otherwise
/// `base + node_id`. Deterministic, so clients that cached metadata reconnect to the same ports
/// after a proxy restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerPortMap {
    pub base: u16,
    pub explicit: BTreeMap<i32, u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortMapError {
    #[error("broker node id {node_id} maps to port {port}, outside 1..=65535; set listener.broker_ports = {{ {node_id} = PORT }} or lower listener.broker_port_base")]
    OutOfRange { node_id: i32, port: i64 },
    #[error("broker node id {node_id} maps to port {port}, which is already used by {other}; add listener.broker_ports = {{ {node_id} = PORT }}")]
    Collision {
        node_id: i32,
        port: u16,
        other: String,
    },
}

impl BrokerPortMap {
    /// The proxy port that serves `node_id`, checked against every other port the proxy owns.
    pub fn port_for(&self, node_id: i32, bootstrap_port: u16) -> Result<u16, PortMapError> {
        if let Some(port) = self.explicit.get(&node_id) {
            return Ok(*port);
        }
        let port = i64::from(self.base) + i64::from(node_id);
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(PortMapError::OutOfRange { node_id, port })?;
        if port == bootstrap_port {
            return Err(PortMapError::Collision {
                node_id,
                port,
                other: "listener.bootstrap_port".into(),
            });
        }
        if let Some((other, _)) = self.explicit.iter().find(|(_, p)| **p == port) {
            return Err(PortMapError::Collision {
                node_id,
                port,
                other: format!("listener.broker_ports entry for node {other}"),
            });
        }
        Ok(port)
    }
}

pub const DEFAULT_MAX_FRAME_BYTES: usize = 100 * 1024 * 1024;

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
    listener: Spanned<RawListener>,
    kafka: Spanned<RawKafka>,
    admin: Option<RawAdmin>,
    kinesis: Option<RawKinesis>,
    #[serde(default)]
    mirror: Vec<Spanned<RawMirror>>,
    mirror_buffer: Option<RawMirrorBuffer>,
    spool: Option<Spanned<RawSpool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMirrorBuffer {
    max_bytes: Option<Spanned<u64>>,
    when_full: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    dir: Option<Spanned<String>>,
    max_bytes: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    bind: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKinesis {
    region: Option<Spanned<String>>,
    endpoint_url: Option<Spanned<String>>,
    linger_ms: Option<Spanned<u64>>,
    max_in_flight_requests: Option<Spanned<u64>>,
    max_attempts: Option<Spanned<u64>>,
    shard_map_refresh_secs: Option<Spanned<u64>>,
    request_timeout_ms: Option<Spanned<u64>>,
    ordering: Option<Spanned<String>>,
    shard_rate_factor: Option<Spanned<f64>>,
    record_ttl_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMirror {
    topic: Spanned<String>,
    stream: Spanned<String>,
    percent: Spanned<f64>,
    partition_key: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    bind: Option<Spanned<String>>,
    advertised_host: Option<Spanned<String>>,
    bootstrap_port: Option<Spanned<u16>>,
    broker_port_base: Option<Spanned<u16>>,
    #[serde(default)]
    broker_ports: BTreeMap<Spanned<String>, Spanned<u16>>,
    max_frame_bytes: Option<Spanned<u64>>,
    idle_timeout_secs: Option<Spanned<u64>>,
    max_connections: Option<Spanned<u64>>,
    tls: Option<tls::RawListenerTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    bootstrap_servers: Spanned<Vec<Spanned<String>>>,
    connect_timeout_ms: Option<Spanned<u64>>,
    tls: Option<tls::RawKafkaTls>,
    sasl: Option<Spanned<sasl::RawKafkaSasl>>,
}

impl RawConfig {
    fn validate(self) -> Result<Config, Invalid> {
        let listener_span = self.listener.span();
        let listener = validate_listener(self.listener.into_inner(), listener_span)?;
        let kafka = validate_kafka(self.kafka.into_inner())?;
        let admin = validate_admin(self.admin, &listener)?;
        let kinesis = validate_kinesis(self.kinesis)?;
        let mirror = validate_mirror(self.mirror)?;
        let mirror_buffer = validate_mirror_buffer(self.mirror_buffer)?;
        let spool = validate_spool(self.spool, !mirror.is_empty())?;
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

fn validate_admin(
    raw: Option<RawAdmin>,
    listener: &ListenerConfig,
) -> Result<AdminConfig, Invalid> {
    let Some(bind) = raw.and_then(|a| a.bind) else {
        return Ok(AdminConfig {
            bind: ([127, 0, 0, 1], 9464).into(),
        });
    };
    let addr = bind
        .get_ref()
        .parse::<std::net::SocketAddr>()
        .or_else(|_| {
            invalid(
                bind.span(),
                format!("admin.bind: `{}` is not IP:PORT", bind.get_ref()),
            )
        })?;
    if addr.port() == listener.bootstrap_port
        || listener
            .broker_ports
            .explicit
            .values()
            .any(|p| *p == addr.port())
    {
        return invalid(
            bind.span(),
            format!(
                "admin.bind: port {} collides with a Kafka listener port",
                addr.port()
            ),
        );
    }
    Ok(AdminConfig { bind: addr })
}

fn validate_kinesis(raw: Option<RawKinesis>) -> Result<KinesisConfig, Invalid> {
    let raw = raw.unwrap_or(RawKinesis {
        region: None,
        endpoint_url: None,
        linger_ms: None,
        max_in_flight_requests: None,
        max_attempts: None,
        shard_map_refresh_secs: None,
        request_timeout_ms: None,
        ordering: None,
        shard_rate_factor: None,
        record_ttl_secs: None,
    });
    if let Some(url) = &raw.endpoint_url {
        let u = url.get_ref();
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return invalid(
                url.span(),
                format!("kinesis.endpoint_url: `{u}` must start with http:// or https://"),
            );
        }
    }
    if let Some(region) = &raw.region {
        if region.get_ref().trim().is_empty() {
            return invalid(region.span(), "kinesis.region: must not be empty");
        }
    }
    let linger_ms = match &raw.linger_ms {
        None => 50,
        Some(v) => *v.get_ref(),
    };
    let ordering = match &raw.ordering {
        None => WriteOrdering::PerKey,
        Some(o) => match o.get_ref().as_str() {
            "per-key" => WriteOrdering::PerKey,
            "none" => WriteOrdering::None,
            other => {
                return invalid(
                    o.span(),
                    format!("kinesis.ordering: `{other}` is not \"per-key\" or \"none\""),
                )
            }
        },
    };
    let shard_rate_factor = match &raw.shard_rate_factor {
        None => 1.0,
        Some(f) if *f.get_ref() > 0.0 && f.get_ref().is_finite() => *f.get_ref(),
        Some(f) => {
            return invalid(
                f.span(),
                "kinesis.shard_rate_factor: must be greater than 0",
            )
        }
    };
    let record_ttl_secs = positive(raw.record_ttl_secs.as_ref(), 600, "kinesis.record_ttl_secs")?;
    Ok(KinesisConfig {
        region: raw.region.map(Spanned::into_inner),
        endpoint_url: raw.endpoint_url.map(Spanned::into_inner),
        linger: Duration::from_millis(linger_ms),
        max_in_flight_requests: positive(
            raw.max_in_flight_requests.as_ref(),
            16,
            "kinesis.max_in_flight_requests",
        )? as usize,
        max_attempts: positive(raw.max_attempts.as_ref(), 10, "kinesis.max_attempts")?
            .min(u64::from(u32::MAX)) as u32,
        shard_map_refresh: Duration::from_secs(positive(
            raw.shard_map_refresh_secs.as_ref(),
            60,
            "kinesis.shard_map_refresh_secs",
        )?),
        ordering,
        shard_rate_factor,
        record_ttl: Duration::from_secs(record_ttl_secs),
        request_timeout: Duration::from_millis(positive(
            raw.request_timeout_ms.as_ref(),
            30_000,
            "kinesis.request_timeout_ms",
        )?),
    })
}

fn validate_mirror_buffer(raw: Option<RawMirrorBuffer>) -> Result<MirrorBufferConfig, Invalid> {
    let (max_bytes, when_full) = raw.map_or((None, None), |r| (r.max_bytes, r.when_full));
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
    Ok(MirrorBufferConfig {
        max_bytes,
        when_full,
    })
}

fn validate_spool(
    raw: Option<Spanned<RawSpool>>,
    has_routes: bool,
) -> Result<SpoolConfig, Invalid> {
    let span = raw.as_ref().map(|r| r.span());
    let raw = raw.map(Spanned::into_inner);
    let (dir, max_bytes) = raw.map_or((None, None), |r| (r.dir, r.max_bytes));
    let dir = match dir {
        Some(d) if d.get_ref().trim().is_empty() => return invalid(d.span(), "spool.dir: must not be empty"),
        Some(d) => Some(PathBuf::from(d.into_inner())),
        None if has_routes => {
            return Err((
                span,
                "spool.dir: required when [[mirror]] routes exist, so records Kinesis cannot take have a durable place (add [spool] dir = \"/var/lib/kafka-kinesis-proxy\")".to_owned(),
            ))
        }
        None => None,
    };
    let max_bytes = positive(
        max_bytes.as_ref(),
        10 * 1024 * 1024 * 1024,
        "spool.max_bytes",
    )?;
    Ok(SpoolConfig { dir, max_bytes })
}

fn validate_mirror(raw: Vec<Spanned<RawMirror>>) -> Result<Vec<MirrorRoute>, Invalid> {
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
        let stream = entry.stream.get_ref();
        let valid_stream = (1..=128).contains(&stream.len())
            && stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid_stream {
            return invalid(entry.stream.span(), format!("mirror.stream: `{stream}` is not a Kinesis stream name (1-128 of a-z A-Z 0-9 _ . -)"));
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
        routes.push(MirrorRoute {
            topic: topic.clone(),
            stream: stream.clone(),
            percent,
            partition_key,
        });
    }
    Ok(routes)
}

fn validate_listener(raw: RawListener, section: Range<usize>) -> Result<ListenerConfig, Invalid> {
    let bind = match &raw.bind {
        None => IpAddr::from([127, 0, 0, 1]),
        Some(b) => match b.get_ref().parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => {
                return invalid(
                    b.span(),
                    format!("listener.bind: `{}` is not an IP address", b.get_ref()),
                )
            }
        },
    };
    let advertised_host = match raw.advertised_host {
        Some(h) if h.get_ref().trim().is_empty() => {
            return invalid(h.span(), "listener.advertised_host: must not be empty")
        }
        Some(h) => h.into_inner(),
        None if bind.is_unspecified() => {
            return invalid(
                section,
                format!("listener.advertised_host: required when listener.bind is {bind}, because clients cannot connect to that address"),
            )
        }
        None => bind.to_string(),
    };
    let bootstrap_port = positive_port(raw.bootstrap_port.as_ref(), 19092, "bootstrap_port")?;
    let base = positive_port(raw.broker_port_base.as_ref(), 19100, "broker_port_base")?;

    let mut explicit = BTreeMap::new();
    let mut owners: BTreeMap<u16, String> = BTreeMap::new();
    owners.insert(bootstrap_port, "listener.bootstrap_port".into());
    for (node, port) in &raw.broker_ports {
        let node_id = match node.get_ref().parse::<i32>() {
            Ok(id) if id >= 0 => id,
            _ => {
                return invalid(
                    node.span(),
                    format!(
                        "listener.broker_ports: key `{}` is not a broker node id (a non-negative integer)",
                        node.get_ref()
                    ),
                )
            }
        };
        let p = *port.get_ref();
        if p == 0 {
            return invalid(
                port.span(),
                format!("listener.broker_ports.{node_id}: port must be 1..=65535"),
            );
        }
        let owner = format!("listener.broker_ports.{node_id}");
        if let Some(previous) = owners.insert(p, owner.clone()) {
            return invalid(
                port.span(),
                format!("{owner}: port {p} collides with {previous}"),
            );
        }
        explicit.insert(node_id, p);
    }

    let max_frame_bytes = match &raw.max_frame_bytes {
        None => DEFAULT_MAX_FRAME_BYTES,
        Some(v) if *v.get_ref() < 1024 || *v.get_ref() > i32::MAX as u64 => {
            return invalid(
                v.span(),
                "listener.max_frame_bytes: must be between 1024 and 2147483647",
            )
        }
        Some(v) => *v.get_ref() as usize,
    };
    let idle_timeout_secs = positive(
        raw.idle_timeout_secs.as_ref(),
        600,
        "listener.idle_timeout_secs",
    )?;
    let max_connections = positive(
        raw.max_connections.as_ref(),
        10_000,
        "listener.max_connections",
    )?;

    Ok(ListenerConfig {
        bind,
        advertised_host,
        bootstrap_port,
        broker_ports: BrokerPortMap { base, explicit },
        max_frame_bytes,
        idle_timeout: Duration::from_secs(idle_timeout_secs),
        max_connections: max_connections as usize,
        tls: raw.tls.map(tls::validate_listener_tls).transpose()?,
    })
}

fn validate_kafka(raw: RawKafka) -> Result<KafkaConfig, Invalid> {
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

fn positive(value: Option<&Spanned<u64>>, default: u64, key: &str) -> Result<u64, Invalid> {
    match value {
        None => Ok(default),
        Some(v) if *v.get_ref() == 0 => invalid(v.span(), format!("{key}: must be greater than 0")),
        Some(v) => Ok(*v.get_ref()),
    }
}

fn positive_port(value: Option<&Spanned<u16>>, default: u16, key: &str) -> Result<u16, Invalid> {
    match value {
        None => Ok(default),
        Some(v) if *v.get_ref() == 0 => {
            invalid(v.span(), format!("listener.{key}: port must be 1..=65535"))
        }
        Some(v) => Ok(*v.get_ref()),
    }
}

impl fmt::Display for Config {
    /// The one-screen summary printed by `check-config`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.listener;
        writeln!(f, "listener")?;
        writeln!(f, "  bind              {}", l.bind)?;
        writeln!(f, "  advertised_host   {}", l.advertised_host)?;
        writeln!(f, "  bootstrap_port    {}", l.bootstrap_port)?;
        writeln!(f, "  broker ports      {} + node id", l.broker_ports.base)?;
        for (node, port) in &l.broker_ports.explicit {
            writeln!(f, "    node {node:<10} -> {port}")?;
        }
        writeln!(f, "  max_frame_bytes   {}", l.max_frame_bytes)?;
        writeln!(f, "  idle_timeout      {}s", l.idle_timeout.as_secs())?;
        writeln!(f, "  max_connections   {}", l.max_connections)?;
        if let Some(tls) = &l.tls {
            write!(f, "{tls}")?;
        }
        writeln!(f, "kafka")?;
        writeln!(
            f,
            "  bootstrap_servers {}",
            self.kafka.bootstrap_servers.join(", ")
        )?;
        writeln!(
            f,
            "  connect_timeout   {}ms",
            self.kafka.connect_timeout.as_millis()
        )?;
        if let Some(tls) = &self.kafka.tls {
            write!(f, "{tls}")?;
        }
        if let Some(sasl) = &self.kafka.sasl {
            write!(f, "{sasl}")?;
        }
        writeln!(f, "admin")?;
        writeln!(f, "  bind              {}", self.admin.bind)?;
        let k = &self.kinesis;
        writeln!(f, "kinesis")?;
        writeln!(
            f,
            "  region            {}",
            k.region.as_deref().unwrap_or("(AWS default chain)")
        )?;
        writeln!(
            f,
            "  endpoint_url      {}",
            k.endpoint_url
                .as_deref()
                .unwrap_or("(AWS default resolution)")
        )?;
        writeln!(
            f,
            "  linger            {}ms, {} requests in flight, {} attempts",
            k.linger.as_millis(),
            k.max_in_flight_requests,
            k.max_attempts
        )?;
        writeln!(
            f,
            "  ordering          {:?}, shard rate x{}, record ttl {}s",
            k.ordering,
            k.shard_rate_factor,
            k.record_ttl.as_secs()
        )?;
        writeln!(
            f,
            "mirror_buffer       {} bytes, when full: {:?}",
            self.mirror_buffer.max_bytes, self.mirror_buffer.when_full
        )?;
        match &self.spool.dir {
            Some(dir) => writeln!(
                f,
                "spool               {} (max {} bytes)",
                dir.display(),
                self.spool.max_bytes
            )?,
            None => writeln!(f, "spool               (none: no routes)")?,
        }
        writeln!(f, "mirror routes       {}", self.mirror.len())?;
        for r in &self.mirror {
            writeln!(
                f,
                "  {} -> {}  {}%  partition_key={:?}",
                r.topic, r.stream, r.percent, r.partition_key
            )?;
        }
        Ok(())
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

    #[test]
    fn port_for_node_checks_range_and_collisions() {
        let map = BrokerPortMap {
            base: 65000,
            explicit: BTreeMap::from([(7, 65001)]),
        };
        assert_eq!(map.port_for(7, 19092), Ok(65001));
        assert_eq!(map.port_for(2, 19092), Ok(65002));
        assert!(matches!(
            map.port_for(1, 19092),
            Err(PortMapError::Collision { .. })
        ));
        assert!(matches!(
            map.port_for(600, 19092),
            Err(PortMapError::OutOfRange { .. })
        ));
        assert!(matches!(
            map.port_for(0, 65000),
            Err(PortMapError::Collision { .. })
        ));
    }
}
