//! Per-shard lanes: the records queued for each open shard, the shard's rate limit, and the
//! rule that fills PutRecords requests from them.
//!
//! With `ordering = "per-key"` a lane has at most one request in flight, a request carries each
//! key (routing hash) at most once, and entries that fail go back to the front of their lane in
//! order. Kinesis does not stop at the first failed entry of a request, so without the
//! one-key-per-request rule a later record of a key could land while an earlier one waits for
//! its retry. The cost: a key's records move one per round trip. With `partition_key =
//! "partition"` each partition is one key, so `ordering = "none"` is the choice for throughput.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::rate::TokenBucket;
use super::request::{MirrorRecord, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
use super::shard_map::ShardMap;
use crate::ops::config::WriteOrdering;

/// A record waiting in a lane.
#[derive(Debug, Clone)]
pub struct Queued {
    pub record: MirrorRecord,
    /// The 128-bit value Kinesis routes by, computed once.
    pub hash: u128,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When it entered memory, for `record_ttl`.
    pub enqueued: Instant,
    /// Read back from the spool: it stays durable there until delivered.
    pub from_spool: bool,
}

impl Queued {
    pub fn new(record: MirrorRecord, now: Instant, from_spool: bool) -> Queued {
        Queued {
            hash: record.key.routing_hash(),
            record,
            attempts: 0,
            enqueued: now,
            from_spool,
        }
    }
}

struct Lane {
    queue: VecDeque<Queued>,
    bucket: TokenBucket,
    in_flight: usize,
    retry_at: Option<Instant>,
    /// Consecutive failed requests, for backoff.
    failures: u32,
}

/// One request's worth of records, each with the lane (predicted shard) it came from.
pub type Request = Vec<(Arc<str>, Queued)>;

pub struct Lanes {
    lanes: BTreeMap<Arc<str>, Lane>,
    ordering: WriteOrdering,
    rate_factor: f64,
    /// Lane to start filling from, rotated so that no shard starves.
    cursor: usize,
}

impl Lanes {
    pub fn new(ordering: WriteOrdering, rate_factor: f64) -> Lanes {
        Lanes {
            lanes: BTreeMap::new(),
            ordering,
            rate_factor,
            cursor: 0,
        }
    }

    fn lane_for(&mut self, hash: u128, map: &ShardMap, now: Instant) -> (Arc<str>, &mut Lane) {
        // Mid-reshard the open shards can leave a gap; the nearest lower shard stands in, and
        // Kinesis' answer corrects the map.
        let shard = map
            .shard_for_hash(hash)
            .or(map.shards().last())
            .map_or("", |s| s.id.as_str());
        let id: Arc<str> = match self.lanes.get_key_value(shard) {
            Some((id, _)) => id.clone(),
            None => Arc::from(shard),
        };
        let factor = self.rate_factor;
        let lane = self.lanes.entry(id.clone()).or_insert_with(|| Lane {
            queue: VecDeque::new(),
            bucket: TokenBucket::new(factor, now),
            in_flight: 0,
            retry_at: None,
            failures: 0,
        });
        (id, lane)
    }

    /// Queues a record behind everything already in its lane.
    pub fn push(&mut self, queued: Queued, map: &ShardMap, now: Instant) {
        self.lane_for(queued.hash, map, now)
            .1
            .queue
            .push_back(queued);
    }

    /// Fills the next request: at most 500 entries and 5 MiB, from lanes that may send now
    /// (not backing off, within their rate, and under per-key ordering not already in flight).
    pub fn fill_request(&mut self, now: Instant) -> Request {
        let mut request = Request::new();
        let mut bytes = 0;
        let ids: Vec<Arc<str>> = self.lanes.keys().cloned().collect();
        if ids.is_empty() {
            return request;
        }
        let start = self.cursor % ids.len();
        self.cursor = self.cursor.wrapping_add(1);
        'lanes: for id in ids[start..].iter().chain(&ids[..start]) {
            let lane = self.lanes.get_mut(id).expect("listed above");
            let per_key = self.ordering == WriteOrdering::PerKey;
            if lane.queue.is_empty()
                || lane.retry_at.is_some_and(|t| t > now)
                || (per_key && lane.in_flight > 0)
            {
                continue;
            }
            let mut keys = HashSet::new();
            let mut took = false;
            while let Some(front) = lane.queue.front() {
                let size = front.record.kinesis_bytes();
                if request.len() == MAX_BATCH_ENTRIES
                    || (bytes + size > MAX_BATCH_BYTES && !request.is_empty())
                {
                    if took {
                        lane.in_flight += 1;
                    }
                    break 'lanes;
                }
                if per_key && !keys.insert(front.hash) {
                    break;
                }
                if !lane.bucket.try_take(size, now) {
                    break;
                }
                bytes += size;
                took = true;
                request.push((id.clone(), lane.queue.pop_front().expect("front exists")));
            }
            if took {
                lane.in_flight += 1;
            }
        }
        request
    }

    /// A request finished: every lane it drew from may send again (under per-key ordering).
    pub fn finished(&mut self, lanes: &HashSet<Arc<str>>) {
        for id in lanes {
            if let Some(lane) = self.lanes.get_mut(id) {
                lane.in_flight = lane.in_flight.saturating_sub(1);
            }
        }
    }

    /// Entries of `lane` were delivered: its backoff resets.
    pub fn delivered(&mut self, lane: &str) {
        if let Some(lane) = self.lanes.get_mut(lane) {
            lane.failures = 0;
            lane.retry_at = None;
        }
    }

    /// Kinesis throttled `lane`'s shard.
    pub fn throttled(&mut self, lane: &str, now: Instant) {
        if let Some(lane) = self.lanes.get_mut(lane) {
            lane.bucket.throttled(now);
        }
    }

    /// Puts failed entries back at the front of their lanes, in their original order, and
    /// makes those lanes wait `backoff(consecutive failures)`.
    pub fn requeue_front(
        &mut self,
        failed: Request,
        map: &ShardMap,
        now: Instant,
        backoff: impl Fn(u32) -> Duration,
    ) {
        let mut per_lane: BTreeMap<Arc<str>, Vec<Queued>> = BTreeMap::new();
        for (lane, queued) in failed {
            per_lane.entry(lane).or_default().push(queued);
        }
        for (id, records) in per_lane {
            let Some(lane) = self.lanes.get_mut(&id) else {
                // The lane's shard closed meanwhile: re-route, still ahead of newer records.
                for queued in records.into_iter().rev() {
                    let hash = queued.hash;
                    self.lane_for(hash, map, now).1.queue.push_front(queued);
                }
                continue;
            };
            for queued in records.into_iter().rev() {
                lane.queue.push_front(queued);
            }
            lane.failures += 1;
            lane.retry_at = Some(now + backoff(lane.failures));
        }
    }

    /// Gives every open shard a lane, and moves records of shards that are no longer open into
    /// the lanes of the shards that took over their hash ranges, ahead of what those lanes
    /// already hold.
    pub fn reroute(&mut self, map: &ShardMap, now: Instant) {
        for shard in map.shards() {
            self.lane_for(shard.start, map, now);
        }
        let open: HashSet<&str> = map.shards().iter().map(|s| s.id.as_str()).collect();
        let closed: Vec<Arc<str>> = self
            .lanes
            .keys()
            .filter(|id| !open.contains(&***id))
            .cloned()
            .collect();
        for id in closed {
            let lane = self.lanes.get_mut(&id).expect("listed above");
            let orphans: Vec<Queued> = lane.queue.drain(..).collect();
            if lane.in_flight == 0 {
                self.lanes.remove(&id);
            }
            for queued in orphans.into_iter().rev() {
                let hash = queued.hash;
                self.lane_for(hash, map, now).1.queue.push_front(queued);
            }
        }
    }

    /// Removes every queued record (not those in flight), lane by lane in order.
    pub fn drain_queued(&mut self) -> Vec<Queued> {
        self.lanes
            .values_mut()
            .flat_map(|lane| lane.queue.drain(..))
            .collect()
    }

    pub fn queued_records(&self) -> usize {
        self.lanes.values().map(|l| l.queue.len()).sum()
    }

    pub fn in_flight(&self) -> usize {
        self.lanes.values().map(|l| l.in_flight).sum()
    }

    /// Nothing queued and nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.lanes
            .values()
            .all(|l| l.queue.is_empty() && l.in_flight == 0)
    }

    /// The oldest queued record that came from memory (not the spool), with its attempts.
    /// Called on every wake, so it must not scan queues: each lane is in age order (retries
    /// go back to the front, and spool records only enter a lane that has drained), so a
    /// lane's oldest is its first record that is not from the spool.
    pub fn oldest_in_memory(&self) -> Option<(Instant, u32)> {
        self.lanes
            .values()
            .filter_map(|l| l.queue.iter().find(|q| !q.from_spool))
            .map(|q| (q.enqueued, q.attempts))
            .min_by_key(|(t, _)| *t)
    }

    /// When a lane that has records but may not send now will be able to.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        self.lanes
            .values()
            .filter(|l| !l.queue.is_empty())
            .map(|l| match l.retry_at {
                Some(t) if t > now => t,
                _ => now + l.bucket.wait_hint(),
            })
            .min()
    }

    /// Each lane's current rate limit in records per second.
    pub fn rates(&self) -> impl Iterator<Item = (&str, f64)> {
        self.lanes
            .iter()
            .map(|(id, l)| (&**id, l.bucket.records_per_sec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::shard_map::tests::even;
    use crate::mirror::partition_key::KinesisKey;
    use bytes::Bytes;

    fn queued(key: &str, seq: i64, now: Instant) -> Queued {
        Queued::new(
            MirrorRecord {
                topic: Arc::from("t"),
                partition: 0,
                offset: seq,
                key: KinesisKey {
                    partition_key: key.to_owned(),
                    explicit_hash_key: None,
                },
                data: Bytes::from_static(b"x"),
                acked_at: now,
            },
            now,
            false,
        )
    }

    fn lanes_with(
        ordering: WriteOrdering,
        records: &[(&str, i64)],
        now: Instant,
    ) -> (Lanes, ShardMap) {
        let map = even(4);
        let mut lanes = Lanes::new(ordering, 100.0);
        for (key, seq) in records {
            lanes.push(queued(key, *seq, now), &map, now);
        }
        (lanes, map)
    }

    #[test]
    fn per_key_requests_carry_each_key_once_and_one_request_per_lane() {
        let now = Instant::now();
        let (mut lanes, _) = lanes_with(
            WriteOrdering::PerKey,
            &[("a", 1), ("a", 2), ("b", 3), ("a", 4)],
            now,
        );
        let first = lanes.fill_request(now);
        let keys: Vec<(&str, i64)> = first
            .iter()
            .map(|(_, q)| (q.record.key.partition_key.as_str(), q.record.offset))
            .collect();
        // Per lane, filling stops at the first repeated key, so a key is never twice in flight.
        assert!(
            keys.iter().filter(|(k, _)| *k == "a").count() == 1,
            "{keys:?}"
        );
        assert!(keys.contains(&("a", 1)));
        assert!(
            lanes
                .fill_request(now)
                .iter()
                .all(|(lane, _)| !first.iter().any(|(l, _)| l == lane)),
            "a lane in flight sends nothing more"
        );
    }

    #[test]
    fn failed_entries_return_to_the_front_in_order() {
        let now = Instant::now();
        let records: Vec<(String, i64)> = (0..20).map(|i| (format!("k{i}"), i)).collect();
        let refs: Vec<(&str, i64)> = records.iter().map(|(k, i)| (k.as_str(), *i)).collect();
        let (mut lanes, map) = lanes_with(WriteOrdering::PerKey, &refs, now);
        let request = lanes.fill_request(now);
        assert_eq!(request.len(), 20);
        let touched: HashSet<Arc<str>> = request.iter().map(|(l, _)| l.clone()).collect();
        lanes.finished(&touched);
        lanes.requeue_front(request, &map, now, |_| Duration::ZERO);
        let again = lanes.fill_request(now + Duration::from_millis(1));
        for lane in &touched {
            let offsets: Vec<i64> = again
                .iter()
                .filter(|(l, _)| l == lane)
                .map(|(_, q)| q.record.offset)
                .collect();
            assert!(
                offsets.windows(2).all(|w| w[0] < w[1]),
                "{lane}: {offsets:?}"
            );
        }
        assert_eq!(again.len(), 20);
    }

    #[test]
    fn backoff_holds_a_lane_and_others_go_on() {
        let now = Instant::now();
        let (mut lanes, map) = lanes_with(
            WriteOrdering::PerKey,
            &[("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)],
            now,
        );
        let request = lanes.fill_request(now);
        let (failed_lane, _) = request[0].clone();
        let touched: HashSet<Arc<str>> = request.iter().map(|(l, _)| l.clone()).collect();
        lanes.finished(&touched);
        let failed: Request = request
            .into_iter()
            .filter(|(l, _)| *l == failed_lane)
            .collect();
        lanes.requeue_front(failed, &map, now, |_| Duration::from_secs(1));
        assert!(
            lanes.fill_request(now).is_empty(),
            "the failed lane waits its backoff"
        );
        assert!(!lanes.fill_request(now + Duration::from_secs(2)).is_empty());
    }

    #[test]
    fn rate_limit_caps_a_lane() {
        let now = Instant::now();
        let map = even(1);
        let mut lanes = Lanes::new(WriteOrdering::None, 0.1); // 100 records/s
        for i in 0..1000 {
            lanes.push(queued(&format!("k{i}"), i, now), &map, now);
        }
        let sent: usize = (0..10).map(|_| lanes.fill_request(now).len()).sum();
        assert_eq!(sent, 100);
        assert!(lanes.next_wake(now).is_some());
    }

    #[test]
    fn ordering_none_allows_repeated_keys_and_parallel_requests() {
        let now = Instant::now();
        let (mut lanes, _) = lanes_with(WriteOrdering::None, &[("a", 1), ("a", 2), ("a", 3)], now);
        assert_eq!(lanes.fill_request(now).len(), 3);
    }
}
