//! Which of a logged exchange's records are done, decided like `kinesis::delivery`: the stage
//! gives each record it hands on a [`RecordMark`], the writer settles it, and the outcome is
//! known once the last handle is gone. A mark dropped unsettled (the record was shed, or its
//! writer stopped) leaves its exchange in the log, to be replayed after a restart.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::SystemTime;

use super::appender::{Command, LogPosition};
use super::entry::RecordId;
use crate::kinesis::settle::Settle;

/// One exchange of the log, while the mirror holds it.
pub(crate) struct ExchangeLog {
    id: u64,
    /// Where the exchange is in the log.
    position: LogPosition,
    commands: Sender<Command>,
    /// Records settled before a restart (by partition index and offset): a replay skips them.
    settled_before: HashSet<(u32, i64)>,
    /// A replayed exchange: counts the records it hands on again, and when it was logged.
    replayed: Option<(Arc<AtomicU64>, SystemTime)>,
    /// Partitions the stage has not finished with, once `staged`.
    partitions_pending: AtomicUsize,
    staged: AtomicBool,
    /// Some record will not be settled in this run (or the whole exchange was shed).
    unsettled: AtomicBool,
}

impl ExchangeLog {
    pub(super) fn new(
        (id, position): (u64, LogPosition),
        commands: Sender<Command>,
        settled_before: HashSet<(u32, i64)>,
        replayed: Option<(Arc<AtomicU64>, SystemTime)>,
    ) -> Arc<ExchangeLog> {
        Arc::new(ExchangeLog {
            id,
            position,
            commands,
            settled_before,
            replayed,
            partitions_pending: AtomicUsize::new(0),
            staged: AtomicBool::new(false),
            unsettled: AtomicBool::new(false),
        })
    }

    pub(super) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn position(&self) -> LogPosition {
        self.position
    }

    /// Whether an earlier run logged it, and this one replays it.
    pub(crate) fn is_replayed(&self) -> bool {
        self.replayed.is_some()
    }

    /// Records of partition `partition_index` settled before a restart.
    pub(crate) fn settled_before_in(&self, partition_index: u32) -> u64 {
        let settled = self.settled_before.iter();
        settled
            .filter(|(index, _)| *index == partition_index)
            .count() as u64
    }

    /// The stage expanded the exchange into `partitions` partitions to finish.
    pub(crate) fn staged(&self, partitions: usize) {
        self.partitions_pending.store(partitions, Ordering::Release);
        self.staged.store(true, Ordering::Release);
    }

    /// The stage finished one partition (handed its records on, or skipped it for good).
    pub(crate) fn partition_done(&self) {
        self.partitions_pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// The mirror could not take the exchange now: it stays in the log.
    pub(crate) fn shed(&self) {
        self.unsettled.store(true, Ordering::Release);
    }

    /// `when_full = "drop"` dropped the whole exchange: done with, as the writers settle the
    /// records they drop, so that a restart does not bring back what the operator let go.
    pub(crate) fn dropped(&self) {
        self.staged(0);
    }

    /// The mark of the record at `offset` of partition `partition_index`, or `None` when it
    /// was settled before a restart and must not be sent again.
    pub(crate) fn mark(
        self: &Arc<Self>,
        partition_index: u32,
        offset: i64,
    ) -> Option<Arc<dyn Settle>> {
        if self.settled_before.contains(&(partition_index, offset)) {
            return None;
        }
        if let Some((replayed, _)) = &self.replayed {
            replayed.fetch_add(1, Ordering::Relaxed);
        }
        Some(Arc::new(RecordMark {
            exchange: self.clone(),
            partition_index,
            offset,
            settled: AtomicBool::new(false),
            stored_asked: AtomicBool::new(false),
        }))
    }
}

impl Drop for ExchangeLog {
    fn drop(&mut self) {
        let done = *self.staged.get_mut()
            && *self.partitions_pending.get_mut() == 0
            && !*self.unsettled.get_mut();
        if done {
            // A closed log means the process is ending: the exchange is replayed, never lost.
            let _ = self.commands.send(Command::Complete(self.id));
        }
    }
}

/// One record's part in its exchange's log entry.
struct RecordMark {
    exchange: Arc<ExchangeLog>,
    partition_index: u32,
    offset: i64,
    settled: AtomicBool,
    /// Whether the writer asked already if it may be in Kinesis.
    stored_asked: AtomicBool,
}

impl std::fmt::Debug for RecordMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RecordMark({}:{}:{})",
            self.exchange.id, self.partition_index, self.offset
        )
    }
}

impl Settle for RecordMark {
    fn settled(&self) {
        if !self.settled.swap(true, Ordering::AcqRel) {
            let _ = self.exchange.commands.send(Command::Settled(RecordId {
                exchange: self.exchange.id,
                partition_index: self.partition_index,
                offset: self.offset,
            }));
        }
    }

    fn maybe_stored_since(&self) -> Option<SystemTime> {
        let (_, logged_at) = self.exchange.replayed.as_ref()?;
        (!self.stored_asked.swap(true, Ordering::AcqRel)).then_some(*logged_at)
    }
}

impl Drop for RecordMark {
    fn drop(&mut self) {
        if !*self.settled.get_mut() {
            self.exchange.unsettled.store(true, Ordering::Release);
        }
    }
}
