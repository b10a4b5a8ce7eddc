//! The memory budget of the mirror: `[mirror_buffer] max_bytes` bounds the bytes of every
//! record queued in memory across all streams.
//!
//! Writers waiting for room learn of releases through a counter they each watch, not a
//! one-shot wake-up: a release that happens while a writer is busy elsewhere is still seen
//! the next time it looks, instead of waiting for its next tick.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::IntGauge;
use tokio::sync::watch;

pub struct Budget {
    max: u64,
    used: AtomicU64,
    /// Counts releases.
    released: watch::Sender<u64>,
    gauge: IntGauge,
}

impl Budget {
    pub fn new(max: u64, gauge: IntGauge) -> Self {
        Budget {
            max,
            used: AtomicU64::new(0),
            released: watch::Sender::new(0),
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
        self.released.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// A writer's view of the releases.
    pub fn releases(&self) -> BudgetReleases {
        BudgetReleases(self.released.subscribe())
    }
}

pub struct BudgetReleases(watch::Receiver<u64>);

impl BudgetReleases {
    /// Takes every release so far as seen. Call it before trying to reserve: a release that
    /// comes after, even before [`freed`](Self::freed) is awaited, then wakes it.
    pub fn mark_seen(&mut self) {
        self.0.borrow_and_update();
    }

    /// Resolves once a release happened since the last [`mark_seen`](Self::mark_seen).
    pub async fn freed(&mut self) {
        if self.0.changed().await.is_err() {
            // The budget is gone: nothing will ever be released.
            std::future::pending::<()>().await;
        }
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

    /// A writer that failed to reserve and is busy elsewhere when the release comes (not yet
    /// awaiting) must still be woken by it, not by its next 200 ms tick.
    #[tokio::test(start_paused = true)]
    async fn a_release_while_the_writer_is_busy_is_not_lost() {
        let b = Budget::new(100, IntGauge::new("b", "b").unwrap());
        let mut releases = b.releases();
        assert!(b.try_reserve(100));
        releases.mark_seen();
        assert!(!b.try_reserve(1), "the budget is full");
        b.release(100);
        tokio::time::timeout(std::time::Duration::from_millis(1), releases.freed())
            .await
            .expect("the release made while nobody awaited wakes the writer");
        assert!(b.try_reserve(1));
    }
}
