//! Property tests ("fuzzing") for the decoders that see untrusted client bytes first: the frame
//! splitter and the request-header parser. Arbitrary input must give frames or a typed error,
//! never a panic, and well-formed input must parse back to exactly what was encoded.

use bytes::{BufMut, BytesMut};
use kafka_kinesis_proxy::kafka::frame::FrameCodec;
use kafka_kinesis_proxy::kafka::header::RequestHeader;
use kafka_protocol::messages::ApiKey;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

fn split_all(input: &[u8], max: usize) -> (Vec<bytes::Bytes>, bool) {
    let mut codec = FrameCodec::new(max);
    let mut buf = BytesMut::from(input);
    let mut frames = Vec::new();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, false),
            Err(_) => return (frames, true),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..1024) {
        let (frames, _) = split_all(&input, max);
        for frame in &frames {
            prop_assert!(frame.len() >= 4 && frame.len() - 4 <= max);
            let _ = RequestHeader::parse(frame);
        }
    }

    #[test]
    fn frames_split_exactly_at_their_boundaries(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8)) {
        let mut input = Vec::new();
        for body in &bodies {
            input.put_i32(body.len() as i32);
            input.extend_from_slice(body);
        }
        let (frames, failed) = split_all(&input, 64);
        prop_assert!(!failed);
        let got: Vec<Vec<u8>> = frames.iter().map(|f| f[4..].to_vec()).collect();
        prop_assert_eq!(got, bodies);
    }

    #[test]
    fn encoded_headers_parse_back(
        key in prop::sample::select(ApiKey::iter().collect::<Vec<_>>()),
        version in 0i16..20,
        correlation_id in any::<i32>(),
        client_id in proptest::option::of("[ -~]{0,40}"),
        body in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        use kafka_protocol::messages::RequestHeader as Wire;
        use kafka_protocol::protocol::{Encodable, StrBytes};
        let header_version = key.request_header_version(version);
        let header = Wire::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(client_id.clone().map(StrBytes::from_string));
        let mut buf = BytesMut::from(&[0u8; 4][..]);
        header.encode(&mut buf, header_version).unwrap();
        buf.extend_from_slice(&body);
        let frame = kafka_kinesis_proxy::kafka::frame::seal(buf);
        let parsed = RequestHeader::parse(&frame).unwrap();
        prop_assert_eq!((parsed.api_key, parsed.api_version, parsed.correlation_id), (key as i16, version, correlation_id));
        if header_version >= 1 {
            prop_assert_eq!(parsed.client_id, client_id.as_deref());
        }
        prop_assert_eq!(&frame[parsed.body_offset.unwrap()..], &body[..]);
    }
}
