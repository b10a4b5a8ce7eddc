//! The proxy's own answer to the kinesis-only part of a Produce request.
//!
//! [`Mirror::answer_locally`] runs on the connection's request side, in request order: it
//! assigns each partition's batch its synthetic offsets (the first time after the route
//! entered kinesis-only, no lower than Kafka's log-end offset), and hands the batches to the
//! mirror as one exchange whose response carries those offsets, with deliveries opened as
//! kinesis-primary opens them. Doing both in request order keeps an idempotent producer's
//! batches in sequence and its records in order in Kinesis. [`LocalAnswer::settle`] then runs
//! on the response side: it makes the assignments durable and waits for Kinesis, each
//! partition within its route's `primary_timeout_ms`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::task::TaskTracker;

use bytes::Bytes;
use futures::future::BoxFuture;

use super::super::primary::{refuse_transactional, Deliveries};
use super::super::{Mirror, PrimaryAnswer, ProduceExchange, RouteTable};
use super::state::{Assignment, BatchIdentity, SyntheticLog};
use crate::config::RouteMode;
use crate::kafka::message::MessageError;
use crate::kafka::produce::{ProduceDecodeError, ProduceRequestView, TopicProduceData};
use crate::kafka::produce_answer::{
    with_partition_errors, PartitionErrorAnswer, INVALID_RECORD, INVALID_REQUEST,
    KAFKA_STORAGE_ERROR, REQUEST_TIMED_OUT, UNKNOWN_TOPIC_OR_PARTITION,
};
use crate::kafka::produce_split::{
    encode_request_body, local_response, split, PartitionAnswer, ProduceSplit, ProduceSplitError,
    TopicAnswers,
};
use crate::kafka::records::sole_v2_batch;
use crate::kinesis::delivery::{Delivery, DeliveryWait};
use crate::telemetry::inventory::ClientKey;

/// The directory under `spool.dir` that holds the synthetic offsets: '@' is in no stream
/// name, so no stream's spool can be called this.
pub const DIR: &str = "@kinesis-only";

/// How long a partition's first Produce after its route entered kinesis-only waits for
/// Kafka's log-end offset before it is answered with a retriable error.
const FLOOR_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads a partition's log-end offset from Kafka: the floor of its synthetic offsets after a
/// live switch, so that they never repeat offsets Kafka gave out.
pub trait LogEndOffsets: Send + Sync {
    /// `None` when Kafka could not tell (the implementation logs why).
    fn log_end_offset(&self, topic: Arc<str>, partition: i32) -> BoxFuture<'static, Option<i64>>;
}

/// Why a Produce request for kinesis-only topics could not be answered at all (a partition's
/// own failure is an error code in its answer).
#[derive(Debug, thiserror::Error)]
pub enum KinesisOnlyError {
    #[error("request: {0}")]
    Request(#[from] ProduceDecodeError),
    #[error(transparent)]
    Split(#[from] ProduceSplitError),
    #[error(transparent)]
    Response(#[from] MessageError),
}

/// The mirror's kinesis-only state: the synthetic log, and which partitions have had their
/// floor read since their route entered kinesis-only.
pub(crate) struct KinesisOnly {
    /// Where the synthetic log lives; `None` without a spool (then no route exists).
    dir: Option<PathBuf>,
    /// Opened when a route first is kinesis-only; `None` until then, or if it cannot be.
    log: Mutex<Option<Arc<SyntheticLog>>>,
    floored: Mutex<HashSet<(String, i32)>>,
    log_ends: OnceLock<Arc<dyn LogEndOffsets>>,
    /// The tasks that write a batch's delivery to the log, waited for at shutdown: a mark
    /// lost there would turn the producer's retry after the restart into a second copy.
    marks: TaskTracker,
}

impl KinesisOnly {
    pub(crate) fn new(dir: Option<PathBuf>) -> KinesisOnly {
        KinesisOnly {
            dir,
            log: Mutex::new(None),
            floored: Mutex::new(HashSet::new()),
            log_ends: OnceLock::new(),
            marks: TaskTracker::new(),
        }
    }

    /// Shutdown, once the writers have stopped: writes the deliveries they settled to the
    /// log and makes it durable.
    pub(crate) async fn shut_down(&self) {
        self.marks.close();
        self.marks.wait().await;
        if let Some(log) = self.log() {
            if let Err(e) = log.sync().await {
                tracing::error!(error = %e, "cannot make the kinesis-only delivery marks durable at shutdown");
            }
        }
    }

    /// Opens the synthetic log when `routes` first make a topic kinesis-only, and forgets the
    /// floors of topics that are kinesis-only no more: switched back later, their partitions
    /// read Kafka's log-end offset again.
    pub(crate) fn apply_routes(&self, routes: &RouteTable) {
        self.floored
            .lock()
            .expect("no panic under the lock")
            .retain(|(topic, _)| is_kinesis_only(routes, topic));
        let mut log = self.log.lock().expect("no panic under the lock");
        if log.is_some() || !routes.values().any(|r| r.mode == RouteMode::KinesisOnly) {
            return;
        }
        let Some(dir) = &self.dir else { return };
        match SyntheticLog::open(dir) {
            Ok(opened) => *log = Some(Arc::new(opened)),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot open the kinesis-only offsets; kinesis-only partitions are answered KAFKA_STORAGE_ERROR until a reload opens them")
            }
        }
    }

    /// Tells the synthetic log once the batch is stored for good, however late: entirely in
    /// Kinesis, or the rest of it in the spool, which delivers it in order. A retry after that
    /// is answered with the batch's offsets; sent again, it would reach Kinesis twice, since
    /// the writer's memory of what it took does not outlive a restart.
    fn mark_when_stored(
        &self,
        log: &Arc<SyntheticLog>,
        topic: &str,
        partition: i32,
        base_offset: i64,
        wait: DeliveryWait,
    ) {
        let (log, topic) = (log.clone(), topic.to_owned());
        self.marks.spawn(async move {
            if matches!(
                wait.outcome().await,
                Delivery::Delivered | Delivery::Spooled
            ) {
                log.delivered(&topic, partition, base_offset);
            }
        });
    }

    /// Whether `partition` exists: below the route's `partitions` when there is no Kafka (the
    /// proxy's Metadata names that many); with Kafka, the topic's partitions are Kafka's, and
    /// reading a missing one's log-end offset fails its Produce.
    fn has_partition(&self, route: &super::super::Route, partition: i32) -> bool {
        partition >= 0 && (self.log_ends.get().is_some() || partition < route.partitions)
    }

    fn log(&self) -> Option<Arc<SyntheticLog>> {
        self.log.lock().expect("no panic under the lock").clone()
    }

    /// Kafka's log-end offset of `topic`/`partition` if its counter still has to be raised to
    /// it: `Ok(None)` once done, or when there is no Kafka to ask.
    async fn floor(&self, topic: &str, partition: i32) -> Result<Option<i64>, (i16, String)> {
        let key = (topic.to_owned(), partition);
        if self
            .floored
            .lock()
            .expect("no panic under the lock")
            .contains(&key)
        {
            return Ok(None);
        }
        let Some(log_ends) = self.log_ends.get() else {
            return Ok(None);
        };
        let read = log_ends.log_end_offset(Arc::from(topic), partition);
        match tokio::time::timeout(FLOOR_TIMEOUT, read).await {
            Ok(Some(log_end)) => Ok(Some(log_end)),
            _ => Err((
                REQUEST_TIMED_OUT,
                format!("topic {topic} is in route mode kinesis-only, and the proxy could not read partition {partition}'s log-end offset from Kafka, which its first offsets must follow"),
            )),
        }
    }

    fn floor_in_force(&self, topic: &str, partition: i32) {
        self.floored
            .lock()
            .expect("no panic under the lock")
            .insert((topic.to_owned(), partition));
    }
}

fn is_kinesis_only(routes: &RouteTable, topic: &str) -> bool {
    routes
        .get(topic)
        .is_some_and(|r| r.mode == RouteMode::KinesisOnly)
}

/// A Produce answer for kinesis-only partitions, still to wait for the log's sync and for
/// Kinesis.
pub struct LocalAnswer {
    version: i16,
    /// The response as it stands if every partition is delivered.
    frame: Bytes,
    /// The log to sync before any offset is given out, and the partitions given one.
    assigned: Option<(Arc<SyntheticLog>, Vec<PartitionErrorAnswer>)>,
    waiting: PrimaryAnswer,
    received: Instant,
}

impl LocalAnswer {
    /// The response to send: the offsets once durable and in Kinesis, retriable errors for
    /// the partitions that are not.
    pub async fn settle(self) -> Result<Bytes, MessageError> {
        if let Some((log, assigned)) = &self.assigned {
            if let Err(e) = log.sync().await {
                tracing::error!(error = %e, "cannot make kinesis-only offsets durable; answering KAFKA_STORAGE_ERROR");
                return with_partition_errors(&self.frame, self.version, assigned);
            }
        }
        if self.waiting.is_empty() {
            return Ok(self.frame);
        }
        self.waiting.settle(self.frame, self.received).await
    }
}

/// A partition's batch as the synthetic log placed it.
struct Placed {
    base_offset: i64,
    /// Known to be in Kinesis already (a retry of a delivered batch).
    delivered: bool,
}

impl Mirror {
    /// Lets kinesis-only routes read Kafka's log-end offsets, when the proxy has a Kafka.
    pub fn read_log_ends_with(&self, log_ends: Arc<dyn LogEndOffsets>) {
        let _ = self.kinesis_only.log_ends.set(log_ends);
    }

    /// How a Produce request (`version`, `body`) divides between Kafka and kinesis-only
    /// routes; `None` when it names no kinesis-only topic (nothing is decoded when no route
    /// waits for Kinesis), or is undecodable, which is Kafka's to refuse.
    pub fn split_kinesis_only(
        &self,
        version: i16,
        body: &Bytes,
    ) -> Option<Result<ProduceSplit, ProduceSplitError>> {
        if !self
            .any_kinesis_mode
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return None;
        }
        let routes = self.routes.load();
        if !routes.values().any(|r| r.mode == RouteMode::KinesisOnly) {
            return None;
        }
        let request = ProduceRequestView::decode(version, body.clone()).ok()?;
        match split(request, |topic| is_kinesis_only(&routes, topic)) {
            Ok(ProduceSplit::Kafka) => None,
            split => Some(split),
        }
    }

    /// Answers a Produce request whose topics are all kinesis-only, without Kafka: assigns
    /// synthetic offsets, hands the records to the mirror, waits for Kinesis. `None` for
    /// acks=0 (no response is sent).
    pub async fn produce_locally(
        &self,
        client: Arc<ClientKey>,
        version: i16,
        correlation_id: i32,
        request_body: Bytes,
    ) -> Result<Option<Bytes>, KinesisOnlyError> {
        let received = Instant::now();
        let request = ProduceRequestView::decode(version, request_body.clone())?;
        if let Some(refusal) = refuse_transactional(&self.routes.load(), &request, correlation_id) {
            return Ok(Some(refusal?));
        }
        let answer = self
            .answer_locally(
                client,
                request,
                Some(request_body),
                correlation_id,
                received,
            )
            .await?;
        match answer {
            Some(answer) => Ok(Some(answer.settle().await?)),
            None => Ok(None),
        }
    }

    /// Places the batches of `request` (kinesis-only topics; `body` its encoding, when the
    /// client sent it so) in the synthetic log and hands them to the mirror; the answer is
    /// still to settle. `None` for acks=0. Call in request order (see the module doc).
    pub async fn answer_locally(
        &self,
        client: Arc<ClientKey>,
        request: ProduceRequestView,
        body: Option<Bytes>,
        correlation_id: i32,
        received: Instant,
    ) -> Result<Option<LocalAnswer>, KinesisOnlyError> {
        let version = request.version;
        let routes = self.routes.load_full();
        let log = self.kinesis_only.log();
        let mut answers = Vec::with_capacity(request.topics.len());
        let mut sent_topics: Vec<TopicProduceData> = Vec::new();
        let mut sent_answers = Vec::new();
        let mut deliveries = Deliveries::new();
        let mut assigned = Vec::new();
        let mut waiting = PrimaryAnswer::new(version, &self.metrics);
        let mut every_partition_sent = true;
        for topic in &request.topics {
            let route = routes
                .get(&topic.name)
                .filter(|r| r.mode == RouteMode::KinesisOnly);
            let mut topic_answers = TopicAnswers {
                topic: topic.name.clone(),
                partitions: Vec::new(),
            };
            let mut sent = TopicProduceData {
                partitions: Vec::new(),
                ..topic.clone()
            };
            let mut sent_offsets = topic_answers.clone();
            for partition in &topic.partitions {
                let index = partition.partition;
                let placed = match (route, &log) {
                    (None, _) => Err((
                        UNKNOWN_TOPIC_OR_PARTITION,
                        format!("topic {} has no kinesis-only route", topic.name),
                    )),
                    (Some(route), _) if !self.kinesis_only.has_partition(route, index) => Err((
                        UNKNOWN_TOPIC_OR_PARTITION,
                        format!(
                            "topic {} has no partition {index}: its route has {} (`partitions`)",
                            topic.name, route.partitions
                        ),
                    )),
                    (Some(_), None) => Err((
                        KAFKA_STORAGE_ERROR,
                        format!("topic {} is in route mode kinesis-only, and its offsets cannot be stored (see the proxy's log)", topic.name),
                    )),
                    (Some(_), Some(log)) => {
                        self.place(log, &topic.name, index, partition.records.as_ref())
                            .await
                    }
                };
                let (base_offset, delivered) = match placed {
                    Ok(Placed {
                        base_offset,
                        delivered,
                    }) => (base_offset, delivered),
                    Err((error_code, message)) => {
                        every_partition_sent = false;
                        topic_answers.partitions.push(PartitionAnswer {
                            partition: index,
                            error_code,
                            base_offset: -1,
                            message: Some(message),
                        });
                        continue;
                    }
                };
                let answer = PartitionAnswer {
                    partition: index,
                    error_code: 0,
                    base_offset,
                    message: None,
                };
                topic_answers.partitions.push(answer.clone());
                assigned.push(PartitionErrorAnswer {
                    topic: topic.name.clone(),
                    partition: index,
                    error_code: KAFKA_STORAGE_ERROR,
                    message: format!(
                        "topic {}: the proxy could not make its kinesis-only offsets durable",
                        topic.name
                    ),
                });
                let (Some(route), Some(log), false) = (route, &log, delivered) else {
                    every_partition_sent = false;
                    continue;
                };
                let (delivery, wait) = self.primary.track(&topic.name, index, base_offset);
                match delivery {
                    Some(delivery) => {
                        deliveries.insert((topic.name.clone(), index), delivery);
                        sent.partitions.push(partition.clone());
                        sent_offsets.partitions.push(answer);
                        self.kinesis_only.mark_when_stored(
                            log,
                            &topic.name,
                            index,
                            base_offset,
                            wait.clone(),
                        );
                    }
                    // A retry of a batch still on its way: it waits for that one.
                    None => every_partition_sent = false,
                }
                waiting.wait_for(&topic.name, index, route, wait);
            }
            answers.push(topic_answers);
            if !sent.partitions.is_empty() {
                sent_topics.push(sent);
                sent_answers.push(sent_offsets);
            }
        }
        if !sent_topics.is_empty() {
            let request_body = match body {
                Some(body) if every_partition_sent => body,
                _ => encode_request_body(&ProduceRequestView {
                    topics: sent_topics,
                    ..request.clone()
                })?,
            };
            let exchange = ProduceExchange {
                client,
                version,
                request_body,
                response_frame: Some(local_response(version, correlation_id, &sent_answers)?),
                deliveries,
            };
            // Not in the write-ahead log: the producer hears of these records only once Kinesis
            // has them, so after a crash its retry brings them again.
            self.stage_exchange(exchange, None).await;
        }
        let assigned = log
            .filter(|_| !assigned.is_empty())
            .map(|log| (log, assigned));
        if request.acks == 0 {
            if let Some((log, _)) = assigned {
                // Nobody waits for it, but a restart must not give the offsets out again.
                tokio::spawn(async move {
                    if let Err(e) = log.sync().await {
                        tracing::error!(error = %e, "cannot make kinesis-only offsets durable");
                    }
                });
            }
            return Ok(None);
        }
        Ok(Some(LocalAnswer {
            version,
            frame: local_response(version, correlation_id, &answers)?,
            assigned,
            waiting,
            received,
        }))
    }

    /// Places the batch `records` of `topic`/`partition` in the synthetic log, or says which
    /// error the partition gets.
    async fn place(
        &self,
        log: &SyntheticLog,
        topic: &str,
        partition: i32,
        records: Option<&Bytes>,
    ) -> Result<Placed, (i16, String)> {
        let batch = records
            .ok_or_else(|| "no records".to_owned())
            .and_then(|records| sole_v2_batch(records).map_err(|e| e.to_string()))
            .map_err(|e| {
                (
                    INVALID_RECORD,
                    format!("topic {topic} partition {partition}: {e}"),
                )
            })?;
        if batch.is_transactional {
            return Err((
                INVALID_REQUEST,
                format!("topic {topic} is in route mode kinesis-only, which does not take transactional producers"),
            ));
        }
        let floor = self.kinesis_only.floor(topic, partition).await?;
        let identity = BatchIdentity {
            producer_id: batch.producer_id,
            producer_epoch: batch.producer_epoch,
            base_sequence: batch.base_sequence,
            record_count: i32::try_from(batch.record_count).unwrap_or(i32::MAX),
        };
        let assignment = log
            .assign(topic, partition, &identity, floor)
            .map_err(|e| {
                tracing::error!(topic, partition, error = %e, "cannot assign kinesis-only offsets");
                (
                    KAFKA_STORAGE_ERROR,
                    format!("topic {topic} is in route mode kinesis-only, and the proxy could not store its offsets"),
                )
            })?;
        let placed = match assignment {
            Assignment::New { base_offset } => Placed {
                base_offset,
                delivered: false,
            },
            Assignment::Retry {
                base_offset,
                delivered,
            } => Placed {
                base_offset,
                delivered,
            },
            Assignment::Refused {
                error_code,
                message,
            } => return Err((error_code, message)),
        };
        self.kinesis_only.floor_in_force(topic, partition);
        Ok(placed)
    }
}
