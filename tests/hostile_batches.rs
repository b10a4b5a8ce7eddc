//! Hostile batches (test 6): small Produce batches that decode into something huge. Kafka
//! accepts each, so the proxy must mirror around them without running out of memory or
//! stalling other clients: it skips a batch over its decode limit (counted and logged as a
//! decode error), keeps its peak RSS within its configured limits plus a fixed allowance, and
//! keeps acknowledging a concurrent producer promptly throughout.

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes};
use kafka_kinesis_proxy::config::Config;
use kafka_kinesis_proxy::kafka::records::DEFAULT_MAX_DECODE_BYTES;
use kafka_kinesis_proxy::mirror::{DECODE_WINDOW, EXCHANGE_QUEUE_BYTES};
use support::kinesis::KinesisLocal;
use support::metrics::{scrape, value, wait_for};
use support::raw_produce::{self, produce_frame, RawProduce};
use support::{wait_until_async, KafkaCluster, Proxy};
use tokio::net::TcpStream;

/// What the proxy may use beyond its configured limits (README, "Memory budget").
const ALLOWANCE: u64 = 64 << 20;
const GZIP: i16 = 1;
const ZSTD: i16 = 4;

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// The start of a v2 record: its length, attributes, timestamp delta, `offset_delta`, a null
/// key and `value_len`; `rest_len` bytes (the value, and the headers) follow separately.
fn record_prefix(offset_delta: i64, value_len: i64, rest_len: usize) -> Vec<u8> {
    let mut body = vec![0u8, 0]; // attributes, timestamp delta
    put_varint(&mut body, offset_delta);
    put_varint(&mut body, -1);
    put_varint(&mut body, value_len);
    let mut out = Vec::new();
    put_varint(&mut out, (body.len() + rest_len) as i64);
    out.extend(body);
    out
}

/// A v2 batch around an already compressed records section, with a valid CRC.
fn v2_batch(codec: i16, count: i32, section: &[u8]) -> Bytes {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut after_crc = Vec::new();
    after_crc.put_i16(codec);
    after_crc.put_i32(count - 1);
    after_crc.put_i64(now);
    after_crc.put_i64(now);
    after_crc.put_i64(-1); // producer id
    after_crc.put_i16(-1);
    after_crc.put_i32(-1);
    after_crc.put_i32(count);
    after_crc.extend_from_slice(section);
    let mut out = Vec::new();
    out.put_i64(0);
    out.put_i32((4 + 1 + 4 + after_crc.len()) as i32);
    out.put_i32(-1);
    out.put_i8(2);
    out.put_u32(crc32c::crc32c(&after_crc));
    out.extend_from_slice(&after_crc);
    Bytes::from(out)
}

fn gzip_member(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// One record whose value is 1 GiB of zeros, as about 1 MB of gzip: concatenated gzip members
/// (which Kafka and the proxy both read as one stream), one per MiB.
fn gzip_bomb() -> Bytes {
    const MIB: usize = 1 << 20;
    let value_len = 1024 * MIB;
    let zeros = gzip_member(&vec![0u8; MIB]);
    let mut section = gzip_member(&record_prefix(0, value_len as i64, value_len + 1));
    for _ in 0..value_len / MIB {
        section.extend_from_slice(&zeros);
    }
    section.extend(gzip_member(&[0])); // header count
    v2_batch(GZIP, 1, &section)
}

/// Ten million records with neither key nor value, zstd-compressed.
fn ten_million_empty_records() -> Bytes {
    const COUNT: usize = 10_000_000;
    let mut plain = Vec::with_capacity(COUNT * 10);
    for i in 0..COUNT {
        plain.extend(record_prefix(i as i64, -1, 1));
        plain.push(0); // header count
    }
    v2_batch(
        ZSTD,
        COUNT as i32,
        &zstd::encode_all(&plain[..], 1).unwrap(),
    )
}

/// One record with a million headers (empty key, null value), zstd-compressed; its key and
/// value say what it is.
fn million_headers() -> Bytes {
    const COUNT: usize = 1_000_000;
    let headers = [0u8, 1].repeat(COUNT);
    let mut plain = Vec::new();
    let mut body = vec![0u8, 0, 0]; // attributes, timestamp delta, offset delta
    for field in [b"million-headers", b"million-headers"] {
        put_varint(&mut body, field.len() as i64);
        body.extend_from_slice(field);
    }
    put_varint(&mut body, COUNT as i64);
    put_varint(&mut plain, (body.len() + headers.len()) as i64);
    plain.extend(body);
    plain.extend(headers);
    v2_batch(ZSTD, 1, &zstd::encode_all(&plain[..], 3).unwrap())
}

/// Sends a Produce `frame` on `conn` and returns Kafka's error code for its one partition.
async fn produce(conn: &mut TcpStream, frame: &Bytes) -> i16 {
    let response = raw_produce::send(conn, frame).await;
    response.responses[0].partition_responses[0].error_code
}

/// The process's peak resident set (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Starts the process's peak resident set afresh from its current one.
fn reset_peak_rss(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
}

/// A producer that keeps sending one acks=1 record at a time to `partition`, and reports its
/// slowest acknowledgement once `stop` is set.
async fn steady_producer(
    bootstrap: String,
    topic: String,
    partition: i32,
    stop: Arc<AtomicBool>,
) -> (usize, Duration) {
    let mut conn = TcpStream::connect(&bootstrap).await.unwrap();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let (mut sent, mut slowest) = (0, Duration::ZERO);
    while !stop.load(Ordering::Acquire) {
        pace.tick().await;
        let frame = RawProduce {
            partition,
            acks: 1,
            ..RawProduce::new(&topic, vec![(format!("steady-{sent}"), b"v".to_vec())])
        }
        .frame();
        let started = Instant::now();
        assert_eq!(produce(&mut conn, &frame).await, 0, "steady record {sent}");
        slowest = slowest.max(started.elapsed());
        sent += 1;
    }
    (sent, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_batches_cost_bounded_memory_and_stall_nobody() {
    let (topic, stream) = ("hostile", "hostile-stream");
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    kinesis.create_stream(stream, 1).await;
    // The default config but for the route, which looks up a header, so the million-header
    // record has its headers searched.
    let route = kinesis.mirror_config(topic, stream, 100.0) + "partition_key = \"header:tenant\"\n";
    let mut proxy = Proxy::start_with(cluster, &route);
    // The ten million records take 8 MB compressed; the default limit is 1 MB.
    cluster.create_topic_with(topic, 2, &[("max.message.bytes", "16777216")]);
    let config = Config::load(&proxy.config_path).unwrap();
    // Memory the proxy may hold by its limits: records queued for Kinesis, Produce exchanges
    // waiting for or in the mirror stage, and the partitions being decoded.
    let limits = config.mirror_buffer.max_bytes
        + EXCHANGE_QUEUE_BYTES as u64
        + (DECODE_WINDOW * DEFAULT_MAX_DECODE_BYTES) as u64;
    let bound = limits + ALLOWANCE;

    // Built before the concurrent producer starts, so that its acknowledgements measure the
    // proxy and Kafka rather than this test compressing ten million records.
    let hostile: [(&str, Bytes, f64); 3] = [
        ("1 GiB gzip bomb", gzip_bomb(), 1.0),
        (
            "ten million empty records",
            ten_million_empty_records(),
            2.0,
        ),
        ("a record with a million headers", million_headers(), 2.0),
    ];
    let pid = proxy.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let steady = tokio::spawn(steady_producer(
        proxy.bootstrap(),
        topic.to_owned(),
        1,
        stop.clone(),
    ));
    // The same producer straight to Kafka: what Kafka itself makes a client wait meanwhile, on
    // a machine whose two cores Kafka spends validating ten million records.
    let direct = tokio::spawn(steady_producer(
        cluster.bootstrap(),
        topic.to_owned(),
        1,
        stop.clone(),
    ));

    let mut peaks = Vec::new();
    for (name, batch, decode_errors) in hostile {
        reset_peak_rss(pid);
        let frame = produce_frame(topic, 0, -1, batch.clone());
        let mut conn = TcpStream::connect(proxy.bootstrap()).await.unwrap();
        let code = tokio::time::timeout(Duration::from_secs(120), produce(&mut conn, &frame))
            .await
            .unwrap_or_else(|_| panic!("{name}: no answer within 120 s"));
        assert_eq!(
            code,
            0,
            "Kafka must accept the {name} ({} bytes)",
            batch.len()
        );
        // The stage is done with the batch once it counted it as a decode error, or mirrored
        // the record.
        if name.contains("million headers") {
            wait_until_async(
                "the million-header record in Kinesis",
                Duration::from_secs(60),
                async || kinesis.read_all(stream).await,
                |records| records.iter().any(|r| r.data == b"million-headers"),
            )
            .await;
        }
        wait_for(proxy.admin_port, name, Duration::from_secs(60), |m| {
            value(
                m,
                "kafka_kinesis_proxy_mirror_decode_errors_total",
                &[("topic", topic)],
            ) == decode_errors
        })
        .await;
        let peak = peak_rss(pid);
        eprintln!(
            "{name}: {} bytes, Kafka error code {code}, proxy peak RSS {} MiB (bound {} MiB)",
            batch.len(),
            peak >> 20,
            bound >> 20
        );
        peaks.push((name, peak));
    }
    stop.store(true, Ordering::Release);
    let (sent, slowest) = steady.await.unwrap();
    let (direct_sent, direct_slowest) = direct.await.unwrap();
    eprintln!(
        "concurrent producer: {sent} acks through the proxy, slowest {slowest:?}; \
         {direct_sent} straight to Kafka, slowest {direct_slowest:?}"
    );

    for (name, peak) in peaks {
        assert!(
            peak < bound,
            "{name}: peak RSS {} MiB over the limits ({} MiB) plus {} MiB",
            peak >> 20,
            limits >> 20,
            ALLOWANCE >> 20
        );
    }
    assert!(sent > 0);
    // Under 1 s; but when Kafka itself stalls longer (a loaded machine, its collector), that
    // is not the proxy's: then the proxy may add no more than this to Kafka's own slowest.
    let proxy_share = Duration::from_millis(250);
    assert!(
        slowest < Duration::from_secs(1).max(direct_slowest + proxy_share),
        "slowest ack through the proxy {slowest:?} (straight to Kafka: {direct_slowest:?})"
    );

    // Still serving: a produce goes through and is mirrored.
    let frame = RawProduce::new(topic, vec![("after".into(), b"after".to_vec())]).frame();
    let mut conn = TcpStream::connect(proxy.bootstrap()).await.unwrap();
    assert_eq!(produce(&mut conn, &frame).await, 0);
    wait_until_async(
        "the record produced afterwards in Kinesis",
        Duration::from_secs(60),
        async || kinesis.read_all(stream).await,
        |records| records.iter().any(|r| r.data == b"after"),
    )
    .await;
    assert!(proxy.daemon().is_running());

    // Each skipped batch is logged with its client, topic and partition.
    let log = proxy.daemon().log_text();
    let skipped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot decode produced records"))
        .collect();
    assert_eq!(skipped.len(), 2, "{skipped:#?}");
    for line in skipped {
        for field in [
            "client_id=raw-test",
            "client_address=127.0.0.1",
            "topic=hostile",
            "partition=0",
            "limit",
        ] {
            assert!(line.contains(field), "{field} missing from: {line}");
        }
    }
    // Every record Kafka accepted is counted, hostile or not.
    let accepted = (1 + 10_000_000 + 1 + sent + 1) as f64;
    wait_for(
        proxy.admin_port,
        "every record counted",
        Duration::from_secs(30),
        |m| {
            value(
                m,
                "kafka_kinesis_proxy_kafka_records_total",
                &[("topic", topic), ("result", "ok")],
            ) == accepted
        },
    )
    .await;
    // The skipped records count against the dual write: the ratio must not read 1.0.
    let m = scrape(proxy.admin_port);
    let undecodable = value(
        &m,
        "kafka_kinesis_proxy_mirror_records_total",
        &[("topic", topic), ("result", "undecodable")],
    );
    assert!(undecodable >= 2.0, "{undecodable}");
    let ratio = value(
        &m,
        "kafka_kinesis_proxy_dual_write_success_ratio",
        &[("topic", topic)],
    );
    assert!(
        ratio < 0.5,
        "dual-write ratio {ratio} hides the skipped batches"
    );
}
