//! The in-memory state of kinesis-only partitions: each partition's offset counter and, per
//! idempotent producer, its epoch and last five batches, as a Kafka broker keeps them
//! (`ProducerStateManager`, `ProducerAppendInfo`, `ProducerStateEntry`).
//!
//! [`Ledger::decide`] judges a batch without changing anything; the state changes only through
//! [`Ledger::apply`] of journal events, live and at recovery alike, so what is replayed is
//! exactly what was decided.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use super::journal::{Event, ProducerBatch};
use super::state::{Assignment, BatchIdentity};

/// Batches remembered per producer and partition, as Kafka's `NUM_BATCHES_TO_RETAIN`: an
/// idempotent producer has at most five requests in flight per partition.
pub(super) const BATCHES_RETAINED: usize = 5;

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const INVALID_RECORD: i16 = 87;

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
pub(super) fn last_sequence(base_sequence: i32, record_count: i32) -> i32 {
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

    /// Judges `batch` as a broker would; see [`Assignment`]. Changes nothing.
    pub(super) fn decide(
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
        match *event {
            Event::Assigned {
                topic,
                partition,
                base_offset,
                record_count,
                producer,
            } => {
                let p = self.partition_mut(topic, partition);
                p.next_offset = p
                    .next_offset
                    .max(base_offset.saturating_add(i64::from(record_count)));
                if let Some(producer) = producer {
                    self.remember(topic, partition, base_offset, record_count, producer);
                }
            }
            Event::Raised {
                topic,
                partition,
                next_offset,
            } => {
                let p = self.partition_mut(topic, partition);
                p.next_offset = p.next_offset.max(next_offset);
            }
            Event::Delivered {
                topic,
                partition,
                base_offset,
            } => {
                let p = self.partition_mut(topic, partition);
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
        let mut emit = |event: Event<'_>| {
            write(&event);
            count += 1;
        };
        for (topic, partitions) in &self.topics {
            for (&partition, p) in partitions {
                emit(Event::Raised {
                    topic,
                    partition,
                    next_offset: p.next_offset,
                });
            }
        }
        for key in self.recency.values() {
            let topic = &*key.topic;
            let partition = key.partition;
            let state = &self.topics[topic][&partition].producers[&key.producer_id];
            for b in &state.batches {
                emit(Event::Assigned {
                    topic,
                    partition,
                    base_offset: b.base_offset,
                    record_count: b.record_count,
                    producer: Some(ProducerBatch {
                        producer_id: key.producer_id,
                        epoch: state.epoch,
                        first_seq: b.first_seq,
                        last_seq: b.last_seq,
                    }),
                });
                if b.delivered {
                    emit(Event::Delivered {
                        topic,
                        partition,
                        base_offset: b.base_offset,
                    });
                }
            }
        }
        count
    }
}
