//! Reading the proxy's Prometheus metrics, as an operator's dashboard would.

use std::collections::BTreeMap;
use std::io::{Read, Write};

/// Every sample of `/metrics`, keyed by the full series (`name{labels}`) as printed.
pub fn scrape(admin_port: u16) -> BTreeMap<String, f64> {
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", admin_port)).expect("connect to admin port");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
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
