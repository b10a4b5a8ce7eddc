//! The mirror's side of the write-ahead log: which exchanges are logged, and the replay of
//! an earlier run's into the stage before the listeners open.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{ExchangeLog, Replay, Replayed, Wal};
use crate::kafka::produce::ProduceRequestView;
use crate::kinesis::writer::WriterSettings;
use crate::mirror::{Mirror, ProduceExchange, StageInput};
use crate::telemetry::inventory::ClientKey;
use crate::telemetry::metrics::Metrics;

/// Exchanges read from the log at a time during a replay.
const REPLAY_CHUNK: usize = 256;

/// Opens the log off the async workers (it scans every segment); `(None, None)` when there is
/// none, or when it cannot be opened (logged: the mirror then runs as in `memory` mode).
pub(in crate::mirror) async fn open_in_background(
    settings: &WriterSettings,
    metrics: &Arc<Metrics>,
) -> (Option<Arc<Wal>>, Option<Replay>) {
    let (spool, durability) = (settings.spool.clone(), settings.buffer.durability);
    let wal_metrics = metrics.wal.clone();
    let spooled_bytes = {
        let metrics = metrics.clone();
        Arc::new(move || metrics.spool_bytes_total())
    };
    let opened = tokio::task::spawn_blocking(move || {
        Wal::open(&spool, durability, wal_metrics, spooled_bytes)
    })
    .await
    .expect("write-ahead log open task");
    match opened {
        Ok(Some((wal, replay))) => (Some(Arc::new(wal)), Some(replay)),
        Ok(None) => (None, None),
        Err(e) => {
            tracing::error!(error = %e, "cannot open the write-ahead log: a crash loses what waits in memory, as with durability = \"memory\"");
            (None, None)
        }
    }
}

impl Mirror {
    /// Logs `exchange` when it names a routed topic, before its client is answered.
    pub(in crate::mirror) async fn log_exchange(
        &self,
        exchange: &ProduceExchange,
    ) -> Option<Arc<ExchangeLog>> {
        let wal = self.wal.as_ref()?;
        // Only the topic names are read; an undecodable request is the stage's to count.
        let request =
            ProduceRequestView::decode(exchange.version, exchange.request_body.clone()).ok()?;
        let routes = self.routes.load();
        if !request.topics.iter().any(|t| routes.contains_key(&t.name)) {
            return None;
        }
        wal.append(
            &exchange.client.client_id,
            exchange.version,
            &exchange.request_body,
            exchange.response_frame.as_ref(),
        )
        .await
    }

    /// Hands the exchanges an earlier run left in the log to the stage, in log order, and
    /// waits until the stage has taken them all: live exchanges then queue behind them.
    /// It owns `wal_replay_remaining_bytes` meanwhile: nothing is deferred before the mirror
    /// is handed out, once this is done.
    pub(in crate::mirror) async fn replay_wal(&self, mut replay: Replay) {
        let size = replay.size();
        let records = replay.records.clone();
        let cut_short = loop {
            let (back, chunk) = tokio::task::spawn_blocking(move || {
                let chunk = replay.next_entries(REPLAY_CHUNK);
                (replay, chunk)
            })
            .await
            .expect("write-ahead log replay task");
            replay = back;
            let chunk = match chunk {
                Ok(chunk) if chunk.is_empty() => break false,
                Ok(chunk) => chunk,
                Err(e) => {
                    tracing::error!(error = %e, bytes_left = replay.remaining_bytes(), "cannot read the write-ahead log: what is left of it is replayed after the next restart");
                    // This run reads none of it back: left counted, it would show the mirror
                    // behind until the next restart, and hide when deferrals are caught up.
                    self.metrics.wal.replay_remaining_bytes.set(0);
                    break true;
                }
            };
            for replayed in chunk {
                let (logged_exchange, logged) = match replayed {
                    Replayed::Exchange(exchange, logged) => (exchange, logged),
                    Replayed::TxnControl(control) => {
                        if self.tx.send(StageInput::TxnControl(control)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                // Its address is not logged, so unknown: the key names the client in log lines
                // only, as the stage counts no client for a replayed exchange.
                let client = Arc::new(ClientKey {
                    client_id: logged_exchange.client_id.clone(),
                    address: Ipv4Addr::UNSPECIFIED.into(),
                });
                let sent = self
                    .send_read_back(logged_exchange, client, Default::default(), logged)
                    .await;
                if !sent {
                    return;
                }
            }
            self.metrics
                .wal
                .replay_remaining_bytes
                .set(replay.remaining_bytes() as i64);
        };
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.tx.send(StageInput::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
        if cut_short {
            return;
        }
        tracing::info!(
            exchanges = size.exchanges,
            records = records.load(Ordering::Relaxed),
            bytes = size.bytes,
            skipped_delivered = size.skipped_delivered,
            "write-ahead log replayed"
        );
    }
}
