//! One queue per stream between the stage and the stream's writer, so that streams never hold
//! each other up.
//!
//! The stage hands each partition's sampled records to its stream's queue and moves on; a
//! forwarder task per stream feeds them to the writer, in the order handed, and is the only
//! one to wait when that writer is slow or stuck. Each queue keeps its own account of the
//! bytes it holds, bounded by [`STREAM_QUEUE_BYTES`]. When one is full:
//! - spill and drop modes: a partition bound for it is shed, and its records are counted as
//!   `dropped` under their topic and stream;
//! - block mode: a Produce exchange waits, in [`super::Mirror::hand_over`], for room in the
//!   queues of the streams it routes to, and only those.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{RouteTable, EXCHANGE_QUEUE_BLOCKING};
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

/// Room taken in a stream's queue, given back once the records it was taken for are in the
/// writer's input.
pub(super) struct Room {
    _permit: OwnedSemaphorePermit,
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
    /// One permit per byte.
    room: Arc<Semaphore>,
    input: mpsc::UnboundedSender<QueueInput>,
    metrics: Arc<Metrics>,
    last_shed_warning: Mutex<Option<Instant>>,
}

impl StreamQueue {
    fn start(
        stream: &str,
        writer: StreamWriter,
        block: bool,
        metrics: Arc<Metrics>,
    ) -> Arc<StreamQueue> {
        let (input, queued) = mpsc::unbounded_channel();
        tokio::spawn(forward(queued, writer, stream.to_owned(), metrics.clone()));
        Arc::new(StreamQueue {
            stream: stream.to_owned(),
            block,
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
        Some(Arc::new(Room { _permit: permit }))
    }

    /// Queues a partition's records for the writer, behind those queued before. `room` is what
    /// block mode took for them. Without it, in spill and drop modes, they take room now, or
    /// are shed, and counted as dropped, when the queue is full.
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
                    Ok(permit) => Some(Arc::new(Room { _permit: permit })),
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
) {
    while let Some(input) = queued.recv().await {
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
    metrics: Arc<Metrics>,
    by_stream: Mutex<HashMap<String, Arc<StreamQueue>>>,
}

impl StreamQueues {
    pub(super) fn new(block: bool, metrics: Arc<Metrics>) -> StreamQueues {
        StreamQueues {
            block,
            metrics,
            by_stream: Mutex::new(HashMap::new()),
        }
    }

    /// `stream`'s queue, started in front of `writer` on first use.
    pub(super) fn queue(&self, stream: &str, writer: &StreamWriter) -> Arc<StreamQueue> {
        let mut queues = self.by_stream.lock().expect("no panic under the lock");
        queues
            .entry(stream.to_owned())
            .or_insert_with(|| {
                StreamQueue::start(stream, writer.clone(), self.block, self.metrics.clone())
            })
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
