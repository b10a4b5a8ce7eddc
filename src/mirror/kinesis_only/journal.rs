//! The files behind [`super::state::SyntheticLog`]: an append-only journal of events and a
//! snapshot that compacts them, both made of the same checksummed frames.
//!
//! # On-disk format
//!
//! The directory holds:
//!
//! * `journal-NNNNNNNNNNNNNNNNNNNN` (20-digit generation): frames appended as the state changes.
//!   Compaction starts the next generation; recovery replays, in order, every journal whose
//!   generation is at least the snapshot's, so a crash at any point of a compaction loses nothing.
//! * `snapshot`: the whole state as frames, ending with an `End` frame that names the journal
//!   generation that continues it and counts the frames before it. Replaced atomically
//!   (`snapshot.tmp`, fsync, rename, directory fsync).
//! * `LOCK`: an advisory lock held while the state is open, so two processes cannot share it.
//!
//! A frame is `[u32 payload length][u32 CRC-32C of payload][payload]`, little-endian like the
//! payload:
//!
//! ```text
//! u8 kind: 1 Assigned, 2 Raised, 3 Delivered, 4 End (snapshots only)
//! Assigned:  u16 len + UTF-8 topic, i32 partition, i64 base_offset, i32 record_count,
//!            u8 idempotent (0/1), then if 1: i64 producer_id, i16 epoch, i32 first_seq, i32 last_seq
//! Raised:    u16 len + UTF-8 topic, i32 partition, i64 next_offset
//! Delivered: u16 len + UTF-8 topic, i32 partition, i64 base_offset
//! End:       u64 journal generation, u64 frames before it
//! ```
//!
//! A journal's torn or damaged tail is cut at the last intact frame when it is opened (a crash
//! mid-append tears at most the entries no `sync` had confirmed). A damaged snapshot is an
//! error: guessing would risk handing out offsets twice.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::state::SyntheticLogError;

const FRAME_HEADER_BYTES: usize = 8;
/// No event comes near this; a larger length read back is damage, not a frame.
const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
const JOURNAL_PREFIX: &str = "journal-";
const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TMP_FILE: &str = "snapshot.tmp";
pub(super) const LOCK_FILE: &str = "LOCK";

const KIND_ASSIGNED: u8 = 1;
const KIND_RAISED: u8 = 2;
const KIND_DELIVERED: u8 = 3;
const KIND_END: u8 = 4;

/// One change of the state, as journaled and as replayed: what happened to which partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Event<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub change: Change,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// A new batch took `record_count` offsets from `base_offset` on.
    Assigned {
        base_offset: i64,
        record_count: i32,
        producer: Option<ProducerBatch>,
    },
    /// The partition's counter was raised to at least `next_offset` (a floor from Kafka).
    Raised { next_offset: i64 },
    /// The batch at `base_offset` is entirely in Kinesis.
    Delivered { base_offset: i64 },
}

/// The idempotent-producer identity of an assigned batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
}

/// Appends `event` as one frame to `out`.
pub(super) fn encode_frame(event: &Event<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    out.push(match event.change {
        Change::Assigned { .. } => KIND_ASSIGNED,
        Change::Raised { .. } => KIND_RAISED,
        Change::Delivered { .. } => KIND_DELIVERED,
    });
    // Events exist only for topics `Ledger::decide` accepted: at most 249 bytes.
    debug_assert!(event.topic.len() <= super::ledger::MAX_TOPIC_BYTES);
    out.extend_from_slice(&(event.topic.len() as u16).to_le_bytes());
    out.extend_from_slice(event.topic.as_bytes());
    out.extend_from_slice(&event.partition.to_le_bytes());
    match event.change {
        Change::Assigned {
            base_offset,
            record_count,
            producer,
        } => {
            out.extend_from_slice(&base_offset.to_le_bytes());
            out.extend_from_slice(&record_count.to_le_bytes());
            match producer {
                None => out.push(0),
                Some(p) => {
                    out.push(1);
                    out.extend_from_slice(&p.producer_id.to_le_bytes());
                    out.extend_from_slice(&p.epoch.to_le_bytes());
                    out.extend_from_slice(&p.first_seq.to_le_bytes());
                    out.extend_from_slice(&p.last_seq.to_le_bytes());
                }
            }
        }
        Change::Raised { next_offset } => out.extend_from_slice(&next_offset.to_le_bytes()),
        Change::Delivered { base_offset } => out.extend_from_slice(&base_offset.to_le_bytes()),
    }
    seal_frame(out, start);
}

fn encode_end(journal_generation: u64, frames: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    out.push(KIND_END);
    out.extend_from_slice(&journal_generation.to_le_bytes());
    out.extend_from_slice(&frames.to_le_bytes());
    seal_frame(out, start);
}

/// Fills in the header of the frame that starts at `start` and runs to the end of `out`.
fn seal_frame(out: &mut [u8], start: usize) {
    let payload = &out[start + FRAME_HEADER_BYTES..];
    let len = payload.len() as u32;
    let crc = crc32c::crc32c(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A decoded frame.
enum Frame<'a> {
    Event(Event<'a>),
    End {
        journal_generation: u64,
        frames: u64,
    },
}

/// Reads a payload; `None` when it is not a well-formed frame payload.
fn decode_payload(payload: &[u8]) -> Option<Frame<'_>> {
    let mut r = Reader(payload);
    let kind = r.take::<1>()?[0];
    if kind == KIND_END {
        let journal_generation = u64::from_le_bytes(r.take()?);
        let frames = u64::from_le_bytes(r.take()?);
        return r.finished(Frame::End {
            journal_generation,
            frames,
        });
    }
    let topic_len = u16::from_le_bytes(r.take()?) as usize;
    let topic = std::str::from_utf8(r.bytes(topic_len)?).ok()?;
    let partition = i32::from_le_bytes(r.take()?);
    let change = match kind {
        KIND_ASSIGNED => Change::Assigned {
            base_offset: i64::from_le_bytes(r.take()?),
            record_count: i32::from_le_bytes(r.take()?),
            producer: match r.take::<1>()?[0] {
                0 => None,
                1 => Some(ProducerBatch {
                    producer_id: i64::from_le_bytes(r.take()?),
                    epoch: i16::from_le_bytes(r.take()?),
                    first_seq: i32::from_le_bytes(r.take()?),
                    last_seq: i32::from_le_bytes(r.take()?),
                }),
                _ => return None,
            },
        },
        KIND_RAISED => Change::Raised {
            next_offset: i64::from_le_bytes(r.take()?),
        },
        KIND_DELIVERED => Change::Delivered {
            base_offset: i64::from_le_bytes(r.take()?),
        },
        _ => return None,
    };
    let event = Event {
        topic,
        partition,
        change,
    };
    r.finished(Frame::Event(event))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N).map(|b| b.try_into().expect("length checked"))
    }

    /// `value` if every byte was read: trailing bytes mean a payload of another format.
    fn finished<T>(&self, value: T) -> Option<T> {
        self.0.is_empty().then_some(value)
    }
}

/// Where the frames of a file stop being intact, and why.
struct Damage {
    offset: u64,
    reason: &'static str,
}

/// Calls `each` for every intact frame of `bytes`, in order, up to the first damaged one.
fn scan_frames<'a>(bytes: &'a [u8], mut each: impl FnMut(Frame<'a>)) -> Option<Damage> {
    let mut at = 0;
    while at < bytes.len() {
        let damage = |reason| {
            Some(Damage {
                offset: at as u64,
                reason,
            })
        };
        let Some(header) = bytes.get(at..at + FRAME_HEADER_BYTES) else {
            return damage("partial frame header");
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len > MAX_PAYLOAD_BYTES {
            return damage("bad frame length");
        }
        let start = at + FRAME_HEADER_BYTES;
        let Some(payload) = bytes.get(start..start + len) else {
            return damage("partial frame");
        };
        if crc32c::crc32c(payload) != crc {
            return damage("CRC mismatch");
        }
        let Some(frame) = decode_payload(payload) else {
            return damage("undecodable frame");
        };
        each(frame);
        at = start + len;
    }
    None
}

pub(super) fn io_err<'a>(
    operation: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SyntheticLogError + 'a {
    move |source| SyntheticLogError::Io {
        operation,
        path: path.to_owned(),
        source,
    }
}

/// Takes the advisory lock `dir/name`, held as long as the returned file is open.
pub(super) fn lock_dir(dir: &Path, name: &str) -> Result<File, SyntheticLogError> {
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let path = dir.join(name);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("open", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(SyntheticLogError::Locked { path }),
        Err(fs::TryLockError::Error(e)) if e.kind() == io::ErrorKind::Unsupported => {
            tracing::warn!(lock = %path.display(),
                "file locking unsupported; the kinesis-only state is not protected against a second process");
            Ok(file)
        }
        Err(fs::TryLockError::Error(e)) => Err(io_err("lock", &path)(e)),
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), SyntheticLogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

/// Replaces `dir/name` with `bytes` atomically and durably.
pub(super) fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), SyntheticLogError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(bytes).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("fsync", &tmp))?;
    drop(file);
    let path = dir.join(name);
    fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
    sync_dir(dir)
}

/// Reads `dir/name`, or `None` when it does not exist.
pub(super) fn read_if_exists(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, SyntheticLogError> {
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &path)(e)),
    }
}

fn journal_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("{JOURNAL_PREFIX}{generation:020}"))
}

/// The journal file events are appended to.
pub(super) struct Journal {
    path: PathBuf,
    generation: u64,
    /// Shared with the task that fsyncs it outside the state's lock.
    file: Arc<File>,
    len: u64,
}

impl Journal {
    /// Starts journal `generation` in `dir`; its directory entry is durable only after the next
    /// directory fsync.
    pub(super) fn create(dir: &Path, generation: u64) -> Result<Journal, SyntheticLogError> {
        let path = journal_path(dir, generation);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err("create", &path))?;
        Ok(Journal {
            path,
            generation,
            file: Arc::new(file),
            len: 0,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    pub(super) fn len(&self) -> u64 {
        self.len
    }

    pub(super) fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Appends whole frames. On failure the file is cut back to its previous length, so a
    /// later append cannot land behind a torn frame; `Err(true)` when even that failed and the
    /// journal must take nothing more.
    pub(super) fn append(&mut self, frames: &[u8]) -> Result<(), (SyntheticLogError, bool)> {
        match (&*self.file).write_all(frames) {
            Ok(()) => {
                self.len += frames.len() as u64;
                Ok(())
            }
            Err(e) => {
                let torn = self.file.set_len(self.len).is_err();
                Err((io_err("write", &self.path)(e), torn))
            }
        }
    }
}

/// Builds the snapshot of a state whose frames `write_frames` appends (returning how many), to
/// be continued by journal `journal_generation`.
pub(super) fn encode_snapshot(
    journal_generation: u64,
    write_frames: impl FnOnce(&mut Vec<u8>) -> u64,
) -> Vec<u8> {
    let mut out = Vec::new();
    let frames = write_frames(&mut out);
    encode_end(journal_generation, frames, &mut out);
    out
}

/// Makes `snapshot` (from [`encode_snapshot`]) the state's base and deletes the journals it
/// replaces (those before `journal_generation`).
pub(super) fn install_snapshot(
    dir: &Path,
    snapshot: &[u8],
    journal_generation: u64,
) -> Result<(), SyntheticLogError> {
    replace_file(dir, SNAPSHOT_FILE, snapshot)?;
    for (generation, path) in journals(dir)? {
        if generation < journal_generation {
            if let Err(e) = fs::remove_file(&path) {
                // The snapshot supersedes it already; the next open deletes it.
                tracing::warn!(journal = %path.display(), error = %e,
                    "could not delete a compacted kinesis-only journal");
            }
        }
    }
    Ok(())
}

/// The journal files of `dir`, by generation.
fn journals(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SyntheticLogError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        let generation = name
            .to_str()
            .and_then(|n| n.strip_prefix(JOURNAL_PREFIX))
            .and_then(|g| g.parse::<u64>().ok());
        if let Some(generation) = generation {
            found.push((generation, entry.path()));
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Replays the state in `dir` through `apply` (snapshot first, then journals in order), repairs
/// torn journal tails, and returns the journal to continue.
pub(super) fn recover(
    dir: &Path,
    mut apply: impl FnMut(Event<'_>),
) -> Result<Journal, SyntheticLogError> {
    let _ = fs::remove_file(dir.join(SNAPSHOT_TMP_FILE));
    let mut first_generation = 0;
    if let Some(bytes) = read_if_exists(dir, SNAPSHOT_FILE)? {
        first_generation = replay_snapshot(&dir.join(SNAPSHOT_FILE), &bytes, &mut apply)?;
    }
    let mut last = None;
    for (generation, path) in journals(dir)? {
        if generation < first_generation {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            continue;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let mut bytes = Vec::new();
        (&file)
            .read_to_end(&mut bytes)
            .map_err(io_err("read", &path))?;
        let damage = scan_frames(&bytes, |frame| {
            if let Frame::Event(event) = frame {
                apply(event);
            }
        });
        let mut len = bytes.len() as u64;
        if let Some(damage) = damage {
            tracing::warn!(journal = %path.display(), offset = damage.offset, reason = damage.reason,
                dropped_bytes = len - damage.offset,
                "kinesis-only journal has a torn tail; truncating it");
            file.set_len(damage.offset)
                .map_err(io_err("truncate", &path))?;
            len = damage.offset;
        }
        // What a crashed process appended but never synced is replayed now, so it must be as
        // durable as what this process will acknowledge on top of it.
        file.sync_all().map_err(io_err("fsync", &path))?;
        last = Some(Journal {
            path,
            generation,
            file: Arc::new(file),
            len,
        });
    }
    match last {
        Some(journal) => Ok(journal),
        None => {
            let journal = Journal::create(dir, first_generation)?;
            sync_dir(dir)?;
            Ok(journal)
        }
    }
}

/// Replays a snapshot; returns the generation of the journal that continues it.
fn replay_snapshot(
    path: &Path,
    bytes: &[u8],
    apply: &mut impl FnMut(Event<'_>),
) -> Result<u64, SyntheticLogError> {
    let corrupt = |offset, reason: &str| SyntheticLogError::Corrupt {
        path: path.to_owned(),
        offset,
        reason: reason.to_owned(),
    };
    let mut frames = 0u64;
    let mut end = None;
    let damage = scan_frames(bytes, |frame| match frame {
        Frame::Event(event) if end.is_none() => {
            frames += 1;
            apply(event);
        }
        Frame::Event(_) => frames = u64::MAX,
        Frame::End {
            journal_generation,
            frames: counted,
        } => end = Some((journal_generation, counted)),
    });
    if let Some(damage) = damage {
        return Err(corrupt(damage.offset, damage.reason));
    }
    match end {
        Some((generation, counted)) if counted == frames => Ok(generation),
        _ => Err(corrupt(
            bytes.len() as u64,
            "snapshot does not end with its end frame",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events() -> Vec<Event<'static>> {
        let at = |topic, partition, change| Event {
            topic,
            partition,
            change,
        };
        vec![
            at(
                "orders",
                3,
                Change::Assigned {
                    base_offset: 42,
                    record_count: 7,
                    producer: Some(ProducerBatch {
                        producer_id: 1 << 40,
                        epoch: 2,
                        first_seq: i32::MAX - 2,
                        last_seq: 3,
                    }),
                },
            ),
            at(
                "t",
                0,
                Change::Assigned {
                    base_offset: 0,
                    record_count: 1,
                    producer: None,
                },
            ),
            at("t", 1, Change::Raised { next_offset: 1_000 }),
            at("orders", 3, Change::Delivered { base_offset: 42 }),
        ]
    }

    fn encoded(events: &[Event<'_>]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for event in events {
            encode_frame(event, &mut bytes);
        }
        bytes
    }

    #[test]
    fn frames_round_trip() {
        let bytes = encoded(&events());
        let mut read = Vec::new();
        let damage = scan_frames(&bytes, |frame| match frame {
            Frame::Event(e) => read.push(e),
            Frame::End { .. } => panic!("no end frame written"),
        });
        assert!(damage.is_none());
        assert_eq!(read, events());
    }

    #[test]
    fn damage_stops_the_scan_at_the_damaged_frame() {
        let mut bytes = encoded(&events());
        let first = encoded(&events()[..1]);
        let flipped = first.len() + 10;
        bytes[flipped] ^= 0xff;
        let mut count = 0;
        let damage = scan_frames(&bytes, |_| count += 1).expect("damaged");
        assert_eq!((count, damage.offset), (1, first.len() as u64));
        assert_eq!(damage.reason, "CRC mismatch");
    }
}
