//! The proxy's own connections to Kafka: startup discovery and the readiness probe.
//! - against a SASL-only listener, discovery authenticates with `[kafka.sasl]` (PLAIN and
//!   SCRAM) and opens every broker port; without credentials it says which key to set;
//! - a bootstrap server that accepts and never answers is logged, and `/readyz` stays 503;
//!   readiness comes from an answered ApiVersions, which needs no credentials;
//! - broker ports reopen after a restart from `brokers.json`, even when discovery cannot
//!   authenticate;
//! - the password shows up in no log line (at trace level), check-config output, `/clients`,
//!   `/metrics` or file under `spool.dir`.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const DISCOVERED: &str = "discovered cluster brokers";

/// Polls `condition` until it holds; panics with `what` and the proxy's log at `deadline`.
fn wait_for(
    proxy: &mut Proxy,
    within: Duration,
    what: &str,
    mut condition: impl FnMut(&mut Proxy) -> bool,
) {
    let deadline = Instant::now() + within;
    while !condition(proxy) {
        assert!(
            Instant::now() < deadline,
            "not within {within:?}: {what}; proxy log:\n{}",
            proxy.daemon().log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log(proxy: &mut Proxy) -> String {
    strip_ansi(&proxy.daemon().log_text())
}

/// `[kafka.sasl]` for the test cluster's user, the password in a file of `dir`.
fn sasl_toml(dir: &Path, mechanism: &str, password: &str) -> String {
    let file = dir.join(format!("{mechanism}.password"));
    std::fs::write(&file, format!("{password}\n")).unwrap();
    format!(
        "[kafka.sasl]\nmechanism = \"{mechanism}\"\nusername = \"{}\"\npassword_file = {:?}\n",
        kafka::SASL_USER.0,
        file
    )
}

fn sasl_proxy(cluster: &KafkaCluster, extra_toml: &str) -> Proxy {
    Proxy::start_upstream(
        &cluster.addresses(Listener::SaslPlaintext),
        &cluster.node_ids(),
        extra_toml,
    )
}

/// ApiVersions v0 through `port`, answered by whatever broker sits behind it: Ok(error code).
fn api_versions_through(port: u16) -> Result<i16, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // size, api key 18, version 0, correlation id 77, null client id.
    let mut frame = vec![0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 77, 0xff, 0xff];
    s.write_all(&frame).map_err(|e| e.to_string())?;
    frame.resize(10, 0);
    s.read_exact(&mut frame)
        .map_err(|e| format!("no answer: {e}"))?;
    let correlation = i32::from_be_bytes(frame[4..8].try_into().unwrap());
    if correlation != 77 {
        return Err(format!("correlation id {correlation}"));
    }
    Ok(i16::from_be_bytes(frame[8..10].try_into().unwrap()))
}

fn ready(proxy: &Proxy) -> (u16, String) {
    metrics::get(proxy.admin_port, "/readyz")
}

fn spool_dir(proxy: &Proxy) -> PathBuf {
    proxy.config_path.parent().unwrap().join("spool")
}

#[test]
fn discovery_authenticates_to_a_sasl_only_cluster() {
    let cluster = KafkaCluster::shared();
    let secrets = tempfile::tempdir().unwrap();
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let mut proxy = sasl_proxy(
            cluster,
            &sasl_toml(secrets.path(), mechanism, kafka::SASL_USER.1),
        );
        wait_for(&mut proxy, Duration::from_secs(30), DISCOVERED, |p| {
            log(p).contains(DISCOVERED)
        });
        // Every broker port is open, and reaches its broker, before any client asked.
        for (node_id, port) in proxy.broker_ports.clone() {
            assert_eq!(
                api_versions_through(port),
                Ok(0),
                "{mechanism}: broker {node_id} through port {port}"
            );
        }
        let saved = std::fs::read_to_string(spool_dir(&proxy).join("brokers.json")).unwrap();
        for node_id in cluster.node_ids() {
            assert!(saved.contains(&format!("\"{node_id}\"")), "{saved}");
        }
    }
}

#[test]
fn discovery_without_credentials_names_the_key_and_readiness_needs_none() {
    let cluster = KafkaCluster::shared();
    let mut proxy = sasl_proxy(cluster, "");
    wait_for(
        &mut proxy,
        Duration::from_secs(30),
        "an error naming [kafka.sasl]",
        |p| {
            log(p)
                .lines()
                .any(|l| l.contains("ERROR") && l.contains("set [kafka.sasl]"))
        },
    );
    assert!(!log(&mut proxy).contains(DISCOVERED));
    // Kafka answers ApiVersions before SASL, so the proxy is ready all the same.
    wait_for(&mut proxy, Duration::from_secs(20), "/readyz 200", |p| {
        ready(p).0 == 200
    });
}

#[test]
fn wrong_password_is_an_error_naming_the_user() {
    let cluster = KafkaCluster::shared();
    let secrets = tempfile::tempdir().unwrap();
    let mut proxy = sasl_proxy(
        cluster,
        &sasl_toml(secrets.path(), "SCRAM-SHA-512", "not-the-password"),
    );
    wait_for(
        &mut proxy,
        Duration::from_secs(30),
        "an authentication error",
        |p| {
            log(p).lines().any(|l| {
                l.contains("ERROR")
                    && l.contains("authentication as `alice` with SCRAM-SHA-512 refused")
                    && l.contains("kafka.sasl.username")
            })
        },
    );
    assert!(!log(&mut proxy).contains("not-the-password"));
}

/// Accepts connections and never answers; holds them until dropped.
struct SilentServer {
    address: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                held.extend(conn.ok());
            }
        });
        SilentServer { address, stop }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = TcpStream::connect(&self.address);
    }
}

#[test]
fn silent_bootstrap_server_is_logged_and_never_ready() {
    let silent = SilentServer::start();
    let mut proxy = Proxy::start_upstream(std::slice::from_ref(&silent.address), &[1], "");
    let timed_out = format!("{}: no ApiVersions response within", silent.address);
    let started = Instant::now();
    // Discovery gives up on the silent server after kafka.connect_timeout_ms (10 s by default)
    // and says so; then it tries again, and times out again. All the while, not ready.
    wait_for(
        &mut proxy,
        Duration::from_secs(60),
        "two logged discovery timeouts",
        |p| {
            let (code, body) = ready(p);
            assert_eq!(code, 503, "ready with a silent bootstrap server: {body}");
            log(p)
                .lines()
                .filter(|l| l.contains("broker discovery failed") && l.contains(&timed_out))
                .count()
                >= 2
        },
    );
    assert!(started.elapsed() >= Duration::from_secs(10));
    let (code, body) = ready(&proxy);
    assert_eq!(code, 503);
    assert!(body.contains("no ApiVersions response"), "{body}");
}

#[test]
fn readiness_follows_the_first_answering_bootstrap_server() {
    let cluster = KafkaCluster::shared();
    let silent = SilentServer::start();
    let mut servers = vec![silent.address.clone()];
    servers.extend(cluster.addresses(Listener::Plaintext));
    let mut proxy = Proxy::start_upstream(&servers, &cluster.node_ids(), "");
    assert_eq!(ready(&proxy).0, 503, "ready before any ApiVersions answer");
    wait_for(&mut proxy, Duration::from_secs(40), "/readyz 200", |p| {
        ready(p).0 == 200
    });
    wait_for(&mut proxy, Duration::from_secs(40), DISCOVERED, |p| {
        log(p).contains(DISCOVERED)
    });
    assert!(log(&mut proxy).contains(&format!(
        "{}: no ApiVersions response within",
        silent.address
    )));
}

#[test]
fn broker_ports_reopen_from_the_saved_map_when_discovery_cannot_authenticate() {
    let cluster = KafkaCluster::shared();
    let secrets = tempfile::tempdir().unwrap();
    let mut proxy = sasl_proxy(
        cluster,
        &sasl_toml(secrets.path(), "SCRAM-SHA-256", kafka::SASL_USER.1),
    );
    wait_for(&mut proxy, Duration::from_secs(30), DISCOVERED, |p| {
        log(p).contains(DISCOVERED)
    });
    assert!(spool_dir(&proxy).join("brokers.json").exists());

    // The password is now wrong: discovery fails after the restart.
    std::fs::write(
        secrets.path().join("SCRAM-SHA-256.password"),
        "rotated-away\n",
    )
    .unwrap();
    let before = log(&mut proxy).len();
    proxy.restart();
    wait_for(
        &mut proxy,
        Duration::from_secs(30),
        "a refused discovery after the restart",
        |p| log(p)[before..].contains("refused"),
    );
    for (node_id, port) in proxy.broker_ports.clone() {
        assert_eq!(
            api_versions_through(port),
            Ok(0),
            "broker {node_id} through port {port} after the restart"
        );
    }
    assert!(!log(&mut proxy)[before..].contains(DISCOVERED));
}

#[test]
fn password_appears_in_no_log_output_endpoint_or_spool_file() {
    let cluster = KafkaCluster::shared();
    let password = kafka::SASL_USER.1;
    let secrets = tempfile::tempdir().unwrap();
    // Every line the proxy can log: the child inherits RUST_LOG.
    std::env::set_var("RUST_LOG", "trace");
    let mut proxy = sasl_proxy(
        cluster,
        &sasl_toml(secrets.path(), "SCRAM-SHA-512", password),
    );
    wait_for(&mut proxy, Duration::from_secs(30), DISCOVERED, |p| {
        log(p).contains(DISCOVERED)
    });
    let mut second = sasl_proxy(cluster, &sasl_toml(secrets.path(), "PLAIN", password));
    wait_for(&mut second, Duration::from_secs(30), DISCOVERED, |p| {
        log(p).contains(DISCOVERED)
    });

    for p in [&mut proxy, &mut second] {
        let text = log(p);
        assert!(
            text.contains("TRACE"),
            "not a trace log:\n{}",
            &text[..text.len().min(2000)]
        );
        assert!(!text.contains(password), "password in the log");
        let check = Command::new(env!("CARGO_BIN_EXE_kafka-kinesis-proxy"))
            .args(["check-config", "--config"])
            .arg(&p.config_path)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&check.stdout).into_owned()
            + &String::from_utf8_lossy(&check.stderr);
        assert!(check.status.success(), "{out}");
        assert!(out.contains("sasl password     from file"), "{out}");
        assert!(!out.contains(password), "password in check-config output");
        for path in ["/clients", "/metrics", "/readyz", "/routes"] {
            let (_, body) = metrics::get(p.admin_port, path);
            assert!(!body.contains(password), "password in {path}");
        }
        let mut files = 0;
        let mut pending = vec![spool_dir(p)];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    files += 1;
                    let bytes = std::fs::read(&path).unwrap();
                    assert!(
                        !bytes
                            .windows(password.len())
                            .any(|w| w == password.as_bytes()),
                        "password in {}",
                        path.display()
                    );
                }
            }
        }
        assert!(files > 0, "brokers.json at least");
    }
}

#[test]
fn credentials_for_a_listener_without_sasl_are_an_error_that_says_so() {
    let cluster = KafkaCluster::shared();
    let secrets = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::start_with(
        cluster,
        &sasl_toml(secrets.path(), "SCRAM-SHA-512", kafka::SASL_USER.1),
    );
    wait_for(
        &mut proxy,
        Duration::from_secs(30),
        "an error saying the listener does not use SASL",
        |p| {
            log(p).lines().any(|l| {
                l.contains("ERROR")
                    && l.contains("this listener does not use SASL; remove [kafka.sasl]")
            })
        },
    );
}
