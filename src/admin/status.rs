//! `kafka-kinesis-proxy status`: a compact terminal view of a running proxy, read from its
//! admin endpoint (`/metrics`, `/routes`, `/readyz`), for a person watching a cutover, or an
//! outage: where the mirror's backlog waits and how close the disk limit is.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use indicatif::HumanBytes;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::backlog::Backlog;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot reach the admin endpoint at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}{path}: unexpected answer: {detail}")]
    Answer {
        addr: String,
        path: &'static str,
        detail: String,
    },
}

/// GET `path` from the admin endpoint: (status code, body).
async fn get(addr: &str, path: &'static str) -> Result<(u16, String), StatusError> {
    let io = |source| StatusError::Connect {
        addr: addr.to_owned(),
        source,
    };
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| {
                io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            })?
            .map_err(io)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.map_err(io)?;
    let reply = String::from_utf8_lossy(&reply);
    let bad = |detail: &str| StatusError::Answer {
        addr: addr.to_owned(),
        path,
        detail: detail.to_owned(),
    };
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no HTTP header"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    Ok((code, body.to_owned()))
}

/// One sample of the counters the view shows.
#[derive(Debug, Default, Clone)]
struct Sample {
    kafka_ok: BTreeMap<String, f64>,
    mirror_sent: BTreeMap<String, f64>,
    shard_records: BTreeMap<(String, String), f64>,
}

fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let start = series.find(&format!("{name}=\""))? + name.len() + 2;
    let end = series[start..].find('"')?;
    Some(&series[start..start + end])
}

fn parse_metrics(text: &str) -> Sample {
    let mut sample = Sample::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or_default();
        let topic = label(series, "topic").unwrap_or_default().to_owned();
        match name {
            "kafka_kinesis_proxy_kafka_records_total" if label(series, "result") == Some("ok") => {
                *sample.kafka_ok.entry(topic).or_default() += value;
            }
            "kafka_kinesis_proxy_kafka_unacked_records_total" => {
                *sample.kafka_ok.entry(topic).or_default() += value
            }
            "kafka_kinesis_proxy_mirror_records_total"
                if label(series, "result") == Some("sent") =>
            {
                *sample.mirror_sent.entry(topic).or_default() += value;
            }
            "kafka_kinesis_proxy_shard_records_total" => {
                let key = (
                    label(series, "stream").unwrap_or_default().to_owned(),
                    label(series, "shard").unwrap_or_default().to_owned(),
                );
                sample.shard_records.insert(key, value);
            }
            _ => {}
        }
    }
    sample
}

#[derive(Debug, Deserialize)]
struct Routes {
    routes: Vec<RouteView>,
    /// Absent from proxies older than the backlog view.
    #[serde(default)]
    backlog: Option<Backlog>,
}

#[derive(Debug, Deserialize)]
struct RouteView {
    topic: String,
    stream: String,
    percent: f64,
    /// Absent from proxies older than route modes.
    #[serde(default = "mirror_mode")]
    mode: String,
    stream_healthy: bool,
    open_shards: usize,
    records_failed: u64,
    success_ratio: Option<f64>,
    /// Absent from proxies older than the backlog view.
    #[serde(default)]
    queued_records: u64,
    spool_bytes: u64,
}

fn mirror_mode() -> String {
    "mirror".to_owned()
}

async fn sample(addr: &str) -> Result<Sample, StatusError> {
    let (_, metrics) = get(addr, "/metrics").await?;
    Ok(parse_metrics(&metrics))
}

/// What the view shows besides the two samples: `/readyz`'s answer and `/routes`.
struct Answers {
    ready_code: u16,
    ready_body: String,
    routes: Routes,
}

async fn answers(addr: &str) -> Result<Answers, StatusError> {
    let (ready_code, ready_body) = get(addr, "/readyz").await?;
    let (_, routes_body) = get(addr, "/routes").await?;
    let routes = serde_json::from_str(&routes_body).map_err(|e| StatusError::Answer {
        addr: addr.to_owned(),
        path: "/routes",
        detail: e.to_string(),
    })?;
    Ok(Answers {
        ready_code,
        ready_body,
        routes,
    })
}

/// Renders the view from two samples `elapsed` apart.
fn render(
    addr: &str,
    answers: &Answers,
    before: &Sample,
    after: &Sample,
    elapsed: Duration,
) -> String {
    let Answers {
        ready_code,
        ready_body,
        routes,
    } = answers;
    let ready_code = *ready_code;
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate =
        |map_after: &BTreeMap<String, f64>, map_before: &BTreeMap<String, f64>, topic: &str| {
            (map_after.get(topic).copied().unwrap_or(0.0)
                - map_before.get(topic).copied().unwrap_or(0.0))
                / secs
        };
    let mut out = String::new();
    let ready = if ready_code == 200 {
        "ready"
    } else {
        "NOT READY"
    };
    let _ = writeln!(out, "kafka-kinesis-proxy at {addr}: {ready}");
    if ready_code != 200 {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(ready_body) {
            for problem in v["problems"].as_array().into_iter().flatten() {
                let _ = writeln!(out, "  ! {}", problem.as_str().unwrap_or_default());
            }
        }
    }
    if let Some(backlog) = &routes.backlog {
        let _ = writeln!(out, "{}", backlog.summary());
        for problem in backlog.problems() {
            let _ = writeln!(out, "  ! {problem}");
        }
    }
    let _ = writeln!(
        out,
        "{:<24} {:<24} {:<15} {:>7} {:>10} {:>10} {:>9} {:>7} {:>7} {:>18}  STREAM STATE",
        "TOPIC",
        "STREAM",
        "MODE",
        "PERCENT",
        "KAFKA/s",
        "MIRROR/s",
        "MIRRORED",
        "SUCCESS",
        "FAILED",
        "BACKLOG",
    );
    for r in &routes.routes {
        let kafka = after.kafka_ok.get(&r.topic).copied().unwrap_or(0.0);
        let mirrored = after.mirror_sent.get(&r.topic).copied().unwrap_or(0.0);
        let ratio = r
            .success_ratio
            .map_or("-".to_owned(), |x| format!("{x:.4}"));
        let state = if r.stream_healthy {
            format!("healthy, {} shards", r.open_shards)
        } else {
            "UNHEALTHY".to_owned()
        };
        let _ = writeln!(
            out,
            "{:<24} {:<24} {:<15} {:>6.1}% {:>10.1} {:>10.1} {:>9} {:>7} {:>7} {:>18}  {}",
            r.topic,
            r.stream,
            r.mode,
            r.percent,
            rate(&after.kafka_ok, &before.kafka_ok, &r.topic),
            rate(&after.mirror_sent, &before.mirror_sent, &r.topic),
            format!("{:.0}/{:.0}", mirrored, kafka),
            ratio,
            r.records_failed,
            // Records queued in memory + bytes in the spool.
            format!("{} + {}", r.queued_records, HumanBytes(r.spool_bytes)),
            state
        );
    }
    let mut streams: BTreeMap<&str, Vec<(&str, f64)>> = BTreeMap::new();
    for ((stream, shard), n) in &after.shard_records {
        streams.entry(stream).or_default().push((shard, *n));
    }
    for (stream, shards) in streams {
        let total: f64 = shards.iter().map(|(_, n)| n).sum();
        let spread: Vec<String> = shards
            .iter()
            .map(|(shard, n)| {
                // shardId-000000000003 reads as 3.
                let id = shard.trim_start_matches("shardId-");
                let id = id.parse::<u64>().map_or(id.to_owned(), |n| n.to_string());
                format!("{id}={:.0}%", n / total.max(1.0) * 100.0)
            })
            .collect();
        let _ = writeln!(out, "shard spread {stream}: {}", spread.join(" "));
    }
    out
}

/// Prints the view once (`once`), or refreshes it every `interval` until interrupted.
pub async fn run(addr: &str, interval: Duration, once: bool) -> Result<(), StatusError> {
    let mut before = sample(addr).await?;
    let mut at = Instant::now();
    loop {
        tokio::time::sleep(interval).await;
        let after = sample(addr).await?;
        let view = render(addr, &answers(addr).await?, &before, &after, at.elapsed());
        if once {
            print!("{view}");
            return Ok(());
        }
        // Clear the screen and home the cursor, like `watch`.
        print!("\x1b[2J\x1b[H{view}");
        before = after;
        at = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_is_summed_per_topic() {
        let text = "\
# HELP x
kafka_kinesis_proxy_kafka_records_total{result=\"ok\",topic=\"orders\"} 10
kafka_kinesis_proxy_kafka_records_total{result=\"error\",topic=\"orders\"} 3
kafka_kinesis_proxy_kafka_unacked_records_total{topic=\"orders\"} 2
kafka_kinesis_proxy_mirror_records_total{result=\"sent\",stream=\"s\",topic=\"orders\"} 4
kafka_kinesis_proxy_mirror_records_total{result=\"skipped\",stream=\"s\",topic=\"orders\"} 8
kafka_kinesis_proxy_shard_records_total{shard=\"shardId-000000000001\",stream=\"s\"} 4
";
        let s = parse_metrics(text);
        assert_eq!(s.kafka_ok["orders"], 12.0);
        assert_eq!(s.mirror_sent["orders"], 4.0);
        assert_eq!(
            s.shard_records[&("s".to_owned(), "shardId-000000000001".to_owned())],
            4.0
        );
    }

    const METRICS: &str = "\
kafka_kinesis_proxy_kafka_records_total{result=\"ok\",topic=\"orders\"} 500
kafka_kinesis_proxy_mirror_records_total{result=\"sent\",stream=\"orders-stream\",topic=\"orders\"} 100
";

    /// The view of a proxy whose `/routes` answers one route `orders` (120 records queued in
    /// memory, 4 MiB spooled) and `backlog`.
    fn view(backlog: serde_json::Value) -> String {
        let routes = serde_json::json!({
            "routes": [{
                "topic": "orders", "stream": "orders-stream", "percent": 100.0,
                "mode": "mirror", "stream_healthy": false, "open_shards": 4,
                "records_failed": 0, "success_ratio": null,
                "queued_records": 120, "spool_bytes": 4 * 1024 * 1024,
            }],
            "backlog": backlog,
        });
        let answers = Answers {
            ready_code: 200,
            ready_body: String::new(),
            routes: serde_json::from_value(routes).unwrap(),
        };
        let sample = parse_metrics(METRICS);
        render(
            "127.0.0.1:9464",
            &answers,
            &sample,
            &sample,
            Duration::from_secs(2),
        )
    }

    fn backlog(durability: &str, log_open: bool, log_bytes: u64) -> serde_json::Value {
        serde_json::json!({
            "durability": durability, "log_open": log_open,
            "log_bytes": log_bytes, "spool_bytes": 4 * 1024 * 1024,
            "max_bytes": 1024 * 1024 * 1024, "oldest_undelivered_age_seconds": 42,
            "replay_remaining_bytes": 0, "memory_bytes": 3 * 1024 * 1024 / 2,
        })
    }

    fn problems(view: &str) -> Vec<&str> {
        view.lines().filter(|l| l.starts_with("  ! ")).collect()
    }

    #[test]
    fn the_backlog_line_says_where_records_wait_and_how_close_the_disk_limit_is() {
        let view = view(backlog("wal", true, 12 * 1024 * 1024 + 300 * 1024));
        let lines: Vec<&str> = view.lines().collect();
        assert_eq!(
            lines[1],
            "backlog: wal, in memory 1.50 MiB, log 12.29 MiB + spools 4.00 MiB of 1.00 GiB (1.6%), oldest undelivered 42 s, replaying 0 B",
            "{view}"
        );
        assert!(problems(&view).is_empty(), "{view}");
        assert!(lines[2].contains("BACKLOG"), "{view}");
        assert!(
            lines[3].contains(" 120 + 4.00 MiB  UNHEALTHY"),
            "the route's backlog: records in memory + spool bytes\n{view}"
        );
        assert!(
            view.lines().all(|l| l.len() <= 160),
            "readable at 160 columns\n{view}"
        );
    }

    #[test]
    fn a_configured_log_that_is_not_open_is_a_problem() {
        let view = view(backlog("wal", false, 0));
        assert!(
            view.contains("backlog: wal (log NOT open), in memory 1.50 MiB, spools 4.00 MiB of 1.00 GiB (0.4%)"),
            "{view}"
        );
        assert_eq!(
            problems(&view),
            ["  ! durability wal configured but the write-ahead log is not open: a crash loses what waits in memory; see the proxy's log"],
            "{view}"
        );
    }

    #[test]
    fn memory_mode_has_no_log_and_no_problem_about_it() {
        let view = view(backlog("memory", false, 0));
        assert!(
            view.contains(
                "backlog: memory, in memory 1.50 MiB, spools 4.00 MiB of 1.00 GiB (0.4%)\n"
            ),
            "{view}"
        );
        assert!(problems(&view).is_empty(), "memory was asked for\n{view}");
    }

    #[test]
    fn a_full_disk_says_routed_producers_are_held() {
        let mut full = backlog("wal", true, 1024 * 1024 * 1024 - 4 * 1024 * 1024);
        let view_full = view(full.clone());
        assert!(view_full.contains("of 1.00 GiB (100.0%)"), "{view_full}");
        assert_eq!(
            problems(&view_full),
            ["  ! disk limit reached (1.00 GiB of spool.max_bytes 1.00 GiB): Produce responses for routed topics are held until Kinesis takes the backlog"],
            "{view_full}"
        );
        full["log_bytes"] = serde_json::json!(1024 * 1024 * 1024 - 4 * 1024 * 1024 - 1);
        assert!(problems(&view(full)).is_empty(), "one byte below the limit");
    }

    #[test]
    fn a_proxy_without_the_backlog_view_still_renders() {
        let routes: Routes = serde_json::from_str(
            r#"{"routes":[{"topic":"t","stream":"s","percent":1.0,"stream_healthy":true,"open_shards":1,"records_failed":0,"success_ratio":null,"spool_bytes":0}]}"#,
        )
        .unwrap();
        assert!(routes.backlog.is_none());
        assert_eq!(routes.routes[0].queued_records, 0);
    }
}
