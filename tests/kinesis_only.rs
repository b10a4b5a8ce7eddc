//! `mode = "kinesis-only"` with Kafka present: the proxy answers the topic's Produce requests
//! itself, with synthetic offsets, once Kinesis has the records. On real Kafka and the Kinesis
//! emulator, with the default config but for the routes:
//! - a live switch from `mirror` under traffic: from the switch on nothing reaches Kafka's
//!   topic, every acknowledged record is in Kinesis, producers see no error, and the offsets
//!   given after the switch follow Kafka's;
//! - a request mixing a kinesis-only topic and a Kafka topic is split, and each partition is
//!   answered by the system that took it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use kafka_protocol::messages::ProduceResponse;
use serde_json::Value;
use support::kinesis::KinesisLocal;
use support::metrics::{get, scrape, value, wait_for};
use support::raw_produce::{produce_frame_of, send, RawProduce};
use support::{try_run_client, words, KafkaCluster, Proxy};
use tokio::net::TcpStream;

const KINESIS_ONLY: &str = "mode = \"kinesis-only\"\n";

/// The acknowledged records an `--acked-log` names: (partition, offset, key).
fn acked(log: &Path) -> Vec<(i32, i64, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut f = l.split(' ');
            let partition = f.next().unwrap().parse().unwrap();
            let offset = f.next().unwrap().parse().unwrap();
            (partition, offset, f.next().unwrap().to_owned())
        })
        .collect()
}

fn route_mode(m: &BTreeMap<String, f64>, topic: &str, mode: &str) -> f64 {
    value(
        m,
        "kafka_kinesis_proxy_route_mode",
        &[("topic", topic), ("mode", mode)],
    )
}

/// Each partition's latest offset in Kafka.
fn log_ends(cluster: &KafkaCluster, topic: &str, partitions: i32) -> Vec<i64> {
    (0..partitions)
        .map(|p| cluster.offsets(topic, p).1)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_switch_to_kinesis_only_under_traffic_keeps_kafka_still_and_producers_whole() {
    const PARTITIONS: i32 = 3;
    const COUNT: usize = 3000;
    let cluster = KafkaCluster::shared();
    let (topic, stream) = ("ko-switch", "ko-switch-stream");
    let kinesis = KinesisLocal::start();
    kinesis.create_stream(stream, 2).await;
    let mut proxy = Proxy::start_with(cluster, &kinesis.mirror_config(topic, stream, 100.0));
    cluster.create_topic(topic, PARTITIONS);
    let admin = proxy.admin_port;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("acked");

    // An idempotent producer keeps producing keyed records, 150 a second.
    let args = format!(
        "produce --bootstrap {} --topic {topic} --count {COUNT} --codec lz4 --acks all --idempotent --rate 150 --acked-log {}",
        proxy.bootstrap(),
        log.display()
    );
    let producer = std::thread::spawn(move || {
        try_run_client("confluent", &words(&args)).unwrap_or_else(Value::String)
    });
    support::wait_until_async(
        "600 acknowledgements in mirror mode",
        Duration::from_secs(60),
        async || acked(&log).len(),
        |n| *n >= 600,
    )
    .await;

    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(
        &proxy.config_path,
        config.replace(
            "percent = 100.0\n",
            &format!("percent = 100.0\n{KINESIS_ONLY}"),
        ),
    )
    .unwrap();
    wait_for(
        admin,
        "the switch to kinesis-only",
        Duration::from_secs(30),
        |m| route_mode(m, topic, "kinesis-only") == 1.0,
    )
    .await;
    // Requests already on their way to Kafka at the switch land there; the ones after the
    // next 150 acknowledgements were all answered by the proxy.
    let at_switch = acked(&log).len();
    support::wait_until_async(
        "150 acknowledgements after the switch",
        Duration::from_secs(60),
        async || acked(&log).len(),
        |n| *n >= at_switch + 150,
    )
    .await;
    let kafka_after_switch = log_ends(cluster, topic, PARTITIONS);

    let outcome = producer.join().unwrap();
    let kafka_at_end = log_ends(cluster, topic, PARTITIONS);
    let acked = acked(&log);
    eprintln!(
        "outcome {outcome}; acknowledged {} ({at_switch} before the switch); Kafka's offsets after the switch {kafka_after_switch:?}, at the end {kafka_at_end:?}",
        acked.len()
    );
    assert_eq!(
        outcome["error_count"], 0,
        "producers see no error: {outcome}"
    );
    assert_eq!(outcome["produced"], COUNT as u64, "{outcome}");
    assert_eq!(acked.len(), COUNT);
    assert_eq!(
        kafka_at_end, kafka_after_switch,
        "no record reached Kafka's topic after the switch"
    );
    let kafka_holds: u64 = kafka_at_end.iter().map(|o| *o as u64).sum();
    assert!(
        (at_switch as u64..COUNT as u64).contains(&kafka_holds),
        "Kafka holds {kafka_holds} records"
    );

    // No offset was given out twice, and the proxy's follow Kafka's.
    let offsets: BTreeSet<(i32, i64)> = acked.iter().map(|(p, o, _)| (*p, *o)).collect();
    assert_eq!(offsets.len(), COUNT, "an offset acknowledged twice");
    let kafka: BTreeSet<(i32, i64)> = cluster
        .read_all(topic, false)
        .iter()
        .map(|r| (r.partition, r.offset))
        .collect();
    let below = offsets
        .iter()
        .filter(|(p, o)| !kafka.contains(&(*p, *o)) && *o < kafka_at_end[*p as usize])
        .count();
    assert_eq!(below, 0, "synthetic offsets below Kafka's log-end offset");

    // Every acknowledged record is in Kinesis: the mirror's copies of Kafka's, and the
    // proxy's own.
    let keys: BTreeSet<&str> = acked.iter().map(|(_, _, k)| k.as_str()).collect();
    let found = support::wait_until_async(
        "Kinesis to hold every acknowledged record",
        Duration::from_secs(60),
        async || kinesis.read_all(stream).await,
        |found| found.len() >= COUNT,
    )
    .await;
    let in_kinesis: BTreeSet<&str> = found.iter().map(|r| r.partition_key.as_str()).collect();
    let missing = keys.difference(&in_kinesis).count();
    eprintln!(
        "Kinesis holds {} records, {} distinct keys",
        found.len(),
        in_kinesis.len()
    );
    assert_eq!(missing, 0, "acknowledged records missing from Kinesis");
    assert_eq!(found.len(), COUNT, "in Kinesis once each");

    let routes: Value = serde_json::from_str(&get(admin, "/routes").1).unwrap();
    assert_eq!(routes["routes"][0]["mode"], "kinesis-only", "{routes}");
    assert_eq!(route_mode(&scrape(admin), topic, "mirror"), 0.0);
    assert!(proxy.daemon().log_text().contains("route mode in force"));
}

/// A partition's answer: (partition, error code, base offset).
type PartitionAnswer = (i32, i16, i64);

/// Per topic, in the response's order: each partition's answer.
fn answers(response: &ProduceResponse) -> Vec<(String, Vec<PartitionAnswer>)> {
    response
        .responses
        .iter()
        .map(|t| {
            let partitions = t
                .partition_responses
                .iter()
                .map(|p| (p.index, p.error_code, p.base_offset))
                .collect();
            (t.name.0.to_string(), partitions)
        })
        .collect()
}

fn records(prefix: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            (
                format!("{prefix}-{i}"),
                format!("value {prefix}-{i}").into_bytes(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_mixing_a_kinesis_only_topic_and_a_kafka_topic_is_answered_per_topic() {
    let cluster = KafkaCluster::shared();
    let (only, plain, stream) = ("ko-mixed-only", "ko-mixed-kafka", "ko-mixed-stream");
    let kinesis = KinesisLocal::start();
    kinesis.create_stream(stream, 1).await;
    let route = kinesis.mirror_config(only, stream, 100.0) + KINESIS_ONLY;
    let proxy = Proxy::start_with(cluster, &route);
    // Both exist in Kafka: the kinesis-only one must stay empty there.
    cluster.create_topic(only, 2);
    cluster.create_topic(plain, 1);
    let batch = |topic, partition, prefix| {
        RawProduce {
            partition,
            ..RawProduce::new(topic, records(prefix, 3))
        }
        .batch()
    };
    let frame = produce_frame_of(
        -1,
        &[
            (only, 0, batch(only, 0, "a")),
            (only, 1, batch(only, 1, "b")),
            (plain, 0, batch(plain, 0, "k")),
        ],
    );
    let mut conn = TcpStream::connect(proxy.bootstrap()).await.unwrap();
    let first = answers(&send(&mut conn, &frame).await);
    assert_eq!(
        first,
        [
            (only.to_owned(), vec![(0, 0, 0), (1, 0, 0)]),
            (plain.to_owned(), vec![(0, 0, 0)]),
        ],
        "in the request's order (the proxy's answers before Kafka's), each with its offsets"
    );
    // Again, and then the kinesis-only topic alone, which sends nothing to Kafka.
    let second = answers(&send(&mut conn, &frame).await);
    assert_eq!(second[0].1, [(0, 0, 3), (1, 0, 3)]);
    assert_eq!(second[1].1, [(0, 0, 3)]);
    let alone = produce_frame_of(-1, &[(only, 0, batch(only, 0, "c"))]);
    let third = answers(&send(&mut conn, &alone).await);
    assert_eq!(third, [(only.to_owned(), vec![(0, 0, 6)])]);

    assert_eq!(
        cluster.offsets(plain, 0),
        (0, 6),
        "the Kafka topic's records are in Kafka"
    );
    for partition in 0..2 {
        assert_eq!(cluster.offsets(only, partition), (0, 0), "nothing in Kafka");
    }
    let found = support::wait_until_async(
        "Kinesis to hold the kinesis-only records",
        Duration::from_secs(30),
        async || kinesis.read_all(stream).await,
        |found| found.len() >= 15,
    )
    .await;
    let keys: BTreeSet<String> = found.iter().map(|r| r.partition_key.clone()).collect();
    assert_eq!(found.len(), 15, "{keys:?}");
    assert!(keys.iter().all(|k| !k.starts_with("k-")), "{keys:?}");
}
