//! What an operator sees of the mirror's backlog during a Kinesis outage (issue 14, item 6):
//! `/routes` shows where records wait (queued in memory, in the write-ahead log, in the
//! spools), how old the oldest undelivered one is and the durability in force; `status` sums
//! it up in one line; and once Kinesis is back, the backlog drains and every record arrives.
//!
//! Kafka is the single-node cluster shared by every test of this binary, so each test uses a
//! topic and stream of its own; each has its own kinesis-local, fault layer and proxy.

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use support::faults::{FaultPlan, FaultyKinesis};
use support::metrics::get;
use support::{check_produced, run_client, wait_until_async, words, KafkaCluster, Proxy};

/// Records produced during the outage.
const RECORDS: usize = 400;
const PARTITIONS: i32 = 2;

/// kinesis-local behind its fault layer, and the proxy mirroring topic `backlog-STREAM` to
/// `stream`.
struct Rig {
    stream: &'static str,
    behind: FaultyKinesis,
    proxy: Proxy,
}

impl Rig {
    /// The one route, with `tables` (whole TOML tables) added: the proxy's defaults otherwise.
    async fn start(stream: &'static str, tables: &str) -> Rig {
        let cluster = KafkaCluster::shared();
        let behind = FaultyKinesis::start(stream, 2).await;
        let topic = format!("backlog-{stream}");
        let proxy = Proxy::start_with(
            cluster,
            &format!(
                "[kinesis]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n\n\
                 [[mirror]]\ntopic = \"{topic}\"\nstream = \"{stream}\"\npercent = 100.0\n\n{tables}\n",
                behind.faults.endpoint
            ),
        );
        cluster.create_topic(&topic, PARTITIONS);
        Rig {
            stream,
            behind,
            proxy,
        }
    }

    fn routes(&self) -> Value {
        let (code, body) = get(self.proxy.admin_port, "/routes");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/routes: {e}: {body}"))
    }

    /// `kafka-kinesis-proxy status --once`, as an operator would run it: its stdout.
    fn status(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_kafka-kinesis-proxy"))
            .args(["status", "--once", "--interval", "0.2", "--admin"])
            .arg(format!("127.0.0.1:{}", self.proxy.admin_port))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "status failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn produce(&self, count: usize) {
        let args = format!(
            "produce --bootstrap {} --topic backlog-{} --count {count} --codec none --acks all",
            self.proxy.bootstrap(),
            self.stream
        );
        check_produced(&run_client("confluent", &words(&args)), count as i64).unwrap();
    }
}

/// The route's records waiting in the proxy: queued in memory plus spooled (bytes).
fn route_waiting(routes: &Value) -> u64 {
    let route = &routes["routes"][0];
    route["queued_records"].as_u64().unwrap() + route["spool_bytes"].as_u64().unwrap()
}

fn backlog_field(routes: &Value, field: &str) -> u64 {
    routes["backlog"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no backlog.{field} in /routes: {routes}"))
}

/// Default config (`durability = "wal"`): records produced while Kinesis is cut off show as
/// the route's backlog and in the log, with an age that grows; `status` sums it up; once
/// Kinesis is back, it drains and every record arrives once.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_backlog_shows_in_routes_and_status_and_drains_when_kinesis_returns() {
    let rig = Rig::start("outage", "").await;
    rig.behind.faults.set(FaultPlan {
        down: true,
        ..FaultPlan::default()
    });
    rig.produce(RECORDS);

    let during = wait_until_async(
        "the outage's backlog in /routes",
        Duration::from_secs(60),
        async || rig.routes(),
        |r| {
            route_waiting(r) > 0
                && backlog_field(r, "log_bytes") > 0
                && backlog_field(r, "oldest_undelivered_age_seconds") > 0
        },
    )
    .await;
    let backlog = &during["backlog"];
    assert_eq!(backlog["durability"], "wal", "{during}");
    assert_eq!(backlog["log_open"], true, "{during}");
    assert!(backlog_field(&during, "max_bytes") > 0, "{during}");
    assert!(
        backlog_field(&during, "memory_bytes") > 0,
        "records wait decoded in memory: {during}"
    );
    let first_age = backlog_field(&during, "oldest_undelivered_age_seconds");
    // Every poll's count of the route's records in memory: with `record_ttl_secs` at its
    // default (600 s) nothing is spooled yet, so all of them wait in memory, queued or in a
    // request that the outage will fail, on every poll.
    let mut in_memory = Vec::new();
    let later = wait_until_async(
        "the oldest undelivered age to grow",
        Duration::from_secs(30),
        async || {
            let routes = rig.routes();
            in_memory.push(routes["routes"][0]["queued_records"].as_u64().unwrap());
            routes
        },
        |r| backlog_field(r, "oldest_undelivered_age_seconds") > first_age,
    )
    .await;
    println!(
        "during the outage: queued_records over {} polls {in_memory:?}, spool_bytes {}, backlog {}",
        in_memory.len(),
        later["routes"][0]["spool_bytes"],
        later["backlog"]
    );
    assert!(
        in_memory.iter().all(|&n| n == RECORDS as u64),
        "every poll shows all {RECORDS} records in memory: {in_memory:?}"
    );

    let view = rig.status();
    println!("{view}");
    let line = view
        .lines()
        .find(|l| l.starts_with("backlog: "))
        .unwrap_or_else(|| panic!("no backlog line:\n{view}"));
    assert!(
        line.starts_with("backlog: wal, in memory ")
            && line.contains(", log ")
            && line.contains(" + spools ")
            && line.contains(", oldest undelivered "),
        "{line}"
    );
    assert!(
        !view.contains("write-ahead log is not open"),
        "the log is open: {view}"
    );
    assert!(view.contains("BACKLOG"), "{view}");

    rig.behind.faults.set(FaultPlan::default());
    let drained = wait_until_async(
        "the backlog to drain",
        Duration::from_secs(180),
        async || rig.routes(),
        |r| {
            route_waiting(r) == 0
                && backlog_field(r, "spool_bytes") == 0
                && backlog_field(r, "memory_bytes") == 0
                && backlog_field(r, "oldest_undelivered_age_seconds") == 0
        },
    )
    .await;
    println!("drained: {}", drained["backlog"]);
    let stored = wait_until_async(
        "every record in Kinesis",
        Duration::from_secs(60),
        async || rig.behind.kinesis.read_all(rig.stream).await,
        |stored| stored.len() >= RECORDS,
    )
    .await;
    // Record i's value is "TOPIC|i|payload" (tests/clients/records.py).
    let indices: BTreeSet<usize> = stored
        .iter()
        .map(|r| {
            let value = String::from_utf8_lossy(&r.data);
            value.split('|').nth(1).unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(
        indices,
        (0..RECORDS).collect::<BTreeSet<_>>(),
        "every record once"
    );
    assert_eq!(stored.len(), RECORDS, "no record twice");
}

/// `durability = "memory"` (the setting under test): no log, as asked, so `log_open` is
/// false and `status` raises no problem about it.
#[tokio::test(flavor = "multi_thread")]
async fn memory_mode_shows_no_log_and_no_problem() {
    let rig = Rig::start("memory", "[mirror_buffer]\ndurability = \"memory\"\n").await;
    let routes = rig.routes();
    assert_eq!(routes["backlog"]["durability"], "memory", "{routes}");
    assert_eq!(routes["backlog"]["log_open"], false, "{routes}");
    let view = rig.status();
    assert!(view.contains("\nbacklog: memory, in memory "), "{view}");
    assert!(
        !view.contains("write-ahead log is not open"),
        "memory was asked for: {view}"
    );
}
