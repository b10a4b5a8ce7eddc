//! A TCP relay in front of a Kafka broker that holds back the broker's answers on connections
//! whose first request is a Produce, until the test releases them. Other connections (the
//! proxy's discovery and readiness checks) flow freely. It puts a test exactly inside the
//! window between Kafka storing a batch and the proxy seeing Kafka's verdict.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::kinesis::KinesisLocal;
use super::{KafkaCluster, Listener, Proxy};

/// Kafka's api key for Produce.
const PRODUCE: i16 = 0;

/// Which producing connections have their answers held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Every connection whose first request is a Produce.
    EveryProducer,
    /// Only the first such connection; later producers flow freely.
    FirstProducer,
}

pub struct ProduceAnswerGate {
    pub address: String,
    /// Set once a held connection's Produce has been passed to the broker whole.
    pub produce_forwarded: Arc<AtomicBool>,
    release: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ProduceAnswerGate {
    pub async fn start(broker: String, hold: Hold) -> ProduceAnswerGate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let produce_forwarded = Arc::new(AtomicBool::new(false));
        let (release, released) = watch::channel(false);
        let task = tokio::spawn({
            let produce_forwarded = produce_forwarded.clone();
            async move {
                let held_taken = Arc::new(AtomicBool::new(false));
                while let Ok((proxy_side, _)) = listener.accept().await {
                    let connection = Relay {
                        broker: broker.clone(),
                        hold,
                        produce_forwarded: produce_forwarded.clone(),
                        held_taken: held_taken.clone(),
                        released: released.clone(),
                    };
                    tokio::spawn(async move {
                        let _ = connection.run(proxy_side).await;
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

    /// Has a held Produce reached the broker?
    pub fn produce_forwarded(&self) -> bool {
        self.produce_forwarded.load(Ordering::Acquire)
    }

    /// Lets the broker's held answers through.
    pub fn release(&self) {
        self.release.send_replace(true);
    }
}

impl Drop for ProduceAnswerGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// kinesis-local with a one-shard `stream`, and a proxy that reaches the shared cluster's first
/// node through a gate holding `hold`'s answers and mirrors `topic` (one partition, created
/// here) into `stream` at 100%.
pub async fn mirror_behind_gate(
    topic: &str,
    stream: &str,
    hold: Hold,
) -> (
    &'static KafkaCluster,
    KinesisLocal,
    ProduceAnswerGate,
    Proxy,
) {
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    kinesis.create_stream(stream, 1).await;
    let gate =
        ProduceAnswerGate::start(cluster.addresses(Listener::Plaintext)[0].clone(), hold).await;
    let proxy = Proxy::start_upstream(
        std::slice::from_ref(&gate.address),
        &cluster.node_ids(),
        &kinesis.mirror_config(topic, stream, 100.0),
    );
    cluster.create_topic(topic, 1);
    (cluster, kinesis, gate, proxy)
}

/// One relayed connection.
struct Relay {
    broker: String,
    hold: Hold,
    produce_forwarded: Arc<AtomicBool>,
    held_taken: Arc<AtomicBool>,
    released: watch::Receiver<bool>,
}

impl Relay {
    async fn run(mut self, mut proxy_side: TcpStream) -> std::io::Result<()> {
        let mut broker_side = TcpStream::connect(&self.broker).await?;
        let size = proxy_side.read_i32().await?;
        let mut first = vec![0u8; size as usize];
        proxy_side.read_exact(&mut first).await?;
        let is_produce = first.len() >= 2 && i16::from_be_bytes([first[0], first[1]]) == PRODUCE;
        let held = is_produce
            && match self.hold {
                Hold::EveryProducer => true,
                Hold::FirstProducer => !self.held_taken.swap(true, Ordering::AcqRel),
            };
        broker_side.write_all(&size.to_be_bytes()).await?;
        broker_side.write_all(&first).await?;
        if held {
            self.produce_forwarded.store(true, Ordering::Release);
        }
        let (mut proxy_rd, mut proxy_wr) = proxy_side.into_split();
        let (mut broker_rd, mut broker_wr) = broker_side.into_split();
        let requests = tokio::io::copy(&mut proxy_rd, &mut broker_wr);
        let answers = async {
            if held {
                let _ = self.released.wait_for(|open| *open).await;
            }
            tokio::io::copy(&mut broker_rd, &mut proxy_wr).await
        };
        let _ = tokio::join!(requests, answers);
        Ok(())
    }
}
