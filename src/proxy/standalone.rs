//! Standalone mode: no Kafka behind the proxy. Each client connection is answered by the proxy
//! alone: ApiVersions, Metadata and InitProducerId here, Produce by the mirror (kinesis-only
//! routes), and everything else refused with UNSUPPORTED_VERSION, because consumers read the
//! streams from Kinesis now.
//!
//! Two loops run side by side, as for a forwarded connection: one reads requests and queues
//! their answers in request order (a Produce's answer is a task waiting for Kinesis); the other
//! writes each answer when it is ready, so responses keep the order of requests while several
//! Produce requests wait for Kinesis at once.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::ResponseError;
use sha2::Digest;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::buffer_budget::Held;
use super::connection::client_frames::{ClientEvent, ClientFrameError, ClientFrames, FrameLimit};
use super::tls::{Stream, StreamReader, StreamWriter};
use super::Proxy;
use crate::config::Config;
use crate::kafka::header::{HeaderError, RequestHeader};
use crate::kafka::message::MessageError;
use crate::kafka::produce::{peek_acks, ProduceDecodeError, ProduceRequestView};
use crate::kafka::standalone_answers::{self, Broker, ServedTopic, StandaloneAnswerError};
use crate::mirror::kinesis_only::state::SyntheticLogError;
use crate::mirror::kinesis_only::{self, producer_ids::ProducerIds};
use crate::mirror::KinesisOnlyError;
use crate::telemetry::inventory::ClientKey;

/// Requests a client may pipeline before the proxy stops reading from it (as for forwarded
/// connections).
const MAX_PIPELINED: usize = 1024;

/// Distinct (client, API) pairs whose refusal is logged; past it, refusals are not logged, so
/// clients cycling their ids cannot grow the set without bound.
const MAX_REFUSALS_LOGGED: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("client frame: {0}")]
    ClientFrame(ClientFrameError),
    #[error("request header: {0}")]
    Header(#[from] HeaderError),
    #[error("Produce v{version} request: {source}")]
    Produce {
        version: i16,
        source: ProduceDecodeError,
    },
    #[error(transparent)]
    Answer(#[from] StandaloneAnswerError),
    #[error("Produce: {0}")]
    KinesisOnly(#[from] KinesisOnlyError),
    #[error(transparent)]
    Response(#[from] MessageError),
    #[error("producer ids: {0}")]
    ProducerIds(#[from] SyntheticLogError),
}

/// What every standalone connection shares.
pub(super) struct Standalone {
    producer_ids: ProducerIds,
    /// Fixed per spool directory, so clients that compare cluster ids see the same cluster
    /// after a restart.
    cluster_id: String,
    refusals_logged: Mutex<HashSet<(ClientKey, i16)>>,
}

impl Standalone {
    /// Opens the producer ids under `spool.dir` (required with routes, and standalone has
    /// routes).
    pub(super) fn open(config: &Config) -> Result<Standalone, SyntheticLogError> {
        let spool = config
            .spool
            .dir
            .as_deref()
            .expect("config validation requires spool.dir when routes exist");
        Ok(Standalone {
            // Beside the synthetic offsets, under a name no stream's spool can have.
            producer_ids: ProducerIds::open(&spool.join(kinesis_only::DIR))?,
            cluster_id: cluster_id_of(spool),
            refusals_logged: Mutex::new(HashSet::new()),
        })
    }

    /// Logs, once per client and API, that the proxy refused a request it does not serve.
    fn log_refusal(&self, client: &ClientKey, api_key: i16, version: i16) {
        let mut logged = self.refusals_logged.lock().expect("refusals lock");
        if logged.len() >= MAX_REFUSALS_LOGGED || !logged.insert((client.clone(), api_key)) {
            return;
        }
        tracing::warn!(
            client_id = %client.client_id,
            address = %client.address,
            api = %api_name(api_key),
            version,
            "refused with UNSUPPORTED_VERSION: this proxy runs standalone (no [kafka]) and serves producers only; consumers read the streams from Kinesis now"
        );
    }
}

/// A Kafka-looking cluster id (22 characters of URL-safe base64) derived from the spool
/// directory.
fn cluster_id_of(spool: &std::path::Path) -> String {
    let digest = sha2::Sha256::digest(spool.as_os_str().as_encoded_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
}

fn api_name(api_key: i16) -> String {
    match ApiKey::try_from(api_key) {
        Ok(key) => format!("{key:?}"),
        Err(()) => format!("api_key {api_key}"),
    }
}

/// One request's answer, queued in request order.
struct Queued {
    api_key: i16,
    received: Instant,
    answer: Answer,
    /// The request's bytes in the buffer budget, released once it is answered.
    _held: Held,
}

/// `None`: nothing is sent back (a Produce with acks=0).
enum Answer {
    Ready(Option<Bytes>),
    /// Still being worked out: a Produce waiting for Kinesis, a producer id being persisted.
    Later(JoinHandle<Result<Option<Bytes>, StandaloneError>>),
}

/// One client connection of a standalone proxy.
pub(super) struct StandaloneConnection {
    proxy: Arc<Proxy>,
    standalone: Arc<Standalone>,
    peer: SocketAddr,
    in_flight: AtomicUsize,
}

impl StandaloneConnection {
    pub(super) fn new(proxy: Arc<Proxy>, standalone: Arc<Standalone>, peer: SocketAddr) -> Self {
        StandaloneConnection {
            proxy,
            standalone,
            peer,
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Serves the client until it closes the connection, goes idle, or the proxy stops.
    pub(super) async fn run(self, client: Stream) {
        let (client_rd, client_wr) = client.into_split();
        let (tx, rx) = mpsc::channel(MAX_PIPELINED);
        let mut client_key = None;
        let outcome = {
            let requests = self.read_requests(client_rd, tx, &mut client_key);
            let responses = self.write_answers(client_wr, rx);
            tokio::pin!(requests, responses);
            tokio::select! {
                // The answers of requests already read are still awaited and written: their
                // records may be in Kinesis, and the client may still be there to hear it.
                read = &mut requests => {
                    let written = responses.await;
                    read.and(written)
                }
                // Ends first only on error: the request side holds the queue open.
                written = &mut responses => written,
            }
        };
        if let Some(key) = &client_key {
            self.proxy.inventory.connection_closed(key);
        }
        let client_id = client_key.as_ref().map_or("-", |k| k.client_id.as_str());
        match outcome {
            Ok(()) => tracing::debug!(peer = %self.peer, client_id, "connection closed"),
            Err(e) => {
                tracing::warn!(peer = %self.peer, client_id, error = %e, "connection closed on error")
            }
        }
    }

    async fn read_requests(
        &self,
        client_rd: StreamReader,
        answers: mpsc::Sender<Queued>,
        client_key: &mut Option<Arc<ClientKey>>,
    ) -> Result<(), StandaloneError> {
        let listener = &self.proxy.config.listener;
        let mut frames = ClientFrames::new(
            client_rd,
            self.proxy.buffer_budget.clone(),
            listener.frame_timeout,
        );
        let limit = || FrameLimit {
            max: listener.max_frame_bytes,
            key: "listener.max_frame_bytes",
        };
        let mut versions_seen = HashSet::new();
        let mut acks_seen = HashSet::new();
        loop {
            let next = tokio::select! {
                next = frames.next(limit, listener.idle_timeout) => next,
                _ = self.proxy.stopping.cancelled() => return Ok(()),
            };
            let (frame, held) = match next {
                Ok(ClientEvent::Frame(frame, held)) => (frame, held),
                Ok(ClientEvent::Idle) if self.in_flight.load(Ordering::Acquire) == 0 => {
                    return Ok(())
                }
                Ok(ClientEvent::Idle) => continue,
                Ok(ClientEvent::Closed) => return Ok(()),
                Err(e) => {
                    if let Some(reason) = e.limit() {
                        self.proxy.metrics.connection_refused(reason);
                    }
                    return Err(StandaloneError::ClientFrame(e));
                }
            };
            let received = Instant::now();
            let header = RequestHeader::parse(&frame)?;
            let client = self.identify(client_key, header.client_id.unwrap_or(""));
            if versions_seen.insert((header.api_key, header.api_version)) {
                self.proxy.inventory.api_used(
                    &client,
                    &api_name(header.api_key),
                    header.api_version,
                );
            }
            let body = header
                .body_offset
                .map_or_else(Bytes::new, |offset| frame.slice(offset..));
            let answer = self
                .answer(&header, body, client, &mut acks_seen, received)
                .await?;
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            let queued = Queued {
                api_key: header.api_key,
                received,
                answer,
                _held: held,
            };
            if answers.send(queued).await.is_err() {
                return Ok(());
            }
        }
    }

    /// The answer to one request. Runs in request order, which a Produce needs: its batches
    /// take their offsets and their place in the mirror here.
    async fn answer(
        &self,
        header: &RequestHeader<'_>,
        body: Bytes,
        client: Arc<ClientKey>,
        acks_seen: &mut HashSet<i16>,
        received: Instant,
    ) -> Result<Answer, StandaloneError> {
        let (api_key, version, correlation_id) =
            (header.api_key, header.api_version, header.correlation_id);
        // ApiVersions first: a client asking a version above ours must hear which ones we have.
        if api_key == ApiKey::ApiVersions as i16 {
            return Ok(Answer::Ready(Some(standalone_answers::api_versions(
                version,
                correlation_id,
            )?)));
        }
        if !standalone_answers::serves(api_key, version) {
            self.standalone.log_refusal(&client, api_key, version);
            return Ok(Answer::Ready(Some(standalone_answers::unsupported(
                api_key,
                version,
                correlation_id,
                &body,
            ))));
        }
        match ApiKey::try_from(api_key) {
            Ok(ApiKey::Metadata) => Ok(Answer::Ready(Some(self.metadata(
                version,
                correlation_id,
                &body,
            )?))),
            Ok(ApiKey::InitProducerId) => self.init_producer_id(version, correlation_id, &body),
            Ok(ApiKey::Produce) => {
                let acks = peek_acks(version, &body)
                    .map_err(|source| StandaloneError::Produce { version, source })?;
                if acks_seen.insert(acks) {
                    self.proxy.inventory.acks_used(&client, acks);
                }
                self.produce(version, correlation_id, body, client, received)
                    .await
            }
            _ => unreachable!("serves() lists exactly the APIs answered here"),
        }
    }

    fn metadata(
        &self,
        version: i16,
        correlation_id: i32,
        body: &Bytes,
    ) -> Result<Bytes, StandaloneAnswerError> {
        let listener = &self.proxy.config.listener;
        let routes = self.proxy.mirror.routes();
        let mut served: Vec<ServedTopic<'_>> = routes
            .iter()
            .map(|(topic, route)| ServedTopic {
                name: topic,
                partitions: route.partitions,
            })
            .collect();
        served.sort_by_key(|topic| topic.name);
        let broker = Broker {
            host: &listener.advertised_host,
            port: listener.bootstrap_port,
            cluster_id: &self.standalone.cluster_id,
        };
        standalone_answers::metadata(version, correlation_id, body, &broker, &served)
    }

    /// Idempotent producers get a fresh persisted id; transactional ones a refusal, because
    /// no transaction coordinator exists without Kafka.
    fn init_producer_id(
        &self,
        version: i16,
        correlation_id: i32,
        body: &Bytes,
    ) -> Result<Answer, StandaloneError> {
        if let Some(transactional_id) =
            standalone_answers::init_producer_id_transactional_id(version, body)?
        {
            tracing::warn!(
                peer = %self.peer,
                transactional_id,
                "InitProducerId refused with TRANSACTIONAL_ID_AUTHORIZATION_FAILED: this proxy runs standalone (no [kafka]); its kinesis-only routes take idempotent producers, not transactions"
            );
            let refused = Err(ResponseError::TransactionalIdAuthorizationFailed.code());
            return Ok(Answer::Ready(Some(standalone_answers::init_producer_id(
                version,
                correlation_id,
                refused,
            )?)));
        }
        let standalone = self.standalone.clone();
        Ok(Answer::Later(tokio::spawn(async move {
            let ids = standalone.producer_ids.next().await?;
            Ok(Some(standalone_answers::init_producer_id(
                version,
                correlation_id,
                Ok(ids),
            )?))
        })))
    }

    /// Places the request's batches (offsets, the mirror's queue) now, and answers once
    /// Kinesis has them; the mirror refuses transactional batches.
    async fn produce(
        &self,
        version: i16,
        correlation_id: i32,
        body: Bytes,
        client: Arc<ClientKey>,
        received: Instant,
    ) -> Result<Answer, StandaloneError> {
        let mirror = &self.proxy.mirror;
        if let Some(refusal) = mirror.refusal(version, &body, correlation_id) {
            return Ok(Answer::Ready(Some(refusal?)));
        }
        let request = ProduceRequestView::decode(version, body.clone())
            .map_err(|source| StandaloneError::Produce { version, source })?;
        let placed = mirror
            .answer_locally(client, request, Some(body), correlation_id, received)
            .await?;
        Ok(match placed {
            Some(answer) => Answer::Later(tokio::spawn(
                async move { Ok(Some(answer.settle().await?)) },
            )),
            None => Answer::Ready(None),
        })
    }

    async fn write_answers(
        &self,
        mut client_wr: StreamWriter,
        mut answers: mpsc::Receiver<Queued>,
    ) -> Result<(), StandaloneError> {
        // Once the client is gone, answers are still awaited (their work goes on) but not
        // written.
        let mut client_gone = false;
        while let Some(queued) = answers.recv().await {
            let frame = match queued.answer {
                Answer::Ready(frame) => frame,
                Answer::Later(task) => match task.await {
                    Ok(outcome) => outcome?,
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                },
            };
            if let (Some(frame), false) = (frame, client_gone) {
                if let Err(e) = client_wr.write_all(&frame).await {
                    tracing::debug!(peer = %self.peer, error = %e, "client gone before its answers");
                    client_gone = true;
                }
            }
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            let timers = self.proxy.metrics.api_timers(queued.api_key);
            timers
                .request
                .observe(queued.received.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// The client behind this connection, re-keyed in the inventory if it changes its
    /// client_id mid-connection.
    fn identify(&self, current: &mut Option<Arc<ClientKey>>, client_id: &str) -> Arc<ClientKey> {
        if let Some(key) = current.as_ref().filter(|k| k.client_id == client_id) {
            return key.clone();
        }
        let key = Arc::new(ClientKey {
            client_id: client_id.to_owned(),
            address: self.peer.ip(),
        });
        if let Some(previous) = current.replace(key.clone()) {
            self.proxy.inventory.connection_closed(&previous);
        }
        self.proxy.inventory.connection_opened(&key);
        key
    }
}
