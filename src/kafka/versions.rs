//! ApiVersions negotiation.
//!
//! For every API the proxy decodes, clients must only be offered versions the proxy can decode,
//! so the forwarded ApiVersions response carries the intersection of the broker's range and the
//! proxy's. All other APIs, and keys this proxy has never heard of, keep the broker's range: the
//! proxy forwards those byte for byte.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::frame::{seal, SIZE_PREFIX};
use super::message::{MessageError, Response};

/// Kafka's UNSUPPORTED_VERSION error code.
pub const UNSUPPORTED_VERSION: i16 = 35;

/// The versions of `api_key` this proxy can decode, for the APIs it decodes.
///
/// Minimums are 0 wherever the proxy handles old versions itself (Produce v0-2 has its own
/// decoder; Fetch below v16 carries no broker addresses and is never decoded), so the
/// intersection never raises a broker's minimum for the APIs clients depend on.
pub fn decoded_range(api_key: ApiKey) -> Option<(i16, i16)> {
    let crate_max = api_key.valid_versions().max;
    match api_key {
        ApiKey::ApiVersions
        | ApiKey::Metadata
        | ApiKey::FindCoordinator
        | ApiKey::DescribeCluster
        | ApiKey::Fetch => Some((0, crate_max)),
        // Produce v13 (KIP-516) names topics only by id; the mirror routes by topic name, and
        // v12 carries the same data.
        ApiKey::Produce => Some((0, crate_max.min(12))),
        // Share groups (KIP-932) only exist from v1 in the protocol the crate knows; the early
        // access v0 of Kafka 4.0 had a different schema.
        ApiKey::ShareFetch | ApiKey::ShareAcknowledge => {
            Some((api_key.valid_versions().min, crate_max))
        }
        _ => None,
    }
}

/// The highest ApiVersions request version the proxy answers.
pub fn max_api_versions_version() -> i16 {
    ApiKey::ApiVersions.valid_versions().max
}

/// Narrows each decoded API to the proxy's range; drops an API whose intersection is empty.
pub fn negotiate(response: &mut ApiVersionsResponse) {
    response.api_keys.retain_mut(|entry| {
        let Some((min, max)) = ApiKey::try_from(entry.api_key).ok().and_then(decoded_range) else {
            return true;
        };
        entry.min_version = entry.min_version.max(min);
        entry.max_version = entry.max_version.min(max);
        entry.min_version <= entry.max_version
    });
}

/// Rewrites a broker's ApiVersions response frame. Returns `None` when the frame must be
/// forwarded as is: an error response, which Kafka always encodes at v0 whatever the request
/// version, so clients can retry with a version the broker knows.
pub fn negotiate_response(frame: &Bytes, version: i16) -> Result<Option<Bytes>, MessageError> {
    let mut response = match Response::decode(frame, ApiKey::ApiVersions, version) {
        Ok(r) => r,
        Err(e) if is_v0_error_response(frame) => {
            tracing::debug!(error = %e, "forwarding broker's v0 ApiVersions error response");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let ResponseKind::ApiVersions(body) = &mut response.body else {
        unreachable!("decoded as ApiVersions")
    };
    if body.error_code != 0 {
        return Ok(None);
    }
    negotiate(body);
    response.encode(ApiKey::ApiVersions, version).map(Some)
}

fn is_v0_error_response(frame: &Bytes) -> bool {
    let mut buf = frame.slice(SIZE_PREFIX.min(frame.len())..);
    ResponseHeader::decode(&mut buf, 0).is_ok()
        && ApiVersionsResponse::decode(&mut buf, 0).is_ok_and(|r| r.error_code != 0)
}

/// What Apache Kafka answers to an ApiVersions request above its range: UNSUPPORTED_VERSION at
/// v0, listing the ApiVersions range it does support, so the client retries lower.
pub fn unsupported_version_response(correlation_id: i32) -> Bytes {
    let body = ApiVersionsResponse::default()
        .with_error_code(UNSUPPORTED_VERSION)
        .with_api_keys(vec![ApiVersion::default()
            .with_api_key(ApiKey::ApiVersions as i16)
            .with_min_version(0)
            .with_max_version(max_api_versions_version())]);
    let mut buf = BytesMut::with_capacity(32);
    buf.extend_from_slice(&[0; SIZE_PREFIX]);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    // Encoding fixed, valid v0 structures into a BytesMut cannot fail.
    header
        .encode(&mut buf, 0)
        .expect("v0 response header encodes");
    body.encode(&mut buf, 0)
        .expect("v0 ApiVersions response encodes");
    seal(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: i16, min: i16, max: i16) -> ApiVersion {
        ApiVersion::default()
            .with_api_key(key)
            .with_min_version(min)
            .with_max_version(max)
    }

    fn broker_response() -> ApiVersionsResponse {
        ApiVersionsResponse::default().with_api_keys(vec![
            entry(ApiKey::Produce as i16, 0, 99),
            entry(ApiKey::Metadata as i16, 1, 99),
            entry(ApiKey::Fetch as i16, 0, 5),
            entry(ApiKey::OffsetCommit as i16, 2, 99),
            entry(30000, 0, 7),
        ])
    }

    #[test]
    fn decoded_apis_are_intersected_and_others_untouched() {
        let mut r = broker_response();
        negotiate(&mut r);
        let got: Vec<_> = r
            .api_keys
            .iter()
            .map(|e| (e.api_key, e.min_version, e.max_version))
            .collect();
        assert_eq!(
            got,
            vec![
                (ApiKey::Produce as i16, 0, 12),
                (
                    ApiKey::Metadata as i16,
                    1,
                    ApiKey::Metadata.valid_versions().max
                ),
                (ApiKey::Fetch as i16, 0, 5),
                (ApiKey::OffsetCommit as i16, 2, 99),
                (30000, 0, 7),
            ]
        );
    }

    #[test]
    fn minimum_is_never_raised_for_core_apis() {
        for key in [
            ApiKey::Produce,
            ApiKey::Fetch,
            ApiKey::Metadata,
            ApiKey::FindCoordinator,
            ApiKey::DescribeCluster,
            ApiKey::ApiVersions,
        ] {
            assert_eq!(decoded_range(key).unwrap().0, 0, "{key:?}");
        }
    }

    #[test]
    fn negotiated_response_round_trips_at_v3() {
        let header = ResponseHeader::default().with_correlation_id(5);
        let response = Response {
            header,
            body: ResponseKind::ApiVersions(broker_response()),
        };
        let frame = response.encode(ApiKey::ApiVersions, 3).unwrap();
        let out = negotiate_response(&frame, 3).unwrap().expect("rewritten");
        let decoded = Response::decode(&out, ApiKey::ApiVersions, 3).unwrap();
        assert_eq!(decoded.header.correlation_id, 5);
        let ResponseKind::ApiVersions(body) = decoded.body else {
            panic!()
        };
        assert_eq!(body.api_keys[0].max_version, 12);
    }

    #[test]
    fn broker_error_response_passes_through() {
        let frame = unsupported_version_response(9);
        assert_eq!(negotiate_response(&frame, 3).unwrap(), None);
    }

    #[test]
    fn unsupported_version_response_is_v0_with_the_api_versions_range() {
        let frame = unsupported_version_response(77);
        let decoded = Response::decode(&frame, ApiKey::ApiVersions, 0).unwrap();
        assert_eq!(decoded.header.correlation_id, 77);
        let ResponseKind::ApiVersions(body) = decoded.body else {
            panic!()
        };
        assert_eq!(body.error_code, UNSUPPORTED_VERSION);
        assert_eq!(body.api_keys.len(), 1);
        assert_eq!(body.api_keys[0].max_version, max_api_versions_version());
    }
}
