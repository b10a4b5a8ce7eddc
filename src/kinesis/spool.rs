//! A durable local spool for records waiting for Kinesis: an append-only, checksummed,
//! segmented log on local disk, plus a checkpoint of the first unacknowledged record.
//!
//! The writer spools records when Kinesis is down, throttled, or the in-memory queue is over
//! budget, and replays them later: [`Spool::peek`] reads entries (in append order) without
//! removing them, and [`Spool::acknowledge`] marks everything up to a position as delivered.
//! After a crash or restart, [`Spool::open`] recovers the log and replay resumes at the
//! checkpoint, so every entry is delivered at least once.
//!
//! # On-disk format
//!
//! The spool directory holds:
//!
//! * segment files `NNNNNNNNNNNNNNNNNNNN.spool` (20-digit zero-padded sequence number), each a
//!   sequence of frames. A segment is rolled when the next batch would take it past the segment
//!   size (64 MiB by default); a batch is never split across segments.
//! * `checkpoint`: 28 bytes, the position of the first unacknowledged record:
//!   `b"KKPSPCK"`, a format version byte (1), segment sequence `u64`, byte offset `u64`, and a
//!   CRC-32C of those 24 bytes (`u32`), all little-endian. It is replaced atomically (written to
//!   `checkpoint.tmp`, fsynced, renamed, directory fsynced). No checkpoint means nothing was
//!   ever acknowledged: replay starts at the oldest segment.
//! * `LOCK`: an advisory lock held while the spool is open, so two processes cannot share a
//!   spool directory.
//!
//! A frame is `[u32 payload length][u32 CRC-32C (Castagnoli) of payload][payload]`. The payload
//! (format version 1) is, little-endian throughout:
//!
//! ```text
//! u8  version (1)
//! u8  flags: bit 0 = last record of its append batch, bit 1 = explicit hash key present
//! u64 enqueued_unix_ms
//! i32 partition
//! i64 offset
//! u128 explicit_hash_key      (only when flag bit 1 is set)
//! u32 len + UTF-8  stream
//! u32 len + UTF-8  partition_key
//! u32 len + UTF-8  topic
//! u32 len + bytes  data
//! ```
//!
//! # Durability guarantee
//!
//! [`Spool::append`] returns `Ok` only after the batch is written and the segment is fdatasynced
//! (and, for a new segment, after its directory entry is fsynced): an entry whose append
//! returned `Ok` survives a process crash, a kernel panic or a power loss, given a disk that
//! honours flushes. A batch is all or nothing, also across crashes: its last frame carries a
//! batch-end marker, and recovery discards records that follow the last marker. A crash between
//! the write and the fdatasync can therefore lose only the batch whose append had not returned
//! (whole, never partly), and that loss is reported as a truncated tail by [`Spool::open`].
//!
//! Acknowledgement is at least once: the checkpoint is persisted before `acknowledge` returns,
//! but a crash after the caller delivered entries and before it acknowledged them replays them.
//!
//! Recovery never fails on damaged data. Each segment is truncated at the end of its last intact
//! batch (partial frame, bad length, CRC mismatch, undecodable payload, or records after the
//! last batch-end marker), and every truncation is reported in [`RecoveryReport::truncated`]
//! with the bytes dropped; damage inside an older segment loses the rest of that segment only.
//! Damage found later by `peek` (the disk changed under a running spool) is
//! [`SpoolError::Corrupt`].
//!
//! [`Spool::bytes`] counts unacknowledged bytes (frames, headers included), and `max_bytes`
//! bounds that count. On disk, the spool can additionally hold the already-acknowledged prefix
//! of its oldest segment, so disk use stays below `max_bytes` plus one segment.
//!
//! All methods do blocking file I/O; call them from `spawn_blocking` in async code.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;

pub use super::segment_log::FRAME_HEADER_BYTES;
use super::segment_log::{self, begin_frame, end_frame, parse_header, SegmentDir, SegmentLogError};

/// Segment size at which a new segment is started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// The largest encoded entry (payload) a frame may hold. Larger entries are refused by
/// `append`, and a larger length read from disk is treated as corruption.
pub const MAX_PAYLOAD_BYTES: u32 = 32 * 1024 * 1024;

const FORMAT_VERSION: u8 = 1;
const FLAG_BATCH_END: u8 = 0x01;
const FLAG_EXPLICIT_HASH_KEY: u8 = 0x02;
const KNOWN_FLAGS: u8 = FLAG_BATCH_END | FLAG_EXPLICIT_HASH_KEY;
/// version, flags, enqueued_unix_ms, partition, offset, and four length prefixes.
const MIN_PAYLOAD_BYTES: u32 = 1 + 1 + 8 + 4 + 8 + 4 * 4;

const SEGMENT_SUFFIX: &str = ".spool";
const CHECKPOINT_FILE: &str = "checkpoint";
const CHECKPOINT_TMP_FILE: &str = "checkpoint.tmp";
const CHECKPOINT_MAGIC: &[u8; 7] = b"KKPSPCK";
const CHECKPOINT_VERSION: u8 = 1;
const CHECKPOINT_BYTES: usize = 28;

/// One record waiting for Kinesis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolEntry {
    pub stream: String,
    pub partition_key: String,
    pub explicit_hash_key: Option<u128>,
    pub data: Bytes,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// When the Kafka ack came, for lag metrics.
    pub enqueued_unix_ms: u64,
}

/// Where an entry sits in the spool, as returned by [`Spool::peek`]; pass it to
/// [`Spool::acknowledge`]. Positions order like the entries they name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpoolPosition {
    segment: u64,
    offset: u64,
    frame_len: u64,
}

impl SpoolPosition {
    /// Sequence number of the segment holding the entry.
    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// Byte offset of the entry's frame within its segment.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn end(&self) -> Cursor {
        Cursor {
            segment: self.segment,
            offset: self.offset + self.frame_len,
        }
    }
}

/// What [`Spool::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files kept.
    pub segments: usize,
    /// Unacknowledged entries, to be replayed.
    pub entries: u64,
    /// Unacknowledged bytes (as [`Spool::bytes`]).
    pub bytes: u64,
    /// Segments cut back to their last intact batch.
    pub truncated: Vec<TruncatedTail>,
    /// Set when the checkpoint was missing data, unreadable, or pointed at no record boundary,
    /// and replay was moved (never past an unacknowledged entry that still exists).
    pub checkpoint_problem: Option<String>,
}

/// A segment truncated by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncatedTail {
    pub segment: PathBuf,
    /// The new length of the segment: the end of its last intact batch.
    pub at_offset: u64,
    pub dropped_bytes: u64,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The batch (`needed` bytes of frames) would take the spool past `max_bytes` of
    /// unacknowledged data. Nothing was written.
    #[error("spool full: {needed} more bytes would exceed the limit of {max_bytes} bytes")]
    Full { max_bytes: u64, needed: u64 },
    /// An entry is too large to be spooled. Nothing was written.
    #[error("spool entry of {bytes} bytes exceeds the {max} byte limit")]
    TooLarge { bytes: u64, max: u64 },
    /// Damage found while reading a running spool (recovery truncates instead).
    #[error("spool segment {path} is corrupt at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// Another process (or another `Spool` in this process) has the directory open.
    #[error("spool directory is in use (lock held on {path})")]
    Locked { path: PathBuf },
    /// `acknowledge` was given a position that names no entry in this spool.
    #[error("spool position {segment}:{offset} names no entry in this spool")]
    InvalidPosition { segment: u64, offset: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| segment_log::io_err(path)(source).into()
}

impl From<SegmentLogError> for SpoolError {
    fn from(e: SegmentLogError) -> SpoolError {
        match e {
            SegmentLogError::Io { path, source } => SpoolError::Io { path, source },
            SegmentLogError::Locked { path } => SpoolError::Locked { path },
        }
    }
}

/// A point between records: (segment, byte offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Cursor {
    segment: u64,
    offset: u64,
}

/// The append-only spool. Internally synchronized; `Send + Sync`.
pub struct Spool {
    dir: PathBuf,
    segment_files: SegmentDir,
    max_bytes: u64,
    segment_bytes: u64,
    /// Unacknowledged bytes, mirrored outside the lock for cheap gauge reads.
    held: AtomicU64,
    inner: Mutex<Inner>,
    _lock: File,
}

struct Inner {
    /// Segment sequence -> valid length in bytes.
    segments: BTreeMap<u64, u64>,
    /// First unacknowledged record (the replay cursor).
    ack: Cursor,
    /// Sequence number for the next segment created.
    next_seq: u64,
    /// The segment open for appends.
    writer: Option<(u64, File)>,
    /// A failed write left the active segment in doubt: start a new one.
    roll_next: bool,
    held: u64,
}

impl Inner {
    /// Moves `ack` past fully acknowledged segments and onto an existing segment when possible.
    fn normalize(&mut self) {
        loop {
            match self.segments.get(&self.ack.segment) {
                Some(&len) if self.ack.offset >= len => {
                    match self.segments.range(self.ack.segment + 1..).next() {
                        Some((&next, _)) => {
                            self.ack = Cursor {
                                segment: next,
                                offset: 0,
                            }
                        }
                        None => return,
                    }
                }
                Some(_) => return,
                None => {
                    if let Some((&next, _)) = self.segments.range(self.ack.segment..).next() {
                        self.ack = Cursor {
                            segment: next,
                            offset: 0,
                        };
                    }
                    return;
                }
            }
        }
    }

    fn compute_held(&self) -> u64 {
        self.segments
            .range(self.ack.segment..)
            .map(|(&seq, &len)| {
                if seq == self.ack.segment {
                    len.saturating_sub(self.ack.offset)
                } else {
                    len
                }
            })
            .sum()
    }
}

impl Spool {
    /// Opens or creates the spool in `dir` with the default segment size. See
    /// [`Spool::open_with_segment_bytes`].
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Spool, RecoveryReport), SpoolError> {
        Self::open_with_segment_bytes(dir, max_bytes, DEFAULT_SEGMENT_BYTES)
    }

    /// Opens or creates the spool in `dir`, rolling segments at `segment_bytes`. Scans every
    /// segment; damaged data is truncated at the last intact batch and reported, never an
    /// error. Fails on I/O errors (naming the path) or when the directory is locked by another
    /// open spool.
    pub fn open_with_segment_bytes(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> Result<(Spool, RecoveryReport), SpoolError> {
        let segment_files = SegmentDir::create(dir, SEGMENT_SUFFIX)?;
        let lock = segment_files.lock()?;
        let mut report = RecoveryReport::default();
        let mut dir_dirty = false;

        let tmp = dir.join(CHECKPOINT_TMP_FILE);
        match fs::remove_file(&tmp) {
            Ok(()) => dir_dirty = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&tmp)(e)),
        }

        let checkpoint_path = dir.join(CHECKPOINT_FILE);
        let checkpoint = match read_checkpoint(&checkpoint_path)? {
            Ok(c) => c,
            Err(problem) => {
                report.checkpoint_problem = Some(problem);
                None
            }
        };

        let seqs = segment_files.list()?;
        let mut ack = checkpoint.unwrap_or(Cursor {
            segment: seqs.first().copied().unwrap_or(0),
            offset: 0,
        });

        let mut segments = BTreeMap::new();
        let mut ack_records: Option<Vec<u64>> = None;
        let mut entries = 0u64;
        for &seq in &seqs {
            let path = segment_files.segment_path(seq);
            if seq < ack.segment {
                // Fully acknowledged; a crash came between the checkpoint and the delete.
                fs::remove_file(&path).map_err(io_err(&path))?;
                dir_dirty = true;
                continue;
            }
            let scan = scan_segment(&segment_files, seq)?;
            if let Some(reason) = scan.reason {
                let dropped = scan.file_len - scan.good_len;
                segment_files.truncate(seq, scan.good_len)?;
                tracing::warn!(
                    segment = %path.display(),
                    at_offset = scan.good_len,
                    dropped_bytes = dropped,
                    %reason,
                    "spool recovery truncated a damaged segment tail"
                );
                report.truncated.push(TruncatedTail {
                    segment: path.clone(),
                    at_offset: scan.good_len,
                    dropped_bytes: dropped,
                    reason,
                });
            }
            if seq == ack.segment {
                entries += scan.frames.iter().filter(|&&o| o >= ack.offset).count() as u64;
                ack_records = Some(scan.frames);
            } else {
                entries += scan.frames.len() as u64;
            }
            segments.insert(seq, scan.good_len);
        }

        // The checkpoint must sit on a record boundary of its segment (or at its end).
        if let (Some(records), Some(&len)) = (ack_records, segments.get(&ack.segment)) {
            if ack.offset > len {
                report.checkpoint_problem = Some(format!(
                    "checkpoint offset {} is past the end ({len}) of segment {} after recovery",
                    ack.offset, ack.segment
                ));
                ack.offset = len;
            } else if ack.offset != len && records.binary_search(&ack.offset).is_err() {
                let back = records
                    .iter()
                    .copied()
                    .take_while(|&o| o < ack.offset)
                    .last()
                    .unwrap_or(0);
                report.checkpoint_problem = Some(format!(
                    "checkpoint offset {} is not a record boundary of segment {}; replay moved \
                     back to offset {back}",
                    ack.offset, ack.segment
                ));
                entries += 1;
                ack.offset = back;
            }
        }
        if let Some(problem) = &report.checkpoint_problem {
            tracing::warn!(dir = %dir.display(), %problem, "spool checkpoint problem");
        }

        if dir_dirty {
            segment_files.sync()?;
        }

        let next_seq = segments
            .keys()
            .next_back()
            .map_or(ack.segment, |&last| (last + 1).max(ack.segment));
        let mut inner = Inner {
            segments,
            ack,
            next_seq,
            writer: None,
            roll_next: false,
            held: 0,
        };
        inner.normalize();
        inner.held = inner.compute_held();

        report.segments = inner.segments.len();
        report.entries = entries;
        report.bytes = inner.held;

        let spool = Spool {
            dir: dir.to_owned(),
            segment_files,
            max_bytes,
            segment_bytes: segment_bytes.max(1),
            held: AtomicU64::new(inner.held),
            inner: Mutex::new(inner),
            _lock: lock,
        };
        Ok((spool, report))
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The limit on unacknowledged bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Appends `entries` durably: returns after write and fdatasync. All or nothing for the
    /// batch. `Err(SpoolError::Full)` when the unacknowledged bytes would exceed `max_bytes`,
    /// with nothing written.
    pub fn append(&self, entries: &[SpoolEntry]) -> Result<(), SpoolError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            encode_frame(entry, i + 1 == entries.len(), &mut buf)?;
        }
        let needed = buf.len() as u64;

        let mut inner = self.lock();
        if inner.held.saturating_add(needed) > self.max_bytes {
            return Err(SpoolError::Full {
                max_bytes: self.max_bytes,
                needed,
            });
        }

        let (seq, start) = self.writable_segment(&mut inner, needed)?;
        let path = self.segment_files.segment_path(seq);
        let (_, file) = inner
            .writer
            .as_mut()
            .expect("writable_segment opened a writer");
        let result = file
            .seek(SeekFrom::Start(start))
            .and_then(|_| file.write_all(&buf))
            .and_then(|_| file.sync_data());
        if let Err(source) = result {
            // Cut off whatever reached the file and never write to this segment again: after a
            // failed fdatasync its page-cache state is unknown.
            let _ = file.set_len(start);
            inner.writer = None;
            inner.roll_next = true;
            return Err(SpoolError::Io { path, source });
        }

        *inner
            .segments
            .get_mut(&seq)
            .expect("active segment is known") += needed;
        inner.normalize();
        inner.held += needed;
        self.held.store(inner.held, Ordering::Release);
        Ok(())
    }

    /// Unacknowledged bytes held, for the `spool_bytes` gauge.
    pub fn bytes(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    /// True when every appended entry has been acknowledged.
    pub fn is_empty(&self) -> bool {
        self.bytes() == 0
    }

    /// Reads up to `max` entries from the replay cursor (the first unacknowledged entry), in
    /// append order, without removing them: calling it again returns the same entries until
    /// they are acknowledged.
    pub fn peek(&self, max: usize) -> Result<Vec<(SpoolPosition, SpoolEntry)>, SpoolError> {
        let inner = self.lock();
        let from = inner.ack;
        self.read_from(&inner, from, max)
    }

    /// Reads up to `max` unacknowledged entries after `after` (for pipelining replay: peek the
    /// next batch while the previous one is in flight).
    pub fn peek_after(
        &self,
        after: SpoolPosition,
        max: usize,
    ) -> Result<Vec<(SpoolPosition, SpoolEntry)>, SpoolError> {
        let inner = self.lock();
        let from = after.end().max(inner.ack);
        self.read_from(&inner, from, max)
    }

    /// Marks everything up to and including `upto` as delivered: persists the checkpoint
    /// (temp file + fsync + rename + directory fsync) and deletes fully acknowledged segments.
    /// A position already acknowledged is a no-op.
    pub fn acknowledge(&self, upto: SpoolPosition) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        let end = upto.end();
        if end <= inner.ack {
            return Ok(());
        }
        match inner.segments.get(&upto.segment) {
            Some(&len) if end.offset <= len && upto.frame_len > 0 => {}
            _ => {
                return Err(SpoolError::InvalidPosition {
                    segment: upto.segment,
                    offset: upto.offset,
                })
            }
        }

        let prev_ack = inner.ack;
        let prev_next_seq = inner.next_seq;
        inner.ack = end;
        inner.normalize();
        let last = *inner.segments.keys().next_back().expect("segment exists");
        let drained = inner.ack.segment == last && inner.ack.offset >= inner.segments[&last];
        if drained {
            // Everything is delivered: retire the active segment too, the next append starts a
            // fresh one.
            inner.ack = Cursor {
                segment: last + 1,
                offset: 0,
            };
            inner.next_seq = inner.next_seq.max(last + 1);
        }

        if let Err(e) = write_checkpoint(&self.segment_files, inner.ack) {
            inner.ack = prev_ack;
            inner.next_seq = prev_next_seq;
            return Err(e);
        }

        let ack_segment = inner.ack.segment;
        let retired: Vec<u64> = inner
            .segments
            .range(..ack_segment)
            .map(|(&s, _)| s)
            .collect();
        if inner
            .writer
            .as_ref()
            .is_some_and(|(seq, _)| *seq < ack_segment)
        {
            inner.writer = None;
        }
        for seq in retired {
            inner.segments.remove(&seq);
            let path = self.segment_files.segment_path(seq);
            if let Err(e) = fs::remove_file(&path) {
                // The checkpoint is already past it; the next open deletes it.
                tracing::warn!(segment = %path.display(), error = %e,
                    "could not delete an acknowledged spool segment");
            }
        }
        inner.held = inner.compute_held();
        self.held.store(inner.held, Ordering::Release);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is updated only after the I/O it describes succeeded, so a panic elsewhere
        // leaves it consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns the segment (and its current length) the next `needed` bytes go to, with
    /// `inner.writer` open on it.
    fn writable_segment(&self, inner: &mut Inner, needed: u64) -> Result<(u64, u64), SpoolError> {
        let last = inner.segments.iter().next_back().map(|(&s, &l)| (s, l));
        let reuse = match last {
            Some((seq, len))
                if !inner.roll_next && (len == 0 || len + needed <= self.segment_bytes) =>
            {
                seq >= inner.ack.segment
            }
            _ => false,
        };
        if reuse {
            let (seq, len) = last.expect("checked");
            if inner.writer.as_ref().map(|(s, _)| *s) != Some(seq) {
                let path = self.segment_files.segment_path(seq);
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                inner.writer = Some((seq, file));
            }
            return Ok((seq, len));
        }

        let seq = inner.next_seq;
        let file = self.segment_files.create_segment(seq)?;
        inner.next_seq = seq + 1;
        inner.segments.insert(seq, 0);
        inner.writer = Some((seq, file));
        inner.roll_next = false;
        Ok((seq, 0))
    }

    fn read_from(
        &self,
        inner: &Inner,
        from: Cursor,
        max: usize,
    ) -> Result<Vec<(SpoolPosition, SpoolEntry)>, SpoolError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        for (&seq, &len) in inner.segments.range(from.segment..) {
            let mut offset = if seq == from.segment { from.offset } else { 0 };
            if offset >= len {
                continue;
            }
            let path = self.segment_files.segment_path(seq);
            let mut file = File::open(&path).map_err(io_err(&path))?;
            file.seek(SeekFrom::Start(offset)).map_err(io_err(&path))?;
            let mut reader = BufReader::with_capacity(256 * 1024, file.take(len - offset));
            while offset < len && out.len() < max {
                let corrupt = |reason: String| SpoolError::Corrupt {
                    path: path.clone(),
                    offset,
                    reason,
                };
                let mut header = [0u8; FRAME_HEADER_BYTES as usize];
                read_exact_or(&mut reader, &mut header, &path, offset)?;
                let (plen, crc) = parse_header(&header);
                if !(MIN_PAYLOAD_BYTES..=MAX_PAYLOAD_BYTES).contains(&plen)
                    || u64::from(plen) > len - offset - FRAME_HEADER_BYTES
                {
                    return Err(corrupt(format!("bad record length {plen}")));
                }
                let mut payload = vec![0u8; plen as usize];
                read_exact_or(&mut reader, &mut payload, &path, offset)?;
                if crc32c::crc32c(&payload) != crc {
                    return Err(corrupt("CRC mismatch".into()));
                }
                let (entry, _) = decode_payload(&Bytes::from(payload)).map_err(corrupt)?;
                let frame_len = FRAME_HEADER_BYTES + u64::from(plen);
                out.push((
                    SpoolPosition {
                        segment: seq,
                        offset,
                        frame_len,
                    },
                    entry,
                ));
                offset += frame_len;
            }
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }
}

fn read_exact_or(
    reader: &mut impl Read,
    buf: &mut [u8],
    path: &Path,
    offset: u64,
) -> Result<(), SpoolError> {
    reader.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            SpoolError::Corrupt {
                path: path.to_owned(),
                offset,
                reason: "segment shorter than recorded".into(),
            }
        } else {
            io_err(path)(e)
        }
    })
}

/// The streams whose spool under `spool_dir` (one directory per stream) still holds records,
/// with how many, leaving out the directories `skip` names. Each stream is named as its
/// entries name it (a label that says its region and role), since a directory name cannot
/// say them. After a restart these must drain even when no route names the stream any more.
/// A directory with no spool files is not a spool and is left alone. Opening a spool takes
/// its lock and repairs a torn tail, so streams whose writers open their spools themselves
/// must be skipped.
pub fn streams_with_records(
    spool_dir: &Path,
    max_bytes: u64,
    skip: impl Fn(&str) -> bool,
) -> Vec<(String, u64)> {
    let Ok(entries) = fs::read_dir(spool_dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if skip(&name) {
            continue;
        }
        let segment_files = SegmentDir::new(&dir, SEGMENT_SUFFIX);
        let is_spool = fs::read_dir(&dir).is_ok_and(|files| {
            files.flatten().any(|f| {
                f.file_name().to_str().is_some_and(|n| {
                    n == CHECKPOINT_FILE || segment_files.parse_segment_name(n).is_some()
                })
            })
        });
        if !is_spool {
            continue;
        }
        match Spool::open(&dir, max_bytes) {
            Ok((spool, report)) if report.entries > 0 => {
                let stream = match spool.peek(1) {
                    Ok(first) => first.into_iter().next().map(|(_, e)| e.stream),
                    Err(_) => None,
                };
                found.push((stream.unwrap_or(name), report.entries));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(spool = %dir.display(), error = %e, "cannot open a spool to see whether it holds records")
            }
        }
    }
    found
}

/// The outer result is an I/O error; the inner one a checkpoint that exists but is unusable.
fn read_checkpoint(path: &Path) -> Result<Result<Option<Cursor>, String>, SpoolError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ok(None)),
        Err(e) => return Err(io_err(path)(e)),
    };
    let unusable = |why: &str| {
        Ok(Err(format!(
            "checkpoint {} is unusable ({why}); replaying from the oldest segment",
            path.display()
        )))
    };
    if bytes.len() != CHECKPOINT_BYTES {
        return unusable(&format!(
            "{} bytes, expected {CHECKPOINT_BYTES}",
            bytes.len()
        ));
    }
    if &bytes[..7] != CHECKPOINT_MAGIC || bytes[7] != CHECKPOINT_VERSION {
        return unusable("bad magic or version");
    }
    let crc = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[..24]) != crc {
        return unusable("CRC mismatch");
    }
    Ok(Ok(Some(Cursor {
        segment: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
        offset: u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")),
    })))
}

fn write_checkpoint(segment_files: &SegmentDir, at: Cursor) -> Result<(), SpoolError> {
    let mut bytes = Vec::with_capacity(CHECKPOINT_BYTES);
    bytes.extend_from_slice(CHECKPOINT_MAGIC);
    bytes.push(CHECKPOINT_VERSION);
    bytes.extend_from_slice(&at.segment.to_le_bytes());
    bytes.extend_from_slice(&at.offset.to_le_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());

    Ok(segment_files.replace_file(CHECKPOINT_FILE, CHECKPOINT_TMP_FILE, &bytes)?)
}

/// Scans a spool segment: a batch ends at a record flagged as its batch's last.
fn scan_segment(segment_files: &SegmentDir, seq: u64) -> Result<segment_log::Scan, SpoolError> {
    let mut check = |_, payload| decode_payload(&payload).map(|(_, batch_end)| batch_end);
    Ok(segment_files.scan(seq, (MIN_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES), &mut check)?)
}

fn encoded_payload_len(e: &SpoolEntry) -> u64 {
    u64::from(MIN_PAYLOAD_BYTES)
        + if e.explicit_hash_key.is_some() { 16 } else { 0 }
        + e.stream.len() as u64
        + e.partition_key.len() as u64
        + e.topic.len() as u64
        + e.data.len() as u64
}

fn encode_frame(e: &SpoolEntry, batch_end: bool, out: &mut Vec<u8>) -> Result<(), SpoolError> {
    let plen = encoded_payload_len(e);
    if plen > u64::from(MAX_PAYLOAD_BYTES) {
        return Err(SpoolError::TooLarge {
            bytes: plen,
            max: u64::from(MAX_PAYLOAD_BYTES),
        });
    }
    out.reserve(FRAME_HEADER_BYTES as usize + plen as usize);
    let start = begin_frame(out);
    let mut flags = 0;
    if batch_end {
        flags |= FLAG_BATCH_END;
    }
    if e.explicit_hash_key.is_some() {
        flags |= FLAG_EXPLICIT_HASH_KEY;
    }
    out.push(FORMAT_VERSION);
    out.push(flags);
    out.extend_from_slice(&e.enqueued_unix_ms.to_le_bytes());
    out.extend_from_slice(&e.partition.to_le_bytes());
    out.extend_from_slice(&e.offset.to_le_bytes());
    if let Some(hash) = e.explicit_hash_key {
        out.extend_from_slice(&hash.to_le_bytes());
    }
    for field in [
        e.stream.as_bytes(),
        e.partition_key.as_bytes(),
        e.topic.as_bytes(),
        &e.data[..],
    ] {
        out.extend_from_slice(&(field.len() as u32).to_le_bytes());
        out.extend_from_slice(field);
    }
    debug_assert_eq!((out.len() - start) as u64, FRAME_HEADER_BYTES + plen);
    end_frame(out, start);
    Ok(())
}

/// Decodes a payload; returns the entry and whether it ends its batch.
fn decode_payload(payload: &Bytes) -> Result<(SpoolEntry, bool), String> {
    let mut r = PayloadReader {
        buf: payload,
        pos: 0,
    };
    let version = r.take(1)?[0];
    if version != FORMAT_VERSION {
        return Err(format!("unknown format version {version}"));
    }
    let flags = r.take(1)?[0];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(format!("unknown flags {flags:#04x}"));
    }
    let enqueued_unix_ms = u64::from_le_bytes(r.array()?);
    let partition = i32::from_le_bytes(r.array()?);
    let offset = i64::from_le_bytes(r.array()?);
    let explicit_hash_key = if flags & FLAG_EXPLICIT_HASH_KEY != 0 {
        Some(u128::from_le_bytes(r.array()?))
    } else {
        None
    };
    let stream = r.string("stream")?;
    let partition_key = r.string("partition_key")?;
    let topic = r.string("topic")?;
    let len = r.len_prefix()?;
    let start = r.pos;
    r.take(len)?;
    let data = payload.slice(start..start + len);
    if r.pos != payload.len() {
        return Err(format!("{} trailing bytes", payload.len() - r.pos));
    }
    Ok((
        SpoolEntry {
            stream,
            partition_key,
            explicit_hash_key,
            data,
            topic,
            partition,
            offset,
            enqueued_unix_ms,
        },
        flags & FLAG_BATCH_END != 0,
    ))
}

struct PayloadReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> PayloadReader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() - self.pos < n {
            return Err(format!(
                "field of {n} bytes overruns the payload at byte {}",
                self.pos
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn len_prefix(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }

    fn string(&mut self, field: &str) -> Result<String, String> {
        let len = self.len_prefix()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{field} is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn entry(i: u64) -> SpoolEntry {
        SpoolEntry {
            stream: format!("stream-{}", i % 3),
            partition_key: format!("key-{i}"),
            explicit_hash_key: i.is_multiple_of(2).then(|| u128::MAX - u128::from(i)),
            data: Bytes::from(
                (0..(i % 50 + 20))
                    .map(|b| (b as u8) ^ (i as u8))
                    .collect::<Vec<u8>>(),
            ),
            topic: "orders".into(),
            partition: (i % 4) as i32,
            offset: i as i64,
            enqueued_unix_ms: 1_700_000_000_000 + i,
        }
    }

    fn entries(range: std::ops::Range<u64>) -> Vec<SpoolEntry> {
        range.map(entry).collect()
    }

    fn frame_len(e: &SpoolEntry) -> u64 {
        FRAME_HEADER_BYTES + encoded_payload_len(e)
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|d| d.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "spool"))
            .collect();
        v.sort();
        v
    }

    fn drain(spool: &Spool) -> Vec<SpoolEntry> {
        let mut out = Vec::new();
        loop {
            let batch = spool.peek(7).unwrap();
            let Some((last, _)) = batch.last().cloned() else {
                break;
            };
            out.extend(batch.into_iter().map(|(_, e)| e));
            spool.acknowledge(last).unwrap();
        }
        out
    }

    #[test]
    fn spool_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Spool>();
    }

    #[test]
    fn encoding_round_trips() {
        for i in 0..10 {
            let e = entry(i);
            let mut buf = Vec::new();
            encode_frame(&e, i % 2 == 0, &mut buf).unwrap();
            assert_eq!(buf.len() as u64, frame_len(&e));
            let (plen, crc) = parse_header(buf[..8].try_into().unwrap());
            assert_eq!(plen as usize, buf.len() - 8);
            assert_eq!(crc, crc32c::crc32c(&buf[8..]));
            let (back, end) = decode_payload(&Bytes::from(buf[8..].to_vec())).unwrap();
            assert_eq!(back, e);
            assert_eq!(end, i % 2 == 0);
        }
    }

    #[test]
    fn round_trip_across_segments_with_checkpoint_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let all = entries(0..60);
        {
            let (spool, report) = Spool::open_with_segment_bytes(dir.path(), MIB, 1024).unwrap();
            assert_eq!(report, RecoveryReport::default());
            assert!(spool.is_empty());
            for chunk in all.chunks(5) {
                spool.append(chunk).unwrap();
            }
            let total: u64 = all.iter().map(frame_len).sum();
            assert_eq!(spool.bytes(), total);
            assert!(segment_files(dir.path()).len() >= 3, "several segments");

            // Peek does not consume.
            let first = spool.peek(25).unwrap();
            assert_eq!(spool.peek(25).unwrap(), first);
            let got: Vec<_> = first.iter().map(|(_, e)| e.clone()).collect();
            assert_eq!(got, all[..25]);
            // Positions order like the entries.
            assert!(first.windows(2).all(|w| w[0].0 < w[1].0));
            // Peek after a position continues from there.
            let next = spool.peek_after(first[24].0, 5).unwrap();
            assert_eq!(next[0].1, all[25]);

            spool.acknowledge(first[24].0).unwrap();
            let rest: u64 = all[25..].iter().map(frame_len).sum();
            assert_eq!(spool.bytes(), rest);
            // Re-acknowledging an old position is a no-op.
            spool.acknowledge(first[3].0).unwrap();
            assert_eq!(spool.bytes(), rest);
            assert_eq!(spool.peek(1).unwrap()[0].1, all[25]);
        }
        let (spool, report) = Spool::open_with_segment_bytes(dir.path(), MIB, 1024).unwrap();
        assert!(report.truncated.is_empty());
        assert_eq!(report.checkpoint_problem, None);
        assert_eq!(report.entries, 35);
        assert_eq!(report.bytes, spool.bytes());
        assert_eq!(report.segments, segment_files(dir.path()).len());
        assert_eq!(drain(&spool), all[25..]);
        assert!(spool.is_empty());
        assert_eq!(segment_files(dir.path()), Vec::<PathBuf>::new());

        // After a full drain, appends start a new segment and survive reopen.
        spool.append(&entries(100..103)).unwrap();
        drop(spool);
        let (spool, report) = Spool::open_with_segment_bytes(dir.path(), MIB, 1024).unwrap();
        assert_eq!(report.entries, 3);
        assert_eq!(drain(&spool), entries(100..103));
    }

    #[test]
    fn restart_replays_exactly_the_unacknowledged_entries_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let all = entries(0..40);
        {
            let (spool, _) = Spool::open_with_segment_bytes(dir.path(), MIB, 700).unwrap();
            for chunk in all.chunks(3) {
                spool.append(chunk).unwrap();
            }
            // Acknowledge in the middle of a batch and of a segment.
            let peeked = spool.peek(17).unwrap();
            spool.acknowledge(peeked[16].0).unwrap();
            // Peeked but unacknowledged entries are replayed after restart.
            spool.peek(10).unwrap();
        }
        let (spool, report) = Spool::open_with_segment_bytes(dir.path(), MIB, 700).unwrap();
        assert_eq!(report.entries, 23);
        assert_eq!(drain(&spool), all[17..]);
        drop(spool);
        let (spool, report) = Spool::open_with_segment_bytes(dir.path(), MIB, 700).unwrap();
        assert_eq!(report.entries, 0);
        assert!(spool.is_empty());
        assert!(spool.peek(10).unwrap().is_empty());
    }

    #[test]
    fn concurrent_appenders_and_a_drainer_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open_with_segment_bytes(dir.path(), 64 * MIB, 2048).unwrap();
        let spool = std::sync::Arc::new(spool);
        let writers: Vec<_> = (0..4u64)
            .map(|t| {
                let spool = spool.clone();
                std::thread::spawn(move || {
                    for b in 0..25u64 {
                        let batch: Vec<_> = (0..4)
                            .map(|i| {
                                let mut e = entry(i);
                                e.partition = t as i32;
                                e.offset = (b * 4 + i) as i64;
                                e
                            })
                            .collect();
                        spool.append(&batch).unwrap();
                    }
                })
            })
            .collect();
        let mut seen: Vec<Vec<i64>> = vec![Vec::new(); 4];
        let mut total = 0;
        while total < 400 {
            let batch = spool.peek(13).unwrap();
            if let Some((last, _)) = batch.last() {
                spool.acknowledge(*last).unwrap();
            }
            for (_, e) in batch {
                seen[e.partition as usize].push(e.offset);
                total += 1;
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        for offsets in seen {
            assert_eq!(offsets, (0..100).collect::<Vec<i64>>());
        }
        assert!(spool.is_empty());
    }

    #[test]
    fn second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_spool, _) = Spool::open(dir.path(), MIB).unwrap();
        match Spool::open(dir.path(), MIB) {
            Err(SpoolError::Locked { path }) => assert!(path.ends_with("LOCK")),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("second open succeeded"),
        }
    }

    /// Writes batches [0..3), [3..6), [6..9) into one segment; returns the segment path and the
    /// offset where the last batch starts.
    fn three_batches(dir: &Path) -> (PathBuf, u64) {
        let (spool, _) = Spool::open(dir, MIB).unwrap();
        spool.append(&entries(0..3)).unwrap();
        spool.append(&entries(3..6)).unwrap();
        let last_batch = spool.bytes();
        spool.append(&entries(6..9)).unwrap();
        let segs = segment_files(dir);
        assert_eq!(segs.len(), 1);
        (segs[0].clone(), last_batch)
    }

    fn assert_recovers_to_six(dir: &Path, seg: &Path, good: u64, reason_contains: &str) {
        let original_len = fs::metadata(seg).unwrap().len();
        let (spool, report) = Spool::open(dir, MIB).unwrap();
        assert_eq!(report.truncated.len(), 1, "{report:?}");
        let t = &report.truncated[0];
        assert_eq!(t.segment, seg);
        assert_eq!(t.at_offset, good);
        assert_eq!(t.dropped_bytes, original_len - good);
        assert!(
            t.reason.contains(reason_contains),
            "reason {:?} lacks {reason_contains:?}",
            t.reason
        );
        assert_eq!(report.entries, 6);
        assert_eq!(fs::metadata(seg).unwrap().len(), good);
        // Later appends work and are readable after the good records.
        spool.append(&entries(50..52)).unwrap();
        let got: Vec<_> = spool
            .peek(100)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        let mut want = entries(0..6);
        want.extend(entries(50..52));
        assert_eq!(got, want);
        drop(spool);
        let (spool, report) = Spool::open(dir, MIB).unwrap();
        assert!(report.truncated.is_empty());
        assert_eq!(drain(&spool), want);
    }

    #[test]
    fn torn_tail_mid_record_is_truncated_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, good) = three_batches(dir.path());
        let len = fs::metadata(&seg).unwrap().len();
        // Cut the last record in half: the whole last batch goes (all or nothing).
        let cut = len - frame_len(&entry(8)) / 2;
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        assert_recovers_to_six(dir.path(), &seg, good, "partial record");
    }

    #[test]
    fn torn_tail_in_frame_header_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, good) = three_batches(dir.path());
        // Only the first three bytes of the last batch's first header made it.
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(good + 3)
            .unwrap();
        assert_recovers_to_six(dir.path(), &seg, good, "partial frame header");
    }

    #[test]
    fn flipped_payload_byte_is_truncated_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, good) = three_batches(dir.path());
        let mut bytes = fs::read(&seg).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 0x40;
        fs::write(&seg, bytes).unwrap();
        assert_recovers_to_six(dir.path(), &seg, good, "CRC mismatch");
    }

    #[test]
    fn garbage_length_after_the_last_record_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, _) = three_batches(dir.path());
        let len = fs::metadata(&seg).unwrap().len();
        let mut file = OpenOptions::new().append(true).open(&seg).unwrap();
        file.write_all(&[0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4, 5, 6, 7, 8, 9])
            .unwrap();
        drop(file);
        let (spool, report) = Spool::open(dir.path(), MIB).unwrap();
        assert_eq!(report.truncated.len(), 1);
        assert!(report.truncated[0].reason.contains("bad record length"));
        assert_eq!(report.truncated[0].at_offset, len);
        assert_eq!(report.truncated[0].dropped_bytes, 13);
        assert_eq!(report.entries, 9);
        spool.append(&entries(50..51)).unwrap();
        let mut want = entries(0..9);
        want.push(entry(50));
        assert_eq!(drain(&spool), want);
    }

    #[test]
    fn garbage_length_in_the_last_batch_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, good) = three_batches(dir.path());
        let mut bytes = fs::read(&seg).unwrap();
        bytes[good as usize..good as usize + 4].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
        fs::write(&seg, bytes).unwrap();
        assert_recovers_to_six(dir.path(), &seg, good, "bad record length");
    }

    #[test]
    fn zero_filled_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, _) = three_batches(dir.path());
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len + 4096)
            .unwrap();
        let (spool, report) = Spool::open(dir.path(), MIB).unwrap();
        assert_eq!(report.truncated.len(), 1);
        assert_eq!(report.truncated[0].at_offset, len);
        assert_eq!(report.truncated[0].dropped_bytes, 4096);
        assert_eq!(drain(&spool), entries(0..9));
    }

    #[test]
    fn records_after_the_last_batch_end_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, good) = three_batches(dir.path());
        // Keep two complete records of the last batch, lose its final (batch-end) record.
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - frame_len(&entry(8)))
            .unwrap();
        assert_recovers_to_six(dir.path(), &seg, good, "incomplete batch");
    }

    #[test]
    fn damage_in_an_older_segment_loses_only_that_segments_rest() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _) = Spool::open_with_segment_bytes(dir.path(), MIB, 1).unwrap();
            for i in 0..3 {
                spool.append(&entries(i * 2..i * 2 + 2)).unwrap();
            }
        }
        let segs = segment_files(dir.path());
        assert_eq!(segs.len(), 3);
        let mut bytes = fs::read(&segs[1]).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 1;
        fs::write(&segs[1], bytes).unwrap();
        let (spool, report) = Spool::open_with_segment_bytes(dir.path(), MIB, 1).unwrap();
        assert_eq!(report.truncated.len(), 1);
        assert_eq!(report.truncated[0].segment, segs[1]);
        assert_eq!(report.truncated[0].at_offset, 0);
        let mut want = entries(0..2);
        want.extend(entries(4..6));
        assert_eq!(drain(&spool), want);
    }

    #[test]
    fn full_writes_nothing_and_acknowledging_frees_space() {
        let dir = tempfile::tempdir().unwrap();
        let batch = entries(0..4);
        let batch_bytes: u64 = batch.iter().map(frame_len).sum();
        let max = batch_bytes * 2 + batch_bytes / 2;
        let (spool, _) = Spool::open_with_segment_bytes(dir.path(), max, 1024).unwrap();
        spool.append(&batch).unwrap();
        spool.append(&entries(4..8)).unwrap();
        let held = spool.bytes();
        let disk: u64 = segment_files(dir.path())
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        match spool.append(&entries(8..12)) {
            Err(SpoolError::Full { max_bytes, needed }) => {
                assert_eq!(max_bytes, max);
                assert_eq!(needed, entries(8..12).iter().map(frame_len).sum::<u64>());
            }
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(spool.bytes(), held);
        let disk_after: u64 = segment_files(dir.path())
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(disk_after, disk, "nothing written");

        let peeked = spool.peek(4).unwrap();
        spool.acknowledge(peeked[3].0).unwrap();
        spool.append(&entries(8..12)).unwrap();
        assert_eq!(drain(&spool), entries(4..12));

        // A batch larger than the whole spool is Full too.
        assert!(matches!(
            spool.append(&entries(0..20)),
            Err(SpoolError::Full { .. })
        ));
        assert!(spool.is_empty());
    }

    #[test]
    fn oversized_entry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), u64::MAX).unwrap();
        let mut e = entry(1);
        e.data = Bytes::from(vec![0u8; MAX_PAYLOAD_BYTES as usize]);
        assert!(matches!(
            spool.append(&[entry(0), e]),
            Err(SpoolError::TooLarge { .. })
        ));
        assert!(spool.is_empty());
        assert!(segment_files(dir.path()).is_empty());
    }

    #[test]
    fn invalid_position_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(dir.path(), MIB).unwrap();
        spool.append(&entries(0..2)).unwrap();
        let bogus = SpoolPosition {
            segment: 99,
            offset: 0,
            frame_len: 10,
        };
        assert!(matches!(
            spool.acknowledge(bogus),
            Err(SpoolError::InvalidPosition { .. })
        ));
        assert_eq!(spool.peek(10).unwrap().len(), 2);
    }

    #[test]
    fn corrupt_checkpoint_replays_from_the_oldest_segment() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _) = Spool::open(dir.path(), MIB).unwrap();
            spool.append(&entries(0..5)).unwrap();
            let p = spool.peek(2).unwrap();
            spool.acknowledge(p[1].0).unwrap();
        }
        let ck = dir.path().join(CHECKPOINT_FILE);
        let mut bytes = fs::read(&ck).unwrap();
        bytes[10] ^= 0xff;
        fs::write(&ck, bytes).unwrap();
        let (spool, report) = Spool::open(dir.path(), MIB).unwrap();
        assert!(report.checkpoint_problem.unwrap().contains("CRC mismatch"));
        assert_eq!(drain(&spool), entries(0..5));
    }

    #[test]
    fn checkpoint_off_a_record_boundary_moves_back() {
        let dir = tempfile::tempdir().unwrap();
        let seq;
        {
            let (spool, _) = Spool::open(dir.path(), MIB).unwrap();
            spool.append(&entries(0..5)).unwrap();
            let p = spool.peek(5).unwrap();
            seq = p[0].0.segment();
            // Point the checkpoint into the middle of the third record.
            write_checkpoint(
                &SegmentDir::new(dir.path(), SEGMENT_SUFFIX),
                Cursor {
                    segment: seq,
                    offset: p[2].0.offset() + 3,
                },
            )
            .unwrap();
        }
        let (spool, report) = Spool::open(dir.path(), MIB).unwrap();
        assert!(report.checkpoint_problem.is_some());
        assert_eq!(report.entries, 3);
        assert_eq!(drain(&spool), entries(2..5));
    }

    #[test]
    fn leftovers_from_a_crash_during_acknowledge_are_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (spool, _) = Spool::open_with_segment_bytes(dir.path(), MIB, 1).unwrap();
            for i in 0..3 {
                spool.append(&entries(i * 2..i * 2 + 2)).unwrap();
            }
        }
        let segs = segment_files(dir.path());
        let first_seq = SegmentDir::new(dir.path(), SEGMENT_SUFFIX)
            .parse_segment_name(segs[0].file_name().unwrap().to_str().unwrap())
            .unwrap();
        // Checkpoint already at segment 2, segments 0 and 1 not yet deleted, temp file left.
        write_checkpoint(
            &SegmentDir::new(dir.path(), SEGMENT_SUFFIX),
            Cursor {
                segment: first_seq + 2,
                offset: 0,
            },
        )
        .unwrap();
        fs::write(dir.path().join(CHECKPOINT_TMP_FILE), b"junk").unwrap();
        let (spool, report) = Spool::open_with_segment_bytes(dir.path(), MIB, 1).unwrap();
        assert_eq!(report.segments, 1);
        assert_eq!(report.entries, 2);
        assert_eq!(segment_files(dir.path()), segs[2..]);
        assert!(!dir.path().join(CHECKPOINT_TMP_FILE).exists());
        assert_eq!(drain(&spool), entries(4..6));
    }
}
