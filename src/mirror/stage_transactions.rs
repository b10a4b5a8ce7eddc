//! The stage's side of transactions: holding transactional partitions' records, and
//! deciding them by EndTxn exchanges or by look-ups of Kafka's markers (see
//! [`super::transactions`] for the rules).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::stage::Stage;
use super::stream_queue::Room;
use super::transactions::{HeldId, Resolved};
use super::{Route, StageError, StageInput};
use crate::kafka::records::ProducerEpoch;
use crate::kafka::transaction::{ended_transaction, initialized_producer};
use crate::kinesis::request::MirrorRecord;
use crate::telemetry::metrics::MirrorResult;

/// The transaction-control requests the mirror follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnControl {
    /// Ends a transaction: its held records are sent on or dropped.
    EndTxn,
    /// Starts a transactional producer: its transaction timeout.
    InitProducerId,
}

/// A transaction-control request and its response.
pub struct TxnControlExchange {
    pub api: TxnControl,
    pub version: i16,
    pub request_body: Bytes,
    pub response_frame: Bytes,
}

/// How often the stage checks for held transactions due for a look-up.
pub(super) const LOOKUP_SWEEP: Duration = Duration::from_secs(5);

/// Asks the stage to look up overdue transactions every [`LOOKUP_SWEEP`], while it runs.
pub(super) async fn sweep_lookups(input: mpsc::WeakSender<StageInput>) {
    loop {
        tokio::time::sleep(LOOKUP_SWEEP).await;
        let Some(input) = input.upgrade() else {
            return;
        };
        if input.send(StageInput::LookupSweep).await.is_err() {
            return;
        }
    }
}

impl Stage {
    /// Sends a partition's sampled records to its stream's queue, or, when a transaction
    /// produced them, holds them until it ends (letting go of the queue room block mode took
    /// for them: held records are not in the queue).
    pub(super) fn hand_on(
        &mut self,
        transaction: Option<ProducerEpoch>,
        topic: &Arc<str>,
        route: &Arc<Route>,
        records: Vec<MirrorRecord>,
        room: Option<Arc<Room>>,
    ) {
        let destination = (topic.clone(), route.clone());
        if let Some(records) = self
            .transactions
            .hold_or_pass(transaction, destination, records)
        {
            route.queue.hand_on(topic, records, room);
        }
        self.count_held();
    }

    fn count_held(&self) {
        self.metrics
            .mirror_transaction_held_records
            .set(self.transactions.held_records() as i64);
    }

    /// At a flush (shutdown), names what stays held: it is in memory only, so it will not be
    /// mirrored by this process.
    pub(super) fn report_held(&self) {
        let held = self.transactions.held_records();
        if held > 0 {
            tracing::warn!(
                records = held,
                "records of transactions still in progress are held in memory and will not be mirrored if the proxy stops now"
            );
        }
    }

    /// An EndTxn or InitProducerId, in turn with the partitions handed over before it.
    pub(super) fn txn_control(&mut self, control: &TxnControlExchange) {
        if let Err(reason) = self.apply_txn_control(control) {
            self.metrics
                .mirror_decode_errors
                .with_label_values(&["(request)"])
                .inc();
            tracing::warn!(%reason, "cannot decode a transaction-control exchange; held records wait for a look-up in Kafka");
        }
    }

    /// A look-up's answer.
    pub(super) fn marker_read(&mut self, id: HeldId, outcome: Option<bool>) {
        let now = tokio::time::Instant::now();
        if let Some(resolved) = self.transactions.looked_up(id, outcome, now) {
            self.resolve(resolved);
        }
    }

    fn apply_txn_control(&mut self, control: &TxnControlExchange) -> Result<(), StageError> {
        let (version, request, response) = (
            control.version,
            &control.request_body,
            &control.response_frame,
        );
        match control.api {
            TxnControl::EndTxn => {
                if let Some(ended) = ended_transaction(version, request, response)? {
                    let resolved = self.transactions.end(ended);
                    self.resolve(resolved);
                }
            }
            TxnControl::InitProducerId => {
                if let Some(producer) = initialized_producer(version, request, response)? {
                    self.transactions.initialized(producer);
                }
            }
        }
        Ok(())
    }

    /// Starts a look-up in Kafka for each held partition past its transaction's timeout;
    /// each answers through the stage's input, in turn with everything else.
    pub(super) fn start_lookups(&mut self) {
        let Some(markers) = self.markers.get() else {
            return;
        };
        for (id, lookup) in self.transactions.due_lookups(tokio::time::Instant::now()) {
            let (markers, input) = (markers.clone(), self.input.clone());
            tokio::spawn(async move {
                let outcome = markers.outcome(lookup).await;
                if let Some(input) = input.upgrade() {
                    let _ = input.send(StageInput::MarkerRead(id, outcome)).await;
                }
            });
        }
    }

    /// Sends a committed transaction's held records on, in the order they were produced, or
    /// drops an aborted one's, counted. Like any records taken without block mode's room, they
    /// take room in their stream's queue now (in block mode they go on regardless).
    fn resolve(&mut self, resolved: Resolved<(Arc<str>, Arc<Route>)>) {
        self.count_held();
        for held in resolved.partitions {
            let (topic, route) = held.destination;
            if resolved.committed {
                route.queue.hand_on(&topic, held.records, None);
            } else {
                // Aborted records are done with: Kinesis must never get them.
                held.records.iter().for_each(MirrorRecord::settled);
                self.metrics.mirror_outcome(
                    &topic,
                    &route.stream,
                    MirrorResult::Aborted,
                    held.records.len() as u64,
                );
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use kafka_protocol::messages::{
        ApiKey, EndTxnRequest, EndTxnResponse, ProducerId, TransactionalId,
    };
    use kafka_protocol::protocol::StrBytes;

    use super::super::tests::{acks0_produce, unreachable_mirror};
    use super::super::{ProduceExchange, StageInput};
    use super::{TxnControl, TxnControlExchange};
    use crate::kafka::transaction::tests::encode;
    use crate::telemetry::inventory::ClientKey;

    /// An EndTxn of `producer_id` at `epoch`, and Kafka's answer to it.
    pub(in crate::mirror) fn end_txn(
        producer_id: i64,
        epoch: i16,
        committed: bool,
    ) -> TxnControlExchange {
        let request = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_static_str("t")))
            .with_producer_id(ProducerId(producer_id))
            .with_producer_epoch(epoch)
            .with_committed(committed);
        let (request_body, response_frame) =
            encode(ApiKey::EndTxn, 3, request, EndTxnResponse::default());
        TxnControlExchange {
            api: TxnControl::EndTxn,
            version: 3,
            request_body,
            response_frame,
        }
    }

    /// An EndTxn handed over right behind its transaction's Produce waits for that Produce's
    /// partitions, which the decode threads may still hold, and then decides them; a plain
    /// producer's records in between pass through untouched.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_end_txn_decides_the_partitions_handed_over_before_it() {
        let (mirror, metrics, _spool) = unreachable_mirror(100.0).await;
        let client = Arc::new(ClientKey {
            client_id: "txn-test".into(),
            address: [127, 0, 0, 1].into(),
        });
        let produce = |producer| ProduceExchange {
            client: client.clone(),
            version: 7,
            request_body: acks0_produce("orders", 10, producer),
            response_frame: None,
            deliveries: Default::default(),
        };
        mirror.hand_over(produce(Some((9, 0)))).await;
        mirror.hand_over(produce(None)).await;
        mirror.hand_over(produce(Some((9, 0)))).await;
        mirror.hand_over(produce(Some((11, 2)))).await;
        mirror.hand_over_txn_control(end_txn(9, 0, false)).await;
        let (done, flushed) = tokio::sync::oneshot::channel();
        mirror.tx.send(StageInput::Flush(done)).await.unwrap();
        flushed.await.unwrap();
        let outcome = |result| {
            metrics
                .mirror_records
                .with_label_values(&["orders", "orders-stream", result])
                .get()
        };
        assert_eq!(outcome("aborted"), 20, "both of producer 9's batches");
        assert_eq!(
            metrics.mirror_transaction_held_records.get(),
            10,
            "producer 11's transaction is still open"
        );
    }
}
