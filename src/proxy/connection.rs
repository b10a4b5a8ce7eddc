//! One client connection and its one upstream connection.
//!
//! Two loops run side by side. `forward_requests` reads client frames, decides from the header
//! alone how the response must be handled, queues that decision, and writes the original frame
//! upstream. `forward_responses` takes the decisions in order and pairs each with the next
//! upstream frame: Kafka answers requests on a connection in order, so FIFO pairing is exact,
//! and the correlation id is checked to prove it. A Produce with acks=0 gets no response; its
//! entry waits for the next upstream response to vouch that the broker kept the connection past
//! it (Kafka closes the connection of an acks=0 Produce it rejects), and when the client sends
//! nothing more, the proxy asks an ApiVersions of its own and swallows the answer. Bare SASL
//! tokens after SaslHandshake v0 have no header: they are paired by order alone.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

mod acks0;
pub(super) mod client_frames;
mod error;
mod kinesis_only;
mod responses;

use super::buffer_budget::Held;
use super::sasl::SaslSession;
use super::tls::{Stream, StreamReader, StreamWriter};
use super::Proxy;
use crate::kafka::header::RequestHeader;
use crate::kafka::produce::peek_acks;
use crate::kafka::rewrite::carries_addresses;
use crate::kafka::versions::{max_api_versions_version, unsupported_version_response};
use crate::mirror::{LocalAnswer, ProduceExchange, TxnControl};
use crate::telemetry::inventory::ClientKey;
use acks0::{Acks0Ids, Probes};
use client_frames::{ClientEvent, ClientFrames, FrameLimit};
pub use error::ConnectionError;
use kinesis_only::{KinesisOnlySplit, MergedAnswer};

/// Requests a client may pipeline before the proxy stops reading from it. Kafka clients cap
/// their own in-flight requests far below this; it only bounds memory for a misbehaving one.
const MAX_PIPELINED: usize = 1024;

/// How long a connection the client closed may wait for the broker to finish.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Upstream responses are trusted to be well formed; the limit only guards against a
/// nonsensical size prefix.
const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

/// How a response must be treated before it goes back to the client.
enum Handling {
    Forward,
    NegotiateVersions,
    RewriteAddresses(ApiKey),
    /// Forwarded (with NodeEndpoints rewritten where the version has them), then handed to
    /// the mirror with the response filled in; `None` when sent before the connection
    /// authenticated, which is never mirrored. `local`: the answer to the request's
    /// kinesis-only topics, which the proxy gives itself, merged into Kafka's.
    Produce {
        exchange: Option<ProduceExchange>,
        local: Option<MergedAnswer>,
    },
    /// Answered by the proxy itself; nothing was sent upstream.
    Local(Bytes),
    /// A Produce of kinesis-only topics alone: answered by the proxy once Kinesis has its
    /// records; nothing was sent upstream. `None` for acks=0.
    LocalProduce(Option<LocalAnswer>),
    /// EndTxn or InitProducerId: forwarded, then handed to the mirror with its response, which
    /// decides held transactional records by them.
    TxnControl {
        api: TxnControl,
        request_body: Bytes,
    },
    /// Produce with acks=0: no response will come. Mirrored once a later upstream response
    /// shows the broker kept the connection; `None` when it may not be mirrored at all.
    Unanswered(Option<ProduceExchange>),
    /// Forwarded; the error code tells whether the broker took the mechanism, and for v0 the
    /// request loop hears it, because then bare tokens follow.
    SaslHandshake(Option<oneshot::Sender<bool>>),
    /// Forwarded; the error code tells whether the round succeeded.
    SaslAuthenticate,
    /// A bare token after SaslHandshake v0: no header, no correlation id; its answer is the
    /// next upstream frame, also bare, and proves the round succeeded.
    SaslToken,
    /// The proxy's own ApiVersions, vouching for acks=0 requests; the client never sees it.
    Probe,
}

struct Pending {
    api_key: i16,
    api_version: i16,
    correlation_id: i32,
    handling: Handling,
    /// When the request was read from the client.
    received: Instant,
    /// When it was written upstream.
    forwarded: Instant,
    /// The request's bytes in the proxy's buffer budget, released when its answer is handled
    /// (a Produce request's body stays in memory for the mirror until then).
    held: Option<Held>,
}

impl Pending {
    /// A request about to go upstream now.
    fn new(
        api_key: i16,
        api_version: i16,
        correlation_id: i32,
        handling: Handling,
        received: Instant,
    ) -> Pending {
        Pending {
            api_key,
            api_version,
            correlation_id,
            handling,
            received,
            forwarded: Instant::now(),
            held: None,
        }
    }

    fn holding(self, held: Held) -> Pending {
        Pending {
            held: Some(held),
            ..self
        }
    }
}

/// What the request loop knows about its client, kept local so that steady traffic takes no
/// lock: the inventory hears only of what is new.
struct ClientState {
    key: Arc<ClientKey>,
    versions_seen: HashSet<(i16, i16)>,
    acks_seen: HashSet<i16>,
}

/// Why a connection ended without error.
#[derive(Debug)]
pub enum Closed {
    ByClient,
    ByUpstream,
    Idle,
}

pub struct Connection {
    proxy: Arc<Proxy>,
    peer: SocketAddr,
    /// The client as last identified, for logs and the inventory's connection count.
    client: Mutex<Option<Arc<ClientKey>>>,
    in_flight: AtomicUsize,
    acks0_sent: Acks0Ids,
    sasl: Mutex<SaslSession>,
}

fn api_name(api_key: i16) -> String {
    match ApiKey::try_from(api_key) {
        Ok(key) => format!("{key:?}"),
        Err(()) => format!("api_key {api_key}"),
    }
}

impl Connection {
    pub fn new(proxy: Arc<Proxy>, peer: SocketAddr) -> Self {
        Connection {
            proxy,
            peer,
            client: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            acks0_sent: Acks0Ids::default(),
            sasl: Mutex::new(SaslSession::default()),
        }
    }

    /// Serves the connection until either side closes it, then closes the other side.
    pub async fn run(self, client: Stream, upstream: Stream) {
        let (client_rd, client_wr) = client.into_split();
        let (upstream_rd, upstream_wr) = upstream.into_split();
        let (tx, rx) = mpsc::channel(MAX_PIPELINED);
        let requests = self.forward_requests(client_rd, upstream_wr, tx);
        let responses = self.forward_responses(upstream_rd, client_wr, rx);
        tokio::pin!(requests, responses);
        let outcome = tokio::select! {
            r = &mut requests => match r {
                // Nothing in flight, so nothing to wait for.
                Ok(Closed::Idle) => Ok(Closed::Idle),
                // However the request side ended (the client closed, reset the connection or
                // sent garbage), upstream's write half is closed after the last request. Let
                // the broker finish: Kafka's verdict on a Produce decides what is mirrored,
                // whether or not the client is there to hear it, and closing with its answers
                // unread would reset the connection and could discard requests it has not
                // processed yet.
                ended => match (ended, tokio::time::timeout(DRAIN_TIMEOUT, &mut responses).await) {
                    (Err(e), _) => Err(e),
                    // A client that left cannot take its answers; that is not an error.
                    (Ok(how), Ok(Ok(_)) | Ok(Err(ConnectionError::ClientWrite(_))) | Err(_)) => Ok(how),
                    (Ok(_), Ok(Err(e))) => Err(e),
                },
            },
            r = &mut responses => r,
        };
        let client = self.client.lock().expect("client lock").take();
        if let Some(key) = &client {
            self.proxy.inventory.connection_closed(key);
        }
        let client_id = client.as_ref().map_or("-", |k| k.client_id.as_str());
        match outcome {
            Ok(how) => tracing::debug!(peer = %self.peer, client_id, ?how, "connection closed"),
            Err(e) => {
                tracing::warn!(peer = %self.peer, client_id, error = %e, "connection closed on error")
            }
        }
    }

    async fn forward_requests(
        &self,
        client_rd: StreamReader,
        mut upstream_wr: StreamWriter,
        pending: mpsc::Sender<Pending>,
    ) -> Result<Closed, ConnectionError> {
        let listener = &self.proxy.config.listener;
        let mut frames = ClientFrames::new(
            client_rd,
            self.proxy.buffer_budget.clone(),
            listener.frame_timeout,
        );
        let frame_limit = || self.frame_limit();
        let idle_timeout = listener.idle_timeout;
        let mut client: Option<ClientState> = None;
        // Bare SASL tokens still to come after an accepted SaslHandshake v0.
        let mut tokens_expected = 0u8;
        // Set while an acks=0 Produce has been sent that no answered request sent since
        // vouches for: by then the proxy sends its own request.
        let mut proof_due: Option<tokio::time::Instant> = None;
        let mut probes = Probes::default();
        loop {
            let next = tokio::select! {
                next = frames.next(frame_limit, idle_timeout) => next,
                _ = tokio::time::sleep_until(proof_due.unwrap_or_else(tokio::time::Instant::now)),
                    if proof_due.is_some() =>
                {
                    proof_due = None;
                    if !self.send_probe(&mut upstream_wr, &pending, &mut probes).await? {
                        return Ok(Closed::ByUpstream);
                    }
                    continue;
                }
                // Shutdown: read no more requests; the ones in flight finish as on a client close.
                _ = self.proxy.stopping.cancelled() => Ok(ClientEvent::Closed),
            };
            let (frame, held) = match next {
                Ok(ClientEvent::Idle) if self.in_flight.load(Ordering::Acquire) == 0 => {
                    return Ok(Closed::Idle)
                }
                Ok(ClientEvent::Idle) => continue,
                Ok(ClientEvent::Closed) => {
                    // The last acks=0 records still need the broker's word before they leave.
                    if proof_due.is_some() {
                        self.send_probe(&mut upstream_wr, &pending, &mut probes)
                            .await?;
                    }
                    let _ = upstream_wr.shutdown().await;
                    return Ok(Closed::ByClient);
                }
                Err(e) => {
                    if let Some(reason) = e.limit() {
                        self.proxy.metrics.connection_refused(reason);
                    }
                    return Err(ConnectionError::ClientFrame(e));
                }
                Ok(ClientEvent::Frame(frame, held)) => (frame, held),
            };
            let received = Instant::now();
            if tokens_expected > 0 {
                // A bare token has no header to read; it is paired with the next answer.
                tokens_expected -= 1;
                let entry = Pending::new(
                    ApiKey::SaslAuthenticate as i16,
                    0,
                    0,
                    Handling::SaslToken,
                    received,
                )
                .holding(held);
                if !self
                    .send_upstream(&mut upstream_wr, &pending, entry, &frame)
                    .await?
                {
                    return Ok(Closed::ByUpstream);
                }
                continue;
            }
            let header = RequestHeader::parse(&frame)?;
            let client = self.identify(&mut client, header.client_id.unwrap_or(""));
            if client
                .versions_seen
                .insert((header.api_key, header.api_version))
            {
                self.proxy.inventory.api_used(
                    &client.key,
                    &api_name(header.api_key),
                    header.api_version,
                );
            }
            let mut handshake_v0 = None;
            // What goes upstream when it is not the client's frame: the Kafka part of a
            // Produce that also names kinesis-only topics.
            let mut kafka_part = None;
            let handling = if header.api_key == ApiKey::SaslHandshake as i16 {
                let (handling, v0) = self.sasl_handshake(&header, &frame)?;
                handshake_v0 = v0;
                handling
            } else {
                let (handling, part) = self.handling_for(&header, &frame, client, received).await?;
                kafka_part = part;
                handling
            };
            let upstream_frame = kafka_part.as_ref().unwrap_or(&frame);
            match &handling {
                // Nothing will answer it, and it may not be mirrored: nothing to wait for.
                Handling::Unanswered(None) => {
                    upstream_wr
                        .write_all(upstream_frame)
                        .await
                        .map_err(ConnectionError::UpstreamWrite)?;
                    continue;
                }
                Handling::Unanswered(Some(_)) => {
                    proof_due
                        .get_or_insert_with(|| tokio::time::Instant::now() + acks0::PROOF_DELAY);
                }
                // Nothing goes to Kafka, whose answer could vouch.
                Handling::Local(_) | Handling::LocalProduce(_) => {}
                // Its answer will vouch for every acks=0 request sent before it.
                _ => proof_due = None,
            }
            let entry = Pending::new(
                header.api_key,
                header.api_version,
                header.correlation_id,
                handling,
                received,
            )
            .holding(held);
            if !self
                .send_upstream(&mut upstream_wr, &pending, entry, upstream_frame)
                .await?
            {
                return Ok(Closed::ByUpstream);
            }
            if let Some((accepted, rounds)) = handshake_v0 {
                // Whether bare tokens follow depends on the broker's answer; the client waits
                // for it too before it sends a token.
                match accepted.await {
                    Ok(true) => tokens_expected = rounds,
                    Ok(false) => {}
                    Err(_) => return Ok(Closed::ByUpstream),
                }
            }
        }
    }

    /// The size limit for the client's next frame: smaller until a client of a listener that
    /// requires SASL has authenticated.
    fn frame_limit(&self) -> FrameLimit {
        let listener = &self.proxy.config.listener;
        if listener.sasl_required && !self.sasl.lock().expect("sasl lock").authenticated() {
            FrameLimit {
                max: listener.max_unauthenticated_frame_bytes,
                key: "listener.max_unauthenticated_frame_bytes",
            }
        } else {
            FrameLimit {
                max: listener.max_frame_bytes,
                key: "listener.max_frame_bytes",
            }
        }
    }

    /// Queues `entry` and writes `frame` upstream (unless the proxy answers it itself).
    /// `false`: the response side has ended.
    async fn send_upstream(
        &self,
        upstream_wr: &mut StreamWriter,
        pending: &mpsc::Sender<Pending>,
        entry: Pending,
        frame: &[u8],
    ) -> Result<bool, ConnectionError> {
        let local = matches!(
            entry.handling,
            Handling::Local(_) | Handling::LocalProduce(_)
        );
        if !matches!(entry.handling, Handling::Unanswered(_)) {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
        }
        // Queued before the request goes upstream, so the response always finds it.
        if pending.send(entry).await.is_err() {
            return Ok(false);
        }
        if !local {
            upstream_wr
                .write_all(frame)
                .await
                .map_err(ConnectionError::UpstreamWrite)?;
        }
        Ok(true)
    }

    /// Sends an ApiVersions v0 of the proxy's own, whose answer vouches for the acks=0 requests
    /// before it. Not while a SASL exchange is in progress: Kafka would take it for the
    /// exchange's next step and fail the authentication; the exchange's own answers vouch then.
    async fn send_probe(
        &self,
        upstream_wr: &mut StreamWriter,
        pending: &mpsc::Sender<Pending>,
        probes: &mut Probes,
    ) -> Result<bool, ConnectionError> {
        if !self.sasl.lock().expect("sasl lock").may_interject() {
            return Ok(true);
        }
        let (correlation_id, frame) = probes.next();
        let entry = Pending::new(
            ApiKey::ApiVersions as i16,
            0,
            correlation_id,
            Handling::Probe,
            Instant::now(),
        );
        self.send_upstream(upstream_wr, pending, entry, &frame)
            .await
    }

    /// Records a SaslHandshake request's mechanism. For v0, also a receiver for whether the
    /// broker took it, and how many bare tokens follow then.
    #[allow(clippy::type_complexity)]
    fn sasl_handshake(
        &self,
        header: &RequestHeader<'_>,
        frame: &[u8],
    ) -> Result<(Handling, Option<(oneshot::Receiver<bool>, u8)>), ConnectionError> {
        let body = header.body_offset.map_or(&frame[..0], |o| &frame[o..]);
        let mut sasl = self.sasl.lock().expect("sasl lock");
        let Some(tokens) = sasl.handshake_request(header.api_version, body)? else {
            return Ok((Handling::SaslHandshake(None), None));
        };
        let (accepted, answer) = oneshot::channel();
        Ok((
            Handling::SaslHandshake(Some(accepted)),
            Some((answer, tokens)),
        ))
    }

    /// Decides from the request header how its response is handled, and for a Produce that
    /// also names kinesis-only topics, the frame that goes to Kafka instead of `frame`.
    async fn handling_for(
        &self,
        header: &RequestHeader<'_>,
        frame: &Bytes,
        client: &mut ClientState,
        received: Instant,
    ) -> Result<(Handling, Option<Bytes>), ConnectionError> {
        let Ok(api_key) = ApiKey::try_from(header.api_key) else {
            return Ok((Handling::Forward, None));
        };
        let version = header.api_version;
        if api_key == ApiKey::SaslAuthenticate {
            return Ok((Handling::SaslAuthenticate, None));
        }
        let may_mirror = {
            let mut sasl = self.sasl.lock().expect("sasl lock");
            sasl.other_request_sent();
            sasl.may_mirror()
        };
        let handling = match api_key {
            ApiKey::ApiVersions if version > max_api_versions_version() => {
                Handling::Local(unsupported_version_response(header.correlation_id))
            }
            ApiKey::ApiVersions => Handling::NegotiateVersions,
            ApiKey::Produce => {
                let body = header
                    .body_offset
                    .map_or(&frame[..0], |offset| &frame[offset..]);
                let acks = peek_acks(version, body).map_err(|source| ConnectionError::Request {
                    api: api_name(header.api_key),
                    version,
                    source,
                })?;
                if client.acks_seen.insert(acks) {
                    self.proxy.inventory.acks_used(&client.key, acks);
                }
                let mut request_body = header
                    .body_offset
                    .map_or_else(Bytes::new, |offset| frame.slice(offset..));
                let refusal =
                    self.proxy
                        .mirror
                        .refusal(version, &request_body, header.correlation_id);
                if let Some(refusal) = refusal {
                    return refusal
                        .map(|refusal| (Handling::Local(refusal), None))
                        .map_err(|e| ConnectionError::Response {
                            api: api_name(header.api_key),
                            version,
                            source: e.into(),
                        });
                }
                // Unauthenticated records go to Kafka, which refuses them, and nowhere else.
                let mut kafka_part = None;
                let mut local = None;
                if may_mirror {
                    let split = self
                        .split_kinesis_only(header, frame, &request_body, client, received)
                        .await?;
                    match split {
                        KinesisOnlySplit::None => {}
                        KinesisOnlySplit::Local(answer) => {
                            return Ok((Handling::LocalProduce(answer), None))
                        }
                        KinesisOnlySplit::Mixed {
                            kafka_body,
                            kafka_frame,
                            answer,
                        } => {
                            request_body = kafka_body;
                            kafka_part = Some(kafka_frame);
                            local = answer;
                        }
                    }
                }
                // Sent before the connection authenticated: Kafka refuses it, and even were it
                // to store it, the records would be the word of someone it does not know.
                let exchange = may_mirror.then(|| ProduceExchange {
                    client: client.key.clone(),
                    version,
                    request_body,
                    response_frame: None,
                    deliveries: Default::default(),
                });
                if acks == 0 {
                    self.acks0_sent.remember(header.correlation_id);
                    return Ok((Handling::Unanswered(exchange), kafka_part));
                }
                return Ok((Handling::Produce { exchange, local }, kafka_part));
            }
            // Before authentication Kafka refuses them, and no record of their producer is held.
            ApiKey::EndTxn | ApiKey::InitProducerId if may_mirror => Handling::TxnControl {
                api: if api_key == ApiKey::EndTxn {
                    TxnControl::EndTxn
                } else {
                    TxnControl::InitProducerId
                },
                request_body: header
                    .body_offset
                    .map_or_else(Bytes::new, |offset| frame.slice(offset..)),
            },
            _ => self.address_handling(api_key, version),
        };
        Ok((handling, None))
    }

    fn address_handling(&self, api_key: ApiKey, version: i16) -> Handling {
        if carries_addresses(api_key, version) {
            Handling::RewriteAddresses(api_key)
        } else {
            Handling::Forward
        }
    }

    /// The client behind this connection: known from its first request, and re-keyed in the
    /// inventory if it changes its client_id mid-connection.
    fn identify<'s>(
        &self,
        state: &'s mut Option<ClientState>,
        client_id: &str,
    ) -> &'s mut ClientState {
        if state.as_ref().is_some_and(|s| s.key.client_id == client_id) {
            return state.as_mut().expect("checked above");
        }
        let key = Arc::new(ClientKey {
            client_id: client_id.to_owned(),
            address: self.peer.ip(),
        });
        let previous = self
            .client
            .lock()
            .expect("client lock")
            .replace(key.clone());
        if let Some(previous) = previous {
            self.proxy.inventory.connection_closed(&previous);
        }
        self.proxy.inventory.connection_opened(&key);
        state.insert(ClientState {
            key,
            versions_seen: HashSet::new(),
            acks_seen: HashSet::new(),
        })
    }
}
