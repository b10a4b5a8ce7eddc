//! The mirror under Kinesis faults, injected by a layer in front of the real emulator: partial
//! throttling, a full outage with the spool, block mode, a kill -9 with a torn spool tail.
//! Each test checks that no record is missing, none is duplicated, and each key's records sit
//! in Kafka order in their shard.
//!
//! Kafka is the single-node Apache Kafka cluster shared by every test of this binary, so each
//! test produces to a topic of its own, named after its stream; the emulator, the fault layer
//! and the proxy are the test's own.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::faults::{DescribeFaults, FaultLayer, FaultPlan};
use support::kinesis::{KinesisLocal, StoredRecord};
use support::metrics::{get, scrape, value, wait_for};
use support::raw_produce::RawProduce;
use support::{python, wait_until_async, KafkaCluster, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEYS: usize = 2000;

struct Rig {
    /// The test's topic, mirrored to its stream.
    topic: String,
    kinesis: KinesisLocal,
    faults: FaultLayer,
    proxy: Proxy,
}

async fn rig(stream: &str, extra: &str) -> Rig {
    rig_with(stream, "", extra).await
}

/// `top` holds top-level config keys; `extra` goes into the [kinesis] table (and may open
/// further tables).
async fn rig_with(stream: &str, top: &str, extra: &str) -> Rig {
    let cluster = KafkaCluster::shared();
    let topic = format!("events-{stream}");
    let kinesis = KinesisLocal::start();
    kinesis.create_stream(stream, 4).await;
    let faults = FaultLayer::start(kinesis.endpoint.trim_start_matches("http://").to_owned()).await;
    let config = format!(
        "{top}\n[kinesis]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nlinger_ms = 20\nrequest_timeout_ms = 60000\n{extra}\n\n[[mirror]]\ntopic = \"{topic}\"\nstream = \"{stream}\"\npercent = 100.0\n",
        faults.endpoint
    );
    let proxy = Proxy::start_with(cluster, &config);
    cluster.create_topic(&topic, 6);
    Rig {
        topic,
        kinesis,
        faults,
        proxy,
    }
}

impl Rig {
    /// Keyed traffic to the test's topic through the proxy: record `order` i has key
    /// customer-(i % KEYS).
    fn produce(&self, count: usize, rate: usize) -> Child {
        produce(&self.proxy.bootstrap(), &self.topic, count, rate)
    }
}

/// Keyed traffic: record `order` i has key customer-(i % KEYS).
fn produce(bootstrap: &str, topic: &str, count: usize, rate: usize) -> Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo_traffic.py");
    Command::new(python())
        .arg(script)
        .args([
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--client-id",
            "faults",
        ])
        .args([
            "--count",
            &count.to_string(),
            "--rate",
            &rate.to_string(),
            "--keys",
            &KEYS.to_string(),
        ])
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child) -> Value {
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("producer output: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Exactly once and in order per key: every order 0..count appears once, and within each
/// shard a key's orders only increase.
fn check_delivery(stored: &[StoredRecord], count: usize) {
    let mut seen = BTreeSet::new();
    let mut last: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    let mut out_of_order = 0;
    for r in stored {
        let v: Value = serde_json::from_slice(&r.data).unwrap();
        let order = v["order"].as_i64().unwrap();
        assert_eq!(v["customer"].as_str(), Some(r.partition_key.as_str()));
        assert!(seen.insert(order), "order {order} delivered twice");
        if let Some(previous) = last.insert((r.shard_id.as_str(), r.partition_key.as_str()), order)
        {
            if previous > order {
                out_of_order += 1;
            }
        }
    }
    let missing: Vec<usize> = (0..count)
        .filter(|o| !seen.contains(&(*o as i64)))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {count} records missing, e.g. orders {missing:?}",
        count - seen.len()
    );
    assert_eq!(seen.len(), count);
    assert_eq!(out_of_order, 0, "records out of order within a key");
}

fn sent(m: &BTreeMap<String, f64>) -> f64 {
    value(
        m,
        "kafka_kinesis_proxy_mirror_records_total",
        &[("result", "sent")],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn partial_throttling_delivers_everything_once_in_key_order() {
    let rig = rig("throttled", "").await;
    rig.faults.set(FaultPlan {
        throttle_entries: 0.2,
        ..FaultPlan::default()
    });
    const COUNT: usize = 20_000;
    let outcome = finish(rig.produce(COUNT, 2000));
    assert_eq!(outcome["errors"], 0, "{outcome}");
    let m = wait_for(
        rig.proxy.admin_port,
        "every record sent",
        Duration::from_secs(240),
        |m| sent(m) >= COUNT as f64,
    )
    .await;
    let stored = rig.kinesis.read_all("throttled").await;
    check_delivery(&stored, COUNT);
    let retried = value(
        &m,
        "kafka_kinesis_proxy_mirror_attempts_total",
        &[("kind", "retry")],
    );
    let throttled = value(&m, "kafka_kinesis_proxy_shard_throttled_total", &[]);
    let injected = FaultLayer::count(&rig.faults.counters.entries_throttled);
    println!("partial throttling: produced {COUNT}, delivered {}, throttled entries {injected}, retried {retried}, lost 0", stored.len());
    assert!(injected > 2000, "the fault layer throttled {injected}");
    assert_eq!(
        throttled, injected as f64,
        "every throttled entry is counted per shard"
    );
    assert!(
        retried >= injected as f64,
        "every throttled entry was retried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn outage_spills_to_the_spool_and_replays_in_order() {
    let rig = rig("outage", "record_ttl_secs = 3").await;
    let admin = rig.proxy.admin_port;
    const COUNT: usize = 12_000;
    let producer = rig.produce(COUNT, 400);
    tokio::time::sleep(Duration::from_secs(5)).await;
    rig.faults.set(FaultPlan {
        down: true,
        ..FaultPlan::default()
    });
    tokio::time::sleep(Duration::from_secs(30)).await;
    let during = scrape(admin);
    let backlog = |admin| -> u64 {
        let routes: Value = serde_json::from_str(&get(admin, "/routes").1).unwrap();
        routes["routes"][0]["spool_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("no spool backlog in /routes: {routes}"))
    };
    assert!(
        backlog(admin) > 0,
        "/routes must show the spool backlog during the outage"
    );
    rig.faults.set(FaultPlan::default());
    let outcome = finish(producer);
    assert_eq!(
        outcome["errors"], 0,
        "Kafka must see no errors during the outage: {outcome}"
    );
    let spooled = value(
        &during,
        "kafka_kinesis_proxy_mirror_records_total",
        &[("result", "spooled")],
    );
    let spool_bytes = value(&during, "kafka_kinesis_proxy_spool_bytes", &[]);
    assert!(
        spooled > 1000.0 && spool_bytes > 0.0,
        "the outage must spill to the spool: spooled {spooled}, {spool_bytes} bytes"
    );
    wait_for(
        admin,
        "everything delivered after recovery",
        Duration::from_secs(240),
        |m| sent(m) >= COUNT as f64,
    )
    .await;
    // Replayed entries leave the spool once their delivery is counted, so its size reaches 0
    // a moment after `sent` reaches the count.
    let m = wait_for(admin, "the spool to drain", Duration::from_secs(30), |m| {
        value(m, "kafka_kinesis_proxy_spool_bytes", &[]) == 0.0
    })
    .await;
    assert_eq!(
        backlog(admin),
        0,
        "the backlog in /routes drains with the spool"
    );
    let stored = rig.kinesis.read_all("outage").await;
    check_delivery(&stored, COUNT);
    println!(
        "outage: produced {COUNT}, delivered {}, spooled {spooled} (peak spool {spool_bytes} bytes), dead-lettered {}, lost 0",
        stored.len(),
        value(&m, "kafka_kinesis_proxy_mirror_records_total", &[("result", "dead_letter")])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_an_outage_replays_the_spool_after_a_torn_tail() {
    let mut rig = rig("crash", "record_ttl_secs = 2").await;
    let admin = rig.proxy.admin_port;
    rig.faults.set(FaultPlan {
        down: true,
        ..FaultPlan::default()
    });
    const COUNT: usize = 3000;
    let outcome = finish(rig.produce(COUNT, 1000));
    assert_eq!(outcome["errors"], 0, "{outcome}");
    let m = wait_for(admin, "everything spooled", Duration::from_secs(60), |m| {
        value(
            m,
            "kafka_kinesis_proxy_mirror_records_total",
            &[("result", "spooled")],
        ) >= COUNT as f64
    })
    .await;
    let spooled = value(
        &m,
        "kafka_kinesis_proxy_mirror_records_total",
        &[("result", "spooled")],
    );
    rig.proxy.daemon().signal("-KILL");
    rig.proxy.daemon().wait_exit(Duration::from_secs(10));

    // A crash mid-write leaves a torn tail: append half a record's worth of garbage.
    let spool_dir = rig.proxy.config_path.parent().unwrap().join("spool/crash");
    let segment = std::fs::read_dir(&spool_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "spool"))
        .max()
        .expect("a spool segment");
    let mut torn = std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap();
    std::io::Write::write_all(
        &mut torn,
        &[0x00, 0x00, 0x01, 0x00, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3],
    )
    .unwrap();
    drop(torn);

    rig.faults.set(FaultPlan::default());
    rig.proxy.restart();
    let m = wait_for(admin, "the spool replayed", Duration::from_secs(120), |m| {
        sent(m) >= COUNT as f64
    })
    .await;
    let stored = rig.kinesis.read_all("crash").await;
    check_delivery(&stored, COUNT);
    let log = rig.proxy.daemon().log_tail(2000);
    assert!(
        log.contains("spool tail was torn or corrupt"),
        "the truncation must be reported:\n{log}"
    );
    println!(
        "kill -9: produced {COUNT}, spooled before the kill {spooled}, delivered after restart {} (sent metric {}), lost 0",
        stored.len(),
        sent(&m)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn block_mode_slows_producers_and_loses_nothing() {
    let rig = rig(
        "blocked",
        "\n[mirror_buffer]\nmax_bytes = 65536\nwhen_full = \"block\"",
    )
    .await;
    rig.faults.set(FaultPlan {
        latency: Duration::from_millis(500),
        ..FaultPlan::default()
    });
    const COUNT: usize = 9000;
    let started = Instant::now();
    let outcome = finish(rig.produce(COUNT, 3000));
    let elapsed = started.elapsed();
    assert_eq!(
        outcome["errors"], 0,
        "block mode must not fail producers: {outcome}"
    );
    let m = wait_for(
        rig.proxy.admin_port,
        "every record sent",
        Duration::from_secs(240),
        |m| sent(m) >= COUNT as f64,
    )
    .await;
    check_delivery(&rig.kinesis.read_all("blocked").await, COUNT);
    // The producer asked for 3000 records/s; block mode held it to what Kinesis took.
    let produce_p = value(
        &m,
        "kafka_kinesis_proxy_request_duration_seconds_sum",
        &[("api", "Produce")],
    ) / value(
        &m,
        "kafka_kinesis_proxy_request_duration_seconds_count",
        &[("api", "Produce")],
    );
    println!("block mode: {COUNT} records in {elapsed:?} (unthrottled target 3 s), mean Produce latency {produce_p:.3}s, lost 0");
    // Kinesis answers after 500 ms and the budget holds ~600 records: Produce responses must
    // have been held back (unblocked they take a few milliseconds on loopback).
    assert!(
        produce_p > 0.05,
        "block mode did not hold Produce responses: mean {produce_p:.3}s"
    );
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_mirror_records_total",
            &[("result", "dropped")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_mirror_records_total",
            &[("result", "spooled")]
        ),
        0.0
    );
}

/// Kinesis down, `count` records produced and acknowledged by Kafka and queued for Kinesis,
/// then SIGTERM: the proxy must exit 0 having spooled what it could not deliver.
async fn produce_in_an_outage_then_sigterm(rig: &mut Rig, count: usize) {
    rig.faults.set(FaultPlan {
        down: true,
        ..FaultPlan::default()
    });
    let outcome = finish(rig.produce(count, 1000));
    assert_eq!(outcome["errors"], 0, "{outcome}");
    wait_for(
        rig.proxy.admin_port,
        "the records queued for Kinesis",
        Duration::from_secs(30),
        |m| {
            value(
                m,
                "kafka_kinesis_proxy_kafka_records_total",
                &[("result", "ok")],
            ) >= count as f64
                && value(m, "kafka_kinesis_proxy_mirror_buffer_bytes", &[]) > 0.0
        },
    )
    .await;
    rig.proxy.daemon().signal("-TERM");
    let code = rig.proxy.daemon().wait_exit(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "a graceful shutdown exits 0:\n{}",
        rig.proxy.daemon().log_tail(50)
    );
}

/// SIGTERM during an outage: the proxy finishes, spools what Kinesis did not take within the
/// grace period, exits 0, and delivers it all after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_spools_what_is_left_and_exits_cleanly() {
    let mut rig = rig_with("stopping", "shutdown_grace_secs = 2", "").await;
    let admin = rig.proxy.admin_port;
    const COUNT: usize = 2000;
    produce_in_an_outage_then_sigterm(&mut rig, COUNT).await;
    let log = rig.proxy.daemon().log_tail(200);
    assert!(
        log.contains("mirror writer stopped") && log.contains("stopped"),
        "{log}"
    );

    rig.faults.set(FaultPlan::default());
    rig.proxy.restart();
    wait_for(
        admin,
        "the spooled records delivered",
        Duration::from_secs(120),
        |m| sent(m) >= COUNT as f64,
    )
    .await;
    check_delivery(&rig.kinesis.read_all("stopping").await, COUNT);
    println!("sigterm: produced {COUNT}, spooled at shutdown and delivered after restart {COUNT}, lost 0");
}

/// A spool stranded by a removed route: records acknowledged during an outage, the route
/// removed from the config, SIGTERM, Kinesis back, restart. The records are still delivered,
/// because every spool that holds records gets a writer at startup.
#[tokio::test(flavor = "multi_thread")]
async fn a_spool_whose_route_was_removed_is_delivered_after_a_restart() {
    let mut rig = rig_with("stranded", "shutdown_grace_secs = 2", "").await;
    let admin = rig.proxy.admin_port;
    const COUNT: usize = 500;
    produce_in_an_outage_then_sigterm(&mut rig, COUNT).await;
    // The route goes; [kinesis] and [spool] stay, as an operator's edit would leave them.
    let config = std::fs::read_to_string(&rig.proxy.config_path).unwrap();
    let mut in_route = false;
    let without_route: String = config
        .lines()
        .filter(|line| {
            if line.starts_with('[') {
                in_route = line.trim() == "[[mirror]]";
            }
            !in_route
        })
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(without_route.contains("[spool]") && !without_route.contains("[[mirror]]"));
    std::fs::write(&rig.proxy.config_path, without_route).unwrap();

    rig.faults.set(FaultPlan::default());
    rig.proxy.restart();
    wait_for(
        admin,
        "the stranded spool delivered",
        Duration::from_secs(120),
        |m| sent(m) >= COUNT as f64,
    )
    .await;
    check_delivery(&rig.kinesis.read_all("stranded").await, COUNT);
    assert!(rig
        .proxy
        .daemon()
        .log_text()
        .contains("the spool of a stream no route names holds records"));
}

/// A low memory budget holds the process near it under an outage: the rest spills.
#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_near_the_budget_during_an_outage() {
    const BUDGET: u64 = 1024 * 1024;
    let rig = rig(
        "budget",
        &format!("\n[mirror_buffer]\nmax_bytes = {BUDGET}\nwhen_full = \"spill\""),
    )
    .await;
    let admin = rig.proxy.admin_port;
    rig.faults.set(FaultPlan {
        down: true,
        ..FaultPlan::default()
    });
    // About 2.6 MB of records against a 1 MiB budget (kinesis-local slows down past ~20,000).
    const COUNT: usize = 20_000;
    let outcome = finish(rig.produce(COUNT, 4000));
    assert_eq!(outcome["errors"], 0, "{outcome}");
    let m = wait_for(
        admin,
        "everything queued or spooled",
        Duration::from_secs(60),
        |m| {
            value(
                m,
                "kafka_kinesis_proxy_kafka_records_total",
                &[("result", "ok")],
            ) >= COUNT as f64
                && value(
                    m,
                    "kafka_kinesis_proxy_mirror_records_total",
                    &[("result", "spooled")],
                ) > 0.0
        },
    )
    .await;
    let buffered = value(&m, "kafka_kinesis_proxy_mirror_buffer_bytes", &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", rig.proxy.pid())).unwrap();
    let kib = |field: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let (rss, peak) = (kib("VmRSS:") * 1024, kib("VmHWM:") * 1024);
    println!(
        "memory budget {BUDGET} bytes: buffered {buffered} bytes, spooled {} records, RSS {} MiB (peak {} MiB)",
        value(&m, "kafka_kinesis_proxy_mirror_records_total", &[("result", "spooled")]),
        rss / (1024 * 1024),
        peak / (1024 * 1024)
    );
    assert!(
        buffered <= BUDGET as f64,
        "the buffer exceeds its budget: {buffered}"
    );
    assert!(
        peak < BUDGET + 64 * 1024 * 1024,
        "peak RSS {peak} exceeds the budget plus 64 MiB"
    );
    rig.faults.set(FaultPlan::default());
    wait_for(
        admin,
        "everything delivered",
        Duration::from_secs(240),
        |m| sent(m) >= COUNT as f64,
    )
    .await;
    check_delivery(&rig.kinesis.read_all("budget").await, COUNT);
}

/// `/readyz` and `/readyz/mirror` status codes.
fn readiness(admin: u16) -> (u16, u16) {
    (get(admin, "/readyz").0, get(admin, "/readyz/mirror").0)
}

/// Waits until (`/readyz`, `/readyz/mirror`) answer `codes`.
async fn wait_ready(admin: u16, codes: (u16, u16)) {
    wait_until_async(
        "readiness",
        Duration::from_secs(60),
        async || readiness(admin),
        |now| *now == codes,
    )
    .await;
}

/// Runs `producer` to its end while checking `/readyz` every 100 ms: every answer must be 200.
async fn finish_while_ready(admin: u16, mut producer: Child) -> Value {
    let mut checks = 0;
    while producer.try_wait().unwrap().is_none() {
        let (code, body) = get(admin, "/readyz");
        assert_eq!(code, 200, "/readyz after {checks} checks: {body}");
        checks += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    finish(producer)
}

/// Item 12 of the mirror-correctness issue: the account's DescribeStreamSummary quota (20
/// calls per second) is used up, then the control plane is slow. Neither halts delivery or
/// touches `/readyz`, which answers for Kafka; the old writer marked the stream unhealthy at
/// its next 5 s probe, stopped dispatching, and turned `/readyz` to 503.
#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_or_slow_describe_neither_halts_delivery_nor_readiness() {
    // Refreshing the shard map every 2 s makes describes happen during each phase.
    let rig = rig("control-plane", "shard_map_refresh_secs = 2").await;
    let admin = rig.proxy.admin_port;
    wait_ready(admin, (200, 200)).await;
    const COUNT: usize = 3000;
    for (phase, describe) in [
        DescribeFaults {
            throttle: 1.0,
            ..DescribeFaults::default()
        },
        DescribeFaults {
            latency: Duration::from_secs(30),
            ..DescribeFaults::default()
        },
    ]
    .into_iter()
    .enumerate()
    {
        rig.faults.set(FaultPlan {
            describe,
            ..FaultPlan::default()
        });
        let described = FaultLayer::count(&rig.faults.counters.describes);
        // 10 s at 300 records a second: two probe periods of the old writer.
        let outcome = finish_while_ready(admin, rig.produce(COUNT, 300)).await;
        assert_eq!(outcome["errors"], 0, "{outcome}");
        let expected = (phase + 1) * COUNT;
        wait_for(admin, "every record sent", Duration::from_secs(60), |m| {
            sent(m) >= expected as f64
        })
        .await;
        let describes = FaultLayer::count(&rig.faults.counters.describes) - described;
        println!("describe faults phase {phase}: {COUNT} records delivered, {describes} describes meanwhile");
        assert!(describes > 0, "the faults must be exercised");
        assert_eq!(readiness(admin), (200, 200), "PutRecords answered: healthy");
    }
    let stored = rig.kinesis.read_all("control-plane").await;
    assert_eq!(stored.len(), 2 * COUNT, "every record once");
}

/// Item 12: a real outage (every connection to Kinesis cut) shows in `/readyz/mirror`, in
/// `/routes` and in `stream_healthy`, while `/readyz` stays 200; recovery heals all three.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_mirror_reports_an_outage_and_readyz_stays_ready() {
    let rig = rig("health-outage", "").await;
    let admin = rig.proxy.admin_port;
    wait_ready(admin, (200, 200)).await;
    rig.faults.set(FaultPlan {
        down: true,
        ..FaultPlan::default()
    });
    const COUNT: usize = 200;
    let outcome = finish_while_ready(admin, rig.produce(COUNT, 100)).await;
    assert_eq!(outcome["errors"], 0, "{outcome}");
    wait_ready(admin, (200, 503)).await;
    let (_, body) = get(admin, "/readyz/mirror");
    assert!(body.contains("stream `health-outage`"), "{body}");
    let routes: Value = serde_json::from_str(&get(admin, "/routes").1).unwrap();
    assert_eq!(routes["routes"][0]["stream_healthy"], false, "{routes}");
    assert!(routes["routes"][0]["stream_error"].is_string(), "{routes}");
    let m = scrape(admin);
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_stream_healthy",
            &[("stream", "health-outage")]
        ),
        0.0
    );
    let outage_ended = Instant::now();
    rig.faults.set(FaultPlan::default());
    wait_for(admin, "every record sent", Duration::from_secs(120), |m| {
        sent(m) >= COUNT as f64
    })
    .await;
    wait_ready(admin, (200, 200)).await;
    println!(
        "outage: /readyz/mirror 503 during it, 200 again {:.1} s after it ended",
        outage_ended.elapsed().as_secs_f64()
    );
    check_delivery(&rig.kinesis.read_all("health-outage").await, COUNT);
}

/// Item 14: the stream's per-record limit is re-read with each shard-map refresh. The
/// emulator does not report MaxRecordSizeInKiB, so the fault layer injects one after the
/// proxy started: a record over it is dead-lettered as oversize instead of being sent. The
/// old writer read the limit only when the stream (re)gained health, and sent it.
#[tokio::test(flavor = "multi_thread")]
async fn the_record_size_limit_is_reread_with_each_shard_map_refresh() {
    let stream = "record-limit";
    let rig = rig(stream, "shard_map_refresh_secs = 1").await;
    let admin = rig.proxy.admin_port;
    wait_ready(admin, (200, 200)).await;
    let value_of = |tag: &str| {
        let mut value = tag.as_bytes().to_vec();
        value.resize(100 * 1024, b'.');
        value
    };
    let produce_one = |tag: &'static str| {
        let frame = RawProduce::new(&rig.topic, vec![(tag.to_owned(), value_of(tag))]).frame();
        let bootstrap = rig.proxy.bootstrap();
        async move {
            let mut client = tokio::net::TcpStream::connect(bootstrap).await.unwrap();
            client.write_all(&frame).await.unwrap();
            let size = client.read_i32().await.unwrap();
            let mut answer = vec![0u8; size as usize];
            client.read_exact(&mut answer).await.unwrap();
        }
    };
    produce_one("before").await;
    wait_for(
        admin,
        "the 100 KiB record sent",
        Duration::from_secs(30),
        |m| sent(m) >= 1.0,
    )
    .await;
    rig.faults.set(FaultPlan {
        describe: DescribeFaults {
            max_record_size_kib: Some(64),
            ..DescribeFaults::default()
        },
        ..FaultPlan::default()
    });
    // Describes received after the plan changed: the last ones surely read it, and their
    // answers reach the writer long before a record that goes through Kafka first.
    let described = FaultLayer::count(&rig.faults.counters.describes);
    wait_until_async(
        "a refresh to read the new limit",
        Duration::from_secs(30),
        async || FaultLayer::count(&rig.faults.counters.describes),
        |count| *count >= described + 3,
    )
    .await;
    produce_one("after").await;
    let m = wait_for(
        admin,
        "the record counted oversize",
        Duration::from_secs(30),
        |m| {
            value(
                m,
                "kafka_kinesis_proxy_mirror_records_total",
                &[("result", "oversize")],
            ) >= 1.0
        },
    )
    .await;
    assert_eq!(sent(&m), 1.0, "the record over the new limit is not sent");
    let stored = rig.kinesis.read_all(stream).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].partition_key, "before");
}
