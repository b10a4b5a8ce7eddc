//! The thread that owns the log's files: it appends exchanges and marks, rolls and deletes
//! segments, and hands fsyncs to a second thread (group commit), so that a write never waits
//! for an fsync and async workers never wait for either.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use super::entry::{encode_complete, encode_settled, Logged, RecordId};
use super::WalError;
use crate::kinesis::segment_log::{SegmentDir, FRAME_HEADER_BYTES};
use crate::telemetry::wal_metrics::WalMetrics;

/// How often the gauges are refreshed when nothing happens.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Bytes gathered into one write at most, so that a burst does not hold its first appends.
const MAX_WRITE_BYTES: u64 = 4 * 1024 * 1024;

pub(crate) type Completion = oneshot::Sender<Result<(), WalError>>;
/// An append's answer: where its entry was written.
pub(crate) type Appended = oneshot::Sender<Result<LogPosition, WalError>>;

/// Where an entry is in the log, to read it again while its segment is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogPosition {
    pub(crate) segment: u64,
    /// Of its frame in the segment.
    pub(crate) offset: u64,
    /// Of its payload, as a replay counts what is left to read.
    pub(crate) bytes: u64,
}

/// Who waits for the next fsync.
enum SyncWaiter {
    Flush(Completion),
    /// A durable append, answered with where it was written.
    Append(Appended, LogPosition),
}

impl SyncWaiter {
    fn answer(self, result: &Result<(), WalError>) {
        // A waiter that went away does not need the answer.
        match self {
            SyncWaiter::Flush(done) => drop(done.send(result.clone())),
            SyncWaiter::Append(done, position) => {
                drop(done.send(result.clone().map(|()| position)))
            }
        }
    }
}

pub(crate) enum Command {
    /// Log an exchange; `done` is answered after the write, or after its fsync if `durable`.
    Append {
        logged: Logged,
        durable: bool,
        done: Appended,
    },
    Settled(RecordId),
    /// Every record of the exchange is done.
    Complete(u64),
    /// Answered once everything sent before it is written and fsynced.
    Flush(Completion),
    /// From the fsync thread: an fsync finished, so durable appends written meanwhile can have
    /// theirs.
    Synced,
}

#[derive(Clone)]
pub(crate) struct AppenderSettings {
    pub(crate) segment_bytes: u64,
    /// The disk the log and the spools may take together; appends wait beyond it.
    pub(crate) max_bytes: u64,
    /// The spools' bytes, read once per write.
    pub(crate) spooled_bytes: Arc<dyn Fn() -> u64 + Send + Sync>,
    pub(crate) fsync_interval: Duration,
    pub(crate) fsync_bytes: u64,
    /// Test hook: each fsync sleeps this long first.
    pub(crate) fsync_delay: Duration,
}

/// A segment, as the appender accounts for it.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Segment {
    pub(crate) len: u64,
    /// Exchanges logged in it whose records are not all done.
    pub(crate) open_exchanges: usize,
    /// When its first exchange was logged, for the age of the oldest undelivered exchange.
    pub(crate) first_unix_ms: Option<u64>,
}

/// The state the log was found in, to start appending after.
pub(crate) struct LogState {
    pub(crate) segments: BTreeMap<u64, Segment>,
    /// The segment of each exchange not complete yet.
    pub(crate) open: HashMap<u64, u64>,
}

/// fsyncs to run, and who waits for them.
struct SyncJob {
    files: Vec<Arc<File>>,
    waiters: Vec<SyncWaiter>,
}

pub(crate) struct Appender {
    files: SegmentDir,
    /// The directory's lock, held while the appender runs.
    _lock: File,
    settings: AppenderSettings,
    segments: BTreeMap<u64, Segment>,
    open: HashMap<u64, u64>,
    active: Option<(u64, Arc<File>)>,
    /// A failed write left the active segment in doubt: the next write starts a new one.
    roll_next: bool,
    bytes: u64,
    /// Appends waiting for room (the log is full).
    waiting: VecDeque<(Logged, bool, Appended)>,
    unsynced_bytes: u64,
    unsynced_files: Vec<Arc<File>>,
    sync_waiters: Vec<SyncWaiter>,
    last_sync: Instant,
    syncs: Sender<SyncJob>,
    /// An fsync job is with the fsync thread.
    syncing: Arc<AtomicBool>,
    metrics: WalMetrics,
}

impl Appender {
    /// Starts the appender and its fsync thread on the log `files` found in `state`.
    pub(crate) fn spawn(
        (files, lock): (SegmentDir, File),
        state: LogState,
        settings: AppenderSettings,
        metrics: WalMetrics,
        (wake, commands): (FsyncWake, Receiver<Command>),
    ) -> std::io::Result<()> {
        let (syncs, jobs) = std::sync::mpsc::channel();
        let delay = settings.fsync_delay;
        let histogram = metrics.fsync_duration.clone();
        let syncing = Arc::new(AtomicBool::new(false));
        let fsync = FsyncThread {
            jobs,
            delay,
            histogram,
            syncing: syncing.clone(),
            wake,
        };
        std::thread::Builder::new()
            .name("wal-fsync".into())
            .spawn(move || fsync.run())?;
        let bytes = state.segments.values().map(|s| s.len).sum();
        let appender = Appender {
            files,
            _lock: lock,
            settings,
            segments: state.segments,
            open: state.open,
            active: None,
            roll_next: true,
            bytes,
            waiting: VecDeque::new(),
            unsynced_bytes: 0,
            unsynced_files: Vec::new(),
            sync_waiters: Vec::new(),
            last_sync: Instant::now(),
            syncs,
            syncing,
            metrics,
        };
        std::thread::Builder::new()
            .name("wal-append".into())
            .spawn(move || appender.run(commands))?;
        Ok(())
    }

    fn run(mut self, commands: Receiver<Command>) {
        self.delete_done_segments();
        self.publish();
        loop {
            let timeout = if self.unsynced_bytes > 0 {
                (self.last_sync + self.settings.fsync_interval)
                    .saturating_duration_since(Instant::now())
            } else {
                IDLE_TICK
            };
            let mut batch = Batch::default();
            match commands.recv_timeout(timeout) {
                Ok(command) => batch.take(command),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.bytes < MAX_WRITE_BYTES {
                match commands.try_recv() {
                    Ok(command) => batch.take(command),
                    Err(_) => break,
                }
            }
            let flush = !batch.flushes.is_empty();
            self.write(batch);
            self.sync_if_due(flush);
            self.publish();
        }
        self.sync_if_due(true);
    }

    fn write(&mut self, batch: Batch) {
        let mut buf = Vec::new();
        for id in &batch.complete {
            if let Some(seq) = self.open.remove(id) {
                if let Some(segment) = self.segments.get_mut(&seq) {
                    segment.open_exchanges -= 1;
                }
            }
        }
        if !batch.complete.is_empty() {
            encode_complete(&batch.complete, &mut buf);
        }
        for chunk in batch.settled.chunks(64 * 1024) {
            encode_settled(chunk, &mut buf);
        }
        self.waiting.extend(batch.appends);
        self.delete_done_segments();
        // Answered with the fsync after this write, which covers the marks before them.
        self.sync_waiters
            .extend(batch.flushes.into_iter().map(SyncWaiter::Flush));
        // The entries whose frames `buf` holds: (exchange id, durable, completion, position).
        let mut in_buf = Vec::new();
        let spooled = if self.waiting.is_empty() {
            0
        } else {
            (self.settings.spooled_bytes)()
        };
        while let Some((logged, _, _)) = self.waiting.front() {
            let frame = logged.frame_bytes();
            let full = spooled + self.bytes + buf.len() as u64 + frame > self.settings.max_bytes;
            // One exchange always fits when nothing else can free room.
            if full && !self.open.is_empty() {
                break;
            }
            let (logged, durable, done) = self.waiting.pop_front().expect("front exists");
            if !buf.is_empty()
                && self.active_len() + buf.len() as u64 + frame > self.settings.segment_bytes
            {
                self.write_exchanges(&mut buf, std::mem::take(&mut in_buf));
                self.roll_next = true;
            }
            let Some(seq) = self.writable_segment(buf.len() as u64 + frame) else {
                let _ = done.send(Err(WalError::Closed));
                continue;
            };
            // Only Produce exchanges keep their segment: transaction-control entries are
            // replayed while the exchanges before them are.
            let id = match &logged {
                Logged::Exchange(exchange) => {
                    let segment = self.segments.entry(seq).or_default();
                    segment.open_exchanges += 1;
                    segment.first_unix_ms.get_or_insert(exchange.unix_ms);
                    self.open.insert(exchange.id, seq);
                    Some(exchange.id)
                }
                Logged::TxnControl { .. } => None,
            };
            let position = LogPosition {
                segment: seq,
                offset: self.segments.get(&seq).map_or(0, |s| s.len) + buf.len() as u64,
                bytes: frame - FRAME_HEADER_BYTES,
            };
            logged.encode(&mut buf);
            in_buf.push((id, durable, done, position));
        }
        self.write_exchanges(&mut buf, in_buf);
    }

    /// Writes `buf`, and answers the exchanges it holds: now, or after their fsync when
    /// durable. A failed write forgets them, so that they pin no segment.
    fn write_exchanges(
        &mut self,
        buf: &mut Vec<u8>,
        exchanges: Vec<(Option<u64>, bool, Appended, LogPosition)>,
    ) {
        let result = self.flush(buf);
        for (id, durable, done, position) in exchanges {
            match &result {
                Ok(()) if durable => self.sync_waiters.push(SyncWaiter::Append(done, position)),
                Ok(()) => {
                    let _ = done.send(Ok(position));
                }
                Err(e) => {
                    if let Some(seq) = id.and_then(|id| self.open.remove(&id)) {
                        if let Some(segment) = self.segments.get_mut(&seq) {
                            segment.open_exchanges -= 1;
                        }
                    }
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
    }

    fn active_len(&self) -> u64 {
        self.active
            .as_ref()
            .and_then(|(seq, _)| self.segments.get(seq))
            .map_or(0, |s| s.len)
    }

    /// The segment the next `needed` bytes go to, opening or creating it; `None` when no
    /// segment can be created (the error is logged).
    fn writable_segment(&mut self, needed: u64) -> Option<u64> {
        if let Some((seq, _)) = &self.active {
            let len = self.active_len();
            if !self.roll_next && (len == 0 || len + needed <= self.settings.segment_bytes) {
                return Some(*seq);
            }
        }
        let seq = self.segments.keys().next_back().map_or(0, |last| last + 1);
        match self.files.create_segment(seq) {
            Ok(file) => {
                self.segments.insert(seq, Segment::default());
                self.active = Some((seq, Arc::new(file)));
                self.roll_next = false;
                Some(seq)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot create a write-ahead log segment");
                None
            }
        }
    }

    /// Writes `buf` to the active segment and empties it.
    fn flush(&mut self, buf: &mut Vec<u8>) -> Result<(), WalError> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some(seq) = self.writable_segment(buf.len() as u64) else {
            buf.clear();
            return Err(WalError::Closed);
        };
        let (_, file) = self.active.as_ref().expect("a writable segment is active");
        let start = self.segments[&seq].len;
        let result = (&**file)
            .seek(SeekFrom::Start(start))
            .and_then(|_| (&**file).write_all(buf));
        if let Err(source) = result {
            let path = self.files.segment_path(seq);
            tracing::error!(segment = %path.display(), error = %source, "cannot write the write-ahead log");
            let _ = file.set_len(start);
            self.roll_next = true;
            buf.clear();
            return Err(WalError::from(crate::kinesis::segment_log::io_err(&path)(
                source,
            )));
        }
        let written = buf.len() as u64;
        buf.clear();
        self.segments.get_mut(&seq).expect("active segment").len += written;
        self.bytes += written;
        self.unsynced_bytes += written;
        if !self
            .unsynced_files
            .last()
            .is_some_and(|f| Arc::ptr_eq(f, file))
        {
            self.unsynced_files.push(file.clone());
        }
        Ok(())
    }

    /// Group commit: hands the fsync of what was written to the fsync thread once
    /// `fsync_bytes` were written or `fsync_interval` passed since the last one, and at once
    /// when a durable append (`sync`) waits and no fsync is running: its answer then waits one
    /// fsync, not the interval, and appends written during an fsync share the next one.
    fn sync_if_due(&mut self, now: bool) {
        // Nothing written since the last fsync: only a flush that waits needs one.
        let flush_waits = now && !self.sync_waiters.is_empty();
        if self.unsynced_bytes == 0 && !flush_waits {
            return;
        }
        let waiters_idle = !self.sync_waiters.is_empty() && !self.syncing.load(Ordering::Acquire);
        let due = now
            || waiters_idle
            || self.unsynced_bytes >= self.settings.fsync_bytes
            || self.last_sync.elapsed() >= self.settings.fsync_interval;
        if !due {
            return;
        }
        let job = SyncJob {
            files: std::mem::take(&mut self.unsynced_files),
            waiters: std::mem::take(&mut self.sync_waiters),
        };
        self.unsynced_bytes = 0;
        self.last_sync = Instant::now();
        self.syncing.store(true, Ordering::Release);
        let _ = self.syncs.send(job);
    }

    /// Deletes the oldest segments while every exchange in them is done. Only a prefix goes:
    /// a segment holds the marks of exchanges logged before it, which must outlive them. The
    /// active segment goes too when appends wait for room, or they could wait for ever.
    fn delete_done_segments(&mut self) {
        let active = self.active.as_ref().map(|(seq, _)| *seq);
        while let Some((&seq, segment)) = self.segments.iter().next() {
            if segment.open_exchanges > 0 || (Some(seq) == active && self.waiting.is_empty()) {
                break;
            }
            if Some(seq) == active {
                self.active = None;
            }
            let path = self.files.segment_path(seq);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(segment = %path.display(), error = %e, "cannot delete a delivered write-ahead log segment");
                break;
            }
            self.bytes -= segment.len;
            self.segments.remove(&seq);
        }
    }

    fn publish(&self) {
        self.metrics.bytes.set(self.bytes as i64);
        let oldest = self
            .segments
            .values()
            .filter(|s| s.open_exchanges > 0)
            .find_map(|s| s.first_unix_ms);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.metrics
            .oldest_undelivered_age_seconds
            .set(oldest.map_or(0, |t| (now_ms.saturating_sub(t) / 1000) as i64));
    }
}

/// Commands gathered for one write.
#[derive(Default)]
struct Batch {
    appends: Vec<(Logged, bool, Appended)>,
    settled: Vec<RecordId>,
    complete: Vec<u64>,
    flushes: Vec<Completion>,
    bytes: u64,
}

impl Batch {
    fn take(&mut self, command: Command) {
        match command {
            Command::Append {
                logged,
                durable,
                done,
            } => {
                self.bytes += logged.frame_bytes();
                self.appends.push((logged, durable, done));
            }
            Command::Settled(record) => {
                self.bytes += 20;
                self.settled.push(record);
            }
            Command::Complete(id) => {
                self.bytes += 8;
                self.complete.push(id);
            }
            Command::Flush(done) => self.flushes.push(done),
            // Only wakes the loop, which then looks whether an fsync is due.
            Command::Synced => {}
        }
    }
}

/// The thread that runs the fsyncs, one job at a time, jobs that queued meanwhile together.
struct FsyncThread {
    jobs: Receiver<SyncJob>,
    delay: Duration,
    histogram: prometheus::Histogram,
    syncing: Arc<AtomicBool>,
    wake: FsyncWake,
}

/// How the fsync thread wakes the appender after each fsync: a sender of its commands, which
/// the log's handle takes back when it is dropped, so that the appender still ends once
/// nobody else can send it anything.
pub(crate) type FsyncWake = Arc<std::sync::Mutex<Option<Sender<Command>>>>;

impl FsyncThread {
    fn run(self) {
        while let Ok(mut job) = self.jobs.recv() {
            while let Ok(more) = self.jobs.try_recv() {
                job.files.extend(more.files);
                job.waiters.extend(more.waiters);
            }
            job.files.dedup_by(|a, b| Arc::ptr_eq(a, b));
            if !self.delay.is_zero() {
                std::thread::sleep(self.delay);
            }
            let started = Instant::now();
            let result = job.files.iter().try_for_each(|f| f.sync_data());
            self.histogram.observe(started.elapsed().as_secs_f64());
            let result = result.map_err(|e| {
                tracing::error!(error = %e, "cannot fsync the write-ahead log");
                WalError::Sync(Arc::new(e))
            });
            for waiter in job.waiters {
                waiter.answer(&result);
            }
            self.syncing.store(false, Ordering::Release);
            let wake = self.wake.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(wake) = wake.as_ref() {
                // The appender is gone at exit: nothing waits for the wake-up then.
                let _ = wake.send(Command::Synced);
            }
        }
    }
}
