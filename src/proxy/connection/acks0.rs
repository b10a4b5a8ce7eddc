//! What a connection keeps about its acks=0 Produce requests: their correlation ids, to discard
//! answers some brokers send to them, and the proxy's own requests whose answers vouch for them.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;

use crate::kafka::header::response_correlation_id;

/// acks=0 Produce requests remembered per connection. Apache Kafka never answers them, but some
/// brokers do (tansu 0.6.0); such an answer is discarded instead of breaking the FIFO pairing.
const MAX_REMEMBERED: usize = 1024;

/// How long an acks=0 Produce may wait for a later request's answer to vouch for it before the
/// proxy sends a request of its own to get one. Bounds both the records held per connection and
/// the extra requests (at most one per this interval) on a connection that only sends acks=0.
pub const PROOF_DELAY: Duration = Duration::from_millis(100);

/// Correlation ids of the proxy's own requests count up from here, far from the small
/// non-negative ids clients use.
const PROBE_CORRELATION_BASE: i32 = i32::MIN;

/// Client id of the proxy's own requests.
const PROBE_CLIENT_ID: &[u8] = b"kafka-kinesis-proxy";

/// Correlation ids of recent acks=0 Produce requests, oldest first.
#[derive(Debug, Default)]
pub struct Acks0Ids(Mutex<VecDeque<i32>>);

impl Acks0Ids {
    pub fn remember(&self, correlation_id: i32) {
        let mut sent = self.0.lock().expect("acks0 lock");
        if sent.len() == MAX_REMEMBERED {
            sent.pop_front();
        }
        sent.push_back(correlation_id);
    }

    /// Whether `frame` answers a remembered acks=0 request; if so it is forgotten.
    pub fn take_answer(&self, frame: &[u8]) -> Option<i32> {
        let id = response_correlation_id(frame)?;
        let mut sent = self.0.lock().expect("acks0 lock");
        let i = sent.iter().position(|c| *c == id)?;
        sent.remove(i);
        Some(id)
    }
}

/// The proxy's own ApiVersions requests, numbered per connection.
#[derive(Debug, Default)]
pub struct Probes {
    sent: i32,
}

impl Probes {
    /// The next probe's correlation id and frame: ApiVersions v0 (request header v1), the
    /// cheapest request Kafka answers on an authenticated connection.
    pub fn next(&mut self) -> (i32, Bytes) {
        self.sent = self.sent.wrapping_add(1);
        let correlation_id = PROBE_CORRELATION_BASE.wrapping_add(self.sent);
        let size = 2 + 2 + 4 + 2 + PROBE_CLIENT_ID.len();
        let mut frame = BytesMut::with_capacity(4 + size);
        frame.put_i32(size as i32);
        frame.put_i16(ApiKey::ApiVersions as i16);
        frame.put_i16(0);
        frame.put_i32(correlation_id);
        frame.put_i16(PROBE_CLIENT_ID.len() as i16);
        frame.put_slice(PROBE_CLIENT_ID);
        (correlation_id, frame.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::header::RequestHeader;

    #[test]
    fn probes_are_api_versions_v0_with_distinct_negative_ids() {
        let mut probes = Probes::default();
        let (first, frame) = probes.next();
        let (second, _) = probes.next();
        assert!(first < 0 && second < 0 && first != second);
        let header = RequestHeader::parse(&frame).unwrap();
        assert_eq!(
            (header.api_key, header.api_version, header.correlation_id),
            (ApiKey::ApiVersions as i16, 0, first)
        );
        assert_eq!(header.client_id, Some("kafka-kinesis-proxy"));
        assert_eq!(
            header.body_offset,
            Some(frame.len()),
            "v0 has an empty body"
        );
        let size = i32::from_be_bytes(frame[..4].try_into().unwrap());
        assert_eq!(size as usize, frame.len() - 4);
    }

    #[test]
    fn remembered_ids_are_taken_once_and_bounded() {
        let ids = Acks0Ids::default();
        let answer = |id: i32| [&[0, 0, 0, 4][..], &id.to_be_bytes()].concat();
        ids.remember(7);
        assert_eq!(ids.take_answer(&answer(8)), None);
        assert_eq!(ids.take_answer(&answer(7)), Some(7));
        assert_eq!(ids.take_answer(&answer(7)), None);
        for id in 0..MAX_REMEMBERED as i32 + 1 {
            ids.remember(id);
        }
        assert_eq!(ids.take_answer(&answer(0)), None, "the oldest was dropped");
        assert_eq!(ids.take_answer(&answer(1)), Some(1));
    }
}
