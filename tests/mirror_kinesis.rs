//! The Kinesis mirror, end to end with real parts: Kafka clients produce through the proxy to a
//! real Apache Kafka 4.1 broker, and the proxy mirrors into kinesis-local (kinesis-mock).
//! Everything asserted is read back from Kinesis itself, from Kafka directly, or from the
//! proxy's /metrics as an operator would.
//!
//! One single-node cluster serves every test of this binary (`KafkaCluster::shared`), so each
//! test uses topic names of its own; each test has its own kinesis-local and proxy.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::kinesis::{KinesisLocal, StoredRecord};
use support::metrics::{value, wait_for};
use support::raw_produce::RawProduce;
use support::{clients_dir, num, python, run_client, KafkaCluster, Proxy};

fn route(topic: &str, stream: &str, percent: f64) -> String {
    format!("[[mirror]]\ntopic = \"{topic}\"\nstream = \"{stream}\"\npercent = {percent}\n")
}

fn kinesis_section(k: &KinesisLocal) -> String {
    format!(
        "[kinesis]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nlinger_ms = 20\n",
        k.endpoint
    )
}

/// kinesis-local with `stream` (`shards` shards), and a proxy in front of the shared cluster
/// routing `topic` (created with `partitions` partitions and `topic_configs`) to it at 100%;
/// `kinesis_extra` goes into the [kinesis] table.
async fn single_route(
    stream: &str,
    shards: i32,
    topic: &str,
    partitions: i32,
    topic_configs: &[(&str, &str)],
    kinesis_extra: &str,
) -> (&'static KafkaCluster, KinesisLocal, Proxy) {
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    kinesis.create_stream(stream, shards).await;
    let extra = format!(
        "{}{kinesis_extra}{}",
        kinesis_section(&kinesis),
        route(topic, stream, 100.0)
    );
    let proxy = Proxy::start_with(cluster, &extra);
    cluster.create_topic_with(topic, partitions, topic_configs);
    (cluster, kinesis, proxy)
}

fn produce(client: &str, bootstrap: &str, topic: &str, count: usize, codec: &str) {
    let out = run_client(
        client,
        &[
            "produce",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--count",
            &count.to_string(),
            "--codec",
            codec,
            "--acks",
            "all",
        ],
    );
    assert_eq!(
        num(&out, "produced"),
        count as i64,
        "{client} {codec}: {out}"
    );
    assert_eq!(num(&out, "error_count"), 0, "{client} {codec}: {out}");
}

/// Checks every stored record against the shared generator; returns the per-topic summary.
fn verify(records: &[StoredRecord]) -> BTreeMap<String, Value> {
    use base64::Engine;
    let mut child = Command::new(python())
        .arg(clients_dir().join("verify_mirror.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for r in records {
            let data = base64::engine::general_purpose::STANDARD.encode(&r.data);
            writeln!(stdin, "{}\t{data}", r.partition_key).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice::<BTreeMap<String, Value>>(&out.stdout).unwrap()
}

fn topic_of(record: &StoredRecord) -> String {
    String::from_utf8_lossy(record.data.split(|b| *b == b'|').next().unwrap_or_default())
        .into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn full_mirror_delivers_every_accepted_record_exactly_once_for_every_codec() {
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    kinesis.create_stream("all-codecs", 4).await;
    let codecs = ["none", "gzip", "snappy", "lz4", "zstd"];
    let mut extra = kinesis_section(&kinesis);
    for codec in codecs {
        extra.push_str(&route(&format!("orders-{codec}"), "all-codecs", 100.0));
    }
    extra.push_str(&route("orders-kafka-python", "all-codecs", 100.0));
    let proxy = Proxy::start_with(cluster, &extra);
    let bootstrap = proxy.bootstrap();

    const PER_TOPIC: usize = 400;
    for codec in codecs {
        let topic = format!("orders-{codec}");
        cluster.create_topic(&topic, 3);
        produce("confluent", &bootstrap, &topic, PER_TOPIC, codec);
    }
    cluster.create_topic("orders-kafka-python", 3);
    produce(
        "kafka-python",
        &bootstrap,
        "orders-kafka-python",
        PER_TOPIC,
        "gzip",
    );
    let expected = PER_TOPIC as f64 * (codecs.len() + 1) as f64;

    let m = wait_for(
        proxy.admin_port,
        "every record sent",
        Duration::from_secs(60),
        |m| {
            value(
                m,
                "kafka_kinesis_proxy_mirror_records_total",
                &[("result", "sent")],
            ) >= expected
        },
    )
    .await;
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_kafka_records_total",
            &[("result", "ok")]
        ),
        expected
    );
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_mirror_records_total",
            &[("result", "failed")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_shard_map_mispredictions_total",
            &[]
        ),
        0.0
    );
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_mirror_percent",
            &[("topic", "orders-zstd")]
        ),
        100.0
    );

    let stored = kinesis.read_all("all-codecs").await;
    assert_eq!(
        stored.len(),
        expected as usize,
        "exactly once: no record lost or duplicated"
    );
    let summary = verify(&stored);
    for topic in codecs
        .iter()
        .map(|c| format!("orders-{c}"))
        .chain(["orders-kafka-python".to_owned()])
    {
        let t = &summary[&topic];
        assert_eq!(num(t, "records"), PER_TOPIC as i64, "{topic}: {t}");
        assert_eq!(num(t, "distinct"), PER_TOPIC as i64, "{topic}: {t}");
        assert_eq!(num(t, "duplicates"), 0, "{topic}: {t}");
        assert_eq!(
            num(t, "mismatched"),
            0,
            "{topic}: payload or key differs from the Kafka record: {t}"
        );
    }

    // Our MD5 routing agrees with where Kinesis put each record, and `shard-for` agrees too.
    let keys: BTreeMap<&str, &str> = stored
        .iter()
        .filter(|r| topic_of(r) == "orders-none")
        .map(|r| (r.partition_key.as_str(), r.shard_id.as_str()))
        .take(100)
        .collect();
    assert_eq!(keys.len(), 100);
    for (key, shard) in keys {
        let (shard_id, hash) = support::shard_for(
            &proxy.config_path,
            &["--stream", "all-codecs", "--key", key],
        );
        assert_eq!(shard_id, shard, "shard-for {key}");
        assert_eq!(
            hash,
            u128::from_be_bytes(md5_of(key)),
            "decimal MD5 hash key of {key}"
        );
    }
    let per_shard: BTreeSet<&str> = stored.iter().map(|r| r.shard_id.as_str()).collect();
    assert_eq!(
        per_shard.len(),
        4,
        "every shard of the 4-shard stream receives records"
    );
}

/// Runs `kafka-kinesis-proxy spool replay` as an operator would.
fn spool_replay(config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kafka-kinesis-proxy"))
        .args(["spool", "replay", "--config"])
        .arg(config)
        .envs(KinesisLocal::aws_env())
        .output()
        .unwrap()
}

fn md5_of(key: &str) -> [u8; 16] {
    use md5::Digest;
    md5::Md5::digest(key.as_bytes()).into()
}

#[tokio::test(flavor = "multi_thread")]
async fn percentage_sample_is_key_consistent_and_spreads_over_shards() {
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    for stream in ["sample-25", "sample-60", "sample-0"] {
        kinesis.create_stream(stream, 4).await;
    }
    let extra = format!(
        "{}{}{}{}",
        kinesis_section(&kinesis),
        route("keys-25", "sample-25", 25.0),
        route("keys-60", "sample-60", 60.0),
        route("keys-0", "sample-0", 0.0)
    );
    let proxy = Proxy::start_with(cluster, &extra);
    let bootstrap = proxy.bootstrap();
    const KEYS: usize = 20_000;
    for topic in ["keys-25", "keys-60", "keys-0"] {
        cluster.create_topic(topic, 6);
    }
    produce("confluent", &bootstrap, "keys-25", KEYS, "lz4");
    produce("kafka-python", &bootstrap, "keys-60", KEYS, "snappy");
    produce("confluent", &bootstrap, "keys-0", KEYS, "none");

    let m = wait_for(
        proxy.admin_port,
        "every record decided",
        Duration::from_secs(60),
        |m| {
            ["keys-25", "keys-60"].iter().all(|t| {
                let sent = value(
                    m,
                    "kafka_kinesis_proxy_mirror_records_total",
                    &[("topic", t), ("result", "sent")],
                );
                let skipped = value(
                    m,
                    "kafka_kinesis_proxy_mirror_records_total",
                    &[("topic", t), ("result", "skipped")],
                );
                sent + skipped >= KEYS as f64
            }) && value(
                m,
                "kafka_kinesis_proxy_mirror_records_total",
                &[("topic", "keys-0"), ("result", "skipped")],
            ) >= KEYS as f64
        },
    )
    .await;
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_mirror_records_total",
            &[("result", "failed")]
        ),
        0.0
    );

    let mut key_sets = BTreeMap::new();
    for (stream, topic, percent) in [
        ("sample-25", "keys-25", 25.0),
        ("sample-60", "keys-60", 60.0),
    ] {
        let stored = kinesis.read_all(stream).await;
        let summary = verify(&stored);
        let t = &summary[topic];
        assert_eq!((num(t, "duplicates"), num(t, "mismatched")), (0, 0), "{t}");
        let fraction = stored.len() as f64 / KEYS as f64 * 100.0;
        println!(
            "{topic}: {} of {KEYS} keys mirrored = {fraction:.2}% (target {percent}%)",
            stored.len()
        );
        assert!(
            (fraction - percent).abs() <= 3.0,
            "{topic}: {fraction:.2}% mirrored at {percent}%"
        );
        let mut spread: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &stored {
            *spread.entry(r.shard_id.as_str()).or_default() += 1;
        }
        println!("{stream} shard spread: {spread:?}");
        assert_eq!(
            spread.len(),
            4,
            "{stream}: every shard receives records: {spread:?}"
        );
        let sent = value(
            &m,
            "kafka_kinesis_proxy_mirror_records_total",
            &[("topic", topic), ("result", "sent")],
        );
        assert_eq!(
            sent,
            stored.len() as f64,
            "{topic}: metric agrees with Kinesis"
        );
        key_sets.insert(
            topic,
            stored
                .into_iter()
                .map(|r| r.partition_key)
                .collect::<BTreeSet<_>>(),
        );
    }
    assert!(
        key_sets["keys-25"].is_subset(&key_sets["keys-60"]),
        "raising the percentage only adds keys"
    );

    assert!(
        kinesis.read_all("sample-0").await.is_empty(),
        "0% mirrors nothing"
    );
    // Kafka is unaffected by a 0% route: every record is there.
    let consumed = run_client(
        "confluent",
        &[
            "consume",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "keys-0",
            "--count",
            &KEYS.to_string(),
            "--timeout",
            "120",
        ],
    );
    assert_eq!(
        (num(&consumed, "distinct"), num(&consumed, "mismatched")),
        (KEYS as i64, 0),
        "{consumed}"
    );
    let stored_in_kafka: i64 = (0..6)
        .map(|p| {
            let (low, high) = cluster.offsets("keys-0", p);
            high - low
        })
        .sum();
    assert_eq!(
        stored_in_kafka, KEYS as i64,
        "Kafka's log holds every record"
    );
}

/// What came back for a raw Produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// A response, with the partition's error code.
    Partition(i16),
    /// The connection was closed with no response.
    Closed,
}

/// Kafka error codes the tests expect (kafka.common.protocol.Errors).
const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const MESSAGE_TOO_LARGE: i16 = 10;
const INVALID_REQUIRED_ACKS: i16 = 21;
const INVALID_RECORD: i16 = 87;

/// Sends `produce` to `bootstrap` as a raw request on a fresh connection and returns the answer.
async fn raw_produce(bootstrap: &str, produce: RawProduce<'_>) -> Answer {
    use kafka_protocol::messages::{ApiKey, ProduceResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let frame = produce.frame();
    let version = RawProduce::VERSION;
    let mut conn = tokio::net::TcpStream::connect(bootstrap).await.unwrap();
    conn.write_all(&frame).await.unwrap();
    // Kafka answers within the request's 5 s timeout or closes the connection.
    let read = async {
        let size = conn.read_i32().await?;
        let mut body = vec![0u8; size as usize];
        conn.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = match tokio::time::timeout(Duration::from_secs(30), read).await {
        Err(_) => panic!("no answer and no close within 30 s"),
        Ok(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            return Answer::Closed
        }
        Ok(Err(e)) => panic!("reading the Produce response: {e}"),
        Ok(Ok(body)) => body,
    };
    let mut body = bytes::Bytes::from(body);
    let header =
        ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(version))
            .unwrap();
    assert_eq!(header.correlation_id, 1);
    let response = ProduceResponse::decode(&mut body, version).unwrap();
    Answer::Partition(response.responses[0].partition_responses[0].error_code)
}

/// Ten records whose keys say which case sent them.
fn tagged_records(case: &str) -> Vec<(String, Vec<u8>)> {
    (0..10)
        .map(|i| (format!("{case}-k{i}"), format!("{case}-v{i}").into_bytes()))
        .collect()
}

/// A Produce that Kafka rejects is answered with Kafka's error and mirrors nothing. The
/// requests are raw, because real clients do not send them. Apache Kafka 4.1 answers each with
/// an error code for the partition (and keeps the connection open):
/// - a partition beyond the topic's count, and a topic that does not exist (a Produce does not
///   auto-create a topic; only a Metadata request does): UNKNOWN_TOPIC_OR_PARTITION (3);
/// - acks=5 (only -1, 0 and 1 are valid): INVALID_REQUIRED_ACKS (21);
/// - a batch per record (from Produce v3 on, a partition's records are exactly one batch):
///   INVALID_RECORD (87);
/// - a batch whose CRC does not match: CORRUPT_MESSAGE (2). The mirror checks the CRC too, so
///   it counts a decode error for that request instead of a verdict on its records.
///
/// Last comes an idempotent batch from a producer id the broker never allocated. Kafka 4.1
/// accepts it (a producer id it has no state for may start at any sequence; there is no
/// UNKNOWN_PRODUCER_ID for it), so it is mirrored; being behind the rejected requests, it also
/// shows that the mirror has handled them by the time it reaches Kinesis.
#[tokio::test(flavor = "multi_thread")]
async fn rejected_produce_mirrors_nothing() {
    let topic = "rejected-small";
    // A route for the missing topic too, so it would be mirrored if Kafka took it.
    let missing = "rejected-missing";
    let (cluster, kinesis, proxy) = single_route(
        "rejected",
        2,
        topic,
        1,
        &[],
        &route(missing, "rejected", 100.0),
    )
    .await;
    let bootstrap = proxy.bootstrap();
    let error_records = |m: &BTreeMap<String, f64>, t: &str| {
        value(
            m,
            "kafka_kinesis_proxy_kafka_records_total",
            &[("topic", t), ("result", "error")],
        )
    };
    let decode_errors = |m: &BTreeMap<String, f64>, t: &str| {
        value(
            m,
            "kafka_kinesis_proxy_mirror_decode_errors_total",
            &[("topic", t)],
        )
    };

    let cases = [
        (
            "a partition beyond the topic's count",
            RawProduce {
                partition: 1,
                ..RawProduce::new(topic, tagged_records("partition"))
            },
            UNKNOWN_TOPIC_OR_PARTITION,
        ),
        (
            "a topic that does not exist",
            RawProduce::new(missing, tagged_records("missing")),
            UNKNOWN_TOPIC_OR_PARTITION,
        ),
        (
            "acks=5",
            RawProduce {
                acks: 5,
                ..RawProduce::new(topic, tagged_records("acks5"))
            },
            INVALID_REQUIRED_ACKS,
        ),
        (
            "a batch per record",
            RawProduce {
                batch_per_record: true,
                ..RawProduce::new(topic, tagged_records("batches"))
            },
            INVALID_RECORD,
        ),
        (
            "a corrupt CRC",
            RawProduce {
                corrupt_crc: true,
                ..RawProduce::new(topic, tagged_records("crc"))
            },
            CORRUPT_MESSAGE,
        ),
    ];
    for (what, produce, expected) in cases {
        let t = produce.topic;
        let before = support::metrics::scrape(proxy.admin_port);
        let (errors, decodes) = (error_records(&before, t), decode_errors(&before, t));
        let answer = raw_produce(&bootstrap, produce).await;
        assert_eq!(answer, Answer::Partition(expected), "{what}");
        // The mirror saw Kafka's answer: a verdict on the ten records, or, for the corrupt
        // batch, a decode error.
        let crc = expected == CORRUPT_MESSAGE;
        wait_for(
            proxy.admin_port,
            &format!("the mirror to count {what}"),
            Duration::from_secs(30),
            |m| {
                if crc {
                    decode_errors(m, t) >= decodes + 1.0
                } else {
                    error_records(m, t) >= errors + 10.0
                }
            },
        )
        .await;
    }
    assert_eq!(
        cluster.offsets(topic, 0),
        (0, 0),
        "Kafka stored none of the rejected records"
    );
    assert_eq!(
        cluster.leader(missing, 0),
        None,
        "a Produce must not create the missing topic"
    );

    let answer = raw_produce(
        &bootstrap,
        RawProduce {
            producer_id: 987_654,
            ..RawProduce::new(topic, tagged_records("unallocated-pid"))
        },
    )
    .await;
    assert_eq!(
        answer,
        Answer::Partition(0),
        "Kafka 4.1 accepts an idempotent batch from an unallocated producer id"
    );
    let m = wait_for(
        proxy.admin_port,
        "the accepted batch mirrored",
        Duration::from_secs(60),
        |m| {
            value(
                m,
                "kafka_kinesis_proxy_mirror_records_total",
                &[("topic", topic), ("result", "sent")],
            ) >= 10.0
        },
    )
    .await;
    assert_eq!(
        cluster.offsets(topic, 0),
        (0, 10),
        "Kafka stored the accepted batch"
    );
    assert_eq!(error_records(&m, topic), 30.0, "partition, acks=5, batches");
    assert_eq!(error_records(&m, missing), 10.0);
    assert_eq!(decode_errors(&m, topic), 1.0);
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_kafka_records_total",
            &[("topic", topic), ("result", "ok")]
        ),
        10.0
    );
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_mirror_records_total",
            &[("topic", missing)]
        ),
        0.0
    );
    let keys: BTreeSet<String> = kinesis
        .read_all("rejected")
        .await
        .into_iter()
        .map(|r| r.partition_key)
        .collect();
    let accepted: BTreeSet<String> = tagged_records("unallocated-pid")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, accepted, "a rejected produce must mirror nothing");
}

/// A record over the stream's per-record limit (data plus partition key, 1 MiB by default) is
/// not sent, and is counted as `oversize`; its neighbours are delivered. The topic takes batches
/// up to 2 MiB: at Kafka's default `max.message.bytes` (1 MiB + 12 bytes) Kafka itself refuses
/// this batch with MESSAGE_TOO_LARGE (10), and the mirror would never see it.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_record_is_counted_not_sent() {
    let (cluster, kinesis, mut proxy) = single_route(
        "limits",
        1,
        "big",
        1,
        &[("max.message.bytes", "2097152")],
        "",
    )
    .await;

    let records = vec![
        ("small-1".to_owned(), b"fits".to_vec()),
        ("huge".to_owned(), vec![b'x'; 1024 * 1024]),
        ("small-2".to_owned(), b"fits too".to_vec()),
    ];
    cluster.create_topic("big-default-limit", 1);
    assert_eq!(
        raw_produce(
            &proxy.bootstrap(),
            RawProduce::new("big-default-limit", records.clone())
        )
        .await,
        Answer::Partition(MESSAGE_TOO_LARGE),
        "Kafka's default max.message.bytes"
    );
    assert_eq!(
        raw_produce(&proxy.bootstrap(), RawProduce::new("big", records)).await,
        Answer::Partition(0)
    );
    let m = wait_for(
        proxy.admin_port,
        "both small records sent",
        Duration::from_secs(60),
        |m| {
            value(
                m,
                "kafka_kinesis_proxy_mirror_records_total",
                &[("topic", "big"), ("result", "sent")],
            ) >= 2.0
        },
    )
    .await;
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_mirror_records_total",
            &[("topic", "big"), ("result", "oversize")]
        ),
        1.0
    );
    let stored = kinesis.read_all("limits").await;
    let keys: BTreeSet<&str> = stored.iter().map(|r| r.partition_key.as_str()).collect();
    assert_eq!(keys, BTreeSet::from(["small-1", "small-2"]));
    let log = proxy.daemon().log_tail(200);
    assert!(
        log.contains("per-record limit") && log.contains("topic=big") && log.contains("offset=1"),
        "{log}"
    );
    // It is in the dead-letter file with the reason, and replaying it fails the same way.
    let dead_letters = proxy
        .config_path
        .parent()
        .unwrap()
        .join("spool/dead-letters.jsonl");
    let letter: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&dead_letters).unwrap().trim()).unwrap();
    assert_eq!(
        (
            letter["partition_key"].as_str(),
            letter["offset"].as_i64(),
            letter["error_code"].as_str()
        ),
        (Some("huge"), Some(1), Some("RecordTooLarge"))
    );
    let replay = spool_replay(&proxy.config_path);
    assert!(!replay.status.success());
    assert!(String::from_utf8_lossy(&replay.stdout)
        .contains("1 dead letters, 0 delivered, 1 still failing"));
    assert_eq!(
        std::fs::read_to_string(&dead_letters)
            .unwrap()
            .lines()
            .count(),
        1,
        "the letter is back in the file"
    );
}

/// With acks=0 Kafka sends no response (Apache Kafka never answers an acks=0 Produce; it closes
/// the connection instead if the request fails): records are mirrored once the broker has kept
/// the connection past them, counted apart from Kafka's verdicts, and Kafka stores them all.
#[tokio::test(flavor = "multi_thread")]
async fn acks_zero_records_are_mirrored_once_the_broker_kept_the_connection() {
    let (cluster, kinesis, proxy) =
        single_route("fire-and-forget", 2, "metrics-feed", 2, &[], "").await;
    let bootstrap = proxy.bootstrap();
    let out = run_client(
        "confluent",
        &[
            "produce",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "metrics-feed",
            "--count",
            "500",
            "--codec",
            "gzip",
            "--acks",
            "0",
        ],
    );
    assert_eq!(num(&out, "error_count"), 0, "{out}");
    let m = wait_for(
        proxy.admin_port,
        "acks=0 records mirrored",
        Duration::from_secs(60),
        |m| {
            value(
                m,
                "kafka_kinesis_proxy_mirror_records_total",
                &[("result", "sent")],
            ) >= 500.0
        },
    )
    .await;
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_kafka_unacked_records_total",
            &[("topic", "metrics-feed")]
        ),
        500.0
    );
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_kafka_records_total",
            &[("topic", "metrics-feed")]
        ),
        0.0
    );
    let summary = verify(&kinesis.read_all("fire-and-forget").await);
    let t = &summary["metrics-feed"];
    assert_eq!(
        (
            num(t, "distinct"),
            num(t, "duplicates"),
            num(t, "mismatched")
        ),
        (500, 0, 0),
        "{t}"
    );
    wait_until(
        "Kafka to hold the 500 acks=0 records",
        Duration::from_secs(30),
        || {
            (0..2)
                .map(|p| cluster.offsets("metrics-feed", p).1)
                .sum::<i64>()
                == 500
        },
    )
    .await;
}

/// Polls `done` until it holds; fails the test after `limit`.
async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After a SplitShard, the proxy's predictions go wrong for the split range, the mispredictions
/// are counted, the map refreshes at once, and later predictions match again.
#[tokio::test(flavor = "multi_thread")]
async fn shard_map_refreshes_after_a_split() {
    // A long timer, so only the misprediction can trigger the refresh.
    let (_cluster, kinesis, proxy) = single_route(
        "resharded",
        2,
        "events",
        3,
        &[],
        "shard_map_refresh_secs = 3600
",
    )
    .await;
    let bootstrap = proxy.bootstrap();
    let mispredictions = |m: &BTreeMap<String, f64>| {
        value(m, "kafka_kinesis_proxy_shard_map_mispredictions_total", &[])
    };
    let sent = |m: &BTreeMap<String, f64>| {
        value(
            m,
            "kafka_kinesis_proxy_mirror_records_total",
            &[("result", "sent")],
        )
    };

    produce("confluent", &bootstrap, "events", 300, "none");
    let m = wait_for(
        proxy.admin_port,
        "first batch",
        Duration::from_secs(60),
        |m| sent(m) >= 300.0,
    )
    .await;
    assert_eq!(mispredictions(&m), 0.0);

    // Split shard 0 at the middle of its range.
    let client = kinesis.client();
    let shards = client
        .list_shards()
        .stream_name("resharded")
        .send()
        .await
        .unwrap();
    let first = &shards.shards()[0];
    let range = first.hash_key_range().unwrap();
    let (start, end): (u128, u128) = (
        range.starting_hash_key().parse().unwrap(),
        range.ending_hash_key().parse().unwrap(),
    );
    client
        .split_shard()
        .stream_name("resharded")
        .shard_to_split(first.shard_id())
        .new_starting_hash_key((start + (end - start) / 2).to_string())
        .send()
        .await
        .unwrap();
    kinesis.wait_active("resharded").await;

    // The same keys again: those in the split range now go to the children, which the stale
    // map does not know.
    produce("confluent", &bootstrap, "events", 300, "none");
    let m = wait_for(
        proxy.admin_port,
        "second batch",
        Duration::from_secs(60),
        |m| sent(m) >= 600.0,
    )
    .await;
    let after_split = mispredictions(&m);
    assert!(
        after_split > 0.0,
        "records sent with the stale map must count as mispredicted"
    );

    // The refresh happens: /routes shows the three open shards, and a third run is predicted
    // correctly.
    wait_until(
        "the refreshed map (3 open shards) in /routes",
        Duration::from_secs(30),
        || {
            let routes: Value =
                serde_json::from_str(&support::metrics::get(proxy.admin_port, "/routes").1)
                    .unwrap();
            routes["routes"][0]["open_shards"] == 3
        },
    )
    .await;
    produce("confluent", &bootstrap, "events", 300, "none");
    let m = wait_for(
        proxy.admin_port,
        "third batch",
        Duration::from_secs(60),
        |m| sent(m) >= 900.0,
    )
    .await;
    assert_eq!(
        mispredictions(&m),
        after_split,
        "no mispredictions once the map has refreshed"
    );
    let stored = kinesis.read_all("resharded").await;
    assert_eq!(stored.len(), 900);
    // The closed parent takes no more records: its shard-labelled series are gone, the open
    // shards' are there.
    let parent = format!("shard=\"{}\"", first.shard_id());
    let shard_series: Vec<&String> = m
        .keys()
        .filter(|s| s.starts_with("kafka_kinesis_proxy_shard_"))
        .collect();
    assert!(
        !shard_series.iter().any(|s| s.contains(&parent)),
        "series of the closed shard remain: {shard_series:#?}"
    );
    assert!(
        shard_series
            .iter()
            .any(|s| s.starts_with("kafka_kinesis_proxy_shard_rate_limit_records_per_second{")),
        "{shard_series:#?}"
    );
}

/// A route whose stream does not exist is reported unhealthy, with the stream named in the log,
/// and Kafka traffic flows as if the mirror were not there. A missing stream refuses records
/// until it is created, so none is dead-lettered: they wait in the spool, and once the operator
/// creates the stream the proxy's probe finds it and replays them, each once. (The old writer
/// dead-lettered all 1,000.)
#[tokio::test(flavor = "multi_thread")]
async fn missing_stream_marks_route_unhealthy_and_kafka_keeps_flowing() {
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    let extra = format!(
        "{}{}",
        kinesis_section(&kinesis),
        route("payments", "no-such-stream", 100.0)
    );
    let mut proxy = Proxy::start_with(cluster, &extra);
    let bootstrap = proxy.bootstrap();
    cluster.create_topic("payments", 2);
    produce("confluent", &bootstrap, "payments", 1000, "zstd");
    let consumed = run_client(
        "confluent",
        &[
            "consume",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "payments",
            "--count",
            "1000",
            "--timeout",
            "60",
        ],
    );
    assert_eq!(
        (num(&consumed, "distinct"), num(&consumed, "mismatched")),
        (1000, 0),
        "{consumed}"
    );

    let records = |m: &BTreeMap<String, f64>, result: &str| {
        value(
            m,
            "kafka_kinesis_proxy_mirror_records_total",
            &[("topic", "payments"), ("result", result)],
        )
    };
    let m = wait_for(
        proxy.admin_port,
        "refused records spooled",
        Duration::from_secs(60),
        |m| records(m, "spooled") >= 1000.0,
    )
    .await;
    assert_eq!(records(&m, "dead_letter"), 0.0);
    assert_eq!(records(&m, "sent"), 0.0);
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_stream_healthy",
            &[("stream", "no-such-stream")]
        ),
        0.0
    );
    assert!(
        value(
            &m,
            "kafka_kinesis_proxy_spool_bytes",
            &[("stream", "no-such-stream")]
        ) > 0.0
    );
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_kafka_records_total",
            &[("topic", "payments"), ("result", "ok")]
        ),
        1000.0
    );
    let log = proxy.daemon().log_tail(400);
    assert!(
        log.contains("stream `no-such-stream`") && log.contains("ResourceNotFoundException"),
        "{log}"
    );

    // The operator creates the stream; the proxy finds it and replays its spool.
    kinesis.create_stream("no-such-stream", 2).await;
    let m = wait_for(
        proxy.admin_port,
        "spooled records delivered",
        Duration::from_secs(120),
        |m| records(m, "sent") >= 1000.0,
    )
    .await;
    assert_eq!(records(&m, "dead_letter"), 0.0);
    let stored = kinesis.read_all("no-such-stream").await;
    let t = &verify(&stored)["payments"];
    assert_eq!(
        (
            num(t, "distinct"),
            num(t, "duplicates"),
            num(t, "mismatched")
        ),
        (1000, 0, 0),
        "{t}"
    );
    let dead_letters = proxy
        .config_path
        .parent()
        .unwrap()
        .join("spool/dead-letters.jsonl");
    assert!(
        std::fs::read_to_string(&dead_letters)
            .unwrap_or_default()
            .is_empty(),
        "no dead letters"
    );
}
