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

mod checkpoint;
mod entry;
mod reader;
mod recovery;
mod stranded;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

pub use super::segment_log::FRAME_HEADER_BYTES;
use super::segment_log::{self, SegmentDir, SegmentLogError};
use checkpoint::write_checkpoint;
use entry::encode_frame;
pub use entry::{SpoolEntry, MAX_PAYLOAD_BYTES};
pub use recovery::{RecoveryReport, TruncatedTail};
pub use stranded::streams_with_records;

/// Segment size at which a new segment is started.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

const SEGMENT_SUFFIX: &str = ".spool";

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
}
