//! A fault-injecting HTTP layer in front of the real Kinesis emulator. No emulator throttles or
//! fails partially, so this layer does, on the AWS JSON 1.1 protocol the SDK speaks:
//! - PutRecords entries chosen at random are answered `ProvisionedThroughputExceededException`
//!   or `InternalFailure` (with the right `FailedRecordCount`) and are NOT forwarded, so the
//!   emulator stores only what the proxy was told was stored;
//! - whole requests can fail with a status and error code;
//! - latency can be added;
//! - it can go fully down (each request's connection is closed before anything is forwarded)
//!   and come back;
//! - every Nth PutRecords can be forwarded to the emulator and its connection then cut
//!   instead of answered: stored, with the answer lost;
//! - DescribeStreamSummary alone can be throttled or slowed, and its answer can carry a
//!   `MaxRecordSizeInKiB` the emulator does not report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Share of PutRecords entries answered as throttled.
    pub throttle_entries: f64,
    /// Share of PutRecords entries answered `InternalFailure`.
    pub internal_failure_entries: f64,
    /// Share of requests (any operation but DescribeStreamSummary/ListShards) failed whole,
    /// with (HTTP status, error code).
    pub fail_requests: Option<(f64, u16, &'static str)>,
    pub latency: Duration,
    /// Every Nth PutRecords (0: none) is forwarded whole and its connection cut instead of
    /// answered.
    pub lose_put_records_answers_every: u64,
    pub down: bool,
    pub describe: DescribeFaults,
}

/// Faults of DescribeStreamSummary alone: the control plane is throttled (20 calls per second
/// per account) and slow under load while the data plane is fine.
#[derive(Debug, Clone, Default)]
pub struct DescribeFaults {
    /// Share of calls answered `LimitExceededException`.
    pub throttle: f64,
    /// Added before answering.
    pub latency: Duration,
    /// Set in every answer's summary, as a stream with large records would say.
    pub max_record_size_kib: Option<u64>,
}

#[derive(Default)]
pub struct FaultCounters {
    pub entries_throttled: AtomicU64,
    pub entries_failed: AtomicU64,
    pub requests_failed: AtomicU64,
    pub requests_refused: AtomicU64,
    pub entries_forwarded: AtomicU64,
    /// DescribeStreamSummary calls received.
    pub describes: AtomicU64,
    /// PutRecords requests received whole (without entry faults), counted for
    /// `lose_put_records_answers_every`.
    pub put_records_forwarded: AtomicU64,
    /// PutRecords forwarded whose answers were lost, and their entries.
    pub answers_lost: AtomicU64,
    pub entries_unanswered: AtomicU64,
}

pub struct FaultLayer {
    pub endpoint: String,
    plan: Arc<Mutex<FaultPlan>>,
    pub counters: Arc<FaultCounters>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultLayer {
    /// Listens on a free loopback port and forwards to `upstream` (`127.0.0.1:PORT`).
    pub async fn start(upstream: String) -> FaultLayer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let plan = Arc::new(Mutex::new(FaultPlan::default()));
        let counters = Arc::new(FaultCounters::default());
        let (p, c) = (plan.clone(), counters.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let (p, c, upstream) = (p.clone(), c.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, &p, &c).await;
                });
            }
        });
        FaultLayer {
            endpoint,
            plan,
            counters,
            task,
        }
    }

    pub fn set(&self, plan: FaultPlan) {
        *self.plan.lock().unwrap() = plan;
    }

    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl Drop for FaultLayer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct HttpRequest {
    head: String,
    target: String,
    body: Vec<u8>,
}

async fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<HttpRequest>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let target = header("x-amz-target").unwrap_or_default();
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    Ok(Some(HttpRequest { head, target, body }))
}

async fn forward(
    upstream: &str,
    request: &HttpRequest,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut conn = TcpStream::connect(upstream).await?;
    let mut head = String::new();
    for line in request.head.lines().filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("content-length:") || lower.starts_with("connection:") {
            continue;
        }
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body).await?;
    let mut reader = BufReader::new(conn);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).await?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(502);
    let mut length = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<usize>().ok();
            }
        }
    }
    let mut response = Vec::new();
    match length {
        Some(n) => {
            response.resize(n, 0);
            reader.read_exact(&mut response).await?;
        }
        None => {
            reader.read_to_end(&mut response).await?;
        }
    }
    Ok((status, response))
}

async fn respond(
    client: &mut BufReader<TcpStream>,
    status: u16,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    client.get_mut().write_all(head.as_bytes()).await?;
    client.get_mut().write_all(body).await
}

async fn serve(
    client: TcpStream,
    upstream: &str,
    plan: &Mutex<FaultPlan>,
    counters: &FaultCounters,
) -> std::io::Result<()> {
    let mut client = BufReader::new(client);
    while let Some(request) = read_request(&mut client).await? {
        let plan = plan.lock().unwrap().clone();
        if plan.down {
            counters.requests_refused.fetch_add(1, Ordering::Relaxed);
            return Ok(()); // closes the connection: nothing was forwarded
        }
        if !plan.latency.is_zero() {
            tokio::time::sleep(plan.latency).await;
        }
        if request.target.ends_with("DescribeStreamSummary") {
            describe(&mut client, upstream, &request, &plan.describe, counters).await?;
            continue;
        }
        let control = request.target.ends_with("ListShards");
        if let Some((share, status, code)) = plan.fail_requests {
            if !control && rand::rng().random_bool(share) {
                counters.requests_failed.fetch_add(1, Ordering::Relaxed);
                let body = json!({"__type": code, "message": "injected by the test's fault layer"})
                    .to_string();
                respond(&mut client, status, body.as_bytes()).await?;
                continue;
            }
        }
        if !request.target.ends_with("PutRecords")
            || (plan.throttle_entries == 0.0 && plan.internal_failure_entries == 0.0)
        {
            let mut entries = 0;
            let mut lose_answer = false;
            if request.target.ends_with("PutRecords") {
                entries = serde_json::from_slice::<Value>(&request.body)
                    .ok()
                    .and_then(|v| v["Records"].as_array().map(Vec::len))
                    .unwrap_or(0) as u64;
                counters
                    .entries_forwarded
                    .fetch_add(entries, Ordering::Relaxed);
                let nth = counters
                    .put_records_forwarded
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                let every = plan.lose_put_records_answers_every;
                lose_answer = every > 0 && nth.is_multiple_of(every);
            }
            let (status, body) = forward(upstream, &request, &request.body).await?;
            if lose_answer {
                counters.answers_lost.fetch_add(1, Ordering::Relaxed);
                counters
                    .entries_unanswered
                    .fetch_add(entries, Ordering::Relaxed);
                return Ok(()); // closes the connection: stored, and the proxy never hears so
            }
            respond(&mut client, status, &body).await?;
            continue;
        }
        // Partial failure: decide each entry's fate, forward the survivors, merge the answers.
        let mut body: Value = serde_json::from_slice(&request.body).unwrap();
        let entries = body["Records"].as_array().cloned().unwrap_or_default();
        let mut fates = Vec::with_capacity(entries.len());
        let mut survivors = Vec::new();
        {
            let mut rng = rand::rng();
            for entry in entries {
                let roll: f64 = rng.random();
                if roll < plan.throttle_entries {
                    fates.push(Some((
                        "ProvisionedThroughputExceededException",
                        "Rate exceeded for shard (injected)",
                    )));
                } else if roll < plan.throttle_entries + plan.internal_failure_entries {
                    fates.push(Some((
                        "InternalFailure",
                        "Internal service failure (injected)",
                    )));
                } else {
                    fates.push(None);
                    survivors.push(entry);
                }
            }
        }
        let mut results = Vec::with_capacity(fates.len());
        let mut failed = 0u64;
        if survivors.is_empty() {
            for fate in &fates {
                let (code, message) = fate.expect("every entry failed");
                results.push(json!({"ErrorCode": code, "ErrorMessage": message}));
                failed += 1;
            }
        } else {
            let forwarded = survivors.len() as u64;
            body["Records"] = Value::Array(survivors);
            let (status, answer) = forward(upstream, &request, body.to_string().as_bytes()).await?;
            if status != 200 {
                respond(&mut client, status, &answer).await?;
                continue;
            }
            counters
                .entries_forwarded
                .fetch_add(forwarded, Ordering::Relaxed);
            let answer: Value = serde_json::from_slice(&answer).unwrap();
            let mut stored = answer["Records"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter();
            for fate in &fates {
                match fate {
                    Some((code, message)) => {
                        results.push(json!({"ErrorCode": code, "ErrorMessage": message}));
                        failed += 1;
                    }
                    None => {
                        let r = stored.next().unwrap_or(
                            json!({"ErrorCode": "InternalFailure", "ErrorMessage": "missing"}),
                        );
                        if r.get("ErrorCode").is_some() {
                            failed += 1;
                        }
                        results.push(r);
                    }
                }
            }
        }
        for fate in fates.iter().flatten() {
            match fate.0 {
                "ProvisionedThroughputExceededException" => {
                    counters.entries_throttled.fetch_add(1, Ordering::Relaxed)
                }
                _ => counters.entries_failed.fetch_add(1, Ordering::Relaxed),
            };
        }
        let reply = json!({"FailedRecordCount": failed, "Records": results}).to_string();
        respond(&mut client, 200, reply.as_bytes()).await?;
    }
    Ok(())
}

async fn describe(
    client: &mut BufReader<TcpStream>,
    upstream: &str,
    request: &HttpRequest,
    faults: &DescribeFaults,
    counters: &FaultCounters,
) -> std::io::Result<()> {
    counters.describes.fetch_add(1, Ordering::Relaxed);
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    if faults.throttle > 0.0 && rand::rng().random_bool(faults.throttle) {
        let body =
            json!({"__type": "LimitExceededException", "message": "Rate exceeded (injected)"});
        return respond(client, 400, body.to_string().as_bytes()).await;
    }
    let (status, mut body) = forward(upstream, request, &request.body).await?;
    if let (200, Some(kib)) = (status, faults.max_record_size_kib) {
        let mut answer: Value = serde_json::from_slice(&body).unwrap();
        answer["StreamDescriptionSummary"]["MaxRecordSizeInKiB"] = json!(kib);
        body = answer.to_string().into_bytes();
    }
    respond(client, status, &body).await
}

/// kinesis-local with a fault layer in front of it and one stream created: what a test of the
/// mirror under Kinesis faults starts from (the proxy is pointed at `faults.endpoint`).
pub struct FaultyKinesis {
    pub kinesis: super::kinesis::KinesisLocal,
    pub faults: FaultLayer,
}

impl FaultyKinesis {
    pub async fn start(stream: &str, shards: i32) -> FaultyKinesis {
        let kinesis = super::kinesis::KinesisLocal::start();
        kinesis.create_stream(stream, shards).await;
        let faults =
            FaultLayer::start(kinesis.endpoint.trim_start_matches("http://").to_owned()).await;
        FaultyKinesis { kinesis, faults }
    }
}
