//! Crash safety of the mirror (issue 14): with the DEFAULT config (`mirror_buffer.durability =
//! "wal"`), a SIGKILL at any moment loses nothing Kafka acknowledged to a client. Each test
//! produces with raw Produce requests, one connection per key range, and keeps the records
//! whose acknowledgement (error 0) reached the client: those are what must end up in Kinesis
//! exactly once, in per-key order. Records of a request in flight at the kill may or may not
//! be mirrored (Kafka may hold them without the client knowing), but never twice.
//!
//! Kafka is the single-node cluster shared by every test of this binary, so each test uses a
//! topic and stream of its own; each has its own kinesis-local, fault layer and proxy.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, ProduceResponse, ResponseHeader};
use kafka_protocol::protocol::Decodable;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::faults::{FaultLayer, FaultPlan, FaultyKinesis};
use support::kinesis::{KinesisLocal, StoredRecord};
use support::metrics::{scrape, value, wait_for_sent};
use support::raw_produce::RawProduce;
use support::{wait_until_async, KafkaCluster, Proxy};

const PARTITIONS: i32 = 4;
const SHARDS: i32 = 4;
/// Keys per producing connection: each connection owns its keys, so a key's Kafka order is
/// the order its connection sent them in.
const KEYS_PER_CONNECTION: u64 = 40;
/// Orders of one connection start at `first_order + connection * ORDER_STRIDE`.
const ORDER_STRIDE: u64 = 10_000_000;
/// How long a restarted proxy may take to deliver what it replays.
const DELIVERY_LIMIT: Duration = Duration::from_secs(180);
const WAL_TRUNCATED: &str = "write-ahead log tail truncated";

// ---------------------------------------------------------------------------------------------
// The rig: kinesis-local behind a fault layer, and the proxy mirroring one topic to one stream.

struct Rig {
    /// Mirrored to `stream`.
    topic: String,
    stream: String,
    behind: FaultyKinesis,
    proxy: Proxy,
}

/// `[kinesis]` pointing at `endpoint` and one route `topic` → `stream`; `tables` (whole TOML
/// tables, such as `[spool]`) follow. Nothing else: the proxy's defaults are what is tested.
fn mirror_config(endpoint: &str, topic: &str, stream: &str, tables: &str) -> String {
    format!(
        "[kinesis]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\n\
         [[mirror]]\ntopic = \"{topic}\"\nstream = \"{stream}\"\npercent = 100.0\n\n{tables}\n"
    )
}

impl Rig {
    async fn start(stream: &str) -> Rig {
        Rig::start_with(stream, "").await
    }

    /// A rig whose proxy config has `tables` added (a setting under test).
    async fn start_with(stream: &str, tables: &str) -> Rig {
        let cluster = KafkaCluster::shared();
        let topic = format!("wal-{stream}");
        let behind = FaultyKinesis::start(stream, SHARDS).await;
        let config = mirror_config(&behind.faults.endpoint, &topic, stream, tables);
        let proxy = Proxy::start_with(cluster, &config);
        cluster.create_topic(&topic, PARTITIONS);
        Rig {
            topic,
            stream: stream.to_owned(),
            behind,
            proxy,
        }
    }

    fn load(&self, plan: LoadPlan) -> Load {
        Load::start(self.proxy.bootstrap(), self.topic.clone(), plan)
    }

    fn kinesis_down(&self) {
        self.behind.faults.set(FaultPlan {
            down: true,
            ..FaultPlan::default()
        });
    }

    /// SIGKILL, as an OOM kill or a node failure ends the process.
    fn kill_9(&mut self) {
        self.proxy.daemon().signal("-KILL");
        self.proxy.daemon().wait_exit(Duration::from_secs(10));
    }

    /// The newest segment of the write-ahead log (`<spool.dir>/wal/<20 digits>.log`).
    fn newest_wal_segment(&self) -> PathBuf {
        let dir = self.proxy.config_path.parent().unwrap().join("spool/wal");
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("no write-ahead log at {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .max()
            .unwrap_or_else(|| panic!("no segment in {}", dir.display()))
    }

    /// Restarts the killed proxy on the same spool with Kinesis healthy and waits until every
    /// record in `acked` is in the stream; answers what the whole stream holds (the caller
    /// reports it, then asserts it complete).
    async fn recover(&mut self, acked: &[Sent]) -> Delivery {
        self.behind.faults.set(FaultPlan::default());
        self.proxy.restart();
        self.settled(acked).await
    }

    /// Waits until every record of `acked` is in the stream and the proxy holds nothing more
    /// to send, then checks the stream.
    async fn wait_mirrored(&self, acked: &[Sent]) -> Delivery {
        let delivery = self.settled(acked).await;
        delivery.assert_complete();
        delivery
    }

    /// Waits until every record of `acked` is in the stream and the proxy holds nothing more
    /// to send; answers what the stream holds.
    async fn settled(&self, acked: &[Sent]) -> Delivery {
        let wanted: BTreeSet<u64> = acked.iter().map(|s| s.order).collect();
        wait_until_async(
            "every acknowledged record in Kinesis (shown: how many are missing)",
            DELIVERY_LIMIT,
            async || {
                let stored = self.behind.kinesis.read_all(&self.stream).await;
                let orders: BTreeSet<u64> = stored.iter().map(|r| order_of(r).0).collect();
                wanted.difference(&orders).count()
            },
            |missing| *missing == 0,
        )
        .await;
        // A record replayed twice would arrive after the originals: check once the proxy holds
        // nothing more, in memory or in its log.
        support::metrics::wait_for(
            self.proxy.admin_port,
            "the mirror to be idle",
            Duration::from_secs(60),
            |m| {
                value(m, "kafka_kinesis_proxy_mirror_buffer_bytes", &[]) == 0.0
                    && value(m, "kafka_kinesis_proxy_wal_replay_remaining_bytes", &[]) == 0.0
            },
        )
        .await;
        Delivery::of(&self.behind.kinesis.read_all(&self.stream).await, acked)
    }
}

// ---------------------------------------------------------------------------------------------
// The load: raw Produce requests, one connection per key range, acknowledgements kept.

/// A record the load sent: its order (unique; rising along each key) and its key.
#[derive(Debug, Clone)]
struct Sent {
    order: u64,
    key: String,
}

#[derive(Clone)]
struct LoadPlan {
    /// Orders of this load start here (distinct per load, rising across loads of one test).
    first_order: u64,
    connections: u64,
    /// Records over all connections; the load stops there (or when stopped).
    limit: u64,
    /// Records per second over all connections; None: as fast as Kafka answers.
    rate: Option<f64>,
    records_per_request: u64,
    /// Bytes of padding in each record's value.
    padding: usize,
}

impl Default for LoadPlan {
    fn default() -> Self {
        LoadPlan {
            first_order: 0,
            connections: PARTITIONS as u64,
            limit: u64::MAX,
            rate: Some(500.0),
            records_per_request: 10,
            padding: 64,
        }
    }
}

#[derive(Default)]
struct Tally {
    acked: Mutex<Vec<Sent>>,
    acked_count: AtomicUsize,
    /// Records answered with a Kafka error.
    refused: AtomicUsize,
    /// When each connection's request in flight was sent.
    pending_since: Mutex<BTreeMap<u64, Instant>>,
}

struct Load {
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(bootstrap: String, topic: String, plan: LoadPlan) -> Load {
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..plan.connections)
            .map(|connection| {
                let (bootstrap, topic, plan) = (bootstrap.clone(), topic.clone(), plan.clone());
                let (tally, stop) = (tally.clone(), stop.clone());
                tokio::spawn(async move {
                    produce_on_one_connection(&bootstrap, &topic, &plan, connection, &tally, &stop)
                        .await
                })
            })
            .collect();
        Load { tally, stop, tasks }
    }

    fn acked_count(&self) -> usize {
        self.tally.acked_count.load(Ordering::Relaxed)
    }

    async fn wait_acked(&self, count: usize, limit: Duration) {
        wait_until_async(
            "acknowledgements",
            limit,
            async || self.acked_count(),
            |n| *n >= count,
        )
        .await;
    }

    /// How long the oldest request in flight has waited for its answer.
    fn longest_pending(&self) -> Duration {
        let pending = self.tally.pending_since.lock().unwrap();
        pending
            .values()
            .map(|since| since.elapsed())
            .max()
            .unwrap_or_default()
    }

    /// Stops sending and waits for every connection to end (a killed proxy ends them all);
    /// returns the records Kafka acknowledged.
    async fn stop(self) -> Vec<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        self.finish().await
    }

    /// Waits for the load to reach its limit (or its connections to end).
    async fn finish(self) -> Vec<Sent> {
        for task in self.tasks {
            task.await.expect("a load connection panicked");
        }
        assert_eq!(
            self.tally.refused.load(Ordering::Relaxed),
            0,
            "Kafka refused records"
        );
        std::mem::take(&mut *self.tally.acked.lock().unwrap())
    }
}

async fn produce_on_one_connection(
    bootstrap: &str,
    topic: &str,
    plan: &LoadPlan,
    connection: u64,
    tally: &Tally,
    stop: &AtomicBool,
) {
    let Ok(mut conn) = TcpStream::connect(bootstrap).await else {
        return;
    };
    let share = plan.limit.div_ceil(plan.connections);
    let pause = plan.rate.map(|rate| {
        Duration::from_secs_f64(plan.records_per_request as f64 * plan.connections as f64 / rate)
    });
    let started = tokio::time::Instant::now();
    let mut sent = 0;
    let mut requests = 0;
    while sent < share && !stop.load(Ordering::Relaxed) {
        if let Some(pause) = pause {
            tokio::time::sleep_until(started + pause * requests).await;
        }
        requests += 1;
        let batch: Vec<Sent> = (sent..share.min(sent + plan.records_per_request))
            .map(|i| Sent {
                order: plan.first_order + connection * ORDER_STRIDE + i,
                key: format!("customer-{connection}-{:03}", i % KEYS_PER_CONNECTION),
            })
            .collect();
        sent += batch.len() as u64;
        let records = batch
            .iter()
            .map(|s| {
                let value =
                    json!({"order": s.order, "customer": s.key, "pad": "x".repeat(plan.padding)});
                (s.key.clone(), value.to_string().into_bytes())
            })
            .collect();
        let frame = RawProduce {
            partition: (connection % PARTITIONS as u64) as i32,
            ..RawProduce::new(topic, records)
        }
        .frame();
        tally
            .pending_since
            .lock()
            .unwrap()
            .insert(connection, Instant::now());
        let answer = exchange(&mut conn, &frame).await;
        tally.pending_since.lock().unwrap().remove(&connection);
        match answer {
            Ok(0) => {
                tally.acked_count.fetch_add(batch.len(), Ordering::Relaxed);
                tally.acked.lock().unwrap().extend(batch);
            }
            Ok(_) => {
                tally.refused.fetch_add(batch.len(), Ordering::Relaxed);
            }
            // The proxy was killed: what this request carried was never acknowledged.
            Err(_) => return,
        }
    }
}

/// Sends one Produce frame and answers its partition's error code.
async fn exchange(conn: &mut TcpStream, frame: &[u8]) -> std::io::Result<i16> {
    conn.write_all(frame).await?;
    let size = conn.read_i32().await?;
    let mut body = vec![0u8; size as usize];
    conn.read_exact(&mut body).await?;
    let mut body = Bytes::from(body);
    let version = RawProduce::VERSION;
    ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(version))
        .expect("a Produce response header");
    let response = ProduceResponse::decode(&mut body, version).expect("a Produce response");
    Ok(response.responses[0].partition_responses[0].error_code)
}

/// How long one Produce of one small record to `topic` takes through `bootstrap`, answered
/// without error.
async fn timed_produce(bootstrap: &str, topic: &str, tag: usize) -> Duration {
    let frame = RawProduce::new(topic, vec![(format!("timed-{tag}"), b"timed".to_vec())]).frame();
    let mut conn = TcpStream::connect(bootstrap).await.unwrap();
    let started = Instant::now();
    let code = exchange(&mut conn, &frame).await.expect("a Produce answer");
    assert_eq!(code, 0, "Kafka refused the timed Produce");
    started.elapsed()
}

// ---------------------------------------------------------------------------------------------
// Checking the stream

/// A stored record's (order, key), from the value the load wrote.
fn order_of(r: &StoredRecord) -> (u64, String) {
    let v: Value = serde_json::from_slice(&r.data).expect("a record of the load");
    let order = v["order"].as_u64().expect("an order");
    let key = v["customer"].as_str().expect("a key").to_owned();
    assert_eq!(key, r.partition_key, "the partition key is the Kafka key");
    (order, key)
}

/// What the stream holds, against what Kafka acknowledged.
struct Delivery {
    acked: usize,
    stored: usize,
    /// Acknowledged records the stream lacks (the first few).
    missing: Vec<u64>,
    missing_count: usize,
    duplicates: usize,
    /// Records stored after a later record of their key, in the same shard.
    out_of_order: usize,
    /// Records stored that the client never saw acknowledged (in flight at a kill).
    unacknowledged: usize,
}

impl Delivery {
    fn of(stored: &[StoredRecord], acked: &[Sent]) -> Delivery {
        let acked_orders: BTreeSet<u64> = acked.iter().map(|s| s.order).collect();
        let mut seen = BTreeSet::new();
        let mut last: BTreeMap<(String, String), u64> = BTreeMap::new();
        let (mut duplicates, mut out_of_order) = (0, 0);
        for r in stored {
            let (order, key) = order_of(r);
            if !seen.insert(order) {
                // A second copy is counted as such; the order check is of the first copies.
                duplicates += 1;
                continue;
            }
            if let Some(previous) = last.insert((r.shard_id.clone(), key), order) {
                if previous > order {
                    out_of_order += 1;
                }
            }
        }
        let missing: Vec<u64> = acked_orders.difference(&seen).copied().collect();
        Delivery {
            acked: acked.len(),
            stored: stored.len(),
            missing_count: missing.len(),
            missing: missing.into_iter().take(10).collect(),
            duplicates,
            out_of_order,
            unacknowledged: seen.difference(&acked_orders).count(),
        }
    }

    fn assert_complete(&self) {
        assert!(
            self.missing_count == 0 && self.duplicates == 0 && self.out_of_order == 0,
            "the stream must hold every acknowledged record once, in key order: {self}"
        );
    }
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acknowledged {}, stored {}, missing {} (first {:?}), duplicates {}, out of key order {}, stored without acknowledgement (in flight at a kill) {}",
            self.acked,
            self.stored,
            self.missing_count,
            self.missing,
            self.duplicates,
            self.out_of_order,
            self.unacknowledged
        )
    }
}

// ---------------------------------------------------------------------------------------------
// kill -9

/// The repro: Kinesis cut off, 2,000 records produced and acknowledged by Kafka, the
/// proxy SIGKILLed 5 s later, Kinesis back, the proxy restarted on the same spool. Before the
/// write-ahead log none of the 2,000 reached Kinesis: they waited in memory for
/// `record_ttl_secs` (600 s by default).
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_five_seconds_into_an_outage_loses_nothing_kafka_acknowledged() {
    let mut rig = Rig::start("crash-outage").await;
    rig.kinesis_down();
    let acked = rig
        .load(LoadPlan {
            limit: 2000,
            rate: Some(1000.0),
            ..LoadPlan::default()
        })
        .finish()
        .await;
    assert_eq!(acked.len(), 2000);
    // The scenario: the kill comes 5 s into the outage (a fixed moment, as there).
    tokio::time::sleep(Duration::from_secs(5)).await;
    rig.kill_9();
    let delivery = rig.recover(&acked).await;
    let log = rig.proxy.daemon().log_text();
    assert!(log.contains("write-ahead log replayed"), "no replay logged");
    println!("kill -9 in an outage: {delivery}");
    delivery.assert_complete();
}

/// SIGKILL while 20% of PutRecords entries are throttled and the load goes on.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_throttling_loses_nothing_kafka_acknowledged() {
    let mut rig = Rig::start("crash-throttled").await;
    rig.behind.faults.set(FaultPlan {
        throttle_entries: 0.2,
        ..FaultPlan::default()
    });
    let load = rig.load(LoadPlan {
        rate: Some(800.0),
        ..LoadPlan::default()
    });
    load.wait_acked(3000, Duration::from_secs(60)).await;
    let throttled_before_kill = FaultLayer::count(&rig.behind.faults.counters.entries_throttled);
    rig.kill_9();
    let acked = load.stop().await;
    assert!(throttled_before_kill > 0, "throttling must be under way");
    let delivery = rig.recover(&acked).await;
    println!(
        "kill -9 during 20% throttling ({throttled_before_kill} entries throttled before it): {delivery}"
    );
    delivery.assert_complete();
}

/// SIGKILL under normal load at five moments (after 50 to 2,500 acknowledgements of a phase),
/// restarting on the same spool each time: after each restart every record acknowledged so
/// far is in the stream once, each key in order across all the restarts. Each moment's counts
/// are printed (cumulative over the stream); the stream is judged after the last.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_load_at_five_moments_loses_nothing_kafka_acknowledged() {
    let mut rig = Rig::start("crash-load").await;
    let mut acked = Vec::new();
    let mut delivery = None;
    for (phase, kill_after) in [50usize, 400, 900, 1600, 2500].into_iter().enumerate() {
        let load = rig.load(LoadPlan {
            first_order: phase as u64 * PARTITIONS as u64 * ORDER_STRIDE,
            ..LoadPlan::default()
        });
        load.wait_acked(kill_after, Duration::from_secs(60)).await;
        rig.kill_9();
        let phase_acked = load.stop().await;
        let phase_count = phase_acked.len();
        acked.extend(phase_acked);
        let now = rig.recover(&acked).await;
        println!(
            "kill -9 under load, moment {} (after {phase_count} acknowledgements): {now}",
            phase + 1
        );
        delivery = Some(now);
    }
    delivery.expect("five moments").assert_complete();
}

/// Frames of the log are `[u32 len][u32 crc32c][payload]`: a kill in the middle of an append
/// leaves half a frame, a disk that lost a write leaves a frame whose checksum fails. Either
/// tail is cut at the last good frame, reported, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_torn_or_corrupt_wal_tail_is_truncated_and_everything_acknowledged_delivered() {
    let mut rig = Rig::start("crash-torn").await;
    let half_frame: Vec<u8> = [&64u32.to_be_bytes()[..], &[0x5a; 4], &[7; 10]].concat();
    let bad_crc: Vec<u8> = [
        &16u32.to_be_bytes()[..],
        &0xdead_beefu32.to_be_bytes(),
        &[9; 16],
    ]
    .concat();
    let mut acked = Vec::new();
    for (cycle, (what, tail)) in [("half a frame", half_frame), ("a bad checksum", bad_crc)]
        .into_iter()
        .enumerate()
    {
        rig.kinesis_down();
        let cycle_acked = rig
            .load(LoadPlan {
                first_order: cycle as u64 * PARTITIONS as u64 * ORDER_STRIDE,
                limit: 800,
                rate: Some(1000.0),
                ..LoadPlan::default()
            })
            .finish()
            .await;
        acked.extend(cycle_acked);
        rig.kill_9();
        let segment = rig.newest_wal_segment();
        append(&segment, &tail);
        let delivery = rig.recover(&acked).await;
        let reports = rig.proxy.daemon().log_text().matches(WAL_TRUNCATED).count();
        assert!(
            reports > cycle,
            "the cut of {what} in {} must be reported ({WAL_TRUNCATED:?})",
            segment.display()
        );
        println!("torn tail ({what}): {delivery}");
        delivery.assert_complete();
    }
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
}

// ---------------------------------------------------------------------------------------------
// CPU overload

/// A process that spins on CPU 0 until dropped.
struct BusyLoop(Child);

impl Drop for BusyLoop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn taskset_installed() -> bool {
    Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The proxy starved of CPU at peak load: it and a busy loop share CPU 0 (`taskset`), and
/// 10,000 records of half a KiB arrive as fast as Kafka takes them. Once the load ends every record
/// reaches Kinesis and no Produce exchange was shed (`mirror_dropped_requests_total` 0):
/// what the decoder cannot keep up with waits in the log.
#[tokio::test(flavor = "multi_thread")]
async fn cpu_starved_at_peak_load_sheds_nothing() {
    if !taskset_installed() {
        eprintln!("SKIPPED cpu_starved_at_peak_load_sheds_nothing: taskset (util-linux) is not installed; run scripts/install-test-deps.sh");
        return;
    }
    let rig = Rig::start("crash-cpu").await;
    let pinned = Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &rig.proxy.pid().to_string()])
        .output()
        .unwrap();
    assert!(pinned.status.success(), "taskset: {pinned:?}");
    let busy = BusyLoop(
        Command::new("taskset")
            .args(["-c", "0", "sh", "-c", "while :; do :; done"])
            .spawn()
            .unwrap(),
    );
    // Few enough for kinesis-local to take within the test's limit (it stores a few hundred
    // records a second on a loaded CI machine), in requests large enough to keep the decoder
    // behind.
    const RECORDS: u64 = 10_000;
    let started = Instant::now();
    let acked = rig
        .load(LoadPlan {
            connections: 8,
            limit: RECORDS,
            rate: None,
            records_per_request: 250,
            padding: 512,
            ..LoadPlan::default()
        })
        .finish()
        .await;
    let produced_in = started.elapsed();
    drop(busy);
    assert_eq!(acked.len() as u64, RECORDS);
    let m = wait_for_sent(rig.proxy.admin_port, acked.len(), DELIVERY_LIMIT).await;
    let dropped = value(&m, "kafka_kinesis_proxy_mirror_dropped_requests_total", &[]);
    let delivery = rig.wait_mirrored(&acked).await;
    println!(
        "CPU starved: {RECORDS} records of 0.5 KiB acknowledged in {produced_in:?}, shed exchanges {dropped}: {delivery}"
    );
    assert_eq!(
        dropped, 0.0,
        "Produce exchanges were shed under CPU overload"
    );
}

// ---------------------------------------------------------------------------------------------
// Settings: sync mode and a full log

/// A setting test (`mirror_buffer.durability = "sync"`), with the test hook
/// `KKP_TEST_WAL_FSYNC_DELAY_MS=300` slowing every fsync of the log: in sync mode a Produce's
/// answer waits for the fsync covering its exchange, in wal mode (the default) it does not.
/// Both proxies run side by side and are compared as a ratio of medians.
#[tokio::test(flavor = "multi_thread")]
async fn sync_mode_answers_after_the_fsync_and_wal_mode_does_not_wait_for_it() {
    const DELAY: Duration = Duration::from_millis(300);
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    let delay = DELAY.as_millis().to_string();
    let mut proxies = Vec::new();
    for durability in ["sync", "wal"] {
        // A stream named `wal` is refused: its spool directory would be the log's.
        let stream = format!("durability-{durability}");
        let topic = format!("wal-{stream}");
        kinesis.create_stream(&stream, 1).await;
        let tables = format!("[mirror_buffer]\ndurability = \"{durability}\"\n");
        let config = mirror_config(&kinesis.endpoint, &topic, &stream, &tables);
        let proxy = Proxy::start_with_env(
            cluster,
            &config,
            &[("KKP_TEST_WAL_FSYNC_DELAY_MS", delay.as_str())],
        );
        cluster.create_topic(&topic, 1);
        proxies.push((durability, topic, proxy));
    }
    let mut medians = BTreeMap::new();
    for (durability, topic, proxy) in &proxies {
        let mut times = Vec::new();
        for i in 0..7 {
            times.push(timed_produce(&proxy.bootstrap(), topic, i).await);
        }
        times.sort();
        println!("durability {durability}: Produce answered in {times:?}");
        medians.insert(*durability, times[times.len() / 2]);
    }
    let (sync, wal) = (medians["sync"], medians["wal"]);
    let ratio = sync.as_secs_f64() / wal.as_secs_f64();
    println!(
        "fsync delayed {DELAY:?}: median Produce sync {sync:?}, wal {wal:?}, ratio {ratio:.1}"
    );
    assert!(sync >= DELAY, "sync answered before its fsync: {sync:?}");
    assert!(
        ratio >= 2.0,
        "wal mode must not wait for the fsync: sync {sync:?} vs wal {wal:?}"
    );
}

/// A setting test (`spool.max_bytes` = 1 MiB, the whole log's limit), Kinesis down: once the
/// log is full, Produce answers for the routed topic wait (the producer slows down, no record
/// is refused or lost) while a producer to an unrouted topic goes on; when Kinesis is back
/// the routed producer finishes and all its records arrive.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_log_holds_routed_producers_and_lets_others_through() {
    const MAX_BYTES: u64 = 1024 * 1024;
    let spool = tempfile::tempdir().unwrap();
    let tables = format!(
        "[spool]\ndir = {:?}\nmax_bytes = {MAX_BYTES}\n",
        spool.path().display().to_string()
    );
    let rig = Rig::start_with("wal-full", &tables).await;
    let unrouted = "wal-full-unrouted";
    KafkaCluster::shared().create_topic(unrouted, 1);
    rig.kinesis_down();
    // 3 MB of records against a 1 MiB log.
    const RECORDS: u64 = 3000;
    let routed = rig.load(LoadPlan {
        connections: 1,
        limit: RECORDS,
        rate: None,
        records_per_request: 50,
        padding: 1000,
        ..LoadPlan::default()
    });
    let stalled_at = wait_until_async(
        "the routed producer to wait for room in the log",
        Duration::from_secs(60),
        async || (routed.longest_pending(), routed.acked_count()),
        |(pending, _)| *pending >= Duration::from_secs(3),
    )
    .await
    .1;
    let mut unrouted_times = Vec::new();
    for i in 0..10 {
        unrouted_times.push(timed_produce(&rig.proxy.bootstrap(), unrouted, i).await);
    }
    let held_for = routed.longest_pending();
    assert_eq!(
        routed.acked_count(),
        stalled_at,
        "the routed producer went on while the log was full"
    );
    assert!(
        held_for >= Duration::from_secs(3),
        "the routed Produce is still held"
    );
    let slowest_unrouted = unrouted_times.iter().max().copied().unwrap();
    assert!(
        slowest_unrouted < held_for,
        "the unrouted producer waited too: {unrouted_times:?}"
    );
    rig.behind.faults.set(FaultPlan::default());
    let acked = routed.finish().await;
    assert_eq!(acked.len() as u64, RECORDS, "records were refused");
    let delivery = rig.wait_mirrored(&acked).await;
    let m = scrape(rig.proxy.admin_port);
    println!(
        "log full ({MAX_BYTES} bytes): routed producer held after {stalled_at} records for {held_for:?}, 10 unrouted Produce answered in at most {slowest_unrouted:?}, wal_bytes now {}: {delivery}",
        value(&m, "kafka_kinesis_proxy_wal_bytes", &[])
    );
}
