//! `kafka-kinesis-proxy verify` against a cluster that only a TLS client with SCRAM-SHA-512 can
//! read (issue 13, item 1): verify reads Kafka with the proxy's own `[kafka]` settings, so it
//! must speak TLS and SCRAM itself, and decompress every codec a producer may have used.
//! A config that cannot work (a CA file that is missing or did not sign the brokers, a wrong
//! password) is exit 2 with an error naming the file or the user, within seconds.
//!
//! One single-node cluster serves every test of this binary (`KafkaCluster::shared`).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::kafka::{openssl, SASL_USER};
use support::kinesis::KinesisLocal;
use support::metrics::wait_for_sent;
use support::tls_files::{kafka_tls, listener_tls};
use support::{num, run_client, run_command, words, ClientRun, KafkaCluster, Listener, Proxy};

/// The codecs produced through the proxy: librdkafka in verify must decompress each.
const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
const RECORDS_PER_CODEC: i64 = 200;

/// How long verify may take to report a refused TLS handshake or SASL login: a few metadata
/// attempts of 2 s; librdkafka would retry for ever, and the look-up alone gives up at 30 s.
const REFUSAL_REPORTED_WITHIN: Duration = Duration::from_secs(20);

/// `[kafka.sasl]` for the cluster's SCRAM-SHA-512 user, its password in `password_file`.
fn kafka_sasl(password_file: &Path) -> String {
    format!(
        "[kafka.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"{}\"\npassword_file = {password_file:?}\n",
        SASL_USER.0
    )
}

/// Runs `verify` on `topic` over the last 10 minutes with nothing left to settle (the tests
/// wait for the mirror), with the AWS settings of kinesis-local.
fn run_verify(config: &Path, topic: &str, extra: &[&str]) -> ClientRun {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kafka-kinesis-proxy"));
    cmd.arg("verify")
        .arg("--config")
        .arg(config)
        .args(["--topic", topic, "--since", "10m", "--settle", "0s"])
        .args(extra)
        .envs(KinesisLocal::aws_env());
    let run = run_command(cmd, Duration::from_secs(120));
    assert!(!run.timed_out, "verify timed out: {}", run.describe());
    run
}

/// verify's exit code and JSON report, with its output for assertion messages.
fn verify_report(config: &Path, topic: &str) -> (Option<i32>, Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let run = run_verify(config, topic, &["--json", json.to_str().unwrap()]);
    let report = std::fs::read_to_string(&json)
        .map(|text| serde_json::from_str(&text).expect("report is JSON"))
        .unwrap_or_else(|e| panic!("no report ({e}): {}", run.describe()));
    (run.status, report, run.describe())
}

/// That `report` has these counts, and every other count at zero.
fn assert_counts(report: &Value, nonzero: &[(&str, i64)], run: &str) {
    for (name, _) in nonzero {
        assert!(report.get(name).is_some(), "no `{name}`: {report:#}");
    }
    let counts = report
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "examples");
    for name in counts {
        let want = nonzero.iter().find(|(n, _)| n == name).map_or(0, |n| n.1);
        assert_eq!(num(report, name), want, "{name}: {report:#}\n{run}");
    }
}

/// Produces `count` records of the shared generator to `topic` through `bootstrap`, with the
/// client options `extra`.
fn produce(bootstrap: &str, topic: &str, count: i64, extra: &[&str]) {
    let count_arg = count.to_string();
    let mut args = vec!["produce", "--bootstrap", bootstrap, "--topic", topic];
    args.extend(["--count", &count_arg]);
    args.extend(extra);
    let out = run_client("confluent", &args);
    assert_eq!(num(&out, "produced"), count, "{extra:?}: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_reads_a_sasl_ssl_cluster_with_every_codec() {
    let cluster = KafkaCluster::shared();
    let tls = cluster.tls();
    let topic = "verify-sasl-ssl";
    let stream = "verify-sasl-ssl-stream";
    let kinesis = KinesisLocal::start();
    kinesis.create_stream(stream, 2).await;
    let files = tempfile::tempdir().unwrap();
    let password_file = files.path().join("kafka.password");
    std::fs::write(&password_file, SASL_USER.1).unwrap();
    // TLS on both hops and SCRAM-SHA-512 toward the brokers: the proxy's [kafka] is all that
    // verify is given.
    let proxy = Proxy::start_upstream(
        &cluster.addresses(Listener::SaslSsl),
        &cluster.node_ids(),
        &format!(
            "{}{}{}{}",
            listener_tls(&tls.server_cert, &tls.server_key, None),
            kafka_tls(cluster, ""),
            kafka_sasl(&password_file),
            kinesis.mirror_config(topic, stream, 100.0),
        ),
    );
    cluster.create_topic(topic, 3);
    let ca = tls.ca_cert.to_str().unwrap();
    let security = [
        "--security-protocol",
        "SASL_SSL",
        "--sasl-mechanism",
        "SCRAM-SHA-512",
        "--sasl-username",
        SASL_USER.0,
        "--sasl-password",
        SASL_USER.1,
        "--ssl-ca",
        ca,
    ];
    for codec in CODECS {
        let extra = [&["--codec", codec][..], &security].concat();
        produce(&proxy.bootstrap(), topic, RECORDS_PER_CODEC, &extra);
    }
    let produced = RECORDS_PER_CODEC * CODECS.len() as i64;
    wait_for_sent(proxy.admin_port, produced as usize, Duration::from_secs(60)).await;

    let started = Instant::now();
    let (status, report, run) = verify_report(&proxy.config_path, topic);
    let took = started.elapsed();
    assert_eq!(status, Some(0), "{run}");
    assert_counts(
        &report,
        &[
            ("kafka_records", produced),
            ("expected", produced),
            ("found", produced),
            ("matched", produced),
        ],
        &run,
    );
    eprintln!("verify over SASL_SSL: {produced} records clean in {took:.1?}");

    // One more record straight to Kafka (its PLAINTEXT listener), past the proxy: missing.
    produce(&cluster.bootstrap(), topic, 1, &[]);
    let (status, report, run) = verify_report(&proxy.config_path, topic);
    assert_eq!(status, Some(1), "{run}");
    assert_counts(
        &report,
        &[
            ("kafka_records", produced + 1),
            ("expected", produced + 1),
            ("found", produced),
            ("matched", produced),
            ("missing", 1),
        ],
        &run,
    );
    let missing = &report["examples"]["missing"];
    assert_eq!(missing[0]["key"], "key-000000", "{report:#}");
}

/// A config for verify alone (no proxy runs): the cluster's SASL_SSL listener with `ca` as
/// `kafka.tls.ca` and `password` for the SCRAM user, in `dir`.
fn secure_config(
    cluster: &KafkaCluster,
    dir: &Path,
    ca: &Path,
    password: &str,
) -> std::path::PathBuf {
    let password_file = dir.join("kafka.password");
    std::fs::write(&password_file, password).unwrap();
    let servers: Vec<String> = cluster
        .addresses(Listener::SaslSsl)
        .iter()
        .map(|a| format!("{a:?}"))
        .collect();
    let config = dir.join("verify.toml");
    std::fs::write(
        &config,
        format!(
            "[listener]\n[kafka]\nbootstrap_servers = [{}]\n[kafka.tls]\nca = {ca:?}\n{}\
             [spool]\ndir = {:?}\n[[mirror]]\ntopic = \"verify-refused\"\nstream = \"verify-refused-stream\"\npercent = 100.0\n",
            servers.join(", "),
            kafka_sasl(&password_file),
            dir.join("spool"),
        ),
    )
    .unwrap();
    config
}

/// verify with `config` fails with exit 2 within [`REFUSAL_REPORTED_WITHIN`], its error
/// naming each of `named`; returns the error output.
fn assert_refused(config: &Path, named: &[&str]) -> String {
    let started = Instant::now();
    let run = run_verify(config, "verify-refused", &[]);
    let took = started.elapsed();
    assert_eq!(run.status, Some(2), "{}", run.describe());
    for name in named {
        assert!(run.stderr.contains(name), "no `{name}`: {}", run.describe());
    }
    assert!(
        took < REFUSAL_REPORTED_WITHIN,
        "{took:?}: {}",
        run.describe()
    );
    eprintln!("refused in {took:.1?}: {}", run.stderr.trim());
    run.stderr
}

#[test]
fn a_wrong_ca_file_or_password_is_exit_2_naming_it() {
    let cluster = KafkaCluster::shared();
    cluster.create_topic("verify-refused", 1);
    let dir = tempfile::tempdir().unwrap();

    // A CA file that is not there.
    let absent = dir.path().join("no-such-ca.pem");
    let config = secure_config(cluster, dir.path(), &absent, SASL_USER.1);
    assert_refused(&config, &[absent.to_str().unwrap(), "kafka.tls.ca"]);

    // A real CA, but not the one that signed the brokers: the handshake fails.
    let other_ca = dir.path().join("other-ca.pem");
    let other_key = dir.path().join("other-ca.key");
    openssl(&words(&format!(
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=not-the-brokers-ca -keyout {} -out {}",
        other_key.display(),
        other_ca.display()
    )));
    let config = secure_config(cluster, dir.path(), &other_ca, SASL_USER.1);
    assert_refused(
        &config,
        &[other_ca.to_str().unwrap(), "certificate verify failed"],
    );

    // The right CA and a wrong password: the SCRAM login fails.
    let config = secure_config(
        cluster,
        dir.path(),
        &cluster.tls().ca_cert,
        "not-the-password",
    );
    assert_refused(&config, &["SCRAM-SHA-512", SASL_USER.0]);
}
