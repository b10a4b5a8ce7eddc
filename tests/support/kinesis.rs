//! kinesis-local (kinesis-mock, the engine LocalStack runs) on loopback, and the reads a test
//! needs to check what the proxy delivered.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::types::{ShardIteratorType, StreamStatus};
use aws_sdk_kinesis::Client;

use super::{free_port, tools_dir};

pub struct KinesisLocal {
    child: Child,
    pub endpoint: String,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// A record as read back from a shard.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub shard_id: String,
    pub partition_key: String,
    pub data: Vec<u8>,
}

impl KinesisLocal {
    /// Proxy config that mirrors `topic` into `stream` of this emulator at `percent`, batching
    /// with a short linger so that tests do not wait on the default.
    pub fn mirror_config(&self, topic: &str, stream: &str, percent: f64) -> String {
        format!(
            "[kinesis]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nlinger_ms = 20\n\n\
             [[mirror]]\ntopic = \"{topic}\"\nstream = \"{stream}\"\npercent = {percent:.1}\n",
            self.endpoint
        )
    }

    pub fn start() -> KinesisLocal {
        KinesisLocal::start_on(free_port())
    }

    /// Starts on `port`, for a test that stops the emulator and brings it back at the same address.
    pub fn start_on(port: u16) -> KinesisLocal {
        let package = tools_dir().join("node/node_modules/kinesis-local");
        assert!(
            package.join("main.js").exists(),
            "kinesis-local is not installed at {}: run scripts/install-test-deps.sh",
            package.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("kinesis-local.log");
        let preload = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/loopback.js");
        let child = Command::new("node")
            .arg("-r")
            .arg(&preload)
            .arg(package.join("main.js"))
            .env("KINESIS_MOCK_CERT_PATH", package.join("server.json"))
            .env("KINESIS_MOCK_PLAIN_PORT", port.to_string())
            .env("KINESIS_MOCK_TLS_PORT", free_port().to_string())
            .env("CREATE_STREAM_DURATION", "1ms")
            .env("UPDATE_SHARD_COUNT_DURATION", "1ms")
            .env("LOG_LEVEL", "WARN")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("start node for kinesis-local");
        let me = KinesisLocal {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            log,
            _dir: dir,
        };
        me.wait_healthy(port);
        me
    }

    fn wait_healthy(&self, port: u16) {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(
                    b"GET /healthcheck HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                );
                let mut reply = String::new();
                let _ = s.read_to_string(&mut reply);
                if reply.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "kinesis-local did not become healthy; log:\n{}",
            self.log_tail()
        );
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Environment for processes (the proxy) that talk to this emulator.
    pub fn aws_env() -> [(&'static str, &'static str); 4] {
        [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
    }

    pub fn client(&self) -> Client {
        client_at(&self.endpoint)
    }

    pub async fn create_stream(&self, name: &str, shards: i32) {
        create_stream_at(&self.client(), name, shards).await;
    }

    pub async fn wait_active(&self, name: &str) {
        wait_active_at(&self.client(), name).await;
    }

    /// Every record of every shard (open and closed), from TRIM_HORIZON.
    pub async fn read_all(&self, stream: &str) -> Vec<StoredRecord> {
        self.read_all_with(&self.client(), stream).await
    }

    /// [`KinesisLocal::read_all`] through `client` (of another region, say).
    pub async fn read_all_with(&self, client: &Client, stream: &str) -> Vec<StoredRecord> {
        let shards = client
            .list_shards()
            .stream_name(stream)
            .send()
            .await
            .unwrap();
        let mut out = Vec::new();
        for shard in shards.shards() {
            let mut iterator = client
                .get_shard_iterator()
                .stream_name(stream)
                .shard_id(shard.shard_id())
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .unwrap()
                .shard_iterator()
                .map(str::to_owned);
            while let Some(it) = iterator {
                let page = client
                    .get_records()
                    .shard_iterator(it)
                    .limit(10_000)
                    .send()
                    .await
                    .unwrap();
                for r in page.records() {
                    out.push(StoredRecord {
                        shard_id: shard.shard_id().to_owned(),
                        partition_key: r.partition_key().unwrap_or_default().to_owned(),
                        data: r.data().as_ref().to_vec(),
                    });
                }
                let caught_up =
                    page.records().is_empty() && page.millis_behind_latest().unwrap_or(0) == 0;
                iterator = if caught_up {
                    None
                } else {
                    page.next_shard_iterator().map(str::to_owned)
                };
            }
        }
        out
    }
}

impl Drop for KinesisLocal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- kinesis-local log tail ---\n{}", self.log_tail());
        }
    }
}

/// A client of the Kinesis emulator at `endpoint` (kinesis-local, or kinesalite in benches).
pub fn client_at(endpoint: &str) -> Client {
    client_in(endpoint, "us-east-1")
}

/// A client of the emulator at `endpoint` in `region` (kinesis-local keeps each region's
/// streams apart).
pub fn client_in(endpoint: &str, region: &str) -> Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(endpoint)
        .build();
    Client::from_conf(config)
}

/// Creates stream `name` with `shards` shards and waits until it is ACTIVE.
pub async fn create_stream_at(client: &Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    wait_active_at(client, name).await;
}

pub async fn wait_active_at(client: &Client, name: &str) {
    for _ in 0..300 {
        let out = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .unwrap();
        if out.stream_description_summary().map(|s| s.stream_status())
            == Some(&StreamStatus::Active)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stream {name} did not become ACTIVE");
}
