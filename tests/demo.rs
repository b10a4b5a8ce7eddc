//! `scripts/demo.sh` in its bounded mode, as CI runs it: the summary must show the ramp from
//! 10% to 50% happening live, with every sampled record delivered (success ratio 1.0).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{free_port, run_command};

#[test]
fn demo_ramps_from_10_to_50_percent_with_full_success() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Kafka's node id is 1: the proxy serves it on broker_port_base + 1, a free port.
    let broker_base = free_port() - 1;
    let mut demo = Command::new(repo.join("scripts/demo.sh"));
    demo.args(["--duration", "60"])
        .current_dir(repo)
        .env("KKP_PROXY_BIN", env!("CARGO_BIN_EXE_kafka-kinesis-proxy"))
        .env("KKP_DEMO_KAFKA_PORT", free_port().to_string())
        .env("KKP_DEMO_CONTROLLER_PORT", free_port().to_string())
        .env("KKP_DEMO_KINESIS_PORT", free_port().to_string())
        .env("KKP_DEMO_BOOTSTRAP_PORT", free_port().to_string())
        .env("KKP_DEMO_BROKER_PORT_BASE", broker_base.to_string())
        .env("KKP_DEMO_ADMIN_PORT", free_port().to_string())
        .env_remove("LD_LIBRARY_PATH");
    // A hung demo must fail the test, not the whole CI run.
    let out = run_command(demo, Duration::from_secs(600));
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    println!("{stdout}");
    assert!(
        !out.timed_out && out.status == Some(0),
        "demo failed:\n{stdout}\n{stderr}"
    );

    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("orders "))
        .collect();
    assert!(
        rows.len() >= 8,
        "expected a summary every few seconds:\n{stdout}"
    );
    assert!(
        rows.iter().any(|r| r.contains(" 10.0%")),
        "no summary at 10%:\n{stdout}"
    );
    let last = rows.last().unwrap();
    assert!(
        last.contains(" 50.0%"),
        "the last summary must be at 50%: {last}"
    );
    assert!(
        last.contains("1.0000"),
        "every sampled record delivered: {last}"
    );
    assert!(
        stdout.contains("config reloaded"),
        "the hot reload must be visible:\n{stdout}"
    );
    assert!(stdout.contains("shard spread orders-stream:"), "{stdout}");
}
