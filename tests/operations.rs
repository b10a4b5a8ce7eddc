//! Operating a cutover: the ramp is hot-reloaded under live traffic, bad edits are refused,
//! `/readyz/mirror` follows the Kinesis emulator while `/readyz` follows Kafka only, and `/clients` tells who produces what.
//!
//! Kafka is the single-node Apache Kafka cluster shared by every test of this binary; each test
//! has a topic, an emulator and a proxy of its own.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::kinesis::KinesisLocal;
use support::metrics::{get, scrape, value};
use support::{python, KafkaCluster, Proxy};

fn json(port: u16, path: &str) -> Value {
    serde_json::from_str(&get(port, path).1).unwrap()
}

/// kinesis-local with `stream`, and a proxy in front of the shared cluster routing `topic`
/// (6 partitions, created here) to it at `percent`.
fn setup(stream: &str, topic: &str, percent: f64) -> (KinesisLocal, Proxy) {
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(kinesis.create_stream(stream, 4));
    let proxy = Proxy::start_with(cluster, &kinesis.mirror_config(topic, stream, percent));
    cluster.create_topic(topic, 6);
    (kinesis, proxy)
}

/// The demo's steady producer: one connection for its whole life.
fn traffic(bootstrap: &str, topic: &str, extra: &[&str]) -> Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo_traffic.py");
    Command::new(python())
        .arg(script)
        .args([
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--rate",
            "400",
            "--client-id",
            "ramp-producer",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stops the producer with SIGTERM (it flushes and prints its totals).
fn stop(child: Child) -> Value {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("traffic output: {}", String::from_utf8_lossy(&out.stdout)))
}

fn counts(m: &BTreeMap<String, f64>, topic: &str) -> (f64, f64) {
    let sent = value(
        m,
        "kafka_kinesis_proxy_mirror_records_total",
        &[("topic", topic), ("result", "sent")],
    );
    let skipped = value(
        m,
        "kafka_kinesis_proxy_mirror_records_total",
        &[("topic", topic), ("result", "skipped")],
    );
    (sent, skipped)
}

fn ramp_client(admin_port: u16) -> Value {
    let clients = json(admin_port, "/clients");
    clients["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == "ramp-producer")
        .cloned()
        .unwrap_or_else(|| panic!("ramp-producer not in /clients: {clients}"))
}

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    wait_until_for(what, Duration::from_secs(30), done)
}

fn wait_until_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn live_reload_ramps_the_fraction_without_errors_or_reconnects() {
    let (_kinesis, mut proxy) = setup("ramp", "ramp", 10.0);
    let admin = proxy.admin_port;
    let producer = traffic(
        &proxy.bootstrap(),
        "ramp",
        &["--codec", "zstd", "--idempotent", "--keys", "100000"],
    );

    std::thread::sleep(Duration::from_secs(8));
    let before = scrape(admin);
    let connections_before = ramp_client(admin)["connections_total"].as_u64().unwrap();
    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(
        &proxy.config_path,
        config.replace("percent = 10.0", "percent = 50.0"),
    )
    .unwrap();
    wait_until("the reload", || {
        value(
            &scrape(admin),
            "kafka_kinesis_proxy_config_reloads_total",
            &[("result", "ok")],
        ) >= 1.0
    });
    let at_reload = scrape(admin);
    std::thread::sleep(Duration::from_secs(8));
    let after = scrape(admin);
    let client = ramp_client(admin);
    let outcome = stop(producer);

    let (sent, skipped) = counts(&before, "ramp");
    let fraction_before = sent / (sent + skipped);
    let (s0, k0) = counts(&at_reload, "ramp");
    let (s1, k1) = counts(&after, "ramp");
    let fraction_after = (s1 - s0) / ((s1 - s0) + (k1 - k0));
    println!(
        "mirrored fraction: {:.3} at 10% ({} records), {:.3} at 50% ({} records)",
        fraction_before,
        sent + skipped,
        fraction_after,
        (s1 - s0) + (k1 - k0)
    );
    assert!((fraction_before - 0.10).abs() < 0.03, "{fraction_before}");
    assert!((fraction_after - 0.50).abs() < 0.05, "{fraction_after}");
    assert_eq!(
        value(
            &after,
            "kafka_kinesis_proxy_mirror_percent",
            &[("topic", "ramp")]
        ),
        50.0
    );

    assert_eq!(outcome["errors"], 0, "the producer saw errors: {outcome}");
    assert!(outcome["sent"].as_u64().unwrap() > 4000, "{outcome}");
    assert_eq!(
        client["connections_total"].as_u64().unwrap(),
        connections_before,
        "the reload must not reconnect clients: {client}"
    );
    // The inventory reports the producer as configured.
    assert_eq!(client["codecs"], serde_json::json!(["zstd"]), "{client}");
    assert_eq!(client["idempotent"], true, "{client}");
    assert_eq!(client["acks"], serde_json::json!([-1]), "{client}");
    assert!(
        client["records_per_topic"]["ramp"].as_u64().unwrap() > 4000,
        "{client}"
    );
    assert!(
        client["api_versions"]["Produce"]
            .as_array()
            .is_some_and(|v| !v.is_empty()),
        "{client}"
    );
    let log = proxy.daemon().log_tail(400);
    assert!(log.contains("config reloaded"), "{log}");
}

#[test]
fn invalid_edit_is_rejected_whole_and_restart_only_settings_are_reported() {
    let (_kinesis, mut proxy) = setup("guarded", "guarded", 10.0);
    let admin = proxy.admin_port;
    let original = std::fs::read_to_string(&proxy.config_path).unwrap();

    // An invalid value alongside a valid-looking change: nothing of it applies.
    let bad = original.replace("percent = 10.0", "percent = 150.0");
    std::fs::write(&proxy.config_path, &bad).unwrap();
    wait_until("the rejection", || {
        value(
            &scrape(admin),
            "kafka_kinesis_proxy_config_reloads_total",
            &[("result", "error")],
        ) >= 1.0
    });
    let m = scrape(admin);
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_mirror_percent",
            &[("topic", "guarded")]
        ),
        10.0,
        "old percent stays in force"
    );
    let line = bad.lines().position(|l| l.starts_with("percent")).unwrap() + 1;
    let log = proxy.daemon().log_tail(400);
    let located = format!("{}:{line}: mirror.percent", proxy.config_path.display());
    assert!(log.contains(&located), "expected `{located}` in:\n{log}");

    // A listener change needs a restart: reported, not applied; the route change still applies.
    let restart = original
        .replace("percent = 10.0", "percent = 20.0")
        .replace(
            &format!("bootstrap_port = {}", proxy.bootstrap_port),
            "bootstrap_port = 1",
        );
    std::fs::write(&proxy.config_path, restart).unwrap();
    wait_until("the partial reload", || {
        value(
            &scrape(admin),
            "kafka_kinesis_proxy_config_reloads_total",
            &[("result", "ok")],
        ) >= 1.0
    });
    let m = scrape(admin);
    assert_eq!(
        value(
            &m,
            "kafka_kinesis_proxy_mirror_percent",
            &[("topic", "guarded")]
        ),
        20.0
    );
    assert_eq!(
        value(&m, "kafka_kinesis_proxy_config_restart_required", &[]),
        1.0
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", proxy.bootstrap_port)).is_ok(),
        "the listener is untouched"
    );
    let log = proxy.daemon().log_tail(400);
    assert!(
        log.contains("section=\"listener\"") && log.contains("needs restart"),
        "{log}"
    );
    assert_eq!(
        m.keys()
            .filter(|k| k.starts_with("kafka_kinesis_proxy_config_info"))
            .count(),
        1,
        "exactly one config hash in force"
    );
}

/// `/readyz` answers for Kafka only: a load balancer must not pull a proxy whose Kafka path
/// works because Kinesis is down. `/readyz/mirror` answers for the streams.
#[test]
fn readyz_mirror_follows_the_kinesis_emulator_and_readyz_does_not() {
    let (kinesis, proxy) = setup("ready", "ready", 100.0);
    let admin = proxy.admin_port;
    let readiness = || (get(admin, "/readyz").0, get(admin, "/readyz/mirror").0);
    wait_until("ready", || readiness() == (200, 200));
    let routes = json(admin, "/routes");
    assert_eq!(routes["routes"][0]["stream"], "ready", "{routes}");
    assert_eq!(routes["routes"][0]["open_shards"], 4, "{routes}");

    let port = kinesis.port;
    drop(kinesis);
    // Without traffic the stream is probed after 30 s without an answer.
    wait_until_for(
        "/readyz/mirror 503 after the emulator stopped",
        Duration::from_secs(60),
        || {
            let (kafka, mirror) = readiness();
            assert_eq!(kafka, 200, "/readyz answers for Kafka only");
            mirror == 503
        },
    );
    let (_, body) = get(admin, "/readyz/mirror");
    assert!(body.contains("stream `ready`"), "{body}");

    let revived = KinesisLocal::start_on(port);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(revived.create_stream("ready", 4));
    // Probes back off to 30 s after errors.
    wait_until_for(
        "/readyz/mirror 200 after the emulator came back",
        Duration::from_secs(60),
        || readiness() == (200, 200),
    );
    assert_eq!(get(admin, "/livez").0, 200);
}
