//! Produce requests naming kinesis-only topics: the proxy answers those topics itself, and
//! only the rest of the request, if any, goes to Kafka; the two answers are merged in the
//! order of the request.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;

use super::{api_name, ClientState, Connection, ConnectionError};
use crate::kafka::frame::seal;
use crate::kafka::header::RequestHeader;
use crate::kafka::produce_split::{merge, ProduceSplit};
use crate::mirror::{KinesisOnlyError, LocalAnswer};

/// How a Produce request divides between Kafka and the proxy.
pub(super) enum KinesisOnlySplit {
    /// It names no kinesis-only topic: as before there were modes.
    None,
    /// Only kinesis-only topics: nothing goes to Kafka. `None` for acks=0.
    Local(Option<LocalAnswer>),
    /// Kafka gets `kafka_frame`, whose body is `kafka_body`; the proxy gives `answer`.
    Mixed {
        kafka_body: Bytes,
        kafka_frame: Bytes,
        answer: Option<MergedAnswer>,
    },
}

/// The proxy's answer to the kinesis-only topics of a mixed request, and the request's topic
/// order, which the merged response follows.
pub(super) struct MergedAnswer {
    answer: LocalAnswer,
    order: Vec<String>,
}

impl MergedAnswer {
    /// Kafka's response (`kafka_frame`) with the proxy's answers merged in, once they settle.
    pub(super) async fn merge_into(
        self,
        kafka_frame: &Bytes,
        version: i16,
    ) -> Result<Bytes, ConnectionError> {
        let failed = |e: crate::kafka::message::MessageError| ConnectionError::Response {
            api: api_name(ApiKey::Produce as i16),
            version,
            source: e.into(),
        };
        let local = self.answer.settle().await.map_err(failed)?;
        merge(kafka_frame, &local, version, &self.order).map_err(failed)
    }
}

impl Connection {
    /// Splits off and starts answering the kinesis-only topics of a Produce request
    /// (`request_body`, the body of `frame`). Runs in request order: see
    /// [`crate::mirror::Mirror::answer_locally`].
    pub(super) async fn split_kinesis_only(
        &self,
        header: &RequestHeader<'_>,
        frame: &Bytes,
        request_body: &Bytes,
        client: &ClientState,
        received: Instant,
    ) -> Result<KinesisOnlySplit, ConnectionError> {
        let mirror = &self.proxy.mirror;
        let Some(split) = mirror.split_kinesis_only(header.api_version, request_body) else {
            return Ok(KinesisOnlySplit::None);
        };
        let (request, body, mixed) = match split.map_err(KinesisOnlyError::from)? {
            ProduceSplit::Kafka => return Ok(KinesisOnlySplit::None),
            ProduceSplit::Local(request) => (request, Some(request_body.clone()), None),
            ProduceSplit::Mixed {
                kafka_body,
                local,
                order,
            } => (local, None, Some((kafka_body, order))),
        };
        let answer = mirror
            .answer_locally(
                client.key.clone(),
                request,
                body,
                header.correlation_id,
                received,
            )
            .await?;
        let Some((kafka_body, order)) = mixed else {
            return Ok(KinesisOnlySplit::Local(answer));
        };
        // The client's header, then the Kafka part's body.
        let header_end = header.body_offset.unwrap_or(frame.len());
        let mut kafka_frame = BytesMut::with_capacity(header_end + kafka_body.len());
        kafka_frame.extend_from_slice(&frame[..header_end]);
        kafka_frame.extend_from_slice(&kafka_body);
        Ok(KinesisOnlySplit::Mixed {
            kafka_body,
            kafka_frame: seal(kafka_frame),
            answer: answer.map(|answer| MergedAnswer { answer, order }),
        })
    }
}
