//! Per-shard lanes: the records queued for each open shard, the shard's rate limit, and the
//! rule that fills PutRecords requests from them.
//!
//! With `ordering = "per-key"` a lane has at most one request in flight, a request carries each
//! key (routing hash) at most once, and entries that fail go back to the front of their lane in
//! order. Kinesis does not stop at the first failed entry of a request, so without the
//! one-key-per-request rule a later record of a key could land while an earlier one waits for
//! its retry. The cost: a key's records move one per round trip. With `partition_key =
//! "partition"` each partition is one key, so `ordering = "none"` is the choice for throughput.
//!
//! Resharding: when a shard closes, its queue moves to the lanes of the shards that took over
//! its hash range, and under per-key ordering those lanes send nothing until the closed
//! shard's requests in flight have settled (parents before children, the order KCL reads
//! them in); its failed entries then go to the front of the child's queue.
//!
//! Lanes live in a `Vec` and requests name them by index: filling a request and settling its
//! outcome touch every lane of a wide stream hundreds of times a second, so neither may walk
//! a tree of shard-id strings.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::rate::TokenBucket;
use super::request::{MirrorRecord, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
use super::shard_map::ShardMap;
use crate::config::WriteOrdering;

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
    /// Read back from the spool, in this replay window: it stays durable there until
    /// delivered.
    pub from_spool: Option<ReplayWindow>,
}

/// Which read of the spool a replayed record came in, so that the spool is acknowledged only
/// past windows whose every record has settled.
pub type ReplayWindow = u64;

impl Queued {
    /// A record taken from the Kafka path.
    pub fn new(record: MirrorRecord, now: Instant) -> Queued {
        Queued {
            hash: record.key.routing_hash(),
            record,
            attempts: 0,
            enqueued: now,
            from_spool: None,
        }
    }

    /// A record read back from the spool in `window`.
    pub fn replayed(record: MirrorRecord, now: Instant, window: ReplayWindow) -> Queued {
        Queued {
            from_spool: Some(window),
            ..Queued::new(record, now)
        }
    }
}

/// The lane (predicted shard) a request entry was taken from.
#[derive(Debug, Clone)]
pub struct LaneRef {
    index: usize,
    pub shard: Arc<str>,
}

struct Lane {
    shard: Arc<str>,
    /// The shard's hash range, to find the children of a closed shard.
    start: u128,
    end: u128,
    /// The shard is in the current map. A closed shard's lane is kept until its requests in
    /// flight finish, then its slot is reused.
    open: bool,
    queue: VecDeque<Queued>,
    bucket: TokenBucket,
    in_flight: usize,
    retry_at: Option<Instant>,
    /// Consecutive failed requests, for backoff.
    failures: u32,
    /// The lane's oldest record waited too long: it sends nothing more from memory, and its
    /// queue moves to the spool once its requests in flight settle.
    spill_pending: bool,
    /// Its records go to the spool until the spool is empty again.
    spilled: bool,
    /// Closed lanes (parent shards) whose requests are still in flight and whose hash ranges
    /// this lane took over: under per-key ordering it sends nothing until they settle.
    parents: Vec<usize>,
}

/// One request's worth of records, each with the lane it came from.
pub type Request = Vec<(LaneRef, Queued)>;

pub struct Lanes {
    lanes: Vec<Lane>,
    /// Open shard id to lane index.
    by_shard: HashMap<Arc<str>, usize>,
    /// Records queued over all lanes.
    queued: usize,
    ordering: WriteOrdering,
    rate_factor: f64,
    /// Lane to start filling from, rotated so that no shard starves.
    cursor: usize,
    /// Keys already in the request from the lane being filled (per-key ordering); kept to
    /// reuse its allocation.
    keys: HashSet<u128>,
}

impl Lanes {
    pub fn new(ordering: WriteOrdering, rate_factor: f64) -> Lanes {
        Lanes {
            lanes: Vec::new(),
            by_shard: HashMap::new(),
            queued: 0,
            ordering,
            rate_factor,
            cursor: 0,
            keys: HashSet::new(),
        }
    }

    /// The lane of the open shard `hash` routes to, created on first use.
    fn lane_for(&mut self, hash: u128, map: &ShardMap, now: Instant) -> usize {
        // Mid-reshard the open shards can leave a gap; the nearest lower shard stands in, and
        // Kinesis' answer corrects the map.
        let found = map.shard_for_hash(hash).or(map.shards().last());
        let shard = found.map_or("", |s| s.id.as_str());
        if let Some(&index) = self.by_shard.get(shard) {
            return index;
        }
        let lane = Lane {
            shard: Arc::from(shard),
            start: found.map_or(0, |s| s.start),
            end: found.map_or(u128::MAX, |s| s.end),
            open: true,
            queue: VecDeque::new(),
            bucket: TokenBucket::new(self.rate_factor, now),
            in_flight: 0,
            retry_at: None,
            failures: 0,
            spill_pending: false,
            spilled: false,
            parents: Vec::new(),
        };
        let free = self
            .lanes
            .iter()
            .position(|l| !l.open && l.in_flight == 0 && l.queue.is_empty());
        let index = match free {
            Some(index) => {
                self.lanes[index] = lane;
                index
            }
            None => {
                self.lanes.push(lane);
                self.lanes.len() - 1
            }
        };
        self.by_shard.insert(self.lanes[index].shard.clone(), index);
        index
    }

    /// Queues a record behind everything already in its lane.
    pub fn push(&mut self, queued: Queued, map: &ShardMap, now: Instant) {
        let index = self.lane_for(queued.hash, map, now);
        self.lanes[index].queue.push_back(queued);
        self.queued += 1;
    }

    /// Fills the next request: at most 500 entries and 5 MiB, from lanes that may send now
    /// (not backing off, within their rate, and under per-key ordering not already in flight).
    pub fn fill_request(&mut self, now: Instant) -> Request {
        let mut request = Request::with_capacity(self.queued.min(MAX_BATCH_ENTRIES));
        let count = self.lanes.len();
        if count == 0 || self.queued == 0 {
            return request;
        }
        let mut bytes = 0;
        let start = self.cursor % count;
        self.cursor = self.cursor.wrapping_add(1);
        let per_key = self.ordering == WriteOrdering::PerKey;
        'lanes: for index in (start..count).chain(0..start) {
            let lane = &mut self.lanes[index];
            if lane.queue.is_empty()
                || lane.spill_pending
                || lane.retry_at.is_some_and(|t| t > now)
                || (per_key && (lane.in_flight > 0 || !lane.parents.is_empty()))
            {
                continue;
            }
            self.keys.clear();
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
                if per_key && !self.keys.insert(front.hash) {
                    break;
                }
                if !lane.bucket.try_take(size, now) {
                    break;
                }
                bytes += size;
                took = true;
                let lane_ref = LaneRef {
                    index,
                    shard: lane.shard.clone(),
                };
                request.push((lane_ref, lane.queue.pop_front().expect("front exists")));
            }
            if took {
                lane.in_flight += 1;
            }
        }
        self.queued -= request.len();
        request
    }

    /// A request finished: every lane it drew from may send again (under per-key ordering),
    /// and so may the children of a closed lane that has nothing in flight any more.
    pub fn finished(&mut self, request: &Request) {
        let mut touched: Vec<usize> = request.iter().map(|(lane, _)| lane.index).collect();
        touched.sort_unstable();
        touched.dedup();
        for index in touched {
            let lane = &mut self.lanes[index];
            lane.in_flight = lane.in_flight.saturating_sub(1);
            if !lane.open && lane.in_flight == 0 {
                for child in &mut self.lanes {
                    child.parents.retain(|&parent| parent != index);
                }
            }
        }
    }

    /// An entry of `lane` was delivered: its backoff resets.
    pub fn delivered(&mut self, lane: &LaneRef) {
        let lane = &mut self.lanes[lane.index];
        lane.failures = 0;
        lane.retry_at = None;
    }

    /// Kinesis throttled `lane`'s shard.
    pub fn throttled(&mut self, lane: &LaneRef, now: Instant) {
        self.lanes[lane.index].bucket.throttled(now);
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
        self.queued += failed.len();
        let mut backing_off = Vec::new();
        // Last first, so each lane's records end up in their original order.
        for (lane, queued) in failed.into_iter().rev() {
            if self.lanes[lane.index].open {
                self.lanes[lane.index].queue.push_front(queued);
                backing_off.push(lane.index);
            } else {
                // The lane's shard closed meanwhile: re-route, still ahead of newer records
                // (the child has sent none of them: it waited for this request).
                let index = self.lane_for(queued.hash, map, now);
                self.lanes[index].queue.push_front(queued);
                backing_off.push(index);
            }
        }
        backing_off.sort_unstable();
        backing_off.dedup();
        for index in backing_off {
            let lane = &mut self.lanes[index];
            lane.failures += 1;
            lane.retry_at = Some(now + backoff(lane.failures));
        }
    }

    /// Gives every open shard a lane, and moves records of shards that are no longer open into
    /// the lanes of the shards that took over their hash ranges, ahead of what those lanes
    /// already hold. Under per-key ordering those lanes wait for the closed shards' requests
    /// in flight, which hold older records of the same keys.
    pub fn reroute(&mut self, map: &ShardMap, now: Instant) {
        let open: HashSet<&str> = map.shards().iter().map(|s| s.id.as_str()).collect();
        let closed: Vec<usize> = self
            .by_shard
            .iter()
            .filter(|(id, _)| !open.contains(&***id))
            .map(|(_, &index)| index)
            .collect();
        let mut orphans: Vec<Queued> = Vec::new();
        // Each closed range with the requests in flight its successors must wait for: its own,
        // and those its lane still waited for (a second reshard before they settled). Taken
        // now, before an idle closed lane's slot is reused below.
        let mut waits: Vec<(u128, u128, Vec<usize>)> = Vec::new();
        for index in closed {
            let lane = &mut self.lanes[index];
            lane.open = false;
            self.by_shard.remove(&lane.shard);
            orphans.extend(lane.queue.drain(..));
            let mut blockers = std::mem::take(&mut lane.parents);
            if lane.in_flight > 0 {
                blockers.push(index);
            }
            if self.ordering == WriteOrdering::PerKey && !blockers.is_empty() {
                waits.push((lane.start, lane.end, blockers));
            }
        }
        for shard in map.shards() {
            self.lane_for(shard.start, map, now);
        }
        for (start, end, blockers) in waits {
            for child in self.lanes.iter_mut().filter(|l| l.open) {
                if child.start <= end && start <= child.end {
                    child.parents.extend(&blockers);
                    child.parents.sort_unstable();
                    child.parents.dedup();
                }
            }
        }
        // Last first, so each key's records stay in order, ahead of what the lanes hold.
        for queued in orphans.into_iter().rev() {
            let target = self.lane_for(queued.hash, map, now);
            self.lanes[target].queue.push_front(queued);
        }
    }

    /// Removes every queued record (not those in flight), lane by lane in order.
    pub fn drain_queued(&mut self) -> Vec<Queued> {
        self.queued = 0;
        self.lanes
            .iter_mut()
            .flat_map(|lane| lane.queue.drain(..))
            .collect()
    }

    /// Removes the queued records taken from the Kafka path (not those in flight, nor those
    /// replayed from the spool, which are there already), lane by lane in order: the stream
    /// spills, and they go to the spool ahead of newer records.
    pub fn drain_from_memory(&mut self) -> Vec<Queued> {
        let mut taken = Vec::new();
        for lane in &mut self.lanes {
            let (from_spool, from_memory): (VecDeque<Queued>, VecDeque<Queued>) =
                lane.queue.drain(..).partition(|q| q.from_spool.is_some());
            lane.queue = from_spool;
            taken.extend(from_memory);
        }
        self.queued -= taken.len();
        taken
    }

    /// Lanes whose oldest record from memory waited past `ttl` or used up `max_attempts` stop
    /// sending; once their requests in flight settle (failed entries are back at the front),
    /// their queues are taken, in order, for the spool, and they stay spilled: one throttled
    /// shard spills alone instead of setting every shard's pace. A lane still holding records
    /// replayed from the spool waits for them: they are in the spool already.
    pub fn take_overdue(&mut self, now: Instant, ttl: Duration, max_attempts: u32) -> Vec<Queued> {
        let mut taken = Vec::new();
        for lane in self.lanes.iter_mut().filter(|l| l.open && !l.spilled) {
            let overdue = lane.spill_pending
                || lane
                    .queue
                    .iter()
                    .find(|q| q.from_spool.is_none())
                    .is_some_and(|q| {
                        now.duration_since(q.enqueued) >= ttl || q.attempts >= max_attempts
                    });
            if !overdue || lane.queue.iter().any(|q| q.from_spool.is_some()) {
                continue;
            }
            // A parent's request in flight holds older records of the lane's keys.
            lane.spill_pending = lane.in_flight > 0 || !lane.parents.is_empty();
            if !lane.spill_pending {
                lane.spilled = true;
                taken.extend(lane.queue.drain(..));
            }
        }
        self.queued -= taken.len();
        taken
    }

    /// Whether the lane `hash` routes to is spilled: its new records go to the spool.
    pub fn is_spilled(&mut self, hash: u128, map: &ShardMap, now: Instant) -> bool {
        let index = self.lane_for(hash, map, now);
        self.lanes[index].spilled
    }

    pub fn any_spilled(&self) -> bool {
        self.lanes.iter().any(|l| l.spilled)
    }

    /// Spilled lanes hold nothing and have nothing in flight: the spool may be replayed into
    /// them.
    pub fn spilled_are_idle(&self) -> bool {
        self.lanes
            .iter()
            .filter(|l| l.spilled)
            .all(|l| l.queue.is_empty() && l.in_flight == 0)
    }

    /// The spool is empty: every lane sends from memory again.
    pub fn clear_spilled(&mut self) {
        for lane in &mut self.lanes {
            lane.spilled = false;
        }
    }

    pub fn queued_records(&self) -> usize {
        self.queued
    }

    /// Nothing queued and nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.queued == 0 && self.lanes.iter().all(|l| l.in_flight == 0)
    }

    /// The oldest queued record that came from memory (not the spool), with its attempts.
    /// Called on every wake, so it must not scan queues, which replay can fill with up to
    /// half the budget: each lane is in age order (retries go back to the front, and spool
    /// records only enter a lane that has drained, while new records go to the spool behind
    /// them), so a lane's records from memory, if any, are at its front.
    pub fn oldest_in_memory(&self) -> Option<(Instant, u32)> {
        if self.queued == 0 {
            return None;
        }
        self.lanes
            .iter()
            .filter_map(|l| l.queue.front().filter(|q| q.from_spool.is_none()))
            .map(|q| (q.enqueued, q.attempts))
            .min_by_key(|(t, _)| *t)
    }

    /// When a lane that has records but may not send now will be able to.
    pub fn next_wake(&self, now: Instant) -> Option<Instant> {
        if self.queued == 0 {
            return None;
        }
        // A lane waiting for its parents is woken by their completions, not by the clock.
        self.lanes
            .iter()
            .filter(|l| !l.queue.is_empty() && l.parents.is_empty())
            .map(|l| match l.retry_at {
                Some(t) if t > now => t,
                _ => {
                    now + l
                        .bucket
                        .wait_hint(l.queue.front().map_or(0, |q| q.record.kinesis_bytes()))
                }
            })
            .min()
    }

    /// Each open shard's current rate limit in records per second.
    pub fn rates(&self) -> impl Iterator<Item = (&str, f64)> {
        self.lanes
            .iter()
            .filter(|l| l.open)
            .map(|l| (&*l.shard, l.bucket.records_per_sec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::request::KinesisKey;
    use bytes::Bytes;

    fn queued(key: &str, seq: i64, now: Instant) -> Queued {
        Queued::new(
            MirrorRecord {
                topic: Arc::from("t"),
                partition: 0,
                offset: seq,
                offset_from_kafka: true,
                key: KinesisKey {
                    partition_key: key.to_owned(),
                    explicit_hash_key: None,
                },
                data: Bytes::from_static(b"x"),
                acked_at: now,
                delivery: None,
                logged: None,
            },
            now,
        )
    }

    fn lanes_with(
        ordering: WriteOrdering,
        records: &[(&str, i64)],
        now: Instant,
    ) -> (Lanes, ShardMap) {
        let map = ShardMap::even(4);
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
                .all(|(lane, _)| !first.iter().any(|(l, _)| l.shard == lane.shard)),
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
        let touched: HashSet<Arc<str>> = request.iter().map(|(l, _)| l.shard.clone()).collect();
        lanes.finished(&request);
        lanes.requeue_front(request, &map, now, |_| Duration::ZERO);
        let again = lanes.fill_request(now + Duration::from_millis(1));
        for lane in &touched {
            let offsets: Vec<i64> = again
                .iter()
                .filter(|(l, _)| l.shard == *lane)
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
        lanes.finished(&request);
        let failed: Request = request
            .into_iter()
            .filter(|(l, _)| l.shard == failed_lane.shard)
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
        let map = ShardMap::even(1);
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

    #[test]
    fn reroute_moves_a_closed_shards_records_ahead_in_order_and_reuses_its_slot() {
        let now = Instant::now();
        let two = ShardMap::even(2);
        let mut lanes = Lanes::new(WriteOrdering::None, 100.0);
        lanes.reroute(&two, now);
        let keys: Vec<String> = (0..200).map(|i| format!("k{}", i % 40)).collect();
        for (offset, key) in keys.iter().enumerate() {
            lanes.push(queued(key, offset as i64, now), &two, now);
        }
        // Split into four: shards 0 and 1 close, four new ones take their ranges.
        let ranges: Vec<(String, String, String)> = ShardMap::even(4)
            .shards()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    format!("shardId-1{i:011}"),
                    s.start.to_string(),
                    s.end.to_string(),
                )
            })
            .collect();
        let renamed = ShardMap::from_ranges(
            ranges
                .iter()
                .map(|(id, start, end)| (id.as_str(), start.as_str(), end.as_str())),
        )
        .unwrap();
        lanes.reroute(&renamed, now);
        assert_eq!(lanes.queued_records(), 200);
        assert_eq!(lanes.lanes.len(), 4, "the two closed slots were reused");
        let mut per_lane: HashMap<Arc<str>, Vec<(String, i64)>> = HashMap::new();
        while lanes.queued_records() > 0 {
            let request = lanes.fill_request(now);
            lanes.finished(&request);
            for (lane, q) in request {
                let expected = renamed.shard_for_hash(q.hash).unwrap();
                assert_eq!(&*lane.shard, expected.id, "routed by the new map");
                per_lane
                    .entry(lane.shard)
                    .or_default()
                    .push((q.record.key.partition_key.clone(), q.record.offset));
            }
        }
        for (lane, records) in per_lane {
            for key in keys.iter().take(40) {
                let offsets: Vec<i64> = records
                    .iter()
                    .filter(|(k, _)| k == key)
                    .map(|(_, o)| *o)
                    .collect();
                assert!(
                    offsets.windows(2).all(|w| w[0] < w[1]),
                    "{lane} {key}: {offsets:?}"
                );
            }
        }
        assert!(lanes
            .rates()
            .all(|(shard, _)| shard.starts_with("shardId-1")));
    }

    /// Item 7: a shard splits while a request of its lane is in flight. The children send
    /// nothing until that request settles (the old lanes sent the key's next record from the
    /// child at once), and its failed entry goes back ahead of the key's later records; a
    /// second split before the request settles passes the wait on to the grandchildren.
    #[test]
    fn children_wait_for_their_parents_request_in_flight_and_its_failures_go_first() {
        let now = Instant::now();
        let one = ShardMap::from_ranges([("shardId-0", "0", &*u128::MAX.to_string())]).unwrap();
        let mut lanes = Lanes::new(WriteOrdering::PerKey, 100.0);
        for offset in 0..3 {
            lanes.push(queued("a", offset, now), &one, now);
        }
        let in_flight = lanes.fill_request(now);
        let offsets = |request: &Request| -> Vec<i64> {
            request.iter().map(|(_, q)| q.record.offset).collect()
        };
        assert_eq!(offsets(&in_flight), [0]);
        let half = (u128::MAX / 2).to_string();
        let after_half = (u128::MAX / 2 + 1).to_string();
        let max = u128::MAX.to_string();
        let split = ShardMap::from_ranges([
            ("shardId-1", "0", half.as_str()),
            ("shardId-2", after_half.as_str(), max.as_str()),
        ])
        .unwrap();
        lanes.reroute(&split, now);
        lanes.push(queued("a", 3, now), &split, now);
        assert!(
            lanes.fill_request(now).is_empty(),
            "the children wait for the parent's request in flight"
        );
        // The child holding "a" splits again while the parent's request is still out.
        let child = split.shard_for_hash(hash_of("a")).unwrap().clone();
        let middle = (child.start + (child.end - child.start) / 2).to_string();
        let after_middle = (child.start + (child.end - child.start) / 2 + 1).to_string();
        let (start, end) = (child.start.to_string(), child.end.to_string());
        let other = split.shards().iter().find(|s| s.id != child.id).unwrap();
        let (other_start, other_end) = (other.start.to_string(), other.end.to_string());
        let resplit = ShardMap::from_ranges([
            ("shardId-3", start.as_str(), middle.as_str()),
            ("shardId-4", after_middle.as_str(), end.as_str()),
            (other.id.as_str(), other_start.as_str(), other_end.as_str()),
        ])
        .unwrap();
        lanes.reroute(&resplit, now);
        assert!(
            lanes.fill_request(now).is_empty(),
            "the grandchildren wait for it too"
        );
        // The parent's entry is throttled: it fails and comes back.
        lanes.finished(&in_flight);
        lanes.requeue_front(in_flight, &resplit, now, |_| Duration::ZERO);
        let mut sent = Vec::new();
        while lanes.queued_records() > 0 {
            let request = lanes.fill_request(now);
            assert_eq!(request.len(), 1, "one record of the key at a time");
            sent.extend(offsets(&request));
            lanes.finished(&request);
        }
        assert_eq!(sent, [0, 1, 2, 3], "the parent's failed entry goes first");
    }

    fn hash_of(key: &str) -> u128 {
        queued(key, 0, Instant::now()).hash
    }
}

#[cfg(test)]
#[path = "reshard_tests.rs"]
mod reshard_tests;
