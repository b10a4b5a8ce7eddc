//! Streams and credentials per route, on real parts: Apache Kafka 4.1, kinesis-local (which
//! keeps each region's streams apart and takes StreamARN parameters) and moto's STS (which
//! answers AssumeRole and keeps a record of every role it was asked for).
//!
//! One single-node cluster serves every test of this binary; each test has its own topics,
//! kinesis-local and proxy.

mod support;

use std::process::Command;
use std::time::Duration;

use md5::Digest;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::Value;
use support::faults::{FaultLayer, FaultPlan};
use support::kinesis::{client_in, create_stream_at, KinesisLocal, StoredRecord};
use support::metrics::{get, value, wait_for};
use support::{free_port, num, python, run_client, shard_for, Daemon, KafkaCluster, Proxy};

/// The account kinesis-local's streams belong to.
const ACCOUNT: &str = "000000000000";
const ROLE: &str = "arn:aws:iam::123456789012:role/kinesis-mirror";

/// moto's server on loopback, for STS.
struct Moto {
    port: u16,
    _daemon: Daemon,
}

impl Moto {
    fn start() -> Moto {
        let port = free_port();
        let mut cmd = Command::new(python());
        cmd.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ]);
        let mut daemon = Daemon::start("moto", cmd);
        daemon.wait_for_port(port, Duration::from_secs(60));
        Moto {
            port,
            _daemon: daemon,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The (role ARN, session name) of every AssumeRole moto answered.
    fn assumed_roles(&self) -> Vec<(String, String)> {
        let (code, body) = get(self.port, "/moto-api/data.json");
        assert_eq!(code, 200, "{body}");
        let data: Value = serde_json::from_str(&body).unwrap();
        data["sts"]["AssumedRole"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                (text("role_arn"), text("session_name"))
            })
            .collect()
    }
}

fn stream_arn(region: &str, name: &str) -> String {
    format!("arn:aws:kinesis:{region}:{ACCOUNT}:stream/{name}")
}

/// `[kinesis]` for `kinesis` in us-east-1, then `routes`.
fn config(kinesis: &KinesisLocal, routes: &str) -> String {
    format!(
        "[kinesis]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nlinger_ms = 20\n\n{routes}",
        kinesis.endpoint
    )
}

async fn create_stream(kinesis: &KinesisLocal, region: &str, name: &str, shards: i32) {
    create_stream_at(&client_in(&kinesis.endpoint, region), name, shards).await;
}

async fn read_stream(kinesis: &KinesisLocal, region: &str, name: &str) -> Vec<StoredRecord> {
    kinesis
        .read_all_with(&client_in(&kinesis.endpoint, region), name)
        .await
}

/// Produces `count` records to `topic` through the proxy and waits until the mirror has sent
/// `sent_after` records in all.
async fn produce(proxy: &Proxy, topic: &str, count: usize, sent_after: usize) {
    produce_through(proxy, topic, count);
    wait_sent(proxy, sent_after).await;
}

/// Produces `count` records to `topic` through the proxy.
fn produce_through(proxy: &Proxy, topic: &str, count: usize) {
    let out = run_client(
        "confluent",
        &[
            "produce",
            "--bootstrap",
            &proxy.bootstrap(),
            "--topic",
            topic,
            "--count",
            &count.to_string(),
        ],
    );
    assert_eq!(num(&out, "produced"), count as i64, "{out}");
}

/// Waits until the mirror has sent `count` records in all.
async fn wait_sent(proxy: &Proxy, count: usize) {
    wait_count(
        proxy,
        "kafka_kinesis_proxy_mirror_records_total",
        "sent",
        count,
    )
    .await;
}

/// Waits until `metric{result}` reaches `count`.
async fn wait_count(proxy: &Proxy, metric: &str, result: &str, count: usize) {
    wait_for(
        proxy.admin_port,
        &format!("{metric}{{result=\"{result}\"}} >= {count}"),
        Duration::from_secs(60),
        |m| value(m, metric, &[("result", result)]) >= count as f64,
    )
    .await;
}

fn route_view(proxy: &Proxy, topic: &str) -> Value {
    let (_, body) = get(proxy.admin_port, "/routes");
    let routes: Value = serde_json::from_str(&body).unwrap();
    routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["topic"] == topic)
        .unwrap_or_else(|| panic!("no route of {topic}: {body}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_by_name_and_a_route_by_arn_through_an_assumed_role_reach_their_own_streams() {
    const COUNT: usize = 200;
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    let moto = Moto::start();
    // The same name in two regions: only the route's own region may receive its records.
    create_stream(&kinesis, "us-east-1", "accounts", 2).await;
    create_stream(&kinesis, "eu-west-1", "accounts", 1).await;
    let by_arn = stream_arn("eu-west-1", "accounts");
    let routes = format!(
        "[[mirror]]\ntopic = \"accounts-by-name\"\nstream = \"accounts\"\npercent = 100.0\n\n\
         [[mirror]]\ntopic = \"accounts-by-arn\"\nstream = \"{by_arn}\"\nrole_arn = \"{ROLE}\"\npercent = 100.0\n"
    );
    let proxy = Proxy::start_with_env(
        cluster,
        &config(&kinesis, &routes),
        &[("AWS_ENDPOINT_URL_STS", &moto.endpoint())],
    );
    cluster.create_topic("accounts-by-name", 2);
    cluster.create_topic("accounts-by-arn", 2);
    produce(&proxy, "accounts-by-name", COUNT, COUNT).await;
    produce(&proxy, "accounts-by-arn", COUNT, 2 * COUNT).await;

    let home = read_stream(&kinesis, "us-east-1", "accounts").await;
    let away = read_stream(&kinesis, "eu-west-1", "accounts").await;
    assert_eq!(
        (home.len(), away.len()),
        (COUNT, COUNT),
        "each route's records in its own region's stream, none in the other"
    );
    let assumed = moto.assumed_roles();
    assert!(
        assumed
            .iter()
            .any(|(role, session)| role == ROLE && session == "kafka-kinesis-proxy"),
        "the proxy assumed the route's role through STS: {assumed:?}"
    );
    let label = format!("{by_arn} as {ROLE}");
    let metrics = support::metrics::scrape(proxy.admin_port);
    assert_eq!(
        value(
            &metrics,
            "kafka_kinesis_proxy_mirror_records_total",
            &[("stream", &label), ("result", "sent")]
        ),
        COUNT as f64,
        "metrics name the stream by its label"
    );
    let view = route_view(&proxy, "accounts-by-arn");
    assert_eq!(view["stream_arn"], by_arn.as_str(), "{view}");
    assert_eq!(view["region"], "eu-west-1", "{view}");
    assert_eq!(view["role_arn"], ROLE, "{view}");
    assert_eq!(view["stream"], label.as_str(), "{view}");
    let view = route_view(&proxy, "accounts-by-name");
    assert_eq!(
        (&view["stream_arn"], &view["region"], &view["role_arn"]),
        (&Value::Null, &Value::Null, &Value::Null),
        "{view}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_moves_a_route_to_another_region_then_to_an_arn_live() {
    const COUNT: usize = 50;
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    create_stream(&kinesis, "us-east-1", "moving", 1).await;
    create_stream(&kinesis, "eu-west-1", "moving", 1).await;
    create_stream(&kinesis, "ap-south-1", "moved", 1).await;
    let route = |keys: &str| {
        config(
            &kinesis,
            &format!("[[mirror]]\ntopic = \"moving\"\npercent = 100.0\n{keys}"),
        )
    };
    let proxy = Proxy::start_with(cluster, &route("stream = \"moving\"\n"));
    cluster.create_topic("moving", 2);
    produce(&proxy, "moving", COUNT, COUNT).await;

    let stages = [
        (
            "stream = \"moving\"\nregion = \"eu-west-1\"\n".to_owned(),
            "eu-west-1",
            "moving",
        ),
        (
            format!("stream = \"{}\"\n", stream_arn("ap-south-1", "moved")),
            "ap-south-1",
            "moved",
        ),
    ];
    let mut keys_in_force = "stream = \"moving\"\n".to_owned();
    for (reloads, (keys, region, stream)) in (1usize..).zip(stages) {
        let text = std::fs::read_to_string(&proxy.config_path).unwrap();
        std::fs::write(&proxy.config_path, text.replace(&keys_in_force, &keys)).unwrap();
        keys_in_force = keys;
        wait_count(
            &proxy,
            "kafka_kinesis_proxy_config_reloads_total",
            "ok",
            reloads,
        )
        .await;
        produce(&proxy, "moving", COUNT, COUNT * (reloads + 1)).await;
        assert_eq!(
            read_stream(&kinesis, region, stream).await.len(),
            COUNT,
            "after reload {reloads}, the records went to {stream} in {region}"
        );
    }
    assert_eq!(
        read_stream(&kinesis, "us-east-1", "moving").await.len(),
        COUNT,
        "only the records from before the first reload stayed in the first region"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shard_for_names_the_shard_the_mirror_sent_a_transformed_key_to() {
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    create_stream(&kinesis, "us-east-1", "placed", 8).await;
    let routes = "[[mirror]]\ntopic = \"placed\"\nstream = \"placed\"\npercent = 100.0\n";
    let proxy = Proxy::start_with(cluster, &config(&kinesis, routes));
    cluster.create_topic("placed", 2);
    // Keys over Kinesis' 256-character limit become `md5:` digests; keys that are not UTF-8
    // are hex-encoded. Either way Kinesis routes by the transformed key, not the Kafka key.
    let long_keys: Vec<Vec<u8>> = (0..20)
        .map(|i| format!("{i:03}-{}", "k".repeat(300)).into_bytes())
        .collect();
    let binary_keys: Vec<Vec<u8>> = (0..20u8).map(|i| vec![0xff, i, 0xfe]).collect();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", proxy.bootstrap())
        .set("log_level", "3")
        .create()
        .expect("rdkafka producer");
    for key in long_keys.iter().chain(&binary_keys) {
        producer
            .send(BaseRecord::to("placed").key(key).payload("v"))
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("acknowledged");
    let total = long_keys.len() + binary_keys.len();
    wait_sent(&proxy, total).await;
    let stored = read_stream(&kinesis, "us-east-1", "placed").await;
    assert_eq!(stored.len(), total);

    let shard_for = |args: &[&str]| {
        let (shard, _hash) = shard_for(&proxy.config_path, args);
        shard
    };
    for key in &long_keys {
        let text = std::str::from_utf8(key).unwrap();
        let digest = format!("md5:{}", hex::encode(md5::Md5::digest(key)));
        let landed = &stored
            .iter()
            .find(|r| r.partition_key == digest)
            .unwrap_or_else(|| panic!("no record keyed {digest}"))
            .shard_id;
        // `--stream` and `--key` as before routes had keys of their own: the same answer.
        assert_eq!(&shard_for(&["--stream", "placed", "--key", text]), landed);
        assert_eq!(&shard_for(&["--topic", "placed", "--key", text]), landed);
    }
    for key in &binary_keys {
        let hex_key = key.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let landed = &stored
            .iter()
            .find(|r| r.partition_key == hex_key)
            .unwrap_or_else(|| panic!("no record keyed {hex_key}"))
            .shard_id;
        assert_eq!(
            &shard_for(&["--topic", "placed", "--key-hex", &hex_key]),
            landed
        );
    }
}

/// A spool left by a route of another region, whose route was then removed: records
/// acknowledged during an outage, SIGTERM, the route gone from the config, Kinesis back, and a
/// restart. The spool's own folder (not the plain name's) holds them, and its entries' label
/// says the region, so they are delivered to that region's stream, not to the same-named
/// stream of the default region.
#[tokio::test(flavor = "multi_thread")]
async fn a_stranded_spool_of_another_region_is_delivered_to_that_region() {
    const COUNT: usize = 300;
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    create_stream(&kinesis, "us-east-1", "stranded", 1).await;
    create_stream(&kinesis, "eu-west-1", "stranded", 1).await;
    let faults = FaultLayer::start(kinesis.endpoint.trim_start_matches("http://").to_owned()).await;
    let route = "[[mirror]]\ntopic = \"stranded\"\nstream = \"stranded\"\nregion = \"eu-west-1\"\npercent = 100.0\n";
    let text = format!(
        "shutdown_grace_secs = 2\n[kinesis]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nlinger_ms = 20\n\n{route}",
        faults.endpoint
    );
    let mut proxy = Proxy::start_with(cluster, &text);
    cluster.create_topic("stranded", 2);
    faults.set(FaultPlan {
        down: true,
        ..FaultPlan::default()
    });
    produce_through(&proxy, "stranded", COUNT);
    wait_count(
        &proxy,
        "kafka_kinesis_proxy_kafka_records_total",
        "ok",
        COUNT,
    )
    .await;
    proxy.daemon().signal("-TERM");
    assert_eq!(proxy.daemon().wait_exit(Duration::from_secs(30)), Some(0));
    let spool = proxy.config_path.parent().unwrap().join("spool");
    let folders: Vec<String> = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // The write-ahead log lives beside the streams' spools.
        .filter(|name| name != "wal")
        .collect();
    assert!(
        folders.len() == 1 && folders[0].starts_with("stranded@"),
        "the region's stream has a folder of its own: {folders:?}"
    );

    let config = std::fs::read_to_string(&proxy.config_path).unwrap();
    std::fs::write(&proxy.config_path, config.replace(route, "")).unwrap();
    faults.set(FaultPlan::default());
    proxy.restart();
    wait_sent(&proxy, COUNT).await;
    assert_eq!(
        (
            read_stream(&kinesis, "eu-west-1", "stranded").await.len(),
            read_stream(&kinesis, "us-east-1", "stranded").await.len()
        ),
        (COUNT, 0),
        "delivered to the spool's own region"
    );
}

/// A role that cannot be assumed (STS does not answer) marks the route's stream unhealthy,
/// and `/readyz/mirror` says the credentials are why, while `/readyz` (Kafka) stays ready.
#[tokio::test(flavor = "multi_thread")]
async fn a_role_that_cannot_be_assumed_is_named_in_the_mirrors_readiness() {
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    create_stream(&kinesis, "us-east-1", "unassumed", 1).await;
    let routes = format!(
        "[[mirror]]\ntopic = \"unassumed\"\nstream = \"unassumed\"\nrole_arn = \"{ROLE}\"\npercent = 100.0\n"
    );
    let no_sts = format!("http://127.0.0.1:{}", free_port());
    let proxy = Proxy::start_with_env(
        cluster,
        &config(&kinesis, &routes),
        &[("AWS_ENDPOINT_URL_STS", &no_sts)],
    );
    let (_, body) = support::wait_until_async(
        "the mirror unready for want of credentials",
        Duration::from_secs(60),
        async || get(proxy.admin_port, "/readyz/mirror"),
        |(code, body)| *code == 503 && body.to_lowercase().contains("credentials"),
    )
    .await;
    assert!(body.contains(&format!("unassumed as {ROLE}")), "{body}");
    assert_eq!(get(proxy.admin_port, "/readyz").0, 200, "Kafka is fine");
}
