//! Windows in which records Kafka accepted could miss the Kinesis mirror. Each test drives its
//! window on purpose (a gate between the proxy and Kafka decides when answers flow), then checks
//! Kafka and Kinesis themselves.
//!
//! One single-node cluster serves every test of this binary (`KafkaCluster::shared`), so each
//! test uses topic names of its own; each test has its own kinesis-local and proxy.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use support::kinesis::KinesisLocal;
use support::raw_produce::RawProduce;
use support::{KafkaCluster, Listener, Proxy};

/// Kafka's api key for Produce.
const PRODUCE: i16 = 0;

/// A TCP relay in front of a Kafka broker that holds back the broker's answers on every
/// connection whose first request is a Produce, until the test releases them. Other
/// connections (the proxy's discovery and readiness checks) flow freely.
struct ProduceAnswerGate {
    address: String,
    /// Set once a Produce request has been passed to the broker whole.
    produce_forwarded: Arc<AtomicBool>,
    release: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ProduceAnswerGate {
    async fn start(broker: String) -> ProduceAnswerGate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let produce_forwarded = Arc::new(AtomicBool::new(false));
        let (release, released) = watch::channel(false);
        let task = tokio::spawn({
            let produce_forwarded = produce_forwarded.clone();
            async move {
                while let Ok((proxy_side, _)) = listener.accept().await {
                    let (broker, forwarded, released) =
                        (broker.clone(), produce_forwarded.clone(), released.clone());
                    tokio::spawn(async move {
                        let _ = relay(proxy_side, &broker, &forwarded, released).await;
                    });
                }
            }
        });
        ProduceAnswerGate {
            address,
            produce_forwarded,
            release,
            task,
        }
    }

    /// Lets the broker's held answers through.
    fn release(&self) {
        self.release.send_replace(true);
    }
}

impl Drop for ProduceAnswerGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays one connection; answers wait for `released` if its first request is a Produce.
async fn relay(
    mut proxy_side: TcpStream,
    broker: &str,
    produce_forwarded: &AtomicBool,
    mut released: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut broker_side = TcpStream::connect(broker).await?;
    let size = proxy_side.read_i32().await?;
    let mut first = vec![0u8; size as usize];
    proxy_side.read_exact(&mut first).await?;
    let is_produce = first.len() >= 2 && i16::from_be_bytes([first[0], first[1]]) == PRODUCE;
    broker_side.write_all(&size.to_be_bytes()).await?;
    broker_side.write_all(&first).await?;
    if is_produce {
        produce_forwarded.store(true, Ordering::Release);
    }
    let (mut proxy_rd, mut proxy_wr) = proxy_side.into_split();
    let (mut broker_rd, mut broker_wr) = broker_side.into_split();
    let requests = tokio::io::copy(&mut proxy_rd, &mut broker_wr);
    let answers = async {
        if is_produce {
            let _ = released.wait_for(|open| *open).await;
        }
        tokio::io::copy(&mut broker_rd, &mut proxy_wr).await
    };
    let _ = tokio::join!(requests, answers);
    Ok(())
}

/// Polls `done` until it holds; fails the test with `state()` after `limit`.
async fn wait_until<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut state: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let now = state().await;
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last seen: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A producer sends an acks=all Produce and resets its connection (SO_LINGER 0) before Kafka
/// answers. Kafka stores the records; the mirror must follow Kafka's verdict and deliver them
/// all, although the answer can never reach the client.
#[tokio::test(flavor = "multi_thread")]
async fn records_kafka_accepted_are_mirrored_when_the_client_resets_before_the_answer() {
    const RECORDS: usize = 50;
    let (topic, stream) = ("client-gone", "client-gone-stream");
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    kinesis.create_stream(stream, 1).await;
    let gate = ProduceAnswerGate::start(cluster.addresses(Listener::Plaintext)[0].clone()).await;
    let extra = format!(
        "[kinesis]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nlinger_ms = 20\n\
         [[mirror]]\ntopic = \"{topic}\"\nstream = \"{stream}\"\npercent = 100\n",
        kinesis.endpoint
    );
    let proxy = Proxy::start_upstream(std::slice::from_ref(&gate.address), &cluster.node_ids(), &extra);
    cluster.create_topic(topic, 1);

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
    wait_until(
        "the Produce to reach Kafka through the proxy",
        Duration::from_secs(30),
        async || gate.produce_forwarded.load(Ordering::Acquire),
        |forwarded| *forwarded,
    )
    .await;
    // Kafka's answer is held at the gate: the client resets before it can arrive.
    client.set_zero_linger().unwrap();
    drop(client);
    gate.release();

    wait_until(
        "Kafka to hold the records",
        Duration::from_secs(30),
        async || cluster.offsets(topic, 0).1,
        |high| *high == RECORDS as i64,
    )
    .await;
    let stored = wait_until(
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
