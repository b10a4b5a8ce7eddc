//! Bad input from one client: a frame the proxy must decode but cannot, and a frame over
//! `max_frame_bytes`. Each closes only that client's connection, with a log line naming the
//! client, its client_id, the API and version, and the reason; other clients keep working.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::{num, run_client, KafkaCluster, Proxy};

/// Sends `frame` and returns whether the proxy closed the connection within 10 s (EOF or a
/// reset); a read that times out means it stayed open.
fn closed_after(bootstrap: &str, frame: &[u8]) -> bool {
    let mut conn = TcpStream::connect(bootstrap).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(frame).unwrap();
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// A Produce v3 frame whose body stops after the transactional id: acks cannot be read.
fn truncated_produce() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&0i16.to_be_bytes()); // api key: Produce
    body.extend_from_slice(&3i16.to_be_bytes()); // version 3
    body.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    body.extend_from_slice(&(b"bad-client".len() as i16).to_be_bytes());
    body.extend_from_slice(b"bad-client");
    body.extend_from_slice(&(-1i16).to_be_bytes()); // null transactional id, then nothing
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

#[test]
fn undecodable_and_oversized_frames_close_only_their_connection() {
    let cluster = KafkaCluster::shared();
    let mut proxy = Proxy::start(cluster);
    let bootstrap = proxy.bootstrap();
    cluster.create_topic("steady", 1);

    assert!(
        closed_after(&bootstrap, &truncated_produce()),
        "an undecodable Produce must close the connection"
    );
    // 200 MiB declared, over the default 100 MiB limit: refused before anything is allocated.
    let mut oversized = (200 * 1024 * 1024i32).to_be_bytes().to_vec();
    oversized.extend_from_slice(&[0u8; 16]);
    assert!(
        closed_after(&bootstrap, &oversized),
        "an oversized frame must close the connection"
    );

    // Everyone else is unaffected.
    let out = run_client(
        "confluent",
        &[
            "produce",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "steady",
            "--count",
            "500",
            "--codec",
            "lz4",
            "--acks",
            "all",
        ],
    );
    assert_eq!(
        (num(&out, "produced"), num(&out, "error_count")),
        (500, 0),
        "{out}"
    );
    let back = run_client(
        "confluent",
        &[
            "consume",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "steady",
            "--count",
            "500",
            "--timeout",
            "60",
        ],
    );
    assert_eq!(
        (num(&back, "distinct"), num(&back, "mismatched")),
        (500, 0),
        "{back}"
    );

    let log = proxy.daemon().log_tail(400);
    let produce_line = log
        .lines()
        .find(|l| l.contains("client_id=\"bad-client\""))
        .unwrap_or_else(|| panic!("no log line names the client:\n{log}"));
    assert!(
        produce_line.contains("peer=127.0.0.1:") && produce_line.contains("Produce v3 request"),
        "{produce_line}"
    );
    assert!(
        log.contains("frame of 209715200 bytes exceeds listener.max_frame_bytes (104857600)"),
        "{log}"
    );
    assert!(proxy.daemon().is_running(), "the process keeps running");
}
