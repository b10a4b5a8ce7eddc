//! Pairs the records read from Kafka with those read from Kinesis, key by key, and counts what
//! does not line up.
//!
//! Both sides are reduced to a key hash and a data digest per record, so memory stays a few
//! words per record whatever the payload sizes. Pairing is in two passes:
//! 1. identical copies: within one key, the n-th Kinesis copy of a digest pairs with the n-th
//!    Kafka record of that digest; further copies are duplicates;
//! 2. positions: walking a key's Kinesis records in stream order, a record left unpaired takes
//!    the Kafka record that follows the last paired one, if that record is expected and
//!    unpaired too (a mismatch: same place, other data); otherwise it is unexpected.

use std::cmp::Ordering;

use xxhash_rust::xxh3::xxh3_64;

/// How many examples of each kind of problem the report lists.
const EXAMPLES_PER_KIND: usize = 20;

/// The 64-bit digest a record's data is compared by.
pub fn digest(data: &[u8]) -> u64 {
    xxh3_64(data)
}

/// The hash a record's Kinesis partition key is grouped by.
pub fn key_hash(partition_key: &str) -> u64 {
    xxh3_64(partition_key.as_bytes())
}

/// What the proxy should have done with a Kafka record that was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// In the window and in the sample: it must be in the stream.
    Expected,
    /// In the window, outside the sample: it may be in the stream (a route ramped down).
    OutsideSample,
    /// Read around the window so that its mirror, if the stream has it, is recognised rather
    /// than reported as unexpected; not counted.
    Context,
}

#[derive(Debug, Clone, Copy)]
pub struct KafkaEntry {
    pub key_hash: u64,
    pub digest: u64,
    pub partition: i32,
    pub offset: i64,
    pub role: Role,
}

/// A Kinesis record; its place in the stream is its index in the read, which lists parent
/// shards before their children and each shard in sequence order.
#[derive(Debug, Clone, Copy)]
pub struct KinesisEntry {
    pub key_hash: u64,
    pub digest: u64,
    /// Index into the read's list of shard ids.
    pub shard: u32,
    pub sequence: super::kinesis_read::SequenceNumber,
}

/// A record the report points at: its Kafka side, its Kinesis side, or both (indexes into the
/// entries compared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Problem {
    pub kafka: Option<usize>,
    pub kinesis: Option<usize>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub kafka_records: u64,
    pub expected: u64,
    pub outside_sample: u64,
    pub found: u64,
    pub matched: u64,
    pub missing: u64,
    pub unexpected: u64,
    pub mismatched: u64,
    pub duplicates: u64,
    pub order_violations: u64,
}

/// The first examples of each problem.
#[derive(Debug, Default)]
pub struct ProblemExamples {
    pub missing: Vec<Problem>,
    pub unexpected: Vec<Problem>,
    pub mismatched: Vec<Problem>,
    pub duplicates: Vec<Problem>,
    pub order_violations: Vec<Problem>,
}

#[derive(Debug, Default)]
pub struct Comparison {
    pub counts: Counts,
    pub examples: ProblemExamples,
}

/// What a Kinesis record turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pairing {
    Unpaired,
    /// An identical copy of the Kafka record at this index.
    Copy(u32),
    /// A further identical copy of the Kafka record at this index.
    Duplicate(u32),
    /// The Kafka record at this index, with other data.
    Mismatch(u32),
}

fn note(list: &mut Vec<Problem>, count: &mut u64, problem: Problem) {
    *count += 1;
    if list.len() < EXAMPLES_PER_KIND {
        list.push(problem);
    }
}

pub fn compare(kafka: &[KafkaEntry], kinesis: &[KinesisEntry]) -> Comparison {
    assert!(
        u32::try_from(kafka.len()).is_ok() && u32::try_from(kinesis.len()).is_ok(),
        "verify indexes records with 32 bits"
    );
    let mut pairing = pair_copies(kafka, kinesis);
    let mut kafka_paired = vec![false; kafka.len()];
    for p in &pairing {
        if let Pairing::Copy(a) = p {
            kafka_paired[*a as usize] = true;
        }
    }

    // Each key's records in their order: Kafka's by partition and offset, Kinesis' as read.
    let mut kafka_order: Vec<u32> = (0..kafka.len() as u32).collect();
    kafka_order.sort_unstable_by_key(|&i| {
        let e = &kafka[i as usize];
        (e.key_hash, e.partition, e.offset)
    });
    let mut kinesis_order: Vec<u32> = (0..kinesis.len() as u32).collect();
    kinesis_order.sort_by_key(|&i| kinesis[i as usize].key_hash);

    let mut comparison = Comparison::default();
    let (mut a, mut b) = (0, 0);
    while a < kafka_order.len() || b < kinesis_order.len() {
        let key = match (kafka_order.get(a), kinesis_order.get(b)) {
            (Some(&x), Some(&y)) => kafka[x as usize].key_hash.min(kinesis[y as usize].key_hash),
            (Some(&x), None) => kafka[x as usize].key_hash,
            (None, Some(&y)) => kinesis[y as usize].key_hash,
            (None, None) => unreachable!(),
        };
        let a_end = a + kafka_order[a..].partition_point(|&i| kafka[i as usize].key_hash == key);
        let b_end =
            b + kinesis_order[b..].partition_point(|&i| kinesis[i as usize].key_hash == key);
        let key_records = KeyRecords {
            kafka,
            kafka_sequence: &kafka_order[a..a_end],
            kinesis_sequence: &kinesis_order[b..b_end],
        };
        key_records.pair_positions(&mut pairing, &mut kafka_paired);
        key_records.count(&pairing, &mut comparison);
        (a, b) = (a_end, b_end);
    }
    for (i, e) in kafka.iter().enumerate() {
        let counts = &mut comparison.counts;
        match e.role {
            Role::Context => continue,
            Role::Expected => counts.expected += 1,
            Role::OutsideSample => counts.outside_sample += 1,
        }
        counts.kafka_records += 1;
        if e.role == Role::Expected && !kafka_paired[i] {
            let problem = Problem {
                kafka: Some(i),
                kinesis: None,
            };
            note(
                &mut comparison.examples.missing,
                &mut counts.missing,
                problem,
            );
        }
    }
    comparison.counts.found = comparison.counts.matched + comparison.counts.mismatched;
    comparison
}

/// Pass 1: pairs identical copies, the n-th Kinesis copy of a (key, digest) with the n-th Kafka
/// record of it in Kafka order.
fn pair_copies(kafka: &[KafkaEntry], kinesis: &[KinesisEntry]) -> Vec<Pairing> {
    let mut kafka_order: Vec<u32> = (0..kafka.len() as u32).collect();
    kafka_order.sort_unstable_by_key(|&i| {
        let e = &kafka[i as usize];
        (e.key_hash, e.digest, e.partition, e.offset)
    });
    let mut kinesis_order: Vec<u32> = (0..kinesis.len() as u32).collect();
    // Stable: copies keep their stream order.
    kinesis_order.sort_by_key(|&i| {
        let e = &kinesis[i as usize];
        (e.key_hash, e.digest)
    });
    let identity_a = |i: u32| (kafka[i as usize].key_hash, kafka[i as usize].digest);
    let identity_b = |i: u32| (kinesis[i as usize].key_hash, kinesis[i as usize].digest);
    let mut pairing = vec![Pairing::Unpaired; kinesis.len()];
    let (mut a, mut b) = (0, 0);
    while a < kafka_order.len() && b < kinesis_order.len() {
        let (x, y) = (kafka_order[a], kinesis_order[b]);
        match identity_a(x).cmp(&identity_b(y)) {
            Ordering::Less => a += 1,
            Ordering::Greater => b += 1,
            Ordering::Equal => {
                let identity = identity_a(x);
                let a_end = a + kafka_order[a..].partition_point(|&i| identity_a(i) == identity);
                let b_end = b + kinesis_order[b..].partition_point(|&i| identity_b(i) == identity);
                let copies = &kafka_order[a..a_end];
                for (n, &y) in kinesis_order[b..b_end].iter().enumerate() {
                    pairing[y as usize] = match copies.get(n) {
                        Some(&x) => Pairing::Copy(x),
                        None => Pairing::Duplicate(copies[copies.len() - 1]),
                    };
                }
                (a, b) = (a_end, b_end);
            }
        }
    }
    pairing
}

/// One key's records on both sides, each as indexes in that side's order.
struct KeyRecords<'a> {
    kafka: &'a [KafkaEntry],
    kafka_sequence: &'a [u32],
    kinesis_sequence: &'a [u32],
}

impl KeyRecords<'_> {
    /// Where the Kafka record `index` is in this key's Kafka sequence.
    fn position(&self, index: u32) -> usize {
        let e = &self.kafka[index as usize];
        self.kafka_sequence.partition_point(|&i| {
            let other = &self.kafka[i as usize];
            (other.partition, other.offset) < (e.partition, e.offset)
        })
    }

    /// Pass 2: a Kinesis record left unpaired takes the Kafka record after the last paired
    /// one, when that one is expected and unpaired (records that need not be in the stream are
    /// stepped over).
    fn pair_positions(&self, pairing: &mut [Pairing], kafka_paired: &mut [bool]) {
        let mut next = 0;
        for &y in self.kinesis_sequence {
            match pairing[y as usize] {
                Pairing::Copy(x) | Pairing::Mismatch(x) => next = self.position(x) + 1,
                Pairing::Duplicate(_) => {}
                Pairing::Unpaired => {
                    let candidate = self.kafka_sequence[next.min(self.kafka_sequence.len())..]
                        .iter()
                        .find(|&&x| {
                            kafka_paired[x as usize]
                                || self.kafka[x as usize].role == Role::Expected
                        });
                    if let Some(&x) = candidate.filter(|&&x| !kafka_paired[x as usize]) {
                        pairing[y as usize] = Pairing::Mismatch(x);
                        kafka_paired[x as usize] = true;
                        next = self.position(x) + 1;
                    }
                }
            }
        }
    }

    /// Counts this key's Kinesis records, and order violations: a record whose Kafka offset is
    /// below that of an earlier one of the same partition. Kafka orders a key's records only
    /// within a partition, and so does the mirror.
    fn count(&self, pairing: &[Pairing], comparison: &mut Comparison) {
        let (counts, examples) = (&mut comparison.counts, &mut comparison.examples);
        let mut last_offsets: Vec<(i32, i64)> = Vec::new();
        for &y in self.kinesis_sequence {
            let problem = |x: Option<u32>| Problem {
                kafka: x.map(|x| x as usize),
                kinesis: Some(y as usize),
            };
            let x = match pairing[y as usize] {
                Pairing::Unpaired => {
                    note(
                        &mut examples.unexpected,
                        &mut counts.unexpected,
                        problem(None),
                    );
                    continue;
                }
                Pairing::Duplicate(x) => {
                    if self.kafka[x as usize].role == Role::Expected {
                        note(
                            &mut examples.duplicates,
                            &mut counts.duplicates,
                            problem(Some(x)),
                        );
                    }
                    continue;
                }
                Pairing::Copy(x) | Pairing::Mismatch(x)
                    if self.kafka[x as usize].role != Role::Expected =>
                {
                    continue
                }
                Pairing::Copy(x) => {
                    counts.matched += 1;
                    x
                }
                Pairing::Mismatch(x) => {
                    note(
                        &mut examples.mismatched,
                        &mut counts.mismatched,
                        problem(Some(x)),
                    );
                    x
                }
            };
            let e = &self.kafka[x as usize];
            match last_offsets.iter_mut().find(|(p, _)| *p == e.partition) {
                Some((_, last)) if *last > e.offset => note(
                    &mut examples.order_violations,
                    &mut counts.order_violations,
                    problem(Some(x)),
                ),
                Some((_, last)) => *last = e.offset,
                None => last_offsets.push((e.partition, e.offset)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::kinesis_read::SequenceNumber;

    fn kafka_entry(key: &str, data: &str, offset: i64, role: Role) -> KafkaEntry {
        KafkaEntry {
            key_hash: key_hash(key),
            digest: digest(data.as_bytes()),
            partition: 0,
            offset,
            role,
        }
    }

    fn kinesis_entries(records: &[(&str, &str)]) -> Vec<KinesisEntry> {
        records
            .iter()
            .enumerate()
            .map(|(i, (key, data))| KinesisEntry {
                key_hash: key_hash(key),
                digest: digest(data.as_bytes()),
                shard: 0,
                sequence: SequenceNumber::parse(&i.to_string()).unwrap(),
            })
            .collect()
    }

    fn expected(records: &[(&str, &str)]) -> Vec<KafkaEntry> {
        records
            .iter()
            .enumerate()
            .map(|(i, (k, d))| kafka_entry(k, d, i as i64, Role::Expected))
            .collect()
    }

    #[test]
    fn identical_sides_match() {
        let records = [("a", "1"), ("b", "2"), ("a", "3"), ("a", "1")];
        let c = compare(&expected(&records), &kinesis_entries(&records));
        assert_eq!(
            c.counts,
            Counts {
                kafka_records: 4,
                expected: 4,
                found: 4,
                matched: 4,
                ..Counts::default()
            }
        );
    }

    #[test]
    fn missing_unexpected_and_duplicates() {
        let kafka = expected(&[("a", "1"), ("a", "2"), ("b", "3")]);
        let kinesis = kinesis_entries(&[("a", "1"), ("a", "1"), ("c", "9"), ("b", "3")]);
        let c = compare(&kafka, &kinesis);
        assert_eq!(
            (
                c.counts.matched,
                c.counts.missing,
                c.counts.unexpected,
                c.counts.duplicates
            ),
            (2, 1, 1, 1),
            "{:?}",
            c.counts
        );
        assert_eq!(c.examples.missing[0].kafka, Some(1));
        assert_eq!(c.examples.unexpected[0].kinesis, Some(2));
    }

    #[test]
    fn other_data_at_a_keys_next_position_is_a_mismatch() {
        let kafka = expected(&[("a", "1"), ("a", "2"), ("a", "3")]);
        let kinesis = kinesis_entries(&[("a", "1"), ("a", "2"), ("a", "changed")]);
        let c = compare(&kafka, &kinesis);
        assert_eq!(
            (
                c.counts.matched,
                c.counts.mismatched,
                c.counts.missing,
                c.counts.unexpected
            ),
            (2, 1, 0, 0),
            "{:?}",
            c.counts
        );
        assert_eq!(
            c.examples.mismatched[0],
            Problem {
                kafka: Some(2),
                kinesis: Some(2)
            }
        );
        assert_eq!(c.counts.found, 3);
    }

    #[test]
    fn reordered_records_are_order_violations() {
        let kafka = expected(&[("a", "1"), ("a", "2"), ("a", "3")]);
        let kinesis = kinesis_entries(&[("a", "1"), ("a", "3"), ("a", "2")]);
        let c = compare(&kafka, &kinesis);
        assert_eq!((c.counts.matched, c.counts.order_violations), (3, 1));
    }

    #[test]
    fn records_outside_sample_or_window_are_neither_missing_nor_unexpected() {
        let kafka = vec![
            kafka_entry("a", "before", 0, Role::Context),
            kafka_entry("a", "1", 1, Role::Expected),
            kafka_entry("b", "2", 0, Role::OutsideSample),
            kafka_entry("c", "3", 0, Role::OutsideSample),
            kafka_entry("a", "after", 2, Role::Context),
        ];
        let kinesis = kinesis_entries(&[("a", "1"), ("b", "2"), ("a", "after")]);
        let c = compare(&kafka, &kinesis);
        assert_eq!(
            c.counts,
            Counts {
                kafka_records: 3,
                expected: 1,
                outside_sample: 2,
                found: 1,
                matched: 1,
                ..Counts::default()
            }
        );
    }
}
