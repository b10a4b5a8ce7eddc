//! A stream's health, as its writer sees it, and the inspections that keep its facts fresh.
//!
//! The control plane is scarce: DescribeStreamSummary allows 20 calls per second per account,
//! so a probe per stream every few seconds exhausts it with a hundred proxy×stream pairs. A
//! successful PutRecords proves the stream healthy, so the stream is probed only when there is
//! no traffic (after `IDLE_PROBE` without an answer) or after errors (with backoff and
//! jitter). A probe that is throttled or slow says nothing about the stream: it leaves the
//! stream's health as the last answer left it (a stream that cannot be reached fails its
//! PutRecords too), and only the next probe backs off. Nothing here halts dispatch, which
//! depends only on having a shard map.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use aws_sdk_kinesis::Client;
use tokio::time::Instant;

use super::client::{describe, load_shard_map, StreamError, StreamInfo};
use super::retry::Backoff;
use super::shard_map::ShardMap;
use crate::telemetry::metrics::Metrics;

/// With no PutRecords answered for this long, the stream is probed.
pub const IDLE_PROBE: Duration = Duration::from_secs(30);
/// After errors, probes back off from one second up to `IDLE_PROBE`.
const PROBE_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(500),
    cap: IDLE_PROBE,
};
/// A control-plane call slower than this counts as unanswered.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The error codes of a control plane that is busy, not of a stream that is down.
const THROTTLED: &[&str] = &["LimitExceededException", "ThrottlingException"];

/// When to probe, and what the evidence so far says.
#[derive(Debug)]
pub struct Health {
    healthy: bool,
    /// Failed or unanswered calls since the last answer, for backoff.
    failures: u32,
    next_probe: Instant,
    /// Set while the stream refuses records for a stream-level cause.
    refusal: Option<Refusal>,
}

/// A stream that refused records (missing, access denied, KMS key unusable) sends nothing but
/// one probe at a time: one PutRecords of its oldest records, with backoff. Only a PutRecords
/// answered without refusal ends it, since a describe can succeed where a put is denied.
#[derive(Debug)]
struct Refusal {
    probes: u32,
    next_probe: Instant,
    /// A probe request is in flight.
    probing: bool,
}

/// What one call to Kinesis says about the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// Kinesis answered (a PutRecords, or a describe of an active stream).
    Answered,
    /// Kinesis failed the call, or could not be reached.
    Failed,
    /// The control plane was throttled or slow: says nothing about the stream itself.
    Unanswered,
}

impl Health {
    /// Unknown until the first probe, which is due at once.
    pub fn new(now: Instant) -> Health {
        Health {
            healthy: false,
            failures: 0,
            next_probe: now,
            refusal: None,
        }
    }

    /// The stream refused records, or a probe of a refusing stream failed: the next probe is
    /// scheduled with backoff. Answers whether the stream was taking records until now.
    pub fn refused(&mut self, now: Instant) -> bool {
        match &mut self.refusal {
            None => {
                self.refusal = Some(Refusal {
                    probes: 1,
                    next_probe: now + PROBE_BACKOFF.delay_at_least_half(1),
                    probing: false,
                });
                true
            }
            // Requests sent before the refusal and failing now change nothing.
            Some(refusal) if !refusal.probing => false,
            Some(refusal) => {
                refusal.probes += 1;
                refusal.next_probe = now + PROBE_BACKOFF.delay_at_least_half(refusal.probes);
                refusal.probing = false;
                false
            }
        }
    }

    /// A PutRecords was answered without refusal; answers whether that ends a refusal.
    pub fn accepted(&mut self) -> bool {
        self.refusal.take().is_some()
    }

    pub fn is_refused(&self) -> bool {
        self.refusal.is_some()
    }

    /// Whether a request may go now: always, unless the stream refuses records; then only
    /// one probe at a time, when it is due.
    pub fn may_send(&self, now: Instant) -> bool {
        self.refusal
            .as_ref()
            .is_none_or(|r| !r.probing && now >= r.next_probe)
    }

    /// A request went; if the stream refuses records, it is the probe.
    pub fn sent(&mut self) {
        if let Some(refusal) = &mut self.refusal {
            refusal.probing = true;
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    pub fn next_probe(&self) -> Instant {
        self.next_probe
    }

    /// Takes `evidence` in; returns whether the stream's health changed.
    pub fn observe(&mut self, evidence: Evidence, now: Instant) -> bool {
        let was = self.healthy;
        match evidence {
            Evidence::Answered => {
                self.healthy = true;
                self.failures = 0;
                self.next_probe = now + IDLE_PROBE;
                return !was;
            }
            Evidence::Failed => self.healthy = false,
            Evidence::Unanswered => {}
        }
        self.failures += 1;
        self.next_probe = now + PROBE_BACKOFF.delay_at_least_half(self.failures);
        was != self.healthy
    }
}

/// What the writer knows about its stream, shared with the mirror stage and the admin endpoint.
pub struct StreamState {
    pub stream: String,
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// The stream refuses records until an operator fixes the cause; only a PutRecords that
    /// it takes clears this, not a describe.
    refused: AtomicBool,
    open_shards: AtomicUsize,
    pub(super) map: ArcSwap<ShardMap>,
    pub(super) spool_bytes: AtomicU64,
    /// Records queued in the writer's memory, not in a request yet: set by the writer once per
    /// loop turn, so that `/routes` can show where the backlog waits...
    pub(super) queued_records: AtomicU64,
    /// ...and those in PutRecords requests in flight, which during an outage is most of them.
    pub(super) in_flight_records: AtomicU64,
}

impl StreamState {
    pub(super) fn new(stream: &str) -> StreamState {
        StreamState {
            stream: stream.to_owned(),
            healthy: AtomicBool::new(false),
            last_error: Mutex::new(None),
            refused: AtomicBool::new(false),
            open_shards: AtomicUsize::new(0),
            map: ArcSwap::from_pointee(ShardMap::default()),
            spool_bytes: AtomicU64::new(0),
            queued_records: AtomicU64::new(0),
            in_flight_records: AtomicU64::new(0),
        }
    }

    /// Whether the latest evidence (a PutRecords answered, or a probe) says that Kinesis takes
    /// the stream's records. Says nothing about Kafka, which is what `/readyz` answers for.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn open_shards(&self) -> usize {
        self.open_shards.load(Ordering::Acquire)
    }

    /// Why the stream was last found unhealthy.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("stream state lock").clone()
    }

    /// Whether the stream refuses records (missing, access denied, KMS key unusable): its
    /// records wait in the spool while it is probed.
    pub fn is_refused(&self) -> bool {
        self.refused.load(Ordering::Acquire)
    }

    /// Bytes waiting in the stream's spool.
    pub fn spool_bytes(&self) -> u64 {
        self.spool_bytes.load(Ordering::Acquire)
    }

    /// Records in the writer's memory, neither delivered nor spooled: queued, waiting for
    /// room in the budget, or in a request in flight.
    pub fn queued_records(&self) -> u64 {
        self.queued_records.load(Ordering::Relaxed) + self.in_flight_records.load(Ordering::Relaxed)
    }

    pub(super) fn install_map(&self, map: ShardMap) {
        self.open_shards.store(map.len(), Ordering::Release);
        self.map.store(Arc::new(map));
    }

    /// No effect while the stream refuses records: see [`accepted`](Self::accepted).
    pub(super) fn mark_healthy(&self, metrics: &Metrics) {
        if self.is_refused() {
            return;
        }
        if !self.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!(stream = %self.stream, "mirror route healthy");
        }
        *self.last_error.lock().expect("stream state lock") = None;
        metrics
            .stream_healthy
            .with_label_values(&[&self.stream])
            .set(1);
    }

    /// The stream refused records for `error`: unhealthy until it takes a PutRecords again.
    pub(super) fn refused(&self, error: String, metrics: &Metrics) {
        self.refused.store(true, Ordering::Release);
        self.record_error(error, metrics);
    }

    /// The stream took a PutRecords: a refusal is over.
    pub(super) fn accepted(&self, metrics: &Metrics) {
        self.refused.store(false, Ordering::Release);
        self.mark_healthy(metrics);
    }

    /// Records why the stream is unhealthy, unless it refuses records: that stays the reason
    /// until the refusal ends, since it says where the records are.
    pub(super) fn mark_unhealthy(&self, error: String, metrics: &Metrics) {
        if self.is_refused() {
            tracing::warn!(stream = %self.stream, %error, "refusing stream: call failed");
            return;
        }
        self.record_error(error, metrics);
    }

    /// Logs only when the reason changes, not every call.
    fn record_error(&self, error: String, metrics: &Metrics) {
        let mut last = self.last_error.lock().expect("stream state lock");
        if self.healthy.swap(false, Ordering::AcqRel) || last.as_deref() != Some(error.as_str()) {
            tracing::error!(stream = %self.stream, %error, "mirror route unhealthy; Kafka traffic continues unaffected");
        }
        *last = Some(error);
        metrics
            .stream_healthy
            .with_label_values(&[&self.stream])
            .set(0);
    }
}

/// The stream's facts, read by one inspection: the summary and the shard map, each of which
/// may fail on its own.
pub struct Inspection {
    pub info: Result<StreamInfo, ProbeFailure>,
    pub map: Result<ShardMap, ProbeFailure>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeFailure {
    #[error("stream `{stream}`: {operation} timed out after {PROBE_TIMEOUT:?}")]
    TimedOut {
        stream: String,
        operation: &'static str,
    },
    #[error(transparent)]
    Stream(#[from] StreamError),
}

impl ProbeFailure {
    /// What the failure says about the stream.
    pub fn evidence(&self) -> Evidence {
        match self {
            ProbeFailure::TimedOut { .. } => Evidence::Unanswered,
            ProbeFailure::Stream(e) if e.code().is_some_and(|c| THROTTLED.contains(&c)) => {
                Evidence::Unanswered
            }
            ProbeFailure::Stream(_) => Evidence::Failed,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            ProbeFailure::TimedOut { .. } => None,
            ProbeFailure::Stream(e) => e.code(),
        }
    }

    /// The `outcome` label of `stream_probes_total`.
    pub fn outcome(&self) -> &'static str {
        match (self, self.evidence()) {
            (ProbeFailure::TimedOut { .. }, _) => "timeout",
            (_, Evidence::Unanswered) => "throttled",
            _ => "error",
        }
    }
}

/// Describes the stream and loads its shard map, side by side, each within `PROBE_TIMEOUT`.
pub async fn inspect(client: &Client, stream: &str) -> Inspection {
    let timed = |operation: &'static str| ProbeFailure::TimedOut {
        stream: stream.to_owned(),
        operation,
    };
    let (info, map) = tokio::join!(
        tokio::time::timeout(PROBE_TIMEOUT, describe(client, stream)),
        tokio::time::timeout(PROBE_TIMEOUT, load_shard_map(client, stream)),
    );
    Inspection {
        info: info
            .map_err(|_| timed("DescribeStreamSummary"))
            .and_then(|r| r.map_err(ProbeFailure::from)),
        map: map
            .map_err(|_| timed("ListShards"))
            .and_then(|r| r.map_err(ProbeFailure::from)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn traffic_postpones_probes_and_errors_bring_them_closer_with_backoff() {
        let start = Instant::now();
        let mut health = Health::new(start);
        assert_eq!(health.next_probe(), start, "the first probe is due at once");
        assert!(health.observe(Evidence::Answered, start));
        assert!(health.is_healthy());
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(!health.observe(Evidence::Answered, Instant::now()));
        assert_eq!(
            health.next_probe(),
            Instant::now() + IDLE_PROBE,
            "each answered PutRecords postpones the probe"
        );
        let mut ceilings = Vec::new();
        for failures in 1..=8u32 {
            let now = Instant::now();
            health.observe(Evidence::Failed, now);
            assert!(!health.is_healthy());
            let wait = health.next_probe() - now;
            let ceiling = (PROBE_BACKOFF.base * (1 << failures)).min(IDLE_PROBE);
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "failure {failures}: {wait:?} outside {:?}..={ceiling:?}",
                ceiling / 2
            );
            ceilings.push(ceiling);
            tokio::time::advance(wait).await;
        }
        assert_eq!(ceilings.last(), Some(&IDLE_PROBE), "capped");
        health.observe(Evidence::Answered, Instant::now());
        assert!(health.is_healthy());
        assert_eq!(health.next_probe(), Instant::now() + IDLE_PROBE, "reset");
    }

    /// A refusing stream sends one probe at a time, each due later than the last, and the
    /// first accepted request ends the refusal; failures of requests sent before it change
    /// nothing.
    #[tokio::test(start_paused = true)]
    async fn a_refusal_allows_one_probe_at_a_time_with_backoff() {
        let mut health = Health::new(Instant::now());
        assert!(health.may_send(Instant::now()));
        assert!(health.refused(Instant::now()), "the refusal starts");
        assert!(
            !health.refused(Instant::now()),
            "a request sent before it changes nothing"
        );
        let mut waits = Vec::new();
        for _ in 0..8 {
            let start = Instant::now();
            assert!(!health.may_send(start), "not due yet");
            let mut waited = Duration::ZERO;
            while !health.may_send(Instant::now()) {
                tokio::time::advance(Duration::from_millis(10)).await;
                waited += Duration::from_millis(10);
            }
            waits.push(waited);
            health.sent();
            assert!(!health.may_send(Instant::now()), "one probe at a time");
            assert!(!health.refused(Instant::now()), "the probe failed");
        }
        assert!(waits.last() > waits.first(), "{waits:?}");
        assert!(*waits.last().unwrap() <= IDLE_PROBE + Duration::from_millis(10));
        assert!(health.accepted());
        assert!(!health.is_refused() && health.may_send(Instant::now()));
        assert!(!health.accepted(), "only once");
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_probes_back_off_and_leave_health_alone() {
        let mut health = Health::new(Instant::now());
        health.observe(Evidence::Answered, Instant::now());
        let mut waits = Vec::new();
        for _ in 0..6 {
            let now = Instant::now();
            assert!(!health.observe(Evidence::Unanswered, now));
            assert!(
                health.is_healthy(),
                "a throttled or slow probe is load, not an outage"
            );
            waits.push(health.next_probe() - now);
            tokio::time::advance(health.next_probe() - now).await;
        }
        assert!(
            waits.last() > waits.first(),
            "the probes back off: {waits:?}"
        );
        let mut unknown = Health::new(Instant::now());
        unknown.observe(Evidence::Unanswered, Instant::now());
        assert!(!unknown.is_healthy(), "no answer yet: not known healthy");
    }
}
