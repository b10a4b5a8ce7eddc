//! Duplicates from ambiguous failures (item 10 of the mirror-correctness issue): a PutRecords
//! that Kinesis stored but whose answer never reached the proxy must not be stored again.
//!
//! The fault layer in front of kinesis-local forwards every Nth PutRecords whole and then cuts
//! its connection instead of answering, under load, with the default config. The proxy must
//! read the shards back, find what landed, and resend only the rest: every record in Kinesis
//! exactly once.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::faults::{FaultLayer, FaultPlan};
use support::kinesis::KinesisLocal;
use support::metrics::{value, wait_for_sent};
use support::{python, KafkaCluster, Proxy};

const STREAM: &str = "ambiguous";
const TOPIC: &str = "events-ambiguous";
const COUNT: usize = 20_000;

/// `kafka_kinesis_proxy_mirror_attempts_total` of `kind`.
fn attempts(metrics: &std::collections::BTreeMap<String, f64>, kind: &str) -> f64 {
    value(
        metrics,
        "kafka_kinesis_proxy_mirror_attempts_total",
        &[("kind", kind)],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_answers_of_stored_requests_leave_every_record_once() {
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    kinesis.create_stream(STREAM, 4).await;
    let faults = FaultLayer::start(format!("127.0.0.1:{}", kinesis.port)).await;
    // The default config, but for where Kinesis is.
    let config = format!(
        "[kinesis]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\n\
         [[mirror]]\ntopic = \"{TOPIC}\"\nstream = \"{STREAM}\"\npercent = 100.0\n",
        faults.endpoint
    );
    let proxy = Proxy::start_with(cluster, &config);
    cluster.create_topic(TOPIC, 6);
    faults.set(FaultPlan {
        lose_put_records_answers_every: 7,
        ..FaultPlan::default()
    });

    // Keyed orders 0..COUNT over 500 customers, at 2,000 records a second.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo_traffic.py");
    let producer = Command::new(python())
        .arg(script)
        .args(["--bootstrap", &proxy.bootstrap(), "--topic", TOPIC])
        .args([
            "--count",
            &COUNT.to_string(),
            "--rate",
            "2000",
            "--keys",
            "500",
        ])
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let produced = producer.wait_with_output().unwrap();
    let produced: Value = serde_json::from_slice(&produced.stdout).unwrap();
    assert_eq!(produced["errors"], 0, "{produced}");

    let metrics = wait_for_sent(proxy.admin_port, COUNT, Duration::from_secs(300)).await;
    faults.set(FaultPlan::default());

    // How many times each order is in the stream, and whether each key's orders rise within
    // its shard.
    let stored = kinesis.read_all(STREAM).await;
    let mut copies: HashMap<i64, usize> = HashMap::new();
    let mut latest: HashMap<(String, String), i64> = HashMap::new();
    let mut out_of_order = 0;
    for record in &stored {
        let order = serde_json::from_slice::<Value>(&record.data).unwrap()["order"]
            .as_i64()
            .unwrap();
        *copies.entry(order).or_default() += 1;
        let key = (record.shard_id.clone(), record.partition_key.clone());
        if latest
            .insert(key, order)
            .is_some_and(|before| before > order)
        {
            out_of_order += 1;
        }
    }
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    let lost = (0..COUNT as i64)
        .filter(|o| !copies.contains_key(o))
        .count();
    let lost_answers = FaultLayer::count(&faults.counters.answers_lost);
    let unanswered = FaultLayer::count(&faults.counters.entries_unanswered);
    let [found, resent, unreadable, retried] = [
        "ambiguous_found",
        "ambiguous_resent",
        "ambiguous_unreadable",
        "retry",
    ]
    .map(|kind| attempts(&metrics, kind) as u64);
    println!(
        "ambiguous failures: produced {COUNT}, stored {}, duplicates {duplicates}, lost {lost}, \
         out of order {out_of_order}; answers lost {lost_answers} ({unanswered} entries stored \
         unanswered); attempts: ambiguous_found {found}, ambiguous_resent {resent}, \
         ambiguous_unreadable {unreadable}, retry {retried}",
        stored.len()
    );
    assert!(lost_answers > 0, "the fault layer lost no answer");
    assert_eq!(duplicates, 0, "records stored twice");
    assert_eq!(lost, 0, "records missing");
    assert_eq!(out_of_order, 0, "records out of order within a key");
    assert!(found > 0, "nothing found by reading back");
    assert_eq!(
        found, unanswered,
        "every entry of a lost answer was found stored"
    );
}
