//! The bytes of requests and responses all connections hold together
//! (`listener.max_buffered_bytes`). A connection reserves a request's bytes as soon as its size
//! prefix is read, before the body is, and waits while the budget is spent: the proxy stops
//! reading instead of growing. Responses are charged without waiting, since a response exists
//! only for a request already admitted, and making it wait could deadlock against the request
//! that holds the bytes it needs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus::IntGauge;
use tokio::sync::Notify;

pub struct BufferBudget {
    limit: usize,
    used: AtomicUsize,
    /// Reservations waiting for bytes: a release wakes them only when there are some, so the
    /// common case (nobody waits) never touches the notifier's lock.
    waiting: AtomicUsize,
    released: Notify,
    gauge: IntGauge,
}

/// Bytes held; returned to the budget on drop.
pub struct Held {
    budget: Arc<BufferBudget>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes > 0 {
            // SeqCst pairs with `reserve`: either this release sees the waiter's count, or the
            // waiter's retry sees the bytes this release returned.
            self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
            self.budget.gauge.sub(self.bytes as i64);
            if self.budget.waiting.load(Ordering::SeqCst) > 0 {
                self.budget.released.notify_waiters();
            }
        }
    }
}

impl BufferBudget {
    pub fn new(limit: usize, gauge: IntGauge) -> Arc<BufferBudget> {
        Arc::new(BufferBudget {
            limit,
            used: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            released: Notify::new(),
            gauge,
        })
    }

    /// Waits until `bytes` fit, then holds them. A request alone always fits, so that one
    /// larger than what is free cannot wait forever. Cancel-safe.
    pub async fn reserve(self: &Arc<Self>, bytes: usize) -> Held {
        if let Some(held) = self.try_reserve(bytes) {
            return held;
        }
        let _waiting = Waiting::register(&self.waiting);
        loop {
            // Registered before the check, so a release between the check and the wait wakes it.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(held) = self.try_reserve(bytes) {
                return held;
            }
            released.await;
        }
    }

    fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Held> {
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            if used != 0 && used.saturating_add(bytes) > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(self.held(bytes)),
                Err(now) => used = now,
            }
        }
    }

    /// Holds `bytes` without waiting, over the limit if need be.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Held {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        self.held(bytes)
    }

    fn held(self: &Arc<Self>, bytes: usize) -> Held {
        self.gauge.add(bytes as i64);
        Held {
            budget: self.clone(),
            bytes,
        }
    }
}

/// Counts one waiting reservation for as long as it lives (cancel-safe).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn register(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn budget(limit: usize) -> Arc<BufferBudget> {
        BufferBudget::new(limit, IntGauge::new("test_buffered", "test").unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn reading_waits_until_bytes_are_released() {
        let budget = budget(100);
        let first = budget.reserve(80).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(30).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "80 + 30 exceeds the limit of 100");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by the release")
            .unwrap();
        assert_eq!(budget.used.load(Ordering::Acquire), 30);
        drop(second);
        assert_eq!(budget.used.load(Ordering::Acquire), 0);
        assert_eq!(budget.gauge.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn one_request_larger_than_the_limit_fits_alone_and_charges_never_wait() {
        let budget = budget(100);
        let big = budget.reserve(500).await;
        let response = budget.charge(50);
        assert_eq!(budget.gauge.get(), 550);
        drop(big);
        drop(response);
        assert_eq!(budget.used.load(Ordering::Acquire), 0);
    }

    /// A lost wake-up would leave a reservation waiting with bytes free: many contending
    /// tasks on several threads must all finish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn contending_reservations_are_never_left_waiting() {
        let budget = budget(100);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let budget = budget.clone();
                tokio::spawn(async move {
                    for _ in 0..2_000 {
                        let held = budget.reserve(60).await;
                        tokio::task::yield_now().await;
                        drop(held);
                    }
                })
            })
            .collect();
        tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(tasks))
            .await
            .expect("every reservation was woken");
        assert_eq!(budget.used.load(Ordering::Acquire), 0);
        assert_eq!(budget.waiting.load(Ordering::Acquire), 0);
    }
}
