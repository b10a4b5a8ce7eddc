//! Response rewriting: Metadata, FindCoordinator, DescribeCluster (and the KIP-951 node
//! endpoints of Produce and Fetch) through `rewrite_response`, ApiVersions through
//! `negotiate_response`, as the proxy calls them on a broker's response frame. Byte 0 picks the
//! API, byte 1 the version; the rest is the frame after its size prefix (added here).
//!
//! Invariants: no panic (and no allocation sized by a length field: libFuzzer's malloc limit
//! reports one); a rewritten frame has a correct size prefix, keeps the correlation id, decodes
//! again, and rewriting it once more gives the same bytes; a negotiated ApiVersions response
//! offers, for every API the proxy decodes, a non-empty range inside the proxy's.
#![no_main]

use bytes::{BufMut, Bytes, BytesMut};
use kafka_kinesis_proxy::kafka::message::Response;
use kafka_kinesis_proxy::kafka::rewrite::{carries_addresses, rewrite_response};
use kafka_kinesis_proxy::kafka::versions::{decoded_range, negotiate_response};
use kafka_protocol::messages::{ApiKey, ResponseKind};
use kkp_fuzz::FuzzRewriter;
use libfuzzer_sys::fuzz_target;

const APIS: [ApiKey; 6] = [
    ApiKey::Metadata,
    ApiKey::FindCoordinator,
    ApiKey::DescribeCluster,
    ApiKey::ApiVersions,
    ApiKey::Produce,
    ApiKey::Fetch,
];

fn check_frame(out: &Bytes, frame: &Bytes, api_key: ApiKey, version: i16) -> Response {
    let size = i32::from_be_bytes([out[0], out[1], out[2], out[3]]);
    assert_eq!(size as usize, out.len() - 4, "size prefix");
    let decoded = Response::decode(out, api_key, version).expect("rewritten frame decodes");
    let original = Response::decode(frame, api_key, version).expect("original decoded");
    assert_eq!(
        decoded.header.correlation_id,
        original.header.correlation_id
    );
    decoded
}

fuzz_target!(|data: &[u8]| {
    let [a, v, rest @ ..] = data else {
        return;
    };
    let api_key = APIS[*a as usize % APIS.len()];
    let range = api_key.valid_versions();
    let version = range.min + (*v as i16) % (range.max - range.min + 1);
    let mut buf = BytesMut::with_capacity(rest.len() + 4);
    buf.put_i32(rest.len() as i32);
    buf.extend_from_slice(rest);
    let frame = buf.freeze();

    if api_key == ApiKey::ApiVersions {
        if let Ok(Some(out)) = negotiate_response(&frame, version) {
            let decoded = check_frame(&out, &frame, api_key, version);
            let ResponseKind::ApiVersions(body) = decoded.body else {
                panic!("not ApiVersions")
            };
            for e in &body.api_keys {
                // APIs the proxy does not decode keep the broker's range, even an empty one.
                let range = ApiKey::try_from(e.api_key).ok().and_then(decoded_range);
                if let Some((min, max)) = range {
                    assert!(e.min_version <= e.max_version, "empty range offered: {e:?}");
                    assert!(e.min_version >= min && e.max_version <= max, "{e:?}");
                }
            }
            let again = negotiate_response(&out, version).expect("negotiates again");
            assert_eq!(again.as_ref(), Some(&out), "negotiation is idempotent");
        }
        return;
    }

    if !carries_addresses(api_key, version) {
        return;
    }
    let mut rewriter = FuzzRewriter::default();
    match rewrite_response(&frame, api_key, version, &mut rewriter) {
        Ok(Some(out)) => {
            assert!(rewriter.calls > 0);
            check_frame(&out, &frame, api_key, version);
            let again = rewrite_response(&out, api_key, version, &mut FuzzRewriter::default())
                .expect("rewrites again");
            // Idempotent: a second pass changes nothing (`None`: nothing left to rewrite, as
            // when every broker named was left out).
            assert!(
                again.as_ref().is_none_or(|again| again == &out),
                "rewriting is idempotent"
            );
        }
        Ok(None) | Err(_) => {}
    }
});
