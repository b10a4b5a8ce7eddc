//! The memory budget of the mirror: `[mirror_buffer] max_bytes` bounds the bytes of every
//! record queued in memory across all streams.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::IntGauge;
use tokio::sync::Notify;

pub struct Budget {
    max: u64,
    used: AtomicU64,
    freed: Notify,
    gauge: IntGauge,
}

impl Budget {
    pub fn new(max: u64, gauge: IntGauge) -> Self {
        Budget {
            max,
            used: AtomicU64::new(0),
            freed: Notify::new(),
            gauge,
        }
    }

    /// Reserves `bytes` if they fit under the budget.
    pub fn try_reserve(&self, bytes: u64) -> bool {
        let fits = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + bytes <= self.max).then_some(used + bytes)
            })
            .is_ok();
        if fits {
            self.gauge.add(bytes as i64);
        }
        fits
    }

    /// Reserves `bytes` even over the budget: for records read back from the spool, which are
    /// already durable and bounded by the replay window.
    pub fn force_reserve(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        self.gauge.add(bytes as i64);
    }

    pub fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.gauge.sub(bytes as i64);
        self.freed.notify_waiters();
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// Resolves after the next release.
    pub async fn freed(&self) {
        self.freed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_under_the_budget() {
        let b = Budget::new(100, IntGauge::new("b", "b").unwrap());
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(50));
        assert!(b.try_reserve(40));
        b.release(60);
        assert_eq!(b.used(), 40);
        b.force_reserve(200);
        assert_eq!(b.used(), 240);
        assert_eq!(b.gauge.get(), 240);
    }
}
