//! One queue per stream between the stage and the stream's writer, so that streams never hold
//! each other up.
//!
//! The stage hands each partition's sampled records to its stream's queue and moves on; a
//! forwarder task per stream feeds them to the writer, in the order handed, and is the only
//! one to wait when that writer is slow or stuck. Each queue keeps its own account of the
//! bytes it holds, bounded by [`STREAM_QUEUE_BYTES`]. When one is full:
//! - spill mode with a write-ahead log: the partition is queued over the bound, and the stage
//!   takes no new exchange until every queue over its bound is back under it, so exchanges wait
//!   in the log (see [`super::intake`]) and the mirror runs at its writers' pace instead of
//!   shedding when they fall behind (CPU overload). A queue that hands its writer nothing for
//!   [`STUCK_AFTER`] is stuck (its writer's disk stalled): the stage stops waiting for it, and
//!   its partitions are shed as below; they stay in the log, replayed at the next start;
//! - drop mode, and spill mode without a log: a partition bound for it is shed, and its
//!   records are counted as `dropped` under their topic and stream;
//! - block mode: a Produce exchange waits, in [`super::Mirror::hand_over`], for room in the
//!   queues of the streams it routes to, and only those.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::time::Instant as ClockInstant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use super::{wait_until_woken, RouteTable, EXCHANGE_QUEUE_BLOCKING};
use crate::kafka::produce::ProduceRequestView;
use crate::kinesis::request::MirrorRecord;
use crate::kinesis::writer::StreamWriter;
use crate::telemetry::metrics::{Metrics, MirrorResult};

/// Bytes a stream's queue may hold: request bytes of the exchanges admitted for it in block
/// mode (at most [`EXCHANGE_QUEUE_BLOCKING`] exchanges), decoded records' memory in spill and
/// drop modes. It sits outside the memory budget, like the exchange queue, so this bounds what
/// one stuck stream pins besides its writer's input. A partition alone always fits. It only
/// has to absorb a writer's pauses (a spool fsync): records wait in the budget, not here.
pub const STREAM_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// How long a queue with records may go without handing one to its writer before it counts
/// as stuck.
const STUCK_AFTER: Duration = Duration::from_secs(5);

/// Room taken in a stream's queue, given back once the records it was taken for are in the
/// writer's input.
pub(super) struct Room {
    _taken: Taken,
}

enum Taken {
    Permit {
        _permit: OwnedSemaphorePermit,
    },
    /// Queued over the bound: counted until forwarded.
    Overflow {
        _bytes: OverflowBytes,
    },
}

/// Bytes a queue holds over its bound, released (waking the stage) once forwarded.
struct OverflowBytes {
    bytes: usize,
    queue: Arc<Overflow>,
}

impl Drop for OverflowBytes {
    fn drop(&mut self) {
        self.queue.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        self.queue.total.fetch_sub(self.bytes, Ordering::AcqRel);
        self.queue.freed.notify_waiters();
    }
}

/// A queue's account of what it holds over its bound, and of its forwarder's progress.
struct Overflow {
    bytes: AtomicUsize,
    /// Every queue's overflow together, so that the stage checks one number while none is over.
    total: Arc<AtomicUsize>,
    freed: Arc<Notify>,
    /// Milliseconds from `since` to the forwarder's last step (took an input, or handed a
    /// record to the writer).
    progress_ms: AtomicU64,
    since: ClockInstant,
}

impl Overflow {
    fn progressed(&self) {
        self.progress_ms
            .store(self.since.elapsed().as_millis() as u64, Ordering::Release);
    }

    fn idle_for(&self) -> Duration {
        self.since.elapsed().saturating_sub(Duration::from_millis(
            self.progress_ms.load(Ordering::Acquire),
        ))
    }
}

/// Room block mode took for one exchange, by stream.
pub(super) type Rooms = HashMap<String, Arc<Room>>;

enum QueueInput {
    /// One partition's records, in Kafka order.
    Records {
        topic: Arc<str>,
        records: Vec<MirrorRecord>,
        room: Option<Arc<Room>>,
    },
    /// Resolves once every record queued before it is in the writer's input.
    Flush(oneshot::Sender<()>),
}

pub(crate) struct StreamQueue {
    stream: String,
    /// `when_full = "block"`: room is taken before the exchange reaches the stage.
    block: bool,
    /// Spill mode with a write-ahead log: a full queue holds the stage instead of shedding.
    hold: bool,
    /// One permit per byte.
    room: Arc<Semaphore>,
    overflow: Arc<Overflow>,
    input: mpsc::UnboundedSender<QueueInput>,
    metrics: Arc<Metrics>,
    last_shed_warning: Mutex<Option<Instant>>,
}

impl StreamQueue {
    fn start(stream: &str, writer: StreamWriter, queues: &StreamQueues) -> Arc<StreamQueue> {
        let (input, queued) = mpsc::unbounded_channel();
        let metrics = queues.metrics.clone();
        let overflow = Arc::new(Overflow {
            bytes: AtomicUsize::new(0),
            total: queues.overflow_total.clone(),
            freed: queues.freed.clone(),
            progress_ms: AtomicU64::new(0),
            since: ClockInstant::now(),
        });
        tokio::spawn(forward(
            queued,
            writer,
            stream.to_owned(),
            metrics.clone(),
            overflow.clone(),
        ));
        Arc::new(StreamQueue {
            stream: stream.to_owned(),
            block: queues.block,
            hold: queues.hold,
            overflow,
            room: Arc::new(Semaphore::new(STREAM_QUEUE_BYTES)),
            input,
            metrics,
            last_shed_warning: Mutex::new(None),
        })
    }

    /// Block mode: waits until the queue has room for `bytes` of request frames, and takes it.
    /// An exchange takes at least a [`EXCHANGE_QUEUE_BLOCKING`]th of the queue, however small:
    /// shallow, as the stage's own queue in block mode, so that the memory budget is what
    /// makes producers wait.
    pub(super) async fn make_room(&self, bytes: usize) -> Option<Arc<Room>> {
        let bytes = bytes.max(STREAM_QUEUE_BYTES / EXCHANGE_QUEUE_BLOCKING);
        let permit = self
            .room
            .clone()
            .acquire_many_owned(permits(bytes))
            .await
            .ok()?;
        Some(Arc::new(Room {
            _taken: Taken::Permit { _permit: permit },
        }))
    }

    /// Queues a partition's records for the writer, behind those queued before. `room` is what
    /// block mode took for them. Without it, in spill and drop modes, they take room now; when
    /// the queue is full they go over its bound (spill mode with a log, unless the queue is
    /// stuck), or are shed and counted as dropped.
    pub(super) fn hand_on(
        &self,
        topic: &Arc<str>,
        records: Vec<MirrorRecord>,
        room: Option<Arc<Room>>,
    ) {
        if records.is_empty() {
            return;
        }
        let room = match room {
            Some(room) => Some(room),
            // Only a reload between the exchange's admission and its decoding gets here (its
            // topic's route changed streams): it was admitted, so it goes on.
            None if self.block => None,
            None => {
                let bytes = records.iter().map(MirrorRecord::memory_bytes).sum();
                match self.room.clone().try_acquire_many_owned(permits(bytes)) {
                    Ok(permit) => Some(Arc::new(Room {
                        _taken: Taken::Permit { _permit: permit },
                    })),
                    Err(_) if self.hold && !self.is_stuck() => Some(self.over_bound(bytes)),
                    Err(_) => return self.shed(topic, records.len()),
                }
            }
        };
        let records = QueueInput::Records {
            topic: topic.clone(),
            records,
            room,
        };
        if let Err(unsent) = self.input.send(records) {
            // The forwarder lives as long as the queue: only a panic in it gets here.
            if let QueueInput::Records { topic, records, .. } = unsent.0 {
                self.metrics.mirror_outcome(
                    &topic,
                    &self.stream,
                    MirrorResult::Failed,
                    records.len() as u64,
                );
            }
        }
    }

    fn over_bound(&self, bytes: usize) -> Arc<Room> {
        self.overflow.bytes.fetch_add(bytes, Ordering::AcqRel);
        self.overflow.total.fetch_add(bytes, Ordering::AcqRel);
        Arc::new(Room {
            _taken: Taken::Overflow {
                _bytes: OverflowBytes {
                    bytes,
                    queue: self.overflow.clone(),
                },
            },
        })
    }

    /// Holds records, and its forwarder has handed none to the writer for [`STUCK_AFTER`].
    fn is_stuck(&self) -> bool {
        let holds = self.room.available_permits() < STREAM_QUEUE_BYTES
            || self.overflow.bytes.load(Ordering::Acquire) > 0;
        holds && self.overflow.idle_for() > STUCK_AFTER
    }

    /// Over its bound and still moving: the stage waits for it.
    fn holds_the_stage(&self) -> bool {
        self.overflow.bytes.load(Ordering::Acquire) > 0 && !self.is_stuck()
    }

    fn shed(&self, topic: &str, records: usize) {
        self.metrics
            .mirror_outcome(topic, &self.stream, MirrorResult::Dropped, records as u64);
        // At most one line a second per stream: a stuck stream sheds every partition.
        let mut last = self
            .last_shed_warning
            .lock()
            .expect("no panic under the lock");
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
            *last = Some(Instant::now());
            tracing::warn!(stream = %self.stream, %topic, records, "the stream's queue is full (its writer is not keeping up): records not mirrored (mirror_records_total{{result=\"dropped\"}})");
        }
    }

    /// Bytes of room taken.
    #[cfg(test)]
    pub(super) fn held_bytes(&self) -> usize {
        STREAM_QUEUE_BYTES - self.room.available_permits()
    }

    /// Resolves once every record queued before the call is in the writer's input.
    async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.input.send(QueueInput::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}

/// Block mode: waits for room in the queue of each stream `request` routes to, for the request
/// bytes it produces there, and takes it. Only those streams can make it wait: a request to
/// unrouted topics takes none. Streams are taken in name order, so that two exchanges never
/// each hold room the other waits for.
pub(super) async fn make_room(request: &ProduceRequestView, routes: &RouteTable) -> Rooms {
    let mut wanted: BTreeMap<&str, (&StreamQueue, usize)> = BTreeMap::new();
    for topic in &request.topics {
        let Some(route) = routes.get(&topic.name) else {
            continue;
        };
        let bytes: usize = topic
            .partitions
            .iter()
            .filter_map(|p| p.records.as_ref().map(Bytes::len))
            .sum();
        wanted.entry(&route.stream).or_insert((&route.queue, 0)).1 += bytes;
    }
    let mut rooms = Rooms::new();
    for (stream, (queue, bytes)) in wanted {
        if let Some(room) = queue.make_room(bytes).await {
            rooms.insert(stream.to_owned(), room);
        }
    }
    rooms
}

/// Semaphore permits for `bytes`: at most the whole queue, so that one partition always fits.
fn permits(bytes: usize) -> u32 {
    bytes.min(STREAM_QUEUE_BYTES) as u32
}

/// Feeds a stream's queued records to its writer, waiting on that writer alone.
async fn forward(
    mut queued: mpsc::UnboundedReceiver<QueueInput>,
    writer: StreamWriter,
    stream: String,
    metrics: Arc<Metrics>,
    overflow: Arc<Overflow>,
) {
    while let Some(input) = queued.recv().await {
        overflow.progressed();
        match input {
            QueueInput::Records {
                topic,
                records,
                room,
            } => {
                for record in records {
                    if writer.send(record).await.is_err() {
                        metrics.mirror_outcome(&topic, &stream, MirrorResult::Failed, 1);
                    }
                    overflow.progressed();
                }
                // The records are in the writer's input now.
                drop(room);
            }
            QueueInput::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// The queue of every stream the routes have named, kept for the life of the process like the
/// writers: a stream a reload removes still drains what was queued for it, and one named again
/// later gets the same queue, so its records stay in order.
pub(super) struct StreamQueues {
    block: bool,
    hold: bool,
    metrics: Arc<Metrics>,
    by_stream: Mutex<HashMap<String, Arc<StreamQueue>>>,
    overflow_total: Arc<AtomicUsize>,
    /// Woken whenever records over a bound are forwarded.
    freed: Arc<Notify>,
}

impl StreamQueues {
    /// `hold`: full queues hold the stage instead of shedding (spill mode with a log).
    pub(super) fn new(block: bool, hold: bool, metrics: Arc<Metrics>) -> StreamQueues {
        StreamQueues {
            block,
            hold,
            metrics,
            by_stream: Mutex::new(HashMap::new()),
            overflow_total: Arc::new(AtomicUsize::new(0)),
            freed: Arc::new(Notify::new()),
        }
    }

    /// Whether the stage should take no new exchange: a queue is over its bound and moving.
    pub(super) fn hold_the_stage(&self) -> bool {
        self.overflow_total.load(Ordering::Acquire) > 0
            && self
                .by_stream
                .lock()
                .expect("no panic under the lock")
                .values()
                .any(|q| q.holds_the_stage())
    }

    /// Waits until no queue holds the stage; looks again at least every 250 ms, since a queue
    /// that gets stuck wakes no one.
    pub(super) async fn wait_until_released(&self) {
        let recheck = Some(Duration::from_millis(250));
        wait_until_woken(&self.freed, recheck, || !self.hold_the_stage()).await;
    }

    /// `stream`'s queue, started in front of `writer` on first use.
    pub(super) fn queue(&self, stream: &str, writer: &StreamWriter) -> Arc<StreamQueue> {
        let mut queues = self.by_stream.lock().expect("no panic under the lock");
        queues
            .entry(stream.to_owned())
            .or_insert_with(|| StreamQueue::start(stream, writer.clone(), self))
            .clone()
    }

    /// Resolves once every record queued before the call, in every stream's queue, is in its
    /// writer's input.
    pub(super) async fn flush(&self) {
        let queues: Vec<Arc<StreamQueue>> = self
            .by_stream
            .lock()
            .expect("no panic under the lock")
            .values()
            .cloned()
            .collect();
        futures::future::join_all(queues.iter().map(|q| q.flush())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinesis::test_support::{outcomes, record};

    /// Partitions of 100 records of 4 KiB, about 0.4 MiB each: 100 fill the writer's input (4,096
    /// records) and then the queue twice over.
    const PARTITIONS: i64 = 100;
    const PER_PARTITION: i64 = 100;

    fn partition(n: i64) -> Vec<MirrorRecord> {
        (n * PER_PARTITION..(n + 1) * PER_PARTITION)
            .map(|offset| MirrorRecord {
                data: Bytes::from(vec![b'x'; 4096]),
                ..record(offset)
            })
            .collect()
    }

    fn dropped(metrics: &Metrics) -> u64 {
        outcomes(metrics, "dropped")
    }

    /// A queue in front of a writer that takes nothing until the test reads it.
    fn queue_in_front_of_a_paused_writer(
        hold: bool,
    ) -> (
        StreamQueues,
        Arc<StreamQueue>,
        mpsc::Receiver<MirrorRecord>,
        Arc<Metrics>,
    ) {
        let metrics = Arc::new(Metrics::new());
        let queues = StreamQueues::new(false, hold, metrics.clone());
        // Stream `s`, which the test-support counters read.
        let (writer, taken) = StreamWriter::detached("s");
        let queue = queues.queue("s", &writer);
        (queues, queue, taken, metrics)
    }

    /// Hands `partitions` to the queue, then lets its forwarder run.
    async fn hand_on(queue: &StreamQueue, partitions: std::ops::Range<i64>) {
        let topic: Arc<str> = Arc::from("orders");
        for n in partitions {
            queue.hand_on(&topic, partition(n), None);
        }
        tokio::task::yield_now().await;
    }

    async fn take_all(taken: &mut mpsc::Receiver<MirrorRecord>, records: i64) -> Vec<i64> {
        let mut offsets = Vec::new();
        while offsets.len() < records as usize {
            let record = tokio::time::timeout(Duration::from_secs(10), taken.recv())
                .await
                .expect("records keep coming")
                .expect("the queue is open");
            offsets.push(record.offset);
        }
        offsets
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_log_a_writer_that_falls_behind_holds_the_stage_and_loses_nothing() {
        let (queues, queue, mut taken, metrics) = queue_in_front_of_a_paused_writer(true);
        hand_on(&queue, 0..PARTITIONS).await;
        assert_eq!(
            dropped(&metrics),
            0,
            "nothing shed while the writer is behind"
        );
        assert!(queues.hold_the_stage(), "the stage waits for the writer");
        // The writer catches up: the stage is let go once the overflow is forwarded.
        let offsets = take_all(&mut taken, PARTITIONS * PER_PARTITION).await;
        assert_eq!(offsets, (0..PARTITIONS * PER_PARTITION).collect::<Vec<_>>());
        tokio::time::timeout(Duration::from_secs(1), queues.wait_until_released())
            .await
            .expect("released once the writer took the overflow");
        assert!(!queues.hold_the_stage());
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_log_a_stuck_writer_lets_the_stage_go_and_sheds_only_after_the_stuck_time() {
        let (queues, queue, mut taken, metrics) = queue_in_front_of_a_paused_writer(true);
        hand_on(&queue, 0..PARTITIONS).await;
        assert!(queues.hold_the_stage());
        // The writer takes nothing for longer than STUCK_AFTER: the stage stops waiting
        // for it, and what comes next for the stream is shed (the log keeps it).
        tokio::time::timeout(STUCK_AFTER * 2, queues.wait_until_released())
            .await
            .expect("a stuck queue lets the stage go");
        // Its room fills again, and then its partitions are shed instead of held over.
        hand_on(&queue, PARTITIONS..PARTITIONS + 40).await;
        assert!(
            dropped(&metrics) >= PER_PARTITION as u64,
            "a stuck queue sheds"
        );
        assert!(!queues.hold_the_stage(), "and holds no one");
        // What was queued before it got stuck still arrives, in order.
        let offsets = take_all(&mut taken, PARTITIONS * PER_PARTITION).await;
        assert_eq!(offsets, (0..PARTITIONS * PER_PARTITION).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_log_a_full_queue_sheds() {
        let (queues, queue, _taken, metrics) = queue_in_front_of_a_paused_writer(false);
        hand_on(&queue, 0..PARTITIONS).await;
        assert!(dropped(&metrics) > 0, "memory mode sheds a full queue");
        assert!(!queues.hold_the_stage(), "and never holds the stage");
    }
}
