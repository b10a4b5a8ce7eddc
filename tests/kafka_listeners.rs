//! The test cluster's security listeners work as a client of a secured production cluster
//! would use them, so the security tests stand on solid ground. The client is confluent-kafka
//! (librdkafka 2.x, `tests/clients/secure_round_trip.py`):
//! - directly: PLAINTEXT; SASL_PLAINTEXT with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512; SSL
//!   verified against the test CA; SASL_SSL with SCRAM-SHA-512; a wrong password is refused;
//! - through the proxy in front of the SASL_PLAINTEXT listener: PLAIN and both SCRAM mechanisms
//!   pass through on each client's own upstream connection.
//!
//! Debian's kcat (librdkafka 2.0.2) cannot authenticate with SCRAM to Kafka 4.1, directly or
//! through the proxy: `kcat_scram_is_refused` asserts its exact failure.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const RECORDS: i64 = 500;

/// librdkafka properties for `listener` with SASL `mechanism`, as `-X` arguments.
fn security_args(
    cluster: &KafkaCluster,
    listener: Listener,
    mechanism: Option<&str>,
    password: &str,
) -> Vec<String> {
    let mut props = vec![format!("security.protocol={}", listener.name())];
    if let Some(mechanism) = mechanism {
        props.push(format!("sasl.mechanisms={mechanism}"));
        props.push(format!("sasl.username={}", kafka::SASL_USER.0));
        props.push(format!("sasl.password={password}"));
    }
    if matches!(listener, Listener::Ssl | Listener::SaslSsl) {
        props.push(format!(
            "ssl.ca.location={}",
            cluster.tls().ca_cert.display()
        ));
    }
    props
        .into_iter()
        .flat_map(|p| ["-X".to_owned(), p])
        .collect()
}

/// Produces RECORDS and reads them back with confluent-kafka; Ok(summary) when all match.
fn round_trip(bootstrap: &str, security: &[String], topic: &str) -> Result<String, String> {
    round_trip_within(bootstrap, security, topic, 20)
}

fn round_trip_within(
    bootstrap: &str,
    security: &[String],
    topic: &str,
    timeout_secs: u32,
) -> Result<String, String> {
    let mut cmd = Command::new(python());
    cmd.arg(clients_dir().join("secure_round_trip.py"))
        .args(["--bootstrap", bootstrap, "--topic", topic])
        .args([
            "--count",
            &RECORDS.to_string(),
            "--timeout",
            &timeout_secs.to_string(),
        ])
        .args(security);
    let run = run_command(cmd, CLIENT_TIMEOUT);
    let v = run.json().map_err(|e| format!("{e}\n{}", run.describe()))?;
    check_produced(&v, RECORDS)?;
    check_consumed(&v, RECORDS)?;
    Ok(format!("{RECORDS} records produced and read back intact"))
}

#[test]
fn every_listener_and_mechanism_directly() {
    let cluster = KafkaCluster::shared();
    let cases: [(Listener, Option<&str>); 6] = [
        (Listener::Plaintext, None),
        (Listener::SaslPlaintext, Some("PLAIN")),
        (Listener::SaslPlaintext, Some("SCRAM-SHA-256")),
        (Listener::SaslPlaintext, Some("SCRAM-SHA-512")),
        (Listener::Ssl, None),
        (Listener::SaslSsl, Some("SCRAM-SHA-512")),
    ];
    let mut m = Matrix::new("confluent-kafka directly on each listener");
    for (listener, mechanism) in cases {
        let mech = mechanism.unwrap_or("-");
        let topic = format!("listener-{}-{}", listener.name(), mech).to_lowercase();
        cluster.create_topic(&topic, 2);
        let security = security_args(cluster, listener, mechanism, kafka::SASL_USER.1);
        let result = round_trip(&cluster.bootstrap_on(listener), &security, &topic);
        m.record(listener.name(), mech, result);
    }
    m.finish();
}

#[test]
fn wrong_password_is_refused() {
    let cluster = KafkaCluster::shared();
    for mechanism in ["PLAIN", "SCRAM-SHA-512"] {
        let topic = format!("wrong-password-{mechanism}").to_lowercase();
        cluster.create_topic(&topic, 1);
        let security = security_args(cluster, Listener::SaslPlaintext, Some(mechanism), "wrong");
        let bootstrap = cluster.bootstrap_on(Listener::SaslPlaintext);
        let err = round_trip_within(&bootstrap, &security, &topic, 5)
            .expect_err("a wrong password was accepted");
        assert!(
            err.contains("Authentication failed"),
            "{mechanism}: expected an authentication failure, got:\n{err}"
        );
        assert_eq!(
            cluster.offsets(&topic, 0),
            (0, 0),
            "{mechanism}: records were stored"
        );
    }
}

#[test]
fn sasl_passes_through_the_proxy() {
    let cluster = KafkaCluster::shared();
    let proxy = Proxy::start_upstream(
        &cluster.addresses(Listener::SaslPlaintext),
        &cluster.node_ids(),
        "",
    );
    let mut m = Matrix::new("confluent-kafka through the proxy to SASL_PLAINTEXT");
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let topic = format!("proxied-sasl-{mechanism}").to_lowercase();
        cluster.create_topic(&topic, 2);
        let security = security_args(
            cluster,
            Listener::SaslPlaintext,
            Some(mechanism),
            kafka::SASL_USER.1,
        );
        let result = round_trip(&proxy.bootstrap(), &security, &topic);
        m.record("SASL_PLAINTEXT", mechanism, result);
    }
    m.finish();
}

/// Debian's kcat links librdkafka 2.0.2, whose SCRAM exchange Kafka 4.1 rejects as invalid
/// credentials, while confluent-kafka's librdkafka and the Java client succeed with the same
/// user (above). PLAIN works.
#[test]
fn kcat_scram_is_refused() {
    let cluster = KafkaCluster::shared();
    let bootstrap = cluster.bootstrap_on(Listener::SaslPlaintext);
    let run_kcat = |mechanism: &str| {
        let mut cmd = Command::new(kcat_bin());
        cmd.args(["-b", &bootstrap, "-L", "-m", "10"])
            .args(security_args(
                cluster,
                Listener::SaslPlaintext,
                Some(mechanism),
                kafka::SASL_USER.1,
            ));
        run_command(cmd, Duration::from_secs(60))
    };
    let plain = run_kcat("PLAIN");
    assert!(plain.success(), "kcat with PLAIN:\n{}", plain.describe());
    for mechanism in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let run = run_kcat(mechanism);
        assert!(
            !run.success(),
            "kcat {mechanism} now works: update README and this test"
        );
        let expected = format!(
            "SASL authentication error: Authentication failed during authentication due to \
             invalid credentials with SASL mechanism {mechanism}"
        );
        assert!(
            run.stderr.contains(&expected),
            "{mechanism}:\n{}",
            run.describe()
        );
    }
}
