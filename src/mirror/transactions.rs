//! Transactional producers' records, held until their transaction ends.
//!
//! Kafka's `read_committed` consumers see a transaction's records only once it commits, and
//! never when it aborts; Kinesis must hold what they would have read. So a partition's
//! decoded records whose batch is transactional wait here until the stage sees the EndTxn
//! that ends their transaction, then go on to the writers (commit) or are dropped (abort).
//!
//! Producer id and epoch do not name one transaction: librdkafka keeps one epoch across a
//! producer's transactions (transactions v1), while transactions v2 (KIP-890) bumps it with
//! every EndTxn. What does identify it is order: the stage sees a producer's Produce
//! exchanges before the client hears their answers, so before any EndTxn the client sends
//! after them. A transaction is therefore the batches of its producer held when its EndTxn
//! arrives, with the epoch that EndTxn names; batches of an older epoch belong to a
//! transaction the proxy never saw end (a fenced or restarted producer) and stay held.
//!
//! When no EndTxn comes (the producer died, was fenced, or ended it through another proxy),
//! the outcome is still final in Kafka's log, as the COMMIT or ABORT marker its producer's
//! transaction left in the partition after the batch. Held partitions whose transaction is
//! past its timeout (from the producer's InitProducerId, plus a margin for the coordinator's
//! own abort sweep) are looked up there, through [`TransactionMarkers`], never guessed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::kafka::records::ProducerEpoch;
use crate::kafka::transaction::{EndedTransaction, InitializedProducer};
use crate::kinesis::budget::Budget;
use crate::kinesis::request::MirrorRecord;

/// The transaction timeout assumed for a producer whose InitProducerId the proxy did not see
/// (it started before the proxy): Kafka's default `transaction.max.timeout.ms`, which no
/// transaction outlives unless the brokers raised it.
const UNKNOWN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Past its timeout, a transaction's markers are looked for after this much more: the
/// coordinator aborts timed-out transactions in a sweep every 10 s by default.
pub(super) const LOOKUP_MARGIN: Duration = Duration::from_secs(15);
/// A look-up that found no marker yet (or could not read Kafka) is tried again after this.
pub(super) const LOOKUP_RETRY: Duration = Duration::from_secs(10);

/// Where a held partition's first record is in Kafka, to find its transaction's marker after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerLookup {
    pub producer_id: i64,
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// Reads transaction outcomes from Kafka's log.
pub trait TransactionMarkers: Send + Sync {
    /// The outcome of `lookup`'s transaction: `Some(true)` when its producer's first marker
    /// after `offset` is a COMMIT, `Some(false)` for an ABORT, `None` when there is no marker
    /// yet or Kafka could not be read (the implementation logs why).
    fn outcome(&self, lookup: MarkerLookup) -> BoxFuture<'static, Option<bool>>;
}

/// Names one held partition, for the answer to its look-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HeldId(u64);

/// One partition's sampled records from one transactional batch, and where they go.
pub(super) struct HeldPartition<D> {
    pub(super) destination: D,
    pub(super) records: Vec<MirrorRecord>,
    id: HeldId,
    epoch: i16,
    /// When to look its outcome up in Kafka; `None` while a look-up runs, or when its records
    /// have no Kafka offsets to look after.
    next_lookup: Option<Instant>,
    bytes: u64,
    /// Whether `bytes` are reserved in the memory budget.
    reserved: bool,
}

/// What an EndTxn decided for the records held for its transaction.
pub(super) struct Resolved<D> {
    /// Held partitions, in the order they arrived, and whether they were committed.
    pub(super) partitions: Vec<HeldPartition<D>>,
    pub(super) committed: bool,
}

/// The held partitions of every producer with a transaction in progress.
pub(super) struct Transactions<D> {
    by_producer: HashMap<i64, Vec<HeldPartition<D>>>,
    timeouts: HashMap<i64, Duration>,
    next_id: u64,
    budget: Arc<Budget>,
    /// Held bytes may take at most this much of the budget, so that the writers always keep
    /// room to make progress: otherwise, in block mode, held records filling the budget would
    /// stall the stage before the EndTxn that frees them.
    max_reserved: u64,
    reserved: u64,
    held_records: usize,
}

impl<D> Transactions<D> {
    /// A table whose held records may reserve up to `max_reserved` bytes of `budget`.
    pub(super) fn new(budget: Arc<Budget>, max_reserved: u64) -> Self {
        Transactions {
            by_producer: HashMap::new(),
            timeouts: HashMap::new(),
            next_id: 0,
            budget,
            max_reserved,
            reserved: 0,
            held_records: 0,
        }
    }

    /// Notes a transactional producer's timeout, for its held partitions' look-ups.
    pub(super) fn initialized(&mut self, producer: InitializedProducer) {
        self.timeouts
            .insert(producer.producer_id, producer.transaction_timeout);
    }

    /// Holds `records` when `transaction` names their batch's producer; otherwise gives them
    /// back to be sent now.
    pub(super) fn hold_or_pass(
        &mut self,
        transaction: Option<ProducerEpoch>,
        destination: D,
        records: Vec<MirrorRecord>,
    ) -> Option<Vec<MirrorRecord>> {
        let (Some(producer), Some(first)) = (transaction, records.first()) else {
            return Some(records);
        };
        let timeout = self
            .timeouts
            .get(&producer.producer_id)
            .copied()
            .unwrap_or(UNKNOWN_TRANSACTION_TIMEOUT);
        let next_lookup = first
            .offset_from_kafka
            .then(|| Instant::now() + timeout + LOOKUP_MARGIN);
        let bytes = records.iter().map(|r| r.memory_bytes() as u64).sum();
        let reserved = self.reserved + bytes <= self.max_reserved && self.budget.try_reserve(bytes);
        if reserved {
            self.reserved += bytes;
        }
        self.held_records += records.len();
        self.next_id += 1;
        self.by_producer
            .entry(producer.producer_id)
            .or_default()
            .push(HeldPartition {
                destination,
                records,
                id: HeldId(self.next_id),
                epoch: producer.epoch,
                next_lookup,
                bytes,
                reserved,
            });
        None
    }

    /// Takes the partitions `ended` decides: its producer's held partitions of its epoch.
    pub(super) fn end(&mut self, ended: EndedTransaction) -> Resolved<D> {
        let producer = ended.producer;
        let mut decided = Vec::new();
        if let Some(held) = self.by_producer.remove(&producer.producer_id) {
            let (ours, others): (Vec<_>, Vec<_>) =
                held.into_iter().partition(|p| p.epoch == producer.epoch);
            if !others.is_empty() {
                self.by_producer.insert(producer.producer_id, others);
            }
            decided = ours;
        }
        self.forget(&decided);
        Resolved {
            partitions: decided,
            committed: ended.committed,
        }
    }

    /// The held partitions whose look-up is due at `now`, marked as being looked up.
    pub(super) fn due_lookups(&mut self, now: Instant) -> Vec<(HeldId, MarkerLookup)> {
        let mut due = Vec::new();
        for (&producer_id, held) in &mut self.by_producer {
            for partition in held {
                let (Some(at), Some(first)) = (partition.next_lookup, partition.records.first())
                else {
                    continue;
                };
                if at > now {
                    continue;
                }
                partition.next_lookup = None;
                due.push((
                    partition.id,
                    MarkerLookup {
                        producer_id,
                        topic: first.topic.clone(),
                        partition: first.partition,
                        offset: first.offset,
                    },
                ));
            }
        }
        due
    }

    /// Takes a look-up's answer: the partition it decided, or, with no outcome yet, a retry
    /// later. A partition an EndTxn decided meanwhile is already gone.
    pub(super) fn looked_up(
        &mut self,
        id: HeldId,
        outcome: Option<bool>,
        now: Instant,
    ) -> Option<Resolved<D>> {
        let (&producer_id, held) = self
            .by_producer
            .iter_mut()
            .find(|(_, held)| held.iter().any(|p| p.id == id))?;
        let at = held.iter().position(|p| p.id == id)?;
        let Some(committed) = outcome else {
            held[at].next_lookup = Some(now + LOOKUP_RETRY);
            return None;
        };
        let decided = vec![held.remove(at)];
        if held.is_empty() {
            self.by_producer.remove(&producer_id);
        }
        self.forget(&decided);
        Some(Resolved {
            partitions: decided,
            committed,
        })
    }

    /// Takes decided partitions out of the counts and the budget.
    fn forget(&mut self, decided: &[HeldPartition<D>]) {
        for partition in decided {
            self.held_records -= partition.records.len();
            if partition.reserved {
                self.reserved -= partition.bytes;
                self.budget.release(partition.bytes);
            }
        }
    }

    /// Records held, waiting for their transaction's end.
    pub(super) fn held_records(&self) -> usize {
        self.held_records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::test_support::record;
    use prometheus::IntGauge;

    fn producer(producer_id: i64, epoch: i16) -> Option<ProducerEpoch> {
        Some(ProducerEpoch { producer_id, epoch })
    }

    /// Holds records at `offsets` for `producer` (id, epoch), as a transactional batch.
    fn hold(
        t: &mut Transactions<&'static str>,
        (producer_id, epoch): (i64, i16),
        destination: &'static str,
        offsets: &[i64],
    ) {
        let records = offsets.iter().map(|&o| record(o)).collect();
        let passed = t.hold_or_pass(producer(producer_id, epoch), destination, records);
        assert!(passed.is_none(), "held");
    }

    fn ended(producer_id: i64, epoch: i16, committed: bool) -> EndedTransaction {
        EndedTransaction {
            producer: ProducerEpoch { producer_id, epoch },
            committed,
        }
    }

    fn table(budget_bytes: u64, max_reserved: u64) -> (Transactions<&'static str>, Arc<Budget>) {
        let gauge = IntGauge::new("held_test_budget", "test").unwrap();
        let budget = Arc::new(Budget::new(budget_bytes, gauge));
        (Transactions::new(budget.clone(), max_reserved), budget)
    }

    fn offsets(resolved: &Resolved<&'static str>) -> Vec<(&'static str, i64)> {
        resolved
            .partitions
            .iter()
            .flat_map(|p| p.records.iter().map(|r| (p.destination, r.offset)))
            .collect()
    }

    #[test]
    fn plain_records_pass_through() {
        let (mut t, budget) = table(1 << 20, 1 << 19);
        let passed = t.hold_or_pass(None, "a", vec![record(1), record(2)]);
        assert_eq!(passed.map(|r| r.len()), Some(2));
        assert_eq!((t.held_records(), budget.used()), (0, 0));
    }

    /// librdkafka keeps one epoch for all its transactions: each EndTxn takes what its
    /// producer had answered before it, and the next transaction starts empty.
    #[test]
    fn one_epoch_across_transactions_ends_each_in_turn() {
        let (mut t, _) = table(1 << 20, 1 << 19);
        hold(&mut t, (7, 0), "a", &[0, 1]);
        hold(&mut t, (7, 0), "b", &[0]);
        hold(&mut t, (8, 0), "a", &[2]);
        let first = t.end(ended(7, 0, true));
        assert!(first.committed);
        assert_eq!(offsets(&first), vec![("a", 0), ("a", 1), ("b", 0)]);
        hold(&mut t, (7, 0), "a", &[3]);
        let second = t.end(ended(7, 0, false));
        assert!(!second.committed);
        assert_eq!(offsets(&second), vec![("a", 3)]);
        assert_eq!(
            t.held_records(),
            1,
            "producer 8's transaction is still open"
        );
        assert_eq!(offsets(&t.end(ended(8, 0, true))), vec![("a", 2)]);
        assert_eq!(t.held_records(), 0);
    }

    /// Transactions v2 bump the epoch with each EndTxn; a batch of an older epoch belongs to a
    /// transaction whose end the proxy did not see, and an EndTxn of the new epoch must not
    /// decide it.
    #[test]
    fn an_end_decides_only_its_epoch() {
        let (mut t, _) = table(1 << 20, 1 << 19);
        hold(&mut t, (7, 3), "a", &[0]);
        hold(&mut t, (7, 4), "a", &[1]);
        assert_eq!(offsets(&t.end(ended(7, 4, true))), vec![("a", 1)]);
        assert_eq!(t.held_records(), 1);
        assert_eq!(offsets(&t.end(ended(7, 5, true))), vec![]);
        assert_eq!(offsets(&t.end(ended(9, 3, true))), vec![]);
        assert_eq!(t.held_records(), 1);
    }

    /// A transaction whose end the proxy never saw is looked up once past its timeout plus
    /// the margin, retried while Kafka has no marker yet, and decided by the marker.
    #[tokio::test(start_paused = true)]
    async fn an_unended_transaction_is_looked_up_past_its_timeout() {
        let (mut t, budget) = table(1 << 20, 1 << 19);
        t.initialized(InitializedProducer {
            producer_id: 7,
            transaction_timeout: Duration::from_secs(5),
        });
        hold(&mut t, (7, 0), "a", &[3, 4]);
        let due_at = Instant::now() + Duration::from_secs(5) + LOOKUP_MARGIN;
        assert!(t.due_lookups(due_at - Duration::from_millis(1)).is_empty());
        let due = t.due_lookups(due_at);
        assert_eq!(due.len(), 1);
        let (id, lookup) = due[0].clone();
        assert_eq!(
            (lookup.producer_id, lookup.partition, lookup.offset),
            (7, 0, 3)
        );
        assert!(t.due_lookups(due_at).is_empty(), "one look-up at a time");
        assert!(t.looked_up(id, None, due_at).is_none(), "no marker yet");
        assert!(t.due_lookups(due_at + LOOKUP_RETRY / 2).is_empty());
        let (again, _) = t.due_lookups(due_at + LOOKUP_RETRY)[0].clone();
        assert_eq!(again, id);
        let resolved = t.looked_up(id, Some(false), due_at + LOOKUP_RETRY).unwrap();
        assert!(!resolved.committed);
        assert_eq!(offsets(&resolved), vec![("a", 3), ("a", 4)]);
        assert_eq!((t.held_records(), budget.used()), (0, 0));
        assert!(
            t.looked_up(id, Some(true), due_at).is_none(),
            "decided once"
        );
    }

    /// An EndTxn that arrives while its partition is being looked up wins; the look-up's
    /// answer then finds nothing.
    #[tokio::test(start_paused = true)]
    async fn an_end_during_a_look_up_decides_first() {
        let (mut t, _) = table(1 << 20, 1 << 19);
        hold(&mut t, (7, 0), "a", &[1]);
        let due = t.due_lookups(Instant::now() + UNKNOWN_TRANSACTION_TIMEOUT + LOOKUP_MARGIN);
        assert_eq!(
            due.len(),
            1,
            "an unknown producer gets Kafka's longest timeout"
        );
        assert_eq!(offsets(&t.end(ended(7, 0, true))), vec![("a", 1)]);
        assert!(t.looked_up(due[0].0, Some(false), Instant::now()).is_none());
    }

    /// Held records show in the budget, up to their share, and give it back when decided.
    #[test]
    fn held_records_reserve_their_share_of_the_budget() {
        let one = record(0).memory_bytes() as u64;
        let (mut t, budget) = table(10 * one, 2 * one);
        for offset in 0..3 {
            hold(&mut t, (1, 0), "a", &[offset]);
        }
        assert_eq!(budget.used(), 2 * one, "the third is held over the share");
        assert_eq!(t.held_records(), 3);
        assert_eq!(t.end(ended(1, 0, false)).partitions.len(), 3);
        assert_eq!(budget.used(), 0);
        hold(&mut t, (1, 0), "a", &[4]);
        assert_eq!(budget.used(), one, "the share is free again");
    }
}
