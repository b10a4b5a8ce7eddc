//! The Produce request decoder, as the proxy drives it: a whole request frame, its header
//! parsed to find the version and body, then `peek_acks` and `ProduceRequestView::decode`, then
//! every partition's record bytes through `summarize` and `decode_batches`. When the frame is
//! not a Produce request, byte 0 is taken as the version and the rest as a body, so the body
//! decoder is reached either way. The same body also goes through `ProduceResponseView::decode`.
//!
//! Invariants: no panic; when the body decodes, `peek_acks` agrees on `acks`; record data obeys
//! `kkp_fuzz::check_records`.
#![no_main]

use bytes::Bytes;
use kafka_kinesis_proxy::kafka::header::RequestHeader;
use kafka_kinesis_proxy::kafka::produce::{peek_acks, ProduceRequestView, ProduceResponseView};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    let (version, body) = match RequestHeader::parse(&frame) {
        Ok(RequestHeader {
            api_key: 0,
            api_version,
            body_offset: Some(offset),
            ..
        }) => (api_version, frame.slice(offset..)),
        _ => match data.split_first() {
            Some((&v, rest)) => (i16::from(v % 16), frame.slice(frame.len() - rest.len()..)),
            None => return,
        },
    };

    let acks = peek_acks(version, &body);
    if let Ok(request) = ProduceRequestView::decode(version, body.clone()) {
        assert_eq!(acks, Ok(request.acks), "peek_acks disagrees with decode");
        for topic in &request.topics {
            assert_eq!(topic.topic_id.is_some(), version >= 13);
            for partition in &topic.partitions {
                if let Some(records) = &partition.records {
                    kkp_fuzz::check_records(records);
                }
            }
        }
    }

    if let Ok(response) = ProduceResponseView::decode(version, body) {
        for topic in &response.topics {
            for p in &topic.partitions {
                if let Some(id) = &topic.topic_id {
                    assert!(response.partition_by_topic_id(id, p.partition).is_some());
                } else if !topic.name.is_empty() {
                    assert!(response.partition(&topic.name, p.partition).is_some());
                }
            }
        }
    }
});
