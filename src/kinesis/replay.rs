//! `spool replay`: re-sends the dead letters of a file once the operator has fixed their cause
//! (created the stream, granted access, raised the record size limit...).
//!
//! The file is first renamed to a snapshot, so a running proxy (which opens the file anew for
//! each append) starts a fresh one and nothing it writes meanwhile is lost or sent twice. Letters
//! that still cannot be delivered are appended back to the file, with their new error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::client::{describe, Clients, DEFAULT_MAX_RECORD_BYTES};
use super::dead_letter::{DeadLetter, DeadLetterError, DeadLetterFile};
use super::request::{entry, MirrorRecord, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES};
use super::retry::{is_retryable, Backoff};
use super::service::{EntryOutcome, PutRecordsService};
use crate::kinesis::request::KinesisKey;

/// Attempts per letter before it goes back to the file.
const ATTEMPTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    DeadLetters(#[from] DeadLetterError),
    #[error("{path}: cannot take a snapshot of the dead-letter file: {source}")]
    Snapshot {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    pub total: usize,
    pub delivered: usize,
    /// Still undeliverable; appended back to the file.
    pub failed: usize,
}

fn record_of(letter: &DeadLetter) -> MirrorRecord {
    MirrorRecord {
        topic: Arc::from(letter.topic.as_str()),
        partition: letter.partition,
        offset: letter.offset,
        offset_from_kafka: false,
        key: KinesisKey {
            partition_key: letter.partition_key.clone(),
            // read_all refuses letters whose hash key or data does not decode.
            explicit_hash_key: letter
                .explicit_hash_key_u128()
                .expect("validated by read_all"),
        },
        data: letter.data().expect("validated by read_all").into(),
        acked_at: Instant::now(),
        delivery: None,
        logged: None,
    }
}

/// Re-sends every dead letter in `path`; `progress(done, total)` is called once the file is
/// read and as letters settle.
pub async fn replay_dead_letters(
    clients: &Clients,
    path: &Path,
    progress: impl Fn(usize, usize),
) -> Result<ReplaySummary, ReplayError> {
    // Snapshots an earlier replay left when it crashed still hold their letters: the ones
    // it had sent are sent again (Kinesis has no idempotent put), none is lost.
    let mut snapshots = leftover_snapshots(path);
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // The rotated files, oldest first, then the file itself: stamps in that order keep it.
    let files = DeadLetterFile::rotated_files(path)
        .into_iter()
        .chain(path.exists().then(|| path.to_owned()));
    for (i, file) in files.enumerate() {
        let snapshot = path.with_extension(format!("{SNAPSHOT_EXTENSION}{}", stamp + i as u128));
        std::fs::rename(&file, &snapshot).map_err(|source| ReplayError::Snapshot {
            path: file.clone(),
            source,
        })?;
        snapshots.push(snapshot);
    }
    if snapshots.is_empty() {
        return Ok(ReplaySummary::default());
    }
    let mut letters = Vec::new();
    for snapshot in &snapshots {
        letters.extend(DeadLetterFile::read_all(snapshot)?);
    }
    let mut summary = ReplaySummary {
        total: letters.len(),
        ..ReplaySummary::default()
    };
    progress(0, summary.total);
    let mut by_stream: BTreeMap<String, Vec<DeadLetter>> = BTreeMap::new();
    for letter in letters {
        by_stream
            .entry(letter.stream.clone())
            .or_default()
            .push(letter);
    }
    let mut still_failing = Vec::new();
    for (stream, letters) in by_stream {
        // Letters name their stream by its route's label, which says its region and role.
        let client = clients.client_for_label(&stream).await;
        let service = PutRecordsService::new(client.clone(), &stream);
        // The proxy's own rule: a record over the stream's limit is never sent.
        let limit = describe(&client, &stream)
            .await
            .map_or(DEFAULT_MAX_RECORD_BYTES, |info| info.max_record_bytes);
        let (letters, oversize): (Vec<DeadLetter>, Vec<DeadLetter>) = letters
            .into_iter()
            .partition(|l| l.data().map_or(0, |d| d.len()) + l.partition_key.len() <= limit);
        summary.failed += oversize.len();
        still_failing.extend(oversize);
        let mut rest = letters.as_slice();
        while !rest.is_empty() {
            let mut bytes = 0;
            let take = rest
                .iter()
                .take(MAX_BATCH_ENTRIES)
                .take_while(|l| {
                    bytes += l.data().map_or(0, |d| d.len()) + l.partition_key.len();
                    bytes <= MAX_BATCH_BYTES
                })
                .count()
                .max(1);
            let (batch, tail) = rest.split_at(take);
            rest = tail;
            let failed = send_with_retries(&service, batch.to_vec()).await;
            summary.delivered += batch.len() - failed.len();
            summary.failed += failed.len();
            still_failing.extend(failed);
            progress(summary.delivered + summary.failed, summary.total);
        }
    }
    if !still_failing.is_empty() {
        DeadLetterFile::open(path)?.append(&still_failing)?;
    }
    for snapshot in snapshots {
        std::fs::remove_file(&snapshot).map_err(|source| ReplayError::Snapshot {
            path: snapshot.clone(),
            source,
        })?;
    }
    Ok(summary)
}

/// What a replay renames the dead-letter file to while it works: `NAME.replaying-STAMP`.
const SNAPSHOT_EXTENSION: &str = "replaying-";

/// Snapshots of `path` left by replays that did not finish, oldest first.
fn leftover_snapshots(path: &Path) -> Vec<std::path::PathBuf> {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem().and_then(|s| s.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{stem}.{SNAPSHOT_EXTENSION}");
    let mut found: Vec<(u128, std::path::PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let stamp = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((stamp, entry.path()))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, path)| path).collect()
}

/// Sends `letters` to `stream`, resending failed entries with backoff; returns those that never
/// went, updated with their latest error.
async fn send_with_retries(
    service: &PutRecordsService,
    mut letters: Vec<DeadLetter>,
) -> Vec<DeadLetter> {
    let backoff = Backoff::default();
    let mut gave_up = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let entries = letters.iter().map(|l| entry(&record_of(l))).collect();
        let outcomes = match service.put(entries, None).await {
            Ok(outcomes) => outcomes,
            Err(super::service::RequestFailure {
                read_back: Some(outcomes),
                ..
            }) => outcomes,
            Err(failure) => {
                let code = failure.code.unwrap_or_else(|| "RequestFailed".to_owned());
                vec![
                    EntryOutcome::Failed {
                        code,
                        message: failure.message,
                    };
                    letters.len()
                ]
            }
        };
        let now = super::dead_letter::rfc3339_utc(SystemTime::now());
        let mut retry = Vec::new();
        // The service answers one outcome per entry, so none is taken for delivered unseen.
        for (mut letter, outcome) in letters.into_iter().zip(outcomes) {
            let EntryOutcome::Failed { code, message } = outcome else {
                continue;
            };
            letter.time = now.clone();
            let retryable = is_retryable(Some(&code));
            letter.error_code = code;
            letter.message = message;
            if retryable {
                retry.push(letter);
            } else {
                gave_up.push(letter);
            }
        }
        letters = retry;
        if letters.is_empty() {
            break;
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff.delay(attempt)).await;
        }
    }
    gave_up.extend(letters);
    gave_up
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::spool::SpoolEntry;
    use crate::kinesis::test_support::{control_plane, FakeKinesis};
    use serde_json::json;

    fn letter(offset: i64) -> DeadLetter {
        let entry = SpoolEntry {
            stream: "s".to_owned(),
            partition_key: format!("key-{offset}"),
            explicit_hash_key: None,
            data: bytes::Bytes::from(format!("value-{offset}")),
            topic: "orders".to_owned(),
            partition: 0,
            offset,
            enqueued_unix_ms: 0,
        };
        DeadLetter::from_entry(&entry, "AccessDeniedException", "denied", SystemTime::now())
    }

    fn write_letters(path: &Path, offsets: std::ops::Range<i64>) {
        DeadLetterFile::open(path)
            .expect("open")
            .append(&offsets.map(letter).collect::<Vec<_>>())
            .expect("append");
    }

    /// A replay that crashed left its snapshot: the next replay sends those letters too, and
    /// removes the snapshot.
    #[tokio::test(start_paused = true)]
    async fn a_snapshot_left_by_a_crashed_replay_is_replayed() {
        let fake = FakeKinesis::new(|operation, body| {
            control_plane(operation)
                .unwrap_or_else(|| crate::kinesis::test_support::all_stored(body))
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dead-letters.jsonl");
        let crashed = dir.path().join("dead-letters.replaying-1700000000000");
        write_letters(&crashed, 0..2);
        write_letters(&path, 2..3);
        let summary = replay_dead_letters(&fake.clients(), &path, |_, _| {})
            .await
            .expect("replay");
        assert_eq!(
            summary,
            ReplaySummary {
                total: 3,
                delivered: 3,
                failed: 0
            }
        );
        assert!(!crashed.exists() && !path.exists());
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Rotated dead-letter files are replayed too, oldest first, and consumed.
    #[tokio::test(start_paused = true)]
    async fn rotated_files_are_replayed_in_order() {
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let fake = FakeKinesis::new({
            let sent = sent.clone();
            move |operation, body| {
                control_plane(operation).unwrap_or_else(|| {
                    sent.lock()
                        .expect("lock")
                        .extend(crate::kinesis::test_support::entry_data(body));
                    crate::kinesis::test_support::all_stored(body)
                })
            }
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dead-letters.jsonl");
        write_letters(&dir.path().join("dead-letters.1.jsonl"), 0..2);
        write_letters(&dir.path().join("dead-letters.2.jsonl"), 2..4);
        write_letters(&path, 4..5);
        let summary = replay_dead_letters(&fake.clients(), &path, |_, _| {})
            .await
            .expect("replay");
        assert_eq!((summary.total, summary.delivered), (5, 5));
        let expected: Vec<String> = (0..5).map(|o| format!("value-{o}")).collect();
        assert_eq!(*sent.lock().expect("lock"), expected);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Kinesis answering one result, a success, whatever the request holds: the letters it
    /// did not answer for must stay in the file, not be counted delivered and deleted.
    #[tokio::test(start_paused = true)]
    async fn a_short_answer_keeps_the_unanswered_letters() {
        let fake = FakeKinesis::new(|operation, _| {
            control_plane(operation).unwrap_or((
                200,
                json!({"FailedRecordCount": 0,
                    "Records": [{"SequenceNumber": "1", "ShardId": "shardId-0"}]}),
            ))
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dead-letters.jsonl");
        write_letters(&path, 0..3);
        let summary = replay_dead_letters(&fake.clients(), &path, |_, _| {})
            .await
            .expect("replay");
        assert_eq!(
            summary,
            ReplaySummary {
                total: 3,
                delivered: 0,
                failed: 3
            }
        );
        let left = DeadLetterFile::read_all(&path).expect("letters written back");
        let offsets: Vec<i64> = left.iter().map(|l| l.offset).collect();
        assert_eq!(offsets, vec![0, 1, 2]);
    }
}
