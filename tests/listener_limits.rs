//! Limits on what one client can make the proxy hold (issue 11, item 5 and test 7), against the
//! real Apache Kafka cluster:
//! - a client that sends half a frame is cut off at `listener.frame_timeout_ms`, while an idle
//!   client between frames is not;
//! - before SASL authentication, where `listener.sasl_required`, a frame over
//!   `listener.max_unauthenticated_frame_bytes` is refused on its size prefix, before its body
//!   is sent; after authentication the client's ~1 MB batches pass;
//! - `listener.max_connections_per_ip` refuses the connection over the limit;
//! - a broker whose proxy port cannot be opened is left out of Metadata, and the others work;
//! - under a soft open-files limit of 1,024, the proxy serves 700 connections (1,400
//!   descriptors), because it raises its soft limit to the hard one at startup, and it warns
//!   when even the hard limit is too low for `listener.max_connections`.
//!
//! Each refusal is counted in `kafka_kinesis_proxy_connections_refused_total{reason}`.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use support::metrics::{scrape, value};
use support::*;

const REFUSED: &str = "kafka_kinesis_proxy_connections_refused_total";

/// How long the proxy took to close `conn`, reading until EOF or a reset; `None` if it was
/// still open after `limit`.
fn closed_within(conn: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    conn.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// An ApiVersions v0 request frame: the smallest request every Kafka answers.
fn api_versions(correlation_id: i32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&correlation_id.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes());
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

/// Whether the proxy answers an ApiVersions on `conn`.
fn answers(conn: &mut TcpStream) -> bool {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    if conn.write_all(&api_versions(7)).is_err() {
        return false;
    }
    let mut size = [0u8; 4];
    conn.read_exact(&mut size).is_ok()
}

#[test]
fn half_a_frame_is_cut_off_at_the_deadline_and_idle_clients_are_not() {
    // About `listener.frame_timeout_ms`: set to 2 s so the test does not wait the default 30 s.
    let cluster = KafkaCluster::shared();
    let mut proxy = start_with_listener_keys(cluster, "frame_timeout_ms = 2000\n");
    let bootstrap = proxy.bootstrap();

    let mut idle = TcpStream::connect(&bootstrap).unwrap();
    let mut slow = TcpStream::connect(&bootstrap).unwrap();
    let frame = api_versions(1);
    slow.write_all(&frame[..7]).unwrap();
    let cut =
        closed_within(&mut slow, Duration::from_secs(20)).expect("half a frame must be cut off");
    assert!(
        cut >= Duration::from_millis(1500) && cut < Duration::from_secs(10),
        "cut after {cut:?}, expected about 2 s"
    );
    // The idle connection saw the same 2 s pass between frames, and stays served.
    assert!(answers(&mut idle), "an idle client is not a slow frame");

    let m = scrape(proxy.admin_port);
    assert_eq!(value(&m, REFUSED, &[("reason", "frame_timeout")]), 1.0);
    proxy.daemon().wait_for_log(
        "frame not complete 2000 ms after its first byte (listener.frame_timeout_ms)",
        Duration::from_secs(10),
    );
}

#[test]
fn unauthenticated_frame_over_the_cap_is_refused_on_its_prefix_and_authenticated_batches_pass() {
    let cluster = KafkaCluster::shared();
    let mut proxy = start_upstream_with_listener_keys(
        &cluster.addresses(Listener::SaslPlaintext),
        &cluster.node_ids(),
        "sasl_required = true\n",
    );
    let bootstrap = proxy.bootstrap();

    // Only the 4-byte size prefix of a 100 MiB frame: refused before any body byte is sent.
    let mut hostile = TcpStream::connect(&bootstrap).unwrap();
    hostile
        .write_all(&(100 * 1024 * 1024i32).to_be_bytes())
        .unwrap();
    closed_within(&mut hostile, Duration::from_secs(10))
        .expect("a 100 MiB frame before authentication must be refused early");
    // The refusal is logged as the connection closes, which the client may see first.
    proxy.daemon().wait_for_log(
        "frame of 104857600 bytes exceeds listener.max_unauthenticated_frame_bytes (524288)",
        Duration::from_secs(10),
    );

    // An authenticated client's batches of ~900 KB, over the unauthenticated cap, pass.
    let topic = "limits-authenticated-batches";
    cluster.create_topic(topic, 1);
    let mut cmd = Command::new(python());
    cmd.arg(clients_dir().join("secure_round_trip.py"))
        .args(["--bootstrap", &bootstrap, "--topic", topic])
        .args(["--count", "5000", "--timeout", "60"])
        .args(["-X", "security.protocol=SASL_PLAINTEXT"])
        .args(["-X", "sasl.mechanisms=SCRAM-SHA-512"])
        .args(["-X", &format!("sasl.username={}", kafka::SASL_USER.0)])
        .args(["-X", &format!("sasl.password={}", kafka::SASL_USER.1)])
        .args(["-X", "compression.type=none"])
        .args(["-X", "batch.size=900000"])
        .args(["-X", "linger.ms=2000"]);
    let run = run_command(cmd, Duration::from_secs(180));
    let v = run
        .json()
        .unwrap_or_else(|e| panic!("{e}\n{}", run.describe()));
    check_produced(&v, 5000).unwrap();
    check_consumed(&v, 5000).unwrap();

    let m = scrape(proxy.admin_port);
    assert_eq!(
        value(&m, REFUSED, &[("reason", "frame_too_large")]),
        1.0,
        "only the hostile frame was refused"
    );
}

#[test]
fn connections_over_the_per_ip_limit_are_refused() {
    let cluster = KafkaCluster::shared();
    let proxy = start_with_listener_keys(cluster, "max_connections_per_ip = 2\n");
    let bootstrap = proxy.bootstrap();
    // The harness's own readiness connect must have been noticed as closed first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(
        &scrape(proxy.admin_port),
        "kafka_kinesis_proxy_connections",
        &[("listener", "bootstrap")],
    ) > 0.0
    {
        assert!(
            Instant::now() < deadline,
            "readiness connection never closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut first = TcpStream::connect(&bootstrap).unwrap();
    let mut second = TcpStream::connect(&bootstrap).unwrap();
    assert!(answers(&mut first) && answers(&mut second));
    let mut third = TcpStream::connect(&bootstrap).unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(10)).is_some(),
        "the third connection from 127.0.0.1 must be refused"
    );
    drop(first);
    // The slot frees when the connection closes; the proxy notices the close asynchronously.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = TcpStream::connect(&bootstrap).unwrap();
        if answers(&mut again) {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = scrape(proxy.admin_port);
    assert!(value(&m, REFUSED, &[("reason", "max_connections_per_ip")]) >= 1.0);
}

#[test]
fn a_broker_whose_port_cannot_open_is_left_out_and_the_others_work() {
    let cluster = KafkaCluster::shared3();
    let topic = "limits-broker-left-out";
    cluster.create_topic(topic, 1);
    cluster.wait_for_leaders(topic, 1, None, Duration::from_secs(30));
    let leader = cluster.leader(topic, 0).expect("leader");
    let blocked = *cluster
        .node_ids()
        .iter()
        .find(|id| **id != leader)
        .expect("another node");
    // The blocked node gets no explicit port, so it maps to the default base + node id; that
    // port is taken here first, so the proxy cannot open it.
    // (If something else holds it already, the proxy cannot open it either.)
    let _taken = std::net::TcpListener::bind(("127.0.0.1", 19100 + blocked as u16)).ok();
    let served: Vec<i32> = cluster
        .node_ids()
        .into_iter()
        .filter(|id| *id != blocked)
        .collect();
    let mut proxy = Proxy::start_upstream(&cluster.addresses(Listener::Plaintext), &served, "");
    let bootstrap = proxy.bootstrap();

    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("log_level", "3")
        .create()
        .unwrap();
    let md = client
        .fetch_metadata(Some(topic), Duration::from_secs(20))
        .expect("metadata through the proxy");
    let mut ids: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
    ids.sort();
    assert_eq!(
        ids, served,
        "only brokers whose port is open are advertised"
    );

    let out = run_client(
        "confluent",
        &[
            "produce",
            "--bootstrap",
            &bootstrap,
            "--topic",
            topic,
            "--count",
            "500",
        ],
    );
    assert_eq!(
        (num(&out, "produced"), num(&out, "error_count")),
        (500, 0),
        "{out}"
    );
    let log = proxy.daemon().log_tail(400);
    assert_eq!(
        log.matches("broker left out of responses").count(),
        1,
        "logged once, not per response:\n{log}"
    );
}

#[test]
fn a_low_soft_open_files_limit_is_raised_and_a_low_hard_one_is_reported() {
    let cluster = KafkaCluster::shared();
    let mut proxy = Proxy::start_after_shell(cluster, "ulimit -Sn 1024");
    let bootstrap = proxy.bootstrap();
    let mut open = Vec::new();
    for i in 0..700 {
        let mut conn = TcpStream::connect(&bootstrap).unwrap();
        assert!(
            answers(&mut conn),
            "connection {i} was not served (two descriptors each: 1,024 would stop near 500)"
        );
        open.push(conn);
    }
    drop(open);
    assert!(proxy.daemon().is_running());

    let mut low = Proxy::start_after_shell(cluster, "ulimit -n 1024");
    let log = low.daemon().log_text();
    assert!(
        log.contains("the open-files limit is below what listener.max_connections needs")
            && log.contains("open_files_limit=1024")
            && log.contains("needed=20256"),
        "{log}"
    );
}

/// A proxy in front of `cluster`'s PLAINTEXT listeners with `keys` added to `[listener]`.
fn start_with_listener_keys(cluster: &KafkaCluster, keys: &str) -> Proxy {
    start_upstream_with_listener_keys(
        &cluster.addresses(Listener::Plaintext),
        &cluster.node_ids(),
        keys,
    )
}

fn start_upstream_with_listener_keys(upstream: &[String], node_ids: &[i32], keys: &str) -> Proxy {
    Proxy::start_upstream_with_listener(upstream, node_ids, keys, "")
}
