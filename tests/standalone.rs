//! The standalone proxy: no Kafka at all, only kinesis-local and the proxy, whose routes are all
//! kinesis-only. Idempotent producers of four client families write through it; every record
//! must be in Kinesis exactly once and in partition order, also across a proxy restart and
//! under throttling. Consumers must fail fast.
//!
//! The routes use `partition_key = "partition"` (the one setting beyond the defaults): the test
//! records all have distinct keys, so ordering by key would check nothing, while a partition's
//! records share one Kinesis key and must sit in the order the producer sent them.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::faults::{FaultLayer, FaultPlan};
use support::kinesis::{KinesisLocal, StoredRecord};
use support::{client_command, kcat_bin, run_command, try_run_client, wait_until_async, Proxy};

const RECORDS: usize = 10_000;
const PARTITIONS: i32 = 4;

/// A kinesis-only route for `topic` into a stream of the same name.
fn route(topic: &str) -> String {
    format!(
        "[[mirror]]\ntopic = \"{topic}\"\nstream = \"{topic}\"\npercent = 100.0\nmode = \"kinesis-only\"\npartitions = {PARTITIONS}\npartition_key = \"partition\"\n"
    )
}

fn kinesis_table(endpoint: &str) -> String {
    format!("[kinesis]\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n")
}

/// Record `index` of `topic` as tests/clients/records.py makes it: (key, value).
fn record(topic: &str, index: usize) -> (String, Vec<u8>) {
    const WORDS: [&str; 24] = [
        "alpha",
        "bravo",
        "charlie",
        "delta",
        "echo",
        "foxtrot",
        "golf",
        "hotel",
        "india",
        "juliet",
        "kilo",
        "lima",
        "mike",
        "november",
        "oscar",
        "papa",
        "kafka",
        "kinesis",
        "proxy",
        "record",
        "batch",
        "0123456789",
        "~!@#$%^&*()",
        "ZZZ",
    ];
    let mut x = format!("{topic}|{index}")
        .bytes()
        .fold(0x811C_9DC5u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
    if x == 0 {
        x = 0x9E37_79B9;
    }
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let length = 10 + (next() % 991) as usize;
    let mut words = Vec::new();
    let mut n = 0;
    while n < length {
        let word = WORDS[(next() % WORDS.len() as u32) as usize];
        words.push(word);
        n += word.len() + 1;
    }
    let payload = &words.join(" ")[..length];
    (
        format!("key-{index:06}"),
        format!("{topic}|{index}|{payload}").into_bytes(),
    )
}

/// Checks that `stored` holds records 0..count of `topic` exactly once each, byte for byte,
/// and that each Kinesis key's (each partition's) records are in increasing index order.
fn assert_once_in_order(topic: &str, count: usize, stored: &[StoredRecord]) {
    let mut seen = vec![0u32; count];
    let mut last_of_key: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut out_of_order = Vec::new();
    for r in stored {
        let text = String::from_utf8_lossy(&r.data);
        let mut fields = text.splitn(3, '|');
        assert_eq!(
            fields.next(),
            Some(topic),
            "a record of another topic: {text:.80}"
        );
        let index: usize = fields
            .next()
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("not a test record: {text:.80}"));
        assert!(index < count, "index {index} beyond {count}");
        assert_eq!(
            r.data,
            record(topic, index).1,
            "record {index}'s data changed"
        );
        seen[index] += 1;
        let key = (r.shard_id.as_str(), r.partition_key.as_str());
        if let Some(previous) = last_of_key.insert(key, index) {
            if previous > index && out_of_order.len() < 10 {
                out_of_order.push((r.partition_key.clone(), previous, index));
            }
        }
    }
    let missing: Vec<usize> = (0..count).filter(|i| seen[*i] == 0).collect();
    let duplicated: Vec<usize> = (0..count).filter(|i| seen[*i] > 1).collect();
    assert!(
        missing.is_empty() && duplicated.is_empty(),
        "{topic}: {} missing (e.g. {:?}), {} duplicated (e.g. {:?}) of {count}",
        missing.len(),
        &missing[..missing.len().min(10)],
        duplicated.len(),
        &duplicated[..duplicated.len().min(10)]
    );
    assert!(
        out_of_order.is_empty(),
        "{topic}: records out of order within a partition key (key, before, after): {out_of_order:?}"
    );
    assert_eq!(
        last_of_key.len(),
        PARTITIONS as usize,
        "{topic}: every partition used"
    );
}

/// Produces `count` records of `topic` through `proxy` with `client`, idempotent and acks=all.
fn produce_args(bootstrap: &str, topic: &str, count: usize, codec: &str) -> Vec<String> {
    [
        "produce",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--count",
        &count.to_string(),
        "--codec",
        codec,
        "--acks",
        "all",
        "--idempotent",
        "--timeout",
        "120",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn produce(client: &str, bootstrap: &str, topic: &str, count: usize, codec: &str) -> Value {
    let args = produce_args(bootstrap, topic, count, codec);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = try_run_client(client, &args)
        .unwrap_or_else(|e| panic!("{client} ({codec}) producing {topic}:\n{e}"));
    assert_eq!(out["error_count"], 0, "{client}: {out}");
    assert_eq!(out["produced"], count as u64, "{client}: {out}");
    out
}

/// Reads the stream until it holds `count` records (delivery is confirmed before the
/// producer hears back, so this is only the emulator's read-after-write delay).
async fn read_stream(kinesis: &KinesisLocal, stream: &str, count: usize) -> Vec<StoredRecord> {
    /// Shown by its size when the wait fails, not record by record.
    struct Stored(Vec<StoredRecord>);
    impl std::fmt::Debug for Stored {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{} records", self.0.len())
        }
    }
    wait_until_async(
        "every record readable from the stream",
        Duration::from_secs(30),
        async || Stored(kinesis.read_all(stream).await),
        |stored| stored.0.len() >= count,
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_producers_of_four_clients_store_every_record_once_in_partition_order() {
    let kinesis = KinesisLocal::start();
    let clients = [
        ("confluent", "zstd"),
        ("java", "lz4"),
        ("franz-go", "snappy"),
        ("kafka-python", "gzip"),
    ];
    let topics: Vec<String> = clients
        .iter()
        .map(|(client, _)| format!("standalone-{client}"))
        .collect();
    for topic in &topics {
        kinesis.create_stream(topic, 2).await;
    }
    let routes: String = topics.iter().map(|t| route(t)).collect();
    let proxy = Proxy::start_standalone(&format!("{}\n{routes}", kinesis_table(&kinesis.endpoint)));
    for ((client, codec), topic) in clients.iter().zip(&topics) {
        let started = Instant::now();
        produce(client, &proxy.bootstrap(), topic, RECORDS, codec);
        let produced_in = started.elapsed();
        let stored = read_stream(&kinesis, topic, RECORDS).await;
        assert_once_in_order(topic, RECORDS, &stored);
        eprintln!(
            "{client} ({codec}): {RECORDS} records acknowledged in {produced_in:.1?}, {} in Kinesis, each once and in order",
            stored.len()
        );
    }
}

/// Runs `client`'s producer in the background, paced, logging each acknowledgement.
fn produce_in_background(bootstrap: &str, topic: &str, acked_log: &std::path::Path) -> Child {
    let mut args = produce_args(bootstrap, topic, RECORDS, "lz4");
    args.extend(["--rate".into(), "2000".into(), "--acked-log".into()]);
    args.push(acked_log.display().to_string());
    let mut cmd = client_command(
        "confluent",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.env_remove("LD_LIBRARY_PATH");
    cmd.spawn().expect("start the producer")
}

fn lines_in(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// Waits for the producer to exit and returns its JSON summary.
fn finish(mut producer: Child) -> Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    while producer.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "producer still running");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut stdout = String::new();
    let mut stderr = String::new();
    producer
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    producer
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty());
    serde_json::from_str(line.unwrap_or_default())
        .unwrap_or_else(|e| panic!("producer output {stdout:?}: {e}\nstderr:\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_a_run_loses_and_duplicates_nothing() {
    let kinesis = KinesisLocal::start();
    let topic = "standalone-restart";
    kinesis.create_stream(topic, 2).await;
    let mut proxy = Proxy::start_standalone(&format!(
        "{}\n{}",
        kinesis_table(&kinesis.endpoint),
        route(topic)
    ));
    let acked = tempfile::NamedTempFile::new().unwrap();
    let producer = produce_in_background(&proxy.bootstrap(), topic, acked.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines_in(acked.path()) < RECORDS / 3 {
        assert!(Instant::now() < deadline, "no progress before the restart");
        std::thread::sleep(Duration::from_millis(50));
    }
    let acked_before = lines_in(acked.path());
    proxy.daemon().signal("-TERM");
    proxy.daemon().wait_exit(Duration::from_secs(40));
    proxy.restart();
    let out = finish(producer);
    assert_eq!(out["error_count"], 0, "{out}");
    assert_eq!(out["produced"], RECORDS as u64, "{out}");
    let stored = read_stream(&kinesis, topic, RECORDS).await;
    assert_once_in_order(topic, RECORDS, &stored);
    eprintln!("restart after {acked_before} acknowledgements: {RECORDS} records once and in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifth_of_records_throttled_still_stores_each_once_in_order() {
    let kinesis = KinesisLocal::start();
    let topic = "standalone-throttled";
    kinesis.create_stream(topic, 2).await;
    let faults = FaultLayer::start(kinesis.endpoint.trim_start_matches("http://").to_owned()).await;
    faults.set(FaultPlan {
        throttle_entries: 0.2,
        ..FaultPlan::default()
    });
    let proxy = Proxy::start_standalone(&format!(
        "{}\n{}",
        kinesis_table(&faults.endpoint),
        route(topic)
    ));
    let started = Instant::now();
    let bootstrap = proxy.bootstrap();
    // The blocking client run goes to its own thread: the fault layer runs on this runtime.
    tokio::task::spawn_blocking(move || produce("confluent", &bootstrap, topic, RECORDS, "snappy"))
        .await
        .unwrap();
    let throttled = FaultLayer::count(&faults.counters.entries_throttled);
    assert!(throttled > 0, "the fault layer throttled nothing");
    let stored = read_stream(&kinesis, topic, RECORDS).await;
    assert_once_in_order(topic, RECORDS, &stored);
    eprintln!(
        "{throttled} entries throttled; {RECORDS} records once and in order in {:.1?}",
        started.elapsed()
    );
}

/// A Fetch v4 request for partition 0 of `topic`, as an old client would send it unasked.
fn fetch_frame(topic: &str, correlation_id: i32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&1i16.to_be_bytes()); // api key: Fetch
    body.extend_from_slice(&4i16.to_be_bytes()); // version
    body.extend_from_slice(&correlation_id.to_be_bytes());
    body.extend_from_slice(&3i16.to_be_bytes());
    body.extend_from_slice(b"raw");
    body.extend_from_slice(&(-1i32).to_be_bytes()); // replica id
    body.extend_from_slice(&500i32.to_be_bytes()); // max wait
    body.extend_from_slice(&1i32.to_be_bytes()); // min bytes
    body.extend_from_slice(&(1i32 << 20).to_be_bytes()); // max bytes
    body.push(0); // isolation level
    body.extend_from_slice(&1i32.to_be_bytes()); // one topic
    body.extend_from_slice(&(topic.len() as i16).to_be_bytes());
    body.extend_from_slice(topic.as_bytes());
    body.extend_from_slice(&1i32.to_be_bytes()); // one partition
    body.extend_from_slice(&0i32.to_be_bytes()); // partition 0
    body.extend_from_slice(&0i64.to_be_bytes()); // fetch offset
    body.extend_from_slice(&(1i32 << 20).to_be_bytes()); // partition max bytes
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_fail_fast_and_the_operator_is_told_they_read_kinesis() {
    let kinesis = KinesisLocal::start();
    let topic = "standalone-consumed";
    kinesis.create_stream(topic, 1).await;
    let mut proxy = Proxy::start_standalone(&format!(
        "{}\n{}",
        kinesis_table(&kinesis.endpoint),
        route(topic)
    ));
    // A Fetch sent unasked gets UNSUPPORTED_VERSION for its partition.
    let mut conn = TcpStream::connect(proxy.bootstrap()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(&fetch_frame(topic, 41)).unwrap();
    let mut size = [0u8; 4];
    conn.read_exact(&mut size).unwrap();
    let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
    conn.read_exact(&mut response).unwrap();
    // Correlation id, throttle time, one topic named `topic`, one partition: index, error.
    let error_at = 4 + 4 + 4 + 2 + topic.len() + 4 + 4;
    assert_eq!(&response[..4], &41i32.to_be_bytes());
    assert_eq!(
        i16::from_be_bytes([response[error_at], response[error_at + 1]]),
        35,
        "UNSUPPORTED_VERSION"
    );
    proxy.daemon().wait_for_log(
        "consumers read the streams from Kinesis now",
        Duration::from_secs(10),
    );
    // A real consumer: librdkafka (kcat) asks where the partition starts, is refused, fails
    // the partition at once, and kcat exits with the error.
    let started = Instant::now();
    let mut kcat = std::process::Command::new(kcat_bin());
    kcat.args([
        "-C",
        "-b",
        &proxy.bootstrap(),
        "-t",
        topic,
        "-o",
        "beginning",
        "-e",
    ]);
    let run = run_command(kcat, Duration::from_secs(60));
    let took = started.elapsed();
    assert!(
        !run.success() && run.stderr.contains("API version not supported"),
        "kcat did not fail clearly:\n{}",
        run.describe()
    );
    assert!(took < Duration::from_secs(10), "kcat took {took:?} to fail");
    eprintln!(
        "kcat -C failed after {took:.1?}: {}",
        run.stderr.lines().last().unwrap_or_default()
    );
}
