//! SASL_SSL through the proxy with five client families, against real Apache Kafka (issue 11,
//! tests 1 and 2): each client speaks TLS to the proxy, the proxy speaks TLS to the brokers'
//! SASL_SSL listener, and the client's SCRAM-SHA-512 (or PLAIN) exchange passes through
//! untouched on top. Every record is checked by content by the client CLIs
//! (`tests/clients/`), a wrong password must come back as an authentication error instead of a
//! hang, and no password may appear in the proxy's log at `RUST_LOG=trace`.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::tls_files::{kafka_tls, listener_tls};
use support::*;

/// The families of issue 11's test 1, by their `client_command` names.
const FAMILIES: [&str; 5] = ["confluent", "kafka-python", "java", "franz-go", "kafkajs"];

const RECORDS: i64 = 500;

/// The `--timeout` of a wrong-password run: the CLIs pass it on as the clients' delivery and
/// blocking timeouts, so a client that only gave up there would take this long.
const WRONG_PASSWORD_RUN_TIMEOUT_SECS: u64 = 60;

/// How long a client with a wrong password may take to report the authentication error.
/// librdkafka, Java, franz-go and kafkajs get it from the first SaslAuthenticate answer: 1 to 5 s
/// on an idle machine, up to 18 s seen for Java (JVM start-up) on this 2-core machine shared
/// with other test runs. 30 s (the clients' usual request.timeout.ms) is still half of the
/// timeout above, so an error that only came from giving up would not pass.
const AUTH_ERROR_WITHIN: Duration = Duration::from_secs(30);

/// kafka-python 3 retries a failed authentication until its usual `bootstrap_timeout_ms`
/// (30 s) and only then gives up (its CLI names the SASL error it logged); 15 s of slack.
const KAFKA_PYTHON_AUTH_ERROR_WITHIN: Duration = Duration::from_secs(45);

/// After this a client run counts as hung and is killed.
const HANG_LIMIT: Duration = Duration::from_secs(90);

/// A proxy with TLS toward its clients and toward Kafka's SASL_SSL listener, and the files it
/// and the clients use.
struct SecureProxy {
    proxy: Proxy,
    /// The CA that signed the proxy's and the brokers' certificates: the clients' trust anchor.
    ca: PathBuf,
    _files: tempfile::TempDir,
}

impl SecureProxy {
    /// Starts the proxy at `RUST_LOG=trace`, so that every line it can log is searched for
    /// passwords. Its own connections (discovery) authenticate with SCRAM-SHA-512 from
    /// `[kafka.sasl]`, as in production, so its log is searched for a password it holds too.
    fn start(cluster: &KafkaCluster) -> SecureProxy {
        // The child inherits it; every test in this file wants it, so the order of the tests
        // does not matter.
        std::env::set_var("RUST_LOG", "trace");
        // The proxy watches the directory of its certificate for rotations and, at trace, logs
        // every event there: the cluster's own directory, where Kafka writes all the time, would
        // fill the log with gigabytes. Copies in a quiet directory of their own instead.
        let files = tempfile::tempdir().unwrap();
        let copy = |from: &Path, name: &str| {
            let to = files.path().join(name);
            std::fs::copy(from, &to).unwrap();
            to
        };
        let tls = cluster.tls();
        let cert = copy(&tls.server_cert, "proxy.pem");
        let key = copy(&tls.server_key, "proxy.key");
        let ca = copy(&tls.ca_cert, "ca.pem");
        let password_file = files.path().join("kafka.password");
        std::fs::write(&password_file, format!("{}\n", kafka::SASL_USER.1)).unwrap();
        let proxy = Proxy::start_upstream(
            &cluster.addresses(Listener::SaslSsl),
            &cluster.node_ids(),
            &format!(
                "{}{}[kafka.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"{}\"\n\
                 password_file = {password_file:?}\n",
                listener_tls(&cert, &key, None),
                kafka_tls(cluster, ""),
                kafka::SASL_USER.0,
            ),
        );
        SecureProxy {
            proxy,
            ca,
            _files: files,
        }
    }

    /// `ARGS --bootstrap PROXY --security-protocol SASL_SSL ...` for a client CLI.
    fn client_args(&self, args: &str, mechanism: &str, password: &str) -> Vec<String> {
        let mut all: Vec<String> = words(args).into_iter().map(str::to_owned).collect();
        all.extend(
            [
                "--bootstrap",
                &self.proxy.bootstrap(),
                "--security-protocol",
                "SASL_SSL",
                "--sasl-mechanism",
                mechanism,
                "--sasl-username",
                kafka::SASL_USER.0,
                "--sasl-password",
                password,
                "--ssl-ca",
                self.ca.to_str().unwrap(),
            ]
            .map(str::to_owned),
        );
        all
    }

    /// Runs `family`'s CLI with `args` (see `client_args`); Err when it failed, hung past
    /// `HANG_LIMIT` or printed no JSON. Also returns how long it ran.
    fn run(
        &mut self,
        family: &str,
        args: &str,
        mechanism: &str,
        password: &str,
    ) -> (Result<Value, String>, Duration) {
        let args = self.client_args(args, mechanism, password);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let run = run_command(client_command(family, &args), HANG_LIMIT);
        let took = started.elapsed();
        if !self.proxy.daemon().is_running() {
            return (Err(self.exited()), took);
        }
        let result = if run.success() {
            run.json().map_err(|e| format!("{e}\n{}", run.describe()))
        } else {
            Err(run.describe())
        };
        (result, took)
    }

    /// That the proxy has exited, with the last lines of its log at info level and above, and
    /// any panic (at trace, the last lines of the log are TLS and socket details).
    fn exited(&mut self) -> String {
        let log = strip_ansi(&self.proxy.daemon().log_text());
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                [" INFO ", " WARN ", " ERROR ", "panicked"]
                    .iter()
                    .any(|marker| l.contains(marker))
            })
            .collect();
        format!(
            "the proxy exited; the last lines of its log at info and above:\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }

    /// Fails the test if any of `passwords` is in the proxy's log, as text or in the forms a
    /// logged byte buffer takes (hex, or a `Vec<u8>`'s `Debug`). The log must show trace lines,
    /// or the search proves nothing.
    fn assert_log_has_none_of(&mut self, passwords: &[&str]) {
        let log = self.proxy.daemon().log_text();
        assert!(
            log.contains(" TRACE "),
            "the proxy logged no trace lines; is RUST_LOG=trace reaching it?"
        );
        for password in passwords {
            let bytes = password.as_bytes();
            let forms = [
                password.to_string(),
                bytes.iter().map(|b| format!("{b:02x}")).collect(),
                bytes.iter().map(|b| format!("{b:02X}")).collect(),
                bytes
                    .iter()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            ];
            for form in forms {
                let lines: Vec<&str> = log.lines().filter(|l| l.contains(&form)).collect();
                assert!(
                    lines.is_empty(),
                    "the password {password:?} is in {} line(s) of the proxy's log as {form:?}, \
                     e.g.:\n{}",
                    lines.len(),
                    lines[0]
                );
            }
        }
    }
}

/// Produces `RECORDS` records with `family` through the proxy and reads them back, on a topic
/// of its own; Ok(what was measured).
fn round_trip(
    proxy: &mut SecureProxy,
    cluster: &KafkaCluster,
    family: &str,
) -> Result<String, String> {
    let topic = format!("sasl-ssl-{family}");
    cluster.create_topic(&topic, 2);
    let password = kafka::SASL_USER.1;
    let (produced, produce_took) = proxy.run(
        family,
        &format!("produce --topic {topic} --count {RECORDS}"),
        "SCRAM-SHA-512",
        password,
    );
    check_produced(&produced?, RECORDS)?;
    let (consumed, consume_took) = proxy.run(
        family,
        &format!("consume --topic {topic} --count {RECORDS} --timeout 60"),
        "SCRAM-SHA-512",
        password,
    );
    check_consumed(&consumed?, RECORDS)?;
    Ok(format!(
        "{RECORDS} records produced in {:.1} s, all {RECORDS} read back and byte-equal in {:.1} s",
        produce_took.as_secs_f64(),
        consume_took.as_secs_f64()
    ))
}

#[test]
fn five_client_families_round_trip_over_sasl_ssl_on_both_hops() {
    let cluster = KafkaCluster::shared();
    let mut proxy = SecureProxy::start(cluster);
    let mut matrix = Matrix::new("SASL_SSL (SCRAM-SHA-512) on both hops, produce and consume back");
    for family in FAMILIES {
        matrix.record(
            family,
            "round trip",
            round_trip(&mut proxy, cluster, family),
        );
    }
    // SCRAM never sends the password itself; what this shows is that the proxy's own
    // [kafka.sasl] password stays out of the log.
    proxy.assert_log_has_none_of(&[kafka::SASL_USER.1]);
    matrix.finish();
}

/// Ok when `result` is an authentication error that came within `bound`.
fn authentication_error(
    result: Result<Value, String>,
    took: Duration,
    bound: Duration,
) -> Result<String, String> {
    let v = result?;
    let errors = v["errors"].as_array().cloned().unwrap_or_default();
    let first_auth_error = errors
        .iter()
        .filter_map(Value::as_str)
        .find(|e| e.to_ascii_lowercase().contains("authentication failed"));
    match first_auth_error {
        Some(e) if num(&v, "produced") == 0 && took <= bound => Ok(format!(
            "authentication error after {:.1} s (bound {} s): {e}",
            took.as_secs_f64(),
            bound.as_secs()
        )),
        Some(_) => Err(format!(
            "authentication error after {:.1} s (bound {} s), produced {}: {v}",
            took.as_secs_f64(),
            bound.as_secs(),
            num(&v, "produced")
        )),
        None => Err(format!(
            "no authentication error after {:.1} s: {v}",
            took.as_secs_f64()
        )),
    }
}

#[test]
fn wrong_password_gets_each_family_an_authentication_error_not_a_hang() {
    let cluster = KafkaCluster::shared();
    let mut proxy = SecureProxy::start(cluster);
    let topic = "sasl-ssl-wrong-password";
    cluster.create_topic(topic, 1);
    let wrong = "not-alices-password-5c1e";
    let mut matrix = Matrix::new("wrong SCRAM-SHA-512 password over SASL_SSL");
    for family in FAMILIES {
        let (result, took) = proxy.run(
            family,
            &format!(
                "produce --topic {topic} --count 10 --timeout {WRONG_PASSWORD_RUN_TIMEOUT_SECS}"
            ),
            "SCRAM-SHA-512",
            wrong,
        );
        let bound = if family == "kafka-python" {
            KAFKA_PYTHON_AUTH_ERROR_WITHIN
        } else {
            AUTH_ERROR_WITHIN
        };
        matrix.record(
            family,
            "wrong password",
            authentication_error(result, took, bound),
        );
    }
    assert_eq!(
        cluster.offsets(topic, 0),
        (0, 0),
        "records were stored with a wrong password"
    );
    proxy.assert_log_has_none_of(&[wrong, kafka::SASL_USER.1]);
    matrix.finish();
}

/// PLAIN puts the password itself in the client's SaslAuthenticate bytes, which the proxy sees
/// in clear once it has terminated TLS: the case where logging them would leak it.
#[test]
fn plain_passwords_of_clients_never_reach_the_trace_log() {
    let cluster = KafkaCluster::shared();
    let mut proxy = SecureProxy::start(cluster);
    let topic = "sasl-ssl-plain";
    cluster.create_topic(topic, 1);
    let (produced, _) = proxy.run(
        "confluent",
        &format!("produce --topic {topic} --count 50"),
        "PLAIN",
        kafka::SASL_USER.1,
    );
    check_produced(&produced.unwrap(), 50).unwrap();
    let wrong = "plain-wrong-password-9d3a";
    let (refused, took) = proxy.run(
        "confluent",
        &format!("produce --topic {topic} --count 1"),
        "PLAIN",
        wrong,
    );
    authentication_error(refused, took, AUTH_ERROR_WITHIN).unwrap();
    proxy.assert_log_has_none_of(&[kafka::SASL_USER.1, wrong]);
}
