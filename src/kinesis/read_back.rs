//! Finding out what a PutRecords whose fate is unknown stored, so that only what is absent is
//! sent again.
//!
//! A request that timed out, or whose connection was cut after it was sent, may be stored
//! whole, in part or not at all, and Kinesis has no idempotent put. Before its entries are
//! resent, the shards they route to are read back: from just after the last record the shard
//! acknowledged before the request was sent (AFTER_SEQUENCE_NUMBER, which no clock skew can
//! fool), or, when this writer has no such record, from a little before the request was sent
//! (AT_TIMESTAMP). Each entry is matched by partition key and a digest of its data, counting
//! multiplicity, so that identical records (heartbeats) cannot hide each other.
//!
//! The reads are bounded: they happen only after such failures, at most [`READ_PAGES`]
//! GetRecords calls of 10,000 records per shard, paced to Kinesis' 5 calls per second per
//! shard, within [`READ_LIMIT`]. A shard that cannot be read within them has its entries
//! resent.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::client::NamesStream;
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, Shard, ShardIteratorType};
use aws_sdk_kinesis::Client;
use futures::StreamExt;
use tokio::time::Instant;
use xxhash_rust::xxh3::xxh3_64;

use super::client::{list_all_shards, StreamError};
use super::shard_map::hash_key;

/// Waited before reading: a request that timed out may still be settling inside Kinesis.
const SETTLE: Duration = Duration::from_secs(1);
/// The most one read-back takes, after [`SETTLE`]; shards not read by then are unreadable.
const READ_LIMIT: Duration = Duration::from_secs(10);
/// GetRecords pages read per shard at most: a window longer than that is unreadable.
const READ_PAGES: usize = 5;
/// Records per GetRecords call, Kinesis' maximum (a call also stops at 10 MiB).
const PAGE_RECORDS: i32 = 10_000;
/// Kinesis allows 5 GetRecords (and 5 GetShardIterator) calls per second per shard.
const SHARD_CALL_INTERVAL: Duration = Duration::from_millis(200);
/// How far before the request an AT_TIMESTAMP read starts, for the clocks' skew.
const TIMESTAMP_MARGIN: Duration = Duration::from_secs(1);
/// Shards read at once.
const SHARDS_AT_ONCE: usize = 8;
/// Acknowledged positions kept per shard: enough that one of them precedes any request in
/// flight.
const HISTORY: usize = 16;

/// Whether a failed request may have stored its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFate {
    /// Kinesis answered with a client error (4xx): nothing was stored.
    Refused,
    /// The request never left: it could not be built, or the connection was refused.
    NotSent,
    /// Sent, with no readable answer (a timeout, a connection cut, a 5xx, a malformed
    /// answer): any of its entries may be stored.
    Unknown,
}

/// What a failed request may have stored, from the SDK's error.
pub fn classify<E: std::error::Error + 'static>(error: &SdkError<E, HttpResponse>) -> RequestFate {
    match error {
        SdkError::ConstructionFailure(_) => RequestFate::NotSent,
        SdkError::DispatchFailure(_) if connection_refused(error) => RequestFate::NotSent,
        SdkError::ServiceError(e) if e.raw().status().is_server_error() => RequestFate::Unknown,
        SdkError::ServiceError(_) => RequestFate::Refused,
        _ => RequestFate::Unknown,
    }
}

fn connection_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// A Kinesis sequence number: a decimal string of up to 128 digits, ordered as a number.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SequenceNumber(String);

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        numeric_order(&self.0).cmp(&numeric_order(&other.0))
    }
}

/// Decimal numbers without leading zeros compare as their lengths, then as strings.
fn numeric_order(decimal: &str) -> (usize, &str) {
    (decimal.len(), decimal)
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Noted just before a request is sent: where reading it back starts.
#[derive(Debug, Clone, Copy)]
pub struct Sending {
    /// Answers received before the request was sent.
    answers: u64,
    at: SystemTime,
}

impl Sending {
    /// For entries that may have been sent at any time since `at`, by a process before this
    /// one: read from a little before `at`.
    pub fn since(at: SystemTime) -> Sending {
        Sending { answers: 0, at }
    }
}

/// What reading back found of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Found {
        shard: String,
    },
    Absent,
    /// Its shard could not be read within the bounds.
    Unreadable,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadBackError {
    #[error(transparent)]
    ListShards(#[from] StreamError),
    #[error("shard {shard}: {operation} failed: {message}")]
    Api {
        shard: String,
        operation: &'static str,
        message: String,
    },
    #[error("shard {shard}: more than {READ_PAGES} pages of records since the request")]
    WindowTooLarge { shard: String },
    #[error("not read within {READ_LIMIT:?}")]
    TimedOut,
}

/// An entry as a read-back recognizes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EntryId {
    partition_key: String,
    data_digest: u64,
}

impl EntryId {
    fn new(partition_key: &str, data: &[u8]) -> EntryId {
        EntryId {
            partition_key: partition_key.to_owned(),
            data_digest: xxh3_64(data),
        }
    }

    fn of(entry: &PutRecordsRequestEntry) -> EntryId {
        EntryId::new(
            entry.partition_key().unwrap_or_default(),
            entry.data().as_ref(),
        )
    }
}

/// Where a shard's read starts.
#[derive(Debug, Clone)]
enum Start {
    AfterSequenceNumber(SequenceNumber),
    AtTimestamp(SystemTime),
}

/// The records of the entries looked for that a shard's window holds, with their sequence
/// numbers, in the order read.
type Window = HashMap<EntryId, VecDeque<SequenceNumber>>;

/// Answers received so far, and each shard's latest acknowledged sequence numbers, each with
/// the answer that brought it.
#[derive(Default)]
struct Positions {
    answers: u64,
    shards: HashMap<String, VecDeque<(u64, SequenceNumber)>>,
}

/// Reads back one stream's shards after requests of unknown fate; shared by every request
/// of a PutRecords service.
pub struct ReadBack {
    client: Client,
    stream: String,
    positions: Mutex<Positions>,
    /// When each shard may next be called, shared by all read-backs, to stay within its limits.
    next_call: Mutex<HashMap<String, Instant>>,
}

impl ReadBack {
    pub fn new(client: Client, stream: &str) -> ReadBack {
        ReadBack {
            client,
            stream: stream.to_owned(),
            positions: Mutex::default(),
            next_call: Mutex::default(),
        }
    }

    /// To be called just before a request is sent.
    pub fn sending(&self) -> Sending {
        Sending {
            answers: self.positions.lock().expect("positions lock").answers,
            at: SystemTime::now(),
        }
    }

    /// Entries Kinesis stored, as `(shard, sequence number)`, from one answer.
    pub fn acknowledged<'a>(&self, stored: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut highest: Vec<(&str, &str)> = Vec::new();
        for (shard, sequence) in stored {
            match highest.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, top)) if numeric_order(sequence) > numeric_order(top) => *top = sequence,
                Some(_) => {}
                None => highest.push((shard, sequence)),
            }
        }
        let mut positions = self.positions.lock().expect("positions lock");
        positions.answers += 1;
        let answer = positions.answers;
        for (shard, sequence) in highest {
            let history = positions.shards.entry(shard.to_owned()).or_default();
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back((answer, SequenceNumber(sequence.to_owned())));
        }
    }

    /// Where to read `shard` from for a request noted as `sending`: after the highest sequence
    /// number acknowledged before it was sent, or a little before it was sent.
    fn start(&self, shard: &str, sending: Sending) -> Start {
        let positions = self.positions.lock().expect("positions lock");
        let before = positions.shards.get(shard).and_then(|history| {
            history
                .iter()
                .filter(|(answer, _)| *answer <= sending.answers)
                .map(|(_, sequence)| sequence)
                .max()
        });
        match before {
            Some(sequence) => Start::AfterSequenceNumber(sequence.clone()),
            None => Start::AtTimestamp(
                sending
                    .at
                    .checked_sub(TIMESTAMP_MARGIN)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            ),
        }
    }

    /// What each of `entries`, sent as noted in `sending`, became: one resolution per entry, in
    /// order. An error when the stream's shards could not even be listed.
    pub async fn resolve(
        &self,
        entries: &[PutRecordsRequestEntry],
        sending: Sending,
    ) -> Result<Vec<Resolution>, ReadBackError> {
        let deadline = Instant::now() + SETTLE + READ_LIMIT;
        tokio::time::sleep(SETTLE).await;
        let shards = tokio::time::timeout_at(deadline, list_all_shards(&self.client, &self.stream))
            .await
            .map_err(|_| ReadBackError::TimedOut)??;
        let ids: Vec<EntryId> = entries.iter().map(EntryId::of).collect();
        let candidates: Vec<Vec<&str>> = entries
            .iter()
            .map(|entry| self.candidate_shards(entry, &shards))
            .collect();
        let mut wanted: HashMap<&str, HashMap<EntryId, usize>> = HashMap::new();
        for (id, shards) in ids.iter().zip(&candidates) {
            for shard in shards {
                *wanted
                    .entry(shard)
                    .or_default()
                    .entry(id.clone())
                    .or_default() += 1;
            }
        }
        // The reads are made before they are polled: a closure making them inside the stream
        // would leave the spawned request's future not `Send` for every lifetime.
        let reads: Vec<_> = wanted
            .into_iter()
            .map(|(shard, wanted)| self.read_window(shard, wanted, sending, deadline))
            .collect();
        let mut windows: HashMap<&str, Result<Window, ReadBackError>> =
            futures::stream::iter(reads)
                .buffer_unordered(SHARDS_AT_ONCE)
                .collect()
                .await;
        for error in windows.values().filter_map(|w| w.as_ref().err()) {
            tracing::warn!(stream = %self.stream, %error, "cannot read a shard back: its entries are resent");
        }
        let mut found = Vec::new();
        let resolutions = ids
            .iter()
            .zip(&candidates)
            .map(|(id, shards)| {
                let mut unreadable = shards.is_empty();
                for shard in shards {
                    match windows.get_mut(shard) {
                        Some(Ok(window)) => {
                            if let Some(sequence) = window.get_mut(id).and_then(VecDeque::pop_front)
                            {
                                found.push((*shard, sequence));
                                return Resolution::Found {
                                    shard: (*shard).to_owned(),
                                };
                            }
                        }
                        _ => unreadable = true,
                    }
                }
                if unreadable {
                    Resolution::Unreadable
                } else {
                    Resolution::Absent
                }
            })
            .collect();
        self.acknowledged(
            found
                .iter()
                .map(|(shard, sequence)| (*shard, sequence.0.as_str())),
        );
        Ok(resolutions)
    }

    /// The shards `entry` may be stored in: the open shard its hash routes to, and closed ones
    /// that cover its hash and acknowledged records lately (a reshard may have closed them
    /// after the request was sent).
    fn candidate_shards<'a>(
        &self,
        entry: &PutRecordsRequestEntry,
        shards: &'a [Shard],
    ) -> Vec<&'a str> {
        let hash = entry
            .explicit_hash_key()
            .and_then(|h| h.parse::<u128>().ok())
            .unwrap_or_else(|| hash_key(entry.partition_key().unwrap_or_default()));
        let positions = self.positions.lock().expect("positions lock");
        shards
            .iter()
            .filter(|shard| {
                shard.hash_key_range().is_some_and(|range| {
                    let bound = |s: &str| s.parse::<u128>().ok();
                    bound(range.starting_hash_key()).is_some_and(|start| start <= hash)
                        && bound(range.ending_hash_key()).is_some_and(|end| hash <= end)
                })
            })
            .filter(|shard| {
                let open = shard
                    .sequence_number_range()
                    .is_none_or(|r| r.ending_sequence_number().is_none());
                open || positions.shards.contains_key(shard.shard_id())
            })
            .map(Shard::shard_id)
            .collect()
    }

    /// `shard`'s window for a request noted as `sending`, read by `deadline`.
    async fn read_window<'a>(
        &self,
        shard: &'a str,
        wanted: HashMap<EntryId, usize>,
        sending: Sending,
        deadline: Instant,
    ) -> (&'a str, Result<Window, ReadBackError>) {
        let start = self.start(shard, sending);
        let read = tokio::time::timeout_at(deadline, self.read_shard(shard, start, wanted))
            .await
            .unwrap_or(Err(ReadBackError::TimedOut));
        (shard, read)
    }

    /// Reads `shard` from `start` until every wanted entry is found or the window is read to
    /// its end; stops at [`READ_PAGES`] pages.
    async fn read_shard(
        &self,
        shard: &str,
        start: Start,
        mut wanted: HashMap<EntryId, usize>,
    ) -> Result<Window, ReadBackError> {
        let api = |operation, message| ReadBackError::Api {
            shard: shard.to_owned(),
            operation,
            message,
        };
        let request = self
            .client
            .get_shard_iterator()
            .stream(&self.stream)
            .shard_id(shard);
        let request = match start {
            Start::AfterSequenceNumber(sequence) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(sequence.0),
            Start::AtTimestamp(at) => request
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from(at)),
        };
        self.pace(shard).await;
        let mut iterator = request
            .send()
            .await
            .map_err(|e| api("GetShardIterator", DisplayErrorContext(&e).to_string()))?
            .shard_iterator()
            .map(str::to_owned);
        let mut window = Window::new();
        let mut pages = 0;
        while let Some(current) = iterator.take() {
            if wanted.is_empty() {
                break;
            }
            if pages == READ_PAGES {
                return Err(ReadBackError::WindowTooLarge {
                    shard: shard.to_owned(),
                });
            }
            self.pace(shard).await;
            let page = match self
                .client
                .get_records()
                .shard_iterator(&current)
                .limit(PAGE_RECORDS)
                .send()
                .await
            {
                Ok(page) => page,
                // Consumers share the shard's read limits: wait for the next slot.
                Err(e) if e.code() == Some("ProvisionedThroughputExceededException") => {
                    iterator = Some(current);
                    continue;
                }
                Err(e) => return Err(api("GetRecords", DisplayErrorContext(&e).to_string())),
            };
            pages += 1;
            for record in page.records() {
                let id = EntryId::new(
                    record.partition_key().unwrap_or_default(),
                    record.data().as_ref(),
                );
                if let Some(count) = wanted.get_mut(&id) {
                    *count -= 1;
                    if *count == 0 {
                        wanted.remove(&id);
                    }
                    window
                        .entry(id)
                        .or_default()
                        .push_back(SequenceNumber(record.sequence_number().to_owned()));
                }
            }
            let caught_up = page.records().len() < PAGE_RECORDS as usize
                && page.millis_behind_latest().unwrap_or(0) == 0;
            if !caught_up {
                iterator = page.next_shard_iterator().map(str::to_owned);
            }
        }
        Ok(window)
    }

    /// Waits for `shard`'s next call slot.
    async fn pace(&self, shard: &str) {
        let slot = {
            let mut next_call = self.next_call.lock().expect("pacing lock");
            let now = Instant::now();
            let slot = next_call.get(shard).map_or(now, |&t| t.max(now));
            next_call.insert(shard.to_owned(), slot + SHARD_CALL_INTERVAL);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use serde_json::{json, Value};

    use super::*;
    use crate::config::WriteOrdering;
    use crate::kinesis::request::MirrorRecord;
    use crate::kinesis::service::PutRecordsService;
    use crate::kinesis::test_support::{
        entry_data, record, spilling_settings, wait_until, Cut, FakeKinesis, FakeStream,
    };
    use crate::kinesis::writer::StreamWriter;
    use crate::telemetry::metrics::Metrics;

    /// What the writer counted for stream `s`.
    fn attempts(metrics: &Metrics, kind: &str) -> u64 {
        metrics
            .mirror_attempts
            .with_label_values(&["s", kind])
            .get()
    }

    fn sent(metrics: &Metrics) -> u64 {
        metrics
            .mirror_records
            .with_label_values(&["orders", "s", "sent"])
            .get()
    }

    /// A writer of stream `s` in front of `kinesis`, with `ordering`.
    fn writer(kinesis: &FakeKinesis, ordering: WriteOrdering) -> (StreamWriter, Arc<Metrics>) {
        let spool_dir = tempfile::tempdir().expect("tempdir");
        let mut settings = spilling_settings(spool_dir.path(), 1 << 20);
        settings.kinesis.ordering = ordering;
        let metrics = Arc::new(Metrics::new());
        let writer = StreamWriter::spawn("s", kinesis.client(), &settings, metrics.clone());
        (writer, metrics)
    }

    /// Sends `records` and waits until the writer counted `sent_total` records sent.
    async fn send_and_wait(
        writer: &StreamWriter,
        metrics: &Metrics,
        records: impl IntoIterator<Item = MirrorRecord>,
        sent_total: u64,
    ) {
        for record in records {
            writer.send(record).await.expect("writer is running");
        }
        wait_until("records delivered", Duration::from_secs(60), || {
            sent(metrics) == sent_total
        })
        .await;
    }

    /// Cuts the connection of the `nth` PutRecords (0-based) at `cut`, and notes its entries.
    fn cut_put_records(
        nth: usize,
        cut: Cut,
        entries: &Arc<AtomicUsize>,
    ) -> impl Fn(&str, &Value) -> Option<Cut> {
        let calls = AtomicUsize::new(0);
        let entries = entries.clone();
        move |operation, body| {
            if operation != "PutRecords" || calls.fetch_add(1, Ordering::SeqCst) != nth {
                return None;
            }
            entries.store(entry_data(body).len(), Ordering::SeqCst);
            Some(cut)
        }
    }

    /// Sends 20 records through a writer whose first PutRecords is cut at `cut`; checks that
    /// each record is stored once, in order; answers the metrics and the cut request's entries.
    async fn deliver_through_a_cut(cut: Cut) -> (Arc<Metrics>, u64) {
        let stream = Arc::new(FakeStream::default());
        let cut_entries = Arc::new(AtomicUsize::new(0));
        let kinesis = {
            let stream = stream.clone();
            FakeKinesis::new(move |operation, body| stream.answer(operation, body))
                .cutting(cut_put_records(0, cut, &cut_entries))
        };
        let (writer, metrics) = writer(&kinesis, WriteOrdering::PerKey);
        send_and_wait(&writer, &metrics, (0..20).map(record), 20).await;
        let expected: Vec<String> = (0..20).map(|o| format!("value-{o}")).collect();
        assert_eq!(stream.stored_data(), expected, "each record once, in order");
        let cut_entries = cut_entries.load(Ordering::SeqCst) as u64;
        println!(
            "connection cut {cut:?}: {cut_entries} entries, found {}, resent {}, unreadable {}, retried {}",
            attempts(&metrics, "ambiguous_found"),
            attempts(&metrics, "ambiguous_resent"),
            attempts(&metrics, "ambiguous_unreadable"),
            attempts(&metrics, "retry")
        );
        assert!(cut_entries > 0);
        (metrics, cut_entries)
    }

    /// Item 10 of the mirror-correctness issue: a PutRecords that Kinesis stored but whose
    /// answer was lost (the connection cut after the request was sent) is read back and not
    /// sent again. The old writer resent it whole: every entry twice in the stream.
    #[tokio::test(start_paused = true)]
    async fn a_stored_request_whose_answer_is_lost_is_not_resent() {
        let (metrics, lost) = deliver_through_a_cut(Cut::AfterLanding).await;
        assert_eq!(attempts(&metrics, "ambiguous_found"), lost);
        assert_eq!(attempts(&metrics, "ambiguous_resent"), 0);
        assert_eq!(attempts(&metrics, "retry"), 0, "nothing was sent again");
    }

    /// A request cut before it landed is read back, found absent, and resent once.
    #[tokio::test(start_paused = true)]
    async fn a_request_that_did_not_land_is_resent() {
        let (metrics, lost) = deliver_through_a_cut(Cut::BeforeLanding).await;
        assert_eq!(attempts(&metrics, "ambiguous_resent"), lost);
        assert_eq!(attempts(&metrics, "ambiguous_found"), 0);
        assert_eq!(attempts(&metrics, "retry"), lost);
    }

    /// Identical records (heartbeats: one key, one value) are counted, not merely looked for:
    /// one heartbeat is acknowledged, then a request of three lands only two of them before
    /// its connection is cut. The read-back starts after the acknowledged one, so it is not
    /// taken for one of the three, and exactly the missing one is resent.
    #[tokio::test(start_paused = true)]
    async fn identical_records_are_matched_with_multiplicity() {
        let stream = Arc::new(FakeStream::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let kinesis = {
            let (stream, calls) = (stream.clone(), calls.clone());
            let cut_calls = calls.clone();
            FakeKinesis::new(move |operation, body| {
                if operation == "PutRecords" && calls.fetch_add(1, Ordering::SeqCst) == 1 {
                    let mut partial = body.clone();
                    partial["Records"]
                        .as_array_mut()
                        .expect("records")
                        .truncate(2);
                    return stream.answer(operation, &partial);
                }
                stream.answer(operation, body)
            })
            .cutting(move |operation, _| {
                (operation == "PutRecords" && cut_calls.load(Ordering::SeqCst) == 1)
                    .then_some(Cut::AfterLanding)
            })
        };
        let (writer, metrics) = writer(&kinesis, WriteOrdering::None);
        let heartbeat = |offset| {
            let mut beat = record(offset);
            beat.key.partition_key = "heartbeat".to_owned();
            beat.data = Bytes::from_static(b"beat");
            beat
        };
        send_and_wait(&writer, &metrics, [heartbeat(0)], 1).await;
        send_and_wait(&writer, &metrics, (1..4).map(heartbeat), 4).await;
        assert_eq!(
            stream.stored_data(),
            vec!["beat"; 4],
            "four heartbeats, each once"
        );
        assert_eq!(attempts(&metrics, "ambiguous_found"), 2);
        assert_eq!(attempts(&metrics, "ambiguous_resent"), 1);
    }

    /// Only a request whose fate is unknown is read back: Kinesis refusing it (4xx) stored
    /// nothing; a 5xx or a cut connection may have stored it.
    #[tokio::test(start_paused = true)]
    async fn failures_are_classified_by_what_they_may_have_stored() {
        let entries = vec![crate::kinesis::request::entry(&record(0))];
        for (status, code, fate) in [
            (
                400,
                "ProvisionedThroughputExceededException",
                RequestFate::Refused,
            ),
            (500, "InternalFailure", RequestFate::Unknown),
        ] {
            let stream = Arc::new(FakeStream::default());
            let kinesis = {
                let stream = stream.clone();
                FakeKinesis::new(move |operation, body| match operation {
                    "PutRecords" => (status, json!({"__type": code, "message": "injected"})),
                    _ => stream.answer(operation, body),
                })
            };
            let service = PutRecordsService::new(kinesis.client(), "s");
            let failure = service
                .put(entries.clone(), None)
                .await
                .expect_err("failed");
            assert_eq!(failure.fate, fate, "{status} {code}");
            assert_eq!(failure.read_back.is_some(), fate == RequestFate::Unknown);
        }
    }

    /// Issue 14: records replayed from the write-ahead log after a crash may have been stored
    /// just before it. Of three replayed records, the first two are in the stream already (sent
    /// by the process that died): only the third is sent, and a fresh record in the same
    /// request, with nothing to doubt, is sent without being looked for. `put` sent all four.
    #[tokio::test(start_paused = true)]
    async fn records_replayed_after_a_crash_are_read_back_and_only_the_absent_sent() {
        let stream = Arc::new(FakeStream::default());
        let kinesis = {
            let stream = stream.clone();
            FakeKinesis::new(move |operation, body| stream.answer(operation, body))
        };
        let service = PutRecordsService::new(kinesis.client(), "s");
        let entry = |offset| crate::kinesis::request::entry(&record(offset));
        let logged_at = std::time::SystemTime::now();
        let before_crash = service
            .put(vec![entry(0), entry(1)], None)
            .await
            .expect("stored");
        assert_eq!(before_crash.len(), 2);
        let metrics = Metrics::new();
        let outcomes = service
            .put_resuming(
                vec![entry(0), entry(1), entry(2), entry(3)],
                &[Some(logged_at), Some(logged_at), Some(logged_at), None],
                Some(&metrics),
            )
            .await
            .expect("answered");
        assert!(outcomes
            .iter()
            .all(|o| matches!(o, crate::kinesis::service::EntryOutcome::Delivered { .. })));
        assert_eq!(
            stream.stored_data(),
            vec!["value-0", "value-1", "value-2", "value-3"],
            "each record once"
        );
        assert_eq!(attempts(&metrics, "ambiguous_found"), 2);
        assert_eq!(attempts(&metrics, "ambiguous_resent"), 1);
    }
}
