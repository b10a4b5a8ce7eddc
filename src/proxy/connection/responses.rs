//! The response side of a connection: pairs each upstream answer with its request, rewrites
//! what must change, hands Produce and transaction-control exchanges to the mirror once
//! Kafka's verdict is known, and then answers the client.

use bytes::Bytes;
use futures::StreamExt;
use kafka_protocol::messages::ApiKey;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;

use super::super::buffer_budget::Held;
use super::super::sasl::SaslError;
use super::super::tls::{StreamReader, StreamWriter};
use super::{api_name, Closed, Connection, ConnectionError, Handling, Pending, MAX_RESPONSE_BYTES};
use crate::kafka::frame::FrameCodec;
use crate::kafka::header::response_correlation_id;
use crate::kafka::message::MessageError;
use crate::kafka::rewrite::{carries_addresses, rewrite_response, RewriteError};
use crate::kafka::versions::negotiate_response;
use crate::mirror::{ProduceExchange, TxnControlExchange};
use std::sync::atomic::Ordering;

/// Writes a response to the client unless a write already failed. A failure does not end the
/// response side: the broker's remaining answers must still be read and Produce exchanges
/// handed to the mirror, so the failure is kept and becomes the connection's outcome.
async fn answer_client(
    client_wr: &mut StreamWriter,
    client_gone: &mut Option<std::io::Error>,
    response: &[u8],
) {
    if client_gone.is_none() {
        if let Err(e) = client_wr.write_all(response).await {
            *client_gone = Some(e);
        }
    }
}

impl Connection {
    pub(super) async fn forward_responses(
        &self,
        upstream_rd: StreamReader,
        mut client_wr: StreamWriter,
        mut pending: mpsc::Receiver<Pending>,
    ) -> Result<Closed, ConnectionError> {
        let mut frames = FramedRead::new(upstream_rd, FrameCodec::new(MAX_RESPONSE_BYTES));
        // Set once a write to the client fails; the broker's answers are still read.
        let mut client_gone = None;
        // acks=0 Produce requests the broker has not yet vouched for, oldest first.
        // Each keeps its request's bytes held in the buffer budget until it is handed over.
        let mut unproven: Vec<(ProduceExchange, Option<Held>)> = Vec::new();
        loop {
            // `biased`: a request's entry is queued before the request is written upstream, so
            // when a response is readable its entry is already in the queue.
            let entry = tokio::select! {
                biased;
                entry = pending.recv() => match entry {
                    Some(entry) => entry,
                    // Every request is answered; read what the broker still sends (answers
                    // to acks=0 requests from brokers that send them) until it closes.
                    None => {
                        while let Some(Ok(_)) = frames.next().await {}
                        return match client_gone {
                            Some(e) => Err(ConnectionError::ClientWrite(e)),
                            None => Ok(Closed::ByClient),
                        };
                    }
                },
                frame = frames.next() => return match frame {
                    None => Ok(Closed::ByUpstream),
                    Some(Ok(frame)) if self.is_acks0_answer(&frame) => continue,
                    Some(Ok(_)) => Err(ConnectionError::Unsolicited),
                    Some(Err(e)) => Err(ConnectionError::UpstreamFrame(e)),
                },
            };
            let Pending {
                api_key,
                api_version,
                correlation_id,
                handling,
                received,
                forwarded,
                held,
            } = entry;
            let mut handling = match handling {
                Handling::Unanswered(Some(exchange)) => {
                    unproven.push((exchange, held));
                    continue;
                }
                Handling::Local(response) => {
                    answer_client(&mut client_wr, &mut client_gone, &response).await;
                    self.in_flight.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                // Answered in its turn, though nothing comes from upstream for it.
                Handling::LocalProduce(answer) => {
                    let answered = match answer {
                        Some(answer) => answer.settle().await.map(Some),
                        None => Ok(None),
                    };
                    if let Ok(Some(response)) = &answered {
                        answer_client(&mut client_wr, &mut client_gone, response).await;
                    }
                    self.in_flight.fetch_sub(1, Ordering::AcqRel);
                    let timers = self.proxy.metrics.api_timers(api_key);
                    timers.request.observe(received.elapsed().as_secs_f64());
                    answered.map_err(|e| ConnectionError::Response {
                        api: api_name(api_key),
                        version: api_version,
                        source: e.into(),
                    })?;
                    continue;
                }
                handling => handling,
            };
            let bare = matches!(handling, Handling::SaslToken);
            let frame = loop {
                match frames.next().await {
                    None => {
                        self.forget_unproven(&unproven);
                        return Ok(Closed::ByUpstream);
                    }
                    Some(Err(e)) => return Err(ConnectionError::UpstreamFrame(e)),
                    Some(Ok(frame)) if bare => break frame,
                    // The awaited response wins, even if a client reused an acks=0 request's id.
                    Some(Ok(frame)) if response_correlation_id(&frame) == Some(correlation_id) => {
                        break frame
                    }
                    Some(Ok(frame)) if self.is_acks0_answer(&frame) => continue,
                    Some(Ok(frame)) => break frame,
                }
            };
            let _response_held = self.proxy.buffer_budget.charge(frame.len());
            let got = response_correlation_id(&frame).unwrap_or(i32::MIN);
            if !bare && got != correlation_id {
                return Err(ConnectionError::CorrelationMismatch {
                    expected: correlation_id,
                    got,
                    api: api_name(api_key),
                    version: api_version,
                });
            }
            // The broker answered a request sent after these acks=0 requests, so it kept the
            // connection past them: they were not refused.
            let proven = std::mem::take(&mut unproven);
            // Before the client hears the answer, so that its next request sees the outcome.
            self.observe_sasl(&mut handling, &frame, api_version)?;
            let rewritten = self.rewrite(&handling, &frame, api_key, api_version);
            let is_probe = matches!(handling, Handling::Probe);
            // The mirror sees the exchange before the client hears the answer: a client that
            // then ends its transaction on another connection must find its records already in
            // the mirror's queue. It sees it even when the client cannot be answered, because
            // Kafka has stored (or rejected) the records either way.
            for (exchange, _held) in proven {
                self.proxy.mirror.hand_over(exchange).await;
            }
            // kinesis-primary partitions: the answer waits for Kinesis too.
            let mut primary = None;
            let mut local = None;
            match handling {
                Handling::Produce {
                    exchange,
                    local: merged,
                } => {
                    local = merged;
                    if let Some(mut exchange) = exchange {
                        exchange.response_frame = Some(frame.clone());
                        primary = self.proxy.mirror.hand_over(exchange).await;
                    }
                }
                Handling::TxnControl { api, request_body } => {
                    let exchange = TxnControlExchange {
                        api,
                        version: api_version,
                        request_body,
                        response_frame: frame.clone(),
                    };
                    self.proxy.mirror.hand_over_txn_control(exchange).await;
                }
                _ => {}
            }
            let rewritten = match (rewritten, primary) {
                (Ok(rewritten), Some(primary)) => primary
                    .settle(rewritten.unwrap_or_else(|| frame.clone()), received)
                    .await
                    .map(Some)
                    .map_err(|e| ConnectionError::Response {
                        api: api_name(api_key),
                        version: api_version,
                        source: e.into(),
                    }),
                (rewritten, _) => rewritten,
            };
            // The request's kinesis-only topics, answered by the proxy.
            let rewritten = match (rewritten, local) {
                (Ok(rewritten), Some(local)) => local
                    .merge_into(rewritten.as_ref().unwrap_or(&frame), api_version)
                    .await
                    .map(Some),
                (rewritten, _) => rewritten,
            };
            if let (Ok(rewritten), false) = (&rewritten, is_probe) {
                answer_client(
                    &mut client_wr,
                    &mut client_gone,
                    rewritten.as_ref().unwrap_or(&frame),
                )
                .await;
            }
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            if !is_probe {
                let timers = self.proxy.metrics.api_timers(api_key);
                timers.upstream.observe(forwarded.elapsed().as_secs_f64());
                timers.request.observe(received.elapsed().as_secs_f64());
            }
            rewritten?;
        }
    }

    /// Updates the SASL session from the broker's answer to a SASL request.
    fn observe_sasl(
        &self,
        handling: &mut Handling,
        frame: &[u8],
        version: i16,
    ) -> Result<(), SaslError> {
        let mut sasl = self.sasl.lock().expect("sasl lock");
        match handling {
            Handling::SaslHandshake(v0) => {
                let accepted = sasl.handshake_response(frame, version)?;
                if let Some(v0) = v0.take() {
                    // The request loop may have ended; then no token follows anyway.
                    let _ = v0.send(accepted);
                }
            }
            Handling::SaslAuthenticate => sasl.authenticate_response(frame, version)?,
            // With v0 the broker answers only a token it accepted; else it closes.
            Handling::SaslToken => sasl.round_succeeded(),
            _ => {}
        }
        Ok(())
    }

    fn forget_unproven(&self, unproven: &[(ProduceExchange, Option<Held>)]) {
        if !unproven.is_empty() {
            tracing::info!(
                peer = %self.peer,
                requests = unproven.len(),
                "not mirroring acks=0 Produce requests: the broker closed the connection after them, \
                 which is how Kafka refuses one"
            );
        }
    }

    /// Whether `frame` answers an acks=0 Produce request; if so it is forgotten.
    fn is_acks0_answer(&self, frame: &Bytes) -> bool {
        let Some(id) = self.acks0_sent.take_answer(frame) else {
            return false;
        };
        tracing::debug!(peer = %self.peer, correlation_id = id, "discarding the broker's answer to an acks=0 Produce");
        true
    }

    /// The response to send instead of `frame`, if it must change.
    fn rewrite(
        &self,
        handling: &Handling,
        frame: &Bytes,
        api_key: i16,
        version: i16,
    ) -> Result<Option<Bytes>, ConnectionError> {
        let failed = |source: RewriteError| ConnectionError::Response {
            api: api_name(api_key),
            version,
            source,
        };
        let key = match handling {
            Handling::Forward
            | Handling::TxnControl { .. }
            | Handling::Local(_)
            | Handling::LocalProduce(_)
            | Handling::Unanswered(_)
            | Handling::SaslHandshake(_)
            | Handling::SaslAuthenticate
            | Handling::SaslToken
            | Handling::Probe => return Ok(None),
            Handling::NegotiateVersions => {
                return negotiate_response(frame, version)
                    .map_err(|e: MessageError| failed(e.into()));
            }
            Handling::Produce { .. } if !carries_addresses(ApiKey::Produce, version) => {
                return Ok(None)
            }
            Handling::Produce { .. } => ApiKey::Produce,
            Handling::RewriteAddresses(key) => *key,
        };
        // The listener for every broker named must exist before the client hears of it.
        let listen = |node_id, port| self.proxy.ensure_broker_listener(node_id, port);
        let mut rewriter = self.proxy.directory.rewriter(&listen);
        rewrite_response(frame, key, version, &mut rewriter).map_err(failed)
    }
}
