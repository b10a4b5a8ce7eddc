//! The on-disk machinery shared by the spool and the mirror's write-ahead log: a directory of
//! numbered segment files holding checksummed frames, locked against a second process, whose
//! torn or corrupt tails are found by a scan and cut off.
//!
//! A frame is `[u32 payload length][u32 CRC-32C (Castagnoli) of payload][payload]`,
//! little-endian. Segment files are named `NNNNNNNNNNNNNNNNNNNN<suffix>` (20-digit zero-padded
//! sequence number). What a payload means, and which frames end a unit that must be kept
//! whole, is the user's: [`SegmentDir::scan`] asks it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

pub const FRAME_HEADER_BYTES: u64 = 8;
const SEGMENT_DIGITS: usize = 20;
const LOCK_FILE: &str = "LOCK";

#[derive(Debug, thiserror::Error)]
pub enum SegmentLogError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another process (or another log in this process) has the directory open.
    #[error("directory is in use (lock held on {path})")]
    Locked { path: PathBuf },
}

pub fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SegmentLogError + '_ {
    move |source| SegmentLogError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A directory of segments named with `suffix`.
#[derive(Debug, Clone)]
pub struct SegmentDir {
    dir: PathBuf,
    suffix: &'static str,
}

/// What a scan of one segment found.
pub struct Scan {
    pub file_len: u64,
    /// End of the last intact unit (the last frame the payload check called a unit's end).
    pub good_len: u64,
    /// Start offsets of the frames kept.
    pub frames: Vec<u64>,
    /// Why the tail after `good_len` is dropped, if there is one.
    pub reason: Option<String>,
}

/// A payload's verdict during a scan: whether it ends its unit, or why it is damaged.
pub type PayloadCheck<'a> = dyn FnMut(u64, Bytes) -> Result<bool, String> + 'a;

impl SegmentDir {
    /// The segments named with `suffix` in `dir`, which may not exist.
    pub fn new(dir: &Path, suffix: &'static str) -> SegmentDir {
        SegmentDir {
            dir: dir.to_owned(),
            suffix,
        }
    }

    /// [`SegmentDir::new`], creating `dir` if needed.
    pub fn create(dir: &Path, suffix: &'static str) -> Result<SegmentDir, SegmentLogError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(SegmentDir::new(dir, suffix))
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn segment_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!(
            "{seq:0width$}{}",
            self.suffix,
            width = SEGMENT_DIGITS
        ))
    }

    pub fn parse_segment_name(&self, name: &str) -> Option<u64> {
        let digits = name.strip_suffix(self.suffix)?;
        if digits.len() != SEGMENT_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// The segments' sequence numbers, sorted.
    pub fn list(&self) -> Result<Vec<u64>, SegmentLogError> {
        let mut seqs = Vec::new();
        for dirent in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let dirent = dirent.map_err(io_err(&self.dir))?;
            if let Some(seq) = dirent
                .file_name()
                .to_str()
                .and_then(|n| self.parse_segment_name(n))
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Takes the directory's advisory lock, held as long as the returned file is open.
    pub fn lock(&self) -> Result<File, SegmentLogError> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(fs::TryLockError::WouldBlock) => Err(SegmentLogError::Locked { path }),
            Err(fs::TryLockError::Error(e)) if e.kind() == io::ErrorKind::Unsupported => {
                tracing::warn!(lock = %path.display(), "file locking unsupported; the directory is not protected against a second process");
                Ok(file)
            }
            Err(fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
        }
    }

    /// Makes file creations, renames and deletions in the directory durable.
    #[cfg(unix)]
    pub fn sync(&self) -> Result<(), SegmentLogError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }

    #[cfg(not(unix))]
    pub fn sync(&self) -> Result<(), SegmentLogError> {
        Ok(())
    }

    /// Creates segment `seq`, empty, with its directory entry durable.
    pub fn create_segment(&self, seq: u64) -> Result<File, SegmentLogError> {
        let path = self.segment_path(seq);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if let Err(e) = self.sync() {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(file)
    }

    /// Cuts segment `seq` to `len` bytes, durably.
    pub fn truncate(&self, seq: u64, len: u64) -> Result<(), SegmentLogError> {
        let path = self.segment_path(seq);
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.set_len(len).map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))
    }

    /// Replaces the file `name` with `bytes` atomically: a temp file, fsynced, renamed over it,
    /// and the directory fsynced.
    pub fn replace_file(
        &self,
        name: &str,
        tmp_name: &str,
        bytes: &[u8],
    ) -> Result<(), SegmentLogError> {
        let tmp = self.dir.join(tmp_name);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        let path = self.dir.join(name);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        self.sync()
    }

    /// Reads segment `seq` frame by frame, asking `check` about each intact payload (with its
    /// frame's offset), and finds where its last intact unit ends. Frames of `min..=max`
    /// payload bytes are valid lengths.
    pub fn scan(
        &self,
        seq: u64,
        (min, max): (u32, u32),
        check: &mut PayloadCheck<'_>,
    ) -> Result<Scan, SegmentLogError> {
        let path = self.segment_path(seq);
        let file = File::open(&path).map_err(io_err(&path))?;
        let file_len = file.metadata().map_err(io_err(&path))?.len();
        let mut reader = BufReader::with_capacity(1024 * 1024, file);
        let mut offset = 0u64;
        let mut good_len = 0u64;
        let mut frames = Vec::new();
        let mut pending = Vec::new();
        let reason = loop {
            let remaining = file_len - offset;
            if remaining == 0 {
                if pending.is_empty() {
                    break None;
                }
                break Some(format!(
                    "incomplete batch: {} record(s) after the last batch-end marker",
                    pending.len()
                ));
            }
            if remaining < FRAME_HEADER_BYTES {
                break Some(format!("partial frame header ({remaining} bytes)"));
            }
            let mut header = [0u8; FRAME_HEADER_BYTES as usize];
            reader.read_exact(&mut header).map_err(io_err(&path))?;
            let (plen, crc) = parse_header(&header);
            if !(min..=max).contains(&plen) {
                break Some(format!("bad record length {plen} at offset {offset}"));
            }
            if u64::from(plen) > remaining - FRAME_HEADER_BYTES {
                break Some(format!(
                    "partial record at offset {offset}: length {plen}, {} bytes present",
                    remaining - FRAME_HEADER_BYTES
                ));
            }
            let mut payload = vec![0u8; plen as usize];
            reader.read_exact(&mut payload).map_err(io_err(&path))?;
            if crc32c::crc32c(&payload) != crc {
                break Some(format!("CRC mismatch in record at offset {offset}"));
            }
            let unit_end = match check(offset, Bytes::from(payload)) {
                Ok(unit_end) => unit_end,
                Err(e) => break Some(format!("undecodable record at offset {offset}: {e}")),
            };
            pending.push(offset);
            offset += FRAME_HEADER_BYTES + u64::from(plen);
            if unit_end {
                frames.append(&mut pending);
                good_len = offset;
            }
        };
        Ok(Scan {
            file_len,
            good_len,
            frames,
            reason,
        })
    }
}

impl SegmentDir {
    /// The payload of the frame at `offset` of segment `seq`, checked against its checksum.
    pub fn read_frame(&self, seq: u64, offset: u64, max: u32) -> Result<Bytes, SegmentLogError> {
        let path = self.segment_path(seq);
        let corrupt = |reason: &str| {
            io_err(&path)(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame at offset {offset}: {reason}"),
            ))
        };
        let mut file = File::open(&path).map_err(io_err(&path))?;
        file.seek(SeekFrom::Start(offset)).map_err(io_err(&path))?;
        let mut header = [0u8; FRAME_HEADER_BYTES as usize];
        file.read_exact(&mut header).map_err(io_err(&path))?;
        let (len, crc) = parse_header(&header);
        if len > max {
            return Err(corrupt("bad length"));
        }
        let mut payload = vec![0u8; len as usize];
        file.read_exact(&mut payload).map_err(io_err(&path))?;
        if crc32c::crc32c(&payload) != crc {
            return Err(corrupt("CRC mismatch"));
        }
        Ok(Bytes::from(payload))
    }
}

pub fn parse_header(header: &[u8; FRAME_HEADER_BYTES as usize]) -> (u32, u32) {
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    (len, crc)
}

/// Starts a frame in `out`: reserves its header, to be filled in by [`end_frame`] once the
/// payload follows. Returns where the frame starts.
pub fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES as usize]);
    start
}

/// Writes the header of the frame begun at `start`: the payload's length and checksum.
pub fn end_frame(out: &mut [u8], start: usize) {
    let payload_start = start + FRAME_HEADER_BYTES as usize;
    let len = (out.len() - payload_start) as u32;
    let crc = crc32c::crc32c(&out[payload_start..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..payload_start].copy_from_slice(&crc.to_le_bytes());
}
