//! Synthetic offsets and idempotent-producer state of kinesis-only partitions, durable across
//! restarts.
//!
//! Kafka never sees a kinesis-only partition's records, so the proxy gives out their offsets
//! itself: one counter per partition, increasing across restarts, raised at a live switch to
//! Kafka's log-end offset so that no offset repeats one Kafka gave out. It also keeps, per
//! idempotent producer and partition, the epoch and last five batches a broker keeps, so that a
//! retried batch is answered with its original offsets instead of becoming a duplicate, also
//! after a restart. See [`super::ledger`] for the rules and [`super::journal`] for the files.
//!
//! # Durability
//!
//! [`SyntheticLog::assign`] and [`SyntheticLog::delivered`] append their journal entry to the
//! file at once (so a process crash loses nothing written), and [`SyntheticLog::sync`] makes
//! everything appended so far durable with one fdatasync shared by all concurrent callers. The
//! caller answers the producer only after `sync`, so what a producer saw acknowledged survives
//! a power loss too. A batch assigned but not marked delivered before a restart comes back as
//! [`Assignment::Retry`] with `delivered: false`, and is sent again under the same offsets.
//!
//! # Memory
//!
//! Partition counters are kept forever (a few bytes each). Producer states are bounded: past
//! [`MAX_PRODUCER_STATES`] (producer, partition) pairs, the one idle longest (by its last new
//! batch) is forgotten, as Kafka expires producer state after `producer.id.expiration.ms`.
//! A forgotten producer's next batch is adopted as on first sight; only a retry of a batch it
//! sent before being forgotten could then be taken as new.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::journal::{self, encode_frame, Event, Journal, ProducerBatch, LOCK_FILE};
use super::ledger::{last_sequence, Ledger};

/// (producer, partition) states remembered before the one idle longest is forgotten; each
/// costs a few hundred bytes, so this bounds them to some tens of MiB.
pub(crate) const MAX_PRODUCER_STATES: usize = 65_536;

/// Journal bytes past which the next `sync` compacts the state into a snapshot, unless the
/// last snapshot was larger (then twice its size), so compaction costs stay linear.
const COMPACT_JOURNAL_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SyntheticLogError {
    #[error("kinesis-only state: cannot {operation} {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("kinesis-only state: {} is locked by another process", path.display())]
    Locked { path: PathBuf },
    #[error("kinesis-only state: {} is damaged at byte {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A write could not be undone or an fsync failed: what is on disk is unknown, so nothing
    /// more is acknowledged until a restart recovers from it.
    #[error("kinesis-only state: an earlier write or fsync of {} failed; restart to recover from what is on disk", path.display())]
    Failed { path: PathBuf },
    #[error("kinesis-only state: the fsync task did not finish: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The identity of a produced batch, as its record batch header gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchIdentity {
    /// -1: not idempotent.
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Assignment {
    /// New batch: its records take offsets base_offset .. base_offset + record_count.
    New { base_offset: i64 },
    /// A retry of a batch already assigned (one of the producer's last five on this partition):
    /// answer with its offsets. `delivered`: known to be entirely in Kinesis; if not, the caller
    /// re-sends it under the same offsets (the writer skips records it already stored, by offset).
    Retry { base_offset: i64, delivered: bool },
    /// Refused as a Kafka broker would refuse it.
    Refused { error_code: i16, message: String },
}

/// Synthetic offsets and idempotent-producer state of kinesis-only partitions, persisted under
/// `dir` (the proxy passes `spool.dir/kinesis-only`). Shared as Arc; methods take &self
/// (internal locking).
pub(crate) struct SyntheticLog {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Journal frames (counted by `Inner::appended`) known durable.
    synced: AtomicU64,
    /// Held by the one caller of `sync` that fsyncs for all.
    sync_leader: tokio::sync::Mutex<()>,
    #[cfg(test)]
    fsyncs: AtomicU64,
    _lock: File,
}

struct Inner {
    ledger: Ledger,
    journal: Journal,
    /// Frames appended by this process, across journal generations.
    appended: u64,
    /// Journal length past which the next `sync` compacts.
    compact_at: u64,
    /// A journal was created since the directory was last fsynced.
    dir_dirty: bool,
    /// Set when the journal's content or durability became unknown.
    failed: bool,
    frame: Vec<u8>,
}

impl SyntheticLog {
    pub(crate) fn open(dir: &Path) -> Result<SyntheticLog, SyntheticLogError> {
        Self::open_bounded(dir, MAX_PRODUCER_STATES)
    }

    fn open_bounded(dir: &Path, max_producers: usize) -> Result<SyntheticLog, SyntheticLogError> {
        let lock = journal::lock_dir(dir, LOCK_FILE)?;
        let mut ledger = Ledger::new(max_producers);
        let journal = journal::recover(dir, |event| ledger.apply(&event))?;
        let inner = Inner {
            ledger,
            compact_at: journal.len() + COMPACT_JOURNAL_BYTES,
            journal,
            appended: 0,
            dir_dirty: false,
            failed: false,
            frame: Vec::with_capacity(128),
        };
        Ok(SyntheticLog {
            shared: Arc::new(Shared {
                dir: dir.to_owned(),
                inner: Mutex::new(inner),
                synced: AtomicU64::new(0),
                sync_leader: tokio::sync::Mutex::new(()),
                #[cfg(test)]
                fsyncs: AtomicU64::new(0),
                _lock: lock,
            }),
        })
    }

    /// Decides one produced batch. `floor`: Kafka's log-end offset of the partition when the
    /// route has just switched from a Kafka mode; the partition's counter is raised to at least
    /// it, so offsets never repeat ones Kafka gave out.
    pub(crate) fn assign(
        &self,
        topic: &str,
        partition: i32,
        batch: &BatchIdentity,
        floor: Option<i64>,
    ) -> Result<Assignment, SyntheticLogError> {
        let mut inner = self.shared.lock();
        let assignment = inner.ledger.decide(topic, partition, batch, floor);
        let event = match assignment {
            Assignment::New { base_offset } => Some(Event::Assigned {
                topic,
                partition,
                base_offset,
                record_count: batch.record_count,
                producer: (batch.producer_id >= 0).then(|| ProducerBatch {
                    producer_id: batch.producer_id,
                    epoch: batch.producer_epoch,
                    first_seq: batch.base_sequence,
                    last_seq: last_sequence(batch.base_sequence, batch.record_count),
                }),
            }),
            // The floor holds even when this batch takes no offsets.
            _ => floor
                .filter(|&f| f > inner.ledger.next_offset(topic, partition))
                .map(|next_offset| Event::Raised {
                    topic,
                    partition,
                    next_offset,
                }),
        };
        if let Some(event) = event {
            inner.record(&event)?;
        } else if inner.failed {
            return Err(inner.failure());
        }
        Ok(assignment)
    }

    /// The batch of topic/partition at `base_offset` is now entirely in Kinesis.
    pub(crate) fn delivered(&self, topic: &str, partition: i32, base_offset: i64) {
        let mut inner = self.shared.lock();
        // Only remembered idempotent batches can come back as retries; others need no mark.
        if !inner.ledger.awaits_delivery(topic, partition, base_offset) {
            return;
        }
        let event = Event::Delivered {
            topic,
            partition,
            base_offset,
        };
        if let Err(e) = inner.record(&event) {
            // Harmless if lost: after a restart the batch is re-sent under the same offsets
            // and the writer skips the records Kinesis already has.
            tracing::warn!(topic, partition, base_offset, error = %e,
                "could not journal a kinesis-only delivery");
        }
    }

    /// Makes every assignment and settlement made so far durable (group commit: concurrent
    /// callers share one fsync, run off the async workers). The caller answers the producer
    /// only after this.
    pub(crate) async fn sync(&self) -> Result<(), SyntheticLogError> {
        let shared = &self.shared;
        let target = {
            let inner = shared.lock();
            if inner.failed {
                return Err(inner.failure());
            }
            inner.appended
        };
        if shared.synced.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let _leader = shared.sync_leader.lock().await;
        // The leader before us may have covered our frames.
        if shared.synced.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let shared = Arc::clone(shared);
        tokio::task::spawn_blocking(move || shared.sync_blocking()).await?
    }

    /// Producer states remembered (bounded by [`MAX_PRODUCER_STATES`]).
    #[cfg(test)]
    fn producer_states(&self) -> usize {
        self.shared.lock().ledger.producers()
    }

    #[cfg(test)]
    fn fsyncs(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state changes only after the journal write it describes succeeded, so a panic
        // elsewhere leaves it consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Compacts if the journal has grown past its bound, then fsyncs everything appended.
    fn sync_blocking(&self) -> Result<(), SyntheticLogError> {
        let compacted = self.compact_if_due();
        let (file, path, upto, dir_dirty) = {
            let mut inner = self.lock();
            let dir_dirty = std::mem::take(&mut inner.dir_dirty);
            (
                inner.journal.file(),
                inner.journal.path().to_owned(),
                inner.appended,
                dir_dirty,
            )
        };
        let synced = compacted.and_then(|()| {
            if dir_dirty {
                journal::sync_dir(&self.dir)?;
            }
            file.sync_data().map_err(journal::io_err("fsync", &path))
        });
        #[cfg(test)]
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        match synced {
            Ok(()) => {
                self.synced.fetch_max(upto, Ordering::AcqRel);
                Ok(())
            }
            Err(e) => {
                // After a failed fsync the kernel may have dropped the dirty pages: a retry
                // could succeed without them ever reaching the disk.
                self.lock().failed = true;
                Err(e)
            }
        }
    }

    /// Writes the state as a snapshot when the journal is past its bound. The state is
    /// serialized and a new journal started under the lock; the slow writing and fsyncing
    /// happen outside it, with recovery replaying both journals until the snapshot is in place.
    fn compact_if_due(&self) -> Result<(), SyntheticLogError> {
        let (snapshot, generation) = {
            let mut inner = self.lock();
            if inner.journal.len() < inner.compact_at {
                return Ok(());
            }
            let generation = inner.journal.generation() + 1;
            let next = Journal::create(&self.dir, generation)?;
            inner.journal = next;
            inner.dir_dirty = true;
            let snapshot = journal::encode_snapshot(generation, |out| {
                inner.ledger.write_events(|event| encode_frame(event, out))
            });
            inner.compact_at = COMPACT_JOURNAL_BYTES.max(2 * snapshot.len() as u64);
            (snapshot, generation)
        };
        journal::install_snapshot(&self.dir, &snapshot, generation)
    }
}

impl Inner {
    /// Journals `event` and applies it.
    fn record(&mut self, event: &Event<'_>) -> Result<(), SyntheticLogError> {
        if self.failed {
            return Err(self.failure());
        }
        self.frame.clear();
        encode_frame(event, &mut self.frame);
        if let Err((e, torn)) = self.journal.append(&self.frame) {
            self.failed |= torn;
            return Err(e);
        }
        self.appended += 1;
        self.ledger.apply(event);
        Ok(())
    }

    fn failure(&self) -> SyntheticLogError {
        SyntheticLogError::Failed {
            path: self.journal.path().to_owned(),
        }
    }
}
