//! The checkpoint file: the position of the first unacknowledged record, replaced atomically.

use std::fs;
use std::io;
use std::path::Path;

use super::segment_log::SegmentDir;
use super::{io_err, Cursor, SpoolError};

pub(super) const CHECKPOINT_FILE: &str = "checkpoint";
pub(super) const CHECKPOINT_TMP_FILE: &str = "checkpoint.tmp";
const CHECKPOINT_MAGIC: &[u8; 7] = b"KKPSPCK";
const CHECKPOINT_VERSION: u8 = 1;
const CHECKPOINT_BYTES: usize = 28;

/// The outer result is an I/O error; the inner one a checkpoint that exists but is unusable.
pub(super) fn read_checkpoint(path: &Path) -> Result<Result<Option<Cursor>, String>, SpoolError> {
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

pub(super) fn write_checkpoint(segment_files: &SegmentDir, at: Cursor) -> Result<(), SpoolError> {
    let mut bytes = Vec::with_capacity(CHECKPOINT_BYTES);
    bytes.extend_from_slice(CHECKPOINT_MAGIC);
    bytes.push(CHECKPOINT_VERSION);
    bytes.extend_from_slice(&at.segment.to_le_bytes());
    bytes.extend_from_slice(&at.offset.to_le_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());

    Ok(segment_files.replace_file(CHECKPOINT_FILE, CHECKPOINT_TMP_FILE, &bytes)?)
}
