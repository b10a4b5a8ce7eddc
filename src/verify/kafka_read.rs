//! Reads a topic back from Kafka (librdkafka, configured from `[kafka]`), reduced to what the
//! mirror made of each record: its Kinesis key's hash, its data digest, and whether it had to
//! be mirrored.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use indicatif::ProgressBar;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::metadata::Metadata;
use rdkafka::{Offset, TopicPartitionList};

use super::compare::{digest, key_hash, KafkaEntry, Role};
use super::{Target, VerifyError, Window};
use crate::config::{KafkaConfig, PartitionKeyRule};
use crate::mirror::partition_key::{kinesis_key_of, routing_key_of};
use crate::mirror::sampling::{is_sampled, sample_point_of};

/// Metadata and offset look-ups give up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The first metadata look-up is tried this long at a time, so that a refused TLS handshake or
/// SASL login is reported within seconds rather than after `REQUEST_TIMEOUT`.
const METADATA_ATTEMPT: Duration = Duration::from_secs(2);
/// A read that gets no record for this long fails instead of hanging on an unreachable broker.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(200);

fn kafka_error(action: impl Into<String>) -> impl FnOnce(KafkaError) -> VerifyError {
    let action = action.into();
    |source| VerifyError::Kafka { action, source }
}

/// librdkafka also reports each partition's end as a global error, which its default context
/// logs at error level; here the end of a partition is how a read knows it is done.
///
/// It also keeps the last refusal from the brokers' side of TLS or SASL: librdkafka retries
/// those forever and tells of them only here, while retrying cannot fix a wrong CA or password.
#[derive(Default)]
pub struct ReaderContext {
    refusal: Mutex<Option<Refusal>>,
}

/// A TLS handshake or SASL login that failed, with librdkafka's reason.
#[derive(Debug, Clone)]
struct Refusal {
    code: RDKafkaErrorCode,
    reason: String,
}

impl ReaderContext {
    fn refusal(&self) -> Option<Refusal> {
        self.refusal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {}
            KafkaError::Global(
                code @ (RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication),
            ) => {
                let refusal = Refusal {
                    code,
                    reason: reason.to_owned(),
                };
                *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(refusal);
            }
            // Brokers down after a refusal are its consequence; verify's error names the cause.
            _ if self.refusal().is_some() => {}
            _ => tracing::warn!(%error, reason, "Kafka client"),
        }
    }
}

impl ConsumerContext for ReaderContext {}

pub type Reader = BaseConsumer<ReaderContext>;

/// A consumer that only assigns partitions and never commits, with `[kafka]`'s servers, TLS
/// and SASL. It reads committed records only, as the mirror mirrors a transaction's records
/// only once it commits.
pub fn consumer(config: &KafkaConfig) -> Result<Reader, VerifyError> {
    if let Some(tls) = &config.tls {
        // The proxy's own checks of the same files, so that a wrong path or a file that holds
        // no certificate is named here instead of in an OpenSSL message that does not.
        crate::proxy::check_tls_files(None, Some(tls)).map_err(VerifyError::TlsFiles)?;
    }
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", config.bootstrap_servers.join(","))
        .set("group.id", "kafka-kinesis-proxy-verify")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set(
            "socket.connection.setup.timeout.ms",
            config.connect_timeout.as_millis().to_string(),
        );
    let protocol = match (&config.tls, &config.sasl) {
        (None, None) => "plaintext",
        (Some(_), None) => "ssl",
        (None, Some(_)) => "sasl_plaintext",
        (Some(_), Some(_)) => "sasl_ssl",
    };
    client.set("security.protocol", protocol);
    if let Some(tls) = &config.tls {
        if tls.server_name.is_some() {
            return Err(VerifyError::ServerNameUnsupported);
        }
        if let Some(ca) = &tls.ca {
            client.set("ssl.ca.location", ca.display().to_string());
        }
        if let Some(own) = &tls.client_certificate {
            client
                .set("ssl.certificate.location", own.cert.display().to_string())
                .set("ssl.key.location", own.key.display().to_string());
        }
        let identification = if tls.verify_hostname { "https" } else { "none" };
        client.set("ssl.endpoint.identification.algorithm", identification);
    }
    if let Some(sasl) = &config.sasl {
        client
            .set("sasl.mechanisms", sasl.mechanism.name())
            .set("sasl.username", &sasl.username)
            .set("sasl.password", sasl.password.read()?.expose());
    }
    client
        .create_with_context(ReaderContext::default())
        .map_err(kafka_error("creating the consumer from [kafka]"))
}

/// Whether the brokers let `consumer` in: a TLS handshake or SASL login they refuse is an error
/// naming the CA file or the user, before anything else is read.
pub fn check_access(
    consumer: &Reader,
    config: &KafkaConfig,
    topic: &str,
) -> Result<(), VerifyError> {
    topic_metadata(consumer, config, topic).map(drop)
}

/// `topic`'s metadata, or the refusal of the TLS handshake or SASL login that stops it.
fn topic_metadata(
    consumer: &Reader,
    config: &KafkaConfig,
    topic: &str,
) -> Result<Metadata, VerifyError> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        if let Some(refusal) = consumer.context().refusal() {
            return Err(refused(config, refusal));
        }
        match consumer.fetch_metadata(Some(topic), METADATA_ATTEMPT) {
            Ok(metadata) => return Ok(metadata),
            Err(e) if Instant::now() >= deadline => {
                return Err(kafka_error(format!("fetching the metadata of `{topic}`"))(
                    e,
                ))
            }
            // Error events reach the context only while the consumer's queue is served; with
            // nothing assigned, this serves them and nothing else.
            Err(_) => {
                consumer.poll(POLL_INTERVAL);
            }
        }
    }
}

fn refused(config: &KafkaConfig, refusal: Refusal) -> VerifyError {
    let Refusal { code, reason } = refusal;
    match (code, &config.sasl) {
        (RDKafkaErrorCode::Authentication, Some(sasl)) => VerifyError::KafkaAuthentication {
            mechanism: sasl.mechanism.name(),
            username: sasl.username.clone(),
            reason,
        },
        _ => VerifyError::KafkaTls {
            trust: match config.tls.as_ref().and_then(|tls| tls.ca.as_ref()) {
                Some(ca) => format!("kafka.tls.ca {}", ca.display()),
                None => "the system's CA certificates (kafka.tls.ca is not set)".to_owned(),
            },
            reason,
        },
    }
}

/// The first offset of each partition at or after `at` (a timestamp in ms): Kafka's answer to
/// ListOffsets by time, or the partition's end when no record is that recent.
fn offsets_at(
    consumer: &Reader,
    topic: &str,
    partitions: &HashMap<i32, (i64, i64)>,
    at: SystemTime,
) -> Result<HashMap<i32, i64>, VerifyError> {
    let millis = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let mut query = TopicPartitionList::new();
    for &partition in partitions.keys() {
        query
            .add_partition_offset(topic, partition, Offset::Offset(millis))
            .map_err(kafka_error("building an offsets query"))?;
    }
    let answer = consumer
        .offsets_for_times(query, REQUEST_TIMEOUT)
        .map_err(kafka_error(format!(
            "looking up the offsets of `{topic}` by time"
        )))?;
    Ok(answer
        .elements()
        .iter()
        .map(|e| {
            let end = partitions[&e.partition()].1;
            let offset = match e.offset() {
                Offset::Offset(offset) => offset.min(end),
                _ => end,
            };
            (e.partition(), offset)
        })
        .collect())
}

/// One partition's offsets: what is read, and what of it is in the window.
#[derive(Debug, Clone, Copy)]
struct PartitionRange {
    read_from: i64,
    window_start: i64,
    window_end: i64,
    /// The high watermark when the read began: the read ends there.
    end: i64,
}

fn partition_ranges(
    consumer: &Reader,
    config: &KafkaConfig,
    topic: &str,
    window: &Window,
) -> Result<HashMap<i32, PartitionRange>, VerifyError> {
    let metadata = topic_metadata(consumer, config, topic)?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| VerifyError::UnknownTopic(topic.to_owned()))?;
    let mut watermarks = HashMap::new();
    for partition in partitions {
        let marks = consumer
            .fetch_watermarks(topic, partition.id(), REQUEST_TIMEOUT)
            .map_err(kafka_error(format!(
                "fetching the offsets of `{topic}` partition {}",
                partition.id()
            )))?;
        watermarks.insert(partition.id(), marks);
    }
    let at = |time: Option<SystemTime>| match time {
        Some(time) => offsets_at(consumer, topic, &watermarks, time),
        None => Ok(watermarks.iter().map(|(p, (low, _))| (*p, *low)).collect()),
    };
    let read_from = at(window.from.map(|from| from - window.lookback))?;
    let window_start = at(window.from)?;
    let window_end = at(Some(window.until))?;
    Ok(watermarks
        .iter()
        .map(|(&p, &(_, end))| {
            let range = PartitionRange {
                read_from: read_from[&p],
                window_start: window_start[&p],
                window_end: window_end[&p],
                end,
            };
            (p, range)
        })
        .collect())
}

/// Every committed record of `target`'s topic in the window, with those up to `lookback`
/// before it and those after it up to the partitions' ends as context.
pub fn read_topic(
    consumer: &Reader,
    config: &KafkaConfig,
    target: &Target,
    window: &Window,
    progress: &ProgressBar,
) -> Result<Vec<KafkaEntry>, VerifyError> {
    let topic = target.topic.as_str();
    let ranges = partition_ranges(consumer, config, topic, window)?;
    let mut assignment = TopicPartitionList::new();
    let mut unfinished = HashMap::new();
    for (&partition, range) in &ranges {
        if range.read_from < range.end {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(range.read_from))
                .map_err(kafka_error("building the assignment"))?;
            unfinished.insert(partition, range.end);
        }
    }
    progress.set_length(ranges.values().map(|r| (r.end - r.read_from) as u64).sum());
    let mut records = Vec::new();
    if unfinished.is_empty() {
        return Ok(records);
    }
    consumer.assign(&assignment).map_err(kafka_error(format!(
        "assigning the partitions of `{topic}`"
    )))?;
    let mut last_progress = Instant::now();
    let mut last_error = None;
    while !unfinished.is_empty() {
        match consumer.poll(POLL_INTERVAL) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let partition = message.partition();
                let Some(&end) = unfinished.get(&partition) else {
                    continue;
                };
                if message.offset() + 1 >= end {
                    unfinished.remove(&partition);
                }
                if message.offset() >= end {
                    continue;
                }
                progress.inc(1);
                let range = &ranges[&partition];
                let in_window = (range.window_start..range.window_end).contains(&message.offset());
                records.push(entry(target, &message, in_window));
            }
            // Transaction markers and aborted records hold offsets no record reaches: the
            // partition's end event says it is done.
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                unfinished.remove(&partition);
            }
            // librdkafka recovers from broker failures by itself; the stall timeout bounds it.
            Some(Err(e)) => last_error = Some(e),
            None => {}
        }
        if last_progress.elapsed() > STALL_TIMEOUT {
            let mut partitions: Vec<i32> = unfinished.into_keys().collect();
            partitions.sort_unstable();
            return Err(VerifyError::Stalled {
                topic: topic.to_owned(),
                partitions,
                last_error: last_error.map_or_else(String::new, |e| format!("; last error: {e}")),
            });
        }
    }
    Ok(records)
}

/// The Kinesis partition key the mirror gives `message` under `target`'s rule, and whether it
/// is sampled at `target`'s percent; the same functions as the mirror's.
fn mirrored_as(target: &Target, message: &BorrowedMessage<'_>) -> (String, bool) {
    let header = match &target.partition_key {
        PartitionKeyRule::Header(name) => message
            .headers()
            .and_then(|headers| headers.iter().find(|h| h.key == name)?.value),
        _ => None,
    };
    let point = sample_point_of(
        &target.partition_key,
        message.key(),
        header,
        message.payload(),
        message.partition(),
    );
    let routing_key = routing_key_of(&target.partition_key, message.key(), header);
    // Kinesis does not return the explicit hash key; records match by partition key and data.
    let key = kinesis_key_of(routing_key, message.partition());
    (key.partition_key, is_sampled(point, target.percent))
}

fn entry(target: &Target, message: &BorrowedMessage<'_>, in_window: bool) -> KafkaEntry {
    let (partition_key, sampled) = mirrored_as(target, message);
    let role = match (in_window, sampled) {
        (false, _) => Role::Context,
        (true, true) => Role::Expected,
        (true, false) => Role::OutsideSample,
    };
    KafkaEntry {
        key_hash: key_hash(&partition_key),
        // The mirror sends a null value as empty data.
        digest: digest(message.payload().unwrap_or_default()),
        partition: message.partition(),
        offset: message.offset(),
        role,
    }
}

/// The Kinesis partition key of the record at `offset` of `partition`, to name it in the
/// report; `None` if it cannot be read back now (deleted by retention, for instance).
pub fn partition_key_at(
    consumer: &Reader,
    target: &Target,
    partition: i32,
    offset: i64,
) -> Result<Option<String>, VerifyError> {
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&target.topic, partition, Offset::Offset(offset))
        .map_err(kafka_error("building the assignment"))?;
    consumer
        .assign(&assignment)
        .map_err(kafka_error(format!("assigning partition {partition}")))?;
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    while Instant::now() < deadline {
        match consumer.poll(POLL_INTERVAL) {
            Some(Ok(m)) if m.partition() == partition && m.offset() == offset => {
                return Ok(Some(mirrored_as(target, &m).0));
            }
            Some(Ok(m)) if m.partition() == partition && m.offset() > offset => return Ok(None),
            Some(Err(KafkaError::PartitionEOF(p))) if p == partition => return Ok(None),
            _ => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn kafka_config(tables: &str) -> KafkaConfig {
        let text = format!(
            "[listener]\n[kafka]\nbootstrap_servers = [\"a:1\"]\n{tables}[spool]\ndir = \"/tmp/s\"\n"
        );
        Config::parse(std::path::Path::new("proxy.toml"), &text)
            .unwrap()
            .kafka
            .expect("the config has [kafka]")
    }

    #[test]
    fn a_refused_handshake_names_the_ca_file_and_a_refused_login_the_user() {
        let config = kafka_config(
            "[kafka.tls]\nca = \"/etc/kkp/ca.pem\"\n[kafka.sasl]\nmechanism = \"SCRAM-SHA-512\"\n\
             username = \"alice\"\npassword_env = \"KKP_TEST_UNUSED\"\n",
        );
        let context = ReaderContext::default();
        context.error(KafkaError::Global(RDKafkaErrorCode::AllBrokersDown), "down");
        assert!(context.refusal().is_none(), "not a refusal");

        context.error(
            KafkaError::Global(RDKafkaErrorCode::SSL),
            "certificate verify failed",
        );
        let error = refused(&config, context.refusal().expect("recorded")).to_string();
        assert!(error.contains("kafka.tls.ca /etc/kkp/ca.pem"), "{error}");
        assert!(error.contains("certificate verify failed"), "{error}");

        context.error(
            KafkaError::Global(RDKafkaErrorCode::Authentication),
            "invalid credentials",
        );
        let error = refused(&config, context.refusal().expect("recorded")).to_string();
        assert!(error.contains("SCRAM-SHA-512 as `alice`"), "{error}");
        assert!(error.contains("invalid credentials"), "{error}");

        // Without `ca`, the system's roots are what the brokers' certificate failed against.
        let system_roots = kafka_config("[kafka.tls]\n");
        let error = refused(&system_roots, context.refusal().unwrap()).to_string();
        assert!(error.contains("kafka.tls.ca is not set"), "{error}");
    }
}
