//! A real Apache Kafka cluster for the integration tests: N combined broker+controller KRaft
//! nodes on free loopback ports, run from the jars that `scripts/install-test-deps.sh` fetches
//! from Maven Central.
//!
//! Every node has five client listeners, so the security tests can reach the same cluster
//! several ways:
//! - PLAINTEXT;
//! - SASL_PLAINTEXT with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 ([`SASL_USER`], created at format
//!   time);
//! - SSL and SASL_SSL, with a CA and a server certificate made at test time ([`TlsFiles`]);
//! - MTLS: SSL that requires a client certificate signed by the same CA.
//!
//! One cluster serves a whole test binary ([`KafkaCluster::shared`] for one node,
//! [`KafkaCluster::shared3`] for three); tests use unique topic names. The JVMs are started from
//! one thread that lives as long as the test process, with `PR_SET_PDEATHSIG`, so they die with
//! the process even when a test fails or the binary is killed. Data directories of test
//! processes that are gone are removed when the next cluster starts.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use super::{free_port, java_command, tail_file};

/// The SASL user of every test cluster, for PLAIN and both SCRAM mechanisms.
pub const SASL_USER: (&str, &str) = ("alice", "alice-secret");

/// How long a node may take from `java` to "Kafka Server started".
const NODE_START_TIMEOUT: Duration = Duration::from_secs(90);

/// A client listener of every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    Plaintext,
    SaslPlaintext,
    Ssl,
    SaslSsl,
    /// SSL with `ssl.client.auth=required`.
    Mtls,
}

impl Listener {
    pub const ALL: [Listener; 5] = [
        Listener::Plaintext,
        Listener::SaslPlaintext,
        Listener::Ssl,
        Listener::SaslSsl,
        Listener::Mtls,
    ];

    /// The listener's name; except for MTLS, also its security protocol.
    pub fn name(self) -> &'static str {
        match self {
            Listener::Plaintext => "PLAINTEXT",
            Listener::SaslPlaintext => "SASL_PLAINTEXT",
            Listener::Ssl => "SSL",
            Listener::SaslSsl => "SASL_SSL",
            Listener::Mtls => "MTLS",
        }
    }
}

/// PEM files of the cluster's TLS listeners, made with openssl when the cluster starts.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed the brokers' certificate: a client's trust anchor.
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// The brokers' certificate (SAN localhost and 127.0.0.1) and its PKCS#8 key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// One record read back from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

struct Node {
    id: i32,
    ports: HashMap<Listener, u16>,
    controller_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running KRaft cluster of combined nodes (ids 1..=N). Stopped on drop, or when the test
/// process ends for the shared ones.
pub struct KafkaCluster {
    dir: PathBuf,
    nodes: Vec<Mutex<Node>>,
    tls: TlsFiles,
}

static SHARED_ONE: OnceLock<KafkaCluster> = OnceLock::new();
static SHARED_THREE: OnceLock<KafkaCluster> = OnceLock::new();

impl KafkaCluster {
    /// The single-node cluster of this test binary, started on first use.
    pub fn shared() -> &'static KafkaCluster {
        SHARED_ONE.get_or_init(|| KafkaCluster::start(1))
    }

    /// The three-node cluster of this test binary (replication factor 3, min.insync.replicas
    /// 2), started on first use.
    pub fn shared3() -> &'static KafkaCluster {
        SHARED_THREE.get_or_init(|| KafkaCluster::start(3))
    }

    /// Formats and starts `n` nodes, and returns once each has started and every node sees
    /// all `n` brokers.
    pub fn start(n: usize) -> KafkaCluster {
        remove_stale_dirs();
        let dir =
            std::env::temp_dir().join(format!("kkp-kafka-{}-{}", std::process::id(), free_port()));
        fs::create_dir_all(&dir).expect("create cluster dir");
        let tls = make_tls_files(&dir);
        let mut nodes: Vec<Node> = (1..=n as i32)
            .map(|id| Node {
                id,
                ports: Listener::ALL.iter().map(|l| (*l, free_port())).collect(),
                controller_port: free_port(),
                config: dir.join(format!("node{id}.properties")),
                log: dir.join(format!("node{id}.log")),
                child: None,
            })
            .collect();
        let voters = nodes
            .iter()
            .map(|n| format!("{}@127.0.0.1:{}", n.id, n.controller_port))
            .collect::<Vec<_>>()
            .join(",");
        for node in &nodes {
            let props = node_properties(node, n, &voters, &dir, &tls);
            fs::write(&node.config, props).expect("write node config");
        }
        format_storage(&nodes, &dir);
        for node in &mut nodes {
            node.spawn();
        }
        for node in &mut nodes {
            node.wait_started(0);
        }
        let cluster = KafkaCluster {
            dir,
            nodes: nodes.into_iter().map(Mutex::new).collect(),
            tls,
        };
        cluster.wait_for_brokers(n);
        eprintln!(
            "kafka: {n}-node cluster ready at {} (data in {})",
            cluster.bootstrap(),
            cluster.dir.display()
        );
        cluster
    }

    /// Comma-separated PLAINTEXT addresses of every node, as a direct client would bootstrap.
    pub fn bootstrap(&self) -> String {
        self.bootstrap_on(Listener::Plaintext)
    }

    /// Comma-separated addresses of every node on `listener`.
    pub fn bootstrap_on(&self, listener: Listener) -> String {
        self.addresses(listener).join(",")
    }

    /// Each node's address on `listener`, in node id order.
    pub fn addresses(&self, listener: Listener) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", lock(n).ports[&listener]))
            .collect()
    }

    /// Node ids, 1..=N.
    pub fn node_ids(&self) -> Vec<i32> {
        (1..=self.nodes.len() as i32).collect()
    }

    /// The port of node `id` on `listener`.
    pub fn port(&self, id: i32, listener: Listener) -> u16 {
        lock(self.node(id)).ports[&listener]
    }

    pub fn tls(&self) -> &TlsFiles {
        &self.tls
    }

    pub fn node_log(&self, id: i32) -> PathBuf {
        lock(self.node(id)).log.clone()
    }

    fn node(&self, id: i32) -> &Mutex<Node> {
        self.nodes
            .get((id - 1) as usize)
            .unwrap_or_else(|| panic!("no node {id} in a {}-node cluster", self.nodes.len()))
    }

    /// kill -9 of node `id`, as a crash or a lost machine would end it.
    pub fn kill(&self, id: i32) {
        let mut node = lock(self.node(id));
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        eprintln!("kafka: node {id} killed");
    }

    /// Starts node `id` again on its ports and data, and waits until it has started and the
    /// cluster sees every broker again.
    pub fn restart(&self, id: i32) {
        {
            let mut node = lock(self.node(id));
            assert!(
                node.child.is_none(),
                "node {id} is still running: kill it first"
            );
            let from = fs::metadata(&node.log).map(|m| m.len()).unwrap_or(0);
            node.spawn();
            node.wait_started(from);
        }
        self.wait_for_brokers(self.nodes.len());
        eprintln!("kafka: node {id} restarted");
    }

    /// Is node `id` running?
    pub fn is_running(&self, id: i32) -> bool {
        let mut node = lock(self.node(id));
        match node.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// A metadata client on the PLAINTEXT listeners of the running nodes.
    /// PLAINTEXT addresses of the nodes that run now (a killed node would only add
    /// connection errors).
    fn running_bootstrap(&self) -> String {
        self.node_ids()
            .into_iter()
            .filter(|id| self.is_running(*id))
            .map(|id| format!("127.0.0.1:{}", self.port(id, Listener::Plaintext)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn metadata_client(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.running_bootstrap())
            .set("log_level", "3")
            .create()
            .expect("rdkafka metadata client")
    }

    /// The node that leads `topic`'s `partition` now, or None while it has no leader (or the
    /// topic is unknown).
    pub fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        let md = self
            .metadata_client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .ok()?;
        let t = md.topics().iter().find(|t| t.name() == topic)?;
        let p = t.partitions().iter().find(|p| p.id() == partition)?;
        (p.error().is_none() && p.leader() >= 0).then_some(p.leader())
    }

    /// `(low, high)` watermarks of `topic`'s `partition`.
    pub fn offsets(&self, topic: &str, partition: i32) -> (i64, i64) {
        self.metadata_client()
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("watermarks of {topic}/{partition}: {e}"))
    }

    /// Every record of `topic` up to the high watermarks at the time of the call, read directly
    /// from Kafka (not through the proxy), in partition and offset order. `read_committed`
    /// hides aborted transactions' records, as Kafka's read_committed consumers see the topic.
    pub fn read_all(&self, topic: &str, read_committed: bool) -> Vec<KafkaRecord> {
        use rdkafka::message::Message;
        use rdkafka::{Offset, TopicPartitionList};
        let md = self
            .metadata_client()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("metadata of {topic}: {e}"));
        let partitions: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.running_bootstrap())
            .set("group.id", "kkp-harness-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set(
                "isolation.level",
                if read_committed {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            )
            .set("log_level", "3")
            .create()
            .expect("rdkafka reader");
        let mut remaining = std::collections::HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for p in &partitions {
            let (low, high) = self.offsets(topic, *p);
            if high > low {
                // Done at the record before the high watermark, or at the partition's end.
                remaining.insert(*p, high);
                assignment
                    .add_partition_offset(topic, *p, Offset::Offset(low))
                    .expect("assignment");
            }
        }
        let mut records = Vec::new();
        if remaining.is_empty() {
            return records;
        }
        consumer.assign(&assignment).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !remaining.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{topic}: reading back timed out, left: {remaining:?}"
            );
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    if let Some(high) = remaining.get(&m.partition()) {
                        if m.offset() + 1 >= *high {
                            remaining.remove(&m.partition());
                        }
                    }
                    records.push(KafkaRecord {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                    });
                }
                // Transaction markers (and, read committed, aborted records) occupy offsets
                // that no record reaches: the partition's end event says it is done.
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    remaining.remove(&p);
                }
                // Transient (a broker that was killed and whose leaderships moved): the client
                // recovers by itself, and the deadline above bounds the wait.
                Some(Err(e)) => eprintln!("{topic}: read back: {e}; retrying"),
                None => {}
            }
        }
        records.sort_by_key(|r| (r.partition, r.offset));
        records
    }

    /// Waits until every partition of `topic` has a leader other than `not` (None: any), and
    /// returns the leaders by partition.
    pub fn wait_for_leaders(
        &self,
        topic: &str,
        partitions: i32,
        not: Option<i32>,
        timeout: Duration,
    ) -> Vec<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<Option<i32>> =
                (0..partitions).map(|p| self.leader(topic, p)).collect();
            if leaders.iter().all(|l| l.is_some() && *l != not) {
                return leaders.into_iter().flatten().collect();
            }
            assert!(
                Instant::now() < deadline,
                "{topic}: partitions still without a leader (other than {not:?}) after \
                 {timeout:?}: {leaders:?}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Creates `topic` directly on the cluster (replication factor: the cluster's default,
    /// 1 or 3) and waits until every partition has a leader.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.create_topic_with(topic, partitions, &[]);
    }

    /// Like `create_topic`, with topic configs such as `("min.insync.replicas", "2")`.
    pub fn create_topic_with(&self, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.running_bootstrap())
            .set("log_level", "3")
            .create()
            .expect("rdkafka admin client");
        let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
        for (k, v) in configs {
            new_topic = new_topic.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = futures::executor::block_on(admin.create_topics([&new_topic], &opts))
            .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
        for r in results {
            if let Err((name, code)) = r {
                panic!("create topic {name}: {code}");
            }
        }
        self.wait_for_leaders(topic, partitions, None, Duration::from_secs(30));
    }

    /// Waits until a metadata request lists `n` brokers.
    fn wait_for_brokers(&self, n: usize) {
        let deadline = Instant::now() + NODE_START_TIMEOUT;
        loop {
            let seen = self
                .metadata_client()
                .fetch_metadata(None, Duration::from_secs(5))
                .map(|md| md.brokers().len())
                .unwrap_or(0);
            if seen == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster lists {seen} of {n} brokers after {NODE_START_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some(mut child) = lock(node).child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn lock(node: &Mutex<Node>) -> std::sync::MutexGuard<'_, Node> {
    node.lock().unwrap_or_else(|e| e.into_inner())
}

impl Node {
    fn spawn(&mut self) {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open node log");
        let err = out.try_clone().expect("clone node log");
        let mut cmd = java_command(None);
        // Heap and GC for a 2-core, 24 GiB machine that runs up to three nodes beside the
        // proxy and the clients: a fixed 768 MiB heap (no resizing pauses), the serial
        // collector (no GC threads competing for the two cores), and C1 only, which starts
        // fast and is plenty for test traffic.
        cmd.args(["-Xms768m", "-Xmx768m", "-XX:+UseSerialGC"])
            .args(["-XX:+ExitOnOutOfMemoryError", "-XX:-UsePerfData"])
            .arg(format!(
                "-Dkafka.logs.dir={}",
                self.log.parent().unwrap().display()
            ))
            .arg("kafka.Kafka")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        self.child = Some(spawn_for_process_lifetime(cmd));
    }

    /// Waits for "Kafka Server started" in the log after byte `from`.
    fn wait_started(&mut self, from: u64) {
        let deadline = Instant::now() + NODE_START_TIMEOUT;
        loop {
            if log_since(&self.log, from).contains("Kafka Server started") {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "kafka node {} exited ({status}) while starting; log {}:\n{}",
                    self.id,
                    self.log.display(),
                    tail_file(&self.log, 60)
                );
            }
            assert!(
                Instant::now() < deadline,
                "kafka node {} not started within {NODE_START_TIMEOUT:?}; log {}:\n{}",
                self.id,
                self.log.display(),
                tail_file(&self.log, 60)
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn log_since(path: &Path, from: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut f) = File::open(path) {
        use std::io::Seek;
        let _ = f.seek(std::io::SeekFrom::Start(from));
        let _ = f.read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

fn node_properties(node: &Node, n: usize, voters: &str, dir: &Path, tls: &TlsFiles) -> String {
    let (user, password) = SASL_USER;
    let listeners = Listener::ALL
        .iter()
        .map(|l| format!("{}://127.0.0.1:{}", l.name(), node.ports[l]))
        .chain([format!("CONTROLLER://127.0.0.1:{}", node.controller_port)])
        .collect::<Vec<_>>()
        .join(",");
    let replication = n.min(3);
    let min_isr = if n >= 3 { 2 } else { 1 };
    let mut p = format!(
        "process.roles=broker,controller\n\
         node.id={id}\n\
         controller.quorum.voters={voters}\n\
         controller.listener.names=CONTROLLER\n\
         listeners={listeners}\n\
         advertised.listeners={listeners}\n\
         inter.broker.listener.name=PLAINTEXT\n\
         listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,\
         SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,MTLS:SSL\n\
         listener.name.mtls.ssl.client.auth=required\n\
         log.dirs={data}\n\
         num.partitions=1\n\
         default.replication.factor={replication}\n\
         min.insync.replicas={min_isr}\n\
         offsets.topic.num.partitions=5\n\
         offsets.topic.replication.factor={replication}\n\
         transaction.state.log.num.partitions=5\n\
         transaction.state.log.replication.factor={replication}\n\
         transaction.state.log.min.isr={min_isr}\n\
         share.coordinator.state.topic.replication.factor={replication}\n\
         share.coordinator.state.topic.min.isr={min_isr}\n\
         group.initial.rebalance.delay.ms=0\n\
         log.cleaner.dedupe.buffer.size=16777216\n\
         num.network.threads=2\n\
         num.io.threads=4\n\
         # A killed broker is fenced, and its partitions get new leaders, within seconds.\n\
         broker.session.timeout.ms=4000\n\
         broker.heartbeat.interval.ms=500\n\
         # A restarted broker gets its preferred leaderships back within seconds.\n\
         leader.imbalance.check.interval.seconds=5\n\
         sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512\n\
         ssl.keystore.type=PEM\n\
         ssl.keystore.certificate.chain={cert}\n\
         ssl.keystore.key={key}\n\
         ssl.truststore.type=PEM\n\
         ssl.truststore.certificates={ca}\n",
        id = node.id,
        data = dir.join(format!("data{}", node.id)).display(),
        cert = pem_property(&tls.server_cert),
        key = pem_property(&tls.server_key),
        ca = pem_property(&tls.ca_cert),
    );
    for listener in ["sasl_plaintext", "sasl_ssl"] {
        p.push_str(&format!(
            "listener.name.{listener}.plain.sasl.jaas.config=\
             org.apache.kafka.common.security.plain.PlainLoginModule required \
             user_{user}=\"{password}\";\n"
        ));
        for mechanism in ["scram-sha-256", "scram-sha-512"] {
            p.push_str(&format!(
                "listener.name.{listener}.{mechanism}.sasl.jaas.config=\
                 org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
            ));
        }
    }
    p
}

/// A PEM file's content as a one-line properties value (Kafka's PEM stores take the PEM text
/// itself, with newlines escaped).
fn pem_property(path: &Path) -> String {
    fs::read_to_string(path)
        .expect("read PEM file")
        .trim()
        .replace('\n', "\\n")
}

/// `StorageTool format` on every node: one cluster id, static voters, and the SCRAM user.
fn format_storage(nodes: &[Node], dir: &Path) {
    let cluster_id = run_java(&mut {
        let mut c = java_command(None);
        c.args(["kafka.tools.StorageTool", "random-uuid"]);
        c
    })
    .trim()
    .to_string();
    let (user, password) = SASL_USER;
    for node in nodes {
        let mut cmd = java_command(None);
        cmd.args(["kafka.tools.StorageTool", "format", "-t", &cluster_id, "-c"])
            .arg(&node.config);
        for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
            cmd.args([
                "--add-scram",
                &format!("{mechanism}=[name={user},password={password}]"),
            ]);
        }
        run_java(&mut cmd);
    }
    fs::write(dir.join("cluster-id"), &cluster_id).expect("write cluster id");
}

fn run_java(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA and a server certificate for 127.0.0.1 / localhost, valid for a day.
fn make_tls_files(dir: &Path) -> TlsFiles {
    let tls = TlsFiles {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
    };
    let csr = dir.join("server.csr");
    let ext = dir.join("server.ext");
    fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("write openssl extensions");
    let steps: [Vec<&std::ffi::OsStr>; 3] = [
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=kkp-test-ca",
            "-keyout",
        ]
        .iter()
        .map(|s| s.as_ref())
        .chain([
            tls.ca_key.as_os_str(),
            "-out".as_ref(),
            tls.ca_cert.as_os_str(),
        ])
        .collect(),
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ]
        .iter()
        .map(|s| s.as_ref())
        .chain([tls.server_key.as_os_str(), "-out".as_ref(), csr.as_os_str()])
        .collect(),
        ["x509", "-req", "-days", "1", "-set_serial", "2", "-in"]
            .iter()
            .map(|s| s.as_ref())
            .chain([
                csr.as_os_str(),
                "-CA".as_ref(),
                tls.ca_cert.as_os_str(),
                "-CAkey".as_ref(),
                tls.ca_key.as_os_str(),
                "-extfile".as_ref(),
                ext.as_os_str(),
                "-out".as_ref(),
                tls.server_cert.as_os_str(),
            ])
            .collect(),
    ];
    for args in steps {
        openssl(&args);
    }
    tls
}

/// Runs openssl with `args` and returns its stdout; fails the test with its stderr.
pub fn openssl<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The brokers (node id, host, port) that a Metadata request through `bootstrap` names, as a
/// client sees them: through the proxy, its rewritten addresses.
pub fn brokers_seen_through(bootstrap: &str) -> Vec<(i32, String, i32)> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "3")
        .create()
        .expect("rdkafka metadata client");
    let md = client
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("metadata through {bootstrap}: {e}"));
    let mut brokers: Vec<_> = md
        .brokers()
        .iter()
        .map(|b| (b.id(), b.host().to_owned(), b.port()))
        .collect();
    brokers.sort();
    brokers
}

/// Removes the data directories of test processes that no longer run.
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("kkp-kafka-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Spawns `cmd` so that it is killed when this test process ends, however it ends.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, and libtest runs each
/// test on a thread of its own. So every such child is forked by one thread that never exits.
pub fn spawn_for_process_lifetime(mut cmd: Command) -> Child {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("process-lifetime-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    let program = format!("{:?}", cmd.get_program());
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .expect("spawner thread alive");
    reply_rx
        .recv()
        .expect("spawner reply")
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"))
}
