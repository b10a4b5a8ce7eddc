//! How fast `verify` checks a topic against its stream: records per second over one million
//! records (KKP_VERIFY_BENCH_RECORDS) that sit in both Apache Kafka 4.1 (a single KRaft node
//! from the test tools) and kinesalite (npm, installed by scripts/install-test-deps.sh).
//!
//! The records are written straight to both sides, not through the proxy: what is measured is
//! verify itself, the release binary run as an operator runs it, from start to exit: reading
//! the stream, reading the topic, comparing and reporting. 100,000 keys of 10 records each, 100
//! byte values, 4 partitions and 4 shards. Prints verify's summary, its rate and its peak RSS.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it prints one line and exits.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use futures::{StreamExt, TryStreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use support::kinesis::{client_at, create_stream_at, KinesisLocal};
use support::{free_port, tools_dir, Daemon, KafkaCluster};

const TOPIC: &str = "verify-bench";
const STREAM: &str = "verify-bench";
const PARTITIONS: i32 = 4;
const SHARDS: i32 = 4;
const KEYS: u64 = 100_000;
/// PutRecords' most records per call.
const PUT_BATCH: usize = 500;
/// PutRecords calls in flight. A key's records are `KEYS` apart, far more than this many
/// batches, so they reach their shard in order.
const PUTS_IN_FLIGHT: usize = 8;

fn record(i: u64) -> (String, String) {
    let key = format!("order-{:06}", i % KEYS);
    let value = format!("{i:010}|{}", "x".repeat(89));
    (key, value)
}

fn produce_to_kafka(bootstrap: &str, records: u64) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("log_level", "3")
        .create()
        .expect("rdkafka producer");
    for i in 0..records {
        let (key, value) = record(i);
        let mut pending = BaseRecord::to(TOPIC).key(&key).payload(&value);
        // A full local queue drains as the broker acknowledges.
        while let Err((e, back)) = producer.send(pending) {
            assert!(
                matches!(
                    e,
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
                ),
                "produce: {e}"
            );
            producer.poll(Duration::from_millis(50));
            pending = back;
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .expect("every record acknowledged");
}

async fn put_to_kinesis(endpoint: &str, records: u64) {
    let client = client_at(endpoint);
    let batches = (0..records).step_by(PUT_BATCH).map(|start| {
        let end = (start + PUT_BATCH as u64).min(records);
        (start..end)
            .map(|i| {
                let (key, value) = record(i);
                PutRecordsRequestEntry::builder()
                    .partition_key(key)
                    .data(Blob::new(value))
                    .build()
                    .expect("entry")
            })
            .collect::<Vec<_>>()
    });
    futures::stream::iter(batches)
        .map(|entries| {
            let client = client.clone();
            async move {
                let out = client
                    .put_records()
                    .stream_name(STREAM)
                    .set_records(Some(entries))
                    .send()
                    .await?;
                assert_eq!(
                    out.failed_record_count(),
                    Some(0),
                    "kinesalite refused records"
                );
                Ok::<_, aws_sdk_kinesis::Error>(())
            }
        })
        .buffered(PUTS_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await
        .expect("PutRecords");
}

/// Runs `cmd` to its end; its exit code and peak resident memory in MiB, from wait4 (the
/// standard library's wait does not report the memory).
// wait4 reaps the child, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_measured(mut cmd: Command) -> (i32, f64) {
    let child = cmd.spawn().expect("spawn verify");
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 verify");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (code, usage.ru_maxrss as f64 / 1024.0)
}

#[tokio::main]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("verify bench: run with `cargo bench --bench verify`");
        return;
    }
    let records: u64 = std::env::var("KKP_VERIFY_BENCH_RECORDS")
        .ok()
        .map_or(1_000_000, |v| v.parse().expect("KKP_VERIFY_BENCH_RECORDS"));
    let kinesalite = tools_dir().join("node/node_modules/kinesalite/cli.js");
    assert!(
        kinesalite.exists(),
        "kinesalite is not installed at {}: run scripts/install-test-deps.sh",
        kinesalite.display()
    );

    let cluster = KafkaCluster::start(1);
    cluster.create_topic(TOPIC, PARTITIONS);
    let port = free_port();
    let mut cmd = Command::new("node");
    cmd.arg(&kinesalite)
        .args(["--port", &port.to_string()])
        .args(["--createStreamMs", "0"])
        .args(["--shardLimit", &SHARDS.to_string()]);
    let mut kinesis = Daemon::start("kinesalite", cmd);
    kinesis.wait_for_port(port, Duration::from_secs(60));
    let endpoint = format!("http://127.0.0.1:{port}");
    create_stream_at(&client_at(&endpoint), STREAM, SHARDS).await;

    let loading = Instant::now();
    produce_to_kafka(&cluster.bootstrap(), records);
    put_to_kinesis(&endpoint, records).await;
    println!(
        "loaded {records} records into Kafka and kinesalite in {:.0} s",
        loading.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[listener]\n[kafka]\nbootstrap_servers = [\"{}\"]\n\
             [kinesis]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\
             [spool]\ndir = {:?}\n\
             [[mirror]]\ntopic = \"{TOPIC}\"\nstream = \"{STREAM}\"\npercent = 100.0\n",
            cluster.bootstrap(),
            dir.path().join("spool")
        ),
    )
    .expect("write config");
    let report = dir.path().join("report.json");
    let mut verify = Command::new(env!("CARGO_BIN_EXE_kafka-kinesis-proxy"));
    verify
        .arg("verify")
        .arg("--config")
        .arg(&config)
        .args(["--topic", TOPIC, "--settle", "0s", "--json"])
        .arg(&report)
        .envs(KinesisLocal::aws_env());
    let started = Instant::now();
    let (code, max_rss_mib) = run_measured(verify);
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(code, 0, "verify found discrepancies or failed");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report")).expect("JSON report");
    assert_eq!(report["matched"].as_u64(), Some(records), "{report:#}");
    println!(
        "verify: {records} records in {elapsed:.1} s = {:.0} records/s (stream and topic read, \
         compared); peak RSS {:.0} MiB",
        records as f64 / elapsed,
        max_rss_mib
    );
}
