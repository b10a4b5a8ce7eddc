//! Per-topic metric series stay bounded however many topics clients name (issue 12, item 16):
//! Produce requests to 2,000 made-up topics, which Kafka refuses, create at most
//! `admin.max_topic_labels` (default 100) topic labels plus `topic="(other)"`, and every
//! refused record is still counted.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::metrics::scrape;
use support::raw_produce::RawProduce;
use support::{KafkaCluster, Proxy};

const MADE_UP_TOPICS: usize = 2000;
const DEFAULT_MAX_TOPIC_LABELS: usize = 100;

#[test]
fn made_up_topics_share_one_label_past_the_limit() {
    let cluster = KafkaCluster::shared();
    let proxy = Proxy::start(cluster);
    let mut conn = TcpStream::connect(proxy.bootstrap()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    for i in 0..MADE_UP_TOPICS {
        let topic = format!("made-up-{i}");
        let mut produce = RawProduce::new(&topic, vec![("k".into(), b"v".to_vec())]);
        produce.acks = 1;
        conn.write_all(&produce.frame()).unwrap();
        let mut size = [0u8; 4];
        conn.read_exact(&mut size).unwrap();
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        conn.read_exact(&mut body).unwrap();
    }

    // The mirror counts after the client has its answer; wait until every record is counted.
    let series = "kafka_kinesis_proxy_kafka_records_total{";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (labels, counted) = loop {
        let m = scrape(proxy.admin_port);
        let made_up: Vec<(&String, &f64)> =
            m.iter().filter(|(s, _)| s.starts_with(series)).collect();
        let counted: f64 = made_up.iter().map(|(_, v)| **v).sum();
        if counted as usize >= MADE_UP_TOPICS || std::time::Instant::now() > deadline {
            break (made_up.len(), counted);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(counted as usize, MADE_UP_TOPICS, "every record is counted");
    assert!(
        labels <= DEFAULT_MAX_TOPIC_LABELS + 1,
        "{labels} series for {MADE_UP_TOPICS} made-up topics"
    );
    let m = scrape(proxy.admin_port);
    let other = m
        .iter()
        .find(|(s, _)| s.starts_with(series) && s.contains("topic=\"(other)\""))
        .map(|(_, v)| *v);
    assert_eq!(
        other,
        Some((MADE_UP_TOPICS - DEFAULT_MAX_TOPIC_LABELS) as f64),
        "the topics past the limit are counted under (other)"
    );
}
