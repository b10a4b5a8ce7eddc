//! The client matrix: every client family produces keyed records through the proxy, which
//! forwards to a real Apache Kafka 4.1 cluster, and reads them back through it. Every record is
//! checked byte for byte against the generator in `tests/clients/records.py` (each family has
//! an exact copy; `generators_match` keeps them equal).
//!
//! Families: confluent-kafka (librdkafka), kafka-python, aiokafka (PyPI), kafkajs (npm), Java
//! kafka-clients, franz-go and Sarama (Go module proxy). Debian's kcat has its own file.
//!
//! The axes are separate, not a full product, to fit the CI budget. Per family, on the shared
//! single-node cluster:
//! - each codec in {none, gzip, snappy, lz4, zstd} at acks=all, 2,000 records;
//! - acks=0 and acks=1 with codec none (acks=all with codec none is the first codec cell);
//! - the idempotent producer with zstd;
//! - one 10,000-record cell;
//!
//! and on the shared 3-node cluster, one cell on a 6-partition topic whose leaders spread over
//! all three brokers, so every family meets several proxy broker ports.
//!
//! `KKP_TEST_DIRECT=1` points the clients straight at Kafka instead of the proxy, to tell a
//! proxy defect from a client or broker one.
//!
//! Known limitations are asserted, not skipped: such a cell passes only if it fails in exactly
//! the documented way, and a cell that starts working fails with "no longer reproduces", so the
//! list stays true.

mod support;

use serde_json::Value;
use support::*;

const CELL_RECORDS: i64 = 2_000;
const LARGE_CELL_RECORDS: i64 = 10_000;
const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
/// Seconds a producer or consumer may spend on one topic.
const STEP_TIMEOUT: u32 = 60;

/// A cell that is known not to work, with the reason.
#[derive(Clone, Copy, Debug)]
struct Known {
    /// The client's produce/consume output contains this exact text.
    client_says: &'static str,
    why: &'static str,
}

/// Cells known not to work against Apache Kafka 4.1, through the proxy and directly alike.
fn known_limitation(_client: &str, _codec: &str, _flags: &str) -> Option<Known> {
    None
}

/// The proxy in front of a shared cluster, unless `KKP_TEST_DIRECT` is set.
struct Target {
    cluster: &'static KafkaCluster,
    proxy: Option<Proxy>,
}

impl Target {
    fn new(cluster: &'static KafkaCluster) -> Target {
        let direct = std::env::var_os("KKP_TEST_DIRECT").is_some_and(|v| !v.is_empty() && v != "0");
        let proxy = if direct {
            eprintln!("KKP_TEST_DIRECT: clients talk to Kafka directly");
            None
        } else {
            Some(Proxy::start(cluster))
        };
        Target { cluster, proxy }
    }

    /// Where the clients bootstrap: the proxy (or Kafka when direct).
    fn bootstrap(&self) -> String {
        match &self.proxy {
            Some(p) => p.bootstrap(),
            None => self.cluster.bootstrap(),
        }
    }
}

/// One produce-then-consume pass with one client.
struct RoundTrip<'a> {
    client: &'a str,
    topic: String,
    partitions: i32,
    count: i64,
    codec: &'a str,
    acks: &'a str,
    produce_flags: &'a str,
}

impl RoundTrip<'_> {
    fn cell(client: &str, topic: String) -> RoundTrip<'_> {
        RoundTrip {
            client,
            topic,
            partitions: 3,
            count: CELL_RECORDS,
            codec: "none",
            acks: "all",
            produce_flags: "",
        }
    }

    /// Creates the topic, produces, reads everything back with the same client; Ok(summary)
    /// when every record arrived intact.
    fn run(&self, target: &Target) -> Result<String, String> {
        let (client, topic, count) = (self.client, &self.topic, self.count);
        target.cluster.create_topic(topic, self.partitions);
        let bootstrap = target.bootstrap();
        let (p, prun) = try_run_client_full(
            client,
            &words(&format!(
                "produce --bootstrap {bootstrap} --topic {topic} --count {count} --codec {} \
                 --acks {} --timeout {STEP_TIMEOUT} {}",
                self.codec, self.acks, self.produce_flags
            )),
        )?;
        // What the producer logged, to explain a failure further down.
        let producer_log = || {
            let lines = error_lines(&prun.stderr, 5);
            if lines.is_empty() {
                String::new()
            } else {
                format!("\nproducer stderr: {}", lines.join(" | "))
            }
        };
        if num(&p, "produced") == 0 {
            return Err(format!(
                "produce: nothing acknowledged: {p}{}",
                producer_log()
            ));
        }
        let c = try_run_client(
            client,
            &words(&format!(
                "consume --bootstrap {bootstrap} --topic {topic} --count {count} \
                 --timeout {STEP_TIMEOUT}"
            )),
        )?;
        match (check_produced(&p, count), check_consumed(&c, count)) {
            (Ok(()), Ok(())) => Ok(format!(
                "produced {} consumed {} (distinct {}, duplicates {})",
                num(&p, "produced"),
                num(&c, "consumed"),
                num(&c, "distinct"),
                num(&c, "duplicates")
            )),
            (p_res, c_res) => {
                let errs: Vec<String> = [p_res.err(), c_res.err()].into_iter().flatten().collect();
                Err(format!("{}{}", errs.join("; "), producer_log()))
            }
        }
    }

    /// Runs and judges the result against the known limitations.
    fn judge(&self, target: &Target) -> Result<String, String> {
        let result = self.run(target);
        let Some(k) = known_limitation(self.client, self.codec, self.produce_flags) else {
            return result;
        };
        let shown = result
            .as_ref()
            .err()
            .is_some_and(|e| e.contains(k.client_says));
        let text = format!("client said {:?}", k.client_says);
        match (shown, result) {
            (true, Err(e)) => Ok(format!(
                "KNOWN LIMITATION reproduced, {text} ({}): {}",
                k.why,
                e.lines().next().unwrap_or("")
            )),
            (true, Ok(s)) => Ok(format!(
                "KNOWN LIMITATION seen ({text}) but no record lost: {s}"
            )),
            (false, Err(e)) => Err(format!(
                "failed without the known symptom ({text}; {}):\n{e}",
                k.why
            )),
            (false, Ok(s)) => Err(format!(
                "known limitation ({text}; {}) no longer reproduces ({s}): remove it from \
                 tests/kafka_clients.rs",
                k.why
            )),
        }
    }
}

/// Every cell of one family; the table is printed and failures are reported together.
fn family_matrix(client: &str) {
    let single = Target::new(KafkaCluster::shared());
    let mut m = Matrix::new(&format!("{client} via {}", single.bootstrap()));
    for codec in CODECS {
        let cell = RoundTrip {
            codec,
            ..RoundTrip::cell(client, format!("matrix-{client}-{codec}"))
        };
        m.record(client, &format!("{codec} acks=all"), cell.judge(&single));
    }
    for acks in ["0", "1"] {
        let cell = RoundTrip {
            acks,
            ..RoundTrip::cell(client, format!("matrix-{client}-acks{acks}"))
        };
        m.record(client, &format!("none acks={acks}"), cell.judge(&single));
    }
    let idempotent = RoundTrip {
        codec: "zstd",
        produce_flags: "--idempotent",
        ..RoundTrip::cell(client, format!("matrix-{client}-idempotent"))
    };
    m.record(client, "zstd idempotent", idempotent.judge(&single));
    let large = RoundTrip {
        codec: "lz4",
        count: LARGE_CELL_RECORDS,
        ..RoundTrip::cell(client, format!("matrix-{client}-large"))
    };
    m.record(client, "lz4 10,000 records", large.judge(&single));
    drop(single);

    let three = Target::new(KafkaCluster::shared3());
    let topic = format!("matrix3-{client}");
    let spread = RoundTrip {
        partitions: 6,
        codec: "snappy",
        ..RoundTrip::cell(client, topic.clone())
    };
    let result = spread.judge(&three).and_then(|s| {
        // The cell counts only if the partitions really were led by every broker.
        let leaders =
            three
                .cluster
                .wait_for_leaders(&topic, 6, None, std::time::Duration::from_secs(10));
        let mut distinct = leaders.clone();
        distinct.sort();
        distinct.dedup();
        if distinct.len() == 3 {
            Ok(format!("{s}; leaders {leaders:?}"))
        } else {
            Err(format!("leaders {leaders:?} do not cover the 3 brokers"))
        }
    });
    m.record(client, "snappy 3 brokers", result);
    m.finish();
}

#[test]
fn matrix_confluent() {
    family_matrix("confluent");
}

#[test]
fn matrix_kafka_python() {
    family_matrix("kafka-python");
}

#[test]
fn matrix_aiokafka() {
    family_matrix("aiokafka");
}

#[test]
fn matrix_kafkajs() {
    family_matrix("kafkajs");
}

#[test]
fn matrix_java() {
    family_matrix("java");
}

#[test]
fn matrix_franz_go() {
    family_matrix("franz-go");
}

#[test]
fn matrix_sarama() {
    family_matrix("sarama");
}

/// Kafka 4 removed Produce v0-v2 and message formats v0/v1 (KIP-896, KIP-724). kafka-python
/// pinned to api_version (0, 10) sends Produce v2 with a v1 message set. Kafka 4.1 answers it by
/// closing the connection ("UnsupportedVersionException: Received request for api with key 0
/// (Produce) and unsupported version 2" in its log), so the client retries until its deadline
/// and nothing is stored. Through the proxy the client must see exactly that, and the proxy
/// must stay up for everyone else.
#[test]
fn old_client_gets_kafkas_own_answer() {
    let cluster = KafkaCluster::shared();
    let proxy = Proxy::start(cluster);
    for (path, bootstrap) in [
        ("direct", cluster.bootstrap()),
        ("proxy", proxy.bootstrap()),
    ] {
        let topic = format!("legacy-{path}");
        cluster.create_topic(&topic, 1);
        let v = run_client(
            "kafka-python",
            &words(&format!(
                "produce --bootstrap {bootstrap} --topic {topic} --count 20 --codec none \
                 --acks all --legacy-api --timeout 5"
            )),
        );
        assert_eq!(
            num(&v, "produced"),
            0,
            "{path}: Kafka 4 accepted a v1 message set: {v}"
        );
        let errors = v["errors"].to_string();
        assert!(
            errors.contains("KafkaTimeoutError"),
            "{path}: expected the records to time out unacknowledged: {v}"
        );
        let (_, offsets) = cluster.offsets(&topic, 0);
        assert_eq!(
            offsets, 0,
            "{path}: Kafka stored records of a v1 message set"
        );
    }
    let broker_log = std::fs::read_to_string(cluster.node_log(1)).unwrap();
    assert!(
        broker_log
            .contains("Received request for api with key 0 (Produce) and unsupported version 2"),
        "Kafka did not log the unsupported Produce v2"
    );
    // The proxy still serves a current client.
    let v = run_client(
        "confluent",
        &words(&format!(
            "produce --bootstrap {} --topic legacy-direct --count 10",
            proxy.bootstrap()
        )),
    );
    check_produced(&v, 10).unwrap();
}

#[test]
fn consumer_group_commits() {
    let cluster = KafkaCluster::shared();
    let proxy = Proxy::start(cluster);
    let b = proxy.bootstrap();
    let topic = "group-topic";
    cluster.create_topic(topic, 3);
    let p = run_client(
        "confluent",
        &words(&format!(
            "produce --bootstrap {b} --topic {topic} --count {LARGE_CELL_RECORDS} --codec gzip --acks all"
        )),
    );
    check_produced(&p, LARGE_CELL_RECORDS).unwrap();

    let consume = |timeout: u32| -> Value {
        run_client(
            "confluent",
            &words(&format!(
                "consume --bootstrap {b} --topic {topic} --count {LARGE_CELL_RECORDS} --group kkp-group \
                 --timeout {timeout}"
            )),
        )
    };
    let first = consume(STEP_TIMEOUT);
    check_consumed(&first, LARGE_CELL_RECORDS).unwrap();
    assert_eq!(
        first["assigned"],
        serde_json::json!([0, 1, 2]),
        "first pass: {first}"
    );
    assert_eq!(
        num(&first, "committed_total"),
        LARGE_CELL_RECORDS,
        "committed after the first pass: {first}"
    );

    // Same group again: it must resume at the committed offsets (the end) and see nothing new.
    let second = consume(8);
    assert_eq!(
        num(&second, "consumed"),
        0,
        "second pass re-read records: {second}"
    );
    assert_eq!(
        second["committed"], first["committed"],
        "committed offsets moved: {second}"
    );
}

/// Every family's generator must stay byte-identical to records.py.
#[test]
fn generators_match() {
    let topic = "mirror.check-T_1";
    let mut py = std::process::Command::new(python());
    py.arg(clients_dir().join("records.py"))
        .args([topic, "0", "3000"]);
    let py = run_command(py, CLIENT_TIMEOUT);
    assert!(py.success(), "{}", py.describe());
    assert_eq!(py.stdout.lines().count(), 6000);
    for client in ["kafkajs", "java", "franz-go", "sarama"] {
        let run = run_command(
            client_command(client, &["record", topic, "0", "3000"]),
            CLIENT_TIMEOUT,
        );
        assert!(run.success(), "{}", run.describe());
        assert!(
            py.stdout == run.stdout,
            "records.py and the {client} generator disagree"
        );
    }
}
