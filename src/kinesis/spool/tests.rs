use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::checkpoint::{write_checkpoint, CHECKPOINT_FILE, CHECKPOINT_TMP_FILE};
use super::entry::{decode_payload, encode_frame, encoded_payload_len};
use super::segment_log::parse_header;
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
