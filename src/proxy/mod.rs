//! Listeners, connections and broker address rewriting.
//!
//! Clients bootstrap on one port. Every upstream broker gets its own proxy port
//! (`broker_port_base + node_id`, or an explicit entry), opened as soon as a response names the
//! broker. Each client connection gets exactly one upstream connection to the broker behind its
//! port, so per-connection state such as SASL stays between the client and that broker.

mod admission;
mod broker_map_file;
mod brokers;
mod buffer_budget;
mod connection;
mod discovery;
mod log_end_offsets;
mod own_connection;
mod own_sasl;
mod sasl;
mod scram;
mod standalone;
mod tls;
mod transaction_markers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

pub use admission::raise_open_files_limit;
use admission::Admission;
use brokers::BrokerDirectory;
use buffer_budget::BufferBudget;
use connection::Connection;
pub use log_end_offsets::log_end_offsets;
use standalone::{Standalone, StandaloneConnection};
pub use tls::{check_tls_files, CertificateSummary, TlsError};
use tls::{ClientTls, Stream, UpstreamTls};
pub use transaction_markers::transaction_markers;

use crate::config::{Config, KafkaConfig};
use crate::mirror::kinesis_only::state::SyntheticLogError;
use crate::mirror::Mirror;
use crate::telemetry::inventory::Inventory;
use crate::telemetry::metrics::Metrics;

/// How often the proxy checks that some bootstrap server answers ApiVersions, for `/readyz`.
const KAFKA_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Boxed: the mirror's error type is private to the crate.
    #[error("standalone: cannot open the producer ids in spool.dir: {0}")]
    ProducerIds(Box<dyn std::error::Error + Send + Sync>),
}

/// Which upstream a listener's connections go to.
#[derive(Debug, Clone, Copy)]
enum Upstream {
    /// Any of `kafka.bootstrap_servers`.
    Bootstrap,
    Broker(i32),
}

pub struct Proxy {
    config: Config,
    mirror: Mirror,
    metrics: Arc<Metrics>,
    inventory: Arc<Inventory>,
    /// `None` while a bootstrap server answers ApiVersions, else why not.
    kafka_problem: Mutex<Option<String>>,
    /// Cancelled on shutdown: listeners stop accepting, connections stop reading requests.
    stopping: tokio_util::sync::CancellationToken,
    directory: BrokerDirectory,
    /// Broker listeners already open, by node id.
    broker_listeners: Mutex<HashMap<i32, u16>>,
    admission: Admission,
    /// Bytes all connections hold (`listener.max_buffered_bytes`).
    buffer_budget: Arc<BufferBudget>,
    /// Spreads bootstrap connections over the configured servers.
    next_bootstrap: AtomicUsize,
    /// `None`: clients connect in plain TCP.
    client_tls: Option<ClientTls>,
    /// `None`: brokers are reached in plain TCP.
    upstream_tls: Option<UpstreamTls>,
    /// Set when there is no `[kafka]`: connections are answered by the proxy alone.
    standalone: Option<Arc<Standalone>>,
}

impl Proxy {
    /// `brokers_file`: where learned broker addresses are kept across restarts
    /// ([`brokers_file_location`]).
    pub fn new(
        config: Config,
        mirror: Mirror,
        metrics: Arc<Metrics>,
        inventory: Arc<Inventory>,
        brokers_file: PathBuf,
    ) -> Result<Arc<Proxy>, ProxyError> {
        let listener = &config.listener;
        // Bad TLS files stop the start, rather than failing every client later.
        let client_tls = listener.tls.as_ref().map(ClientTls::new).transpose()?;
        let upstream_tls = config
            .kafka
            .as_ref()
            .and_then(|kafka| kafka.tls.as_ref())
            .map(UpstreamTls::new)
            .transpose()?;
        let standalone = match config.kafka {
            Some(_) => None,
            None => Some(Arc::new(Standalone::open(&config).map_err(
                |e: SyntheticLogError| ProxyError::ProducerIds(Box::new(e)),
            )?)),
        };
        // Standalone needs no Kafka to be ready.
        let kafka_problem = standalone.is_none().then(|| "not checked yet".to_owned());
        let directory = BrokerDirectory::new(
            listener.broker_ports.clone(),
            listener.bootstrap_port,
            &listener.advertised_host,
            Some(brokers_file),
        );
        Ok(Arc::new(Proxy {
            client_tls,
            upstream_tls,
            admission: Admission::new(listener.max_connections, listener.max_connections_per_ip),
            buffer_budget: BufferBudget::new(
                listener.max_buffered_bytes,
                metrics.buffered_bytes.clone(),
            ),
            directory,
            broker_listeners: Mutex::new(HashMap::new()),
            next_bootstrap: AtomicUsize::new(0),
            config,
            mirror,
            metrics,
            inventory,
            kafka_problem: Mutex::new(kafka_problem),
            standalone,
            stopping: tokio_util::sync::CancellationToken::new(),
        }))
    }

    /// Opens the bootstrap listener, learns the cluster's brokers in the background, and serves
    /// until the process ends.
    pub async fn serve(self: &Arc<Self>) -> Result<(), ProxyError> {
        let addr = SocketAddr::new(
            self.config.listener.bind,
            self.config.listener.bootstrap_port,
        );
        let listener = bind(addr, "listener.bootstrap_port")?;
        tracing::info!(%addr, "bootstrap listener open");
        if self.standalone.is_some() {
            // The proxy is the only broker, on the bootstrap port: nothing to discover.
            tracing::info!("standalone: no [kafka]; answering producers of the kinesis-only routes alone, refusing consumers (they read Kinesis)");
            self.clone()
                .accept_loop(listener, Upstream::Bootstrap)
                .await;
            return Ok(());
        }
        // Brokers' ports must be open after a restart even before any client asks for
        // metadata: clients reconnect to the broker ports they cached. The saved map opens them
        // at once, even while discovery cannot reach or authenticate to the cluster.
        let restored = self.directory.restore();
        if !restored.is_empty() {
            tracing::info!(
                brokers = restored.len(),
                "reopening broker ports saved by an earlier run"
            );
        }
        for (node_id, port) in restored {
            self.ensure_broker_listener(node_id, port);
        }
        tokio::spawn(discovery::discover_brokers(self.clone()));
        tokio::spawn(self.clone().probe_kafka());
        self.clone()
            .accept_loop(listener, Upstream::Bootstrap)
            .await;
        Ok(())
    }

    /// Shutdown: stops accepting, lets every connection finish the requests it has in flight
    /// (new ones are not read), and returns when all are closed or at `deadline`.
    pub async fn shut_down(&self, deadline: std::time::Instant) {
        self.stopping.cancel();
        while self.admission.open() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let open = self.admission.open();
        if open > 0 {
            tracing::warn!(open, "shutdown grace over with connections still finishing");
        }
    }

    /// `[kafka]`, for the code that reaches Kafka; a standalone proxy never runs it.
    fn kafka(&self) -> &KafkaConfig {
        self.config
            .kafka
            .as_ref()
            .expect("only a proxy with [kafka] reaches Kafka")
    }

    /// Why Kafka is unusable, or `None` when some bootstrap server answers ApiVersions (or the
    /// proxy runs standalone, without Kafka).
    pub fn kafka_problem(&self) -> Option<String> {
        self.kafka_problem.lock().expect("kafka probe lock").clone()
    }

    /// A TCP connect is not enough: a server that accepts and never answers is not Kafka.
    async fn probe_kafka(self: Arc<Self>) {
        loop {
            let outcome = discovery::answering_bootstrap_server(&self).await;
            let problem = outcome.as_ref().err().cloned();
            let previous = std::mem::replace(
                &mut *self.kafka_problem.lock().expect("kafka probe lock"),
                problem.clone(),
            );
            // Logged on changes only, so an outage is one line, not one every interval.
            match (&outcome, previous.is_some()) {
                (Ok(server), true) => tracing::info!(%server, "kafka ready: ApiVersions answered"),
                (Err(why), false) => tracing::warn!(problem = %why, "kafka not ready"),
                (Err(why), true) if previous != problem => {
                    tracing::warn!(problem = %why, "kafka not ready")
                }
                _ => {}
            }
            tokio::time::sleep(KAFKA_PROBE_INTERVAL).await;
        }
    }

    /// Opens the listener for broker `node_id` on `port` unless it is already open, and says
    /// whether it is open. A failure is logged and retried the next time a response names the
    /// broker; until then the broker is left out of responses, never advertised unreachable.
    fn ensure_broker_listener(self: &Arc<Self>, node_id: i32, port: u16) -> bool {
        let listener = {
            let mut open = self.broker_listeners.lock().expect("listener lock");
            if open.get(&node_id) == Some(&port) {
                return true;
            }
            let addr = SocketAddr::new(self.config.listener.bind, port);
            match bind(addr, &format!("broker node {node_id}")) {
                Ok(listener) => {
                    open.insert(node_id, port);
                    tracing::info!(node_id, %addr, "broker listener open");
                    listener
                }
                Err(e) => {
                    tracing::error!(error = %e, "broker listener unavailable; the broker is left out of responses until its port opens");
                    return false;
                }
            }
        };
        tokio::spawn(
            self.clone()
                .accept_loop(listener, Upstream::Broker(node_id)),
        );
        true
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, upstream: Upstream) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = self.stopping.cancelled() => return,
            };
            let (client, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let slot = match self.admission.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(refusal) => {
                    let reason = match refusal {
                        admission::Refusal::Total(_) => "max_connections",
                        admission::Refusal::PerIp(_) => "max_connections_per_ip",
                    };
                    self.metrics.connection_refused(reason);
                    tracing::warn!(%peer, "connection refused: {refusal}");
                    continue;
                }
            };
            let proxy = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                proxy.handle(client, peer, upstream).await;
            });
        }
    }

    async fn handle(self: Arc<Self>, client: TcpStream, peer: SocketAddr, upstream: Upstream) {
        let listener = match upstream {
            Upstream::Bootstrap => "bootstrap".to_owned(),
            Upstream::Broker(node_id) => format!("broker-{node_id}"),
        };
        let gauge = self.metrics.connections.with_label_values(&[&listener]);
        gauge.inc();
        self.clone().serve_client(client, peer, upstream).await;
        gauge.dec();
    }

    async fn serve_client(
        self: Arc<Self>,
        client: TcpStream,
        peer: SocketAddr,
        upstream: Upstream,
    ) {
        let _ = client.set_nodelay(true);
        let client = match &self.client_tls {
            None => Stream::Plain(client),
            Some(tls) => match tls.accept(client).await {
                Ok(stream) => stream,
                Err(e) if e.is_hang_up() => {
                    tracing::debug!(%peer, ?upstream, error = %e, "client left during the TLS handshake");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%peer, ?upstream, error = %e, "client refused: TLS handshake");
                    return;
                }
            },
        };
        if let Some(standalone) = &self.standalone {
            let standalone = standalone.clone();
            StandaloneConnection::new(self, standalone, peer)
                .run(client)
                .await;
            return;
        }
        let upstream_conn = match self.connect_upstream(upstream).await {
            Ok(conn) => conn,
            Err(e) => {
                // Closing the client makes it refresh metadata and retry, as after a broker failure.
                tracing::warn!(%peer, ?upstream, error = %e, "cannot reach upstream; closing client connection");
                return;
            }
        };
        Connection::new(self, peer).run(client, upstream_conn).await;
    }

    async fn connect_upstream(&self, upstream: Upstream) -> std::io::Result<Stream> {
        let candidates = match upstream {
            Upstream::Broker(node_id) => {
                vec![self.directory.upstream(node_id).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no address known for broker node {node_id}"),
                    )
                })?]
            }
            Upstream::Bootstrap => {
                let servers = &self.kafka().bootstrap_servers;
                let start = self.next_bootstrap.fetch_add(1, Ordering::Relaxed);
                (0..servers.len())
                    .map(|i| servers[(start + i) % servers.len()].clone())
                    .collect()
            }
        };
        let mut last_error = None;
        for address in candidates {
            match self.connect_to(&address).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("at least one upstream candidate"))
    }

    /// A connection to the broker at `address` (`HOST:PORT`), over TLS when `[kafka.tls]` is
    /// set. Errors name the address.
    async fn connect_to(&self, address: &str) -> std::io::Result<Stream> {
        let timeout = self.kafka().connect_timeout;
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(std::io::Error::new(e.kind(), format!("{address}: {e}"))),
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{address}: connect timed out"),
                ))
            }
        };
        let _ = tcp.set_nodelay(true);
        match &self.upstream_tls {
            None => Ok(Stream::Plain(tcp)),
            Some(tls) => tls.connect(tcp, address, timeout).await,
        }
    }
}

fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, ProxyError> {
    let fail = |source| ProxyError::Bind {
        addr,
        what: what.to_owned(),
        source,
    };
    let std_listener = std::net::TcpListener::bind(addr).map_err(fail)?;
    std_listener.set_nonblocking(true).map_err(fail)?;
    TcpListener::from_std(std_listener).map_err(fail)
}

/// Where the proxy keeps learned broker addresses across restarts: `spool.dir/brokers.json`, or
/// `brokers.json` beside the config file when there is no spool.
pub fn brokers_file_location(config: &Config, config_path: &Path) -> PathBuf {
    broker_map_file::location(config.spool.dir.as_deref(), config_path)
}
