//! Opening the log after a restart: every segment is scanned, a torn or corrupt tail is cut
//! at the last intact frame and reported, and the exchanges not complete are found, with the
//! records of theirs already settled. Their bytes are read again only when replayed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::appender::{Command, LogPosition, LogState, Segment};
use super::entry::{decode, Entry, Logged, LoggedExchange, MAX_PAYLOAD_BYTES, MIN_PAYLOAD_BYTES};
use super::marks::ExchangeLog;
use super::{read_logged, WalError};
use crate::kinesis::segment_log::SegmentDir;
use crate::mirror::TxnControlExchange;

/// What the log holds that the mirror still owes Kinesis.
pub(crate) struct Recovery {
    pub(super) state: LogState,
    /// The first id free for new exchanges.
    pub(super) next_id: u64,
    pub(crate) replay: Replay,
}

/// The exchanges to replay, read a few at a time.
pub(crate) struct Replay {
    files: SegmentDir,
    /// The exchanges not complete, and every transaction-control entry, in log order.
    pending: Vec<Found>,
    next: usize,
    settled: HashMap<u64, HashSet<(u32, i64)>>,
    commands: Option<Sender<Command>>,
    /// Records handed on by the replay, counted by their marks.
    pub(crate) records: Arc<AtomicU64>,
}

/// One entry to replay, found in a scan.
struct Found {
    segment: u64,
    offset: u64,
    bytes: u64,
    /// A Produce exchange's id and time; `None` for transaction control.
    exchange: Option<(u64, u64)>,
}

/// An entry to hand to the stage again.
pub(crate) enum Replayed {
    Exchange(LoggedExchange, Arc<ExchangeLog>),
    TxnControl(TxnControlExchange),
}

pub(super) fn recover(files: &SegmentDir) -> Result<Recovery, WalError> {
    let mut found = Vec::new();
    let mut complete = HashSet::new();
    let mut settled: HashMap<u64, HashSet<(u32, i64)>> = HashMap::new();
    let mut segments = BTreeMap::new();
    let mut max_id = None::<u64>;
    for seq in files.list()? {
        let mut check = |offset: u64, payload: bytes::Bytes| {
            let bytes = payload.len() as u64;
            let found_at = |exchange| Found {
                segment: seq,
                offset,
                bytes,
                exchange,
            };
            match decode(payload)? {
                Entry::Logged(Logged::Exchange(e)) => {
                    max_id = max_id.max(Some(e.id));
                    found.push(found_at(Some((e.id, e.unix_ms))));
                }
                Entry::Logged(Logged::TxnControl { .. }) => found.push(found_at(None)),
                Entry::Settled(records) => {
                    for r in records {
                        max_id = max_id.max(Some(r.exchange));
                        settled
                            .entry(r.exchange)
                            .or_default()
                            .insert((r.partition_index, r.offset));
                    }
                }
                Entry::Complete(ids) => {
                    max_id = max_id.max(ids.iter().copied().max());
                    complete.extend(ids);
                }
            }
            Ok(true)
        };
        let scan = files.scan(seq, (MIN_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES), &mut check)?;
        if let Some(reason) = scan.reason {
            files.truncate(seq, scan.good_len)?;
            tracing::warn!(
                file = %files.segment_path(seq).display(),
                offset = scan.good_len,
                dropped_bytes = scan.file_len - scan.good_len,
                %reason,
                "write-ahead log tail truncated"
            );
        }
        segments.insert(
            seq,
            Segment {
                len: scan.good_len,
                ..Segment::default()
            },
        );
    }
    let mut open = HashMap::new();
    let mut pending = Vec::new();
    for f in found {
        if let Some((id, unix_ms)) = f.exchange {
            if complete.contains(&id) {
                continue;
            }
            let segment = segments.get_mut(&f.segment).expect("scanned segment");
            segment.open_exchanges += 1;
            segment.first_unix_ms.get_or_insert(unix_ms);
            open.insert(id, f.segment);
        }
        pending.push(f);
    }
    settled.retain(|id, _| open.contains_key(id));
    // Ids only grow, across restarts too, even when every segment was deleted: a mark left in
    // the log must never name a later exchange.
    let now_micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    Ok(Recovery {
        state: LogState { segments, open },
        next_id: max_id.map_or(0, |m| m + 1).max(now_micros),
        replay: Replay {
            files: files.clone(),
            pending,
            next: 0,
            settled,
            commands: None,
            records: Arc::new(AtomicU64::new(0)),
        },
    })
}

/// What a replay found, for its log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ReplaySize {
    pub(crate) exchanges: usize,
    pub(crate) bytes: u64,
    /// Records settled before the restart, which the replay skips.
    pub(crate) skipped_delivered: usize,
}

impl Replay {
    pub(super) fn attach(&mut self, commands: Sender<Command>) {
        self.commands = Some(commands);
    }

    pub(crate) fn size(&self) -> ReplaySize {
        ReplaySize {
            exchanges: self.pending.iter().filter(|f| f.exchange.is_some()).count(),
            bytes: self.remaining_bytes(),
            skipped_delivered: self.settled.values().map(HashSet::len).sum(),
        }
    }

    pub(crate) fn remaining_bytes(&self) -> u64 {
        self.pending[self.next..].iter().map(|f| f.bytes).sum()
    }

    /// The next `max` entries to replay, in log order, each exchange with its entry in the
    /// log; empty once all were read. Blocking file reads.
    pub(crate) fn next_entries(&mut self, max: usize) -> Result<Vec<Replayed>, WalError> {
        let commands = self.commands.clone().ok_or(WalError::Closed)?;
        let end = (self.next + max).min(self.pending.len());
        let mut out = Vec::with_capacity(end - self.next);
        for found in &self.pending[self.next..end] {
            let position = LogPosition {
                segment: found.segment,
                offset: found.offset,
                bytes: found.bytes,
            };
            let exchange = match read_logged(&self.files, position.segment, position.offset)? {
                Logged::Exchange(exchange) => exchange,
                control => {
                    let control = control.into_txn_control().expect("not an exchange");
                    out.push(Replayed::TxnControl(control));
                    continue;
                }
            };
            let settled = self.settled.remove(&exchange.id).unwrap_or_default();
            let log = ExchangeLog::new(
                (exchange.id, position),
                commands.clone(),
                settled,
                Some((
                    self.records.clone(),
                    UNIX_EPOCH + std::time::Duration::from_millis(exchange.unix_ms),
                )),
            );
            out.push(Replayed::Exchange(exchange, log));
        }
        self.next = end;
        Ok(out)
    }
}
