//! End-to-end benchmark: the same Kafka produce load through six paths, in one run.
//!
//! `cargo bench --bench e2e` starts a tansu broker (memory storage), the kafka-kinesis-proxy
//! release binary four times (mirror off; 100% mirroring into a local Kinesis mock that is part
//! of this harness, once per durability mode), and `tansu proxy` as the peer proxy, then drives librdkafka (the `rdkafka`
//! crate) through each path:
//!
//! * `direct`: client → broker
//! * `kkp-off`: client → kafka-kinesis-proxy (no `[[mirror]]`) → broker
//! * `kkp-mirror`: client → kafka-kinesis-proxy (100% of `bench` mirrored) → broker, and
//!   → PutRecords → Kinesis mock, with the default `mirror_buffer.durability` ("wal")
//! * `kkp-mirror-memory`, `kkp-mirror-sync`: the same with durability "memory" and "sync";
//!   a second table compares the three modes as ratios to "memory" (`durability.rs`)
//! * `tansu-proxy`: client → `tansu proxy` → broker
//!
//! Paths alternate within every round, and each round starts at the next path, so drift
//! (other load on the machine) hits all of them. The topic is deleted and created afresh
//! before every measurement, so the broker's memory store starts empty each time. Each round
//! and path runs
//!
//! * a peak run: a fixed count of 1 KiB records (acks=all, 6 partitions, keyed, linger.ms=5,
//!   no compression) as fast as the client can send: msg/s, MB/s (1 MB = 10^6 payload bytes),
//!   the proxy's CPU seconds per MB (utime+stime from /proc/PID/stat) and peak RSS (VmHWM from
//!   /proc/PID/status, reset with clear_refs before each run);
//! * a latency run at a fixed rate (default 5,000 msg/s, linger.ms=5, librdkafka's default):
//!   p50/p99/p99.9 from each record's scheduled send time to its delivery report, so a stall is
//!   not hidden by the sender slowing down (no coordinated omission).
//!
//! For `kkp-mirror` a run ends only when the Kinesis mock has received every record, so its
//! CPU includes the mirroring; `mirrored msg/s` is records over the time from the first send
//! to the last record in Kinesis. When kinesalite (npm, installed by
//! scripts/install-test-deps.sh) is present, one extra peak run (KKP_E2E_KINESALITE_MESSAGES,
//! 20000) mirrors into it for an honest end-to-end number; it is far slower than the harness's
//! mock.
//!
//! CPU pinning (on by default with 2+ CPUs, `KKP_E2E_PIN=0` turns it off): the broker, this
//! client and the Kinesis endpoint share CPU 0; the proxy under test has CPU 1 to itself, as on
//! its own host. Ours and the peer proxy get the same single core.
//!
//! Knobs (environment): KKP_E2E_ROUNDS (5), KKP_E2E_MESSAGES (peak run count, 300000),
//! KKP_E2E_RATE (5000 msg/s), KKP_E2E_LATENCY_SECS (5), KKP_E2E_PIN (1),
//! KKP_E2E_KINESALITE (1 when installed), KKP_E2E_KINESALITE_MESSAGES (20000),
//! KKP_E2E_PATHS (comma-separated path ids; all by default), KKP_E2E_LATENCY_LINGER_MS (5),
//! KKP_E2E_SHARDS (512: shards of the mock stream; the proxy holds each shard to Kinesis'
//! 1,000 records/s and 1 MiB/s, so a narrow stream caps the mirror by design). Writes `<target>/e2e-report.json` and
//! `<target>/e2e-report.md` and prints the Markdown table.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it prints one line and exits.

#[path = "e2e/durability.rs"]
mod durability;
#[path = "e2e/kinesis_mock.rs"]
mod kinesis_mock;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use serde_json::{json, Value};

const TOPIC: &str = "bench";
const PARTITIONS: i32 = 6;
const VALUE_BYTES: usize = 1024;
const STREAM: &str = "bench-stream";
/// Shards of the harness's Kinesis mock stream (KKP_E2E_SHARDS). The proxy holds each shard
/// to Kinesis' 1,000 records/s and 1 MiB/s, so the stream must be wide enough for the load
/// for the mirror to run at the proxy's own speed: 512 shards take 512 MiB/s.
const MOCK_SHARDS: u32 = 512;
/// Shards of the kinesalite stream: the proxy holds each shard to 1,000 records/s, so enough
/// that kinesalite, not the proxy's rate limit, sets the pace.
const KINESALITE_SHARDS: u32 = 32;
/// tansu's node id: our proxy serves it on broker_port_base + 111.
const TANSU_NODE_ID: u16 = 111;
const WARMUP_MESSAGES: usize = 2_000;
/// How long a mirror may take to deliver a run's records before the run is reported as not
/// drained...
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);
/// ...or may go without delivering any.
const DRAIN_STALL: Duration = Duration::from_secs(5);

fn main() {
    if std::env::var("KKP_E2E_ROLE").as_deref() == Ok("kinesis-mock") {
        let port = env_num("KKP_E2E_MOCK_PORT", 0) as u16;
        kinesis_mock::run(port, env_num("KKP_E2E_MOCK_SHARDS", 4) as u32);
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        println!("e2e: skipped outside `cargo bench` (run `cargo bench --bench e2e`)");
        return;
    }
    let settings = Settings::from_env();
    let report = Bench::start(settings).run();
    let target = target_dir();
    let json_path = target.join("e2e-report.json");
    let md_path = target.join("e2e-report.md");
    fs::write(
        &json_path,
        serde_json::to_string_pretty(&report.json).expect("json"),
    )
    .expect("write e2e-report.json");
    fs::write(&md_path, &report.markdown).expect("write e2e-report.md");
    println!("\n{}", report.markdown);
    println!("wrote {} and {}", json_path.display(), md_path.display());
}

// ---------------------------------------------------------------------------------------------
// Settings and environment

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        _ => default,
    }
}

#[derive(Clone)]
struct Settings {
    rounds: usize,
    messages: usize,
    rate: u64,
    latency_secs: f64,
    pin: bool,
    kinesalite: bool,
    kinesalite_messages: usize,
    shards: u32,
    /// Path ids to run (all when empty).
    only: Vec<String>,
}

impl Settings {
    fn from_env() -> Settings {
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        Settings {
            rounds: env_num("KKP_E2E_ROUNDS", 5).max(1) as usize,
            messages: env_num("KKP_E2E_MESSAGES", 300_000).max(1_000) as usize,
            rate: env_num("KKP_E2E_RATE", 5_000).max(1),
            latency_secs: env_num("KKP_E2E_LATENCY_SECS", 5).max(1) as f64,
            pin: env_num("KKP_E2E_PIN", 1) == 1 && cpus >= 2,
            kinesalite: env_num("KKP_E2E_KINESALITE", 1) == 1 && kinesalite_cli().exists(),
            kinesalite_messages: env_num("KKP_E2E_KINESALITE_MESSAGES", 20_000).max(1_000) as usize,
            shards: env_num("KKP_E2E_SHARDS", MOCK_SHARDS as u64).clamp(1, 10_000) as u32,
            only: std::env::var("KKP_E2E_PATHS")
                .unwrap_or_default()
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
        }
    }
}

/// `$KKP_TOOLS_DIR`, else `$HOME/.cache/kafka-kinesis-proxy` (scripts/install-test-deps.sh).
fn tools_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KKP_TOOLS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/kafka-kinesis-proxy")
}

fn kinesalite_cli() -> PathBuf {
    tools_dir().join("node/node_modules/kinesalite/cli.js")
}

/// The cargo target directory this bench was built in (`<target>/release/deps/e2e-*`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if port > TANSU_NODE_ID + 1024 {
            return port;
        }
    }
}

fn accepts(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A plain HTTP/1.0 GET on loopback; the body, or None.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.")
        .then_some(())
        .filter(|_| head.split_whitespace().nth(1) == Some("200"))?;
    Some(body.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process started by this bench, killed (by its own pid) on drop.
struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &str, log_dir: &Path, mut cmd: Command) -> Daemon {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({cmd:?}): {e}"));
        Daemon {
            name: name.to_owned(),
            child,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_port(&mut self, port: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !accepts(port) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before listening on {port}:\n{}",
                    self.name,
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {port} within {timeout:?}; log {}",
                self.name,
                self.log.display()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program` pinned to `cpus` with taskset when pinning is on.
fn command(pin: bool, cpus: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    if pin {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(cpus).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process (all threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15.
    let get = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS, so each run reports its own peak.
fn reset_peak_rss(pid: u32) {
    let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

// ---------------------------------------------------------------------------------------------
// Load generation (librdkafka)

struct Ctx {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// For paced runs: (scheduled start, ns between sends) and the latencies in ns.
    pace: Option<(Instant, u64)>,
    latencies: Mutex<Vec<u64>>,
}

impl Ctx {
    fn new(pace: Option<(Instant, u64)>, expected: usize) -> Ctx {
        Ctx {
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_error: Mutex::new(None),
            pace,
            latencies: Mutex::new(Vec::with_capacity(if pace.is_some() {
                expected
            } else {
                0
            })),
        }
    }
}

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    /// Index of the record in its run; usize::MAX for warm-up records.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        match result {
            Ok(_) => {
                let now = Instant::now();
                self.delivered.fetch_add(1, Ordering::Relaxed);
                if let (Some((start, every_ns)), true) = (self.pace, index != usize::MAX) {
                    let due = start + Duration::from_nanos(every_ns * index as u64);
                    let ns = now.saturating_duration_since(due).as_nanos() as u64;
                    self.latencies.lock().expect("latencies").push(ns);
                }
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error
                    .lock()
                    .expect("first error")
                    .get_or_insert_with(|| e.to_string());
            }
        }
    }
}

fn producer(bootstrap: &str, linger_ms: u32, ctx: Ctx) -> ThreadedProducer<Ctx> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "kkp-e2e-bench")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("compression.type", "none")
        .set("enable.idempotence", "false")
        .set("socket.nagle.disable", "true")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", "120000")
        .create_with_context(ctx)
        .unwrap_or_else(|e| panic!("create producer for {bootstrap}: {e}"))
}

struct Payload {
    value: Vec<u8>,
}

impl Payload {
    fn new() -> Payload {
        // Printable pseudo-random bytes: no codec is in play, so the content only has to be
        // realistic enough for the mirror (it is carried, not inspected).
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let value = (0..VALUE_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b'!' + (x % 90) as u8
            })
            .collect();
        Payload { value }
    }
}

fn key(i: usize) -> String {
    format!("key-{:08}", i % 100_000)
}

/// Sends one record, waiting while librdkafka's queue is full.
fn send(p: &ThreadedProducer<Ctx>, key: &str, value: &[u8], index: usize) {
    let mut record = BaseRecord::with_opaque_to(TOPIC, index)
        .key(key)
        .payload(value);
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                thread::sleep(Duration::from_micros(200));
            }
            Err((e, _)) => panic!("produce: {e}"),
        }
    }
}

/// Warms a fresh producer up (connections, metadata) and checks the path works.
fn warm_up(p: &ThreadedProducer<Ctx>, payload: &Payload) {
    for i in 0..WARMUP_MESSAGES {
        send(p, &key(i), &payload.value, usize::MAX);
    }
    p.flush(Duration::from_secs(60)).expect("warm-up flush");
    let ctx = p.context();
    let failed = ctx.failed.swap(0, Ordering::Relaxed);
    assert_eq!(
        failed,
        0,
        "warm-up produce failed: {:?}",
        ctx.first_error.lock().expect("err")
    );
    ctx.delivered.store(0, Ordering::Relaxed);
}

struct PeakResult {
    seconds: f64,
    delivered: u64,
    failed: u64,
}

fn peak_run(
    bootstrap: &str,
    n: usize,
    payload: &Payload,
    after_warmup: impl FnOnce(),
) -> PeakResult {
    let p = producer(bootstrap, 5, Ctx::new(None, 0));
    warm_up(&p, payload);
    after_warmup();
    let start = Instant::now();
    for i in 0..n {
        send(&p, &key(i), &payload.value, i);
    }
    p.flush(Duration::from_secs(180)).expect("flush");
    let seconds = start.elapsed().as_secs_f64();
    let ctx = p.context();
    PeakResult {
        seconds,
        delivered: ctx.delivered.load(Ordering::Relaxed),
        failed: ctx.failed.load(Ordering::Relaxed),
    }
}

struct LatencyResult {
    /// Sorted, in ns.
    latencies: Vec<u64>,
    failed: u64,
    achieved_rate: f64,
}

fn latency_run(
    bootstrap: &str,
    rate: u64,
    secs: f64,
    payload: &Payload,
    after_warmup: impl FnOnce(),
) -> LatencyResult {
    let n = (rate as f64 * secs) as usize;
    let every_ns = 1_000_000_000 / rate;
    // The schedule starts after the warm-up; the context needs it up front, so it is placed
    // a moment ahead and the warm-up (a few hundred ms) runs before it.
    let linger = latency_linger_ms();
    let warm = producer(bootstrap, linger, Ctx::new(None, 0));
    warm_up(&warm, payload);
    drop(warm);
    after_warmup();
    let start = Instant::now() + Duration::from_millis(300);
    let p = producer(bootstrap, linger, Ctx::new(Some((start, every_ns)), n));
    // Connect and fetch metadata before the schedule starts.
    let _ = p
        .client()
        .fetch_metadata(Some(TOPIC), Duration::from_secs(10));
    for i in 0..n {
        let due = start + Duration::from_nanos(every_ns * i as u64);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        send(&p, &key(i), &payload.value, i);
    }
    p.flush(Duration::from_secs(120)).expect("flush");
    let elapsed = start.elapsed().as_secs_f64();
    let ctx = p.context();
    let mut latencies = std::mem::take(&mut *ctx.latencies.lock().expect("latencies"));
    latencies.sort_unstable();
    LatencyResult {
        achieved_rate: latencies.len() as f64 / elapsed,
        latencies,
        failed: ctx.failed.load(Ordering::Relaxed),
    }
}

/// linger.ms of the latency runs (KKP_E2E_LATENCY_LINGER_MS).
fn latency_linger_ms() -> u32 {
    env_num("KKP_E2E_LATENCY_LINGER_MS", 5) as u32
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

/// Deletes `bench` (if there) and creates it afresh, so every measurement starts from the same
/// empty broker store: tansu's memory storage keeps every record, and a store growing over the
/// run would be drift.
fn recreate_topic(bootstrap: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let _ = futures::executor::block_on(admin.delete_topics(&[TOPIC], &options));
    for attempt in 0.. {
        match create_with(&admin) {
            Ok(()) => return,
            // Deletion may still be settling.
            Err(e) if attempt < 50 => {
                let _ = e;
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("create topic {TOPIC}: {e}"),
        }
    }
}

fn create_with(admin: &AdminClient<DefaultClientContext>) -> Result<(), String> {
    let topic = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(1));
    let results = futures::executor::block_on(admin.create_topics(
        [&topic],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))
    .map_err(|e| e.to_string())?;
    for r in results {
        if let Err((name, code)) = r {
            return Err(format!("{name}: {code}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The paths

struct PathUnderTest {
    id: &'static str,
    label: String,
    bootstrap: String,
    /// The proxy process, if any.
    proxy: Option<u32>,
    /// How to tell that the mirror delivered everything, when the path mirrors.
    drain: Option<Drain>,
    /// Records produced through this path so far (what the mirror must have sent).
    produced: u64,
    /// The proxy's admin port, when it mirrors: where it says what it shed.
    admin: Option<u16>,
}

#[derive(Default, Clone)]
struct Measurement {
    round: usize,
    msgs_per_sec: f64,
    mb_per_sec: f64,
    peak_failed: u64,
    proxy_cpu_s_per_mb: Option<f64>,
    broker_cpu_s_per_mb: f64,
    kinesis_cpu_s_per_mb: Option<f64>,
    proxy_peak_rss_mib: Option<f64>,
    mirror_drain_s: Option<f64>,
    /// Records per second from the first send to the last record acknowledged by Kinesis.
    mirror_msgs_per_sec: Option<f64>,
    mirror_drained: Option<bool>,
    /// Of a peak run's records, the share that reached Kinesis.
    mirrored_fraction: Option<f64>,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    latency_samples: usize,
    latency_failed: u64,
    latency_rate: f64,
}

/// Sum of `kafka_kinesis_proxy_mirror_records_total{result=...}` over topics and streams.
fn mirror_count(admin_port: u16, result: &str) -> Option<u64> {
    metric_sum(
        admin_port,
        "kafka_kinesis_proxy_mirror_records_total{",
        &format!("result=\"{result}\""),
    )
}

/// The sum of the series that start with `series` and contain `label`.
fn metric_sum(admin_port: u16, series: &str, label: &str) -> Option<u64> {
    let text = http_get(admin_port, "/metrics")?;
    let mut total = 0f64;
    for line in text.lines() {
        if line.starts_with(series) && line.contains(label) {
            total += line.rsplit(' ').next()?.parse::<f64>().ok()?;
        }
    }
    Some(total as u64)
}

/// Where the count of mirrored records is read.
#[derive(Clone, Copy)]
enum Drain {
    /// The harness's Kinesis mock: `GET /stats` (costs the proxy nothing).
    Mock(u16),
    /// Another endpoint: the proxy's `/metrics` (every final outcome), polled gently so
    /// the scrapes do not show up in its CPU time.
    Metrics(u16),
}

impl Drain {
    fn count(self) -> u64 {
        match self {
            Drain::Mock(port) => http_get(port, "/stats")
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0),
            Drain::Metrics(port) => ["sent", "failed", "oversize", "dead_letter", "dropped"]
                .iter()
                .map(|r| mirror_count(port, r).unwrap_or(0))
                .sum(),
        }
    }

    /// Waits until `expected` records were mirrored, or until none has arrived for
    /// [`DRAIN_STALL`] (the proxy shed some: `mirror_dropped_requests_total`). Returns the count
    /// then, and the seconds until the last record arrived.
    fn wait(self, expected: u64) -> (u64, f64) {
        let start = Instant::now();
        let pause = match self {
            Drain::Mock(_) => Duration::from_millis(10),
            Drain::Metrics(_) => Duration::from_millis(250),
        };
        let (mut last, mut progressed) = (self.count(), start);
        loop {
            if last >= expected
                || progressed.elapsed() > DRAIN_STALL
                || start.elapsed() > DRAIN_TIMEOUT
            {
                return (last, (progressed - start).as_secs_f64());
            }
            thread::sleep(pause);
            let count = self.count();
            if count != last {
                (last, progressed) = (count, Instant::now());
            }
        }
    }
}

struct Bench {
    settings: Settings,
    ticks: f64,
    payload: Payload,
    broker: Daemon,
    broker_port: u16,
    mock: Daemon,
    mock_port: u16,
    _proxies: Vec<Daemon>,
    paths: Vec<PathUnderTest>,
    dir: tempfile::TempDir,
    started: Instant,
}

struct Report {
    json: Value,
    markdown: String,
}

/// A proxy's config; `mirror` (Kinesis endpoint, `mirror_buffer.durability` or the default)
/// adds the route of `bench`.
fn proxy_config(
    dir: &Path,
    name: &str,
    broker_port: u16,
    mirror: Option<(&str, Option<&str>)>,
) -> (PathBuf, u16, u16) {
    let bootstrap = free_port();
    let node_port = free_port();
    let admin = free_port();
    let mut text = format!(
        "[listener]\nbind = \"127.0.0.1\"\nadvertised_host = \"127.0.0.1\"\n\
         bootstrap_port = {bootstrap}\nbroker_port_base = {}\n\n\
         [kafka]\nbootstrap_servers = [\"127.0.0.1:{broker_port}\"]\n\n\
         [admin]\nbind = \"127.0.0.1:{admin}\"\n",
        node_port - TANSU_NODE_ID
    );
    if let Some((endpoint, durability)) = mirror {
        if let Some(durability) = durability {
            text.push_str(&format!(
                "\n[mirror_buffer]\ndurability = \"{durability}\"\n"
            ));
        }
        let spool = dir.join(format!("{name}-spool"));
        text.push_str(&format!(
            "\n[kinesis]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\n\
             [spool]\ndir = \"{}\"\n\n\
             [[mirror]]\ntopic = \"{TOPIC}\"\nstream = \"{STREAM}\"\npercent = 100.0\n",
            spool.display()
        ));
    }
    let path = dir.join(format!("{name}.toml"));
    fs::write(&path, text).expect("write proxy config");
    (path, bootstrap, admin)
}

fn start_proxy(
    settings: &Settings,
    dir: &Path,
    name: &str,
    broker_port: u16,
    mirror: Option<(&str, Option<&str>)>,
) -> (Daemon, u16, u16) {
    let (config, bootstrap, admin) = proxy_config(dir, name, broker_port, mirror);
    let mut cmd = command(settings.pin, "1", env!("CARGO_BIN_EXE_kafka-kinesis-proxy"));
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let mut d = Daemon::spawn(name, dir, cmd);
    d.wait_port(bootstrap, Duration::from_secs(30));
    if mirror.is_some() {
        // The writer describes the stream at start: wait until it is healthy.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let healthy = http_get(admin, "/metrics").is_some_and(|m| {
                m.lines().any(|l| {
                    l.starts_with("kafka_kinesis_proxy_stream_healthy")
                        && l.contains(STREAM)
                        && l.ends_with(" 1")
                })
            });
            if healthy {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: stream {STREAM} not healthy within 60 s; log {}",
                d.log.display()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    (d, bootstrap, admin)
}

impl Bench {
    fn start(settings: Settings) -> Bench {
        let started = Instant::now();
        if settings.pin {
            // This process (the client) shares CPU 0 with the broker; threads started from
            // now on (librdkafka's) inherit the mask.
            let _ = Command::new("taskset")
                .args(["-p", "-c", "0", &std::process::id().to_string()])
                .stdout(Stdio::null())
                .status();
        }
        let dir = tempfile::tempdir().expect("tempdir");
        // The benchmark installs its own broker and peer proxy (tansu), which the test suite
        // does not need; skipped when already installed.
        let install = Command::new(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-bench-deps.sh"),
        )
        .status()
        .expect("run scripts/install-bench-deps.sh");
        assert!(install.success(), "scripts/install-bench-deps.sh failed");
        let tansu = tools_dir().join("tansu/bin/tansu");
        eprintln!(
            "e2e: {} rounds x 6 paths; peak runs of {} x 1 KiB, latency runs at {} msg/s for {} s; pinning {}",
            settings.rounds,
            settings.messages,
            settings.rate,
            settings.latency_secs,
            if settings.pin { "on" } else { "off" }
        );

        let broker_port = free_port();
        let url = format!("tcp://127.0.0.1:{broker_port}");
        let mut cmd = command(settings.pin, "0", &tansu);
        cmd.arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn");
        let mut broker = Daemon::spawn("tansu-broker", dir.path(), cmd);
        broker.wait_port(broker_port, Duration::from_secs(30));
        recreate_topic(&format!("127.0.0.1:{broker_port}"));

        let mock_port = free_port();
        let mut cmd = command(
            settings.pin,
            "0",
            std::env::current_exe().expect("current exe"),
        );
        cmd.arg("--bench")
            .env("KKP_E2E_ROLE", "kinesis-mock")
            .env("KKP_E2E_MOCK_PORT", mock_port.to_string())
            .env("KKP_E2E_MOCK_SHARDS", settings.shards.to_string());
        let mut mock = Daemon::spawn("kinesis-mock", dir.path(), cmd);
        mock.wait_port(mock_port, Duration::from_secs(30));

        let (off, off_port, _) = start_proxy(&settings, dir.path(), "kkp-off", broker_port, None);
        let endpoint = format!("http://127.0.0.1:{mock_port}");
        // One mirroring proxy per durability mode; only the path being measured has load.
        let mirrors: Vec<(&str, Daemon, u16, u16)> = durability::PATHS
            .iter()
            .map(|&(id, mode, _)| {
                let (proxy, port, admin) = start_proxy(
                    &settings,
                    dir.path(),
                    id,
                    broker_port,
                    Some((&endpoint, mode)),
                );
                (id, proxy, port, admin)
            })
            .collect();
        let peer_port = free_port();
        let peer_url = format!("tcp://127.0.0.1:{peer_port}");
        let mut cmd = command(settings.pin, "1", &tansu);
        cmd.arg("proxy")
            .args(["--listener-url", &peer_url])
            .args(["--advertised-listener-url", &peer_url])
            .args(["--origin-url", &url])
            .env("RUST_LOG", "warn");
        let mut peer = Daemon::spawn("tansu-proxy", dir.path(), cmd);
        peer.wait_port(peer_port, Duration::from_secs(30));

        let path = |id, label: &str, port: u16, proxy: Option<u32>, drain| PathUnderTest {
            id,
            label: label.to_owned(),
            bootstrap: format!("127.0.0.1:{port}"),
            proxy,
            drain,
            produced: 0,
            admin: None,
        };
        let mut paths = vec![
            path("direct", "direct to broker", broker_port, None, None),
            path(
                "kkp-off",
                "kafka-kinesis-proxy, mirror off",
                off_port,
                Some(off.pid()),
                None,
            ),
        ];
        for ((id, proxy, port, admin), (_, _, label)) in mirrors.iter().zip(durability::PATHS) {
            paths.push(PathUnderTest {
                admin: Some(*admin),
                ..path(
                    id,
                    label,
                    *port,
                    Some(proxy.pid()),
                    Some(Drain::Mock(mock_port)),
                )
            });
        }
        paths.push(path(
            "tansu-proxy",
            "tansu proxy (peer)",
            peer_port,
            Some(peer.pid()),
            None,
        ));
        let mut proxies = vec![off, peer];
        proxies.extend(mirrors.into_iter().map(|(_, proxy, _, _)| proxy));
        Bench {
            ticks: clock_ticks(),
            payload: Payload::new(),
            broker,
            broker_port,
            mock,
            mock_port,
            _proxies: proxies,
            paths,
            dir,
            started,
            settings,
        }
    }

    /// One peak run and one latency run through `paths[i]`.
    /// A peak run of `messages` records and, with `latency`, a latency run through `paths[i]`.
    /// `endpoint_pid` is the Kinesis endpoint's process, whose CPU is reported too.
    fn measure(
        &mut self,
        i: usize,
        round: usize,
        endpoint_pid: Option<u32>,
        messages: usize,
        latency: bool,
    ) -> Measurement {
        let mock_pid = endpoint_pid;
        let s = self.settings.clone();
        let broker_pid = self.broker.pid();
        let ticks = self.ticks;
        let payload = &self.payload;
        let path = &mut self.paths[i];
        let mut m = Measurement {
            round,
            ..Measurement::default()
        };
        let mb = messages as f64 * VALUE_BYTES as f64 / 1e6;
        recreate_topic(&format!("127.0.0.1:{}", self.broker_port));
        if let Some(drain @ Drain::Mock(_)) = path.drain {
            // The mock counts the records of every mirroring path, and each path's runs
            // drained before the next path started: count from what it holds now.
            path.produced = drain.count();
        }

        // Peak throughput.
        let mut before = (0, 0, 0);
        let drain = path.drain;
        let produced_before = path.produced + WARMUP_MESSAGES as u64;
        let proxy = path.proxy;
        let mut mirrored_before = 0;
        let peak = peak_run(&path.bootstrap, messages, payload, || {
            if let Some(drain) = drain {
                mirrored_before = drain.wait(produced_before).0;
            }
            if let Some(pid) = proxy {
                reset_peak_rss(pid);
            }
            before = (
                proxy.map_or(0, cpu_ticks),
                cpu_ticks(broker_pid),
                mock_pid.map_or(0, cpu_ticks),
            );
        });
        path.produced += WARMUP_MESSAGES as u64 + peak.delivered;
        if let Some(drain) = drain {
            let expected = mirrored_before + peak.delivered;
            let (mirrored, secs) = drain.wait(expected);
            // What the proxy shed stays shed: the next run counts from here.
            path.produced = mirrored;
            m.mirror_drained = Some(mirrored >= expected);
            m.mirrored_fraction = Some((mirrored - mirrored_before) as f64 / peak.delivered as f64);
            m.mirror_drain_s = Some(secs);
            m.mirror_msgs_per_sec =
                Some((mirrored - mirrored_before) as f64 / (peak.seconds + secs));
            if let Some(admin) = path.admin {
                // Cumulative over the proxy's runs: what it says it shed, and where.
                eprintln!(
                    "e2e: {} so far: records dropped {}, requests dropped {}, spooled now {} B",
                    path.id,
                    mirror_count(admin, "dropped").unwrap_or(0),
                    metric_sum(
                        admin,
                        "kafka_kinesis_proxy_mirror_dropped_requests_total",
                        ""
                    )
                    .unwrap_or(0),
                    metric_sum(admin, "kafka_kinesis_proxy_spool_bytes{", "").unwrap_or(0),
                );
            }
        }
        let cpu = |pid: u32, t0: u64| (cpu_ticks(pid).saturating_sub(t0)) as f64 / ticks / mb;
        m.proxy_cpu_s_per_mb = proxy.map(|pid| cpu(pid, before.0));
        m.broker_cpu_s_per_mb = cpu(broker_pid, before.1);
        m.kinesis_cpu_s_per_mb = mock_pid.map(|pid| cpu(pid, before.2));
        m.proxy_peak_rss_mib = proxy.map(|pid| status_kib(pid, "VmHWM:") as f64 / 1024.0);
        m.msgs_per_sec = peak.delivered as f64 / peak.seconds;
        m.mb_per_sec = m.msgs_per_sec * VALUE_BYTES as f64 / 1e6;
        m.peak_failed = peak.failed;

        // Latency at a fixed rate.
        if latency {
            let produced_before = path.produced + WARMUP_MESSAGES as u64;
            let lat = latency_run(&path.bootstrap, s.rate, s.latency_secs, payload, || {
                if let Some(drain) = drain {
                    drain.wait(produced_before);
                }
            });
            path.produced += WARMUP_MESSAGES as u64 + lat.latencies.len() as u64;
            if let Some(drain) = drain {
                let (mirrored, _) = drain.wait(path.produced);
                m.mirror_drained = m.mirror_drained.map(|d| d && mirrored >= path.produced);
                path.produced = mirrored;
            }
            m.p50_ms = percentile(&lat.latencies, 0.50) / 1e6;
            m.p99_ms = percentile(&lat.latencies, 0.99) / 1e6;
            m.p999_ms = percentile(&lat.latencies, 0.999) / 1e6;
            m.latency_samples = lat.latencies.len();
            m.latency_failed = lat.failed;
            m.latency_rate = lat.achieved_rate;
        } else {
            m.p50_ms = f64::NAN;
            m.p99_ms = f64::NAN;
            m.p999_ms = f64::NAN;
        }
        eprintln!(
            "e2e: round {} {:<12} {:>8.0} msg/s {:>7.1} MB/s  p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms  proxy {} s/MB, {} MiB{}",
            round + 1,
            path.id,
            m.msgs_per_sec,
            m.mb_per_sec,
            m.p50_ms,
            m.p99_ms,
            m.p999_ms,
            m.proxy_cpu_s_per_mb.map_or("-".into(), |v| format!("{v:.4}")),
            m.proxy_peak_rss_mib.map_or("-".into(), |v| format!("{v:.1}")),
            m.mirror_drain_s.map_or(String::new(), |d| format!(", mirror drained +{d:.2} s")),
        );
        m
    }

    fn run(mut self) -> Report {
        let n = self.paths.len();
        let mut results: Vec<Vec<Measurement>> = vec![Vec::new(); n];
        let mock_pid = self.mock.pid();
        let only = self.settings.only.clone();
        for round in 0..self.settings.rounds {
            for k in 0..n {
                let i = (round + k) % n;
                if !only.is_empty() && !only.iter().any(|p| p == self.paths[i].id) {
                    continue;
                }
                let mock = matches!(self.paths[i].drain, Some(Drain::Mock(_))).then_some(mock_pid);
                let m = self.measure(i, round, mock, self.settings.messages, true);
                results[i].push(m);
            }
        }
        let mock_stats = http_get(self.mock_port, "/stats").unwrap_or_default();

        // One run against kinesalite, when it is installed.
        let mut extra: Option<(String, String, Vec<Measurement>)> = None;
        if self.settings.kinesalite {
            match self.kinesalite_round() {
                Ok(x) => extra = Some(x),
                Err(e) => eprintln!("e2e: kinesalite round skipped: {e}"),
            }
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        self.report(&results, extra, &mock_stats, elapsed)
    }

    fn kinesalite_round(&mut self) -> Result<(String, String, Vec<Measurement>), String> {
        let port = free_port();
        let mut cmd = command(self.settings.pin, "0", "node");
        cmd.arg(kinesalite_cli())
            .args(["--port", &port.to_string()])
            .args(["--createStreamMs", "0"])
            .args(["--shardLimit", &KINESALITE_SHARDS.to_string()]);
        let mut kl = Daemon::spawn("kinesalite", self.dir.path(), cmd);
        kl.wait_port(port, Duration::from_secs(60));
        let endpoint = format!("http://127.0.0.1:{port}");
        create_stream(&endpoint)?;
        let (proxy, bootstrap, admin) = start_proxy(
            &self.settings,
            self.dir.path(),
            "kkp-kinesalite",
            self.broker_port,
            Some((&endpoint, None)),
        );
        self.paths.push(PathUnderTest {
            id: "kkp-mirror-kinesalite",
            label: "kafka-kinesis-proxy, 100% mirrored into kinesalite".into(),
            bootstrap: format!("127.0.0.1:{bootstrap}"),
            proxy: Some(proxy.pid()),
            drain: Some(Drain::Metrics(admin)),
            produced: 0,
            admin: Some(admin),
        });
        let i = self.paths.len() - 1;
        let m = self.measure(
            i,
            0,
            Some(kl.pid()),
            self.settings.kinesalite_messages,
            false,
        );
        let retried = metric_sum(
            admin,
            "kafka_kinesis_proxy_mirror_attempts_total{",
            "kind=\"retry\"",
        )
        .unwrap_or(0);
        let failed = mirror_count(admin, "failed").unwrap_or(0);
        drop(proxy);
        drop(kl);
        Ok((
            self.paths[i].label.clone(),
            format!("retried {retried}, failed {failed}"),
            vec![m],
        ))
    }

    fn report(
        &self,
        results: &[Vec<Measurement>],
        extra: Option<(String, String, Vec<Measurement>)>,
        mock_stats: &str,
        elapsed: f64,
    ) -> Report {
        let s = &self.settings;
        let loadavg = fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let direct = &results[0];
        let mut rows = Vec::new();
        let mut json_paths = Vec::new();
        let all: Vec<(&PathUnderTest, &Vec<Measurement>)> =
            self.paths.iter().zip(results.iter()).collect();
        for (path, ms) in &all {
            if ms.is_empty() {
                continue;
            }
            let ratio = |f: fn(&Measurement) -> f64| -> Vec<f64> {
                ms.iter()
                    .zip(direct.iter())
                    .map(|(m, d)| f(m) / f(d))
                    .collect()
            };
            let thr_ratio = stats(&ratio(|m| m.msgs_per_sec));
            let p99_ratio = stats(&ratio(|m| m.p99_ms));
            rows.push(row(path.id, ms, Some((thr_ratio, p99_ratio))));
            json_paths.push(path_json(path, ms, Some((thr_ratio, p99_ratio))));
        }
        let mut extra_note = String::new();
        if let Some((label, note, ms)) = &extra {
            let path = self.paths.last().expect("extra path");
            rows.push(row(path.id, ms, None));
            let mut j = path_json(path, ms, None);
            j["label"] = json!(label);
            j["note"] = json!(note);
            json_paths.push(j);
            extra_note = format!(
                "\n`{}`: {label}: one peak run of {} records after the rounds (no latency run, not paired with direct); a {KINESALITE_SHARDS}-shard stream; kinesalite (in memory) runs on CPU 0 with the broker; mirror {note}.\n",
                path.id, s.kinesalite_messages
            );
        }
        let mut md = String::new();
        md.push_str(&format!(
            "### End-to-end: {} rounds, {} x 1 KiB per peak run, latency at {} msg/s for {} s\n\n",
            s.rounds, s.messages, s.rate, s.latency_secs
        ));
        md.push_str("Median over rounds (min–max). MB = 10^6 payload bytes. `vs direct` = per-round ratio to the direct path in the same round, median (min–max). CPU s/MB: the proxy process's utime+stime during the peak run (for the kkp-mirror paths including delivery of every record to Kinesis) per MB produced. RSS: peak VmHWM during a peak run (max over rounds). Mirrored msg/s: records over the time from the first send to the last record acknowledged by Kinesis. Mirrored %: of a peak run's records, the share that reached Kinesis (less than 100 when the proxy shed exchanges it could not keep up with: `mirror_dropped_requests_total`). Endpoint CPU s/MB: the Kinesis endpoint's own CPU (it shares CPU 0 with the broker and client, at nice 19).\n\n");
        md.push_str("| path | peak msg/s | peak MB/s | thr. vs direct | p50 ms | p99 ms | p99.9 ms | p99 vs direct | proxy CPU s/MB | proxy peak RSS MiB | mirrored msg/s | mirrored % | endpoint CPU s/MB |\n");
        md.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &rows {
            md.push_str(r);
            md.push('\n');
        }
        md.push_str(&extra_note);
        md.push_str(&format!(
            "\nPaths: `direct` client → tansu broker; `kkp-off` our proxy without `[[mirror]]`; `kkp-mirror` our proxy mirroring 100% of the topic to the harness's Kinesis mock ({} shards, MD5-correct ShardIds), with the default durability (wal), `kkp-mirror-memory` and `kkp-mirror-sync` the same with durability memory and sync; `tansu-proxy` `tansu proxy` 0.6.0. Client: librdkafka (rdkafka crate) {}, acks=all, {PARTITIONS} partitions, keyed, no compression; peak runs linger.ms=5, latency runs linger.ms={} with latency from each record's scheduled send time to its delivery report. Pinning: {}. Load average at the end: {}. Whole run {:.0} s.\n",
            s.shards,
            rdkafka::util::get_rdkafka_version().1,
            latency_linger_ms(),
            if s.pin { "broker + client + Kinesis endpoint on CPU 0, proxy under test on CPU 1 (taskset)" } else { "off" },
            loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            elapsed,
        ));
        let (durability_md, durability_json) = durability::compare(&self.paths, results);
        md.push_str(&durability_md);
        let json = json!({
            "settings": {
                "rounds": s.rounds,
                "peak_messages": s.messages,
                "value_bytes": VALUE_BYTES,
                "partitions": PARTITIONS,
                "latency_rate": s.rate,
                "latency_secs": s.latency_secs,
                "latency_linger_ms": latency_linger_ms(),
                "pinning": s.pin,
                "kinesis_mock_shards": s.shards,
                "kinesalite_shards": KINESALITE_SHARDS,
                "librdkafka": rdkafka::util::get_rdkafka_version().1,
            },
            "machine": {
                // Online CPUs, not this process's (pinned) share of them.
                "cpus_online": fs::read_to_string("/sys/devices/system/cpu/online").map_or_else(|_| "?".to_owned(), |s| s.trim().to_owned()),
                "loadavg_at_end": loadavg.trim(),
            },
            "elapsed_secs": elapsed,
            "kinesis_mock_stats_records_requests_bytes": mock_stats.trim(),
            "paths": json_paths,
            "durability": durability_json,
        });
        Report { json, markdown: md }
    }
}

fn create_stream(endpoint: &str) -> Result<(), String> {
    use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "e2e"))
        .build();
    let client = aws_sdk_kinesis::Client::from_conf(config);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        client
            .create_stream()
            .stream_name(STREAM)
            .shard_count(KINESALITE_SHARDS as i32)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "CreateStream: {}",
                    aws_sdk_kinesis::error::DisplayErrorContext(&e)
                )
            })?;
        for _ in 0..300 {
            let out = client
                .describe_stream_summary()
                .stream_name(STREAM)
                .send()
                .await
                .map_err(|e| format!("DescribeStreamSummary: {e}"))?;
            if out
                .stream_description_summary()
                .is_some_and(|s| s.stream_status().as_str() == "ACTIVE")
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("stream did not become ACTIVE".to_owned())
    })
}

// ---------------------------------------------------------------------------------------------
// Statistics and formatting

#[derive(Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(values: &[f64]) -> Stats {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Stats {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    Stats {
        median,
        min: v[0],
        max: v[v.len() - 1],
    }
}

fn fmt_stats(s: Stats, decimals: usize) -> String {
    if s.median.is_nan() {
        return "–".into();
    }
    if s.min == s.max {
        return format!("{:.*}", decimals, s.median);
    }
    format!(
        "{:.*} ({:.*}–{:.*})",
        decimals, s.median, decimals, s.min, decimals, s.max
    )
}

fn collect(ms: &[Measurement], f: impl Fn(&Measurement) -> Option<f64>) -> Stats {
    stats(&ms.iter().filter_map(f).collect::<Vec<_>>())
}

fn row(id: &str, ms: &[Measurement], ratios: Option<(Stats, Stats)>) -> String {
    let (thr_ratio, p99_ratio) = ratios.map_or(("–".into(), "–".into()), |(t, p)| {
        (fmt_stats(t, 2), fmt_stats(p, 2))
    });
    let rss = ms
        .iter()
        .filter_map(|m| m.proxy_peak_rss_mib)
        .fold(f64::NAN, f64::max);
    format!(
        "| {id} | {} | {} | {thr_ratio} | {} | {} | {} | {p99_ratio} | {} | {} | {} | {} | {} |",
        fmt_stats(collect(ms, |m| Some(m.msgs_per_sec)), 0),
        fmt_stats(collect(ms, |m| Some(m.mb_per_sec)), 1),
        fmt_stats(collect(ms, |m| Some(m.p50_ms)), 2),
        fmt_stats(collect(ms, |m| Some(m.p99_ms)), 2),
        fmt_stats(collect(ms, |m| Some(m.p999_ms)), 2),
        fmt_stats(collect(ms, |m| m.proxy_cpu_s_per_mb), 4),
        if rss.is_nan() {
            "–".into()
        } else {
            format!("{rss:.1}")
        },
        fmt_stats(collect(ms, |m| m.mirror_msgs_per_sec), 0),
        fmt_stats(collect(ms, |m| m.mirrored_fraction.map(|f| f * 100.0)), 1),
        fmt_stats(collect(ms, |m| m.kinesis_cpu_s_per_mb), 4),
    )
}

fn stats_json(s: Stats) -> Value {
    json!({"median": s.median, "min": s.min, "max": s.max})
}

fn path_json(path: &PathUnderTest, ms: &[Measurement], ratios: Option<(Stats, Stats)>) -> Value {
    let rounds: Vec<Value> = ms
        .iter()
        .map(|m| {
            json!({
                "round": m.round + 1,
                "msgs_per_sec": m.msgs_per_sec,
                "mb_per_sec": m.mb_per_sec,
                "peak_failed": m.peak_failed,
                "proxy_cpu_s_per_mb": m.proxy_cpu_s_per_mb,
                "broker_cpu_s_per_mb": m.broker_cpu_s_per_mb,
                "kinesis_endpoint_cpu_s_per_mb": m.kinesis_cpu_s_per_mb,
                "proxy_peak_rss_mib": m.proxy_peak_rss_mib,
                "mirror_drained": m.mirror_drained,
                "mirrored_fraction": m.mirrored_fraction,
                "mirror_drain_after_flush_s": m.mirror_drain_s,
                "mirrored_msgs_per_sec": m.mirror_msgs_per_sec,
                "latency_p50_ms": m.p50_ms,
                "latency_p99_ms": m.p99_ms,
                "latency_p999_ms": m.p999_ms,
                "latency_samples": m.latency_samples,
                "latency_failed": m.latency_failed,
                "latency_achieved_rate": m.latency_rate,
            })
        })
        .collect();
    json!({
        "id": path.id,
        "label": path.label,
        "summary": {
            "msgs_per_sec": stats_json(collect(ms, |m| Some(m.msgs_per_sec))),
            "mb_per_sec": stats_json(collect(ms, |m| Some(m.mb_per_sec))),
            "throughput_vs_direct": ratios.map(|r| stats_json(r.0)),
            "latency_p50_ms": stats_json(collect(ms, |m| Some(m.p50_ms))),
            "latency_p99_ms": stats_json(collect(ms, |m| Some(m.p99_ms))),
            "latency_p999_ms": stats_json(collect(ms, |m| Some(m.p999_ms))),
            "p99_vs_direct": ratios.map(|r| stats_json(r.1)),
            "proxy_cpu_s_per_mb": stats_json(collect(ms, |m| m.proxy_cpu_s_per_mb)),
            "mirrored_msgs_per_sec": stats_json(collect(ms, |m| m.mirror_msgs_per_sec)),
            "mirrored_fraction": stats_json(collect(ms, |m| m.mirrored_fraction)),
            "kinesis_endpoint_cpu_s_per_mb": stats_json(collect(ms, |m| m.kinesis_cpu_s_per_mb)),
            "broker_cpu_s_per_mb": stats_json(collect(ms, |m| Some(m.broker_cpu_s_per_mb))),
            "proxy_peak_rss_mib_max": ms.iter().filter_map(|m| m.proxy_peak_rss_mib).fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b)))),
        },
        "rounds": rounds,
    })
}
