//! The standalone proxy: no Kafka at all, only kinesis-local and the proxy, whose routes are all
//! kinesis-only (the one setting beyond the defaults, with `partitions`). Idempotent producers
//! of four client families write through it, and every record must be in Kinesis exactly once;
//! then keyed traffic (keys repeat, so their order means something) must be in Kinesis exactly
//! once and in key order across a proxy restart and under throttling. Consumers must fail fast.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::faults::{FaultLayer, FaultPlan};
use support::kinesis::{KinesisLocal, StoredRecord};
use support::metrics::wait_for_sent;
use support::{kcat_bin, python, run_command, try_run_client, wait_until_async, Proxy};

const RECORDS: usize = 10_000;
const PARTITIONS: i32 = 4;

/// A kinesis-only route for `topic` into a stream of the same name.
fn route(topic: &str) -> String {
    format!(
        "[[mirror]]\ntopic = \"{topic}\"\nstream = \"{topic}\"\npercent = 100.0\nmode = \"kinesis-only\"\npartitions = {PARTITIONS}\n"
    )
}

/// A standalone proxy with one route, `topic`, into the Kinesis at `endpoint`.
fn standalone_proxy(endpoint: &str, topic: &str) -> Proxy {
    Proxy::start_standalone(&format!("{}\n{}", kinesis_table(endpoint), route(topic)))
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
    let joined = words.join(" ");
    let payload = &joined[..length.min(joined.len())];
    (
        format!("key-{index:06}"),
        format!("{topic}|{index}|{payload}").into_bytes(),
    )
}

/// Checks that `stored` holds records 0..count of `topic` exactly once each, byte for byte,
/// under their own keys (records.py gives every record a key of its own, so key order holds
/// trivially; the keyed-traffic tests below check it).
fn assert_each_once(topic: &str, count: usize, stored: &[StoredRecord]) {
    let mut seen = vec![0u32; count];
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
        let (key, value) = record(topic, index);
        assert_eq!(r.data, value, "record {index}'s data changed");
        assert_eq!(r.partition_key, key, "record {index}'s Kinesis key");
        seen[index] += 1;
    }
    assert_counted_once(topic, &seen);
}

/// Fails unless every entry of `seen` (how often each record was found) is 1.
fn assert_counted_once(what: &str, seen: &[u32]) {
    let missing: Vec<usize> = (0..seen.len()).filter(|i| seen[*i] == 0).collect();
    let duplicated: Vec<usize> = (0..seen.len()).filter(|i| seen[*i] > 1).collect();
    assert!(
        missing.is_empty() && duplicated.is_empty(),
        "{what}: {} missing (e.g. {:?}), {} duplicated (e.g. {:?}) of {}",
        missing.len(),
        &missing[..missing.len().min(10)],
        duplicated.len(),
        &duplicated[..duplicated.len().min(10)],
        seen.len()
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
async fn idempotent_producers_of_four_clients_store_every_record_once() {
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
        kinesis.create_stream(topic, SHARDS).await;
    }
    let routes: String = topics.iter().map(|t| route(t)).collect();
    let proxy = Proxy::start_standalone(&format!("{}\n{routes}", kinesis_table(&kinesis.endpoint)));
    for ((client, codec), topic) in clients.iter().zip(&topics) {
        let started = Instant::now();
        produce(client, &proxy.bootstrap(), topic, RECORDS, codec);
        let produced_in = started.elapsed();
        let stored = read_stream(&kinesis, topic, RECORDS).await;
        assert_each_once(topic, RECORDS, &stored);
        eprintln!(
            "{client} ({codec}): {RECORDS} records acknowledged in {produced_in:.1?}, {} in Kinesis, each once",
            stored.len()
        );
    }
}

/// Keys of the keyed traffic: each repeats RECORDS / KEYS times.
const KEYS: usize = 500;

/// Shards of each test's stream: as tests/mirror_faults.rs has them.
const SHARDS: i32 = 4;

/// Keyed, idempotent traffic in the background (scripts/demo_traffic.py, confluent-kafka):
/// record `order` i has key customer-(i % KEYS); `rate` records per second.
fn keyed_traffic(bootstrap: &str, topic: &str, rate: usize) -> Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo_traffic.py");
    Command::new(python())
        .arg(script)
        .args(["--bootstrap", bootstrap, "--topic", topic, "--idempotent"])
        .args(["--count", &RECORDS.to_string(), "--rate", &rate.to_string()])
        .args(["--keys", &KEYS.to_string()])
        .env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the keyed traffic")
}

/// The producer's summary once it has flushed everything: {"sent", "errors"}.
fn finish(producer: Child) -> Value {
    let out = producer.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("producer output: {}", String::from_utf8_lossy(&out.stdout)))
}

fn assert_all_sent(producer_summary: &Value) {
    assert_eq!(producer_summary["errors"], 0, "{producer_summary}");
    assert_eq!(
        producer_summary["sent"], RECORDS as u64,
        "{producer_summary}"
    );
}

/// Every order 0..RECORDS once, under its customer's key, and each key's orders increasing.
fn assert_keyed_once_in_order(stored: &[StoredRecord]) {
    let mut seen = vec![0u32; RECORDS];
    let mut last_of_key: BTreeMap<&str, i64> = BTreeMap::new();
    let mut out_of_order = Vec::new();
    for r in stored {
        let v: Value = serde_json::from_slice(&r.data).expect("a keyed-traffic record");
        let order = v["order"].as_i64().expect("order");
        assert_eq!(v["customer"].as_str(), Some(r.partition_key.as_str()));
        seen[order as usize] += 1;
        if let Some(previous) = last_of_key.insert(r.partition_key.as_str(), order) {
            if previous > order && out_of_order.len() < 10 {
                out_of_order.push((r.partition_key.clone(), previous, order));
            }
        }
    }
    assert_counted_once("keyed traffic", &seen);
    assert!(
        out_of_order.is_empty(),
        "records out of order within a key (key, before, after): {out_of_order:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_a_run_loses_duplicates_and_reorders_nothing() {
    let kinesis = KinesisLocal::start();
    let topic = "standalone-restart";
    kinesis.create_stream(topic, SHARDS).await;
    let mut proxy = standalone_proxy(&kinesis.endpoint, topic);
    let producer = keyed_traffic(&proxy.bootstrap(), topic, 1000);
    wait_for_sent(proxy.admin_port, RECORDS / 3, Duration::from_secs(60)).await;
    let stopped = Instant::now();
    proxy.daemon().signal("-TERM");
    proxy.daemon().wait_exit(Duration::from_secs(40));
    proxy.restart();
    let down_for = stopped.elapsed();
    assert_all_sent(&finish(producer));
    let stored = read_stream(&kinesis, topic, RECORDS).await;
    assert_keyed_once_in_order(&stored);
    eprintln!(
        "restarted (down {down_for:.1?}) after a third of the run: {RECORDS} records once and in key order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifth_of_records_throttled_still_stores_each_once_in_key_order() {
    let kinesis = KinesisLocal::start();
    let topic = "standalone-throttled";
    kinesis.create_stream(topic, SHARDS).await;
    let faults = FaultLayer::start(kinesis.endpoint.trim_start_matches("http://").to_owned()).await;
    faults.set(FaultPlan {
        throttle_entries: 0.2,
        ..FaultPlan::default()
    });
    let proxy = standalone_proxy(&faults.endpoint, topic);
    let started = Instant::now();
    let producer = keyed_traffic(&proxy.bootstrap(), topic, 1000);
    // Waited for on its own thread: the fault layer runs on this runtime.
    let out = tokio::task::spawn_blocking(move || finish(producer))
        .await
        .unwrap();
    assert_all_sent(&out);
    let throttled = FaultLayer::count(&faults.counters.entries_throttled);
    assert!(throttled > 0, "the fault layer throttled nothing");
    let stored = read_stream(&kinesis, topic, RECORDS).await;
    assert_keyed_once_in_order(&stored);
    eprintln!(
        "{throttled} entries throttled; {RECORDS} records once and in key order in {:.1?}",
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
    let mut proxy = standalone_proxy(&kinesis.endpoint, topic);
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
