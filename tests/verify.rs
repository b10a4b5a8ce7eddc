//! `kafka-kinesis-proxy verify` against real parts: records produced through the proxy to
//! Apache Kafka 4.1 and mirrored into kinesis-local, then records that bypass one side or the
//! other, which verify must name exactly.
//!
//! One single-node cluster serves every test of this binary; each test has its own topic,
//! kinesis-local and proxy.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use kafka_kinesis_proxy::mirror::sampling::{is_sampled, sample_point};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;
use support::kinesis::KinesisLocal;
use support::metrics::{value, wait_for};
use support::{num, run_client, run_command, ClientRun, KafkaCluster, Proxy};

const COUNTS: [&str; 10] = [
    "kafka_records",
    "expected",
    "outside_sample",
    "found",
    "matched",
    "missing",
    "unexpected",
    "mismatched",
    "duplicates",
    "order_violations",
];

/// A topic (3 partitions) mirrored at `percent` into a stream (2 shards) of its own
/// kinesis-local, through a proxy in front of the shared cluster.
struct Rig {
    cluster: &'static KafkaCluster,
    kinesis: KinesisLocal,
    proxy: Proxy,
    topic: String,
    stream: String,
}

impl Rig {
    async fn start(topic: &str, percent: f64) -> Rig {
        let cluster = KafkaCluster::shared();
        let kinesis = KinesisLocal::start();
        let stream = format!("{topic}-stream");
        kinesis.create_stream(&stream, 2).await;
        let proxy = Proxy::start_with(cluster, &kinesis.mirror_config(topic, &stream, percent));
        cluster.create_topic(topic, 3);
        Rig {
            cluster,
            kinesis,
            proxy,
            topic: topic.to_owned(),
            stream,
        }
    }

    /// Produces `count` records of the shared generator (keys `key-000000`...) through the
    /// proxy, and waits until the mirror has dealt with each: sent, or left out by sampling.
    async fn produce_through_proxy(&self, count: usize) {
        let out = run_client(
            "confluent",
            &[
                "produce",
                "--bootstrap",
                &self.proxy.bootstrap(),
                "--topic",
                &self.topic,
                "--count",
                &count.to_string(),
            ],
        );
        assert_eq!(num(&out, "produced"), count as i64, "{out}");
        wait_for(
            self.proxy.admin_port,
            "every record mirrored or skipped",
            Duration::from_secs(60),
            |m| {
                let result = |r| {
                    value(
                        m,
                        "kafka_kinesis_proxy_mirror_records_total",
                        &[("result", r)],
                    )
                };
                result("sent") + result("skipped") >= count as f64
            },
        )
        .await;
    }

    /// Produces `(key, value, partition)` records straight to Kafka, so the mirror never sees
    /// them.
    fn produce_to_kafka(&self, records: &[(&str, &str, i32)]) {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", self.cluster.bootstrap())
            .set("log_level", "3")
            .create()
            .expect("rdkafka producer");
        for (key, value, partition) in records {
            producer
                .send(
                    BaseRecord::to(&self.topic)
                        .key(*key)
                        .payload(*value)
                        .partition(*partition),
                )
                .unwrap_or_else(|(e, _)| panic!("produce {key}: {e}"));
        }
        producer
            .flush(Duration::from_secs(30))
            .expect("direct records acknowledged");
    }

    /// Puts `(partition key, data)` records straight into the stream, in order.
    async fn put_to_kinesis(&self, records: &[(&str, &str)]) {
        let client = self.kinesis.client();
        for (key, data) in records {
            client
                .put_record()
                .stream_name(&self.stream)
                .partition_key(*key)
                .data(Blob::new(data.as_bytes()))
                .send()
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
        }
    }

    /// Runs verify over the last 10 minutes, with nothing left to settle (the test waited for
    /// the mirror), writing its JSON report to `json`.
    fn run_verify(&self, json: &Path, extra: &[&str]) -> ClientRun {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kafka-kinesis-proxy"));
        cmd.arg("verify")
            .arg("--config")
            .arg(&self.proxy.config_path)
            .args(["--topic", &self.topic, "--since", "10m", "--settle", "0s"])
            .arg("--json")
            .arg(json)
            .args(extra)
            .envs(KinesisLocal::aws_env());
        let run = run_command(cmd, Duration::from_secs(120));
        assert!(!run.timed_out, "verify timed out: {}", run.describe());
        run
    }

    /// [`Rig::run_verify`]'s exit code, stdout and JSON report.
    fn verify(&self, extra: &[&str]) -> (Option<i32>, String, Value) {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("report.json");
        let run = self.run_verify(&json, extra);
        let report = std::fs::read_to_string(&json)
            .map(|text| serde_json::from_str(&text).expect("report is JSON"))
            .unwrap_or_else(|e| panic!("no report ({e}): {}", run.describe()));
        (run.status, run.stdout, report)
    }
}

/// The report's counts, zero for those not named in `nonzero`; and exactly the documented
/// top-level keys.
fn assert_counts(report: &Value, nonzero: &[(&str, i64)]) {
    let keys: BTreeSet<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let documented: BTreeSet<&str> = COUNTS.iter().copied().chain(["examples"]).collect();
    assert_eq!(keys, documented);
    for name in COUNTS {
        let want = nonzero
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v);
        assert_eq!(num(report, name), want, "{name} in {report:#}");
    }
}

/// The keys of the examples of `kind`, each checked to carry the fields known for it.
fn example_keys(
    report: &Value,
    kind: &str,
    kafka_side: bool,
    kinesis_side: bool,
) -> BTreeSet<String> {
    let examples = report["examples"][kind].as_array().unwrap();
    examples
        .iter()
        .map(|e| {
            assert_eq!(e["partition"].is_i64(), kafka_side, "{kind}: {e}");
            assert_eq!(e["offset"].is_i64(), kafka_side, "{kind}: {e}");
            assert_eq!(e["shard_id"].is_string(), kinesis_side, "{kind}: {e}");
            assert_eq!(
                e["sequence_number"].is_string(),
                kinesis_side,
                "{kind}: {e}"
            );
            e["key"]
                .as_str()
                .unwrap_or_else(|| panic!("{kind}: no key: {e}"))
                .to_owned()
        })
        .collect()
}

fn keys(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|k| k.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_is_clean_at_full_mirror_then_names_what_bypassed_the_proxy() {
    const PRODUCED: i64 = 300;
    let rig = Rig::start("verify-full", 100.0).await;
    rig.produce_through_proxy(PRODUCED as usize).await;

    let (status, stdout, report) = rig.verify(&[]);
    assert_eq!(status, Some(0), "{stdout}");
    assert_counts(
        &report,
        &[
            ("kafka_records", PRODUCED),
            ("expected", PRODUCED),
            ("found", PRODUCED),
            ("matched", PRODUCED),
        ],
    );
    assert!(stdout.contains("OK"), "{stdout}");

    // Three records only Kafka has, two only the stream has.
    rig.produce_to_kafka(&[
        ("direct-kafka-0", "only in kafka 0", 0),
        ("direct-kafka-1", "only in kafka 1", 1),
        ("direct-kafka-2", "only in kafka 2", 2),
    ]);
    rig.put_to_kinesis(&[
        ("direct-kinesis-0", "only in kinesis 0"),
        ("direct-kinesis-1", "only in kinesis 1"),
    ])
    .await;
    let (status, stdout, report) = rig.verify(&[]);
    assert_eq!(status, Some(1), "{stdout}");
    assert_counts(
        &report,
        &[
            ("kafka_records", PRODUCED + 3),
            ("expected", PRODUCED + 3),
            ("found", PRODUCED),
            ("matched", PRODUCED),
            ("missing", 3),
            ("unexpected", 2),
        ],
    );
    let missing = keys(&["direct-kafka-0", "direct-kafka-1", "direct-kafka-2"]);
    let unexpected = keys(&["direct-kinesis-0", "direct-kinesis-1"]);
    assert_eq!(example_keys(&report, "missing", true, false), missing);
    assert_eq!(example_keys(&report, "unexpected", false, true), unexpected);
    assert!(
        stdout.contains("direct-kafka-1") && stdout.contains("direct-kinesis-0"),
        "{stdout}"
    );

    // A payload changed on the way: Kafka's next record of an existing key, and other data in
    // the stream at that key's next place.
    let key = "key-000005";
    let partition = rig
        .cluster
        .read_all(&rig.topic, false)
        .iter()
        .find(|r| r.key.as_deref() == Some(key.as_bytes()))
        .expect("key-000005 in Kafka")
        .partition;
    rig.produce_to_kafka(&[(key, "the original", partition)]);
    rig.put_to_kinesis(&[(key, "changed on the way")]).await;
    let (status, stdout, report) = rig.verify(&[]);
    assert_eq!(status, Some(1), "{stdout}");
    assert_counts(
        &report,
        &[
            ("kafka_records", PRODUCED + 4),
            ("expected", PRODUCED + 4),
            ("found", PRODUCED + 1),
            ("matched", PRODUCED),
            ("missing", 3),
            ("unexpected", 2),
            ("mismatched", 1),
        ],
    );
    assert_eq!(
        example_keys(&report, "mismatched", true, true),
        keys(&[key])
    );
    assert_eq!(example_keys(&report, "missing", true, false), missing);
    assert_eq!(example_keys(&report, "unexpected", false, true), unexpected);
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_is_clean_at_a_quarter_and_counts_the_keys_left_out() {
    const PRODUCED: usize = 400;
    let rig = Rig::start("verify-quarter", 25.0).await;
    rig.produce_through_proxy(PRODUCED).await;

    // The generator's keys that a 25% route samples, computed apart from the proxy's run.
    let expected = (0..PRODUCED)
        .filter(|i| {
            let key = format!("key-{i:06}");
            is_sampled(sample_point(Some(key.as_bytes()), 0, None), 25.0)
        })
        .count() as i64;
    assert!((60..140).contains(&expected), "{expected} of {PRODUCED}");
    let in_stream = rig.kinesis.read_all(&rig.stream).await.len() as i64;
    assert_eq!(in_stream, expected);

    let (status, stdout, report) = rig.verify(&[]);
    assert_eq!(status, Some(0), "{stdout}");
    assert_counts(
        &report,
        &[
            ("kafka_records", PRODUCED as i64),
            ("expected", expected),
            ("outside_sample", PRODUCED as i64 - expected),
            ("found", expected),
            ("matched", expected),
        ],
    );

    // Checked at 100%, the keys left out are missing: what a ramp to 100% must still fill.
    let (status, stdout, report) = rig.verify(&["--percent", "100"]);
    assert_eq!(status, Some(1), "{stdout}");
    assert_eq!(num(&report, "missing"), PRODUCED as i64 - expected);
    assert_eq!(num(&report, "matched"), expected);

    // An error is exit 2, naming the problem, and writes no report.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let run = rig.run_verify(&json, &["--stream", "no-such-stream"]);
    assert_eq!(run.status, Some(2), "{}", run.describe());
    assert!(run.stderr.contains("no-such-stream"), "{}", run.describe());
    assert!(!json.exists());
}
