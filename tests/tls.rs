//! TLS on each hop, against real Apache Kafka: the proxy terminates client TLS (`[listener.tls]`)
//! and is itself a TLS client of the brokers (`[kafka.tls]`). Each test runs a confluent-kafka
//! client (`tests/clients/secure_round_trip.py`) and checks every record by content, or checks
//! what an operator would see: the certificate served, the log line, `check-config`'s output.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::kafka::openssl;
use support::tls_files::{kafka_tls, listener_tls};
use support::*;

const RECORDS: i64 = 500;

/// A certificate and key minted with the test cluster's CA.
struct Minted {
    cert: PathBuf,
    key: PathBuf,
}

/// A certificate for `cn` with `serial`, signed by the cluster's CA, valid for localhost and
/// 127.0.0.1, usable by servers and clients.
fn mint(cluster: &KafkaCluster, dir: &Path, cn: &str, serial: u32) -> Minted {
    let name = |ext: &str| dir.join(format!("{cn}-{serial}.{ext}"));
    let (cert, key, csr, ext) = (name("pem"), name("key"), name("csr"), name("ext"));
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    let tls = cluster.tls();
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &format!("/CN={cn}"),
        "-keyout",
        &p(&key),
        "-out",
        &p(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-days",
        "1",
        "-set_serial",
        &serial.to_string(),
        "-in",
        &p(&csr),
        "-CA",
        &p(&tls.ca_cert),
        "-CAkey",
        &p(&tls.ca_key),
        "-extfile",
        &p(&ext),
        "-out",
        &p(&cert),
    ]);
    Minted { cert, key }
}

/// librdkafka `-X` properties: TLS to whatever `bootstrap` is (verified against the cluster
/// CA), with SCRAM-SHA-512 when `scram`, and a client certificate when given.
fn client_props(
    cluster: &KafkaCluster,
    tls: bool,
    scram: bool,
    client_cert: Option<&Minted>,
) -> Vec<String> {
    let protocol = match (tls, scram) {
        (false, false) => "PLAINTEXT",
        (false, true) => "SASL_PLAINTEXT",
        (true, false) => "SSL",
        (true, true) => "SASL_SSL",
    };
    let mut props = vec![format!("security.protocol={protocol}")];
    if tls {
        props.push(format!(
            "ssl.ca.location={}",
            cluster.tls().ca_cert.display()
        ));
    }
    if scram {
        props.push("sasl.mechanisms=SCRAM-SHA-512".into());
        props.push(format!("sasl.username={}", kafka::SASL_USER.0));
        props.push(format!("sasl.password={}", kafka::SASL_USER.1));
    }
    if let Some(minted) = client_cert {
        props.push(format!(
            "ssl.certificate.location={}",
            minted.cert.display()
        ));
        props.push(format!("ssl.key.location={}", minted.key.display()));
    }
    props
        .into_iter()
        .flat_map(|p| ["-X".to_owned(), p])
        .collect()
}

/// Produces `count` records and reads them back; Ok when every one matches.
fn round_trip(
    bootstrap: &str,
    props: &[String],
    topic: &str,
    count: i64,
    timeout_secs: u32,
) -> Result<(), String> {
    let mut cmd = Command::new(python());
    cmd.arg(clients_dir().join("secure_round_trip.py"))
        .args(["--bootstrap", bootstrap, "--topic", topic])
        .args(["--count", &count.to_string()])
        .args(["--timeout", &timeout_secs.to_string()])
        .args(props);
    let run = run_command(cmd, CLIENT_TIMEOUT);
    let v = run.json().map_err(|e| format!("{e}\n{}", run.describe()))?;
    check_produced(&v, count)?;
    check_consumed(&v, count)
}

/// Waits until the proxy's log contains `needle`; returns the log.
fn wait_for_log(proxy: &mut Proxy, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let log = strip_ansi(&proxy.daemon().log_text());
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needle:?} within {within:?}:\n{}",
            proxy.daemon().log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `serial=... subject=...` of the certificate served on `port`, as `openssl s_client` sees it.
fn served_certificate(port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null \
             | openssl x509 -noout -serial -subject -nameopt RFC2253"
        ))
        .output()
        .expect("run openssl s_client");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn tls_client_through_proxy_to_plaintext_kafka() {
    let cluster = KafkaCluster::shared();
    let tls = cluster.tls();
    let proxy = Proxy::start_with(
        cluster,
        &listener_tls(&tls.server_cert, &tls.server_key, None),
    );
    cluster.create_topic("tls-client-plain-kafka", 2);
    round_trip(
        &proxy.bootstrap(),
        &client_props(cluster, true, false, None),
        "tls-client-plain-kafka",
        RECORDS,
        20,
    )
    .unwrap();
}

#[test]
fn plaintext_client_through_proxy_to_tls_kafka() {
    let cluster = KafkaCluster::shared();
    // No server_name: each broker is verified against the host it advertises (127.0.0.1).
    let mut proxy = Proxy::start_upstream(
        &cluster.addresses(Listener::Ssl),
        &cluster.node_ids(),
        &kafka_tls(cluster, ""),
    );
    cluster.create_topic("plain-client-tls-kafka", 2);
    round_trip(
        &proxy.bootstrap(),
        &client_props(cluster, false, false, None),
        "plain-client-tls-kafka",
        RECORDS,
        20,
    )
    .unwrap();
    // The proxy's own connection (discovery) went over TLS too.
    wait_for_log(
        &mut proxy,
        "discovered cluster brokers",
        Duration::from_secs(10),
    );
}

#[test]
fn tls_on_both_hops_with_scram_sha_512() {
    let cluster = KafkaCluster::shared();
    let tls = cluster.tls();
    let proxy = Proxy::start_upstream(
        &cluster.addresses(Listener::SaslSsl),
        &cluster.node_ids(),
        &format!(
            "{}{}",
            listener_tls(&tls.server_cert, &tls.server_key, None),
            kafka_tls(cluster, "")
        ),
    );
    cluster.create_topic("tls-both-scram", 2);
    round_trip(
        &proxy.bootstrap(),
        &client_props(cluster, true, true, None),
        "tls-both-scram",
        RECORDS,
        20,
    )
    .unwrap();
}

#[test]
fn mtls_refuses_clients_without_a_certificate() {
    let cluster = KafkaCluster::shared();
    let tls = cluster.tls();
    let dir = tempfile::tempdir().unwrap();
    let client = mint(cluster, dir.path(), "kkp-test-client", 31);
    let mut proxy = Proxy::start_with(
        cluster,
        &listener_tls(&tls.server_cert, &tls.server_key, Some(&tls.ca_cert)),
    );
    cluster.create_topic("mtls-clients", 1);
    let refused = round_trip(
        &proxy.bootstrap(),
        &client_props(cluster, true, false, None),
        "mtls-clients",
        RECORDS,
        5,
    );
    assert!(
        refused.is_err(),
        "a client without a certificate got through"
    );
    assert_eq!(
        cluster.offsets("mtls-clients", 0),
        (0, 0),
        "records were stored"
    );
    wait_for_log(
        &mut proxy,
        "client refused: TLS handshake",
        Duration::from_secs(5),
    );

    round_trip(
        &proxy.bootstrap(),
        &client_props(cluster, true, false, Some(&client)),
        "mtls-clients",
        RECORDS,
        20,
    )
    .unwrap();
}

#[test]
fn client_that_never_finishes_its_handshake_is_disconnected() {
    use std::io::Read;
    let cluster = KafkaCluster::shared();
    let tls = cluster.tls();
    let mut proxy = Proxy::start_with(
        cluster,
        &format!(
            "{}handshake_timeout_ms = 300\n",
            listener_tls(&tls.server_cert, &tls.server_key, None)
        ),
    );
    let mut silent = std::net::TcpStream::connect(proxy.bootstrap()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let read = silent.read(&mut [0; 16]);
    assert!(
        matches!(read, Ok(0)),
        "expected the proxy to close the connection, got {read:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        started.elapsed()
    );
    wait_for_log(
        &mut proxy,
        "TLS handshake did not finish within 300ms",
        Duration::from_secs(5),
    );
}

#[test]
fn rotated_certificate_reaches_new_connections_while_a_producer_runs() {
    let cluster = KafkaCluster::shared();
    let tls = cluster.tls();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("proxy.pem"), dir.path().join("proxy.key"));
    std::fs::copy(&tls.server_cert, &cert).unwrap();
    std::fs::copy(&tls.server_key, &key).unwrap();
    let proxy = Proxy::start_with(cluster, &listener_tls(&cert, &key, None));
    assert_eq!(
        served_certificate(proxy.bootstrap_port),
        "serial=02\nsubject=CN=localhost"
    );

    let topic = "tls-rotation";
    cluster.create_topic(topic, 1);
    const LONG_RUN: i64 = 60_000;
    let bootstrap = proxy.bootstrap();
    let props = client_props(cluster, true, false, None);
    let producer = std::thread::spawn(move || round_trip(&bootstrap, &props, topic, LONG_RUN, 120));
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.offsets(topic, 0).1 == 0 {
        assert!(Instant::now() < deadline, "the producer never got going");
        assert!(
            !producer.is_finished(),
            "producer ended: {:?}",
            producer.join()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Replaced the way deployment tools do it: new files renamed over the old ones.
    let rotated = mint(cluster, dir.path(), "kkp-rotated", 0x4d);
    std::fs::rename(&rotated.key, &key).unwrap();
    std::fs::rename(&rotated.cert, &cert).unwrap();
    assert_eq!(
        served_certificate(proxy.bootstrap_port),
        "serial=4D\nsubject=CN=kkp-rotated",
        "a new connection must get the new certificate"
    );
    assert!(
        !producer.is_finished(),
        "the producer finished before the rotation; the test proves nothing"
    );
    producer.join().unwrap().unwrap();
}

#[test]
fn broker_certificate_for_another_host_is_refused_unless_verification_is_off() {
    let cluster = KafkaCluster::shared();
    let mut proxy = Proxy::start_upstream(
        &cluster.addresses(Listener::Ssl),
        &cluster.node_ids(),
        &kafka_tls(cluster, "server_name = \"kafka.example.invalid\"\n"),
    );
    // The readiness probe may log the same handshake failure first; wait for discovery's line.
    let log = wait_for_log(
        &mut proxy,
        "broker discovery failed",
        Duration::from_secs(20),
    );
    assert!(
        log.lines().any(|l| l.contains("broker discovery failed")
            && l.contains("TLS handshake with the broker failed")
            && l.contains("kafka.example.invalid")),
        "{log}"
    );

    let mut unverified = Proxy::start_upstream(
        &cluster.addresses(Listener::Ssl),
        &cluster.node_ids(),
        &kafka_tls(
            cluster,
            "server_name = \"kafka.example.invalid\"\nverify_hostname = false\n",
        ),
    );
    wait_for_log(
        &mut unverified,
        "kafka.tls.verify_hostname = false",
        Duration::from_secs(10),
    );
    cluster.create_topic("tls-unverified-host", 1);
    round_trip(
        &unverified.bootstrap(),
        &client_props(cluster, false, false, None),
        "tls-unverified-host",
        RECORDS,
        20,
    )
    .unwrap();
}

fn check_config(listener_toml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        format!("[listener]\n[kafka]\nbootstrap_servers = [\"127.0.0.1:9092\"]\n{listener_toml}"),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_kafka-kinesis-proxy"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn check_config_prints_expiry_and_rejects_a_key_of_another_certificate() {
    let cluster = KafkaCluster::shared();
    let tls = cluster.tls();
    let out = check_config(&listener_tls(&tls.server_cert, &tls.server_key, None));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let end = openssl(&[
        "x509",
        "-noout",
        "-enddate",
        "-in",
        tls.server_cert.to_str().unwrap(),
    ]);
    let end = end.trim().trim_start_matches("notAfter=");
    let expected = Command::new("date")
        .args(["-u", "-d", end, "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&expected.stdout).trim().to_owned();
    assert!(
        stdout.contains(&format!(
            "listener.tls.cert: subject CN=localhost, serial 02, expires {expected}"
        )),
        "{stdout}"
    );

    let dir = tempfile::tempdir().unwrap();
    let other = mint(cluster, dir.path(), "kkp-other", 9);
    let out = check_config(&listener_tls(&tls.server_cert, &other.key, None));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a foreign key was accepted");
    assert!(
        stderr.contains("listener.tls.key")
            && stderr.contains("does not belong to the certificate"),
        "{stderr}"
    );
}

#[test]
fn replaced_client_ca_file_applies_to_the_next_connection() {
    let cluster = KafkaCluster::shared();
    let tls = cluster.tls();
    let dir = tempfile::tempdir().unwrap();
    let client = mint(cluster, dir.path(), "kkp-ca-rotation-client", 41);
    // The proxy first trusts only an unrelated CA, so the cluster-CA-signed client is refused.
    let (other_key, other_ca) = (dir.path().join("other.key"), dir.path().join("other.pem"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=kkp-other-ca",
        "-keyout",
        other_key.to_str().unwrap(),
        "-out",
        other_ca.to_str().unwrap(),
    ]);
    let client_ca = dir.path().join("client-ca.pem");
    std::fs::copy(&other_ca, &client_ca).unwrap();
    let mut proxy = Proxy::start_with(
        cluster,
        &listener_tls(&tls.server_cert, &tls.server_key, Some(&client_ca)),
    );
    cluster.create_topic("tls-client-ca-rotation", 1);
    let props = client_props(cluster, true, false, Some(&client));
    assert!(
        round_trip(&proxy.bootstrap(), &props, "tls-client-ca-rotation", 10, 5).is_err(),
        "a client certificate from an untrusted CA got through"
    );

    // Rotated as deployment tools do it: the new file renamed over the old one.
    let staged = dir.path().join("client-ca.pem.new");
    std::fs::copy(&tls.ca_cert, &staged).unwrap();
    std::fs::rename(&staged, &client_ca).unwrap();
    round_trip(
        &proxy.bootstrap(),
        &props,
        "tls-client-ca-rotation",
        RECORDS,
        20,
    )
    .unwrap();
    wait_for_log(
        &mut proxy,
        "listener TLS client CA reloaded",
        Duration::from_secs(5),
    );
}

#[test]
fn proxy_presents_its_own_certificate_to_a_cluster_that_requires_mtls() {
    let cluster = KafkaCluster::shared();
    let dir = tempfile::tempdir().unwrap();
    let own = mint(cluster, dir.path(), "kkp-proxy-client", 51);
    let with_cert = format!("cert = {:?}\nkey = {:?}\n", own.cert, own.key);
    let proxy = Proxy::start_upstream(
        &cluster.addresses(Listener::Mtls),
        &cluster.node_ids(),
        &kafka_tls(cluster, &with_cert),
    );
    cluster.create_topic("tls-mtls-broker", 2);
    round_trip(
        &proxy.bootstrap(),
        &client_props(cluster, false, false, None),
        "tls-mtls-broker",
        RECORDS,
        20,
    )
    .unwrap();

    // Without its certificate the proxy cannot even discover the cluster, and says why: with
    // TLS 1.3 the broker's refusal arrives as an alert on the first read.
    let mut without = Proxy::start_upstream(
        &cluster.addresses(Listener::Mtls),
        &cluster.node_ids(),
        &kafka_tls(cluster, ""),
    );
    let log = wait_for_log(
        &mut without,
        "broker discovery failed",
        Duration::from_secs(20),
    );
    assert!(
        log.lines().any(|l| l.contains("broker discovery failed")
            && l.contains("received fatal alert: BadCertificate")),
        "{log}"
    );
}
