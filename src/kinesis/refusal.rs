//! A stream that refuses records: it is missing, access is denied, or its KMS key cannot be
//! used. Every record would fail alike until an operator fixes the cause, so none is given up
//! on. The refused records go back to the front of their lanes; once no request is in flight
//! (so that none comes back behind later records), every queued record moves to the spool in
//! order, and new records follow it there. The stream then sends nothing but one probe at a
//! time, with backoff (`Health::refused`): a PutRecords of its oldest records, replayed from
//! the spool. The first probe Kinesis takes ends the refusal, and replay delivers the rest in
//! order.

use std::time::{Duration, Instant};

use super::health::{Evidence, ProbeFailure};
use super::lanes::Request;
use super::retry::{classify, ErrorClass};
use super::service::{EntryOutcome, RequestFailure};
use super::writer::WriterTask;

impl WriterTask {
    /// What a PutRecords answer says about the stream: refusing, taking records, or failing
    /// for now.
    pub(super) fn judge_stream(&mut self, result: &Result<Vec<EntryOutcome>, RequestFailure>) {
        let now = tokio::time::Instant::now();
        let refusal = match result {
            Ok(outcomes) => outcomes.iter().find_map(|outcome| match outcome {
                EntryOutcome::Failed { code, message }
                    if classify(Some(code)) == ErrorClass::StreamRefused =>
                {
                    Some(format!("{code}: {message}"))
                }
                _ => None,
            }),
            Err(failure) if classify(failure.code.as_deref()) == ErrorClass::StreamRefused => {
                Some(failure.to_string())
            }
            Err(_) => None,
        };
        match (refusal, result) {
            (Some(error), _) => {
                self.health.observe(Evidence::Failed, now);
                self.refuse(error, now);
            }
            (None, Ok(_)) => {
                self.health.observe(Evidence::Answered, now);
                if self.health.accepted() {
                    tracing::info!(stream = %self.state.stream, "the stream takes records again; replaying its spool");
                }
                self.state.accepted(&self.metrics);
            }
            (None, Err(failure)) => {
                self.health.observe(Evidence::Failed, now);
                if self.health.is_refused() {
                    // A probe that failed for another reason is still a failed probe.
                    self.health.refused(now);
                }
                self.state
                    .mark_unhealthy(failure.to_string(), &self.metrics);
            }
        }
    }

    /// The stream refuses records: new ones go to the spool, and sending waits for probes.
    fn refuse(&mut self, error: String, now: tokio::time::Instant) {
        if self.health.refused(now) {
            tracing::error!(
                stream = %self.state.stream, %error,
                "the stream refuses records: they wait in the spool, in order, and the stream is probed until it takes them"
            );
        }
        if self.spool.is_some() {
            self.spilling = true;
        }
        self.state.refused(
            format!("{error} (records wait in the spool; probing with PutRecords)"),
            &self.metrics,
        );
    }

    /// Before a shard map is loaded nothing can be sent, so a describe that finds the stream
    /// missing or denied is the only word on it: the records go to the spool now rather than
    /// wait in memory for `record_ttl`. Once a map is loaded, only PutRecords decides (a
    /// role may be allowed to put but not to describe).
    pub(super) async fn refused_before_map(&mut self, failure: &ProbeFailure) {
        if classify(failure.code()) == ErrorClass::StreamRefused {
            self.refuse(failure.to_string(), tokio::time::Instant::now());
            self.spool_refused().await;
        }
    }

    /// Refused entries: those replayed from the spool are let go (they are still there, and
    /// their window is not acknowledged); the others go back to the front of their lanes.
    pub(super) fn hold_refused(&mut self, refused: Request) {
        let (replayed, memory): (Request, Request) = refused
            .into_iter()
            .partition(|(_, q)| q.from_spool.is_some());
        for (_, queued) in &replayed {
            self.settings
                .budget
                .release(queued.record.memory_bytes() as u64);
        }
        if !replayed.is_empty() {
            self.replay = None;
        }
        let map = self.state.map.load();
        self.lanes
            .requeue_front(memory, &map, Instant::now(), |_| Duration::ZERO);
    }

    /// Once a refusing stream has no request in flight, its queued records move to the
    /// spool in order (ahead of any held for want of room), and records replayed from the
    /// spool are let go.
    pub(super) async fn spool_refused(&mut self) {
        if !self.health.is_refused() || self.requests_in_flight > 0 || self.spool.is_none() {
            return;
        }
        let mut records = Vec::new();
        for queued in self.lanes.drain_queued() {
            self.settings
                .budget
                .release(queued.record.memory_bytes() as u64);
            if queued.from_spool.is_some() {
                self.replay = None;
            } else {
                records.push(queued.record);
            }
        }
        if records.is_empty() {
            return;
        }
        self.spilling = true;
        records.extend(self.held.drain(..));
        self.spill(records).await;
    }

    /// Whether the spool may be replayed: into a healthy stream, or as the probe of a
    /// refusing one when it is due and it can be sent (a shard map is loaded).
    pub(super) fn may_replay(&self) -> bool {
        if self.health.is_refused() {
            self.state.open_shards() > 0 && self.health.may_send(tokio::time::Instant::now())
        } else {
            self.state.is_healthy()
        }
    }
}

#[cfg(test)]
#[path = "refusal_tests.rs"]
mod tests;
