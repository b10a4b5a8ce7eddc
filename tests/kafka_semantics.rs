//! Kafka's own semantics, end to end through the proxy (every client bootstraps from the proxy;
//! the checks read Kafka directly):
//!
//! - **Consumer groups rebalancing** (3-node cluster, so the group coordinator and the partition
//!   leaders sit behind different proxy broker ports): three members of one group consume a
//!   6-partition topic while 20,000 records are produced through the proxy (idempotent, 2,500/s);
//!   once a quarter is consumed and the leaver has read from each of its partitions, one member
//!   leaves and the group rebalances. Members commit synchronously after processing each poll
//!   (and KkpClient / kafka_client.py also in the revoke callback and before a clean close), and
//!   log every record, rebalance callback and commit outcome. Afterwards, for every cell: no
//!   record lost (every record Kafka holds was read by some member, at its partition and offset,
//!   with its key, and for VerifiableConsumer its value, as in Kafka; the Python and Java
//!   members check values themselves), the leaver's partitions were taken over, every
//!   partition's committed offset (read through the proxy) is its end, and no record was read
//!   twice unless an earlier read of it was never committed. Then
//!   - clean leave (close, after committing): no record read twice, nothing left uncommitted,
//!     and the others resumed each of the leaver's partitions exactly at its committed offset;
//!   - kill -9 (the killed member takes 2 s between processing and committing, and is killed
//!     early in that window): each of its partitions resumed inside its uncommitted window (not
//!     before its last logged commit, not after its last read), and the records read twice are
//!     exactly the window's records from the resume point on.
//!
//!   Clients × group protocols: Java kafka-clients (KkpClient: classic with cooperative-sticky,
//!   and consumer), confluent-kafka / librdkafka 2.16 (classic with range, and consumer) and
//!   kafka-tools' VerifiableConsumer (classic with range, and consumer), each with a clean
//!   leave; kill -9 under classic (Java with range, confluent with cooperative-sticky) and under
//!   consumer (Java; the broker fences the member when its session expires, at least 45 s for
//!   consumer groups, so that cell runs beside the others).
//! - **Transactions** (1 node): Java and confluent-kafka transactional producers commit some
//!   transactions and abort others; read_committed consumers (Java, confluent) see exactly the
//!   committed records, and read_uncommitted readers see the aborted ones too.
//! - **Admin** (1 node): create (with topic configs), describe, describe configs, list and delete
//!   topics with Java's Admin and confluent-kafka's AdminClient; list and describe groups (empty
//!   with committed offsets, stable with a classic member, stable with a KIP-848 member); and
//!   kafka-tools' TopicCommand (create, describe, list, delete).
//!
//! Each test prints SEMANTICS lines with its counts.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{Read as _, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use support::kafka::{brokers_seen_through, KafkaRecord};
use support::*;

/// Records per rebalance cell, produced at RATE per second so the members consume while the
/// producer runs.
const RECORDS: usize = 20_000;
const RATE: usize = 2_500;
const PARTITIONS: i32 = 6;
const MEMBERS: usize = 3;
/// Processing time of the member that is killed: between logging a poll's records and
/// committing them.
const KILL_COMMIT_DELAY_MS: u32 = 2_000;

fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        thread::sleep(Duration::from_millis(150));
    }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// The brokers' node ids as a client sees them through `bootstrap`.
fn node_ids_through(bootstrap: &str) -> Vec<i32> {
    brokers_seen_through(bootstrap)
        .into_iter()
        .map(|(id, _, _)| id)
        .collect()
}

/// The committed offsets of `group` on `topic`'s partitions, fetched through `bootstrap`
/// (OffsetFetch after FindCoordinator, both through the proxy); -1: none.
fn committed_through(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("committed offsets of {group} through {bootstrap}: {e}"));
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

fn key_index(key: Option<&[u8]>) -> i64 {
    key.and_then(|k| std::str::from_utf8(k).ok())
        .and_then(|k| k.strip_prefix("key-"))
        .and_then(|i| i.parse().ok())
        .unwrap_or(-1)
}

/// The JSON summary a client printed last in a daemon log.
fn last_json(log: &str) -> Option<Value> {
    log.lines()
        .rev()
        .filter(|l| l.starts_with('{'))
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
}

// ------------------------------------------------------------------------------------------
// Group members and what they logged
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    /// KkpClient.java (kafka-clients KafkaConsumer), `consume --commit sync --events`.
    Java,
    /// kafka_client.py --client confluent (librdkafka), same contract.
    Confluent,
    /// kafka-tools' VerifiableConsumer --verbose: commitSync after every poll, JSON events.
    Verifiable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leave {
    /// Java/confluent: the stop file (commit, then close); VerifiableConsumer: SIGTERM (its
    /// shutdown hook wakes the consumer, which finishes its commit and closes).
    Clean,
    /// kill -9.
    Kill,
}

#[derive(Clone, Copy, Debug)]
struct Cell {
    family: Family,
    protocol: &'static str,
    /// Classic protocol only.
    assignor: Option<&'static str>,
    leave: Leave,
}

impl Cell {
    fn name(&self) -> String {
        let a = self.assignor.map(|a| format!("/{a}")).unwrap_or_default();
        format!(
            "{:?} {}{a} {}",
            self.family,
            self.protocol,
            match self.leave {
                Leave::Clean => "clean leave",
                Leave::Kill => "kill -9",
            }
        )
    }

    fn slug(&self) -> String {
        format!(
            "{}-{}-{}-{}",
            format!("{:?}", self.family).to_lowercase(),
            self.protocol,
            self.assignor.unwrap_or("default"),
            match self.leave {
                Leave::Clean => "clean",
                Leave::Kill => "kill",
            }
        )
    }
}

/// One read of a record by a member.
#[derive(Debug, Clone)]
struct RecordRead {
    partition: i32,
    offset: i64,
    index: i64,
    /// VerifiableConsumer's reads carry the value (checked here); KkpClient and kafka_client.py
    /// check values themselves ("mismatched" in their summary).
    value: Option<Vec<u8>>,
    /// Set when the member's log shows a successful commit covering it before the partition
    /// left the member (revoked, lost, closed, killed).
    committed: bool,
    /// The line of the member's log it came from (a clock for before/after the leave).
    line: usize,
}

/// What a member's log says so far, parsed incrementally.
#[derive(Default)]
struct MemberState {
    pos: u64,
    /// Complete lines parsed so far.
    lines: usize,
    /// Successful commits: (log line, partition, next offset).
    commits: Vec<(usize, i32, i64)>,
    reads: Vec<RecordRead>,
    /// Reads not yet covered by a commit, by partition (indices into `reads`).
    pending: BTreeMap<i32, Vec<usize>>,
    owned: BTreeSet<i32>,
    assignments: usize,
    commits_ok: usize,
    commit_failures: Vec<String>,
    closed: bool,
}

impl MemberState {
    fn read(&mut self, mut r: RecordRead) {
        r.line = self.lines;
        self.pending
            .entry(r.partition)
            .or_default()
            .push(self.reads.len());
        self.reads.push(r);
    }

    fn commit_ok(&mut self, partition: i32, next: i64) {
        self.commits.push((self.lines, partition, next));
        let reads = &mut self.reads;
        if let Some(pending) = self.pending.get_mut(&partition) {
            pending.retain(|&i| {
                if reads[i].offset < next {
                    reads[i].committed = true;
                    false
                } else {
                    true
                }
            });
        }
    }

    /// The partitions left the member: whatever it had not committed stays uncommitted.
    fn gone(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.owned.remove(p);
            self.pending.remove(p);
        }
    }

    fn assigned(&mut self, partitions: &[i32]) {
        self.assignments += 1;
        self.owned.extend(partitions.iter().copied());
    }

    /// KkpClient / kafka_client.py events lines (see KkpClient.java's header).
    fn events_line(&mut self, line: &str) {
        let mut f = line.split_whitespace();
        let ints = |f: std::str::SplitWhitespace| -> Vec<i32> {
            f.filter_map(|x| x.parse().ok()).collect()
        };
        match f.next() {
            Some("r") => {
                let v: Vec<i64> = f.filter_map(|x| x.parse().ok()).collect();
                if let [p, o, i] = v[..] {
                    self.read(RecordRead {
                        partition: p as i32,
                        offset: o,
                        index: i,
                        value: None,
                        committed: false,
                        line: 0,
                    });
                }
            }
            Some("assigned") => self.assigned(&ints(f)),
            Some("revoked") | Some("lost") => self.gone(&ints(f)),
            Some("commit") => {
                let ok = f.next() == Some("ok");
                let _why = f.next();
                if ok {
                    self.commits_ok += 1;
                    for po in f {
                        if let Some((p, o)) = po.split_once(':') {
                            if let (Ok(p), Ok(o)) = (p.parse(), o.parse()) {
                                self.commit_ok(p, o);
                            }
                        }
                    }
                } else {
                    self.commit_failures.push(line.to_string());
                }
            }
            Some("closed") => self.closed = true,
            _ => {}
        }
    }

    /// VerifiableConsumer's JSON events.
    fn verifiable_line(&mut self, line: &str) {
        if !line.starts_with('{') {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return;
        };
        let parts = |v: &Value| -> Vec<i32> {
            v["partitions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p["partition"].as_i64())
                        .map(|p| p as i32)
                        .collect()
                })
                .unwrap_or_default()
        };
        match v["name"].as_str() {
            Some("record_data") => self.read(RecordRead {
                partition: v["partition"].as_i64().unwrap_or(-1) as i32,
                offset: v["offset"].as_i64().unwrap_or(-1),
                index: key_index(v["key"].as_str().map(str::as_bytes)),
                value: Some(v["value"].as_str().unwrap_or_default().as_bytes().to_vec()),
                committed: false,
                line: 0,
            }),
            Some("partitions_assigned") => self.assigned(&parts(&v)),
            Some("partitions_revoked") => self.gone(&parts(&v)),
            Some("offsets_committed") => {
                if v["success"].as_bool() == Some(true) {
                    self.commits_ok += 1;
                    for o in v["offsets"].as_array().into_iter().flatten() {
                        if let (Some(p), Some(off)) =
                            (o["partition"].as_i64(), o["offset"].as_i64())
                        {
                            self.commit_ok(p as i32, off);
                        }
                    }
                } else {
                    self.commit_failures.push(line.to_string());
                }
            }
            Some("shutdown_complete") => self.closed = true,
            _ => {}
        }
    }

    /// Uncommitted reads: processed but never covered by a commit while the member held the
    /// partition. Call once the member is gone.
    fn window(&self) -> usize {
        self.reads.iter().filter(|r| !r.committed).count()
    }
}

struct Member {
    name: String,
    family: Family,
    daemon: Daemon,
    /// The events file (Java, confluent) or the daemon log (VerifiableConsumer).
    log: PathBuf,
    stop: PathBuf,
    state: MemberState,
}

impl Member {
    fn start(
        cell: &Cell,
        i: usize,
        bootstrap: &str,
        topic: &str,
        group: &str,
        dir: &Path,
    ) -> Member {
        let name = format!("member{i}");
        let events = dir.join(format!("{name}.events"));
        let stop = dir.join(format!("{name}.stop"));
        let classic = cell.protocol == "classic";
        // Hard kills need the classic group to notice the dead member quickly (the broker's
        // group.min.session.timeout.ms is 6 s).
        let session_ms = (classic && cell.leave == Leave::Kill).then_some("6000");
        let cmd = match cell.family {
            Family::Java | Family::Confluent => {
                let client = if cell.family == Family::Java {
                    "java"
                } else {
                    "confluent"
                };
                let mut args = words(&format!(
                    "consume --bootstrap {bootstrap} --topic {topic} --count {RECORDS} --group {group} \
                     --group-protocol {} --commit sync --timeout 240",
                    cell.protocol
                ))
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>();
                args.extend(["--events".into(), events.display().to_string()]);
                args.extend(["--stop-file".into(), stop.display().to_string()]);
                if let Some(a) = cell.assignor {
                    args.extend(["--assignment-strategy".into(), a.into()]);
                }
                if let Some(ms) = session_ms {
                    args.extend(["--session-timeout-ms".into(), ms.into()]);
                }
                if cell.leave == Leave::Kill && i == 0 {
                    // The member to be killed takes its time between processing and commit, so
                    // the kill finds records processed and not yet committed.
                    args.extend(["--commit-delay-ms".into(), KILL_COMMIT_DELAY_MS.to_string()]);
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut cmd = client_command(client, &args);
                cmd.env("PYTHONUNBUFFERED", "1");
                cmd
            }
            Family::Verifiable => {
                let mut cmd = java_command(None);
                cmd.arg("org.apache.kafka.tools.VerifiableConsumer")
                    .args([
                        "--bootstrap-server",
                        bootstrap,
                        "--topic",
                        topic,
                        "--group-id",
                        group,
                    ])
                    .args([
                        "--group-protocol",
                        cell.protocol,
                        "--verbose",
                        "--reset-policy",
                        "earliest",
                    ]);
                if let Some(a) = cell.assignor {
                    let class = match a {
                        "range" => "org.apache.kafka.clients.consumer.RangeAssignor",
                        "roundrobin" => "org.apache.kafka.clients.consumer.RoundRobinAssignor",
                        _ => "org.apache.kafka.clients.consumer.CooperativeStickyAssignor",
                    };
                    cmd.args(["--assignment-strategy", class]);
                }
                if let Some(ms) = session_ms {
                    cmd.args(["--session-timeout", ms]);
                }
                cmd
            }
        };
        let daemon = Daemon::start(&format!("{}-{name}", cell.slug()), cmd);
        let log = if cell.family == Family::Verifiable {
            daemon.log_path().to_path_buf()
        } else {
            events
        };
        Member {
            name,
            family: cell.family,
            daemon,
            log,
            stop,
            state: MemberState::default(),
        }
    }

    /// Parses the complete lines logged since the last call.
    fn update(&mut self) {
        let Ok(mut f) = File::open(&self.log) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.state.pos)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        // A member killed mid-write leaves a partial last line: only complete lines count.
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        self.state.pos += end as u64 + 1;
        let text = String::from_utf8_lossy(&buf[..end]).into_owned();
        for line in text.lines() {
            match self.family {
                Family::Verifiable => self.state.verifiable_line(line),
                _ => self.state.events_line(line),
            }
            self.state.lines += 1;
        }
    }

    fn running(&mut self) -> Result<(), String> {
        if self.daemon.is_running() {
            Ok(())
        } else {
            Err(format!(
                "{} exited early; log:\n{}",
                self.name,
                self.daemon.log_tail(30)
            ))
        }
    }

    /// Asks for a clean leave.
    fn stop(&self) {
        match self.family {
            Family::Verifiable => self.daemon.signal("-TERM"),
            _ => {
                fs::write(&self.stop, b"stop").expect("write stop file");
            }
        }
    }

    /// Waits for a cleanly stopped member to exit, having closed its consumer; Java and
    /// confluent members must also report no mismatched record and no error.
    fn finish(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.daemon.is_running() {
            ensure!(
                Instant::now() < deadline,
                "{} did not exit within 60 s of its stop; log:\n{}",
                self.name,
                self.daemon.log_tail(30)
            );
            thread::sleep(Duration::from_millis(100));
        }
        self.update();
        ensure!(
            self.state.closed,
            "{} exited without closing its consumer; log:\n{}",
            self.name,
            self.daemon.log_tail(30)
        );
        if self.family == Family::Verifiable {
            return Ok(());
        }
        let summary = last_json(&self.daemon.log_text()).ok_or_else(|| {
            format!(
                "{}: no summary; log:\n{}",
                self.name,
                self.daemon.log_tail(30)
            )
        })?;
        ensure!(
            summary["mismatched"] == 0 && summary["errors"].as_array().is_some_and(Vec::is_empty),
            "{}: mismatched records or errors: {summary}",
            self.name
        );
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// One rebalance cell
// ------------------------------------------------------------------------------------------

fn rebalance_cell(
    cluster: &'static KafkaCluster,
    proxy: &Proxy,
    cell: &Cell,
) -> Result<String, String> {
    let topic = format!("rebalance-{}", cell.slug());
    let group = format!("group-{}", cell.slug());
    cluster.create_topic(&topic, PARTITIONS);
    let bootstrap = proxy.bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut members: Vec<Member> = (0..MEMBERS)
        .map(|i| Member::start(cell, i, &bootstrap, &topic, &group, dir.path()))
        .collect();

    // 1. A stable group: every partition owned, each member owning some.
    wait_until(
        "the group to assign every partition to the three members",
        Duration::from_secs(90),
        || {
            let mut union = BTreeSet::new();
            let mut all = true;
            for m in members.iter_mut() {
                m.running()?;
                m.update();
                all &= !m.state.owned.is_empty();
                union.extend(m.state.owned.iter().copied());
            }
            Ok(all && union.len() == PARTITIONS as usize)
        },
    )?;
    let joined = started.elapsed();

    // 2. Records arrive while the members consume.
    let mut producer = Daemon::start(
        &format!("{}-producer", cell.slug()),
        client_command(
            "confluent",
            &words(&format!(
                "produce --bootstrap {bootstrap} --topic {topic} --count {RECORDS} --rate {RATE} \
                 --idempotent --acks all --timeout 180"
            )),
        ),
    );

    // 3. One member leaves mid-stream.
    let leaver = 0;
    wait_until(
        "a quarter of the records consumed, the leaver reading all its partitions",
        Duration::from_secs(120),
        || {
            let mut total = 0;
            for m in members.iter_mut() {
                m.running()?;
                m.update();
                total += m.state.reads.len();
            }
            let l = &members[leaver].state;
            // Mid-stream: the leaver has read from every partition it owns.
            let mid_stream = !l.owned.is_empty()
                && l.owned
                    .iter()
                    .all(|p| l.reads.iter().filter(|r| r.partition == *p).count() >= 100);
            // A kill lands while the leaver holds processed records it has not committed, early
            // in its processing time (its last flush is recent), well before it commits them.
            let fresh = || {
                fs::metadata(&members[leaver].log)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| {
                        age < Duration::from_millis(u64::from(KILL_COMMIT_DELAY_MS) / 2)
                    })
            };
            let in_window = cell.leave == Leave::Clean
                || (l.pending.values().any(|v| !v.is_empty()) && fresh());
            Ok(total >= RECORDS / 4 && mid_stream && in_window)
        },
    )?;
    ensure!(
        producer.is_running(),
        "the producer finished before the leave: the leave would not be mid-stream"
    );
    let leaver_owned: Vec<i32> = members[leaver].state.owned.iter().copied().collect();
    let read_at_leave: usize = members.iter().map(|m| m.state.reads.len()).sum();
    // What each member had logged when the leave began: later lines come after it.
    let snapshot: Vec<usize> = members.iter().map(|m| m.state.lines).collect();
    ensure!(!leaver_owned.is_empty(), "the leaver owns no partition");
    match cell.leave {
        Leave::Clean => members[leaver].stop(),
        Leave::Kill => members[leaver].daemon.signal("-KILL"),
    }
    let left_at = Instant::now();
    match cell.leave {
        Leave::Clean => members[leaver].finish()?,
        Leave::Kill => {
            members[leaver].daemon.wait_exit(Duration::from_secs(30));
            members[leaver].update();
        }
    }

    // 4. The others take the leaver's partitions over.
    wait_until(
        "the remaining members to own every partition",
        Duration::from_secs(120),
        || {
            let mut union = BTreeSet::new();
            for m in members.iter_mut().skip(1) {
                m.running()?;
                m.update();
                union.extend(m.state.owned.iter().copied());
            }
            Ok(union.len() == PARTITIONS as usize)
        },
    )?;
    let rebalanced_in = left_at.elapsed();

    // 5. Everything produced is consumed.
    let exit = producer.wait_exit(Duration::from_secs(180));
    let produced = last_json(&producer.log_text())
        .ok_or_else(|| format!("no producer summary:\n{}", producer.log_tail(20)))?;
    ensure!(
        exit == Some(0),
        "producer exit {exit:?}:\n{}",
        producer.log_tail(20)
    );
    check_produced(&produced, RECORDS as i64)?;
    let truth: Vec<KafkaRecord> = cluster.read_all(&topic, false);
    ensure!(
        truth.len() == RECORDS,
        "Kafka holds {} records of {RECORDS} (idempotent producer)",
        truth.len()
    );
    let positions: HashMap<(i32, i64), &KafkaRecord> =
        truth.iter().map(|r| ((r.partition, r.offset), r)).collect();
    wait_until(
        "every record to be consumed by some member",
        Duration::from_secs(120),
        || {
            let mut seen = std::collections::HashSet::new();
            for (i, m) in members.iter_mut().enumerate() {
                if i != leaver {
                    m.running()?;
                }
                m.update();
                seen.extend(m.state.reads.iter().map(|r| (r.partition, r.offset)));
            }
            Ok(positions.keys().all(|p| seen.contains(p)))
        },
    )?;

    // 6. The others leave cleanly.
    for m in members.iter().skip(1) {
        m.stop();
    }
    for m in members.iter_mut().skip(1) {
        m.finish()?;
    }

    // 7. The verdict.
    let mut copies: HashMap<(i32, i64), (usize, usize)> = HashMap::new(); // reads, uncommitted reads
    let mut wrong = Vec::new();
    for m in &members {
        for r in &m.state.reads {
            let e = copies.entry((r.partition, r.offset)).or_default();
            e.0 += 1;
            e.1 += usize::from(!r.committed);
            match positions.get(&(r.partition, r.offset)) {
                None => wrong.push(format!(
                    "{} read p{}@{}, which Kafka does not hold",
                    m.name, r.partition, r.offset
                )),
                Some(k) => {
                    if key_index(k.key.as_deref()) != r.index {
                        wrong.push(format!(
                            "{} read index {} at p{}@{}, Kafka holds {:?}",
                            m.name, r.index, r.partition, r.offset, k.key
                        ));
                    } else if r
                        .value
                        .as_ref()
                        .is_some_and(|v| Some(v) != k.value.as_ref())
                    {
                        wrong.push(format!(
                            "{} read a different value at p{}@{}",
                            m.name, r.partition, r.offset
                        ));
                    }
                }
            }
        }
    }
    let lost: Vec<_> = positions
        .keys()
        .filter(|p| !copies.contains_key(p))
        .collect();
    let duplicates: usize = copies.values().map(|c| c.0 - 1).sum();
    // A second read is allowed only where an earlier one was never committed.
    let unjustified: usize = copies
        .values()
        .map(|&(n, unc)| (n - 1).saturating_sub(unc))
        .sum();
    let windows: Vec<usize> = members.iter().map(|m| m.state.window()).collect();
    let window: usize = windows.iter().sum();
    let failures: Vec<&String> = members
        .iter()
        .flat_map(|m| &m.state.commit_failures)
        .collect();
    let reads: Vec<usize> = members.iter().map(|m| m.state.reads.len()).collect();
    let assignments: Vec<usize> = members.iter().map(|m| m.state.assignments).collect();
    // Each of the leaver's partitions: the group's committed offset when the leave began (the
    // highest commit logged by the leaver, or by the others before the leave; 0 when none, as
    // the members reset to earliest), the leaver's last read + 1, and where the others resumed
    // (the lowest offset they read after the leave began).
    let mut resumed = Vec::new();
    let snapshot = &snapshot;
    for &p in &leaver_owned {
        let committed_before = members
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                let until = if i == leaver { usize::MAX } else { snapshot[i] };
                m.state
                    .commits
                    .iter()
                    .filter(move |c| c.0 < until && c.1 == p)
                    .map(|c| c.2)
            })
            .max()
            .unwrap_or(0);
        let mine: Vec<&RecordRead> = members[leaver]
            .state
            .reads
            .iter()
            .filter(|r| r.partition == p)
            .collect();
        let last = mine
            .iter()
            .map(|r| r.offset + 1)
            .max()
            .unwrap_or(committed_before)
            .max(committed_before);
        let start = members
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leaver)
            .flat_map(|(i, m)| {
                m.state
                    .reads
                    .iter()
                    .filter(move |r| r.line >= snapshot[i] && r.partition == p)
            })
            .map(|r| r.offset)
            .min();
        let uncommitted = mine.iter().filter(|r| !r.committed).count();
        let reread = start.map_or(0, |s| {
            mine.iter()
                .filter(|r| !r.committed && r.offset >= s)
                .count()
        });
        resumed.push((p, committed_before, last, start, uncommitted, reread));
    }
    let taken_over: Vec<i32> = resumed
        .iter()
        .filter(|r| r.3.is_some())
        .map(|r| r.0)
        .collect();
    let ends: Vec<i64> = (0..PARTITIONS)
        .map(|p| cluster.offsets(&topic, p).1)
        .collect();
    let committed = committed_through(&bootstrap, &group, &topic, PARTITIONS);

    let note = format!(
        "{RECORDS} records in Kafka, reads per member {reads:?} (total {}, {read_at_leave} before the leave), \
         lost {}, duplicates {duplicates}, uncommitted window {window} (per member {windows:?}), \
         unjustified duplicates {unjustified}, commit failures {}, assignments per member {assignments:?}, \
         leaver owned {leaver_owned:?}, taken over {taken_over:?}, resumed at {}, joined in {:.1}s, \
         rebalanced in {:.1}s{}",
        reads.iter().sum::<usize>(),
        lost.len(),
        failures.len(),
        resumed
            .iter()
            .map(|(p, committed, last, start, unc, reread)| format!(
                "p{p}@{} (committed {committed}, leaver read up to {last}, {unc} uncommitted, {reread} re-read)",
                start.map_or("-".into(), |s| s.to_string()),
            ))
            .collect::<Vec<_>>()
            .join(", "),
        joined.as_secs_f64(),
        rebalanced_in.as_secs_f64(),
        failures.first().map(|f| format!("; first commit failure: {f}")).unwrap_or_default(),
    );
    eprintln!("SEMANTICS rebalance {}: {note}", cell.name());
    ensure!(
        wrong.is_empty(),
        "{} reads differ from Kafka, first: {:?}\n{note}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    ensure!(
        lost.is_empty(),
        "{} records never consumed, e.g. {:?}\n{note}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    ensure!(
        unjustified == 0,
        "{unjustified} records read again although their first read was committed\n{note}"
    );
    ensure!(
        taken_over.len() == leaver_owned.len(),
        "the leaver's partitions were not taken over\n{note}"
    );
    ensure!(
        committed == ends,
        "committed offsets {committed:?} are not the partition ends {ends:?}\n{note}"
    );
    match cell.leave {
        Leave::Clean => {
            ensure!(duplicates == 0, "a clean leave re-delivered {duplicates} records; commit failures: {failures:?}\n{note}");
            ensure!(window == 0, "records processed but never committed in a clean run; commit failures: {failures:?}\n{note}");
            // The survivors resumed the leaver's partitions exactly at the committed offsets,
            // which cover everything the leaver read.
            for (p, committed, last, start, _, _) in &resumed {
                ensure!(
                    *start == Some(*committed) && committed == last,
                    "p{p} resumed at {start:?}; committed {committed}, the leaver read up to {last}\n{note}"
                );
            }
        }
        Leave::Kill => {
            // The survivors closed cleanly: only the killed member has an uncommitted window.
            ensure!(
                windows[1..].iter().all(|w| *w == 0),
                "survivors left records uncommitted\n{note}"
            );
            // Each of its partitions resumed inside its uncommitted window: not before the last
            // logged commit and not after its last read + 1 (the window's commit may have
            // reached Kafka unlogged, if the kill lands between commitSync's return and the "ok"
            // line). Exactly the window's records from there on are read twice.
            for (p, committed, last, start, _, _) in &resumed {
                ensure!(
                    start.is_some_and(|s| s >= *committed && s <= *last),
                    "p{p} resumed at {start:?}, outside the killed member's window [{committed}, {last}]\n{note}"
                );
            }
            ensure!(
                windows[leaver] > 0,
                "the kill found nothing uncommitted\n{note}"
            );
            let reread: usize = resumed.iter().map(|r| r.5).sum();
            ensure!(
                duplicates == reread,
                "{duplicates} duplicates, but {reread} uncommitted records were re-read\n{note}"
            );
        }
    }
    Ok(note)
}

/// Runs `cells` one after the other, and `background` cells (mostly idle: a KIP-848 kill waits
/// for the session to expire) beside them.
fn rebalance_matrix(title: &str, cells: &[Cell], background: &[Cell]) {
    let cluster = KafkaCluster::shared3();
    let proxy = Proxy::start(cluster);
    let mut matrix = Matrix::new(title);
    let col = "no loss, no unjustified re-read";
    thread::scope(|scope| {
        let proxy = &proxy;
        let handles: Vec<_> = background
            .iter()
            .map(|cell| {
                (
                    cell,
                    scope.spawn(move || rebalance_cell(cluster, proxy, cell)),
                )
            })
            .collect();
        for cell in cells {
            let result = rebalance_cell(cluster, proxy, cell);
            matrix.record(&cell.name(), col, result);
        }
        for (cell, handle) in handles {
            let result = handle
                .join()
                .unwrap_or_else(|_| Err("the cell panicked".into()));
            matrix.record(&cell.name(), col, result);
        }
    });
    matrix.finish();
}

/// Java kafka-clients, classic and KIP-848. A KIP-848 member killed is fenced only when its
/// session expires (group.consumer.min.session.timeout.ms, and so the shortest session, is
/// 45 s): that cell runs in the background of the others.
#[test]
fn group_rebalance_java_kafka_clients() {
    rebalance_matrix(
        "group rebalance, Java kafka-clients",
        &[
            Cell {
                family: Family::Java,
                protocol: "classic",
                assignor: Some("cooperative-sticky"),
                leave: Leave::Clean,
            },
            Cell {
                family: Family::Java,
                protocol: "consumer",
                assignor: None,
                leave: Leave::Clean,
            },
            Cell {
                family: Family::Java,
                protocol: "classic",
                assignor: Some("range"),
                leave: Leave::Kill,
            },
        ],
        &[Cell {
            family: Family::Java,
            protocol: "consumer",
            assignor: None,
            leave: Leave::Kill,
        }],
    );
}

#[test]
fn group_rebalance_confluent() {
    rebalance_matrix(
        "group rebalance, confluent-kafka",
        &[
            Cell {
                family: Family::Confluent,
                protocol: "classic",
                assignor: Some("range"),
                leave: Leave::Clean,
            },
            Cell {
                family: Family::Confluent,
                protocol: "consumer",
                assignor: None,
                leave: Leave::Clean,
            },
            Cell {
                family: Family::Confluent,
                protocol: "classic",
                assignor: Some("cooperative-sticky"),
                leave: Leave::Kill,
            },
        ],
        &[],
    );
}

#[test]
fn group_rebalance_verifiable_consumer() {
    rebalance_matrix(
        "group rebalance, VerifiableConsumer",
        &[
            Cell {
                family: Family::Verifiable,
                protocol: "classic",
                assignor: Some("range"),
                leave: Leave::Clean,
            },
            Cell {
                family: Family::Verifiable,
                protocol: "consumer",
                assignor: None,
                leave: Leave::Clean,
            },
        ],
        &[],
    );
}

// ------------------------------------------------------------------------------------------
// Transactions
// ------------------------------------------------------------------------------------------

const TXN_RECORDS: usize = 6_000;
const TXN_SIZE: usize = 100;
const ABORT_EVERY: usize = 3;

/// Indices the transactional producers commit: transaction t (1-based) holds records
/// [(t-1)K, tK) and is aborted when t is a multiple of ABORT_EVERY.
fn committed_indices() -> Vec<i64> {
    (0..TXN_RECORDS)
        .filter(|i| !(i / TXN_SIZE + 1).is_multiple_of(ABORT_EVERY))
        .map(|i| i as i64)
        .collect()
}

fn indices(v: &Value, field: &str) -> Vec<i64> {
    v[field]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default()
}

fn transactions_cell(
    cluster: &'static KafkaCluster,
    proxy: &Proxy,
    producer: &str,
    m: &mut Matrix,
) {
    let topic = format!("txn-{producer}");
    cluster.create_topic(&topic, 3);
    let b = proxy.bootstrap();
    let want = committed_indices();
    let aborted = TXN_RECORDS - want.len();
    let produce = try_run_client(
        producer,
        &words(&format!(
            "produce --bootstrap {b} --topic {topic} --count {TXN_RECORDS} --transactional-id kkp-txn-{producer} \
             --txn-size {TXN_SIZE} --abort-every {ABORT_EVERY} --timeout 120"
        )),
    );
    let produce = match produce {
        Ok(v) => v,
        Err(e) => {
            m.record(producer, "transactional produce", Err(e));
            return;
        }
    };
    let produce_ok = (|| -> Result<String, String> {
        check_produced(&produce, TXN_RECORDS as i64)?;
        ensure!(
            num(&produce, "committed_count") == want.len() as i64
                && num(&produce, "aborted_count") == aborted as i64,
            "expected {} committed and {aborted} aborted: {produce}",
            want.len()
        );
        ensure!(
            indices(&produce, "committed") == want,
            "the committed index list is not the committed transactions'"
        );
        // Kafka itself (read directly) agrees: the aborted records are in the log and hidden
        // from read_committed.
        let all = cluster.read_all(&topic, false);
        let visible = cluster.read_all(&topic, true);
        ensure!(
            all.len() == TXN_RECORDS,
            "Kafka holds {} records, expected {TXN_RECORDS} (aborted ones included)",
            all.len()
        );
        let mut seen: Vec<i64> = visible
            .iter()
            .map(|r| key_index(r.key.as_deref()))
            .collect();
        seen.sort();
        ensure!(
            seen == want,
            "Kafka's read_committed view differs from the committed transactions"
        );
        Ok(format!(
            "{TXN_RECORDS} acknowledged, {} committed, {aborted} aborted ({} transactions); direct read: {} in the log, {} committed",
            want.len(),
            TXN_RECORDS / TXN_SIZE,
            all.len(),
            visible.len()
        ))
    })();
    let ok = produce_ok.is_ok();
    m.record(producer, "transactional produce", produce_ok);
    if !ok {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let expect = dir.path().join("produce.json");
    fs::write(&expect, produce.to_string()).unwrap();
    let expect = expect.display().to_string();
    for reader in ["java", "confluent"] {
        let v = try_run_client(
            reader,
            &words(&format!(
                "consume --bootstrap {b} --topic {topic} --count {TXN_RECORDS} --isolation read_committed \
                 --expect-indices {expect} --list-indices --timeout 90"
            )),
        );
        let result = v.and_then(|v| {
            let note = format!(
                "distinct {}, missing {}, unexpected {}, duplicates {}, mismatched {}",
                v["distinct"], v["missing"], v["unexpected"], v["duplicates"], v["mismatched"]
            );
            eprintln!("SEMANTICS txn {producer} -> {reader} read_committed: {note}");
            ensure!(
                v["missing"] == 0
                    && v["unexpected"] == 0
                    && v["duplicates"] == 0
                    && v["mismatched"] == 0,
                "read_committed: {note} (examples {})",
                v["unexpected_examples"]
            );
            ensure!(
                indices(&v, "indices") == want,
                "read_committed indices differ from the committed ones"
            );
            Ok(note)
        });
        m.record(
            &format!("{producer} -> {reader}"),
            "read_committed = committed",
            result,
        );

        let v = try_run_client(
            reader,
            &words(&format!(
                "consume --bootstrap {b} --topic {topic} --count {TXN_RECORDS} --isolation read_uncommitted \
                 --list-indices --timeout 90"
            )),
        );
        let result = v.and_then(|v| {
            let got = indices(&v, "indices");
            let aborted_seen = got
                .iter()
                .filter(|i| want.binary_search(i).is_err())
                .count();
            let note = format!(
                "distinct {}, aborted records among them {aborted_seen}",
                got.len()
            );
            eprintln!("SEMANTICS txn {producer} -> {reader} read_uncommitted: {note}");
            ensure!(
                got.len() == TXN_RECORDS && aborted_seen == aborted && v["mismatched"] == 0,
                "read_uncommitted should see all {TXN_RECORDS} records ({aborted} aborted): {note}"
            );
            Ok(note)
        });
        m.record(
            &format!("{producer} -> {reader}"),
            "read_uncommitted sees aborted",
            result,
        );
    }
}

#[test]
fn transactions_read_committed_sees_exactly_committed() {
    let cluster = KafkaCluster::shared();
    let proxy = Proxy::start(cluster);
    let mut m = Matrix::new("transactions through the proxy");
    for producer in ["java", "confluent"] {
        transactions_cell(cluster, &proxy, producer, &mut m);
    }
    m.finish();
}

// ------------------------------------------------------------------------------------------
// Admin
// ------------------------------------------------------------------------------------------

fn admin(client: &str, b: &str, rest: &str) -> Result<Value, String> {
    try_run_client(client, &words(&format!("admin --bootstrap {b} {rest}")))
}

fn topic_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn admin_topics(client: &str, b: &str, node_ids: &[i32]) -> Result<String, String> {
    let topic = format!("admin-topic-{client}");
    let created = admin(
        client,
        b,
        &format!(
            "create --topic {topic} --partitions 4 --replication-factor 1 \
             --config retention.ms=3600000,cleanup.policy=compact,max.message.bytes=2000000"
        ),
    )?;
    ensure!(created["created"] == topic.as_str(), "create: {created}");
    let listed = topic_list(&admin(client, b, "list")?);
    ensure!(
        listed.contains(&topic),
        "list does not show {topic}: {listed:?}"
    );

    let d = admin(client, b, &format!("describe --topic {topic}"))?;
    let parts = d["partitions"].as_array().cloned().unwrap_or_default();
    ensure!(
        parts.len() == 4,
        "describe: {} partitions, expected 4: {d}",
        parts.len()
    );
    for (i, p) in parts.iter().enumerate() {
        let leader = p["leader"].as_i64().unwrap_or(-1) as i32;
        ensure!(p["partition"] == i, "describe: partition ids {d}");
        ensure!(
            node_ids.contains(&leader),
            "describe: leader {leader} is not a node the proxy shows ({node_ids:?}): {d}"
        );
        ensure!(
            p["replicas"] == serde_json::json!([leader]) && p["isr"] == serde_json::json!([leader]),
            "describe: replicas/isr {p}"
        );
    }

    let c = admin(client, b, &format!("describe-configs --topic {topic}"))?;
    for (k, v) in [
        ("retention.ms", "3600000"),
        ("cleanup.policy", "compact"),
        ("max.message.bytes", "2000000"),
        ("min.insync.replicas", "1"),
    ] {
        ensure!(c[k] == v, "describe-configs: {k} = {}, expected {v}", c[k]);
    }

    let deleted = admin(client, b, &format!("delete --topic {topic}"))?;
    ensure!(deleted["deleted"] == topic.as_str(), "delete: {deleted}");
    wait_until(
        "the deleted topic to leave the list",
        Duration::from_secs(30),
        || Ok(!topic_list(&admin(client, b, "list")?).contains(&topic)),
    )?;
    // Describing it now fails the way Kafka says a topic does not exist.
    let gone = admin(client, b, &format!("describe --topic {topic}"));
    ensure!(
        gone.as_ref().is_err_and(
            |e| e.contains("UnknownTopicOrPartition") || e.contains("UNKNOWN_TOPIC_OR_PART")
        ),
        "describe after delete should fail with UnknownTopicOrPartition: {gone:?}"
    );
    Ok(format!(
        "created 4 partitions (leaders {:?}), configs retention.ms/cleanup.policy/max.message.bytes read back, deleted",
        parts.iter().map(|p| p["leader"].as_i64().unwrap_or(-1)).collect::<Vec<_>>()
    ))
}

/// A member of `group` that runs until its stop file exists.
fn group_member(
    client: &str,
    b: &str,
    topic: &str,
    group: &str,
    protocol: &str,
    dir: &Path,
) -> (Daemon, PathBuf, PathBuf) {
    let events = dir.join(format!("{group}.events"));
    let stop = dir.join(format!("{group}.stop"));
    let args = format!(
        "consume --bootstrap {b} --topic {topic} --count 1000 --group {group} --group-protocol {protocol} \
         --commit sync --events {} --stop-file {} --timeout 120",
        events.display(),
        stop.display()
    );
    let mut cmd = client_command(client, &words(&args));
    cmd.env("PYTHONUNBUFFERED", "1");
    (Daemon::start(&format!("{group}-member"), cmd), events, stop)
}

fn admin_groups(cluster: &'static KafkaCluster, b: &str, node_ids: &[i32], m: &mut Matrix) {
    let topic = "admin-groups";
    cluster.create_topic(topic, 3);
    let p = run_client(
        "confluent",
        &words(&format!(
            "produce --bootstrap {b} --topic {topic} --count 1000"
        )),
    );
    check_produced(&p, 1000).unwrap();
    // An empty group with committed offsets: a consumer that read everything and left.
    let empty = "admin-group-empty";
    let c = run_client(
        "java",
        &words(&format!(
            "consume --bootstrap {b} --topic {topic} --count 1000 --group {empty}"
        )),
    );
    check_consumed(&c, 1000).unwrap();
    // Stable groups: a classic member (Java) and a KIP-848 member (confluent), running.
    let dir = tempfile::tempdir().unwrap();
    let classic = "admin-group-classic";
    let modern = "admin-group-consumer";
    let mut running = vec![
        group_member("java", b, topic, classic, "classic", dir.path()),
        group_member("confluent", b, topic, modern, "consumer", dir.path()),
    ];
    let assigned = wait_until(
        "both members to be assigned all 3 partitions",
        Duration::from_secs(90),
        || {
            let mut ok = true;
            for (d, events, _) in running.iter_mut() {
                if !d.is_running() {
                    return Err(format!("member exited:\n{}", d.log_tail(30)));
                }
                let text = fs::read_to_string(events.as_path()).unwrap_or_default();
                let n: usize = text.lines().filter(|l| l.starts_with("r ")).count();
                ok &= text.lines().any(|l| l == "assigned 0 1 2") && n >= 1000;
            }
            Ok(ok)
        },
    );
    if let Err(e) = assigned {
        m.record("group members", "start", Err(e));
        return;
    }
    let want = [
        (empty, "classic", "empty", 0usize),
        (classic, "classic", "stable", 1),
        (modern, "consumer", "stable", 1),
    ];
    for client in ["java", "confluent"] {
        let listed = admin(client, b, "list-groups").and_then(|l| {
            for (g, ty, state, _) in want {
                let e = &l[g];
                ensure!(
                    e["type"].as_str().map(str::to_lowercase).as_deref() == Some(ty)
                        && e["state"].as_str().map(str::to_lowercase).as_deref() == Some(state),
                    "list-groups: {g} is {e}, expected type {ty}, state {state}; all: {l}"
                );
            }
            Ok(format!(
                "{} groups listed, the three test groups with their type and state",
                l.as_object().map_or(0, |o| o.len())
            ))
        });
        m.record(client, "list-groups", listed);
        for (g, ty, state, members) in want {
            let described = admin(client, b, &format!("describe-group --group {g}")).and_then(|d| {
                ensure!(d["state"].as_str().map(str::to_lowercase).as_deref() == Some(state), "state: {d}");
                ensure!(d["type"].as_str().map(str::to_lowercase).as_deref() == Some(ty), "type: {d}");
                ensure!(d["members"] == members, "members: {d}");
                let coordinator = d["coordinator"].as_i64().unwrap_or(-1) as i32;
                ensure!(node_ids.contains(&coordinator), "coordinator {coordinator} is not a node the proxy shows: {d}");
                if members == 1 {
                    let parts = &d["member_list"][0]["partitions"];
                    let all: Vec<String> = (0..3).map(|p| format!("{topic}:{p}")).collect();
                    ensure!(parts == &serde_json::json!(all), "the member's assignment: {d}");
                }
                // Every group read all 1000 records and committed them.
                let offsets = d["offsets"].as_object().cloned().unwrap_or_default();
                let total: i64 = offsets.values().filter_map(Value::as_i64).sum();
                let ends: i64 = (0..3).map(|p| cluster.offsets(topic, p).1).sum();
                ensure!(offsets.len() == 3 && total == ends && ends == 1000, "committed offsets {offsets:?}, ends total {ends}: {d}");
                Ok(format!("{state}, {ty}, {members} member(s), coordinator {coordinator}, committed {total}"))
            });
            m.record(client, &format!("describe-group {g}"), described);
        }
    }
    for (_, _, stop) in &running {
        fs::write(stop, b"stop").unwrap();
    }
    for (d, _, _) in running.iter_mut() {
        d.wait_exit(Duration::from_secs(60));
    }
}

fn topic_command(b: &str, args: &str) -> ClientRun {
    let mut cmd = java_command(None);
    cmd.arg("org.apache.kafka.tools.TopicCommand")
        .args(["--bootstrap-server", b])
        .args(words(args));
    run_command(cmd, Duration::from_secs(120))
}

fn topic_command_cell(b: &str, node_ids: &[i32]) -> Result<String, String> {
    let topic = "admin-topic-command";
    let run = topic_command(b, &format!("--create --topic {topic} --partitions 3 --replication-factor 1 --config retention.ms=7200000"));
    ensure!(
        run.success() && run.stdout.contains(&format!("Created topic {topic}.")),
        "create:\n{}",
        run.describe()
    );
    let run = topic_command(b, &format!("--describe --topic {topic}"));
    ensure!(run.success(), "describe:\n{}", run.describe());
    let out = &run.stdout;
    ensure!(
        out.contains("PartitionCount: 3") && out.contains("ReplicationFactor: 1") && out.contains("retention.ms=7200000"),
        "describe: the summary line lacks the partition count, replication factor or config:\n{out}"
    );
    let mut leaders = Vec::new();
    for line in out.lines().filter(|l| l.contains("Partition: ")) {
        let field = |name: &str| -> Option<String> {
            line.split('\t')
                .map(str::trim)
                .find_map(|f| f.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let leader: i32 = field("Leader:").and_then(|l| l.parse().ok()).unwrap_or(-1);
        ensure!(
            node_ids.contains(&leader),
            "describe: leader {leader} is not a node the proxy shows: {line}"
        );
        ensure!(
            field("Replicas:") == Some(leader.to_string())
                && field("Isr:") == Some(leader.to_string()),
            "describe: {line}"
        );
        leaders.push(leader);
    }
    ensure!(
        leaders.len() == 3,
        "describe: {} partition lines, expected 3:\n{out}",
        leaders.len()
    );
    let run = topic_command(b, "--list");
    ensure!(
        run.success() && run.stdout.lines().any(|l| l.trim() == topic),
        "list:\n{}",
        run.describe()
    );
    let run = topic_command(b, &format!("--delete --topic {topic}"));
    ensure!(run.success(), "delete:\n{}", run.describe());
    wait_until(
        "the deleted topic to leave TopicCommand --list",
        Duration::from_secs(30),
        || {
            let run = topic_command(b, "--list");
            ensure!(run.success(), "list:\n{}", run.describe());
            Ok(!run.stdout.lines().any(|l| l.trim() == topic))
        },
    )?;
    Ok(format!(
        "created 3 partitions with retention.ms, described (leaders {leaders:?}), listed, deleted"
    ))
}

#[test]
fn admin_through_the_proxy() {
    let cluster = KafkaCluster::shared();
    let proxy = Proxy::start(cluster);
    let b = proxy.bootstrap();
    let node_ids = node_ids_through(&b);
    assert_eq!(node_ids, cluster.node_ids(), "node ids through the proxy");
    let mut m = Matrix::new("admin through the proxy");
    for client in ["java", "confluent"] {
        m.record(
            client,
            "topics: create/list/describe/configs/delete",
            admin_topics(client, &b, &node_ids),
        );
    }
    admin_groups(cluster, &b, &node_ids, &mut m);
    m.record(
        "kafka-tools TopicCommand",
        "create/describe/list/delete",
        topic_command_cell(&b, &node_ids),
    );
    m.finish();
}
