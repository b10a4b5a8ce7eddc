//! Which upstream broker sits behind which proxy port.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use kafka_protocol::protocol::StrBytes;

use super::broker_map_file;
use crate::config::{BrokerPortMap, PortMapError};
use crate::kafka::rewrite::AddressRewriter;

/// Upstream addresses learned from the cluster's own responses, and the fixed port mapping.
pub struct BrokerDirectory {
    ports: BrokerPortMap,
    bootstrap_port: u16,
    advertised_host: StrBytes,
    upstream: RwLock<HashMap<i32, String>>,
    /// Where the learned addresses are kept across restarts (`brokers.json`); `None` in tests.
    file: Option<PathBuf>,
    /// Brokers already logged as left out, so that each is logged once, not per response.
    left_out: Mutex<HashSet<i32>>,
}

impl BrokerDirectory {
    pub fn new(
        ports: BrokerPortMap,
        bootstrap_port: u16,
        advertised_host: &str,
        file: Option<PathBuf>,
    ) -> Self {
        BrokerDirectory {
            ports,
            bootstrap_port,
            advertised_host: StrBytes::from_string(advertised_host.to_owned()),
            upstream: RwLock::new(HashMap::new()),
            file,
            left_out: Mutex::default(),
        }
    }

    /// Takes in the addresses saved by an earlier run; returns each node with its proxy port.
    /// A broken file is logged and ignored: discovery rebuilds it.
    pub fn restore(&self) -> Vec<(i32, u16)> {
        let Some(file) = &self.file else {
            return Vec::new();
        };
        let saved = match broker_map_file::load(file) {
            Ok(saved) => saved,
            Err(e) => {
                tracing::warn!(error = %e, "saved broker addresses unusable; waiting for discovery");
                return Vec::new();
            }
        };
        let mut restored = Vec::new();
        let mut upstream = self.upstream.write().expect("directory lock");
        for (node_id, address) in saved {
            match self.port_for(node_id) {
                Ok(port) => {
                    upstream.insert(node_id, address);
                    restored.push((node_id, port));
                }
                Err(e) => tracing::warn!(node_id, error = %e, "saved broker left out"),
            }
        }
        restored
    }

    pub fn port_for(&self, node_id: i32) -> Result<u16, PortMapError> {
        self.ports.port_for(node_id, self.bootstrap_port)
    }

    /// The real address of broker `node_id`, once a response has named it.
    pub fn upstream(&self, node_id: i32) -> Option<String> {
        self.upstream
            .read()
            .expect("directory lock")
            .get(&node_id)
            .cloned()
    }

    fn learn(&self, node_id: i32, address: String) {
        let known = self.upstream.read().expect("directory lock").get(&node_id) == Some(&address);
        if !known {
            tracing::info!(node_id, upstream = %address, "learned broker address");
            let mut upstream = self.upstream.write().expect("directory lock");
            upstream.insert(node_id, address);
            // Rare (a broker is new or moved) and small, so written in place, under the lock so
            // that the last snapshot written is the newest.
            if let Some(file) = &self.file {
                let snapshot: BTreeMap<i32, String> =
                    upstream.iter().map(|(k, v)| (*k, v.clone())).collect();
                if let Err(e) = broker_map_file::save(file, &snapshot) {
                    tracing::warn!(error = %e, "cannot save broker addresses; after a restart, broker ports wait for discovery");
                }
            }
        }
    }

    /// A rewriter for one response. `listen(node_id, port)` opens the broker's port if it is
    /// not open yet and says whether it is: a broker is advertised only once its port works.
    pub fn rewriter<'a>(&'a self, listen: &'a dyn Fn(i32, u16) -> bool) -> LearningRewriter<'a> {
        LearningRewriter {
            directory: self,
            listen,
            learned: 0,
        }
    }

    fn leave_out(&self, node_id: i32, reason: &dyn std::fmt::Display) {
        if self.left_out.lock().expect("left-out lock").insert(node_id) {
            tracing::error!(node_id, %reason, "broker left out of responses: clients cannot reach it through the proxy; every other broker keeps working");
        }
    }
}

/// Points broker addresses at the proxy and remembers the real ones.
pub struct LearningRewriter<'a> {
    directory: &'a BrokerDirectory,
    listen: &'a dyn Fn(i32, u16) -> bool,
    /// Brokers the response named that clients can reach through the proxy.
    pub learned: usize,
}

impl AddressRewriter for LearningRewriter<'_> {
    fn rewrite(&mut self, node_id: i32, host: &mut StrBytes, port: &mut i32) -> bool {
        let proxy_port = match self.directory.port_for(node_id) {
            Ok(proxy_port) => proxy_port,
            Err(e) => {
                self.directory.leave_out(node_id, &e);
                return false;
            }
        };
        self.directory
            .learn(node_id, format!("{}:{}", host.as_str(), port));
        if !(self.listen)(node_id, proxy_port) {
            self.directory
                .leave_out(node_id, &format!("port {proxy_port} cannot be opened"));
            return false;
        }
        self.directory
            .left_out
            .lock()
            .expect("left-out lock")
            .remove(&node_id);
        *host = self.directory.advertised_host.clone();
        *port = i32::from(proxy_port);
        self.learned += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn rewriter_learns_upstream_and_points_at_proxy() {
        let dir = BrokerDirectory::new(
            BrokerPortMap {
                base: 19100,
                explicit: BTreeMap::from([(1001, 19201)]),
            },
            19092,
            "proxy.local",
            None,
        );
        let opened = Mutex::new(Vec::new());
        let listen = |node, port| {
            opened.lock().unwrap().push((node, port));
            node != 7
        };
        let mut rw = dir.rewriter(&listen);
        let (mut host, mut port) = (StrBytes::from_static_str("kafka-a"), 9092);
        assert!(rw.rewrite(1001, &mut host, &mut port));
        assert_eq!((host.as_str(), port), ("proxy.local", 19201));
        let (mut host, mut port) = (StrBytes::from_static_str("kafka-b"), 9093);
        assert!(rw.rewrite(5, &mut host, &mut port));
        assert_eq!(port, 19105);
        let (mut host, mut port) = (StrBytes::from_static_str("kafka-c"), 9094);
        assert!(
            !rw.rewrite(7, &mut host, &mut port),
            "its port did not open"
        );
        assert_eq!(rw.learned, 2);
        assert_eq!(
            *opened.lock().unwrap(),
            vec![(1001, 19201), (5, 19105), (7, 19107)]
        );
        assert_eq!(dir.upstream(1001).as_deref(), Some("kafka-a:9092"));
        assert_eq!(dir.upstream(5).as_deref(), Some("kafka-b:9093"));
        assert_eq!(dir.upstream(6), None);
    }
}
