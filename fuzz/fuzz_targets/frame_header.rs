//! The first decoders that see a client's bytes: the frame splitter and the request-header
//! parser (plus the response-header helpers). Input: byte 0 picks the frame size limit, byte 1
//! the read chunk size; the rest is the byte stream.
//!
//! Invariants: no panic; every frame carries its own size prefix and respects the limit;
//! feeding the stream in chunks yields exactly the frames (and error) of feeding it whole; a
//! parsed header's body offset lies inside its frame.
#![no_main]

use bytes::{Bytes, BytesMut};
use kafka_kinesis_proxy::kafka::frame::{FrameCodec, SIZE_PREFIX};
use kafka_kinesis_proxy::kafka::header::{
    response_body_offset, response_correlation_id, RequestHeader,
};
use kafka_protocol::messages::ApiKey;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const LIMITS: [usize; 6] = [0, 1, 8, 64, 1024, 1 << 20];

/// Splits `input` fed `chunk` bytes at a time; returns the frames and whether it ended in error.
fn split(input: &[u8], max: usize, chunk: usize) -> (Vec<Bytes>, bool) {
    let mut codec = FrameCodec::new(max);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut fed = 0;
    loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
        if fed == input.len() {
            return (frames, false);
        }
        let n = chunk.min(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
    }
}

fn check_header(frame: &[u8]) {
    if let Ok(h) = RequestHeader::parse(frame) {
        assert!(frame.len() >= SIZE_PREFIX + 8);
        if let Some(offset) = h.body_offset {
            assert!(offset >= SIZE_PREFIX + 8 && offset <= frame.len());
            assert!(ApiKey::try_from(h.api_key).is_ok());
        }
        if let Some(client_id) = h.client_id {
            assert!(client_id.len() < frame.len());
        }
        assert!(response_correlation_id(frame).is_some());
        if let Ok(key) = ApiKey::try_from(h.api_key) {
            if let Ok(offset) = response_body_offset(frame, key, h.api_version) {
                assert!(offset >= SIZE_PREFIX + 4 && offset <= frame.len());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let max = LIMITS[data[0] as usize % LIMITS.len()];
    let chunk = data[1] as usize % 17 + 1;
    let input = &data[2..];

    let (frames, failed) = split(input, max, input.len().max(1));
    let (chunked, chunked_failed) = split(input, max, chunk);
    assert_eq!(frames, chunked, "chunked reads split differently");
    assert_eq!(failed, chunked_failed, "chunked reads fail differently");

    for frame in &frames {
        assert!(frame.len() >= SIZE_PREFIX && frame.len() - SIZE_PREFIX <= max);
        let size = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        assert_eq!(size as usize, frame.len() - SIZE_PREFIX);
        check_header(frame);
    }
    // The header parser on its own, whatever the framing decided.
    check_header(input);
});
