//! Delivery tracking for `kinesis-primary` routes: whether every sampled record of one
//! produced partition reached Kinesis, so that the connection may answer the producer.
//!
//! The connection opens a [`PartitionDelivery`] before it hands the exchange to the mirror
//! and keeps a [`DeliveryWait`]. The stage, once it has decoded and sampled the partition,
//! seals it with the number of records it owes Kinesis and gives each record a
//! [`DeliveryToken`]. The writer marks a token delivered when PutRecords stores its record,
//! or spooled when the record goes to the spool; every other fate (dead-lettered, dropped,
//! shed, lost with its writer) just drops the token. The outcome is decided when the last
//! handle is gone, so nothing has to remember to report a failure: a record that was not
//! marked delivered was not delivered.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// What became of a partition's sampled records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every one is in Kinesis (or none was sampled).
    Delivered,
    /// Not all are in Kinesis yet, and some wait in the spool, to be delivered later.
    Spooled,
    /// Not all are in Kinesis, and some never will be through this path: dead-lettered,
    /// dropped, or the partition could not be decoded or was shed before it was.
    Failed,
}

#[derive(Default)]
struct State {
    /// `None` until the stage seals the partition; then one flag per sampled record.
    delivered: Option<Vec<bool>>,
    spooled: bool,
}

struct Shared {
    state: Mutex<State>,
    outcome: watch::Sender<Option<Delivery>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let outcome = match &state.delivered {
            Some(flags) if flags.iter().all(|d| *d) => Delivery::Delivered,
            Some(_) if state.spooled => Delivery::Spooled,
            _ => Delivery::Failed,
        };
        self.outcome.send_replace(Some(outcome));
    }
}

/// The stage's handle on one partition's delivery, until it seals it.
pub struct PartitionDelivery {
    shared: Arc<Shared>,
}

/// Resolves with the partition's [`Delivery`]; clones wait on the same outcome.
#[derive(Clone)]
pub struct DeliveryWait {
    outcome: watch::Receiver<Option<Delivery>>,
}

/// One sampled record's part in its partition's delivery.
#[derive(Clone)]
pub struct DeliveryToken {
    shared: Arc<Shared>,
    index: usize,
}

impl std::fmt::Debug for DeliveryToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeliveryToken({})", self.index)
    }
}

impl PartitionDelivery {
    /// A partition to track, and the wait its answer depends on.
    pub fn open() -> (PartitionDelivery, DeliveryWait) {
        let (outcome, rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            outcome,
        });
        (PartitionDelivery { shared }, DeliveryWait { outcome: rx })
    }

    /// Seals the partition with its `records` sampled records and returns one token for each,
    /// in order. Dropping the delivery unsealed (the partition was never decoded) fails it.
    pub fn seal(self, records: usize) -> Vec<DeliveryToken> {
        self.shared
            .state
            .lock()
            .expect("no panic under the lock")
            .delivered = Some(vec![false; records]);
        (0..records)
            .map(|index| DeliveryToken {
                shared: self.shared.clone(),
                index,
            })
            .collect()
    }
}

impl DeliveryToken {
    /// Kinesis stored the record.
    pub fn delivered(&self) {
        let mut state = self.shared.state.lock().expect("no panic under the lock");
        if let Some(flag) = state
            .delivered
            .as_mut()
            .and_then(|flags| flags.get_mut(self.index))
        {
            *flag = true;
        }
    }

    /// The record went to the spool, from which it will be delivered later.
    pub fn spooled(&self) {
        self.shared
            .state
            .lock()
            .expect("no panic under the lock")
            .spooled = true;
    }
}

impl DeliveryWait {
    /// The outcome, once every handle on the partition is gone.
    pub async fn outcome(mut self) -> Delivery {
        if let Ok(outcome) = self.outcome.wait_for(Option::is_some).await {
            return outcome.unwrap_or(Delivery::Failed);
        }
        // The sender is dropped only after it sent: read what it left.
        self.outcome.borrow().unwrap_or(Delivery::Failed)
    }

    /// The outcome if it is decided already.
    pub fn settled(&self) -> Option<Delivery> {
        *self.outcome.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delivered_only_when_every_record_is() {
        let (delivery, wait) = PartitionDelivery::open();
        let tokens = delivery.seal(3);
        tokens[0].delivered();
        tokens[2].delivered();
        assert_eq!(wait.settled(), None, "tokens still held");
        tokens[1].delivered();
        // A clone of a record (and its token) still in flight holds the outcome back.
        let late = tokens[1].clone();
        drop(tokens);
        assert_eq!(wait.settled(), None);
        drop(late);
        assert_eq!(wait.outcome().await, Delivery::Delivered);
    }

    #[tokio::test]
    async fn a_record_dropped_unmarked_fails_the_partition() {
        let (delivery, wait) = PartitionDelivery::open();
        let mut tokens = delivery.seal(2);
        tokens[0].delivered();
        // Dead-lettered or dropped: the writer lets go of it without marking it.
        tokens.pop();
        drop(tokens);
        assert_eq!(wait.outcome().await, Delivery::Failed);
    }

    #[tokio::test]
    async fn a_spooled_record_is_not_delivered() {
        let (delivery, wait) = PartitionDelivery::open();
        let tokens = delivery.seal(2);
        tokens[0].delivered();
        tokens[1].spooled();
        drop(tokens);
        assert_eq!(wait.outcome().await, Delivery::Spooled);
    }

    #[tokio::test]
    async fn unsealed_fails_and_nothing_sampled_is_delivered() {
        let (delivery, wait) = PartitionDelivery::open();
        drop(delivery);
        assert_eq!(
            wait.outcome().await,
            Delivery::Failed,
            "shed or undecodable"
        );
        let (delivery, wait) = PartitionDelivery::open();
        assert!(delivery.seal(0).is_empty());
        assert_eq!(wait.outcome().await, Delivery::Delivered, "none sampled");
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_resolve_when_the_last_token_goes() {
        let (delivery, wait) = PartitionDelivery::open();
        let tokens = delivery.seal(1);
        let waiter = tokio::spawn(wait.clone().outcome());
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        tokens[0].delivered();
        drop(tokens);
        assert_eq!(waiter.await.unwrap(), Delivery::Delivered);
        assert_eq!(
            wait.outcome().await,
            Delivery::Delivered,
            "a late waiter too"
        );
    }
}
