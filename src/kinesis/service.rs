//! The PutRecords service, shared by the writer and `spool replay`: sends one request and
//! answers one outcome per entry, in request order, or why the whole request failed.
//!
//! A request-level ValidationException says that something in the request is invalid, not
//! which entry: the request is bisected, half by half in order, until the bad entries stand
//! alone, so that one bad entry fails alone instead of taking 499 good ones with it.
//!
//! A request whose fate is unknown (a timeout, a connection cut after it was sent) is read
//! back (`read_back.rs`) so that what it stored is not sent twice.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use aws_sdk_kinesis::Client;

use super::client::NamesStream;
use super::read_back::{classify, ReadBack, RequestFate, Resolution, Sending};
use crate::telemetry::metrics::Metrics;

/// The request-level error codes that blame some entry of the request, not the stream.
const BISECTED: &[&str] = &["ValidationException", "InvalidArgumentException"];

/// What happened to one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// Stored, in `shard`.
    Delivered {
        shard: String,
    },
    Failed {
        code: String,
        message: String,
    },
}

/// The whole request failed: no answer says what became of its entries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PutRecords failed: {message}")]
pub struct RequestFailure {
    /// The AWS error code; `None` for timeouts, connection failures and malformed answers.
    pub code: Option<String>,
    pub message: String,
    /// Whether the entries may be stored all the same.
    pub fate: RequestFate,
    /// When the fate was unknown and the shards could be listed, what reading them back found:
    /// one outcome per entry, `Delivered` when stored, else `Failed`.
    pub read_back: Option<Vec<EntryOutcome>>,
}

/// Sends PutRecords requests to one stream.
#[derive(Clone)]
pub struct PutRecordsService {
    client: Client,
    stream: String,
    read_back: Arc<ReadBack>,
}

impl PutRecordsService {
    pub fn new(client: Client, stream: &str) -> Self {
        PutRecordsService {
            read_back: Arc::new(ReadBack::new(client.clone(), stream)),
            client,
            stream: stream.to_owned(),
        }
    }

    /// One outcome per entry of `entries`, in order, bisecting on request-level validation
    /// errors, or why the whole request failed; a request of unknown fate is read back first.
    /// `metrics` times each request sent and counts the read-backs.
    pub async fn put(
        &self,
        entries: Vec<PutRecordsRequestEntry>,
        metrics: Option<&Metrics>,
    ) -> Result<Vec<EntryOutcome>, RequestFailure> {
        let mut outcomes = Vec::with_capacity(entries.len());
        // Halves still to send, last first: sending them in order keeps each key's order.
        let mut pending = vec![entries];
        while let Some(entries) = pending.pop() {
            let sending = self.read_back.sending();
            match self.put_once(&entries, metrics).await {
                Ok(answered) => outcomes.extend(answered),
                Err(failure) if is_bisected(&failure) && entries.len() > 1 => {
                    let mut left = entries;
                    let right = left.split_off(left.len() / 2);
                    pending.push(right);
                    pending.push(left);
                }
                Err(failure) if is_bisected(&failure) => outcomes.push(EntryOutcome::Failed {
                    code: failure.code.unwrap_or_default(),
                    message: failure.message,
                }),
                Err(mut failure) => {
                    if failure.fate == RequestFate::Unknown {
                        failure.read_back =
                            self.read_back(&entries, sending, &failure, metrics).await;
                    }
                    if outcomes.is_empty() && pending.is_empty() {
                        return Err(failure);
                    }
                    // A whole request failing after some halves went is reported per entry:
                    // the halves already sent have known outcomes, which must not be sent
                    // again.
                    let failed = failed_entry(&failure, "");
                    let unsent = pending.iter().map(Vec::len).sum::<usize>();
                    match failure.read_back {
                        Some(read_back) => outcomes.extend(read_back),
                        None => outcomes.extend(vec![failed.clone(); entries.len()]),
                    }
                    outcomes.extend(vec![failed; unsent]);
                    pending.clear();
                }
            }
        }
        Ok(outcomes)
    }

    /// As [`Self::put`], for entries of which some may be in Kinesis already
    /// (`maybe_stored[i]`: since when): records read again from the write-ahead log after a
    /// crash, which may have been stored just before it. Those are read back first, and only
    /// the ones not found are sent, so that a restart stores nothing twice. Counted as
    /// `ambiguous_found` and `ambiguous_resent`.
    pub async fn put_resuming(
        &self,
        entries: Vec<PutRecordsRequestEntry>,
        maybe_stored: &[Option<SystemTime>],
        metrics: Option<&Metrics>,
    ) -> Result<Vec<EntryOutcome>, RequestFailure> {
        let Some(since) = maybe_stored.iter().flatten().min().copied() else {
            return self.put(entries, metrics).await;
        };
        let doubtful: Vec<usize> = (0..entries.len())
            .filter(|i| maybe_stored.get(*i).is_some_and(Option::is_some))
            .collect();
        let doubtful_entries: Vec<_> = doubtful.iter().map(|i| entries[*i].clone()).collect();
        let mut outcomes: Vec<Option<EntryOutcome>> = vec![None; entries.len()];
        match self
            .read_back
            .resolve(&doubtful_entries, Sending::since(since))
            .await
        {
            Ok(resolutions) => {
                let mut counts = [0usize; 3];
                for (i, resolution) in doubtful.iter().zip(resolutions) {
                    match resolution {
                        Resolution::Found { shard } => {
                            counts[0] += 1;
                            outcomes[*i] = Some(EntryOutcome::Delivered { shard });
                        }
                        Resolution::Absent => counts[1] += 1,
                        Resolution::Unreadable => counts[2] += 1,
                    }
                }
                self.count_read_back(metrics, counts);
            }
            Err(error) => {
                tracing::warn!(stream = %self.stream, records = doubtful.len(), %error, "cannot read the stream back for records replayed after a restart: sending them, some may be stored twice");
                self.count_read_back(metrics, [0, 0, doubtful.len()]);
            }
        }
        let unsent: Vec<usize> = (0..entries.len())
            .filter(|i| outcomes[*i].is_none())
            .collect();
        let to_send: Vec<_> = entries
            .into_iter()
            .enumerate()
            .filter(|(i, _)| outcomes[*i].is_none())
            .map(|(_, entry)| entry)
            .collect();
        if !to_send.is_empty() {
            match self.put(to_send, metrics).await {
                Ok(sent) => {
                    for (i, outcome) in unsent.iter().zip(sent) {
                        outcomes[*i] = Some(outcome);
                    }
                }
                // The found entries keep their outcome, which the retry could not learn again:
                // each entry is answered, the sent ones as read back or as failed.
                Err(mut failure) => {
                    let sent = failure
                        .read_back
                        .take()
                        .unwrap_or_else(|| vec![failed_entry(&failure, ""); unsent.len()]);
                    for (i, outcome) in unsent.iter().zip(sent) {
                        outcomes[*i] = Some(outcome);
                    }
                    failure.read_back = Some(outcomes.into_iter().flatten().collect());
                    return Err(failure);
                }
            }
        }
        Ok(outcomes.into_iter().flatten().collect())
    }

    /// Reads back what `entries`, whose request's fate is unknown, stored: one outcome per
    /// entry, or `None` when the stream's shards cannot even be listed. Counts each entry as
    /// `ambiguous_found`, `ambiguous_resent` or `ambiguous_unreadable`.
    async fn read_back(
        &self,
        entries: &[PutRecordsRequestEntry],
        sending: Sending,
        failure: &RequestFailure,
        metrics: Option<&Metrics>,
    ) -> Option<Vec<EntryOutcome>> {
        let resolutions = match self.read_back.resolve(entries, sending).await {
            Ok(resolutions) => resolutions,
            Err(error) => {
                tracing::warn!(stream = %self.stream, records = entries.len(), %error, "cannot read back a PutRecords of unknown fate: resending it whole");
                self.count_read_back(metrics, [0, 0, entries.len()]);
                return None;
            }
        };
        let mut counts = [0usize; 3];
        let outcomes = resolutions
            .into_iter()
            .map(|resolution| match resolution {
                Resolution::Found { shard } => {
                    counts[0] += 1;
                    EntryOutcome::Delivered { shard }
                }
                Resolution::Absent => {
                    counts[1] += 1;
                    failed_entry(failure, "; not stored, read back")
                }
                Resolution::Unreadable => {
                    counts[2] += 1;
                    failed_entry(failure, "; its shard could not be read back")
                }
            })
            .collect();
        let [found, absent, unreadable] = counts;
        tracing::warn!(stream = %self.stream, found, absent, unreadable, error = %failure.message, "PutRecords of unknown fate read back: resending only what is not stored");
        self.count_read_back(metrics, counts);
        Some(outcomes)
    }

    /// Counts read-back entries by what was found: `[found, absent (resent), unreadable]`.
    fn count_read_back(&self, metrics: Option<&Metrics>, [found, absent, unreadable]: [usize; 3]) {
        let Some(metrics) = metrics else { return };
        for (kind, n) in [
            ("ambiguous_found", found),
            ("ambiguous_resent", absent),
            ("ambiguous_unreadable", unreadable),
        ] {
            metrics
                .mirror_attempts
                .with_label_values(&[&self.stream, kind])
                .inc_by(n as u64);
        }
    }

    async fn put_once(
        &self,
        entries: &[PutRecordsRequestEntry],
        metrics: Option<&Metrics>,
    ) -> Result<Vec<EntryOutcome>, RequestFailure> {
        let started = Instant::now();
        let result = self
            .client
            .put_records()
            .stream(&self.stream)
            .set_records(Some(entries.to_vec()))
            .send()
            .await;
        if let Some(metrics) = metrics {
            metrics
                .putrecords_duration
                .with_label_values(&[&self.stream])
                .observe(started.elapsed().as_secs_f64());
        }
        let out = result.map_err(|e| RequestFailure {
            code: e.code().map(str::to_owned),
            message: DisplayErrorContext(&e).to_string(),
            fate: classify(&e),
            read_back: None,
        })?;
        // Zipping a short answer with the entries would take the missing ones for delivered.
        if out.records().len() != entries.len() {
            return Err(RequestFailure {
                code: None,
                message: format!(
                    "PutRecords answered {} results for {} entries",
                    out.records().len(),
                    entries.len()
                ),
                fate: RequestFate::Unknown,
                read_back: None,
            });
        }
        self.read_back.acknowledged(
            out.records()
                .iter()
                .filter_map(|r| Some((r.shard_id()?, r.sequence_number()?))),
        );
        Ok(out
            .records()
            .iter()
            .map(|r| match r.error_code() {
                Some(code) => EntryOutcome::Failed {
                    code: code.to_owned(),
                    message: r.error_message().unwrap_or_default().to_owned(),
                },
                None => EntryOutcome::Delivered {
                    shard: r.shard_id().unwrap_or_default().to_owned(),
                },
            })
            .collect())
    }
}

/// An entry of a failed request, to be sent again; `detail` says more than the failure.
fn failed_entry(failure: &RequestFailure, detail: &str) -> EntryOutcome {
    EntryOutcome::Failed {
        code: failure
            .code
            .clone()
            .unwrap_or_else(|| "RequestFailed".to_owned()),
        message: format!("{}{detail}", failure.message),
    }
}

fn is_bisected(failure: &RequestFailure) -> bool {
    failure
        .code
        .as_deref()
        .is_some_and(|c| BISECTED.contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::test_support::{all_stored, FakeKinesis};
    use aws_sdk_kinesis::primitives::Blob;
    use serde_json::{json, Value};

    fn entries(data: &[&str]) -> Vec<PutRecordsRequestEntry> {
        data.iter()
            .map(|d| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(d.as_bytes()))
                    .partition_key("k")
                    .build()
                    .expect("complete entry")
            })
            .collect()
    }

    /// Kinesis refusing any request that holds an entry whose data is `bad`.
    fn rejects_bad(requests: std::sync::Arc<std::sync::Mutex<Vec<usize>>>) -> FakeKinesis {
        FakeKinesis::new(move |_, body: &Value| {
            let records = body["Records"].as_array().expect("records");
            requests.lock().expect("lock").push(records.len());
            let bad = records.iter().any(|r| r["Data"] == json!("YmFk")); // "bad"
            if bad {
                return (
                    400,
                    json!({"__type": "ValidationException", "message": "invalid entry"}),
                );
            }
            all_stored(body)
        })
    }

    #[tokio::test]
    async fn a_request_level_validation_error_fails_only_the_bad_entry() {
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let service = PutRecordsService::new(rejects_bad(requests.clone()).client(), "s");
        let mut data: Vec<String> = (0..500).map(|i| format!("good-{i}")).collect();
        data[317] = "bad".to_owned();
        let data: Vec<&str> = data.iter().map(String::as_str).collect();
        let outcomes = service
            .put(entries(&data), None)
            .await
            .expect("per-entry outcomes");
        assert_eq!(outcomes.len(), 500);
        for (i, outcome) in outcomes.iter().enumerate() {
            match outcome {
                EntryOutcome::Failed { code, .. } => {
                    assert_eq!(i, 317, "only the bad entry fails");
                    assert_eq!(code, "ValidationException");
                }
                EntryOutcome::Delivered { .. } => assert_ne!(i, 317),
            }
        }
        let sent = requests.lock().expect("lock").clone();
        println!(
            "one bad entry among 500: {} requests of sizes {sent:?}",
            sent.len()
        );
        assert!(
            sent.len() <= 2 * 9 + 1,
            "bisection takes about two requests per halving: {sent:?}"
        );
    }

    #[tokio::test]
    async fn a_short_answer_is_a_failed_request() {
        let fake = FakeKinesis::new(|_, _| {
            (
                200,
                json!({"FailedRecordCount": 0, "Records": [{"SequenceNumber": "1", "ShardId": "shardId-0"}]}),
            )
        });
        let service = PutRecordsService::new(fake.client(), "s");
        let failure = service
            .put(entries(&["a", "b", "c"]), None)
            .await
            .expect_err("one result for three entries");
        assert_eq!(failure.code, None);
        assert!(failure.message.contains("1 results for 3 entries"));
    }

    #[tokio::test]
    async fn a_stream_level_error_fails_the_request() {
        let fake = FakeKinesis::new(|_, _| {
            (
                400,
                json!({"__type": "ResourceNotFoundException", "message": "no stream"}),
            )
        });
        let service = PutRecordsService::new(fake.client(), "s");
        let failure = service
            .put(entries(&["a", "b"]), None)
            .await
            .expect_err("not bisected");
        assert_eq!(failure.code.as_deref(), Some("ResourceNotFoundException"));
    }
}
