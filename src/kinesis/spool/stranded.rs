//! Spools left on disk by streams no route names any more, found so they can still drain.

use std::fs;
use std::path::Path;

use super::checkpoint::CHECKPOINT_FILE;
use super::segment_log::SegmentDir;
use super::{Spool, SEGMENT_SUFFIX};

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
