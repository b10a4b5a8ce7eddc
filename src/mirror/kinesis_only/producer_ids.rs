//! Producer ids for InitProducerId when there is no Kafka to allocate them (standalone
//! kinesis-only mode).
//!
//! Ids are handed out from blocks of [`BLOCK_SIZE`]: the end of a block is made durable before
//! the first id of it is handed out, and a restart continues at that end, so an id is never
//! handed out twice even when a crash loses the rest of a block. Ids start at [`FIRST_ID`],
//! far above the ids a Kafka cluster allocates (from 0, in blocks of 1000), so that a producer
//! that got its id from Kafka before a cutover cannot share it with one that gets it here.
//!
//! The file `producer-ids` in the directory holds the end of the current block: `b"KKPPIDS"`,
//! a format version byte (1), the end as `i64`, and a CRC-32C of those 16 bytes, little-endian.
//! It is replaced atomically. `producer-ids.lock` keeps a second process out, so the directory
//! can be the one [`super::state::SyntheticLog`] uses.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::journal::{self, lock_dir};
use super::state::SyntheticLogError;

/// Ids per block persisted at once.
const BLOCK_SIZE: i64 = 1000;
/// The first id ever handed out.
const FIRST_ID: i64 = 1 << 40;
const FILE: &str = "producer-ids";
const LOCK: &str = "producer-ids.lock";
const MAGIC: &[u8; 7] = b"KKPPIDS";
const VERSION: u8 = 1;
const FILE_BYTES: usize = 20;

/// Producer ids for InitProducerId in standalone mode: unique across restarts.
pub(crate) struct ProducerIds {
    dir: PathBuf,
    block: tokio::sync::Mutex<Block>,
    _lock: File,
}

/// Ids `next..end` may be handed out; `end` is durable.
struct Block {
    next: i64,
    end: i64,
}

impl ProducerIds {
    pub(crate) fn open(dir: &Path) -> Result<ProducerIds, SyntheticLogError> {
        let lock = lock_dir(dir, LOCK)?;
        let end = match journal::read_if_exists(dir, FILE)? {
            Some(bytes) => decode(&bytes).ok_or_else(|| SyntheticLogError::Corrupt {
                path: dir.join(FILE),
                offset: 0,
                reason: "not a producer-id block end".into(),
            })?,
            None => FIRST_ID,
        };
        Ok(ProducerIds {
            dir: dir.to_owned(),
            // The rest of the block a previous run was using may have been handed out.
            block: tokio::sync::Mutex::new(Block { next: end, end }),
            _lock: lock,
        })
    }

    /// A fresh (producer_id, epoch 0).
    pub(crate) async fn next(&self) -> Result<(i64, i16), SyntheticLogError> {
        let mut block = self.block.lock().await;
        if block.next == block.end {
            let end = block.end + BLOCK_SIZE;
            let dir = self.dir.clone();
            tokio::task::spawn_blocking(move || journal::replace_file(&dir, FILE, &encode(end)))
                .await??;
            block.end = end;
        }
        let id = block.next;
        block.next += 1;
        Ok((id, 0))
    }
}

fn encode(end: i64) -> [u8; FILE_BYTES] {
    let mut out = [0; FILE_BYTES];
    out[..7].copy_from_slice(MAGIC);
    out[7] = VERSION;
    out[8..16].copy_from_slice(&end.to_le_bytes());
    let crc = crc32c::crc32c(&out[..16]);
    out[16..].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<i64> {
    let bytes: &[u8; FILE_BYTES] = bytes.try_into().ok()?;
    let crc = u32::from_le_bytes(bytes[16..].try_into().expect("4 bytes"));
    let valid = &bytes[..7] == MAGIC && bytes[7] == VERSION && crc32c::crc32c(&bytes[..16]) == crc;
    valid.then(|| i64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::mirror::kinesis_only::state::SyntheticLog;

    async fn take(ids: &ProducerIds, n: usize) -> Vec<i64> {
        let mut taken = Vec::with_capacity(n);
        for _ in 0..n {
            let (id, epoch) = ids.next().await.unwrap();
            assert_eq!(epoch, 0);
            taken.push(id);
        }
        taken
    }

    #[tokio::test]
    async fn ids_stay_unique_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = Vec::new();
        for run in 0..3 {
            let ids = ProducerIds::open(dir.path()).unwrap();
            // The second run crosses a block boundary inside the run.
            let n = if run == 1 { 1_500 } else { 5 };
            all.extend(take(&ids, n).await);
        }
        let unique: HashSet<i64> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len());
        assert_eq!(all[0], FIRST_ID);
        assert!(all.windows(2).all(|w| w[0] < w[1]), "increasing");
        // Each reopen skips what is left of the block the run before was using.
        assert_eq!(all[5], FIRST_ID + BLOCK_SIZE);
        assert_eq!(all[5 + 1_500], FIRST_ID + 3 * BLOCK_SIZE);
    }

    #[tokio::test]
    async fn a_damaged_block_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let ids = ProducerIds::open(dir.path()).unwrap();
            take(&ids, 1).await;
        }
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[9] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            ProducerIds::open(dir.path()),
            Err(SyntheticLogError::Corrupt { .. })
        ));
    }

    #[tokio::test]
    async fn shares_a_directory_with_the_synthetic_log_but_not_with_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let log = SyntheticLog::open(dir.path()).unwrap();
        let ids = ProducerIds::open(dir.path()).unwrap();
        assert!(matches!(
            ProducerIds::open(dir.path()),
            Err(SyntheticLogError::Locked { .. })
        ));
        take(&ids, 1).await;
        // Not a journal: the log reopens with the id file beside it.
        drop(log);
        SyntheticLog::open(dir.path()).unwrap();
    }
}
