//! What only a real multi-broker cluster can show, on the shared 3-node Apache Kafka cluster
//! (replication factor 3, min.insync.replicas 2):
//! - each broker is served on its own proxy port, and partitions are led by different brokers;
//! - a partition leader killed with kill -9 under an idempotent acks=all producer (Java's
//!   VerifiableProducer and confluent-kafka): the producer recovers through the proxy, every
//!   acknowledged record is in Kafka exactly once, and per-partition order holds;
//! - the killed broker restarted: clients reach it again through the same proxy port, with the
//!   same proxy process;
//! - the proxy itself killed and restarted in the middle of a produce run;
//! - the mirror at 100% to kinesis-local through a leader kill: every record Kafka
//!   acknowledged reaches Kinesis once (the mirror skips a batch that a producer's retry got
//!   acknowledged again).
//!
//! Each test prints a FAILOVER line with its counts. Tests that take a node down run one at a
//! time: two nodes down at once would lose the controller quorum and min.insync.replicas.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::kafka::{brokers_seen_through, KafkaRecord};
use support::kinesis::KinesisLocal;
use support::*;

/// Held by every test that kills a process of the shared cluster.
static ONE_FAULT_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_FAULT_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

const RECORDS: u64 = 20_000;
const RATE: u64 = 2_000;
/// Acknowledgements to wait for before the fault, so it lands mid-run.
const ACKED_BEFORE_FAULT: usize = 4_000;
const PRODUCER_DEADLINE: Duration = Duration::from_secs(240);

/// Restarts a killed node when dropped, so a failing test leaves the cluster whole.
struct KilledNode {
    cluster: &'static KafkaCluster,
    id: i32,
}

impl KilledNode {
    fn kill(cluster: &'static KafkaCluster, id: i32) -> KilledNode {
        cluster.kill(id);
        KilledNode { cluster, id }
    }

    fn restart(self) {
        self.cluster.restart(self.id);
    }
}

impl Drop for KilledNode {
    fn drop(&mut self) {
        if !self.cluster.is_running(self.id) {
            let (cluster, id) = (self.cluster, self.id);
            if std::panic::catch_unwind(AssertUnwindSafe(|| cluster.restart(id))).is_err() {
                eprintln!("kafka: node {id} could not be restarted after a failed test");
            }
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A record the producer was told is stored: its id (the value of VerifiableProducer's
/// records, the key index of confluent's) and where Kafka said it went.
#[derive(Debug, Clone, Copy)]
struct Acked {
    id: u64,
    partition: i32,
    offset: i64,
}

/// Counts for the closing note: acknowledged, found in Kafka, duplicates, lost.
#[derive(Debug, Default)]
struct Tally {
    acknowledged: usize,
    /// Records of the topic in Kafka, acknowledged or not.
    in_kafka: usize,
    duplicates: usize,
    lost: usize,
    misplaced: usize,
    order_violations: usize,
}

impl Tally {
    /// `stored` are (id, partition, offset) of every record of the topic in Kafka.
    fn of(acked: &[Acked], stored: &[(u64, i32, i64)]) -> Tally {
        let mut copies: HashMap<u64, Vec<(i32, i64)>> = HashMap::new();
        for (id, p, o) in stored {
            copies.entry(*id).or_default().push((*p, *o));
        }
        let mut t = Tally {
            acknowledged: acked.len(),
            in_kafka: stored.len(),
            ..Tally::default()
        };
        t.duplicates = copies.values().map(|c| c.len() - 1).sum();
        for a in acked {
            match copies.get(&a.id) {
                None => t.lost += 1,
                Some(c) if !c.contains(&(a.partition, a.offset)) => t.misplaced += 1,
                Some(_) => {}
            }
        }
        // Ids were produced in increasing order, so each partition's must increase with offset.
        let mut by_partition: BTreeMap<i32, Vec<(i64, u64)>> = BTreeMap::new();
        for (id, p, o) in stored {
            by_partition.entry(*p).or_default().push((*o, *id));
        }
        for records in by_partition.values_mut() {
            records.sort();
            t.order_violations += records.windows(2).filter(|w| w[1].1 <= w[0].1).count();
        }
        t
    }

    fn assert_exactly_once(&self, what: &str, expected_acks: usize) {
        eprintln!("FAILOVER {what}: {self:?}");
        assert_eq!(
            self.in_kafka, self.acknowledged,
            "{what}: Kafka holds unacknowledged records: {self:?}"
        );
        assert_eq!(
            self.acknowledged, expected_acks,
            "{what}: the producer did not recover: {self:?}"
        );
        assert_eq!(
            self.lost, 0,
            "{what}: acknowledged records missing from Kafka: {self:?}"
        );
        assert_eq!(
            self.misplaced, 0,
            "{what}: records not at their acknowledged offset: {self:?}"
        );
        assert_eq!(self.duplicates, 0, "{what}: duplicates in Kafka: {self:?}");
        assert_eq!(
            self.order_violations, 0,
            "{what}: per-partition order broken: {self:?}"
        );
    }
}

/// Java's VerifiableProducer through `bootstrap`: idempotent, acks=all, RECORDS increasing
/// integers at RATE per second, keys cycling over 100 values.
fn verifiable_producer(bootstrap: &str, topic: &str) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("producer.properties");
    std::fs::write(
        &config,
        // VerifiableProducer sets retries=0 unless told otherwise.
        "enable.idempotence=true\nacks=all\nretries=2147483647\nlinger.ms=5\n\
         delivery.timeout.ms=120000\n",
    )
    .unwrap();
    let mut cmd = java_command(None);
    cmd.arg("org.apache.kafka.tools.VerifiableProducer")
        .args(["--bootstrap-server", bootstrap, "--topic", topic])
        .args(["--max-messages", &RECORDS.to_string()])
        .args(["--throughput", &RATE.to_string(), "--acks", "-1"])
        .args(["--repeating-keys", "100", "--producer.config"])
        .arg(&config);
    (Daemon::start("verifiable-producer", cmd), dir)
}

/// VerifiableProducer's JSON events of one kind, from its log.
fn events(log: &str, name: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| l.starts_with('{') && l.contains(name))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["name"] == name)
        .collect()
}

fn verifiable_acks(log: &str) -> Vec<Acked> {
    events(log, "producer_send_success")
        .iter()
        .map(|v| Acked {
            id: v["value"].as_str().unwrap().parse().unwrap(),
            partition: v["partition"].as_i64().unwrap() as i32,
            offset: v["offset"].as_i64().unwrap(),
        })
        .collect()
}

fn value_ids(records: &[KafkaRecord]) -> Vec<(u64, i32, i64)> {
    records
        .iter()
        .map(|r| {
            let value =
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned();
            let id = value
                .parse()
                .unwrap_or_else(|_| panic!("not a VerifiableProducer value: {value:?}"));
            (id, r.partition, r.offset)
        })
        .collect()
}

/// Runs VerifiableProducer through the proxy, applies `fault` once ACKED_BEFORE_FAULT records
/// are acknowledged, and returns the acknowledgements after the producer finished.
fn produce_through_fault(bootstrap: &str, topic: &str, fault: impl FnOnce()) -> Vec<Acked> {
    let (mut producer, _config) = verifiable_producer(bootstrap, topic);
    wait_until(
        "acknowledgements before the fault",
        Duration::from_secs(120),
        || {
            assert!(
                producer.is_running(),
                "VerifiableProducer exited early:\n{}",
                producer.log_tail(20)
            );
            verifiable_acks(&producer.log_text()).len() >= ACKED_BEFORE_FAULT
        },
    );
    fault();
    let exit = producer.wait_exit(PRODUCER_DEADLINE);
    let log = producer.log_text();
    let errors = events(&log, "producer_send_error");
    assert!(
        errors.is_empty(),
        "{} sends failed, first: {}",
        errors.len(),
        errors[0]
    );
    assert_eq!(
        exit,
        Some(0),
        "VerifiableProducer exit; log:\n{}",
        producer.log_tail(40)
    );
    verifiable_acks(&log)
}

#[test]
fn each_broker_has_its_own_proxy_port() {
    let cluster = KafkaCluster::shared3();
    let proxy = Proxy::start(cluster);
    let topic = "ports-spread";
    cluster.create_topic(topic, 6);
    let mut leaders = cluster.wait_for_leaders(topic, 6, None, Duration::from_secs(30));
    leaders.sort();
    leaders.dedup();
    assert_eq!(
        leaders,
        vec![1, 2, 3],
        "partitions are not led by every broker"
    );

    let expected: Vec<(i32, String, i32)> = cluster
        .node_ids()
        .into_iter()
        .map(|id| (id, "127.0.0.1".to_owned(), i32::from(proxy.broker_port(id))))
        .collect();
    assert_eq!(
        brokers_seen_through(&proxy.bootstrap()),
        expected,
        "rewritten Metadata"
    );
    // Every broker port answers with the same rewritten view, so a client that bootstraps from
    // any of them stays on the proxy.
    for id in cluster.node_ids() {
        let port_bootstrap = format!("127.0.0.1:{}", proxy.broker_port(id));
        assert_eq!(
            brokers_seen_through(&port_bootstrap),
            expected,
            "through node {id}'s port"
        );
    }
    let v = run_client(
        "confluent",
        &words(&format!(
            "produce --bootstrap {} --topic {topic} --count 3000",
            proxy.bootstrap()
        )),
    );
    check_produced(&v, 3000).unwrap();
    for p in 0..6 {
        let (_, high) = cluster.offsets(topic, p);
        assert!(
            high > 0,
            "partition {p} (led by {:?}) got nothing",
            cluster.leader(topic, p)
        );
    }
}

/// Leader kill under Java's idempotent producer, then the broker's restart: the proxy (same
/// process, same ports) serves the restarted broker again.
#[test]
fn leader_kill_java_then_broker_restart() {
    let _serial = serial();
    let cluster = KafkaCluster::shared3();
    let topic = "failover-java";
    cluster.create_topic(topic, 3);
    let mut proxy = Proxy::start(cluster);
    let proxy_pid = proxy.pid();
    let mut killed = None;
    let acked = produce_through_fault(&proxy.bootstrap(), topic, || {
        let victim = cluster.leader(topic, 0).expect("partition 0 has a leader");
        killed = Some(KilledNode::kill(cluster, victim));
        cluster.wait_for_leaders(topic, 3, Some(victim), Duration::from_secs(60));
    });
    let killed = killed.unwrap();
    let victim = killed.id;
    let tally = Tally::of(&acked, &value_ids(&cluster.read_all(topic, false)));
    tally.assert_exactly_once("java VerifiableProducer, leader kill", RECORDS as usize);

    killed.restart();
    // A new topic's partitions are spread over every broker, the restarted one included.
    let after = "failover-java-after";
    cluster.create_topic(after, 3);
    let leaders = cluster.wait_for_leaders(after, 3, None, Duration::from_secs(30));
    assert!(
        leaders.contains(&victim),
        "restarted node {victim} leads nothing: {leaders:?}"
    );
    let b = proxy.bootstrap();
    let p = run_client(
        "confluent",
        &words(&format!(
            "produce --bootstrap {b} --topic {after} --count 3000"
        )),
    );
    check_produced(&p, 3000).unwrap();
    let c = run_client(
        "confluent",
        &words(&format!(
            "consume --bootstrap {b} --topic {after} --count 3000"
        )),
    );
    check_consumed(&c, 3000).unwrap();
    let port = i32::from(proxy.broker_port(victim));
    assert!(
        brokers_seen_through(&b).contains(&(victim, "127.0.0.1".to_owned(), port)),
        "node {victim} is no longer served on proxy port {port}"
    );
    assert!(proxy.daemon().is_running(), "the proxy exited");
    assert_eq!(proxy.pid(), proxy_pid);
    eprintln!(
        "FAILOVER broker restart: node {victim} back on proxy port {port}, leaders {leaders:?}"
    );
}

#[test]
fn leader_kill_confluent_idempotent() {
    let _serial = serial();
    let cluster = KafkaCluster::shared3();
    let topic = "failover-confluent";
    cluster.create_topic(topic, 3);
    let proxy = Proxy::start(cluster);
    let dir = tempfile::tempdir().unwrap();
    let acked_log = dir.path().join("acked.txt");
    let mut cmd = client_command(
        "confluent",
        &words(&format!(
            "produce --bootstrap {} --topic {topic} --count {RECORDS} --rate {RATE} --idempotent \
             --acks all --timeout 180 --acked-log {}",
            proxy.bootstrap(),
            acked_log.display()
        )),
    );
    cmd.env("PYTHONUNBUFFERED", "1");
    let mut producer = Daemon::start("confluent-producer", cmd);
    let read_acked = || -> Vec<Acked> {
        std::fs::read_to_string(&acked_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let partition = f.next()?.parse().ok()?;
                let offset = f.next()?.parse().ok()?;
                let id = f.next()?.strip_prefix("key-")?.parse().ok()?;
                Some(Acked {
                    id,
                    partition,
                    offset,
                })
            })
            .collect()
    };
    wait_until(
        "acknowledgements before the fault",
        Duration::from_secs(120),
        || read_acked().len() >= ACKED_BEFORE_FAULT,
    );
    let victim = cluster.leader(topic, 0).expect("partition 0 has a leader");
    let killed = KilledNode::kill(cluster, victim);
    let exit = producer.wait_exit(PRODUCER_DEADLINE);
    assert_eq!(exit, Some(0), "producer log:\n{}", producer.log_tail(40));
    let result: Value = producer
        .log_text()
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("producer summary line");
    check_produced(&result, RECORDS as i64).unwrap();
    let stored: Vec<(u64, i32, i64)> = cluster
        .read_all(topic, false)
        .iter()
        .map(|r| {
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            let id = key.strip_prefix("key-").and_then(|i| i.parse().ok());
            (
                id.unwrap_or_else(|| panic!("unexpected key {key:?}")),
                r.partition,
                r.offset,
            )
        })
        .collect();
    Tally::of(&read_acked(), &stored)
        .assert_exactly_once("confluent idempotent, leader kill", RECORDS as usize);
    killed.restart();
}

#[test]
fn proxy_restart_mid_produce() {
    let _serial = serial();
    let cluster = KafkaCluster::shared3();
    let topic = "failover-proxy-restart";
    cluster.create_topic(topic, 3);
    let mut proxy = Proxy::start(cluster);
    let old_pid = proxy.pid();
    let bootstrap = proxy.bootstrap();
    let acked = produce_through_fault(&bootstrap, topic, || {
        proxy.daemon().signal("-KILL");
        proxy.restart();
    });
    assert_ne!(proxy.pid(), old_pid);
    Tally::of(&acked, &value_ids(&cluster.read_all(topic, false))).assert_exactly_once(
        "java VerifiableProducer, proxy kill -9 and restart",
        RECORDS as usize,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mirror_keeps_every_acknowledged_record_through_leader_kill() {
    let cluster = KafkaCluster::shared3();
    let topic = "failover-mirror";
    let stream = "failover-mirror-stream";
    cluster.create_topic(topic, 3);
    let kinesis = KinesisLocal::start();
    kinesis.create_stream(stream, 2).await;
    let proxy = Proxy::start_with(
        cluster,
        &format!(
            "[kinesis]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\n\
             [[mirror]]\ntopic = \"{topic}\"\nstream = \"{stream}\"\npercent = 100.0\n",
            kinesis.endpoint
        ),
    );
    let acked = tokio::task::block_in_place(|| {
        let _serial = serial();
        let mut killed = None;
        let acked = produce_through_fault(&proxy.bootstrap(), topic, || {
            let victim = cluster.leader(topic, 0).expect("partition 0 has a leader");
            killed = Some(KilledNode::kill(cluster, victim));
        });
        killed.unwrap().restart();
        acked
    });
    let in_kafka = value_ids(&cluster.read_all(topic, false));
    Tally::of(&acked, &in_kafka)
        .assert_exactly_once("mirror run, leader kill (Kafka side)", RECORDS as usize);

    // Every acknowledged record must reach Kinesis; wait for the mirror to catch up.
    let deadline = Instant::now() + Duration::from_secs(180);
    let (copies, last_count) = loop {
        let records = kinesis.read_all(stream).await;
        let mut copies: HashMap<u64, usize> = HashMap::new();
        for r in &records {
            let id = String::from_utf8_lossy(&r.data)
                .parse::<u64>()
                .unwrap_or(u64::MAX);
            *copies.entry(id).or_default() += 1;
        }
        let missing = acked.iter().filter(|a| !copies.contains_key(&a.id)).count();
        if missing == 0 || Instant::now() > deadline {
            break (copies, records.len());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let missing = acked.iter().filter(|a| !copies.contains_key(&a.id)).count();
    let duplicates: usize = copies.values().map(|c| c - 1).sum();
    let unexpected = copies.keys().filter(|id| **id >= RECORDS).count();
    eprintln!(
        "FAILOVER mirror: acknowledged {}, in Kinesis {last_count}, distinct {}, missing {missing}, \
         duplicates {duplicates} (producer retries acknowledged twice are mirrored once), \
         unexpected {unexpected}",
        acked.len(),
        copies.len()
    );
    assert_eq!(missing, 0, "acknowledged records never reached Kinesis");
    assert_eq!(
        duplicates, 0,
        "records in Kinesis more than once: a producer retry was mirrored again"
    );
    assert_eq!(
        unexpected, 0,
        "Kinesis holds records Kafka never acknowledged"
    );
}
