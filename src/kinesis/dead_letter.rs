//! The dead-letter file: records that can never be delivered to Kinesis, one JSON object per
//! line, each with the reason it was given up on.
//!
//! Each line is an object with exactly these fields:
//!
//! ```text
//! {"stream":"s","topic":"t","partition":0,"offset":42,"partition_key":"k",
//!  "explicit_hash_key":null,"error_code":"ValidationException","message":"...",
//!  "time":"2024-05-01T12:00:00.123Z","data":"aGVsbG8="}
//! ```
//!
//! `explicit_hash_key` is the decimal string Kinesis takes, or `null`; `time` is RFC 3339 in
//! UTC; `data` is the record's bytes in standard base64 (with padding).
//!
//! Durability: [`DeadLetterFile::append`] returns after the lines are written and the file is
//! fdatasynced. A crash during an append can leave a partial last line; [`DeadLetterFile::open`]
//! cuts such a line off (it belongs to an append that never returned) and logs it, so later
//! lines stay parseable.
//!
//! Bounds: with [`DeadLetterLimits`], the file rotates once it holds `max_bytes` (to
//! `NAME.1.jsonl`, `NAME.2.jsonl`..., numbered oldest first), and at most `rotated_files` rotated
//! files are kept. The proxy never deletes one (only `spool replay` consumes them), so when all
//! are full an append fails with [`DeadLetterError::Full`] and the writer blocks instead.
//!
//! All methods do blocking file I/O; call them from `spawn_blocking` in async code.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use serde::{Deserialize, Serialize};

use super::spool::SpoolEntry;
use crate::config::DeadLetterLimits;

/// One record given up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub stream: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub partition_key: String,
    /// Decimal, as Kinesis takes it.
    #[serde(default)]
    pub explicit_hash_key: Option<String>,
    pub error_code: String,
    pub message: String,
    /// RFC 3339, UTC.
    pub time: String,
    /// The record's bytes, standard base64 with padding.
    #[serde(rename = "data")]
    pub data_base64: String,
}

impl DeadLetter {
    /// The dead letter for a spooled entry that failed with `error_code`/`message` at `time`.
    pub fn from_entry(
        entry: &SpoolEntry,
        error_code: impl Into<String>,
        message: impl Into<String>,
        time: SystemTime,
    ) -> DeadLetter {
        DeadLetter {
            stream: entry.stream.clone(),
            topic: entry.topic.clone(),
            partition: entry.partition,
            offset: entry.offset,
            partition_key: entry.partition_key.clone(),
            explicit_hash_key: entry.explicit_hash_key.map(|h| h.to_string()),
            error_code: error_code.into(),
            message: message.into(),
            time: rfc3339_utc(time),
            data_base64: BASE64.encode(&entry.data),
        }
    }

    /// The record's bytes, decoded from `data`.
    pub fn data(&self) -> Result<Vec<u8>, base64::DecodeError> {
        BASE64.decode(&self.data_base64)
    }

    /// The explicit hash key parsed back to a number.
    pub fn explicit_hash_key_u128(&self) -> Result<Option<u128>, std::num::ParseIntError> {
        self.explicit_hash_key
            .as_deref()
            .map(str::parse::<u128>)
            .transpose()
    }
}

/// `time` as RFC 3339 in UTC with milliseconds, e.g. `2024-05-01T12:00:00.123Z`.
pub fn rfc3339_utc(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("dead-letter file I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A line of the file does not hold a dead letter.
    #[error("{}:{line}: malformed dead letter: {reason}", path.display())]
    Malformed {
        path: PathBuf,
        /// 1-based.
        line: usize,
        reason: String,
    },
    #[error("could not encode a dead letter: {0}")]
    Encode(#[from] serde_json::Error),
    /// The file and every rotated file it may keep are full.
    #[error("dead-letter space full: {} holds {max_bytes} bytes or more and {rotated_files} rotated files are kept (spool.dead_letter_max_bytes, spool.dead_letter_rotated_files); replay them with `spool replay`", path.display())]
    Full {
        path: PathBuf,
        max_bytes: u64,
        rotated_files: u32,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DeadLetterError + '_ {
    move |source| DeadLetterError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The dead-letter file, open for appending. Internally synchronized; `Send + Sync`.
pub struct DeadLetterFile {
    path: PathBuf,
    /// Serializes appends. The file is opened anew for each append, so that `spool replay`
    /// can rename it away while the proxy runs: new dead letters then start a fresh file.
    lock: Mutex<()>,
    /// `None`: unbounded (what `spool replay` uses to put letters back).
    limits: Option<DeadLetterLimits>,
}

impl DeadLetterFile {
    /// Opens `path` for appending, creating it and its parent directories. A partial last line
    /// left by a crash is cut off (and logged).
    pub fn open(path: &Path) -> Result<Self, DeadLetterError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err(path))?;
        repair_torn_line(&mut file, path)?;
        Ok(DeadLetterFile {
            path: path.to_owned(),
            lock: Mutex::new(()),
            limits: None,
        })
    }

    /// Rotates and caps the file as `limits` say.
    pub fn with_limits(mut self, limits: DeadLetterLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// The rotated files of `path`, oldest first.
    pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
        rotated(path).into_iter().map(|(_, p)| p).collect()
    }

    /// Renames the full file to the next rotated name, unless `limits.rotated_files` are kept.
    fn rotate(&self, limits: DeadLetterLimits) -> Result<(), DeadLetterError> {
        let rotated = rotated(&self.path);
        if rotated.len() >= limits.rotated_files as usize {
            return Err(DeadLetterError::Full {
                path: self.path.clone(),
                max_bytes: limits.max_bytes,
                rotated_files: limits.rotated_files,
            });
        }
        let next = rotated.last().map_or(1, |(n, _)| n + 1);
        let to = rotated_name(&self.path, next).ok_or_else(|| DeadLetterError::Io {
            path: self.path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a file name"),
        })?;
        fs::rename(&self.path, &to).map_err(io_err(&self.path))?;
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // The rename is durable before letters go to the new file.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))?;
        }
        tracing::info!(file = %self.path.display(), rotated_to = %to.display(), "dead-letter file rotated");
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one JSON line per letter, then flushes and fdatasyncs before returning.
    pub fn append(&self, letters: &[DeadLetter]) -> Result<(), DeadLetterError> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for letter in letters {
            serde_json::to_writer(&mut buf, letter)?;
            buf.push(b'\n');
        }
        let _serialized = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let open = || {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(io_err(&self.path))
        };
        let mut file = open()?;
        let mut len = file.metadata().map_err(io_err(&self.path))?.len();
        // A file that holds something rotates before it would pass the limit; an empty one
        // takes the append whatever its size, so that no letter is too large ever to go.
        if let Some(limits) = self.limits {
            if len > 0 && len + buf.len() as u64 > limits.max_bytes {
                drop(file);
                self.rotate(limits)?;
                file = open()?;
                len = 0;
            }
        }
        let result = file
            .write_all(&buf)
            .and_then(|_| file.flush())
            .and_then(|_| file.sync_data());
        if let Err(e) = result {
            // Leave no partial line behind for the next append to run into.
            let _ = file.set_len(len);
            return Err(io_err(&self.path)(e));
        }
        Ok(())
    }

    /// Reads every dead letter in `path`. Blank lines are skipped; a line that is not a dead
    /// letter (bad JSON, a missing field, or `data` that is not base64) is an error naming
    /// `path:line`.
    pub fn read_all(path: &Path) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let file = File::open(path).map_err(io_err(path))?;
        let mut letters = Vec::new();
        for (i, line) in BufReader::new(file).split(b'\n').enumerate() {
            let line = line.map_err(io_err(path))?;
            let malformed = |reason: String| DeadLetterError::Malformed {
                path: path.to_owned(),
                line: i + 1,
                reason,
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let letter: DeadLetter =
                serde_json::from_slice(&line).map_err(|e| malformed(e.to_string()))?;
            letter
                .data()
                .map_err(|e| malformed(format!("field `data`: {e}")))?;
            letter
                .explicit_hash_key_u128()
                .map_err(|e| malformed(format!("field `explicit_hash_key`: {e}")))?;
            letters.push(letter);
        }
        Ok(letters)
    }
}

/// `NAME.N.EXT` for `NAME.EXT`.
fn rotated_name(path: &Path, n: u64) -> Option<PathBuf> {
    let stem = path.file_stem()?.to_str()?;
    let name = match path.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("{stem}.{n}.{ext}"),
        None => format!("{stem}.{n}"),
    };
    Some(path.with_file_name(name))
}

/// The rotated files of `path` with their numbers, oldest (lowest) first.
fn rotated(path: &Path) -> Vec<(u64, PathBuf)> {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem().and_then(|s| s.to_str())) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let suffix = path
        .extension()
        .and_then(|e| e.to_str())
        .map_or(String::new(), |e| format!(".{e}"));
    let prefix = format!("{stem}.");
    let mut found: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let n = name
                .strip_prefix(&prefix)?
                .strip_suffix(&suffix)?
                .parse()
                .ok()?;
            Some((n, entry.path()))
        })
        .collect();
    found.sort();
    found
}

/// Cuts the file back to its last newline when it does not end with one.
fn repair_torn_line(file: &mut File, path: &Path) -> Result<(), DeadLetterError> {
    let len = file.metadata().map_err(io_err(path))?.len();
    if len == 0 {
        return Ok(());
    }
    // Search backwards for the last newline, a block at a time.
    const BLOCK: u64 = 64 * 1024;
    let mut end = len;
    let mut keep = None;
    let mut buf = vec![0u8; BLOCK as usize];
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start)).map_err(io_err(path))?;
        file.read_exact(chunk).map_err(io_err(path))?;
        if end == len && chunk.last() == Some(&b'\n') {
            return Ok(());
        }
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            keep = Some(start + i as u64 + 1);
            break;
        }
        end = start;
    }
    let keep = keep.unwrap_or(0);
    tracing::warn!(
        file = %path.display(),
        dropped_bytes = len - keep,
        "dead-letter file ended in a partial line (an append interrupted by a crash); cut it off"
    );
    file.set_len(keep).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use std::time::UNIX_EPOCH;

    fn letter(i: u8, data: &[u8]) -> DeadLetter {
        DeadLetter {
            stream: "mirror".into(),
            topic: "orders".into(),
            partition: i32::from(i),
            offset: 1000 + i64::from(i),
            partition_key: format!("key-\"{i}\"\n\u{e9}"),
            explicit_hash_key: (i % 2 == 1).then(|| u128::MAX.to_string()),
            error_code: "ValidationException".into(),
            message: format!("record {i} too large"),
            time: rfc3339_utc(UNIX_EPOCH + Duration::from_millis(1_714_564_800_123)),
            data_base64: BASE64.encode(data),
        }
    }

    #[test]
    fn dead_letter_file_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<DeadLetterFile>();
    }

    #[test]
    fn append_and_read_all_round_trip_binary_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/dead-letters.jsonl");
        let all_bytes: Vec<u8> = (0..=255).collect();
        let letters = vec![
            letter(0, &all_bytes),
            letter(1, b""),
            letter(2, &[0, 0xff, b'\n', b'"']),
            letter(3, b"x"),
        ];
        {
            let file = DeadLetterFile::open(&path).unwrap();
            file.append(&letters[..2]).unwrap();
            file.append(&[]).unwrap();
        }
        // Reopening appends rather than truncates.
        DeadLetterFile::open(&path)
            .unwrap()
            .append(&letters[2..])
            .unwrap();

        let back = DeadLetterFile::read_all(&path).unwrap();
        assert_eq!(back, letters);
        assert_eq!(back[0].data().unwrap(), all_bytes);
        assert_eq!(back[2].data().unwrap(), [0, 0xff, b'\n', b'"']);
        assert_eq!(back[1].explicit_hash_key_u128().unwrap(), Some(u128::MAX));

        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4);
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        let mut keys: Vec<&str> = first
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "data",
                "error_code",
                "explicit_hash_key",
                "message",
                "offset",
                "partition",
                "partition_key",
                "stream",
                "time",
                "topic"
            ]
        );
        assert_eq!(first["time"], "2024-05-01T12:00:00.123Z");
        assert!(first["explicit_hash_key"].is_null());
    }

    #[test]
    fn from_entry_carries_the_record() {
        let entry = SpoolEntry {
            stream: "s".into(),
            partition_key: "k".into(),
            explicit_hash_key: Some(12345),
            data: bytes::Bytes::from_static(b"\x00\x01payload"),
            topic: "t".into(),
            partition: 3,
            offset: 77,
            enqueued_unix_ms: 1,
        };
        let l = DeadLetter::from_entry(&entry, "E", "boom", UNIX_EPOCH);
        assert_eq!(l.explicit_hash_key.as_deref(), Some("12345"));
        assert_eq!(l.time, "1970-01-01T00:00:00.000Z");
        assert_eq!(l.data().unwrap(), b"\x00\x01payload");
        assert_eq!((l.partition, l.offset), (3, 77));
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl.jsonl");
        let good = serde_json::to_string(&letter(0, b"ok")).unwrap();
        let cases = [
            "{not json".to_owned(),
            r#"{"stream":"s"}"#.to_owned(),
            good.replace(&BASE64.encode(b"ok"), "!!!!"),
        ];
        for bad in cases {
            fs::write(&path, format!("{good}\n\n{bad}\n{good}\n")).unwrap();
            let err = DeadLetterFile::read_all(&path).unwrap_err();
            match &err {
                DeadLetterError::Malformed { path: p, line, .. } => {
                    assert_eq!(p, &path);
                    assert_eq!(*line, 3);
                }
                other => panic!("unexpected error {other:?}"),
            }
            let shown = err.to_string();
            assert!(
                shown.starts_with(&format!("{}:3: ", path.display())),
                "{shown}"
            );
        }
    }

    #[test]
    fn open_cuts_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dl.jsonl");
        let good = serde_json::to_string(&letter(0, b"ok")).unwrap();
        fs::write(&path, format!("{good}\n{}", &good[..20])).unwrap();
        let file = DeadLetterFile::open(&path).unwrap();
        file.append(&[letter(1, b"next")]).unwrap();
        let back = DeadLetterFile::read_all(&path).unwrap();
        assert_eq!(back, vec![letter(0, b"ok"), letter(1, b"next")]);

        // A file that is one partial line is emptied.
        fs::write(&path, &good[..10]).unwrap();
        DeadLetterFile::open(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    }

    /// The file rotates once the next append would pass `max_bytes`, rotated files are kept
    /// oldest first up to `rotated_files`, and then appends fail as full rather than drop or
    /// delete anything.
    #[test]
    fn the_file_rotates_at_its_limit_keeps_its_rotated_files_and_then_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead-letters.jsonl");
        let line = serde_json::to_string(&letter(0, b"x")).unwrap().len() as u64 + 1;
        let file = DeadLetterFile::open(&path)
            .unwrap()
            .with_limits(DeadLetterLimits {
                max_bytes: 2 * line,
                rotated_files: 2,
            });
        for i in 0..6 {
            file.append(&[letter(0, b"x")])
                .unwrap_or_else(|e| panic!("letter {i}: {e}"));
        }
        let rotated = DeadLetterFile::rotated_files(&path);
        assert_eq!(
            rotated,
            [
                dir.path().join("dead-letters.1.jsonl"),
                dir.path().join("dead-letters.2.jsonl")
            ]
        );
        for file in rotated.iter().chain([&path]) {
            assert_eq!(
                fs::metadata(file).unwrap().len(),
                2 * line,
                "{}",
                file.display()
            );
        }
        match file.append(&[letter(0, b"x")]) {
            Err(DeadLetterError::Full {
                rotated_files: 2, ..
            }) => {}
            other => panic!("expected full, got {other:?}"),
        }
        assert_eq!(
            DeadLetterFile::read_all(&path).unwrap().len(),
            2,
            "nothing dropped"
        );
        // Once `spool replay` took the rotated files, there is room again.
        for file in &rotated {
            fs::remove_file(file).unwrap();
        }
        file.append(&[letter(0, b"x")]).unwrap();
        assert_eq!(DeadLetterFile::rotated_files(&path).len(), 1);
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.jsonl");
        match DeadLetterFile::read_all(&path) {
            Err(DeadLetterError::Io { path: p, .. }) => assert_eq!(p, path),
            other => panic!("unexpected {other:?}"),
        }
    }
}
