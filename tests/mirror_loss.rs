//! Windows in which records Kafka accepted could miss the Kinesis mirror. Each test drives its
//! window on purpose (a gate between the proxy and Kafka decides when answers flow), then checks
//! Kafka and Kinesis themselves.
//!
//! One single-node cluster serves every test of this binary (`KafkaCluster::shared`), so each
//! test uses topic names of its own; each test has its own kinesis-local and proxy.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::answer_gate::{mirror_behind_gate, Hold};
use support::raw_produce::RawProduce;
use support::wait_until_async;

/// A producer sends an acks=all Produce and resets its connection (SO_LINGER 0) before Kafka
/// answers. Kafka stores the records; the mirror must follow Kafka's verdict and deliver them
/// all, although the answer can never reach the client.
#[tokio::test(flavor = "multi_thread")]
async fn records_kafka_accepted_are_mirrored_when_the_client_resets_before_the_answer() {
    const RECORDS: usize = 50;
    let (topic, stream) = ("client-gone", "client-gone-stream");
    let (cluster, kinesis, gate, proxy) =
        mirror_behind_gate(topic, stream, Hold::EveryProducer).await;

    let records: Vec<(String, Vec<u8>)> = (0..RECORDS)
        .map(|i| {
            (
                format!("gone-{i:03}"),
                format!("{topic}|{i}|accepted while the client left").into_bytes(),
            )
        })
        .collect();
    let frame = RawProduce::new(topic, records.clone()).frame();
    let mut client = TcpStream::connect(proxy.bootstrap()).await.unwrap();
    client.write_all(&frame).await.unwrap();
    wait_until_async(
        "the Produce to reach Kafka through the proxy",
        Duration::from_secs(30),
        async || gate.produce_forwarded(),
        |forwarded| *forwarded,
    )
    .await;
    // Kafka's answer is held at the gate: the client resets before it can arrive.
    client.set_zero_linger().unwrap();
    drop(client);
    gate.release();

    wait_until_async(
        "Kafka to hold the records",
        Duration::from_secs(30),
        async || cluster.offsets(topic, 0).1,
        |high| *high == RECORDS as i64,
    )
    .await;
    let stored = wait_until_async(
        "Kinesis to hold every record Kafka accepted",
        Duration::from_secs(30),
        async || kinesis.read_all(stream).await.len(),
        |n| *n >= RECORDS,
    )
    .await;
    assert_eq!(stored, RECORDS, "Kinesis holds more records than Kafka");
    let expected: BTreeSet<Vec<u8>> = records.iter().map(|(_, v)| v.clone()).collect();
    let mirrored: BTreeSet<Vec<u8>> = kinesis
        .read_all(stream)
        .await
        .into_iter()
        .map(|r| r.data)
        .collect();
    assert_eq!(mirrored, expected);
}
