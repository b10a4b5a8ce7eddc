//! The TOML tables that give a test proxy TLS on each hop, with PEM files of the test cluster
//! (`KafkaCluster::tls`).

use std::path::Path;

use super::KafkaCluster;

/// `[listener.tls]`: the proxy serves `cert`/`key` to its clients, and requires a client
/// certificate signed by `client_ca` when one is given (mTLS).
pub fn listener_tls(cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    let mut toml = format!("[listener.tls]\ncert = {cert:?}\nkey = {key:?}\n");
    if let Some(ca) = client_ca {
        toml.push_str(&format!("client_ca = {ca:?}\n"));
    }
    toml
}

/// `[kafka.tls]`: the proxy verifies the brokers against the cluster's CA; `extra` adds keys
/// to the table (`server_name`, `verify_hostname`).
pub fn kafka_tls(cluster: &KafkaCluster, extra: &str) -> String {
    format!("[kafka.tls]\nca = {:?}\n{extra}", cluster.tls().ca_cert)
}
