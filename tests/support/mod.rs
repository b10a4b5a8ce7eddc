//! Shared harness for the integration tests: locating the test tools
//! installed by `scripts/install-test-deps.sh`, running a real Apache Kafka
//! cluster (`kafka.rs`) and the proxy in front of it, and driving the client
//! programs in `tests/clients/`.
//!
//! Nothing here skips silently: a missing tool panics with a message that
//! says how to install it.
#![allow(dead_code)]

pub mod answer_gate;
pub mod faults;
pub mod kafka;
pub mod kinesis;
pub mod metrics;
pub mod raw_produce;
pub mod tls_files;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub use kafka::{KafkaCluster, Listener};

const INSTALL_HINT: &str = "run `scripts/install-test-deps.sh` first";

/// `$KKP_TOOLS_DIR`, else `$HOME/.cache/kafka-kinesis-proxy`.
pub fn tools_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KKP_TOOLS_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set (or set KKP_TOOLS_DIR)");
    PathBuf::from(home).join(".cache/kafka-kinesis-proxy")
}

fn require(path: PathBuf, what: &str) -> PathBuf {
    if !path.exists() {
        panic!("{what} not found at {}: {INSTALL_HINT}", path.display());
    }
    path
}

/// The venv python that has confluent-kafka, kafka-python and aiokafka.
pub fn python() -> PathBuf {
    require(tools_dir().join("venv/bin/python"), "test venv python")
}

/// `node_modules` with kafkajs and its codecs (used as NODE_PATH).
pub fn node_modules() -> PathBuf {
    require(
        tools_dir().join("node/node_modules/kafkajs"),
        "kafkajs (npm test packages)",
    );
    tools_dir().join("node/node_modules")
}

/// `kcat` on PATH (Debian package).
pub fn kcat_bin() -> PathBuf {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .map(|d| d.join("kcat"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("kcat not found on PATH: {INSTALL_HINT}"))
}

/// `tests/clients/` in this checkout.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A currently free loopback port, never the same one twice in this process
/// (tests run in parallel threads and bind their ports a little later).
pub fn free_port() -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = guard.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if handed.insert(port) {
            return port;
        }
    }
}

fn accepts(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// The last `lines` lines of a log file.
pub fn tail_file(path: &Path, lines: usize) -> String {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("<cannot open {}: {e}>", path.display()),
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = strip_ansi(&String::from_utf8_lossy(&buf));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `s` without ANSI colour sequences (some tools colour their logs even in a file).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-byte
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A child process with its output in a log file; killed on Drop. If the
/// thread is panicking (a failed test) the tail of the log is printed.
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
    /// Holds the log (and any config file) until the daemon is gone.
    dir: TempDir,
}

impl Daemon {
    fn spawn(name: &str, dir: TempDir, mut cmd: Command) -> Daemon {
        let log = dir.path().join(format!("{name}.log"));
        let out = File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        Daemon {
            name: name.to_string(),
            child,
            log,
            dir,
        }
    }

    /// Runs `cmd` in the background with its stdout and stderr in one log file, which a test
    /// can poll (`log_since`, `log_tail`).
    pub fn start(name: &str, mut cmd: Command) -> Daemon {
        cmd.env_remove("LD_LIBRARY_PATH");
        let dir = tempfile::Builder::new()
            .prefix(&format!("kkp-{name}-"))
            .tempdir()
            .expect("tempdir");
        Daemon::spawn(name, dir, cmd)
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The process id, for signals and /proc readings.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "-KILL", "-TERM") to the process.
    pub fn signal(&self, signal: &str) {
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
    }

    /// Waits for the process to exit and returns its exit code (None if killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `cmd` in place of the (exited or killed) process, logging to the same file.
    pub fn respawn(&mut self, mut cmd: Command) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let out = File::options()
            .append(true)
            .open(&self.log)
            .expect("open log file");
        let err = out.try_clone().expect("clone log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        self.child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("respawn {}: {e}", self.name));
    }

    /// Wait until `port` accepts TCP connections; panics (with the log) if
    /// the process exits or `timeout` passes first.
    pub fn wait_for_port(&mut self, port: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before accepting on port {port}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail_file(&self.log, 60)
                );
            }
            if accepts(port) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not accept on port {port} within {timeout:?}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail_file(&self.log, 60)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&self.log, lines)
    }

    /// Waits until the log holds `needle`: a line logged after the event a test saw (a closed
    /// socket, say) may not be written yet. Panics with the log's tail after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(needle) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not log {needle:?} within {timeout:?}; its log:\n{}",
                    self.name,
                    tail_file(&self.log, 200)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Is the process still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "----- last lines of {} log ({}) -----\n{}\n----- end of {} log -----",
                self.name,
                self.log.display(),
                tail_file(&self.log, 60),
                self.name
            );
        }
    }
}

/// The proxy binary of this crate, configured to forward to an upstream
/// cluster; listens on a free bootstrap port and serves each upstream broker on a port of its
/// own (`broker_port`).
pub struct Proxy {
    pub bootstrap_port: u16,
    pub admin_port: u16,
    pub config_path: PathBuf,
    /// The proxy port of each upstream node id.
    pub broker_ports: Vec<(i32, u16)>,
    daemon: Daemon,
}

impl Proxy {
    /// Proxy in front of `cluster` (its PLAINTEXT listeners).
    pub fn start(cluster: &KafkaCluster) -> Proxy {
        Proxy::start_with(cluster, "")
    }

    /// Proxy in front of `cluster` with `extra_toml` appended to the config.
    pub fn start_with(cluster: &KafkaCluster, extra_toml: &str) -> Proxy {
        Proxy::start_upstream(
            &cluster.addresses(Listener::Plaintext),
            &cluster.node_ids(),
            extra_toml,
        )
    }

    /// As [`Proxy::start_with`], with `env` added to the proxy's environment (not kept across
    /// `restart`).
    pub fn start_with_env(cluster: &KafkaCluster, extra_toml: &str, env: &[(&str, &str)]) -> Proxy {
        Proxy::spawn(
            &cluster.addresses(Listener::Plaintext),
            &cluster.node_ids(),
            "",
            extra_toml,
            None,
            env,
        )
    }

    /// Proxy in front of the brokers `node_ids` reached through `upstream` (which may be a
    /// fault-injecting layer) with `extra_toml` appended to the config.
    pub fn start_upstream(upstream: &[String], node_ids: &[i32], extra_toml: &str) -> Proxy {
        Proxy::start_upstream_with_listener(upstream, node_ids, "", extra_toml)
    }

    /// As [`Proxy::start_upstream`], with `listener_keys` added to the `[listener]` table.
    pub fn start_upstream_with_listener(
        upstream: &[String],
        node_ids: &[i32],
        listener_keys: &str,
        extra_toml: &str,
    ) -> Proxy {
        Proxy::spawn(upstream, node_ids, listener_keys, extra_toml, None, &[])
    }

    /// A proxy in front of `cluster`'s PLAINTEXT listeners, started through `sh -c` with
    /// `shell_prefix` run first (for example `ulimit -Sn 1024`). Not kept across `restart`.
    pub fn start_after_shell(cluster: &KafkaCluster, shell_prefix: &str) -> Proxy {
        Proxy::spawn(
            &cluster.addresses(Listener::Plaintext),
            &cluster.node_ids(),
            "",
            "",
            Some(shell_prefix),
            &[],
        )
    }

    /// A standalone proxy (no `[kafka]`: no `upstream`, no broker ports) with `extra_toml`,
    /// which must hold its kinesis-only routes.
    pub fn start_standalone(extra_toml: &str) -> Proxy {
        Proxy::spawn(&[], &[], "", extra_toml, None, &[])
    }

    /// `upstream` empty: standalone, without a `[kafka]` table.
    fn spawn(
        upstream: &[String],
        node_ids: &[i32],
        listener_keys: &str,
        extra_toml: &str,
        shell_prefix: Option<&str>,
        env: &[(&str, &str)],
    ) -> Proxy {
        let bootstrap_port = free_port();
        let admin_port = free_port();
        let broker_ports: Vec<(i32, u16)> = node_ids.iter().map(|id| (*id, free_port())).collect();
        let dir = tempfile::Builder::new()
            .prefix("kkp-proxy-")
            .tempdir()
            .expect("tempdir");
        let servers = upstream
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let port_map = broker_ports
            .iter()
            .map(|(id, port)| format!("{id} = {port}"))
            .collect::<Vec<_>>()
            .join(", ");
        // Top-level keys (before any [table] line) must come first in TOML.
        let split = extra_toml
            .lines()
            .position(|l| l.trim_start().starts_with('['))
            .unwrap_or(extra_toml.lines().count());
        let top: String = extra_toml
            .lines()
            .take(split)
            .map(|l| format!("{l}\n"))
            .collect();
        let extra_toml: String = extra_toml
            .lines()
            .skip(split)
            .map(|l| format!("{l}\n"))
            .collect();
        let extra_toml = extra_toml.as_str();
        let kafka_table = if upstream.is_empty() {
            String::new()
        } else {
            format!("[kafka]\nbootstrap_servers = [{servers}]\n")
        };
        let mut config = top
            + &format!(
                "[listener]\n\
             bind = \"127.0.0.1\"\n\
             advertised_host = \"127.0.0.1\"\n\
             bootstrap_port = {bootstrap_port}\n\
             broker_ports = {{ {port_map} }}\n\
             {listener_keys}\n\
             {kafka_table}\
             \n\
             [admin]\n\
             bind = \"127.0.0.1:{admin_port}\"\n"
            );
        if !extra_toml.is_empty() {
            config.push('\n');
            config.push_str(extra_toml);
            config.push('\n');
        }
        if !extra_toml.contains("[spool]") {
            // Each proxy gets its own spool (and dead-letter file) in its temp dir.
            config.push_str(&format!(
                "\n[spool]\ndir = {:?}\n",
                dir.path().join("spool")
            ));
        }
        let config_path = dir.path().join("proxy.toml");
        fs::write(&config_path, &config).expect("write proxy config");
        let mut cmd = proxy_command(dir.path(), &config_path);
        cmd.envs(env.iter().copied());
        if let Some(prefix) = shell_prefix {
            cmd = after_shell(&cmd, prefix);
        }
        let mut daemon = Daemon::spawn("proxy", dir, cmd);
        daemon.wait_for_port(bootstrap_port, Duration::from_secs(30));
        Proxy {
            bootstrap_port,
            admin_port,
            config_path,
            broker_ports,
            daemon,
        }
    }

    /// The proxy port that serves upstream node `node_id`.
    pub fn broker_port(&self, node_id: i32) -> u16 {
        self.broker_ports
            .iter()
            .find(|(id, _)| *id == node_id)
            .map(|(_, port)| *port)
            .unwrap_or_else(|| panic!("no proxy port for node {node_id}"))
    }

    /// Starts the proxy again with the same config, spool and dead-letter file, as after a
    /// crash or a restart by the operator.
    pub fn restart(&mut self) {
        let cmd = proxy_command(self.daemon.dir(), &self.config_path);
        self.daemon.respawn(cmd);
        self.daemon
            .wait_for_port(self.bootstrap_port, Duration::from_secs(30));
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// `127.0.0.1:PORT` of the proxy's bootstrap listener.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.bootstrap_port)
    }

    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

/// `kafka-kinesis-proxy shard-for --config CONFIG ARGS` against kinesis-local: the shard it
/// names and the decimal hash key.
pub fn shard_for(config: &Path, args: &[&str]) -> (String, u128) {
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-kinesis-proxy"))
        .args(["shard-for", "--config"])
        .arg(config)
        .args(args)
        .envs(kinesis::KinesisLocal::aws_env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shard-for {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let (shard, hash) = line.trim().split_once(' ').expect("SHARD HASH");
    (shard.to_owned(), hash.parse().expect("a decimal hash key"))
}

/// `cmd` run by `sh -c` after `prefix`, with the same arguments, environment and directory.
fn after_shell(cmd: &Command, prefix: &str) -> Command {
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(format!("{prefix} && exec \"$0\" \"$@\""))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => shell.env(key, value),
            None => shell.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        shell.current_dir(dir);
    }
    shell
}

fn proxy_command(dir: &Path, config_path: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kafka-kinesis-proxy"));
    cmd.current_dir(dir)
        .arg("run")
        .arg("--config")
        .arg(config_path);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    // Credentials for a local Kinesis emulator; never real AWS.
    cmd.envs(kinesis::KinesisLocal::aws_env());
    cmd.env_remove("LD_LIBRARY_PATH");
    cmd
}

/// Output of a finished client process.
#[derive(Debug)]
pub struct ClientRun {
    pub command: String,
    pub status: Option<i32>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl ClientRun {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status == Some(0)
    }

    /// The JSON value on the last non-empty stdout line.
    pub fn json(&self) -> Result<Value, String> {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .ok_or_else(|| "no output".to_string())?;
        serde_json::from_str(line).map_err(|e| format!("unparseable output {line:?}: {e}"))
    }

    /// A readable account of the run, for assertion messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "command: {}\nexit: {}{}",
            self.command,
            self.status
                .map(|c| c.to_string())
                .unwrap_or_else(|| "signal".into()),
            if self.timed_out { " (timed out)" } else { "" }
        );
        let _ = writeln!(s, "--- stdout ---\n{}", last_chars(&self.stdout, 4000));
        let _ = writeln!(s, "--- stderr ---\n{}", last_chars(&self.stderr, 8000));
        s
    }
}

fn last_chars(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut i = s.len() - n;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// Longest a single client command may run before it is killed.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// The installed Apache Kafka release: `libs/` (broker, kafka-tools, kafka-clients) and
/// `config/log4j2.yaml`.
pub fn kafka_home() -> PathBuf {
    require(tools_dir().join("kafka/libs"), "Apache Kafka jars");
    tools_dir().join("kafka")
}

/// `java` with a heap and JIT settings for short client runs on 2 cores, and the Kafka jars
/// (plus `extra_classpath`) on the class path.
pub fn java_command(extra_classpath: Option<&Path>) -> Command {
    let mut classpath = kafka_home().join("libs/*").into_os_string();
    if let Some(extra) = extra_classpath {
        classpath.push(":");
        classpath.push(extra);
    }
    let mut cmd = Command::new("java");
    cmd.args([
        "-Xms64m",
        "-Xmx512m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
    ])
    .arg("-Djava.awt.headless=true")
    .arg(format!(
        "-Dlog4j2.configurationFile={}",
        kafka_home().join("config/log4j2.yaml").display()
    ))
    .arg("-cp")
    .arg(classpath);
    cmd
}

/// The command for `client`, one CLI over every client family (see
/// `tests/clients/kafka_client.py` for the arguments and the JSON it prints):
/// - "kafkajs": `tests/clients/kafkajs_client.js` under node;
/// - "java": `tests/clients/java/KkpClient.java` (kafka-clients), compiled by the install script;
/// - "franz-go", "sarama": the Go programs under `tests/clients/go`, built by the install script;
/// - any other name (confluent, kafka-python, aiokafka) is passed as `--client` to
///   `tests/clients/kafka_client.py`.
pub fn client_command(client: &str, args: &[&str]) -> Command {
    let dir = clients_dir();
    let mut cmd;
    match client {
        "kafkajs" => {
            cmd = Command::new("node");
            cmd.arg(dir.join("kafkajs_client.js"))
                .env("NODE_PATH", node_modules());
        }
        "java" => {
            let classes = require(
                tools_dir().join("java-client/classes"),
                "the Java test client",
            );
            cmd = java_command(Some(&classes));
            cmd.arg("KkpClient");
        }
        "franz-go" | "sarama" => {
            let bin = tools_dir().join(format!("go-clients/bin/{client}-client"));
            cmd = Command::new(require(bin, "the Go test clients"));
        }
        _ => {
            cmd = Command::new(python());
            cmd.arg(dir.join("kafka_client.py"))
                .args(["--client", client]);
        }
    }
    cmd.args(args).env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// Run any command with a time limit, capturing stdout and stderr.
///
/// LD_LIBRARY_PATH is dropped: `cargo test` points it at native libraries
/// built by dev-dependencies (rdkafka-sys puts a newer librdkafka.so.1 in
/// target/), which would silently replace the system librdkafka under kcat.
pub fn run_command(mut cmd: Command, timeout: Duration) -> ClientRun {
    cmd.env_remove("LD_LIBRARY_PATH");
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"));
    let command = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command}: {e}"));
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for client") {
            break st;
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for killed client");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    ClientRun {
        command,
        status: status.code(),
        timed_out,
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

/// Run a client script; `Err` carries a description of what went wrong
/// (non-zero exit, timeout or unparseable output) with its stdout/stderr.
pub fn try_run_client(client: &str, args: &[&str]) -> Result<Value, String> {
    try_run_client_full(client, args).map(|(v, _)| v)
}

/// Like `try_run_client`, also returning the run (for its stderr).
pub fn try_run_client_full(client: &str, args: &[&str]) -> Result<(Value, ClientRun), String> {
    let run = run_command(client_command(client, args), CLIENT_TIMEOUT);
    if !run.success() {
        return Err(run.describe());
    }
    match run.json() {
        Ok(v) => Ok((v, run)),
        Err(e) => Err(format!("{e}\n{}", run.describe())),
    }
}

/// The distinct error lines of a client's stderr (first `max`), to explain
/// a failed cell without pages of repeated log lines.
pub fn error_lines(stderr: &str, max: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for line in stderr.lines() {
        let l = line.trim();
        if !(l.contains("ERROR") || l.contains("Error") || l.contains("%3|") || l.contains("%4|")) {
            continue;
        }
        // Drop python logging's timestamp so repeats collapse.
        let key = l
            .split_once(" ERROR ")
            .map(|(_, r)| r)
            .unwrap_or(l)
            .to_string();
        if seen.insert(key.clone()) {
            out.push(key);
            if out.len() == max {
                break;
            }
        }
    }
    out
}

/// Run a client script and return its JSON output; fails the test (showing
/// stdout/stderr) on non-zero exit or unparseable output.
pub fn run_client(client: &str, args: &[&str]) -> Value {
    try_run_client(client, args).unwrap_or_else(|e| panic!("client {client} failed:\n{e}"))
}

/// Create `topic` with `partitions` partitions (confluent-kafka AdminClient).
pub fn create_topic(bootstrap: &str, topic: &str, partitions: u32) {
    let p = partitions.to_string();
    run_client(
        "confluent",
        &[
            "admin",
            "--bootstrap",
            bootstrap,
            "create",
            "--topic",
            topic,
            "--partitions",
            &p,
        ],
    );
}

/// Topic names known to the cluster behind `bootstrap`.
pub fn list_topics(bootstrap: &str) -> Vec<String> {
    let v = run_client("confluent", &["admin", "--bootstrap", bootstrap, "list"]);
    v.as_array()
        .unwrap_or_else(|| panic!("topic list is not an array: {v}"))
        .iter()
        .map(|t| t.as_str().expect("topic name").to_string())
        .collect()
}

/// Split a command line on whitespace: `run_client("confluent",
/// &words(&format!("produce --bootstrap {b} --topic t --count 10")))`.
pub fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// Integer field of a client's JSON output (panics if absent).
pub fn num(v: &Value, field: &str) -> i64 {
    v.get(field)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("no integer {field:?} in {v}"))
}

/// A client × case result table printed at the end of a test, so one run
/// shows every cell even when several fail.
#[derive(Default)]
pub struct Matrix {
    title: String,
    rows: Vec<(String, String, bool, String)>,
}

impl Matrix {
    pub fn new(title: &str) -> Matrix {
        Matrix {
            title: title.to_string(),
            rows: Vec::new(),
        }
    }

    /// Record one cell: `Ok(note)` passes, `Err(why)` fails.
    pub fn record(&mut self, row: &str, col: &str, result: Result<String, String>) {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        eprintln!(
            "[{}] {row} / {col}: {} {}",
            self.title,
            if ok { "PASS" } else { "FAIL" },
            first_line(&detail)
        );
        self.rows.push((row.into(), col.into(), ok, detail));
    }

    pub fn render(&self) -> String {
        let mut s = format!("\n== {} ==\n", self.title);
        let w = self
            .rows
            .iter()
            .map(|r| r.0.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let cw = self
            .rows
            .iter()
            .map(|r| r.1.len())
            .max()
            .unwrap_or(0)
            .max(5);
        for (row, col, ok, detail) in &self.rows {
            let _ = writeln!(
                s,
                "{row:<w$}  {col:<cw$}  {}  {}",
                if *ok { "PASS" } else { "FAIL" },
                first_line(detail)
            );
        }
        s
    }

    /// Print the table and panic with the failing cells if there are any.
    pub fn finish(self) {
        let table = self.render();
        eprintln!("{table}");
        let failures: Vec<String> = self
            .rows
            .iter()
            .filter(|r| !r.2)
            .map(|(row, col, _, d)| format!("--- {row} / {col} ---\n{d}"))
            .collect();
        if !failures.is_empty() {
            panic!(
                "{} of {} cells of {:?} failed (table above)\n{}",
                failures.len(),
                self.rows.len(),
                self.title,
                failures.join("\n")
            );
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Check a produce result: every record acknowledged, no errors.
pub fn check_produced(v: &Value, count: i64) -> Result<(), String> {
    if num(v, "produced") == count && num(v, "error_count") == 0 {
        Ok(())
    } else {
        Err(format!(
            "produce: expected {count} produced and no errors, got {v}"
        ))
    }
}

/// Check a consume result: every record seen once or more, all byte-equal.
pub fn check_consumed(v: &Value, count: i64) -> Result<(), String> {
    if num(v, "distinct") == count && num(v, "missing") == 0 && num(v, "mismatched") == 0 {
        Ok(())
    } else {
        Err(format!(
            "consume: expected {count} distinct, 0 missing, 0 mismatched, got {v}"
        ))
    }
}

/// Polls `state` until `done` holds for it and returns it; fails the test with the last state
/// after `limit`.
pub async fn wait_until_async<T: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut state: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let now = state().await;
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; last seen: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
