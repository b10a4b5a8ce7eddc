//! Opening a spool: recovery of its segments and checkpoint after a restart or a crash.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use super::checkpoint::{read_checkpoint, CHECKPOINT_FILE, CHECKPOINT_TMP_FILE};
use super::entry::{decode_payload, MAX_PAYLOAD_BYTES, MIN_PAYLOAD_BYTES};
use super::segment_log::{self, SegmentDir};
use super::{io_err, Cursor, Inner, Spool, SpoolError, DEFAULT_SEGMENT_BYTES, SEGMENT_SUFFIX};

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
}

/// Scans a spool segment: a batch ends at a record flagged as its batch's last.
fn scan_segment(segment_files: &SegmentDir, seq: u64) -> Result<segment_log::Scan, SpoolError> {
    let mut check = |_, payload| decode_payload(&payload).map(|(_, batch_end)| batch_end);
    Ok(segment_files.scan(seq, (MIN_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES), &mut check)?)
}
