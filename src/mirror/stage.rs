//! The stage: one task that expands Produce exchanges into partitions, decodes them on the
//! decode pool, and hands each partition's records on strictly in arrival order (see
//! [`Stage::run`]), along with the transaction-control work that must wait for them.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::decode::{decode_partition, DecodePool, Decoded, DECODE_THREADS};
use super::stream_queue::{Room, StreamQueues};
use super::transactions::{HeldId, Transactions};
use super::wal::ExchangeLog;
use super::{
    produced_partitions, sampled_estimate, Route, RouteTable, StageBytes, StageError, StageInput,
    TransactionMarkers, TxnControlExchange, Verdict, DECODE_WINDOW,
};
use crate::kinesis::delivery::PartitionDelivery;
use crate::kinesis::request::MirrorRecord;
use crate::telemetry::inventory::{ClientKey, Inventory, ProducerTraits};
use crate::telemetry::metrics::{Metrics, MirrorResult};

/// Why a partition's records were not mirrored.
#[derive(Debug, thiserror::Error)]
enum PartitionError {
    #[error(transparent)]
    Records(#[from] crate::kafka::records::RecordsError),
    #[error("the decoder panicked")]
    DecoderPanicked,
}

/// Keeps an exchange's bytes counted in the queue's bytes until its last partition is done,
/// since until then its partitions' records pin its frames.
struct QueuedBytes {
    counter: Arc<StageBytes>,
    bytes: usize,
}

impl Drop for QueuedBytes {
    fn drop(&mut self) {
        self.counter.release(self.bytes);
    }
}

/// One produced partition of an exchange, to decode.
struct PartitionWork {
    client: Arc<ClientKey>,
    topic: Arc<str>,
    partition: i32,
    records: Bytes,
    verdict: Verdict,
    route: Option<Arc<Route>>,
    /// Block mode: the room taken for it in its stream's queue.
    room: Option<Arc<Room>>,
    /// kinesis-primary: the delivery its producer waits for. Dropped unsealed when the
    /// partition is not mirrored after all (undecodable), which fails it.
    delivery: Option<PartitionDelivery>,
    /// Its exchange's entry in the write-ahead log, and its index among the exchange's
    /// partitions.
    logged: Option<(Arc<ExchangeLog>, u32)>,
    _queued: Arc<QueuedBytes>,
}

/// What the stage does next, in arrival order.
enum Work {
    Partition(PartitionWork),
    /// These wait for every partition before them, like [`Work::Flush`].
    TxnControl(TxnControlExchange),
    MarkerRead(HeldId, Option<bool>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A partition on the decode pool, and where its result will come from.
struct InFlight {
    work: PartitionWork,
    result: tokio::sync::oneshot::Receiver<Decoded>,
}

pub(super) struct Stage {
    pub(super) queued_bytes: Arc<StageBytes>,
    /// The streams' queues, which may hold the stage (spill mode with a log).
    pub(super) queues: Arc<StreamQueues>,
    pub(super) routes: Arc<ArcSwap<RouteTable>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) inventory: Arc<Inventory>,
    /// Transactional records waiting for their EndTxn, with their topic and route.
    pub(super) transactions: Transactions<(Arc<str>, Arc<Route>)>,
    pub(super) markers: Arc<OnceLock<Arc<dyn TransactionMarkers>>>,
    /// For look-ups' answers; weak, so that the stage still ends when the mirror is dropped.
    pub(super) input: mpsc::WeakSender<StageInput>,
}

impl Stage {
    /// Expands exchanges into partitions, keeps up to [`DECODE_WINDOW`] of them on the decode
    /// pool, and hands their records to their streams' queues strictly in arrival order, so a
    /// partition's records reach its stream in Kafka order whichever thread decoded them. It
    /// never waits for a writer: each stream's queue does.
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<StageInput>) {
        let pool = DecodePool::start(DECODE_THREADS);
        let mut waiting: VecDeque<Work> = VecDeque::new();
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut last_warning: Option<Instant> = None;
        loop {
            while in_flight.len() < DECODE_WINDOW {
                match waiting.pop_front() {
                    Some(Work::Partition(work)) => in_flight.push_back(self.submit(&pool, work)),
                    Some(barrier) if in_flight.is_empty() => self.after_partitions(barrier),
                    Some(barrier) => {
                        waiting.push_front(barrier);
                        break;
                    }
                    None => break,
                }
            }
            // Read ahead while the pool works, so the next exchange's partitions are ready
            // when a decode thread frees up; wait for input only when there is nothing else.
            let input = if !waiting.is_empty() {
                None
            } else if self.queues.hold_the_stage() {
                // A stream's writer is behind: new exchanges wait (in the log) until it
                // catches up, rather than be shed.
                if in_flight.is_empty() {
                    self.queues.wait_until_released().await;
                    continue;
                }
                None
            } else if in_flight.is_empty() {
                match rx.recv().await {
                    Some(input) => Some(input),
                    None => return,
                }
            } else {
                rx.try_recv().ok()
            };
            if let Some(input) = input {
                if let Err(reason) = self.expand(input, &mut waiting) {
                    self.metrics
                        .mirror_decode_errors
                        .with_label_values(&["(request)"])
                        .inc();
                    // At most one line a second: a misbehaving client must not flood the log.
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                        tracing::warn!(%reason, "cannot decode a Produce exchange for mirroring; Kafka was unaffected");
                        last_warning = Some(Instant::now());
                    }
                }
                continue;
            }
            if let Some(InFlight { work, result }) = in_flight.pop_front() {
                let decoded = result.await.map_err(|_| PartitionError::DecoderPanicked);
                self.finish(work, decoded);
            }
        }
    }

    fn submit(&self, pool: &DecodePool, work: PartitionWork) -> InFlight {
        let route = work.route.clone();
        let topic = work.topic.clone();
        let (partition, records, verdict) = (work.partition, work.records.clone(), work.verdict);
        let result = pool
            .run(move || decode_partition(route.as_deref(), &topic, partition, records, verdict));
        InFlight { work, result }
    }

    /// Queues `input`'s partitions (or its flush) in `waiting`.
    fn expand(
        &mut self,
        input: StageInput,
        waiting: &mut VecDeque<Work>,
    ) -> Result<(), StageError> {
        let (mut exchange, rooms, logged) = match input {
            StageInput::Exchange(exchange, rooms, logged) => (exchange, rooms, logged),
            StageInput::Flush(done) => {
                waiting.push_back(Work::Flush(done));
                return Ok(());
            }
            StageInput::TxnControl(control) => {
                waiting.push_back(Work::TxnControl(control));
                return Ok(());
            }
            StageInput::MarkerRead(id, outcome) => {
                waiting.push_back(Work::MarkerRead(id, outcome));
                return Ok(());
            }
            StageInput::LookupSweep => {
                self.start_lookups();
                return Ok(());
            }
        };
        let queued = Arc::new(QueuedBytes {
            counter: self.queued_bytes.clone(),
            bytes: exchange.bytes(),
        });
        let partitions = produced_partitions(&exchange, &self.routes.load()).inspect_err(|_| {
            // Undecodable: replaying it would not make it decodable.
            if let Some(logged) = &logged {
                logged.staged(0);
            }
        })?;
        if let Some(logged) = &logged {
            logged.staged(partitions.len());
        }
        for (index, produced) in partitions.into_iter().enumerate() {
            let room = produced
                .route
                .as_ref()
                .and_then(|route| rooms.get(&route.stream).cloned());
            let delivery = exchange
                .deliveries
                .remove(&(produced.topic.to_string(), produced.partition));
            waiting.push_back(Work::Partition(PartitionWork {
                delivery,
                client: exchange.client.clone(),
                topic: produced.topic,
                partition: produced.partition,
                records: produced.records,
                verdict: produced.verdict,
                route: produced.route,
                room,
                logged: logged.clone().map(|l| (l, index as u32)),
                _queued: queued.clone(),
            }));
        }
        Ok(())
    }

    /// Counts a decoded partition and hands its records to its stream's queue; the log learns
    /// the partition is done with, whatever became of it.
    fn finish(&mut self, mut work: PartitionWork, decoded: Result<Decoded, PartitionError>) {
        let logged = work.logged.take();
        self.finish_decoded(work, decoded, logged.as_ref());
        if let Some((logged, _)) = logged {
            logged.partition_done();
        }
    }

    fn finish_decoded(
        &mut self,
        mut work: PartitionWork,
        decoded: Result<Decoded, PartitionError>,
        logged: Option<&(Arc<ExchangeLog>, u32)>,
    ) {
        let decoded = match decoded {
            Ok(decoded) => decoded,
            Err(e) => return self.decode_error(&work, &e, 0),
        };
        let records = decoded.summary.as_ref().map_or(0, |s| s.records);
        let transaction = decoded.summary.as_ref().ok().and_then(|s| s.transaction);
        match decoded.summary {
            Ok(summary) => {
                // Any topic a client names: bounded before it becomes a label or an entry.
                let topic = self.metrics.topic_labels.label(&work.topic);
                let traits = ProducerTraits {
                    idempotent: summary.idempotent,
                    transactional: summary.transactional(),
                };
                let records = summary.records as u64;
                // The run that received a replayed exchange counted its client: no client of
                // this run produced it. Its records count for Kafka in the run that mirrors
                // them, but not those this run skips, delivered before the restart: the
                // Kafka and mirror counts stay paired.
                if !logged.is_some_and(|(logged, _)| logged.is_replayed()) {
                    self.inventory.produced(
                        &work.client,
                        topic,
                        records,
                        traits,
                        summary.codecs.iter(),
                    );
                }
                let delivered_before = logged.map_or(0, |(l, i)| l.settled_before_in(*i));
                self.count_kafka(
                    topic,
                    work.verdict,
                    records.saturating_sub(delivered_before),
                );
            }
            Err(e) => return self.decode_error(&work, &e.into(), 0),
        }
        let (Some(route), Some(mirrored)) = (&work.route, decoded.mirrored) else {
            return;
        };
        let mut mirrored = match mirrored {
            Ok(mirrored) => mirrored,
            Err(e) => return self.decode_error(&work, &e.into(), records),
        };
        if let Some((logged, index)) = logged {
            mark_logged(&mut mirrored.records, logged, *index);
        }
        if let Some(delivery) = work.delivery.take() {
            let tokens = delivery.seal(mirrored.records.len());
            for (record, token) in mirrored.records.iter_mut().zip(tokens) {
                record.delivery = Some(token);
            }
        }
        self.hand_on(transaction, &work.topic, route, mirrored.records, work.room);
        if mirrored.skipped > 0 {
            self.metrics.mirror_outcome(
                &work.topic,
                &route.stream,
                MirrorResult::Skipped,
                mirrored.skipped,
            );
        }
    }

    /// Work that waits for every partition before it to be handed on.
    fn after_partitions(&mut self, barrier: Work) {
        match barrier {
            Work::Partition(_) => unreachable!("partitions are not barriers"),
            Work::Flush(done) => {
                self.report_held();
                let _ = done.send(());
            }
            Work::TxnControl(control) => self.txn_control(&control),
            Work::MarkerRead(id, outcome) => self.marker_read(id, outcome),
        }
    }

    fn count_kafka(&self, topic: &str, verdict: Verdict, records: u64) {
        match verdict {
            Verdict::Accepted { .. } => self
                .metrics
                .kafka_records
                .with_label_values(&[topic, "ok"])
                .inc_by(records),
            Verdict::Rejected => self
                .metrics
                .kafka_records
                .with_label_values(&[topic, "error"])
                .inc_by(records),
            Verdict::Unacknowledged => self
                .metrics
                .kafka_unacked_records
                .with_label_values(&[topic])
                .inc_by(records),
        }
    }

    /// A partition the mirror skips: Kafka stored it, so its client, topic and partition are
    /// enough to find it. Its `records` (0 when unknown) count as undecodable, so that the
    /// dual-write ratio shows them.
    fn decode_error(&self, work: &PartitionWork, reason: &PartitionError, records: usize) {
        self.metrics
            .mirror_decode_errors
            .with_label_values(&[self.metrics.topic_labels.label(&work.topic)])
            .inc();
        if let (Some(route), true) = (&work.route, work.verdict != Verdict::Rejected) {
            self.metrics.mirror_outcome(
                &work.topic,
                &route.stream,
                MirrorResult::Undecodable,
                sampled_estimate(records, route.percent).max(1),
            );
        }
        tracing::warn!(
            client_id = %work.client.client_id,
            client_address = %work.client.address,
            topic = %work.topic,
            partition = work.partition,
            %reason,
            "cannot decode produced records for mirroring; Kafka was unaffected, the mirror skips them"
        );
    }
}

/// Gives each record its mark in its exchange's log entry, leaving out the records a replayed
/// exchange had settled before the restart.
fn mark_logged(records: &mut Vec<MirrorRecord>, logged: &Arc<ExchangeLog>, index: u32) {
    records.retain_mut(|record| match logged.mark(index, record.offset) {
        Some(mark) => {
            record.logged = Some(mark);
            true
        }
        None => false,
    });
}
