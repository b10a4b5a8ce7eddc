//! Per-shard rate limiting: a token bucket for records and bytes (Kinesis' 1,000 records/s and
//! 1 MiB/s per shard, scaled by `shard_rate_factor`), whose rate backs off multiplicatively on
//! throttling and recovers additively (AIMD), so the proxy converges on what the shard takes.

use std::time::{Duration, Instant};

pub const SHARD_RECORDS_PER_SEC: f64 = 1000.0;
pub const SHARD_BYTES_PER_SEC: f64 = 1024.0 * 1024.0;

/// Throttling halves the rate...
const DECREASE: f64 = 0.5;
/// ...never below this share of the ceiling...
const FLOOR: f64 = 0.05;
/// ...and each second without throttling gives back this share of the ceiling.
const RECOVERY_PER_SEC: f64 = 0.1;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Ceiling rates (the shard's limits times the factor).
    max_records: f64,
    max_bytes: f64,
    /// Current share of the ceiling, in FLOOR..=1.
    share: f64,
    records: f64,
    bytes: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(factor: f64, now: Instant) -> Self {
        let (max_records, max_bytes) =
            (SHARD_RECORDS_PER_SEC * factor, SHARD_BYTES_PER_SEC * factor);
        TokenBucket {
            max_records,
            max_bytes,
            share: 1.0,
            records: max_records,
            bytes: max_bytes,
            last: now,
        }
    }

    /// Current rate in records per second.
    pub fn records_per_sec(&self) -> f64 {
        self.max_records * self.share
    }

    /// What a full bucket holds: one second's worth at the current rate.
    fn records_cap(&self) -> f64 {
        self.max_records * self.share
    }

    fn bytes_cap(&self) -> f64 {
        self.max_bytes * self.share
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.share = (self.share + RECOVERY_PER_SEC * elapsed).min(1.0);
        // At most one second's worth: a quiet shard cannot bank a burst.
        self.records = (self.records + self.records_cap() * elapsed).min(self.records_cap());
        self.bytes = (self.bytes + self.bytes_cap() * elapsed).min(self.bytes_cap());
    }

    /// Takes tokens for one record of `size` bytes, if the bucket has them. A record larger
    /// than a whole bucket goes through when the bucket is full, leaving it in debt, so that
    /// it cannot starve: a record of up to 10 MiB against a 1 MiB/s bucket, or any record
    /// against a bucket of less than one record (a small `shard_rate_factor`, throttled).
    pub fn try_take(&mut self, size: usize, now: Instant) -> bool {
        self.refill(now);
        let size = size as f64;
        let records_ok = self.records >= 1.0 || self.records >= self.records_cap();
        let bytes_ok = self.bytes >= size || self.bytes >= self.bytes_cap();
        if records_ok && bytes_ok {
            self.records -= 1.0;
            self.bytes -= size;
            true
        } else {
            false
        }
    }

    /// The shard throttled us: back off multiplicatively and drop what is banked.
    pub fn throttled(&mut self, now: Instant) {
        self.refill(now);
        self.share = (self.share * DECREASE).max(FLOOR);
        self.records = self.records.min(0.0);
        self.bytes = self.bytes.min(0.0);
    }

    /// How long until a record of `size` bytes may go (at the current rate, which only grows
    /// meanwhile): until the bucket holds one record and `size` bytes, or is full.
    pub fn wait_hint(&self, size: usize) -> Duration {
        let wait = |level: f64, needed: f64, cap: f64| {
            (needed.min(cap) - level).max(0.0) / cap.max(f64::MIN_POSITIVE)
        };
        let records = wait(self.records, 1.0, self.records_cap());
        let bytes = wait(self.bytes, size as f64, self.bytes_cap());
        Duration::from_secs_f64(records.max(bytes).max(0.001))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_allows_the_shard_limit_and_no_more() {
        let start = Instant::now();
        let mut b = TokenBucket::new(1.0, start);
        let taken = (0..5000).filter(|_| b.try_take(100, start)).count();
        assert_eq!(taken, 1000, "one second's worth of records");
        let later = start + Duration::from_millis(500);
        let more = (0..5000).filter(|_| b.try_take(100, later)).count();
        assert!((495..=505).contains(&more), "{more}");
    }

    #[test]
    fn bytes_are_limited_too() {
        let start = Instant::now();
        let mut b = TokenBucket::new(1.0, start);
        let taken = (0..100).filter(|_| b.try_take(100 * 1024, start)).count();
        assert_eq!(taken, 10, "1 MiB/s of 100 KiB records");
        let mut fresh = TokenBucket::new(1.0, start);
        assert!(
            fresh.try_take(2 * 1024 * 1024, start),
            "an oversized record passes a full bucket"
        );
    }

    /// Item 14: with a tiny `shard_rate_factor` a bucket holds less than one record; it must
    /// still let one through when full, or its lane stalls for good.
    #[test]
    fn a_bucket_of_less_than_one_record_still_admits_one() {
        let start = Instant::now();
        let mut b = TokenBucket::new(0.0005, start);
        assert!(b.records_per_sec() < 1.0, "{}", b.records_per_sec());
        let admitted = (1..=60)
            .map(|s| start + Duration::from_secs(s))
            .find(|&t| b.try_take(100, t));
        assert!(admitted.is_some(), "the lane stalled");
    }

    /// Item 14: a record of up to 10 MiB against a 1 MiB/s shard: admitted when the bucket is
    /// full, and the debt it leaves holds back the next record for as long as it takes to
    /// repay, which the wait hint says (instead of a millisecond, again and again).
    #[test]
    fn a_record_larger_than_a_seconds_budget_goes_and_leaves_a_debt() {
        let start = Instant::now();
        let mut b = TokenBucket::new(1.0, start);
        let big = 10 * 1024 * 1024;
        assert!(b.try_take(big, start), "a full bucket admits it");
        assert!(!b.try_take(100, start + Duration::from_secs(1)));
        let hint = b.wait_hint(100);
        assert!(
            hint >= Duration::from_secs(8) && hint <= Duration::from_secs(9),
            "9 MiB of debt at 1 MiB/s: {hint:?}"
        );
        assert!(b.try_take(100, start + Duration::from_secs(10)));
    }

    #[test]
    fn throttling_halves_and_quiet_recovers_additively() {
        let start = Instant::now();
        let mut b = TokenBucket::new(2.0, start);
        assert_eq!(b.records_per_sec(), 2000.0);
        b.throttled(start);
        assert_eq!(b.records_per_sec(), 1000.0);
        b.throttled(start);
        assert_eq!(b.records_per_sec(), 500.0);
        for _ in 0..20 {
            b.throttled(start);
        }
        assert_eq!(b.records_per_sec(), 2000.0 * FLOOR);
        b.try_take(1, start + Duration::from_secs(2));
        assert!(
            (b.records_per_sec() - 2000.0 * (FLOOR + 0.2)).abs() < 1.0,
            "{}",
            b.records_per_sec()
        );
        b.try_take(1, start + Duration::from_secs(60));
        assert_eq!(b.records_per_sec(), 2000.0);
    }
}
