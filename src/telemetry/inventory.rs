//! The producer inventory behind `/clients`: who connects, with which client_id, API versions,
//! acks, codecs and idempotence, and how many records they produce to each topic. Operators
//! need it to know who still produces before they retire Kafka.
//!
//! Connections report only what is new to them (a version or acks value not seen before on
//! that connection), so the steady-state hot path takes no lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// At most this many (client_id, address) entries; the least recently seen is evicted.
const MAX_CLIENTS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    pub client_id: String,
    pub address: IpAddr,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientEntry {
    pub client_id: String,
    pub address: IpAddr,
    pub first_seen_unix_ms: u64,
    pub last_seen_unix_ms: u64,
    pub connections_open: u64,
    pub connections_total: u64,
    /// API name to the versions used.
    pub api_versions: BTreeMap<String, BTreeSet<i16>>,
    pub acks: BTreeSet<i16>,
    pub idempotent: bool,
    pub transactional: bool,
    pub codecs: BTreeSet<String>,
    pub records_per_topic: BTreeMap<String, u64>,
}

#[derive(Default)]
pub struct Inventory {
    clients: Mutex<HashMap<ClientKey, ClientEntry>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a producer's record batches say about it.
#[derive(Debug, Clone, Copy)]
pub struct ProducerTraits {
    /// Some batch has a producer id.
    pub idempotent: bool,
    pub transactional: bool,
}

impl Inventory {
    fn with_entry(&self, key: &ClientKey, update: impl FnOnce(&mut ClientEntry)) {
        let now = unix_ms();
        let mut clients = self.clients.lock().expect("inventory lock");
        if !clients.contains_key(key) && clients.len() >= MAX_CLIENTS {
            if let Some(stale) = clients
                .values()
                .min_by_key(|e| e.last_seen_unix_ms)
                .map(|e| ClientKey {
                    client_id: e.client_id.clone(),
                    address: e.address,
                })
            {
                clients.remove(&stale);
            }
        }
        let entry = clients.entry(key.clone()).or_insert_with(|| ClientEntry {
            client_id: key.client_id.clone(),
            address: key.address,
            first_seen_unix_ms: now,
            last_seen_unix_ms: now,
            connections_open: 0,
            connections_total: 0,
            api_versions: BTreeMap::new(),
            acks: BTreeSet::new(),
            idempotent: false,
            transactional: false,
            codecs: BTreeSet::new(),
            records_per_topic: BTreeMap::new(),
        });
        entry.last_seen_unix_ms = now;
        update(entry);
    }

    pub fn connection_opened(&self, key: &ClientKey) {
        self.with_entry(key, |e| {
            e.connections_open += 1;
            e.connections_total += 1;
        });
    }

    pub fn connection_closed(&self, key: &ClientKey) {
        self.with_entry(key, |e| {
            e.connections_open = e.connections_open.saturating_sub(1)
        });
    }

    pub fn api_used(&self, key: &ClientKey, api: &str, version: i16) {
        self.with_entry(key, |e| {
            e.api_versions
                .entry(api.to_owned())
                .or_default()
                .insert(version);
        });
    }

    pub fn acks_used(&self, key: &ClientKey, acks: i16) {
        self.with_entry(key, |e| {
            e.acks.insert(acks);
        });
    }

    /// `records` produced to `topic` with `codecs`.
    pub fn produced<C: std::fmt::Display>(
        &self,
        key: &ClientKey,
        topic: &str,
        records: u64,
        traits: ProducerTraits,
        codecs: impl IntoIterator<Item = C>,
    ) {
        self.with_entry(key, |e| {
            *e.records_per_topic.entry(topic.to_owned()).or_default() += records;
            e.idempotent |= traits.idempotent;
            e.transactional |= traits.transactional;
            e.codecs.extend(codecs.into_iter().map(|c| c.to_string()));
        });
    }

    /// Every client, most recently seen first.
    pub fn snapshot(&self) -> Vec<ClientEntry> {
        let clients = self.clients.lock().expect("inventory lock");
        let mut all: Vec<ClientEntry> = clients.values().cloned().collect();
        all.sort_by(|a, b| {
            b.last_seen_unix_ms
                .cmp(&a.last_seen_unix_ms)
                .then(a.client_id.cmp(&b.client_id))
        });
        all
    }
}
