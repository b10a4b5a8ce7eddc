//! Transactions and the mirror, end to end: transactional producers (Java and confluent-kafka)
//! commit some transactions and abort others through the proxy, with a 100% route, and Kinesis
//! must hold exactly what Kafka's `read_committed` consumers read: every committed record, in
//! Kafka's order, and none of the aborted ones.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::kinesis::{KinesisLocal, StoredRecord};
use support::metrics::{value, wait_for};
use support::{num, run_client, words, KafkaCluster, Proxy};

const RECORDS: usize = 1_500;
const TXN_SIZE: usize = 100;
/// Transactions 3, 6, 9, ... (1-based) abort.
const ABORT_EVERY: usize = 3;

/// The Kafka record index a mirrored record carries: its data is "TOPIC|INDEX|payload".
fn topic_and_index(record: &StoredRecord) -> (String, i64) {
    let text = String::from_utf8_lossy(&record.data);
    let mut fields = text.splitn(3, '|');
    let topic = fields.next().unwrap_or_default().to_owned();
    let index = fields.next().and_then(|i| i.parse().ok()).unwrap_or(-1);
    (topic, index)
}

/// Records of every topic with mirror outcome `result`, as `/metrics` shows them.
fn outcomes(metrics: &BTreeMap<String, f64>, result: &str) -> f64 {
    value(
        metrics,
        "kafka_kinesis_proxy_mirror_records_total",
        &[("result", result)],
    )
}

fn held(metrics: &BTreeMap<String, f64>) -> f64 {
    value(
        metrics,
        "kafka_kinesis_proxy_mirror_transaction_held_records",
        &[],
    )
}

fn key_index(key: Option<&[u8]>) -> i64 {
    key.and_then(|k| std::str::from_utf8(k).ok())
        .and_then(|k| k.strip_prefix("key-"))
        .and_then(|i| i.parse().ok())
        .unwrap_or(-1)
}

fn produce_transactions(producer: &str, bootstrap: &str, topic: &str) -> Value {
    let out = run_client(
        producer,
        &words(&format!(
            "produce --bootstrap {bootstrap} --topic {topic} --count {RECORDS} \
             --transactional-id kkp-mirror-txn-{producer} --txn-size {TXN_SIZE} \
             --abort-every {ABORT_EVERY} --timeout 120"
        )),
    );
    assert_eq!(num(&out, "produced"), RECORDS as i64, "{producer}: {out}");
    assert_eq!(num(&out, "error_count"), 0, "{producer}: {out}");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn only_committed_transactions_reach_kinesis_in_order() {
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    // One shard: the whole stream is in one order, so Kafka's order can be checked across it.
    kinesis.create_stream("committed", 1).await;
    let producers = ["java", "confluent"];
    let mut extra = format!(
        "[kinesis]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nlinger_ms = 20\n",
        kinesis.endpoint
    );
    for producer in producers {
        extra.push_str(&format!(
            "[[mirror]]\ntopic = \"txn-{producer}\"\nstream = \"committed\"\npercent = 100\n"
        ));
    }
    let proxy = Proxy::start_with(cluster, &extra);
    let bootstrap = proxy.bootstrap();

    let mut expected: BTreeMap<String, Vec<(i32, i64)>> = BTreeMap::new();
    let mut aborted_total = 0;
    for producer in producers {
        let topic = format!("txn-{producer}");
        cluster.create_topic(&topic, 3);
        let out = produce_transactions(producer, &bootstrap, &topic);
        let aborted = num(&out, "aborted_count");
        assert_eq!(
            aborted,
            (RECORDS / TXN_SIZE / ABORT_EVERY * TXN_SIZE) as i64,
            "{producer}: {out}"
        );
        aborted_total += aborted;
        // What read_committed consumers see, straight from Kafka, by partition and offset.
        let committed = cluster.read_all(&topic, true);
        assert_eq!(
            committed.len() as i64,
            RECORDS as i64 - aborted,
            "{producer}: Kafka's read_committed view"
        );
        expected.insert(
            topic,
            committed
                .iter()
                .map(|r| (r.partition, key_index(r.key.as_deref())))
                .collect(),
        );
    }
    let committed_total: usize = expected.values().map(Vec::len).sum();

    let m = wait_for(
        proxy.admin_port,
        "every committed record sent and every aborted one counted",
        Duration::from_secs(90),
        |m| {
            outcomes(m, "sent") >= committed_total as f64
                && outcomes(m, "aborted") >= aborted_total as f64
        },
    )
    .await;
    assert_eq!(outcomes(&m, "aborted"), aborted_total as f64);
    assert_eq!(
        held(&m),
        0.0,
        "nothing stays held once every transaction ended"
    );

    let stored = kinesis.read_all("committed").await;
    assert_eq!(
        stored.len(),
        committed_total,
        "Kinesis holds the committed records only, each once"
    );
    for (topic, committed) in &expected {
        let partition_of: BTreeMap<i64, i32> = committed.iter().map(|&(p, i)| (i, p)).collect();
        // Kinesis's order, per Kafka partition, must be Kafka's offset order.
        let mut mirrored: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for (t, index) in stored.iter().map(topic_and_index) {
            if &t != topic {
                continue;
            }
            let partition = *partition_of
                .get(&index)
                .unwrap_or_else(|| panic!("{topic}: record {index} is not committed in Kafka"));
            mirrored.entry(partition).or_default().push(index);
        }
        let mut in_kafka: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for &(partition, index) in committed {
            in_kafka.entry(partition).or_default().push(index);
        }
        assert_eq!(
            mirrored, in_kafka,
            "{topic}: Kinesis differs from read_committed"
        );
    }
}

/// A producer that dies mid-transaction sends no EndTxn: the coordinator aborts the
/// transaction once its timeout passes, and the proxy, past that timeout plus a margin, reads
/// the ABORT marker from the partition and drops the held records. The producer sets
/// `transaction.timeout.ms` to 5 s (the client's `--transaction-timeout-ms`), which the proxy
/// learns from its InitProducerId; everything else is the default config.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_left_open_is_decided_by_kafkas_abort_marker() {
    const COMMITTED: usize = 200;
    const ABANDONED: usize = 60;
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    kinesis.create_stream("abandoned", 1).await;
    let topic = "txn-abandoned";
    let proxy = Proxy::start_with(cluster, &kinesis.mirror_config(topic, "abandoned", 100.0));
    cluster.create_topic(topic, 3);
    let bootstrap = proxy.bootstrap();
    let out = run_client(
        "confluent",
        &words(&format!(
            "produce --bootstrap {bootstrap} --topic {topic} --count {} \
             --transactional-id kkp-mirror-txn-abandoned --txn-size {COMMITTED} \
             --transaction-timeout-ms 5000 --abandon-last --timeout 30",
            COMMITTED + ABANDONED
        )),
    );
    assert_eq!(num(&out, "committed_count"), COMMITTED as i64, "{out}");
    assert_eq!(num(&out, "abandoned_count"), ABANDONED as i64, "{out}");
    let started = std::time::Instant::now();

    let m = wait_for(
        proxy.admin_port,
        "the committed transaction sent and the abandoned one dropped as aborted",
        Duration::from_secs(120),
        |m| outcomes(m, "aborted") >= ABANDONED as f64 && outcomes(m, "sent") >= COMMITTED as f64,
    )
    .await;
    eprintln!(
        "abandoned transaction decided {:?} after the producer died",
        started.elapsed()
    );
    assert_eq!(outcomes(&m, "aborted"), ABANDONED as f64);
    assert_eq!(outcomes(&m, "sent"), COMMITTED as f64);
    assert_eq!(held(&m), 0.0);
    // Kafka agrees: its read_committed view is the committed transaction only.
    assert_eq!(cluster.read_all(topic, true).len(), COMMITTED);
    let mut indices: Vec<i64> = kinesis
        .read_all("abandoned")
        .await
        .iter()
        .map(|r| topic_and_index(r).1)
        .collect();
    indices.sort();
    assert_eq!(indices, (0..COMMITTED as i64).collect::<Vec<_>>());
}
