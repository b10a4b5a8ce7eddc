//! Duplicates from producer retries: a producer that retries a batch Kafka already stored gets
//! it acknowledged again with the same offsets, and the mirror must send it to Kinesis once.
//!
//! Each test drives the retry on purpose with raw idempotent Produce requests (Kafka 4.1
//! accepts them from an unallocated producer id, and answers a repeated batch with its
//! original offsets): a relay between the proxy and Kafka holds Kafka's answers on the first
//! connection that produces, until the test releases them, so the test decides which answer
//! the proxy sees first. Then it checks Kafka and Kinesis themselves.
//!
//! One single-node cluster serves every test of this binary (`KafkaCluster::shared`), so each
//! test uses topic names and producer ids of its own.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::answer_gate::{mirror_behind_gate, Hold, ProduceAnswerGate};
use support::kinesis::KinesisLocal;
use support::metrics::{value, wait_for};
use support::raw_produce::RawProduce;
use support::{wait_until_async, KafkaCluster, Proxy};

/// `count` records tagged with `tag`, with values unique across the test.
fn records(tag: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| (format!("{tag}-{i:03}"), format!("{tag}|{i}").into_bytes()))
        .collect()
}

/// An idempotent batch of `records` from `producer_id`: sent twice, Kafka stores it once and
/// answers both times with the same offsets.
fn idempotent_frame(topic: &str, producer_id: i64, records: &[(String, Vec<u8>)]) -> bytes::Bytes {
    RawProduce {
        producer_id,
        ..RawProduce::new(topic, records.to_vec())
    }
    .frame()
}

/// Sends `frame` on a new connection to the proxy and reads the answer whole.
async fn produce(bootstrap: &str, frame: &[u8]) {
    let mut client = TcpStream::connect(bootstrap).await.unwrap();
    client.write_all(frame).await.unwrap();
    let size = client.read_i32().await.unwrap();
    let mut answer = vec![0u8; size as usize];
    client.read_exact(&mut answer).await.unwrap();
}

/// Sends `frame` on a new connection whose answer the gate holds, waits until Kafka stores
/// it, and resets the connection: to the client, the answer is lost.
async fn produce_and_lose_the_answer(
    bootstrap: &str,
    frame: &[u8],
    gate: &ProduceAnswerGate,
    cluster: &KafkaCluster,
    topic: &str,
    stored_after: i64,
) {
    let mut client = TcpStream::connect(bootstrap).await.unwrap();
    client.write_all(frame).await.unwrap();
    wait_until_async(
        "the Produce to reach Kafka through the proxy",
        Duration::from_secs(30),
        async || gate.produce_forwarded(),
        |forwarded| *forwarded,
    )
    .await;
    wait_until_async(
        "Kafka to store the batch whose answer is held",
        Duration::from_secs(30),
        async || cluster.offsets(topic, 0).1,
        |high| *high == stored_after,
    )
    .await;
    client.set_zero_linger().unwrap();
    drop(client);
}

/// What the proxy saw and mirrored of `topic`, once the mirror has decided about every record
/// Kafka acknowledged to it (`acknowledged` of them, counting each acknowledgement).
async fn settled_counts(proxy: &Proxy, topic: &str, acknowledged: f64) -> (f64, f64) {
    let m = wait_for(
        proxy.admin_port,
        "the mirror to account for every acknowledged record",
        Duration::from_secs(60),
        |m| {
            let acked = value(
                m,
                "kafka_kinesis_proxy_kafka_records_total",
                &[("topic", topic), ("result", "ok")],
            );
            let decided: f64 = ["sent", "duplicate"]
                .iter()
                .map(|r| {
                    value(
                        m,
                        "kafka_kinesis_proxy_mirror_records_total",
                        &[("topic", topic), ("result", r)],
                    )
                })
                .sum();
            acked == acknowledged && decided >= acked
        },
    )
    .await;
    let sent = value(
        &m,
        "kafka_kinesis_proxy_mirror_records_total",
        &[("topic", topic), ("result", "sent")],
    );
    let duplicates = value(
        &m,
        "kafka_kinesis_proxy_mirror_records_total",
        &[("topic", topic), ("result", "duplicate")],
    );
    // An absent series sums to -0.0; adding 0.0 prints it as 0.
    (sent + 0.0, duplicates + 0.0)
}

/// Copies of each value in `stream`.
async fn copies_in(kinesis: &KinesisLocal, stream: &str) -> HashMap<Vec<u8>, usize> {
    let mut copies = HashMap::new();
    for record in kinesis.read_all(stream).await {
        *copies.entry(record.data).or_default() += 1;
    }
    copies
}

/// An injected lost response: the client's first answer never arrives, so it retries the same
/// batch on a new connection; Kafka answers the retry with the original offsets, and then the
/// held first answer reaches the proxy too. Kinesis must hold each record once.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_retried_after_a_lost_answer_is_mirrored_once() {
    const RECORDS: usize = 50;
    let (topic, stream) = ("lost-answer", "lost-answer-stream");
    let (cluster, kinesis, gate, proxy) =
        mirror_behind_gate(topic, stream, Hold::FirstProducer).await;
    let bootstrap = proxy.bootstrap();
    let batch = records("lost", RECORDS);
    let frame = idempotent_frame(topic, 424_201, &batch);

    produce_and_lose_the_answer(&bootstrap, &frame, &gate, cluster, topic, RECORDS as i64).await;
    // The producer's retry, on a new connection.
    produce(&bootstrap, &frame).await;
    assert_eq!(
        cluster.offsets(topic, 0),
        (0, RECORDS as i64),
        "Kafka stored the batch once"
    );
    gate.release();

    let (sent, duplicates) = settled_counts(&proxy, topic, 2.0 * RECORDS as f64).await;
    let copies = copies_in(&kinesis, stream).await;
    let repeated: usize = copies.values().map(|c| c - 1).sum();
    let missing = batch
        .iter()
        .filter(|(_, v)| !copies.contains_key(v))
        .count();
    eprintln!(
        "DUPLICATES lost answer: acknowledged twice {RECORDS}, sent {sent}, counted duplicate \
         {duplicates}, in Kinesis {} ({} distinct), repeated {repeated}, missing {missing}",
        copies.values().sum::<usize>(),
        copies.len()
    );
    assert_eq!(missing, 0, "records Kafka stored never reached Kinesis");
    assert_eq!(repeated, 0, "the retried batch was mirrored twice");
    assert_eq!(
        duplicates, RECORDS as f64,
        "the second acknowledgement counted as duplicate"
    );
}

/// Two producer connections to one partition answered out of order: A's batch (offsets
/// 0..20) is answered to the proxy only after B's (20..40), then both producers retry. A
/// high-water mark would take A's records for duplicates; each record must be in Kinesis once.
#[tokio::test(flavor = "multi_thread")]
async fn two_producers_answered_out_of_order_then_retried_are_mirrored_once() {
    const RECORDS: usize = 20;
    let (topic, stream) = ("out-of-order", "out-of-order-stream");
    let (cluster, kinesis, gate, proxy) =
        mirror_behind_gate(topic, stream, Hold::FirstProducer).await;
    let bootstrap = proxy.bootstrap();
    let (batch_a, batch_b) = (records("a", RECORDS), records("b", RECORDS));
    let frame_a = idempotent_frame(topic, 424_202, &batch_a);
    let frame_b = idempotent_frame(topic, 424_203, &batch_b);

    produce_and_lose_the_answer(&bootstrap, &frame_a, &gate, cluster, topic, RECORDS as i64).await;
    produce(&bootstrap, &frame_b).await;
    // B's records reach the mirror first; then A's answer is let through.
    wait_until_async(
        "B's records to be mirrored",
        Duration::from_secs(60),
        async || copies_in(&kinesis, stream).await.len(),
        |n| *n >= RECORDS,
    )
    .await;
    gate.release();
    produce(&bootstrap, &frame_a).await;
    produce(&bootstrap, &frame_b).await;
    assert_eq!(
        cluster.offsets(topic, 0),
        (0, 2 * RECORDS as i64),
        "Kafka stored each batch once"
    );

    let (sent, duplicates) = settled_counts(&proxy, topic, 4.0 * RECORDS as f64).await;
    let copies = copies_in(&kinesis, stream).await;
    let repeated: usize = copies.values().map(|c| c - 1).sum();
    let missing = batch_a
        .iter()
        .chain(&batch_b)
        .filter(|(_, v)| !copies.contains_key(v))
        .count();
    eprintln!(
        "DUPLICATES out of order: records {}, sent {sent}, counted duplicate {duplicates}, \
         in Kinesis {} ({} distinct), repeated {repeated}, missing {missing}",
        2 * RECORDS,
        copies.values().sum::<usize>(),
        copies.len()
    );
    assert_eq!(missing, 0, "records Kafka stored never reached Kinesis");
    assert_eq!(repeated, 0, "a retried batch was mirrored twice");
    assert_eq!(
        duplicates,
        2.0 * RECORDS as f64,
        "each retry counted as duplicate"
    );
}
