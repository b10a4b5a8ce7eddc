//! Whole-response decoding and re-encoding, for the few responses the proxy must change.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::frame::{seal, SIZE_PREFIX};

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("cannot decode {api_key:?} v{version} response: {reason}")]
    Decode {
        api_key: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("{api_key:?} v{version} response has {trailing} bytes after its last field")]
    Trailing {
        api_key: ApiKey,
        version: i16,
        trailing: usize,
    },
    #[error("cannot encode {api_key:?} v{version} response: {reason}")]
    Encode {
        api_key: ApiKey,
        version: i16,
        reason: String,
    },
}

/// A decoded response: header and body.
pub struct Response {
    pub header: ResponseHeader,
    pub body: ResponseKind,
}

impl Response {
    /// Decodes a whole response frame (size prefix included). A frame that decodes with bytes
    /// left over is refused: re-encoding it would silently drop what the proxy did not
    /// understand.
    pub fn decode(frame: &Bytes, api_key: ApiKey, version: i16) -> Result<Response, MessageError> {
        let fail = |reason: String| MessageError::Decode {
            api_key,
            version,
            reason,
        };
        let mut buf = frame.slice(SIZE_PREFIX.min(frame.len())..);
        let header = ResponseHeader::decode(&mut buf, api_key.response_header_version(version))
            .map_err(|e| fail(e.to_string()))?;
        let body =
            ResponseKind::decode(api_key, &mut buf, version).map_err(|e| fail(e.to_string()))?;
        if !buf.is_empty() {
            return Err(MessageError::Trailing {
                api_key,
                version,
                trailing: buf.len(),
            });
        }
        Ok(Response { header, body })
    }

    /// Encodes into a frame, size prefix included.
    pub fn encode(&self, api_key: ApiKey, version: i16) -> Result<Bytes, MessageError> {
        let fail = |e: anyhow::Error| MessageError::Encode {
            api_key,
            version,
            reason: e.to_string(),
        };
        let mut buf = BytesMut::with_capacity(256);
        buf.extend_from_slice(&[0; SIZE_PREFIX]);
        self.header
            .encode(&mut buf, api_key.response_header_version(version))
            .map_err(fail)?;
        self.body.encode(&mut buf, version).map_err(fail)?;
        Ok(seal(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response whose first array claims far more elements than the frame could hold must be
    /// a decode error. kafka-protocol 0.18 pre-allocated the claimed count, so these few bytes
    /// asked for hundreds of gigabytes and aborted the whole test binary (found by the
    /// `response_rewrite` fuzz target; fixed in vendor/kafka-protocol).
    #[test]
    fn array_count_beyond_the_frame_is_an_error_not_an_abort() {
        // Metadata v0: correlation id, then the brokers array count i32::MAX.
        let v0 = Bytes::from_static(&[0, 0, 0, 8, 0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff]);
        let err = Response::decode(&v0, ApiKey::Metadata, 0)
            .err()
            .expect("refused");
        assert!(matches!(err, MessageError::Decode { .. }), "{err}");
        // Metadata v9 (flexible): correlation id, no tagged fields, throttle time, then the
        // compact brokers array count 2^32 - 2.
        let v9 = Bytes::from_static(&[
            0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f,
        ]);
        let err = Response::decode(&v9, ApiKey::Metadata, 9)
            .err()
            .expect("refused");
        assert!(matches!(err, MessageError::Decode { .. }), "{err}");
    }

    /// A tagged field numbered 2^31 or more decoded as a negative tag that kafka-protocol then
    /// counted but did not write on re-encoding, so a rewritten response no longer decoded
    /// (found by the `response_rewrite` fuzz target; fixed in vendor/kafka-protocol).
    #[test]
    fn tag_beyond_i32_is_refused_not_silently_dropped_on_re_encoding() {
        // Metadata v9 response: correlation id, one header tagged field (tag `tag`, no data),
        // throttle time, no brokers, null cluster id, controller, no topics, cluster
        // authorized operations, no tagged fields.
        let frame = |tag: &[u8]| {
            let mut body = vec![0, 0, 0, 1, 1];
            body.extend_from_slice(tag);
            body.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0x80, 0, 0, 0, 0]);
            let mut frame = (body.len() as i32).to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            Bytes::from(frame)
        };
        let valid = frame(&[5]);
        let r = Response::decode(&valid, ApiKey::Metadata, 9).expect("tag 5 decodes");
        assert_eq!(r.encode(ApiKey::Metadata, 9).unwrap(), valid);
        let frame = frame(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        match Response::decode(&frame, ApiKey::Metadata, 9) {
            Err(err) => assert!(matches!(err, MessageError::Decode { .. }), "{err}"),
            Ok(r) => {
                let out = r.encode(ApiKey::Metadata, 9).unwrap();
                Response::decode(&out, ApiKey::Metadata, 9).expect("re-encoded frame decodes");
            }
        }
    }
}
