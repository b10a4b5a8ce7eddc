//! `verify`: checks that a topic's stream holds exactly what the mirror should have put there.
//!
//! It reads the stream to its tip first and the topic second, so that every record in the
//! stream has its origin in what is read from Kafka: the mirror sends a record only after Kafka
//! accepted it. Which records should be there is decided by the mirror's own sampling and
//! partition-key functions (`mirror::sampling`, `mirror::partition_key`).

use std::fmt;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::{Config, PartitionKeyRule, PasswordError, StreamTarget, TargetError};
use crate::kinesis::client::{Clients, StreamError};

mod compare;
mod kafka_read;
mod kinesis_read;
mod report;

pub use report::Report;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the config has no [kafka]: verify compares a Kafka topic with its stream, and a standalone proxy has no Kafka to read")]
    NoKafka,
    #[error("topic `{0}` has no [[mirror]] route in the config: pass --stream")]
    NoRoute(String),
    #[error("--percent {0} is outside 0..=100")]
    Percent(f64),
    #[error("the window is empty: it starts at {from} and ends at {until}")]
    EmptyWindow { from: String, until: String },
    #[error("kafka.tls.server_name is not supported by verify's Kafka client (librdkafka checks the name each broker advertises)")]
    ServerNameUnsupported,
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// Its message already holds its cause; not a source, so that it is not printed twice.
    #[error("{0}")]
    TlsFiles(crate::proxy::TlsError),
    #[error("TLS with the brokers failed, with {trust}: {reason}")]
    KafkaTls { trust: String, reason: String },
    #[error("the brokers refused SASL {mechanism} as `{username}`: {reason}")]
    KafkaAuthentication {
        mechanism: &'static str,
        username: String,
        reason: String,
    },
    #[error("Kafka: {action}")]
    Kafka {
        action: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("topic `{0}` does not exist or has no partitions")]
    UnknownTopic(String),
    #[error("reading `{topic}` stalled: no record for 60 s, partitions {partitions:?} unfinished{last_error}")]
    Stalled {
        topic: String,
        partitions: Vec<i32>,
        last_error: String,
    },
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("--stream: {0}")]
    Target(#[from] TargetError),
    #[error("shard {shard}: sequence number `{value}` is not a decimal number")]
    SequenceNumber { shard: String, value: String },
    #[error("cannot write the report to {path}")]
    WriteReport {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The command line of `verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// The Kafka topic to check.
    #[arg(long)]
    pub topic: String,
    /// Kinesis stream: a name, an ARN, or a route's label as `/routes` shows it, `STREAM in
    /// REGION as ROLE_ARN` (default: the topic's route).
    #[arg(long)]
    pub stream: Option<String>,
    /// The window starts this long ago, as `15m` (default: the topic's first record).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "from")]
    pub since: Option<Duration>,
    /// The window starts at this UTC time, as `2026-11-26T15:00:00Z`.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub from: Option<SystemTime>,
    /// The window ends at this UTC time (default: now minus --settle).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub until: Option<SystemTime>,
    /// How long the mirror may take to deliver a record.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub settle: Duration,
    /// Check the keys sampled at this percent (default: the route's percent).
    #[arg(long)]
    pub percent: Option<f64>,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// What is checked: a topic, its stream, and how the mirror samples and keys its records.
#[derive(Debug, Clone)]
struct Target {
    topic: String,
    stream: String,
    percent: f64,
    partition_key: PartitionKeyRule,
}

impl Target {
    /// The topic's `[[mirror]]` route, with `options` overriding its stream and percent. A
    /// topic without a route is checked as a route with the default `key` rule at 100%.
    fn resolve(config: &Config, options: &Options) -> Result<Target, VerifyError> {
        let route = config.mirror.iter().find(|r| r.topic == options.topic);
        let stream = options
            .stream
            .clone()
            .or_else(|| route.map(|r| r.target.to_string()))
            .ok_or_else(|| VerifyError::NoRoute(options.topic.clone()))?;
        let percent = options
            .percent
            .or(route.map(|r| r.percent))
            .unwrap_or(100.0);
        if !(0.0..=100.0).contains(&percent) {
            return Err(VerifyError::Percent(percent));
        }
        Ok(Target {
            topic: options.topic.clone(),
            stream,
            percent,
            partition_key: route.map_or(PartitionKeyRule::Key, |r| r.partition_key.clone()),
        })
    }
}

/// The records checked: those Kafka holds from `from` (the topic's start when `None`) until
/// `until`.
#[derive(Debug, Clone)]
struct Window {
    from: Option<SystemTime>,
    until: SystemTime,
    /// Records up to this long before `from` are read too, so that one mirrored just after
    /// `from` is recognised instead of reported as unexpected.
    lookback: Duration,
}

impl Window {
    fn resolve(options: &Options, now: SystemTime) -> Result<Window, VerifyError> {
        let from = options.from.or(options.since.map(|ago| now - ago));
        let until = options.until.unwrap_or(now - options.settle);
        if from.is_some_and(|from| from >= until) {
            return Err(VerifyError::EmptyWindow {
                from: humantime::format_rfc3339_seconds(from.unwrap_or(until)).to_string(),
                until: humantime::format_rfc3339_seconds(until).to_string(),
            });
        }
        Ok(Window {
            from,
            until,
            lookback: options.settle,
        })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.from {
            Some(from) => write!(f, "{}", humantime::format_rfc3339_seconds(from))?,
            None => f.write_str("the start")?,
        }
        write!(f, " .. {}", humantime::format_rfc3339_seconds(self.until))
    }
}

/// A progress line on a terminal; drawn nowhere when stdout is not one (scripts, CI).
fn progress_bar(bars: &MultiProgress, template: &str) -> ProgressBar {
    let bar = bars.add(ProgressBar::no_length());
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar
}

/// Runs the check, prints the summary, writes the JSON report when asked, and returns the
/// report (its exit code says whether anything differs).
pub async fn run(config: &Config, options: &Options) -> Result<Report, VerifyError> {
    let target = Target::resolve(config, options)?;
    let window = Window::resolve(options, SystemTime::now())?;
    let bars = MultiProgress::with_draw_target(if std::io::stdout().is_terminal() {
        ProgressDrawTarget::stdout()
    } else {
        ProgressDrawTarget::hidden()
    });

    // A Kafka setting librdkafka or the brokers refuse shows before the stream is read, not
    // after.
    let kafka = config.kafka.as_ref().ok_or(VerifyError::NoKafka)?;
    let consumer = kafka_read::consumer(kafka)?;
    tokio::task::block_in_place(|| kafka_read::check_access(&consumer, kafka, &target.topic))?;
    let stream_target: StreamTarget = target.stream.parse()?;
    let client = Clients::new(config.kinesis.clone())
        .client(&stream_target)
        .await;
    let kinesis_bar = progress_bar(
        &bars,
        "{spinner} Kinesis: {pos} records ({per_sec}, {elapsed})",
    );
    let stream =
        kinesis_read::read_stream(&client, &target.stream, window.from, &kinesis_bar).await?;
    kinesis_bar.finish();

    let kafka_bar = progress_bar(
        &bars,
        "{bar:40} Kafka: {pos}/{len} records ({per_sec}, eta {eta})",
    );
    // librdkafka's consumer is blocking; the stream read is done, so nothing else waits.
    let kafka = tokio::task::block_in_place(|| {
        kafka_read::read_topic(&consumer, kafka, &target, &window, &kafka_bar)
    })?;
    kafka_bar.finish();

    let comparison = compare::compare(&kafka, &stream.records);
    let report =
        Report::build(comparison, &target, (&consumer, &kafka), (&client, &stream)).await?;
    bars.clear().ok();
    println!("{}", report.summary(&target, &window));
    if let Some(path) = &options.json {
        report.write_json(path)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            topic: "orders".into(),
            stream: None,
            since: None,
            from: None,
            until: None,
            settle: Duration::from_secs(60),
            percent: None,
            json: None,
        }
    }

    #[test]
    fn window_ends_settle_before_now_and_starts_since_ago() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let w = Window::resolve(
            &Options {
                since: Some(Duration::from_secs(900)),
                ..options()
            },
            now,
        )
        .unwrap();
        assert_eq!(w.from, Some(now - Duration::from_secs(900)));
        assert_eq!(w.until, now - Duration::from_secs(60));
        let empty = Options {
            since: Some(Duration::from_secs(30)),
            ..options()
        };
        assert!(matches!(
            Window::resolve(&empty, now),
            Err(VerifyError::EmptyWindow { .. })
        ));
    }

    #[test]
    fn target_defaults_to_the_route() {
        let text = "[listener]\n[kafka]\nbootstrap_servers = [\"a:1\"]\n[spool]\ndir = \"/tmp/s\"\n\
                    [[mirror]]\ntopic = \"orders\"\nstream = \"orders-stream\"\npercent = 25.0\npartition_key = \"header:tenant\"\n";
        let config = Config::parse(std::path::Path::new("proxy.toml"), text).unwrap();
        let t = Target::resolve(&config, &options()).unwrap();
        assert_eq!((t.stream.as_str(), t.percent), ("orders-stream", 25.0));
        assert_eq!(t.partition_key, PartitionKeyRule::Header("tenant".into()));
        let overridden = Options {
            percent: Some(10.0),
            stream: Some("other".into()),
            ..options()
        };
        let t = Target::resolve(&config, &overridden).unwrap();
        assert_eq!((t.stream.as_str(), t.percent), ("other", 10.0));
        let unrouted = Options {
            topic: "payments".into(),
            ..options()
        };
        assert!(matches!(
            Target::resolve(&config, &unrouted),
            Err(VerifyError::NoRoute(_))
        ));
    }
}
