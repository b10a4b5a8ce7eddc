//! A stream that refuses records, end to end: real Apache Kafka, kinesis-local, and the fault
//! layer (`tests/support/faults.rs`) answering every PutRecords `AccessDeniedException`, as IAM
//! does for a role that may describe a stream but not put to it. Nothing may be dead-lettered:
//! the records wait in the spool until access is granted, then arrive, each once and in key
//! order. (The missing-stream case is `missing_stream_marks_route_unhealthy_and_kafka_keeps_flowing`
//! in `tests/mirror_kinesis.rs`.)

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::faults::{FaultLayer, FaultPlan};
use support::kinesis::KinesisLocal;
use support::metrics::{get, value, wait_for};
use support::raw_produce::RawProduce;
use support::KafkaCluster;
use support::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUESTS: usize = 20;
const PER_REQUEST: usize = 50;
const KEYS: usize = 10;

/// Sends one acks=all Produce of `records` through the proxy and waits for Kafka's answer.
async fn produce_through(bootstrap: &str, topic: &str, records: Vec<(String, Vec<u8>)>) {
    let frame = RawProduce::new(topic, records).frame();
    let mut client = TcpStream::connect(bootstrap).await.unwrap();
    client.write_all(&frame).await.unwrap();
    let size = client.read_i32().await.unwrap();
    let mut answer = vec![0u8; size as usize];
    client.read_exact(&mut answer).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn access_denied_spools_every_record_and_delivers_them_in_order_once_granted() {
    let (topic, stream) = ("denied", "denied-stream");
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    kinesis.create_stream(stream, 2).await;
    let faults = FaultLayer::start(kinesis.endpoint.trim_start_matches("http://").to_owned()).await;
    faults.set(FaultPlan {
        fail_requests: Some((1.0, 400, "AccessDeniedException")),
        ..FaultPlan::default()
    });
    let config = format!(
        "[kinesis]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nlinger_ms = 20\n\n\
         [[mirror]]\ntopic = \"{topic}\"\nstream = \"{stream}\"\npercent = 100.0\n",
        faults.endpoint
    );
    let proxy = Proxy::start_with(cluster, &config);
    cluster.create_topic(topic, 1);

    for request in 0..REQUESTS {
        let records = (0..PER_REQUEST)
            .map(|i| {
                let n = request * PER_REQUEST + i;
                (
                    format!("key-{}", n % KEYS),
                    format!("{topic}|{n}").into_bytes(),
                )
            })
            .collect();
        produce_through(&proxy.bootstrap(), topic, records).await;
    }
    let total = (REQUESTS * PER_REQUEST) as f64;
    let records = |m: &BTreeMap<String, f64>, result: &str| {
        value(
            m,
            "kafka_kinesis_proxy_mirror_records_total",
            &[("topic", topic), ("result", result)],
        )
    };
    let m = wait_for(
        proxy.admin_port,
        "every refused record spooled",
        Duration::from_secs(60),
        |m| records(m, "spooled") >= total,
    )
    .await;
    assert_eq!(records(&m, "dead_letter"), 0.0, "none given up on");
    assert_eq!(records(&m, "sent"), 0.0);
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_stream_healthy",
            &[("stream", stream)]
        ),
        0.0
    );
    assert!(value(&m, "kafka_kinesis_proxy_spool_bytes", &[("stream", stream)]) > 0.0);
    let (status, routes) = get(proxy.admin_port, "/routes");
    assert_eq!(status, 200);
    assert!(
        routes.contains("AccessDeniedException") && routes.contains("records wait in the spool"),
        "{routes}"
    );
    println!(
        "{} PutRecords refused while {total} records waited",
        FaultLayer::count(&faults.counters.requests_failed)
    );

    // Access granted: the next probe is taken, and replay delivers the spool.
    faults.set(FaultPlan::default());
    let m = wait_for(
        proxy.admin_port,
        "every spooled record delivered",
        Duration::from_secs(120),
        |m| {
            records(m, "sent") >= total
                && value(m, "kafka_kinesis_proxy_spool_bytes", &[("stream", stream)]) == 0.0
        },
    )
    .await;
    assert_eq!(records(&m, "dead_letter"), 0.0);
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_stream_healthy",
            &[("stream", stream)]
        ),
        1.0
    );

    let stored = kinesis.read_all(stream).await;
    let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for record in &stored {
        let data = String::from_utf8_lossy(&record.data).into_owned();
        let n: usize = data.rsplit('|').next().unwrap().parse().unwrap();
        by_key
            .entry(record.partition_key.clone())
            .or_default()
            .push(n);
    }
    assert_eq!(stored.len(), REQUESTS * PER_REQUEST, "each record once");
    for (key, ns) in &by_key {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order: {ns:?}"
        );
        assert_eq!(ns.len(), REQUESTS * PER_REQUEST / KEYS, "{key}");
    }
}
