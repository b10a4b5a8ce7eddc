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

use super::journal::{self, encode_frame, Change, Event, Journal, LOCK_FILE};
use super::ledger::Ledger;

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

/// What bounds memory and the journal (tests shrink them).
struct Bounds {
    producer_states: usize,
    /// Journal bytes past which the next `sync` compacts (see [`COMPACT_JOURNAL_BYTES`]).
    journal_bytes: u64,
}

struct Inner {
    ledger: Ledger,
    journal_bytes: u64,
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
        Self::open_with(
            dir,
            Bounds {
                producer_states: MAX_PRODUCER_STATES,
                journal_bytes: COMPACT_JOURNAL_BYTES,
            },
        )
    }

    fn open_with(dir: &Path, bounds: Bounds) -> Result<SyntheticLog, SyntheticLogError> {
        let lock = journal::lock_dir(dir, LOCK_FILE)?;
        let mut ledger = Ledger::new(bounds.producer_states);
        let journal = journal::recover(dir, |event| ledger.apply(&event))?;
        let inner = Inner {
            ledger,
            compact_at: journal.len() + bounds.journal_bytes,
            journal_bytes: bounds.journal_bytes,
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
        let (assignment, event) = inner.ledger.decide(topic, partition, batch, floor);
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
        let event = Event {
            topic,
            partition,
            change: Change::Delivered { base_offset },
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
        if let Some(failure) = shared.failure() {
            return Err(failure);
        }
        let target = shared.lock().appended;
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

    fn failure(&self) -> Option<SyntheticLogError> {
        let inner = self.lock();
        inner.failed.then(|| inner.failure())
    }

    /// Compacts if the journal has grown past its bound, then fsyncs everything appended.
    fn sync_blocking(&self) -> Result<(), SyntheticLogError> {
        if let Some(failure) = self.failure() {
            // Retrying a failed fsync could report success for pages the kernel dropped.
            return Err(failure);
        }
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
            inner.compact_at = inner.journal_bytes.max(2 * snapshot.len() as u64);
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

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::mirror::kinesis_only::ledger::tests::{new, plain, retry, T};

    /// An idempotent batch of epoch 0.
    fn idempotent(producer_id: i64, base_sequence: i32, record_count: i32) -> BatchIdentity {
        super::super::ledger::tests::idempotent(producer_id, 0, base_sequence, record_count)
    }

    fn assign(log: &SyntheticLog, batch: BatchIdentity) -> Assignment {
        log.assign(T, 0, &batch, None).expect("assign")
    }

    /// A log that compacts once its journal passes `journal_bytes`.
    fn compacting(dir: &Path, journal_bytes: u64) -> SyntheticLog {
        SyntheticLog::open_with(
            dir,
            Bounds {
                producer_states: MAX_PRODUCER_STATES,
                journal_bytes,
            },
        )
        .expect("open")
    }

    fn journal_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("journal-"))
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn offsets_retries_and_delivery_marks_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SyntheticLog::open(dir.path()).unwrap();
            assert_eq!(assign(&log, plain(3)), new(0));
            assert_eq!(assign(&log, idempotent(7, 0, 2)), new(3));
            assert_eq!(assign(&log, idempotent(7, 2, 2)), new(5));
            log.delivered(T, 0, 3);
            log.sync().await.unwrap();
        }
        let log = SyntheticLog::open(dir.path()).unwrap();
        assert_eq!(assign(&log, idempotent(7, 0, 2)), retry(3, true));
        assert_eq!(assign(&log, idempotent(7, 2, 2)), retry(5, false));
        assert_eq!(assign(&log, plain(1)), new(7));
        assert_eq!(assign(&log, idempotent(7, 4, 1)), new(8));
    }

    #[tokio::test]
    async fn what_was_written_survives_a_process_crash_before_sync() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = SyntheticLog::open(dir.path()).unwrap();
            assert_eq!(assign(&log, idempotent(7, 0, 2)), new(0));
            assert_eq!(
                log.assign(T, 0, &plain(1), Some(40)).unwrap(),
                new(40),
                "the floor from Kafka"
            );
            assert_eq!(
                log.assign(T, 1, &idempotent(7, 0, 2), Some(90)).unwrap(),
                new(90)
            );
            // A retry under a higher floor takes no offsets but keeps the floor.
            assert_eq!(
                log.assign(T, 1, &idempotent(7, 0, 2), Some(100)).unwrap(),
                retry(90, false)
            );
        }
        let log = SyntheticLog::open(dir.path()).unwrap();
        assert_eq!(assign(&log, idempotent(7, 0, 2)), retry(0, false));
        assert_eq!(assign(&log, plain(1)), new(41));
        assert_eq!(log.assign(T, 1, &plain(1), None).unwrap(), new(100));
    }

    /// Journals two batches of one record in `dir`; returns the journal's path.
    async fn journal_two_batches(dir: &Path) -> PathBuf {
        let log = SyntheticLog::open(dir).unwrap();
        assert_eq!(assign(&log, plain(1)), new(0));
        assert_eq!(assign(&log, plain(1)), new(1));
        log.sync().await.unwrap();
        dir.join(&journal_files(dir)[0])
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_the_journal_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_two_batches(dir.path()).await;
        let intact = fs::metadata(&path).unwrap().len();
        // A crash in the middle of an append leaves half a frame.
        let mut frame = Vec::new();
        encode_frame(
            &Event {
                topic: T,
                partition: 0,
                change: Change::Raised { next_offset: 1_000 },
            },
            &mut frame,
        );
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&frame[..frame.len() / 2]);
        fs::write(&path, &bytes).unwrap();
        {
            let log = SyntheticLog::open(dir.path()).unwrap();
            assert_eq!(fs::metadata(&path).unwrap().len(), intact);
            assert_eq!(assign(&log, plain(1)), new(2));
            log.sync().await.unwrap();
        }
        // Had the half frame stayed, this reopen would have cut the assignment after it.
        let log = SyntheticLog::open(dir.path()).unwrap();
        assert_eq!(assign(&log, plain(1)), new(3));
    }

    #[tokio::test]
    async fn a_damaged_last_frame_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_two_batches(dir.path()).await;
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let log = SyntheticLog::open(dir.path()).unwrap();
        assert_eq!(assign(&log, plain(1)), new(1));
    }

    /// Assigns, through `log`, batch `i` of a run: ten producers taking turns, one record each,
    /// marking every seventh delivered.
    fn assign_run(log: &SyntheticLog, run: std::ops::Range<i32>) {
        for i in run {
            let offset = i64::from(i);
            assert_eq!(
                assign(log, idempotent(i64::from(i % 10), i / 10, 1)),
                new(offset)
            );
            if i % 7 == 0 {
                log.delivered(T, 0, offset);
            }
        }
    }

    /// What a log that went through `assign_run(0..n)` answers, given the retries of (up to)
    /// each producer's last five batches and a new batch.
    fn probe(log: &SyntheticLog, n: i32) -> Vec<Assignment> {
        let mut answers: Vec<Assignment> = ((n - 50).max(0)..n)
            .map(|i| assign(log, idempotent(i64::from(i % 10), i / 10, 1)))
            .collect();
        answers.push(assign(log, plain(1)));
        answers
    }

    fn expected_probe(n: i32) -> Vec<Assignment> {
        let mut answers: Vec<Assignment> = ((n - 50).max(0)..n)
            .map(|i| retry(i64::from(i), i % 7 == 0))
            .collect();
        answers.push(new(i64::from(n)));
        answers
    }

    #[tokio::test]
    async fn compaction_keeps_the_state_and_drops_old_journals() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = compacting(dir.path(), 1024);
            for chunk in 0..20 {
                assign_run(&log, chunk * 10..chunk * 10 + 10);
                log.sync().await.unwrap();
            }
            let journals = journal_files(dir.path());
            assert_eq!(journals.len(), 1, "{journals:?}");
            assert_ne!(
                journals[0], "journal-00000000000000000000",
                "never compacted"
            );
            assert!(dir.path().join("snapshot").exists());
        }
        let log = compacting(dir.path(), 1024);
        assert_eq!(probe(&log, 200), expected_probe(200));
    }

    #[tokio::test]
    async fn a_crash_at_any_point_of_a_compaction_loses_nothing() {
        let source = tempfile::tempdir().unwrap();
        let log = compacting(source.path(), 1024);
        let first = source.path().join("journal-00000000000000000000");
        let mut assigned = 0;
        let before_compaction = loop {
            assign_run(&log, assigned..assigned + 10);
            assigned += 10;
            let journal = fs::read(&first).unwrap();
            log.sync().await.unwrap();
            if !first.exists() {
                break journal;
            }
        };
        // A few more into the journal that follows the snapshot.
        assign_run(&log, assigned..assigned + 10);
        assigned += 10;
        log.sync().await.unwrap();
        let second = fs::read(source.path().join("journal-00000000000000000001")).unwrap();
        let snapshot = fs::read(source.path().join("snapshot")).unwrap();
        drop(log);

        // Crashed after starting the new journal, before the snapshot was in place; then
        // after the snapshot was in place, before the old journal was deleted.
        for with_snapshot in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            fs::write(
                dir.path().join("journal-00000000000000000000"),
                &before_compaction,
            )
            .unwrap();
            fs::write(dir.path().join("journal-00000000000000000001"), &second).unwrap();
            if with_snapshot {
                fs::write(dir.path().join("snapshot"), &snapshot).unwrap();
            }
            let log = compacting(dir.path(), 1024);
            assert_eq!(
                probe(&log, assigned),
                expected_probe(assigned),
                "snapshot: {with_snapshot}"
            );
        }
    }

    #[tokio::test]
    async fn a_damaged_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = compacting(dir.path(), 64);
            assign_run(&log, 0..10);
            log.sync().await.unwrap();
        }
        let path = dir.path().join("snapshot");
        let mut bytes = fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 30);
        fs::write(&path, &bytes).unwrap();
        match SyntheticLog::open(dir.path()) {
            Err(SyntheticLogError::Corrupt { path: p, .. }) => assert_eq!(p, path),
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("expected Corrupt, opened"),
        }
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _log = SyntheticLog::open(dir.path()).unwrap();
        match SyntheticLog::open(dir.path()) {
            Err(SyntheticLogError::Locked { path }) => assert!(path.ends_with(LOCK_FILE)),
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("expected Locked, opened"),
        }
    }

    #[tokio::test]
    async fn concurrent_syncs_share_one_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(SyntheticLog::open(dir.path()).unwrap());
        for i in 0..50 {
            assert_eq!(assign(&log, plain(1)), new(i));
        }
        let syncs: Vec<_> = (0..50)
            .map(|_| {
                let log = Arc::clone(&log);
                tokio::spawn(async move { log.sync().await })
            })
            .collect();
        for sync in syncs {
            sync.await.unwrap().unwrap();
        }
        assert_eq!(log.fsyncs(), 1);
        log.sync().await.unwrap();
        assert_eq!(log.fsyncs(), 1, "nothing new to sync");
        assign(&log, plain(1));
        log.sync().await.unwrap();
        assert_eq!(log.fsyncs(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn producers_assigning_and_syncing_at_once_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(SyntheticLog::open(dir.path()).unwrap());
        let producers: Vec<_> = (0..200)
            .map(|pid| {
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    log.assign(T, 0, &idempotent(pid, 0, 1), None).unwrap();
                    log.sync().await
                })
            })
            .collect();
        for producer in producers {
            producer.await.unwrap().unwrap();
        }
        let fsyncs = log.fsyncs();
        eprintln!("200 assign+sync callers took {fsyncs} fsyncs");
        assert!(fsyncs < 100, "{fsyncs} fsyncs for 200 callers");
        assert_eq!(log.producer_states(), 200);
    }
}
