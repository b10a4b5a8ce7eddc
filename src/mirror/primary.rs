//! `kinesis-primary` routes: a Produce response goes back to the client only once Kafka
//! accepted the partition and Kinesis has every sampled record of it.
//!
//! [`Primary::open`] runs as the connection hands the exchange over: for each accepted
//! partition of a kinesis-primary topic it opens a delivery that travels with the records, or,
//! when Kafka reports the batch as one it stored before (a producer's retry: same base
//! offset), waits on the delivery of the original, since the writer skips the retry's records
//! as duplicates. [`PrimaryAnswer::settle`] then waits, within the route's timeout, and turns
//! the partitions Kinesis did not confirm into retriable errors.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use tokio::time::Instant;

use super::{ProduceExchange, Route, RouteTable};
use crate::config::RouteMode;
use crate::kafka::header::response_body_offset;
use crate::kafka::message::MessageError;
use crate::kafka::produce::{ProduceRequestView, ProduceResponseView};
use crate::kafka::produce_answer::{
    refusal, with_partition_errors, PartitionErrorAnswer, INVALID_REQUEST, KAFKA_STORAGE_ERROR,
    REQUEST_TIMED_OUT,
};
use crate::kinesis::delivery::{Delivery, DeliveryWait, PartitionDelivery};
use crate::telemetry::metrics::Metrics;

/// Batches remembered per partition, for retries: an idempotent producer has at most five in
/// flight per partition, and retries them in order.
const REMEMBERED_PER_PARTITION: usize = 64;

/// A partition's deliveries for the stage to seal, by topic and partition.
pub(crate) type Deliveries = HashMap<(String, i32), PartitionDelivery>;

/// The deliveries of kinesis-primary batches, by topic, partition and Kafka base offset.
#[derive(Default)]
pub(super) struct Primary {
    recent: Mutex<HashMap<(String, i32), Batches>>,
}

/// A partition's latest batches: their base offsets and deliveries, oldest first.
type Batches = VecDeque<(i64, DeliveryWait)>;

/// One partition a Produce response waits for.
struct Awaited {
    topic: String,
    partition: i32,
    timeout: Duration,
    /// The route's mode, which the error messages name.
    mode: RouteMode,
    wait: DeliveryWait,
}

/// What a Produce response of kinesis-primary topics waits for before it goes back.
pub struct PrimaryAnswer {
    version: i16,
    awaited: Vec<Awaited>,
    metrics: Arc<Metrics>,
}

impl Primary {
    /// Opens the deliveries `exchange` owes its kinesis-primary partitions, putting them in
    /// the exchange for the stage, and returns what its response must wait for; `None` when
    /// it names no such partition that Kafka accepted.
    pub(super) fn open(
        &self,
        exchange: &mut ProduceExchange,
        routes: &RouteTable,
        metrics: &Arc<Metrics>,
    ) -> Option<PrimaryAnswer> {
        let frame = exchange.response_frame.as_ref()?;
        let request =
            ProduceRequestView::decode(exchange.version, exchange.request_body.clone()).ok()?;
        // An unreadable answer is forwarded as it is, and the stage counts it.
        let offset = response_body_offset(frame, ApiKey::Produce, exchange.version).ok()?;
        let response = ProduceResponseView::decode(exchange.version, frame.slice(offset..)).ok()?;
        let mut answer_to = PrimaryAnswer::new(exchange.version, metrics);
        let mut recent = self.recent.lock().expect("no panic under the lock");
        for topic in &request.topics {
            let Some(route) = routes
                .get(&topic.name)
                .filter(|_| is_primary(routes, &topic.name))
            else {
                continue;
            };
            for partition in topic.partitions.iter().filter(|p| p.records.is_some()) {
                let Some(answer) = response.partition(&topic.name, partition.partition) else {
                    continue;
                };
                if answer.error_code != 0 {
                    continue;
                }
                let key = (topic.name.clone(), partition.partition);
                let (delivery, wait) = track(&mut recent, key.clone(), answer.base_offset);
                if let Some(delivery) = delivery {
                    exchange.deliveries.insert(key, delivery);
                }
                answer_to.wait_for(&topic.name, partition.partition, route, wait);
            }
        }
        (!answer_to.awaited.is_empty()).then_some(answer_to)
    }

    /// The delivery of the batch of `topic`/`partition` at `base_offset`: a new one to seal,
    /// with its wait, or, when that batch was handed over before and waiting on it can still
    /// tell, only the original's wait (see [`original`]).
    pub(super) fn track(
        &self,
        topic: &str,
        partition: i32,
        base_offset: i64,
    ) -> (Option<PartitionDelivery>, DeliveryWait) {
        let mut recent = self.recent.lock().expect("no panic under the lock");
        track(&mut recent, (topic.to_owned(), partition), base_offset)
    }
}

fn track(
    recent: &mut HashMap<(String, i32), Batches>,
    key: (String, i32),
    base_offset: i64,
) -> (Option<PartitionDelivery>, DeliveryWait) {
    let batches = recent.entry(key).or_default();
    if let Some(wait) = original(batches, base_offset) {
        return (None, wait);
    }
    let (delivery, wait) = PartitionDelivery::open();
    remember(batches, base_offset, wait.clone());
    (Some(delivery), wait)
}

impl Primary {
    /// Forgets the batches of topics whose mode `routes` no longer makes wait for Kinesis.
    pub(super) fn keep_only(&self, routes: &RouteTable) {
        self.recent
            .lock()
            .expect("no panic under the lock")
            .retain(|(topic, _), _| waits_for_kinesis(routes, topic));
    }
}

/// The delivery of the batch Kafka stored at `base_offset` before, when this one is its retry
/// and waiting on it can still tell: one still under way, delivered, or spooled (the writer
/// will skip the retry's records, so a delivery of its own would never complete). A failed
/// one is not reused: if its records never reached the writer (shed, undecodable), the
/// retry's records will, and deserve their own verdict.
fn original(batches: &Batches, base_offset: i64) -> Option<DeliveryWait> {
    batches
        .iter()
        .rev()
        .find(|(offset, wait)| *offset == base_offset && wait.settled() != Some(Delivery::Failed))
        .map(|(_, wait)| wait.clone())
}

fn remember(batches: &mut Batches, base_offset: i64, wait: DeliveryWait) {
    batches.retain(|(offset, _)| *offset != base_offset);
    if batches.len() >= REMEMBERED_PER_PARTITION {
        batches.pop_front();
    }
    batches.push_back((base_offset, wait));
}

impl PrimaryAnswer {
    pub(super) fn new(version: i16, metrics: &Arc<Metrics>) -> PrimaryAnswer {
        PrimaryAnswer {
            version,
            awaited: Vec::new(),
            metrics: metrics.clone(),
        }
    }

    /// Makes the answer wait for `wait`, the delivery of `topic`/`partition`, within its route's
    /// timeout.
    pub(super) fn wait_for(
        &mut self,
        topic: &str,
        partition: i32,
        route: &Route,
        wait: DeliveryWait,
    ) {
        self.awaited.push(Awaited {
            topic: topic.to_owned(),
            partition,
            timeout: route.primary_timeout,
            mode: route.mode,
            wait,
        });
    }

    /// Whether it waits for nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.awaited.is_empty()
    }

    /// Waits for Kinesis, each partition within its route's timeout, and returns the
    /// response to send: `frame` itself when every partition was delivered, else `frame` with
    /// the others answered REQUEST_TIMED_OUT (not confirmed in time, or spooled) or
    /// KAFKA_STORAGE_ERROR (failed for good). Both are retriable.
    /// A response that cannot be rewritten is an error: Kafka's answer must not go back
    /// unchanged, since it would acknowledge records Kinesis does not have.
    /// Each partition's timeout counts from `received`, when the client's request arrived, so
    /// that answers queued behind a slow one on the connection do not each wait it anew.
    pub async fn settle(
        self,
        frame: Bytes,
        received: std::time::Instant,
    ) -> Result<Bytes, MessageError> {
        let started = Instant::now();
        let received = Instant::from_std(received);
        let mut errors = Vec::new();
        for awaited in &self.awaited {
            let deadline = received + awaited.timeout;
            let outcome = tokio::time::timeout_at(deadline, awaited.wait.clone().outcome()).await;
            let (code, error, message) = match outcome {
                Ok(Delivery::Delivered) => continue,
                Ok(Delivery::Failed) => (
                    KAFKA_STORAGE_ERROR,
                    "kinesis_failed",
                    format!("Kinesis refused the records (route mode {})", awaited.mode),
                ),
                // The spool will deliver it, but not within this answer: the producer hears
                // the timeout it would have heard anyway.
                Ok(Delivery::Spooled) => {
                    tokio::time::sleep_until(deadline).await;
                    timed_out(awaited)
                }
                Err(_) => timed_out(awaited),
            };
            self.metrics
                .primary_errors
                .with_label_values(&[&awaited.topic, error])
                .inc();
            errors.push(PartitionErrorAnswer {
                topic: awaited.topic.clone(),
                partition: awaited.partition,
                error_code: code,
                message: format!("topic {}: {message}", awaited.topic),
            });
        }
        let added = started.elapsed().as_secs_f64();
        let mut topics: Vec<&str> = self.awaited.iter().map(|a| a.topic.as_str()).collect();
        topics.dedup();
        for topic in topics {
            self.metrics
                .primary_added
                .with_label_values(&[topic])
                .observe(added);
        }
        if errors.is_empty() {
            return Ok(frame);
        }
        with_partition_errors(&frame, self.version, &errors)
    }
}

/// The proxy's own answer to a transactional Produce request naming a topic whose mode waits
/// for Kinesis (kinesis-primary or kinesis-only): INVALID_REQUEST for every partition, and the
/// request is not forwarded. A transaction's records are mirrored only once it commits, after
/// these responses, so they could not be in Kinesis when the producer is answered. The whole
/// request is refused rather than those partitions alone: the producer must abort the
/// transaction on that error anyway, so nothing else of it could have been kept, and nothing
/// reaches Kafka to be aborted.
pub(super) fn refuse_transactional(
    routes: &RouteTable,
    request: &ProduceRequestView,
    correlation_id: i32,
) -> Option<Result<Bytes, MessageError>> {
    request.transactional_id.as_ref()?;
    let (refused, mode) = request.topics.iter().find_map(|t| {
        let route = routes.get(&t.name).filter(|r| r.mode.waits_for_kinesis())?;
        Some((t.name.clone(), route.mode))
    })?;
    Some(refusal(correlation_id, request, INVALID_REQUEST, |topic| {
        if topic == refused {
            format!("topic {topic} is in route mode {mode}, which does not take transactional producers")
        } else {
            format!("the request also produces to topic {refused}, which is in route mode {mode} and does not take transactional producers")
        }
    }))
}

fn is_primary(routes: &RouteTable, topic: &str) -> bool {
    routes
        .get(topic)
        .is_some_and(|r| r.mode == RouteMode::KinesisPrimary)
}

fn waits_for_kinesis(routes: &RouteTable, topic: &str) -> bool {
    routes
        .get(topic)
        .is_some_and(|r| r.mode.waits_for_kinesis())
}

fn timed_out(awaited: &Awaited) -> (i16, &'static str, String) {
    (
        REQUEST_TIMED_OUT,
        "timeout",
        format!(
            "Kinesis did not confirm within {}ms (route mode {})",
            awaited.timeout.as_millis(),
            awaited.mode
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_waits_on_its_original_unless_that_failed() {
        let mut batches = VecDeque::new();
        let (delivery, wait) = PartitionDelivery::open();
        remember(&mut batches, 10, wait);
        assert!(
            original(&batches, 10).is_some(),
            "under way: the retry waits"
        );
        assert!(original(&batches, 11).is_none(), "another batch");
        drop(delivery);
        assert!(
            original(&batches, 10).is_none(),
            "failed: the retry gets its own"
        );
        for offset in 0..(REMEMBERED_PER_PARTITION as i64 + 5) {
            remember(&mut batches, offset, PartitionDelivery::open().1);
        }
        assert_eq!(batches.len(), REMEMBERED_PER_PARTITION);
    }
}
