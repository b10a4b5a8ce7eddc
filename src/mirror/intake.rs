//! How connections hand Produce exchanges to the stage without the Kafka path waiting for it.
//!
//! The stage's input queue is bounded (by exchanges and by bytes). When it is full:
//! - `when_full = "block"` waits for room;
//! - `"spill"` with a write-ahead log defers the exchange: the mirror falls behind and keeps
//!   only the exchange's place in the log (and what the log does not hold: its client, its
//!   log entry's handle, its kinesis-primary deliveries), not its bytes. Every later logged
//!   exchange queues behind it, so per-partition order holds; one catch-up task reads them
//!   back from the log, oldest first, and sends them to the stage, waiting for room, until
//!   none is left and connections hand exchanges over directly again;
//! - `"drop"`, or without a log (`durability = "memory"`, or an append that failed), sheds the
//!   exchange and counts it. While the mirror is behind, an exchange that could not be logged
//!   and owes the mirror records is shed too, even when the queue has room: the stage would
//!   take it ahead of the deferred exchanges, whose records of the same partitions came first.
//!   Shed, not held in memory: appends fail when the log's disk does, so every exchange would
//!   be held, for as long as the backlog takes to read back.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::primary::Deliveries;
use super::stream_queue::{make_room, Rooms};
use super::wal::{ExchangeLog, LoggedExchange, Wal};
use super::{
    produced_partitions, sampled_estimate, Mirror, ProduceExchange, StageBytes, StageInput,
    TxnControlExchange,
};
use crate::config::WhenFull;
use crate::kafka::produce::ProduceRequestView;
use crate::kafka::records::summarize;
use crate::telemetry::inventory::ClientKey;
use crate::telemetry::metrics::MirrorResult;

/// Deferred exchanges read back from the log at a time...
const CATCH_UP_CHUNK: usize = 256;
/// ...holding at most this many bytes (one exchange always goes).
const CATCH_UP_CHUNK_BYTES: u64 = 8 * 1024 * 1024;

/// An exchange the stage's queue had no room for, with its entry in the log.
type Refused = (ProduceExchange, Option<Arc<ExchangeLog>>);

/// The exchanges the mirror deferred, oldest first; connections queue behind them while any
/// is left.
#[derive(Default)]
pub(super) struct Deferred {
    state: Mutex<DeferredState>,
}

#[derive(Default)]
struct DeferredState {
    waiting: VecDeque<DeferredInput>,
    /// Set while the catch-up runs: since when, and what was deferred since.
    behind: Option<Behind>,
    /// Shutting down: the catch-up stops, and what is left is replayed at the next start.
    closed: bool,
}

struct Behind {
    since: Instant,
    exchanges: usize,
    bytes: u64,
}

/// What waits for the stage behind the deferred exchanges, in the order handed over. Each
/// stays until the catch-up sent it, so that inputs arriving meanwhile still queue behind it.
enum DeferredInput {
    /// A logged exchange waiting to be read back: what the log does not hold.
    Exchange {
        logged: Arc<ExchangeLog>,
        client: Arc<ClientKey>,
        /// Taken when the catch-up sends it.
        deliveries: Deliveries,
    },
    /// A transaction-control exchange, which must reach the stage after the Produce exchanges
    /// of its transaction: rare and small, so it waits in memory; `None` once taken to send.
    TxnControl(Option<TxnControlExchange>),
}

impl DeferredInput {
    fn logged(&self) -> Option<&Arc<ExchangeLog>> {
        match self {
            DeferredInput::Exchange { logged, .. } => Some(logged),
            DeferredInput::TxnControl(_) => None,
        }
    }

    /// Its bytes in the log, still to read into the mirror.
    fn log_bytes(&self) -> u64 {
        self.logged().map_or(0, |logged| logged.position().bytes)
    }
}

/// The front input, taken to send.
enum Front {
    Exchange(Arc<ExchangeLog>, Arc<ClientKey>, Deliveries),
    TxnControl(TxnControlExchange),
}

impl Deferred {
    fn lock(&self) -> MutexGuard<'_, DeferredState> {
        // The state is consistent after every statement: a panic elsewhere does not spoil it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Mirror {
    pub(super) async fn stage_exchange(
        &self,
        exchange: ProduceExchange,
        logged: Option<Arc<ExchangeLog>>,
    ) {
        let bytes = exchange.bytes();
        if self.when_full == WhenFull::Block {
            // Only the topics are decoded, not the records. An undecodable request takes no
            // room; the stage counts it.
            let rooms =
                match ProduceRequestView::decode(exchange.version, exchange.request_body.clone()) {
                    Ok(request) => make_room(&request, &self.routes.load_full()).await,
                    Err(_) => Rooms::new(),
                };
            self.queued_bytes.add(bytes);
            if self
                .tx
                .send(StageInput::Exchange(exchange, rooms, logged))
                .await
                .is_err()
            {
                self.queued_bytes.release(bytes);
            }
        } else {
            self.observe(exchange, bytes, logged);
        }
    }

    /// Hands an exchange to the stage without waiting: the Kafka path never blocks on the
    /// mirror. A full queue (by count or by bytes; one exchange alone always fits) defers a
    /// logged exchange in spill mode, and sheds it otherwise.
    fn observe(&self, exchange: ProduceExchange, bytes: usize, logged: Option<Arc<ExchangeLog>>) {
        let spill = self.when_full == WhenFull::Spill;
        let logged = match logged {
            Some(logged) if spill => logged,
            // Not logged in spill mode (its append failed, or it names no routed topic):
            // nothing to read it back from. Without a log, nothing is ever deferred.
            None if spill && self.wal.is_some() => return self.observe_unlogged(exchange, bytes),
            logged => return self.shed_refused(self.offer(exchange, bytes, logged)),
        };
        let mut state = self.deferred.lock();
        // Decided under the lock: the catch-up pops its last exchange under it too, so an
        // exchange is either sent behind every deferred one, or deferred behind them.
        let (exchange, logged) = if state.waiting.is_empty() {
            match self.offer(exchange, bytes, Some(logged)) {
                None => return,
                Some((exchange, logged)) => (exchange, logged.expect("offered logged")),
            }
        } else {
            (exchange, logged)
        };
        let log_bytes = logged.position().bytes;
        state.waiting.push_back(DeferredInput::Exchange {
            logged,
            client: exchange.client,
            deliveries: exchange.deliveries,
        });
        // Its bytes are the log's again: still to read into the mirror.
        self.metrics
            .wal
            .replay_remaining_bytes
            .add(log_bytes as i64);
        let closed = state.closed;
        match &mut state.behind {
            Some(behind) => {
                behind.exchanges += 1;
                behind.bytes += log_bytes;
            }
            // Shutting down: it waits in the log for the next start.
            None if closed => {}
            None => {
                tracing::warn!(
                    "the mirror fell behind: exchanges are read back from the write-ahead log"
                );
                state.behind = Some(Behind {
                    since: Instant::now(),
                    exchanges: 1,
                    bytes: log_bytes,
                });
                let wal = self
                    .wal
                    .clone()
                    .expect("only logged exchanges are deferred");
                tokio::spawn(self.clone().catch_up(wal));
            }
        }
    }

    /// Spill mode, an exchange not logged: shed while the mirror is behind, if it owes the
    /// mirror records (one that owes nothing cannot break their order).
    fn observe_unlogged(&self, exchange: ProduceExchange, bytes: usize) {
        // Under the lock, like a logged exchange: the catch-up cannot pop its last one between
        // the look and the offer.
        let state = self.deferred.lock();
        if !state.waiting.is_empty() && self.count_shed(&exchange) {
            drop(state);
            return self.count_shed_request();
        }
        let refused = self.offer(exchange, bytes, None);
        drop(state);
        self.shed_refused(refused);
    }

    /// Sends an exchange to the stage if its queue has room; what it refused otherwise.
    fn offer(
        &self,
        exchange: ProduceExchange,
        bytes: usize,
        logged: Option<Arc<ExchangeLog>>,
    ) -> Option<Refused> {
        let before = self.queued_bytes.add(bytes);
        let refused = if StageBytes::fits(before, bytes) {
            match self
                .tx
                .try_send(StageInput::Exchange(exchange, Rooms::new(), logged))
            {
                Ok(()) => return None,
                Err(full) => match full.into_inner() {
                    StageInput::Exchange(exchange, _, logged) => (exchange, logged),
                    _ => unreachable!("a Produce exchange was sent"),
                },
            }
        } else {
            (exchange, logged)
        };
        self.queued_bytes.release(bytes);
        Some(refused)
    }

    /// Drops the exchange the stage had no room for, if any, and counts it.
    fn shed_refused(&self, refused: Option<Refused>) {
        let Some((exchange, logged)) = refused else {
            return;
        };
        // Only `when_full = "drop"` sheds a logged exchange: the operator chose to lose it, so
        // a restart must not replay it.
        if let Some(logged) = logged {
            logged.dropped();
        }
        // An exchange that owed the mirror nothing (its topics are not routed) costs the mirror
        // nothing: only the producer inventory misses it.
        if self.count_shed(&exchange) {
            self.count_shed_request();
        }
    }

    fn count_shed_request(&self) {
        self.metrics.mirror_dropped_requests.inc();
        tracing::warn!("mirror queue full: a Produce request was not mirrored (kafka_kinesis_proxy_mirror_dropped_requests_total)");
    }

    /// Counts the records a shed exchange owed the mirror as dropped, so that the dual-write
    /// ratio shows the loss; whether it owed any (or could not be read to tell). Only batch
    /// headers are read: the proxy is short of CPU already.
    fn count_shed(&self, exchange: &ProduceExchange) -> bool {
        let Ok(partitions) = produced_partitions(exchange, &self.routes.load()) else {
            return true;
        };
        let mut owed = false;
        for produced in partitions.iter().filter(|p| p.is_mirrored()) {
            owed = true;
            let (Some(route), Ok(summary)) = (&produced.route, summarize(&produced.records)) else {
                continue;
            };
            self.metrics.mirror_outcome(
                &produced.topic,
                &route.stream,
                MirrorResult::Dropped,
                sampled_estimate(summary.records, route.percent),
            );
        }
        owed
    }

    /// A transaction-control exchange, unless deferred: while Produce exchanges are deferred
    /// it queues behind them, since its transaction's records must reach the stage first.
    pub(super) fn defer_txn_control(
        &self,
        control: TxnControlExchange,
    ) -> Option<TxnControlExchange> {
        let mut state = self.deferred.lock();
        if state.waiting.is_empty() {
            return Some(control);
        }
        state
            .waiting
            .push_back(DeferredInput::TxnControl(Some(control)));
        None
    }

    /// Reads the deferred exchanges back from the log, oldest first, and sends each to the
    /// stage, until none is left (or the mirror shuts down).
    async fn catch_up(self, wal: Arc<Wal>) {
        loop {
            let chunk = self.deferred_chunk();
            if chunk.is_empty() {
                return;
            }
            let reader = wal.clone();
            let read = tokio::task::spawn_blocking(move || {
                chunk
                    .iter()
                    .map(|logged| logged.as_ref().map(|l| reader.read_back(l)))
                    .collect::<Vec<_>>()
            })
            .await
            .expect("write-ahead log read-back task");
            for read in read {
                let sent = match (self.take_front(), read) {
                    (Front::TxnControl(control), _) => {
                        self.tx.send(StageInput::TxnControl(control)).await.is_ok()
                    }
                    (Front::Exchange(logged, client, deliveries), Some(Ok(exchange))) => {
                        self.send_read_back(exchange, client, deliveries, logged)
                            .await
                    }
                    (Front::Exchange(logged, ..), Some(Err(e))) => {
                        // The log keeps it: the next start replays it.
                        tracing::error!(error = %e, "cannot read a deferred exchange back from the write-ahead log: it is mirrored after the next restart");
                        logged.shed();
                        self.metrics.mirror_dropped_requests.inc();
                        true
                    }
                    (Front::Exchange(..), None) => unreachable!("every exchange is read"),
                };
                if !sent || !self.pop_deferred() {
                    return;
                }
            }
        }
    }

    /// The front input, to send; it stays queued, so that what arrives meanwhile queues
    /// behind it. Only the catch-up pops, so the front is the input it read last.
    fn take_front(&self) -> Front {
        let mut state = self.deferred.lock();
        match state.waiting.front_mut().expect("read inputs wait") {
            DeferredInput::Exchange {
                logged,
                client,
                deliveries,
            } => Front::Exchange(logged.clone(), client.clone(), std::mem::take(deliveries)),
            DeferredInput::TxnControl(control) => {
                Front::TxnControl(control.take().expect("taken once"))
            }
        }
    }

    /// The next deferred inputs to read back (`None` for what the log need not give back),
    /// oldest first; empty once shut down.
    fn deferred_chunk(&self) -> Vec<Option<Arc<ExchangeLog>>> {
        let state = self.deferred.lock();
        if state.closed {
            return Vec::new();
        }
        let mut bytes = 0;
        let mut chunk = Vec::new();
        for deferred in state.waiting.iter().take(CATCH_UP_CHUNK) {
            bytes += deferred.log_bytes();
            if !chunk.is_empty() && bytes > CATCH_UP_CHUNK_BYTES {
                break;
            }
            chunk.push(deferred.logged().cloned());
        }
        chunk
    }

    /// Forgets the front input once sent; whether the catch-up goes on (some are left, and
    /// the mirror is not shutting down).
    fn pop_deferred(&self) -> bool {
        let mut state = self.deferred.lock();
        let sent = state
            .waiting
            .pop_front()
            .expect("the front stays until sent");
        self.metrics
            .wal
            .replay_remaining_bytes
            .sub(sent.log_bytes() as i64);
        if !state.waiting.is_empty() {
            return !state.closed;
        }
        if let Some(behind) = state.behind.take() {
            tracing::info!(
                exchanges = behind.exchanges,
                bytes = behind.bytes,
                seconds = behind.since.elapsed().as_secs_f64(),
                "the mirror caught up: deferred exchanges were read back from the write-ahead log"
            );
        }
        false
    }

    /// Stops the catch-up at shutdown; the exchanges still deferred stay in the log (they were
    /// never staged, so they are not complete) and are replayed at the next start.
    pub(super) fn stop_catch_up(&self) {
        let mut state = self.deferred.lock();
        state.closed = true;
        let exchanges = state.waiting.iter().filter(|d| d.logged().is_some());
        let (exchanges, bytes) = exchanges.fold((0, 0), |(n, b), d| (n + 1, b + d.log_bytes()));
        if exchanges > 0 {
            tracing::info!(
                exchanges,
                bytes,
                "deferred exchanges not read back yet stay in the write-ahead log: they are mirrored after the next start"
            );
        }
    }

    /// Sends an exchange read back from the log to the stage, waiting for room in its queue,
    /// by bytes too; false when the stage is gone.
    pub(super) async fn send_read_back(
        &self,
        exchange: LoggedExchange,
        client: Arc<ClientKey>,
        deliveries: Deliveries,
        logged: Arc<ExchangeLog>,
    ) -> bool {
        let exchange = ProduceExchange {
            client,
            version: exchange.version,
            request_body: exchange.request_body,
            response_frame: exchange.response_frame,
            deliveries,
        };
        let bytes = exchange.bytes();
        self.queued_bytes.room_for(bytes).await;
        self.queued_bytes.add(bytes);
        let input = StageInput::Exchange(exchange, Rooms::new(), Some(logged));
        if self.tx.send(input).await.is_err() {
            self.queued_bytes.release(bytes);
            return false;
        }
        true
    }
}
