//! Debian's stock kcat 1.7.1 (librdkafka 2.0.2) against Apache Kafka 4.1, directly and through
//! the proxy.
//!
//! Every cell produces keyed records with `kcat -P`, reads them back with
//! `kcat -C -e -o beginning` and checks each one by content:
//! - directly against the single-node cluster, and through a proxy in front of it, in every
//!   codec: direct is the baseline, so a failure through the proxy is the proxy's;
//! - through a proxy in front of the three-node cluster, on a 6-partition topic whose leaders
//!   spread over the three brokers, so kcat has to follow Metadata to several proxy ports.
//!
//! The clusters are shared by this binary's tests: every test uses topics of its own.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::*;

const COUNT: usize = 2000;
const KCAT_TIMEOUT: Duration = Duration::from_secs(120);
const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

fn kcat(args: &[&str]) -> ClientRun {
    let mut cmd = Command::new(kcat_bin());
    cmd.args(args);
    run_command(cmd, KCAT_TIMEOUT)
}

/// `(key, value)` pairs from records.py, the generator every client uses.
fn expected_records(topic: &str) -> Vec<(String, String)> {
    let mut cmd = Command::new(python());
    cmd.arg(clients_dir().join("records.py"))
        .args([topic, "0", &COUNT.to_string()]);
    let run = run_command(cmd, KCAT_TIMEOUT);
    assert!(run.success(), "{}", run.describe());
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2 * COUNT);
    lines
        .chunks(2)
        .map(|kv| {
            // kcat -K '=' splits at the first '='; keep it out of the data.
            assert!(!kv[0].contains('=') && !kv[1].contains('='));
            (kv[0].to_string(), kv[1].to_string())
        })
        .collect()
}

/// Produce with `kcat -P` to `bootstrap`, consume with `kcat -C -e -o beginning`, compare.
/// `topic` must exist already (created directly on the cluster).
fn kcat_round_trip(bootstrap: &str, topic: &str, codec: &str) -> Result<String, String> {
    let records = expected_records(topic);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    let mut text = String::new();
    for (k, v) in &records {
        text.push_str(&format!("{k}={v}\n"));
    }
    std::fs::write(&input, text).unwrap();
    let input = input.to_str().unwrap();

    let p = kcat(&[
        "-P",
        "-b",
        bootstrap,
        "-t",
        topic,
        "-K",
        "=",
        "-z",
        codec,
        "-X",
        "message.timeout.ms=30000",
        "-l",
        input,
    ]);
    if !p.success() {
        return Err(format!("kcat -P failed:\n{}", p.describe()));
    }
    let c = kcat(&[
        "-C",
        "-b",
        bootstrap,
        "-t",
        topic,
        "-e",
        "-o",
        "beginning",
        "-q",
        "-f",
        "%k=%s\n",
    ]);
    if !c.success() {
        return Err(format!("kcat -C failed:\n{}", c.describe()));
    }
    let want: HashMap<&str, &str> = records
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut seen = HashMap::new();
    let mut mismatched = Vec::new();
    for line in c.stdout.lines() {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        match want.get(k) {
            Some(w) if *w == v => *seen.entry(k.to_string()).or_insert(0) += 1,
            _ => mismatched.push(format!("{:.80}", line)),
        }
    }
    if seen.len() == COUNT && mismatched.is_empty() {
        Ok(format!("{} records round-tripped", seen.len()))
    } else {
        Err(format!(
            "kcat -C read {} lines: {} distinct good of {COUNT}, {} bad (first: {:?})\n{}",
            c.stdout.lines().count(),
            seen.len(),
            mismatched.len(),
            mismatched.iter().take(3).collect::<Vec<_>>(),
            c.describe()
        ))
    }
}

/// The kcat under test links Debian's librdkafka 2.0.2.
fn assert_stock_kcat() {
    let v = kcat(&["-V"]);
    assert!(
        v.stdout.contains("librdkafka 2.0.2") || v.stderr.contains("librdkafka 2.0.2"),
        "expected Debian's kcat with librdkafka 2.0.2:\n{}",
        v.describe()
    );
}

/// `kcat -L -J` for `topic` through `bootstrap`: the broker addresses it was told (by node id)
/// and each partition's leader.
fn kcat_metadata(bootstrap: &str, topic: &str) -> (BTreeMap<i64, String>, BTreeMap<i64, i64>) {
    let run = kcat(&["-L", "-J", "-b", bootstrap, "-t", topic]);
    assert!(run.success(), "kcat -L failed:\n{}", run.describe());
    let md: Value = run
        .json()
        .unwrap_or_else(|e| panic!("kcat -L -J: {e}\n{}", run.describe()));
    let brokers = md["brokers"]
        .as_array()
        .unwrap_or_else(|| panic!("no brokers in {md}"))
        .iter()
        .map(|b| {
            (
                b["id"].as_i64().unwrap(),
                b["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let t = md["topics"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["topic"] == topic))
        .unwrap_or_else(|| panic!("no topic {topic} in {md}"));
    assert!(t.get("error").is_none(), "{topic}: {t}");
    let leaders = t["partitions"]
        .as_array()
        .unwrap_or_else(|| panic!("no partitions in {t}"))
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap(),
                p["leader"].as_i64().unwrap(),
            )
        })
        .collect();
    (brokers, leaders)
}

/// kcat straight to Apache Kafka 4.1, in every codec: librdkafka 2.0.2's ApiVersions v3 and
/// the Produce, Fetch and ListOffsets versions it picks are all still served by 4.1.
#[test]
fn kcat_direct_to_kafka() {
    assert_stock_kcat();
    let cluster = KafkaCluster::shared();
    let b = cluster.bootstrap();
    let mut m = Matrix::new(&format!("kcat direct to Kafka {b}"));
    for codec in CODECS {
        let topic = format!("kcat-direct-{codec}");
        cluster.create_topic(&topic, 3);
        m.record("kcat", codec, kcat_round_trip(&b, &topic, codec));
    }
    m.finish();
}

/// The same round trip through the proxy, in every codec.
#[test]
fn kcat_through_proxy() {
    assert_stock_kcat();
    let cluster = KafkaCluster::shared();
    let proxy = Proxy::start(cluster);
    let b = proxy.bootstrap();
    let mut m = Matrix::new(&format!("kcat via proxy {b}"));
    for codec in CODECS {
        let topic = format!("kcat-proxy-{codec}");
        cluster.create_topic(&topic, 3);
        m.record("kcat", codec, kcat_round_trip(&b, &topic, codec));
    }
    m.finish();
}

/// Through a proxy in front of three brokers: kcat learns the three proxy ports from Metadata
/// and produces to, and fetches from, each partition's leader through its port.
#[test]
fn kcat_through_proxy_three_brokers() {
    assert_stock_kcat();
    let cluster = KafkaCluster::shared3();
    let proxy = Proxy::start(cluster);
    let b = proxy.bootstrap();
    let topic = "kcat-3brokers";
    cluster.create_topic(topic, 6);
    let leaders = cluster.wait_for_leaders(topic, 6, None, Duration::from_secs(30));
    let leading: BTreeSet<i32> = leaders.iter().copied().collect();
    assert!(
        leading.len() >= 2,
        "{topic}: want leaders on several brokers, got {leaders:?}"
    );

    // What kcat is told: every broker at its proxy port, and the cluster's leaders.
    let (brokers, kcat_leaders) = kcat_metadata(&b, topic);
    let want_brokers: BTreeMap<i64, String> = proxy
        .broker_ports
        .iter()
        .map(|(id, port)| (*id as i64, format!("127.0.0.1:{port}")))
        .collect();
    assert_eq!(brokers, want_brokers, "brokers kcat sees through the proxy");
    let want_leaders: BTreeMap<i64, i64> = leaders
        .iter()
        .enumerate()
        .map(|(p, l)| (p as i64, *l as i64))
        .collect();
    assert_eq!(kcat_leaders, want_leaders, "{topic}: leaders kcat sees");

    let mut m = Matrix::new(&format!("kcat via proxy {b} to 3 brokers"));
    m.record(
        "kcat 6 partitions",
        "lz4",
        kcat_round_trip(&b, topic, "lz4"),
    );
    m.finish();

    // The keyed records reached every partition, so kcat produced through every leader's port.
    let mut per_partition = Vec::new();
    for p in 0..6 {
        let (low, high) = cluster.offsets(topic, p);
        per_partition.push(high - low);
    }
    assert!(
        per_partition.iter().all(|n| *n > 0),
        "{topic}: records per partition {per_partition:?}"
    );
    // At least COUNT: librdkafka's retries (not idempotent by default) may add duplicates,
    // which the round trip already tolerates.
    assert!(
        per_partition.iter().sum::<i64>() >= COUNT as i64,
        "{topic}: records per partition {per_partition:?}"
    );
}
