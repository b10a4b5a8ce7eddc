//! Reading the proxy's Prometheus metrics, as an operator's dashboard would.

use std::collections::BTreeMap;
use std::io::{Read, Write};

/// GET `path` from the admin endpoint: (status code, body).
pub fn get(admin_port: u16, path: &str) -> (u16, String) {
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", admin_port)).expect("connect to admin port");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let code = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {reply}"));
    (
        code,
        reply
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

/// Every sample of `/metrics`, keyed by the full series (`name{labels}`) as printed.
pub fn scrape(admin_port: u16) -> BTreeMap<String, f64> {
    let (code, body) = get(admin_port, "/metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Polls `/metrics` until `done` holds, as an operator watching a dashboard would; fails the
/// test with the last scrape after `limit`.
pub async fn wait_for(
    admin_port: u16,
    what: &str,
    limit: std::time::Duration,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let m = scrape(admin_port);
        if done(&m) {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; metrics: {m:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The value of one series, 0 when absent (a counter that never moved is not printed).
pub fn value(metrics: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .iter()
        .filter(|(series, _)| {
            series.split('{').next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| *v)
        .sum()
}

/// Waits until the mirror counted `count` records sent (`mirror_records_total{result="sent"}`
/// over every topic and stream); answers the last scrape.
pub async fn wait_for_sent(
    admin_port: u16,
    count: usize,
    limit: std::time::Duration,
) -> BTreeMap<String, f64> {
    let sent = |m: &BTreeMap<String, f64>| {
        value(
            m,
            "kafka_kinesis_proxy_mirror_records_total",
            &[("result", "sent")],
        )
    };
    wait_for(admin_port, "every record sent", limit, |m| {
        sent(m) >= count as f64
    })
    .await
}
