//! The in-memory state of kinesis-only partitions: each partition's offset counter and, per
//! idempotent producer, its epoch and last five batches, as a Kafka broker keeps them
//! (`ProducerStateManager`, `ProducerAppendInfo`, `ProducerStateEntry`).
//!
//! [`Ledger::decide`] judges a batch without changing anything; the state changes only through
//! [`Ledger::apply`] of journal events, live and at recovery alike, so what is replayed is
//! exactly what was decided.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use super::journal::{Change, Event, ProducerBatch};
use super::state::{Assignment, BatchIdentity};

/// Batches remembered per producer and partition, as Kafka's `NUM_BATCHES_TO_RETAIN`: an
/// idempotent producer has at most five requests in flight per partition.
pub(super) const BATCHES_RETAINED: usize = 5;

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const INVALID_RECORD: i16 = 87;
/// Kafka's limit on topic names (`Topic.MAX_NAME_LENGTH`), which the journal relies on.
pub(super) const MAX_TOPIC_BYTES: usize = 249;

pub(super) struct Ledger {
    topics: HashMap<Arc<str>, HashMap<i32, PartitionLedger>>,
    /// Producer states by the tick of their last assignment, oldest first: what to forget when
    /// there are more than `max_producers`.
    recency: BTreeMap<u64, ProducerKey>,
    next_tick: u64,
    max_producers: usize,
}

struct ProducerKey {
    topic: Arc<str>,
    partition: i32,
    producer_id: i64,
}

#[derive(Default)]
struct PartitionLedger {
    next_offset: i64,
    producers: HashMap<i64, ProducerLedger>,
    /// The producer of each remembered batch, by base offset, for delivery marks.
    batch_owners: HashMap<i64, i64>,
}

struct ProducerLedger {
    epoch: i16,
    /// Oldest first; never empty.
    batches: VecDeque<BatchRecord>,
    tick: u64,
}

#[derive(Clone, Copy)]
struct BatchRecord {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
    record_count: i32,
    delivered: bool,
}

/// The sequence number of a batch's last record; sequences wrap from `i32::MAX` to 0, as
/// Kafka's `DefaultRecordBatch.incrementSequence`.
fn last_sequence(base_sequence: i32, record_count: i32) -> i32 {
    let increment = record_count - 1;
    if base_sequence > i32::MAX - increment {
        increment - (i32::MAX - base_sequence) - 1
    } else {
        base_sequence + increment
    }
}

/// Whether `next` directly follows `last`, as Kafka's `ProducerAppendInfo.inSequence`.
fn in_sequence(last: i32, next: i32) -> bool {
    i64::from(next) == i64::from(last) + 1 || (next == 0 && last == i32::MAX)
}

fn refused(error_code: i16, message: String) -> Assignment {
    Assignment::Refused {
        error_code,
        message,
    }
}

impl Ledger {
    pub(super) fn new(max_producers: usize) -> Ledger {
        Ledger {
            topics: HashMap::new(),
            recency: BTreeMap::new(),
            next_tick: 0,
            max_producers,
        }
    }

    fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionLedger> {
        self.topics.get(topic)?.get(&partition)
    }

    /// The offset the partition's next new batch starts at, before any floor.
    pub(super) fn next_offset(&self, topic: &str, partition: i32) -> i64 {
        self.partition(topic, partition)
            .map_or(0, |p| p.next_offset)
    }

    /// How many producer states are remembered.
    pub(super) fn producers(&self) -> usize {
        self.recency.len()
    }

    /// Judges `batch` as a broker would (see [`Assignment`]) without changing anything: the
    /// assignment, and the event that records it, if it changes the state.
    pub(super) fn decide<'a>(
        &self,
        topic: &'a str,
        partition: i32,
        batch: &BatchIdentity,
        floor: Option<i64>,
    ) -> (Assignment, Option<Event<'a>>) {
        if topic.len() > MAX_TOPIC_BYTES {
            let message = format!(
                "Topic name is illegal, it can't be longer than {MAX_TOPIC_BYTES} characters"
            );
            return (refused(INVALID_TOPIC_EXCEPTION, message), None);
        }
        let assignment = self.judge(topic, partition, batch, floor);
        let change = match assignment {
            Assignment::New { base_offset } => Some(Change::Assigned {
                base_offset,
                record_count: batch.record_count,
                producer: (batch.producer_id >= 0).then(|| ProducerBatch {
                    producer_id: batch.producer_id,
                    epoch: batch.producer_epoch,
                    first_seq: batch.base_sequence,
                    last_seq: last_sequence(batch.base_sequence, batch.record_count),
                }),
            }),
            // The floor holds even when this batch takes no offsets.
            _ => floor
                .filter(|&f| f > self.next_offset(topic, partition))
                .map(|next_offset| Change::Raised { next_offset }),
        };
        let event = change.map(|change| Event {
            topic,
            partition,
            change,
        });
        (assignment, event)
    }

    fn judge(
        &self,
        topic: &str,
        partition: i32,
        batch: &BatchIdentity,
        floor: Option<i64>,
    ) -> Assignment {
        let place = || format!("{topic}-{partition}");
        if batch.record_count < 1 {
            return refused(
                INVALID_RECORD,
                format!("Record batch for {} has no records", place()),
            );
        }
        let new = Assignment::New {
            base_offset: self.next_offset(topic, partition).max(floor.unwrap_or(0)),
        };
        if batch.producer_id < 0 {
            return new;
        }
        let pid = batch.producer_id;
        let first_seq = batch.base_sequence;
        if first_seq < 0 {
            return refused(
                INVALID_RECORD,
                format!(
                    "Invalid sequence number {first_seq} in record batch with producerId {pid} in {}",
                    place()
                ),
            );
        }
        let Some(known) = self
            .partition(topic, partition)
            .and_then(|p| p.producers.get(&pid))
        else {
            // First batch seen from this producer here (a live switch, or a state forgotten):
            // adopt its sequence, as a broker does for a producer it has no state for.
            return new;
        };
        let last_seq = last_sequence(first_seq, batch.record_count);
        if batch.producer_epoch == known.epoch {
            if let Some(b) = known
                .batches
                .iter()
                .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
            {
                return Assignment::Retry {
                    base_offset: b.base_offset,
                    delivered: b.delivered,
                };
            }
        }
        if batch.producer_epoch < known.epoch {
            return refused(
                INVALID_PRODUCER_EPOCH,
                format!(
                    "Epoch of producer {pid} in {} is {}, which is smaller than the last seen epoch {}",
                    place(),
                    batch.producer_epoch,
                    known.epoch
                ),
            );
        }
        if batch.producer_epoch > known.epoch {
            if first_seq != 0 {
                return refused(
                    OUT_OF_ORDER_SEQUENCE_NUMBER,
                    format!(
                        "Invalid sequence number for new epoch of producer {pid} in {}: {} (request epoch), {first_seq} (seq. number), {} (current producer epoch)",
                        place(),
                        batch.producer_epoch,
                        known.epoch
                    ),
                );
            }
            return new;
        }
        let current_last = known.batches.back().expect("never empty").last_seq;
        if in_sequence(current_last, first_seq) {
            return new;
        }
        refused(
            OUT_OF_ORDER_SEQUENCE_NUMBER,
            format!(
                "Out of order sequence number for producer {pid} in {}: {first_seq} (incoming seq. number), {current_last} (current end sequence number)",
                place()
            ),
        )
    }

    /// Whether the partition's batch at `base_offset` is remembered and not yet delivered.
    pub(super) fn awaits_delivery(&self, topic: &str, partition: i32, base_offset: i64) -> bool {
        let Some(p) = self.partition(topic, partition) else {
            return false;
        };
        p.batch_owners
            .get(&base_offset)
            .and_then(|pid| p.producers.get(pid))
            .and_then(|owner| owner.batches.iter().find(|b| b.base_offset == base_offset))
            .is_some_and(|b| !b.delivered)
    }

    pub(super) fn apply(&mut self, event: &Event<'_>) {
        let Event {
            topic, partition, ..
        } = *event;
        let p = self.partition_mut(topic, partition);
        match event.change {
            Change::Assigned {
                base_offset,
                record_count,
                producer,
            } => {
                p.next_offset = p
                    .next_offset
                    .max(base_offset.saturating_add(i64::from(record_count)));
                if let Some(producer) = producer {
                    self.remember(topic, partition, base_offset, record_count, producer);
                }
            }
            Change::Raised { next_offset } => p.next_offset = p.next_offset.max(next_offset),
            Change::Delivered { base_offset } => {
                let Some(owner) = p.batch_owners.get(&base_offset) else {
                    return;
                };
                let batches = &mut p.producers.get_mut(owner).expect("owner known").batches;
                if let Some(b) = batches.iter_mut().find(|b| b.base_offset == base_offset) {
                    b.delivered = true;
                }
            }
        }
    }

    fn partition_mut(&mut self, topic: &str, partition: i32) -> &mut PartitionLedger {
        if !self.topics.contains_key(topic) {
            self.topics.insert(Arc::from(topic), HashMap::new());
        }
        self.topics
            .get_mut(topic)
            .expect("inserted")
            .entry(partition)
            .or_default()
    }

    fn remember(
        &mut self,
        topic: &str,
        partition: i32,
        base_offset: i64,
        record_count: i32,
        producer: ProducerBatch,
    ) {
        let tick = self.next_tick;
        self.next_tick += 1;
        let p = self.partition_mut(topic, partition);
        let pid = producer.producer_id;
        let state = p.producers.entry(pid).or_insert_with(|| ProducerLedger {
            epoch: producer.epoch,
            batches: VecDeque::with_capacity(BATCHES_RETAINED),
            tick,
        });
        // A new epoch starts the producer's sequences afresh (Kafka's maybeUpdateProducerEpoch).
        if state.epoch != producer.epoch {
            state.epoch = producer.epoch;
            for old in state.batches.drain(..) {
                p.batch_owners.remove(&old.base_offset);
            }
        }
        if state.batches.len() == BATCHES_RETAINED {
            let oldest = state.batches.pop_front().expect("full");
            p.batch_owners.remove(&oldest.base_offset);
        }
        state.batches.push_back(BatchRecord {
            first_seq: producer.first_seq,
            last_seq: producer.last_seq,
            base_offset,
            record_count,
            delivered: false,
        });
        p.batch_owners.insert(base_offset, pid);
        let previous_tick = std::mem::replace(&mut state.tick, tick);
        self.recency.remove(&previous_tick);
        let topic = Arc::clone(
            self.topics
                .get_key_value(topic)
                .expect("partition_mut inserted it")
                .0,
        );
        self.recency.insert(
            tick,
            ProducerKey {
                topic,
                partition,
                producer_id: pid,
            },
        );
        while self.recency.len() > self.max_producers {
            let (_, idle) = self.recency.pop_first().expect("over the bound");
            self.forget(&idle);
        }
    }

    /// Forgets the producer that has gone longest without a new batch, as Kafka expires
    /// producer state: a batch it sends later is adopted as on first sight.
    fn forget(&mut self, key: &ProducerKey) {
        let p = self
            .topics
            .get_mut(&*key.topic)
            .and_then(|t| t.get_mut(&key.partition))
            .expect("remembered producers have a partition");
        if let Some(state) = p.producers.remove(&key.producer_id) {
            for b in state.batches {
                p.batch_owners.remove(&b.base_offset);
            }
        }
    }

    /// Writes the whole state as events through `write` (in an order whose replay rebuilds
    /// it, producers by recency included); returns how many.
    pub(super) fn write_events(&self, mut write: impl FnMut(&Event<'_>)) -> u64 {
        let mut count = 0;
        let mut emit = |topic, partition, change| {
            write(&Event {
                topic,
                partition,
                change,
            });
            count += 1;
        };
        for (topic, partitions) in &self.topics {
            for (&partition, p) in partitions {
                let next_offset = p.next_offset;
                emit(topic, partition, Change::Raised { next_offset });
            }
        }
        for key in self.recency.values() {
            let (topic, partition) = (&*key.topic, key.partition);
            let state = &self.topics[topic][&partition].producers[&key.producer_id];
            for b in &state.batches {
                let producer = Some(ProducerBatch {
                    producer_id: key.producer_id,
                    epoch: state.epoch,
                    first_seq: b.first_seq,
                    last_seq: b.last_seq,
                });
                let (base_offset, record_count) = (b.base_offset, b.record_count);
                emit(
                    topic,
                    partition,
                    Change::Assigned {
                        base_offset,
                        record_count,
                        producer,
                    },
                );
                if b.delivered {
                    emit(topic, partition, Change::Delivered { base_offset });
                }
            }
        }
        count
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::mirror::kinesis_only) const T: &str = "orders";

    pub(in crate::mirror::kinesis_only) fn idempotent(
        producer_id: i64,
        epoch: i16,
        base_sequence: i32,
        count: i32,
    ) -> BatchIdentity {
        BatchIdentity {
            producer_id,
            producer_epoch: epoch,
            base_sequence,
            record_count: count,
        }
    }

    pub(in crate::mirror::kinesis_only) fn plain(count: i32) -> BatchIdentity {
        idempotent(-1, -1, -1, count)
    }

    /// Decides and applies, as `SyntheticLog::assign` does, on partition 0.
    fn step(ledger: &mut Ledger, batch: BatchIdentity) -> Assignment {
        step_at(ledger, 0, batch, None)
    }

    fn step_at(
        ledger: &mut Ledger,
        partition: i32,
        batch: BatchIdentity,
        floor: Option<i64>,
    ) -> Assignment {
        let (assignment, event) = ledger.decide(T, partition, &batch, floor);
        if let Some(event) = event {
            ledger.apply(&event);
        }
        assignment
    }

    pub(in crate::mirror::kinesis_only) fn new(base_offset: i64) -> Assignment {
        Assignment::New { base_offset }
    }

    pub(in crate::mirror::kinesis_only) fn retry(base_offset: i64, delivered: bool) -> Assignment {
        Assignment::Retry {
            base_offset,
            delivered,
        }
    }

    fn delivered(base_offset: i64) -> Event<'static> {
        Event {
            topic: T,
            partition: 0,
            change: Change::Delivered { base_offset },
        }
    }

    fn refusal(assignment: Assignment) -> i16 {
        match assignment {
            Assignment::Refused { error_code, .. } => error_code,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn plain_batches_take_consecutive_offsets_and_are_never_retries() {
        let mut l = Ledger::new(10);
        assert_eq!(step(&mut l, plain(3)), new(0));
        assert_eq!(step(&mut l, plain(2)), new(3));
        assert_eq!(step(&mut l, plain(3)), new(5));
        assert_eq!(l.next_offset(T, 0), 8);
        assert_eq!(l.next_offset(T, 1), 0);
        assert_eq!(l.producers(), 0);
    }

    #[test]
    fn a_retry_of_each_of_the_last_five_batches_gets_its_offsets() {
        let mut l = Ledger::new(10);
        for i in 0..6 {
            assert_eq!(
                step(&mut l, idempotent(7, 0, 2 * i, 2)),
                new(2 * i64::from(i))
            );
        }
        for i in 1..6 {
            assert_eq!(
                step(&mut l, idempotent(7, 0, 2 * i, 2)),
                retry(2 * i64::from(i), false)
            );
        }
        // The sixth-last is forgotten, as a broker forgets it: out of order, not a duplicate.
        assert_eq!(refusal(step(&mut l, idempotent(7, 0, 0, 2))), 45);
        assert_eq!(l.next_offset(T, 0), 12);
    }

    #[test]
    fn a_sequence_gap_or_overlap_is_out_of_order() {
        let mut l = Ledger::new(10);
        assert_eq!(step(&mut l, idempotent(7, 0, 0, 5)), new(0));
        assert_eq!(refusal(step(&mut l, idempotent(7, 0, 6, 1))), 45);
        assert_eq!(refusal(step(&mut l, idempotent(7, 0, 3, 4))), 45);
        assert_eq!(refusal(step(&mut l, idempotent(7, 0, 0, 4))), 45);
        assert_eq!(step(&mut l, idempotent(7, 0, 5, 1)), new(5));
        let (refused, event) = l.decide(T, 0, &idempotent(7, 0, 9, 1), None);
        assert!(matches!(refused, Assignment::Refused { ref message, .. }
            if message.contains("9 (incoming seq. number), 5 (current end sequence number)")));
        assert_eq!(event, None, "a refusal changes nothing");
    }

    #[test]
    fn an_older_epoch_is_fenced() {
        let mut l = Ledger::new(10);
        assert_eq!(step(&mut l, idempotent(7, 3, 0, 1)), new(0));
        assert_eq!(refusal(step(&mut l, idempotent(7, 2, 1, 1))), 47);
        assert_eq!(refusal(step(&mut l, idempotent(7, 2, 0, 1))), 47);
        assert_eq!(step(&mut l, idempotent(7, 3, 1, 1)), new(1));
    }

    #[test]
    fn a_newer_epoch_starts_over_at_sequence_zero() {
        let mut l = Ledger::new(10);
        assert_eq!(step(&mut l, idempotent(7, 0, 0, 3)), new(0));
        assert_eq!(refusal(step(&mut l, idempotent(7, 1, 3, 1))), 45);
        assert_eq!(step(&mut l, idempotent(7, 1, 0, 2)), new(3));
        assert_eq!(refusal(step(&mut l, idempotent(7, 0, 0, 3))), 47);
        assert_eq!(step(&mut l, idempotent(7, 1, 0, 2)), retry(3, false));
        assert_eq!(step(&mut l, idempotent(7, 1, 2, 1)), new(5));
    }

    #[test]
    fn the_first_batch_seen_from_a_producer_adopts_its_sequence() {
        let mut l = Ledger::new(10);
        assert_eq!(step(&mut l, idempotent(7, 4, 1234, 10)), new(0));
        assert_eq!(step(&mut l, idempotent(7, 4, 1244, 1)), new(10));
        // Per partition: the same producer is new on another one.
        assert_eq!(step_at(&mut l, 1, idempotent(7, 4, 99, 1), None), new(0));
        assert_eq!(step(&mut l, idempotent(8, 0, 500, 1)), new(11));
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        assert_eq!(last_sequence(i32::MAX - 1, 3), 0);
        assert_eq!(last_sequence(i32::MAX, 1), i32::MAX);
        assert_eq!(last_sequence(5, 1), 5);
        let mut l = Ledger::new(10);
        assert_eq!(step(&mut l, idempotent(7, 0, i32::MAX - 1, 3)), new(0));
        assert_eq!(step(&mut l, idempotent(7, 0, 1, 2)), new(3));
        assert_eq!(
            step(&mut l, idempotent(7, 0, i32::MAX - 1, 3)),
            retry(0, false)
        );
        assert_eq!(step(&mut l, idempotent(8, 0, i32::MAX - 1, 2)), new(5));
        assert_eq!(step(&mut l, idempotent(8, 0, 0, 1)), new(7));
    }

    #[test]
    fn a_floor_raises_the_counter_and_never_lowers_it() {
        let mut l = Ledger::new(10);
        assert_eq!(step(&mut l, plain(5)), new(0));
        assert_eq!(step_at(&mut l, 0, plain(1), Some(100)), new(100));
        assert_eq!(step_at(&mut l, 0, plain(1), Some(50)), new(101));
        assert_eq!(step(&mut l, idempotent(7, 0, 0, 1)), new(102));
        // A floor holds even when the batch takes no offsets: a retry...
        assert_eq!(
            step_at(&mut l, 0, idempotent(7, 0, 0, 1), Some(500)),
            retry(102, false)
        );
        assert_eq!(l.next_offset(T, 0), 500);
        // ...or a refusal.
        assert_eq!(
            refusal(step_at(&mut l, 0, idempotent(7, 0, 9, 1), Some(600))),
            45
        );
        assert_eq!(step(&mut l, plain(1)), new(600));
    }

    #[test]
    fn a_delivery_mark_shows_in_the_retry() {
        let mut l = Ledger::new(10);
        assert_eq!(step(&mut l, idempotent(7, 0, 0, 2)), new(0));
        assert_eq!(step(&mut l, plain(1)), new(2));
        assert!(l.awaits_delivery(T, 0, 0));
        assert!(!l.awaits_delivery(T, 0, 1), "not a batch's base offset");
        assert!(
            !l.awaits_delivery(T, 0, 2),
            "plain batches are never retried"
        );
        l.apply(&delivered(0));
        assert!(!l.awaits_delivery(T, 0, 0));
        assert_eq!(step(&mut l, idempotent(7, 0, 0, 2)), retry(0, true));
    }

    #[test]
    fn the_producer_idle_longest_is_forgotten_past_the_bound() {
        let mut l = Ledger::new(2);
        assert_eq!(step(&mut l, idempotent(1, 0, 0, 1)), new(0));
        assert_eq!(step(&mut l, idempotent(2, 0, 0, 1)), new(1));
        assert_eq!(step(&mut l, idempotent(1, 0, 1, 1)), new(2));
        assert_eq!(step(&mut l, idempotent(3, 0, 0, 1)), new(3));
        assert_eq!(l.producers(), 2);
        assert!(
            !l.awaits_delivery(T, 0, 1),
            "the forgotten batch's mark is gone"
        );
        // Producer 1 stayed (it sent after 2); 2 is adopted afresh, as on first sight.
        assert_eq!(step(&mut l, idempotent(1, 0, 1, 1)), retry(2, false));
        assert_eq!(step(&mut l, idempotent(2, 0, 7, 1)), new(4));
    }

    #[test]
    fn batches_without_records_or_sequence_or_with_an_overlong_topic_are_refused() {
        let mut l = Ledger::new(10);
        let long = "t".repeat(MAX_TOPIC_BYTES + 1);
        let (refused, event) = l.decide(&long, 0, &plain(1), Some(5));
        assert_eq!((refusal(refused), event), (17, None));
        assert_eq!(refusal(step(&mut l, plain(0))), 87);
        assert_eq!(refusal(step(&mut l, idempotent(7, 0, -1, 1))), 87);
        assert_eq!(l.next_offset(T, 0), 0);
    }

    #[test]
    fn replaying_its_events_rebuilds_the_ledger() {
        let mut l = Ledger::new(3);
        step(&mut l, plain(4));
        for pid in 1..=4 {
            for seq in 0..7 {
                step(&mut l, idempotent(pid, 1, seq, 1));
            }
        }
        step_at(&mut l, 2, plain(1), Some(1_000));
        l.apply(&delivered(30));
        let mut copy = Ledger::new(3);
        let written = l.write_events(|event| copy.apply(event));
        // Two partitions, three producers with five batches each, one delivery mark.
        assert_eq!(written, 2 + 3 * 5 + 1);
        assert_eq!(copy.producers(), 3);
        for (partition, next) in [(0, 32), (2, 1_001)] {
            assert_eq!(copy.next_offset(T, partition), next);
        }
        for ledger in [&mut l, &mut copy] {
            assert_eq!(step(ledger, idempotent(4, 1, 6, 1)), retry(31, false));
            assert_eq!(step(ledger, idempotent(4, 1, 5, 1)), retry(30, true));
            assert_eq!(step(ledger, idempotent(2, 1, 6, 1)), retry(17, false));
            // Producer 1 was forgotten: adopted.
            assert_eq!(step(ledger, idempotent(1, 1, 6, 1)), new(32));
        }
    }
}
