//! Request and response headers, parsed by hand so the hot path allocates nothing and
//! reads no more of a frame than it must.

use kafka_protocol::messages::ApiKey;

use super::frame::SIZE_PREFIX;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("request header truncated: {0}")]
    Truncated(&'static str),
    #[error("client_id is not valid UTF-8")]
    ClientIdNotUtf8,
}

/// The fields of a request header that the proxy routes on, borrowed from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader<'a> {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    /// Absent for header v0 and for API keys this proxy does not know.
    pub client_id: Option<&'a str>,
    /// Offset of the request body within the frame (size prefix included); `None` when the
    /// API key is unknown, because then the header layout is unknown too.
    pub body_offset: Option<usize>,
}

impl<'a> RequestHeader<'a> {
    /// Parses the header of a whole frame (size prefix included).
    pub fn parse(frame: &'a [u8]) -> Result<RequestHeader<'a>, HeaderError> {
        let mut r = Reader {
            buf: frame,
            pos: SIZE_PREFIX,
        };
        let api_key = r.i16("api_key")?;
        let api_version = r.i16("api_version")?;
        let correlation_id = r.i32("correlation_id")?;
        let Ok(known) = ApiKey::try_from(api_key) else {
            return Ok(RequestHeader {
                api_key,
                api_version,
                correlation_id,
                client_id: None,
                body_offset: None,
            });
        };
        let header_version = known.request_header_version(api_version);
        let client_id = if header_version >= 1 {
            r.nullable_string("client_id")?
        } else {
            None
        };
        if header_version >= 2 {
            r.skip_tagged_fields()?;
        }
        Ok(RequestHeader {
            api_key,
            api_version,
            correlation_id,
            client_id,
            body_offset: Some(r.pos),
        })
    }
}

/// The correlation id of a response frame (size prefix included).
pub fn response_correlation_id(frame: &[u8]) -> Option<i32> {
    frame
        .get(SIZE_PREFIX..SIZE_PREFIX + 4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Offset of the response body within a response frame (size prefix included).
pub fn response_body_offset(
    frame: &[u8],
    api_key: ApiKey,
    api_version: i16,
) -> Result<usize, HeaderError> {
    let mut r = Reader {
        buf: frame,
        pos: SIZE_PREFIX,
    };
    r.i32("correlation_id")?;
    if api_key.response_header_version(api_version) >= 1 {
        r.skip_tagged_fields()?;
    }
    Ok(r.pos)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], HeaderError> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.buf.len());
        let end = end.ok_or(HeaderError::Truncated(field))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, HeaderError> {
        let b = self.take(2, field)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, HeaderError> {
        let b = self.take(4, field)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn nullable_string(&mut self, field: &'static str) -> Result<Option<&'a str>, HeaderError> {
        let len = self.i16(field)?;
        if len < 0 {
            return Ok(None);
        }
        let bytes = self.take(len as usize, field)?;
        let s = std::str::from_utf8(bytes).map_err(|_| HeaderError::ClientIdNotUtf8)?;
        Ok(Some(s))
    }

    fn uvarint(&mut self, field: &'static str) -> Result<u64, HeaderError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1, field)?[0];
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(HeaderError::Truncated(field))
    }

    fn skip_tagged_fields(&mut self) -> Result<(), HeaderError> {
        let count = self.uvarint("tagged field count")?;
        for _ in 0..count {
            self.uvarint("tag")?;
            let size = self.uvarint("tagged field size")?;
            let size = usize::try_from(size).map_err(|_| HeaderError::Truncated("tagged field"))?;
            self.take(size, "tagged field")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::RequestHeader as WireHeader;
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn frame(api_key: ApiKey, version: i16, client_id: Option<&str>, body: &[u8]) -> Vec<u8> {
        let header = WireHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(client_id.map(|c| StrBytes::from_string(c.to_owned())));
        let mut buf = BytesMut::from(&[0u8; 4][..]);
        header
            .encode(&mut buf, api_key.request_header_version(version))
            .unwrap();
        buf.extend_from_slice(body);
        super::super::frame::seal(buf).to_vec()
    }

    #[test]
    fn parses_v1_and_flexible_v2_headers() {
        for (key, version) in [
            (ApiKey::Produce, 3),
            (ApiKey::Produce, 9),
            (ApiKey::Metadata, 12),
            (ApiKey::ApiVersions, 3),
        ] {
            let f = frame(key, version, Some("app-1"), b"BODY");
            let h = RequestHeader::parse(&f).unwrap();
            assert_eq!(
                (h.api_key, h.api_version, h.correlation_id),
                (key as i16, version, 42)
            );
            assert_eq!(h.client_id, Some("app-1"));
            assert_eq!(&f[h.body_offset.unwrap()..], b"BODY", "{key:?} v{version}");
        }
    }

    #[test]
    fn null_client_id_and_unknown_api_key() {
        let f = frame(ApiKey::Metadata, 1, None, b"");
        assert_eq!(RequestHeader::parse(&f).unwrap().client_id, None);
        let unknown = [0, 0, 0, 8, 0x7f, 0x00, 0, 1, 0, 0, 0, 9];
        let h = RequestHeader::parse(&unknown).unwrap();
        assert_eq!(
            (h.api_key, h.api_version, h.correlation_id, h.body_offset),
            (0x7f00, 1, 9, None)
        );
    }

    #[test]
    fn truncated_headers_are_errors_not_panics() {
        let f = frame(ApiKey::Produce, 9, Some("client"), b"");
        for cut in 0..f.len() {
            let r = RequestHeader::parse(&f[..cut]);
            assert!(r.is_err(), "cut at {cut} parsed: {r:?}");
        }
    }

    #[test]
    fn response_header_body_offset() {
        let resp = [0u8, 0, 0, 6, 0, 0, 0, 7, 0, 0xAA];
        assert_eq!(response_correlation_id(&resp), Some(7));
        assert_eq!(response_body_offset(&resp, ApiKey::Metadata, 9).unwrap(), 9);
        assert_eq!(
            response_body_offset(&resp, ApiKey::ApiVersions, 3).unwrap(),
            8
        );
        assert_eq!(response_body_offset(&resp, ApiKey::Metadata, 8).unwrap(), 8);
    }
}
