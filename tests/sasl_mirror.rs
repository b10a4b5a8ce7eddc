//! What a SASL listener lets into the Kinesis mirror, and SASL framing through the proxy:
//! - an acks=0 Produce sent before authenticating reaches neither Kafka nor Kinesis;
//! - an authenticated acks=0 Produce that Kafka rejects (a record over the topic's
//!   `max.message.bytes`, a partition that does not exist) does not reach Kinesis, while one
//!   that Kafka accepts does, even when the client sends nothing after it;
//! - a client that authenticates with SaslHandshake v0 (raw tokens, no Kafka header) works:
//!   a raw PLAIN client, and Sarama with PLAIN and SCRAM-SHA-512.
//!
//! The clients are raw bytes on a socket, so the test controls exactly what the broker sees
//! (Sarama aside). "Nothing reached Kinesis" is only asserted after a marker record, produced later
//! through the proxy and acknowledged by Kafka, has arrived in the same stream.
//!
//! One single-node cluster serves every test of this binary (`KafkaCluster::shared`), so each
//! test uses topic names of its own; each test has its own kinesis-local and proxy.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ProduceResponse, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::kafka::SASL_USER;
use support::kinesis::KinesisLocal;
use support::raw_produce::RawProduce;
use support::{KafkaCluster, Listener, Proxy};

/// How long any single step may take before the test fails.
const STEP: Duration = Duration::from_secs(30);

/// kinesis-local with one stream, and a proxy in front of the shared cluster's SASL_PLAINTEXT
/// listener that mirrors `topic` into it at 100%.
async fn sasl_proxy(
    topic: &str,
    stream: &str,
    topic_configs: &[(&str, &str)],
) -> (&'static KafkaCluster, KinesisLocal, Proxy) {
    let cluster = KafkaCluster::shared();
    let kinesis = KinesisLocal::start();
    kinesis.create_stream(stream, 1).await;
    let proxy = Proxy::start_upstream(
        &cluster.addresses(Listener::SaslPlaintext),
        &cluster.node_ids(),
        &kinesis.mirror_config(topic, stream, 100.0),
    );
    cluster.create_topic_with(topic, 1, topic_configs);
    (cluster, kinesis, proxy)
}

/// A request frame (size prefix included) with a full request header.
fn request(api_key: ApiKey, version: i16, correlation_id: i32, body: impl Encodable) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("sasl-mirror-test")));
    let mut frame = BytesMut::from(&[0u8; 4][..]);
    header
        .encode(&mut frame, api_key.request_header_version(version))
        .unwrap();
    body.encode(&mut frame, version).unwrap();
    let size = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    frame.freeze()
}

/// One size-prefixed frame from `socket`, without its prefix; `None` when the peer closed.
async fn read_frame(socket: &mut TcpStream) -> Option<Bytes> {
    let size = tokio::time::timeout(STEP, socket.read_i32())
        .await
        .expect("no frame within the step deadline")
        .ok()?;
    let mut body = vec![0u8; size as usize];
    tokio::time::timeout(STEP, socket.read_exact(&mut body))
        .await
        .expect("no frame within the step deadline")
        .ok()?;
    Some(Bytes::from(body))
}

/// The body of a response frame after checking its correlation id.
fn response_body(mut frame: Bytes, api_key: ApiKey, version: i16, correlation_id: i32) -> Bytes {
    let header =
        ResponseHeader::decode(&mut frame, api_key.response_header_version(version)).unwrap();
    assert_eq!(
        header.correlation_id, correlation_id,
        "{api_key:?} response"
    );
    frame
}

fn plain_token() -> Bytes {
    Bytes::from(format!("\0{}\0{}", SASL_USER.0, SASL_USER.1))
}

/// SaslHandshake for PLAIN at `version`; asserts that Kafka accepted the mechanism.
async fn handshake_plain(socket: &mut TcpStream, version: i16) {
    let handshake =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
    let frame = request(ApiKey::SaslHandshake, version, 10, handshake);
    socket.write_all(&frame).await.unwrap();
    let answer = read_frame(socket).await.expect("SaslHandshake answered");
    let mut body = response_body(answer, ApiKey::SaslHandshake, version, 10);
    let response = SaslHandshakeResponse::decode(&mut body, version).unwrap();
    assert_eq!(response.error_code, 0, "SaslHandshake v{version} for PLAIN");
}

/// A connection through the proxy, authenticated with SaslHandshake v1 and SaslAuthenticate.
async fn authenticated(bootstrap: &str) -> TcpStream {
    let mut socket = TcpStream::connect(bootstrap).await.unwrap();
    handshake_plain(&mut socket, 1).await;
    let version = 2;
    let authenticate = SaslAuthenticateRequest::default().with_auth_bytes(plain_token());
    let frame = request(ApiKey::SaslAuthenticate, version, 11, authenticate);
    socket.write_all(&frame).await.unwrap();
    let answer = read_frame(&mut socket)
        .await
        .expect("SaslAuthenticate answered");
    let mut body = response_body(answer, ApiKey::SaslAuthenticate, version, 11);
    let response = SaslAuthenticateResponse::decode(&mut body, version).unwrap();
    assert_eq!(response.error_code, 0, "{:?}", response.error_message);
    socket
}

/// Sends an acks=all Produce of `records` on `socket` and asserts Kafka stored them.
async fn produce_acknowledged(
    socket: &mut TcpStream,
    topic: &str,
    records: Vec<(String, Vec<u8>)>,
) {
    let frame = RawProduce::new(topic, records).frame();
    socket.write_all(&frame).await.unwrap();
    let answer = read_frame(socket).await.expect("Produce answered");
    let mut body = response_body(answer, ApiKey::Produce, RawProduce::VERSION, 1);
    let response = ProduceResponse::decode(&mut body, RawProduce::VERSION).unwrap();
    for topic in &response.responses {
        for partition in &topic.partition_responses {
            assert_eq!(partition.error_code, 0, "Produce to {:?}", topic.name);
        }
    }
    assert!(!body.has_remaining());
}

/// A record value as text, cut short enough to read in a failure message.
fn shown(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}...({} bytes)", &text[..cut], value.len()),
        None => text.into_owned(),
    }
}

/// Produces `marker` over a fresh authenticated connection, waits until Kinesis holds it, and
/// returns every value in `stream` then (as `shown`). Records handed to the mirror before the
/// marker would be there too.
async fn values_once_marker_arrives(
    kinesis: &KinesisLocal,
    proxy: &Proxy,
    topic: &str,
    stream: &str,
    marker: &str,
) -> BTreeSet<String> {
    let mut socket = authenticated(&proxy.bootstrap()).await;
    produce_acknowledged(&mut socket, topic, vec![("marker".into(), marker.into())]).await;
    let deadline = Instant::now() + STEP;
    loop {
        let values: BTreeSet<String> = kinesis
            .read_all(stream)
            .await
            .into_iter()
            .map(|r| shown(&r.data))
            .collect();
        if values.contains(marker) {
            return values;
        }
        assert!(
            Instant::now() < deadline,
            "the marker never reached Kinesis; it holds {values:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the peer closes `socket`, which is how Kafka refuses an acks=0 Produce.
async fn wait_closed(socket: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(STEP, socket.read(&mut buf)).await {
        Err(_) => panic!("the connection stayed open"),
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("unexpected {n} bytes from the proxy"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_acks0_produce_reaches_neither_kinesis_nor_kafka() {
    let (topic, stream) = ("sasl-unauthenticated", "sasl-unauthenticated-stream");
    let (cluster, kinesis, proxy) = sasl_proxy(topic, stream, &[]).await;

    let mut socket = TcpStream::connect(proxy.bootstrap()).await.unwrap();
    let mut produce = RawProduce::new(topic, vec![("k".into(), b"unauthenticated".to_vec())]);
    produce.acks = 0;
    socket.write_all(&produce.frame()).await.unwrap();
    wait_closed(&mut socket).await;

    let values = values_once_marker_arrives(&kinesis, &proxy, topic, stream, "marker-1").await;
    assert_eq!(values, BTreeSet::from(["marker-1".to_owned()]));
    assert_eq!(
        cluster.offsets(topic, 0).1,
        1,
        "Kafka holds only the marker"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn authenticated_acks0_produce_that_kafka_rejects_is_not_mirrored() {
    let (topic, stream) = ("sasl-rejected", "sasl-rejected-stream");
    let (cluster, kinesis, proxy) =
        sasl_proxy(topic, stream, &[("max.message.bytes", "1024")]).await;

    // A record over the topic's max.message.bytes.
    let mut socket = authenticated(&proxy.bootstrap()).await;
    let mut too_large = RawProduce::new(topic, vec![("big".into(), vec![b'x'; 8192])]);
    too_large.acks = 0;
    socket.write_all(&too_large.frame()).await.unwrap();
    wait_closed(&mut socket).await;

    // A partition the topic does not have.
    let mut socket = authenticated(&proxy.bootstrap()).await;
    let mut no_partition = RawProduce::new(topic, vec![("k".into(), b"no-partition".to_vec())]);
    no_partition.acks = 0;
    no_partition.partition = 7;
    socket.write_all(&no_partition.frame()).await.unwrap();
    wait_closed(&mut socket).await;

    let values = values_once_marker_arrives(&kinesis, &proxy, topic, stream, "marker-2").await;
    assert_eq!(values, BTreeSet::from(["marker-2".to_owned()]));
    assert_eq!(
        cluster.offsets(topic, 0).1,
        1,
        "Kafka holds only the marker"
    );
}

/// The counterpart of the test above: acks=0 records Kafka keeps are mirrored, even when the
/// client sends nothing more that Kafka's next answer could vouch for them with.
#[tokio::test(flavor = "multi_thread")]
async fn authenticated_acks0_produce_that_kafka_accepts_is_mirrored_from_an_idle_connection() {
    let (topic, stream) = ("sasl-accepted", "sasl-accepted-stream");
    let (cluster, kinesis, proxy) = sasl_proxy(topic, stream, &[]).await;

    let mut socket = authenticated(&proxy.bootstrap()).await;
    let mut accepted = RawProduce::new(topic, vec![("k".into(), b"accepted-acks0".to_vec())]);
    accepted.acks = 0;
    socket.write_all(&accepted.frame()).await.unwrap();

    let deadline = Instant::now() + STEP;
    loop {
        let values: Vec<String> = kinesis
            .read_all(stream)
            .await
            .into_iter()
            .map(|r| shown(&r.data))
            .collect();
        if !values.is_empty() {
            assert_eq!(values, vec!["accepted-acks0".to_owned()]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the acks=0 record never reached Kinesis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.offsets(topic, 0).1, 1);
    // The proxy's own check must not have disturbed the client's connection.
    produce_acknowledged(&mut socket, topic, vec![("k".into(), b"after".to_vec())]).await;
}

/// Older clients (Sarama's default) send SaslHandshake v0 and then bare SASL tokens, with no
/// Kafka request header, before they return to ordinary requests.
#[tokio::test(flavor = "multi_thread")]
async fn sasl_handshake_v0_with_raw_tokens_works_through_the_proxy() {
    let (topic, stream) = ("sasl-v0", "sasl-v0-stream");
    let (cluster, kinesis, proxy) = sasl_proxy(topic, stream, &[]).await;

    let mut socket = TcpStream::connect(proxy.bootstrap()).await.unwrap();
    handshake_plain(&mut socket, 0).await;
    let token = plain_token();
    socket
        .write_all(&(token.len() as i32).to_be_bytes())
        .await
        .unwrap();
    socket.write_all(&token).await.unwrap();
    let answer = read_frame(&mut socket)
        .await
        .expect("the PLAIN token answered, not the connection closed");
    assert!(
        answer.is_empty(),
        "PLAIN's answer token is empty: {answer:?}"
    );

    produce_acknowledged(&mut socket, topic, vec![("k".into(), b"via-v0".to_vec())]).await;
    let values = values_once_marker_arrives(&kinesis, &proxy, topic, stream, "marker-3").await;
    assert_eq!(
        values,
        BTreeSet::from(["via-v0".to_owned(), "marker-3".to_owned()])
    );
    assert_eq!(cluster.offsets(topic, 0).1, 2);
}

/// Sarama with `Net.SASL.Version = SASLHandshakeV0`, as older Sarama sends by default: PLAIN
/// (one bare token each way) and SCRAM-SHA-512 (two), producing through the proxy and mirrored.
#[tokio::test(flavor = "multi_thread")]
async fn sarama_with_sasl_handshake_v0_produces_through_the_proxy() {
    const COUNT: i64 = 20;
    let (topic, stream) = ("sasl-v0-sarama", "sasl-v0-sarama-stream");
    let (cluster, kinesis, proxy) = sasl_proxy(topic, stream, &[]).await;
    let bootstrap = proxy.bootstrap();
    let count = COUNT.to_string();
    for (round, mechanism) in ["PLAIN", "SCRAM-SHA-512"].into_iter().enumerate() {
        let args = [
            "produce",
            "--bootstrap",
            &bootstrap,
            "--topic",
            topic,
            "--count",
            &count,
            "--sasl-mechanism",
            mechanism,
            "--sasl-user",
            SASL_USER.0,
            "--sasl-password",
            SASL_USER.1,
            "--sasl-handshake",
            "0",
            "--timeout",
            "60",
        ];
        let result = tokio::task::spawn_blocking({
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                support::try_run_client("sarama", &args)
            }
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("sarama with {mechanism} over SaslHandshake v0:\n{e}"));
        support::check_produced(&result, COUNT).unwrap_or_else(|e| panic!("{mechanism}: {e}"));
        let expected = COUNT * (round as i64 + 1);
        assert_eq!(cluster.offsets(topic, 0).1, expected, "{mechanism}");
    }
    let deadline = Instant::now() + STEP;
    loop {
        let mirrored = kinesis.read_all(stream).await.len() as i64;
        if mirrored == 2 * COUNT {
            break;
        }
        assert!(
            mirrored < 2 * COUNT && Instant::now() < deadline,
            "Kinesis holds {mirrored} records, Kafka {}",
            2 * COUNT
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
