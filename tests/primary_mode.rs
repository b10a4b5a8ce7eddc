//! `mode = "kinesis-primary"`: a Produce is acknowledged only once Kafka and Kinesis both have
//! its records. On real Kafka and the Kinesis emulator, with the fault layer in front of the
//! emulator:
//! - through a Kinesis outage, idempotent producers see retriable errors and retry, and
//!   afterwards every record Kafka holds is in Kinesis exactly once, and every record a client
//!   saw acknowledged is in both;
//! - a live reload from `mirror` to `kinesis-primary` takes effect: `route_mode` moves, answers
//!   wait for Kinesis, and transactional producers are refused.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::faults::{FaultLayer, FaultPlan};
use support::kinesis::KinesisLocal;
use support::metrics::{get, scrape, value, wait_for, wait_for_sent};
use support::{try_run_client, words, KafkaCluster, Proxy};

struct Rig {
    topic: String,
    stream: String,
    kinesis: KinesisLocal,
    faults: FaultLayer,
    proxy: Proxy,
}

/// A topic of 3 partitions routed at 100% to a stream of 2 shards behind the fault layer;
/// `mode` is the route's `mode` line, empty for the default.
async fn rig(name: &str, mode: &str) -> Rig {
    let cluster = KafkaCluster::shared();
    let topic = format!("primary-{name}");
    let stream = format!("{topic}-stream");
    let kinesis = KinesisLocal::start();
    kinesis.create_stream(&stream, 2).await;
    let faults = FaultLayer::start(kinesis.endpoint.trim_start_matches("http://").to_owned()).await;
    // The emulator's usual route, through the fault layer.
    let route = kinesis
        .mirror_config(&topic, &stream, 100.0)
        .replace(&kinesis.endpoint, &faults.endpoint);
    let proxy = Proxy::start_with(cluster, &format!("{route}{mode}\n"));
    cluster.create_topic(&topic, 3);
    Rig {
        proxy,
        faults,
        kinesis,
        stream,
        topic,
    }
}

/// confluent-kafka producing `count` records, idempotent, its defaults otherwise (the CLI
/// sets message.timeout.ms to 60 s), logging each acknowledged record to `acked_log`; on a
/// thread, which answers the client's output.
fn produce(
    rig: &Rig,
    count: usize,
    rate: usize,
    acked_log: &Path,
    extra: &[&str],
) -> std::thread::JoinHandle<Value> {
    let mut args: Vec<String> = words(&format!(
        "produce --bootstrap {} --topic {} --count {count} --codec lz4 --acks all --idempotent --rate {rate} --acked-log {}",
        rig.proxy.bootstrap(),
        rig.topic,
        acked_log.display()
    ))
    .into_iter()
    .map(str::to_owned)
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        try_run_client("confluent", &args).unwrap_or_else(Value::String)
    })
}

fn finish(producer: std::thread::JoinHandle<Value>) -> Value {
    producer.join().unwrap()
}

/// (key, value) of every record in the stream, with how many times each is there.
async fn in_kinesis(rig: &Rig) -> BTreeMap<(Vec<u8>, Vec<u8>), usize> {
    let mut found = BTreeMap::new();
    for r in rig.kinesis.read_all(&rig.stream).await {
        *found
            .entry((r.partition_key.into_bytes(), r.data))
            .or_insert(0) += 1;
    }
    found
}

/// The acknowledged records the log names: (partition, offset).
fn acked(log: &Path) -> BTreeSet<(i32, i64)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.split(' ');
            let p = f.next().unwrap().parse().unwrap();
            (p, f.next().unwrap().parse().unwrap())
        })
        .collect()
}

fn primary_errors(m: &BTreeMap<String, f64>, topic: &str, error: &str) -> f64 {
    value(
        m,
        "kafka_kinesis_proxy_primary_errors_total",
        &[("topic", topic), ("error", error)],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn through_a_kinesis_outage_producers_retry_and_both_systems_end_up_equal() {
    let rig = rig("outage", "mode = \"kinesis-primary\"").await;
    let admin = rig.proxy.admin_port;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("acked");
    const COUNT: usize = 3000;
    let started = Instant::now();
    let producer = produce(&rig, COUNT, 150, &log, &[]);
    // Traffic flows, acknowledged through both systems, before Kinesis goes down.
    support::wait_until_async(
        "300 acknowledgements before the outage",
        Duration::from_secs(60),
        async || {
            std::fs::read_to_string(&log)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        },
        |acked| *acked >= 300,
    )
    .await;
    rig.faults.set(FaultPlan {
        down: true,
        ..FaultPlan::default()
    });
    let before_outage = std::fs::read_to_string(&log).unwrap().lines().count();
    // The outage itself lasts 10 s, as the scenario says.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = std::fs::read_to_string(&log).unwrap().lines().count();
    rig.faults.set(FaultPlan::default());
    let outcome = finish(producer);
    let took = started.elapsed();
    let m = scrape(admin);
    let timeouts = primary_errors(&m, &rig.topic, "timeout");
    let failed = primary_errors(&m, &rig.topic, "kinesis_failed");
    let added_count = value(
        &m,
        "kafka_kinesis_proxy_primary_added_seconds_count",
        &[("topic", &rig.topic)],
    );
    let spooled = value(
        &m,
        "kafka_kinesis_proxy_mirror_records_total",
        &[("result", "spooled")],
    );
    eprintln!(
        "outcome {outcome}; {took:?}; acked before the outage {before_outage}, by its end {during}; \
         timeouts {timeouts}, kinesis_failed {failed}, answers {added_count}, spooled {spooled}"
    );
    assert_eq!(
        outcome["error_count"], 0,
        "retriable errors are retried until delivered: {outcome}"
    );
    assert_eq!(outcome["produced"], COUNT as u64, "{outcome}");
    assert!(
        timeouts > 0.0,
        "the outage outlasts primary_timeout_ms: producers must have heard REQUEST_TIMED_OUT"
    );
    // Nothing is acknowledged while Kinesis is down, save what was already on its way (the
    // last answers before the outage and the timeout of the first requests).
    assert!(
        during - before_outage < 150 * 2,
        "acknowledged during the outage: {}",
        during - before_outage
    );

    // Kafka holds each record once (idempotence), and Kinesis holds exactly those, once each.
    let kafka = KafkaCluster::shared().read_all(&rig.topic, false);
    let kafka_records: BTreeSet<(Vec<u8>, Vec<u8>)> = kafka
        .iter()
        .map(|r| (r.key.clone().unwrap(), r.value.clone().unwrap()))
        .collect();
    assert_eq!(kafka.len(), COUNT, "Kafka holds every record once");
    assert_eq!(kafka_records.len(), COUNT);
    let found = support::wait_until_async(
        "Kinesis to hold every record",
        Duration::from_secs(60),
        async || in_kinesis(&rig).await,
        |found| found.values().sum::<usize>() >= COUNT,
    )
    .await;
    let duplicated: Vec<_> = found.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(
        duplicated.is_empty(),
        "in Kinesis more than once: {duplicated:?}"
    );
    let unexpected = found.keys().filter(|r| !kafka_records.contains(*r)).count();
    assert_eq!(unexpected, 0, "records in Kinesis that Kafka does not hold");
    assert_eq!(found.len(), COUNT);

    // Every acknowledged record is in Kafka at the offset the client was told, hence in both.
    let acked = acked(&log);
    assert_eq!(acked.len(), COUNT);
    let at: BTreeSet<(i32, i64)> = kafka.iter().map(|r| (r.partition, r.offset)).collect();
    let missing = acked.difference(&at).count();
    assert_eq!(missing, 0, "acknowledged offsets Kafka does not hold");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_reload_to_kinesis_primary_takes_effect() {
    let mut rig = rig("reload", "").await;
    let admin = rig.proxy.admin_port;
    let mode = |m: &BTreeMap<String, f64>, mode: &str| {
        value(
            m,
            "kafka_kinesis_proxy_route_mode",
            &[("topic", &rig.topic), ("mode", mode)],
        )
    };
    let m = scrape(admin);
    assert_eq!(
        (mode(&m, "mirror"), mode(&m, "kinesis-primary")),
        (1.0, 0.0)
    );
    // Kinesis answers late: a mirror-mode answer does not wait for it...
    rig.faults.set(FaultPlan {
        latency: Duration::from_millis(1500),
        ..FaultPlan::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let before = finish(produce(&rig, 50, 0, &dir.path().join("before"), &[]));
    assert_eq!(before["error_count"], 0, "{before}");
    wait_for_sent(admin, 50, Duration::from_secs(30)).await;
    let added = |m: &BTreeMap<String, f64>, what: &str| {
        value(
            m,
            &format!("kafka_kinesis_proxy_primary_added_seconds_{what}"),
            &[("topic", &rig.topic)],
        )
    };
    assert_eq!(added(&scrape(admin), "count"), 0.0);

    let config = std::fs::read_to_string(&rig.proxy.config_path).unwrap();
    std::fs::write(
        &rig.proxy.config_path,
        config.replace(
            "percent = 100.0\n",
            "percent = 100.0\nmode = \"kinesis-primary\"\n",
        ),
    )
    .unwrap();
    let m = wait_for(
        admin,
        "the switch to kinesis-primary",
        Duration::from_secs(30),
        |m| mode(m, "kinesis-primary") == 1.0,
    )
    .await;
    assert_eq!(mode(&m, "mirror"), 0.0, "one mode in force");
    let routes: Value = serde_json::from_str(&get(admin, "/routes").1).unwrap();
    assert_eq!(routes["routes"][0]["mode"], "kinesis-primary", "{routes}");
    assert!(rig
        .proxy
        .daemon()
        .log_text()
        .contains("route mode in force"));

    // ...a kinesis-primary answer does: each waited at least the added latency, and once the
    // producer is done, every record it was acknowledged is in Kinesis already.
    let log = dir.path().join("after");
    let after = finish(produce(&rig, 50, 0, &log, &[]));
    assert_eq!(after["error_count"], 0, "{after}");
    let m = scrape(admin);
    let (answers, waited) = (added(&m, "count"), added(&m, "sum"));
    eprintln!("kinesis-primary answers {answers}, waited {waited:.2}s in all");
    assert!(answers > 0.0);
    assert!(
        waited / answers >= 1.4,
        "answers waited {waited}s for {answers}"
    );
    let stored = rig.kinesis.read_all(&rig.stream).await.len();
    assert_eq!(
        stored, 100,
        "every acknowledged record is in Kinesis when the producer is done"
    );
    rig.faults.set(FaultPlan::default());

    // Transactional producers are refused, naming the topic and the mode.
    let txn = finish(produce(
        &rig,
        5,
        0,
        &dir.path().join("txn"),
        &["--transactional-id", "primary-txn", "--timeout", "15"],
    ));
    eprintln!("transactional producer: {txn}");
    assert_eq!(txn["produced"], 0, "{txn}");
    assert!(
        txn.to_string().contains("kinesis-primary")
            || txn.to_string().contains("INVALID_REQUEST")
            || txn.to_string().contains("nvalid request"),
        "{txn}"
    );
}
