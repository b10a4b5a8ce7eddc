//! Debian's stock kcat 1.7.1 (librdkafka 2.0.2) against tansu 0.6.0,
//! directly and through the proxy.
//!
//! Directly it cannot even connect: librdkafka 2.0.2 sends ApiVersions v3
//! and fails to parse tansu's answer ("Read underflow"). The direct failure
//! is asserted so the gap stays documented; through the proxy records are
//! produced with `kcat -P` and read back with `kcat -C -e -o beginning`.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use support::*;

const COUNT: usize = 2000;
const KCAT_TIMEOUT: Duration = Duration::from_secs(120);
const DIRECT_FAILURE: &str = "ApiVersionRequest failed: Local: Read underflow";

fn kcat(args: &[&str]) -> ClientRun {
    let mut cmd = Command::new(kcat_bin());
    cmd.args(args);
    run_command(cmd, KCAT_TIMEOUT)
}

/// `(key, value)` pairs from records.py, the generator every client uses.
fn expected_records(topic: &str) -> Vec<(String, String)> {
    let mut cmd = Command::new(python());
    cmd.arg(clients_dir().join("records.py"))
        .args([topic, "0", &COUNT.to_string()]);
    let run = run_command(cmd, KCAT_TIMEOUT);
    assert!(run.success(), "{}", run.describe());
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2 * COUNT);
    lines
        .chunks(2)
        .map(|kv| {
            // kcat -K '=' splits at the first '='; keep it out of the data.
            assert!(!kv[0].contains('=') && !kv[1].contains('='));
            (kv[0].to_string(), kv[1].to_string())
        })
        .collect()
}

/// Produce with `kcat -P`, consume with `kcat -C -e -o beginning`, compare.
fn kcat_round_trip(bootstrap: &str, topic: &str, codec: &str) -> Result<String, String> {
    create_topic(bootstrap, topic, 3);
    let records = expected_records(topic);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    let mut text = String::new();
    for (k, v) in &records {
        text.push_str(&format!("{k}={v}\n"));
    }
    std::fs::write(&input, text).unwrap();
    let input = input.to_str().unwrap();

    let p = kcat(&[
        "-P",
        "-b",
        bootstrap,
        "-t",
        topic,
        "-K",
        "=",
        "-z",
        codec,
        "-X",
        "message.timeout.ms=30000",
        "-l",
        input,
    ]);
    if !p.success() {
        return Err(format!("kcat -P failed:\n{}", p.describe()));
    }
    let c = kcat(&[
        "-C",
        "-b",
        bootstrap,
        "-t",
        topic,
        "-e",
        "-o",
        "beginning",
        "-q",
        "-f",
        "%k=%s\n",
    ]);
    if !c.success() {
        return Err(format!("kcat -C failed:\n{}", c.describe()));
    }
    let want: HashMap<&str, &str> = records
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut seen = HashMap::new();
    let mut mismatched = Vec::new();
    for line in c.stdout.lines() {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        match want.get(k) {
            Some(w) if *w == v => *seen.entry(k.to_string()).or_insert(0) += 1,
            _ => mismatched.push(format!("{:.80}", line)),
        }
    }
    if seen.len() == COUNT && mismatched.is_empty() {
        Ok(format!("{} records round-tripped", seen.len()))
    } else {
        Err(format!(
            "kcat -C read {} lines: {} distinct good of {COUNT}, {} bad (first: {:?})\n{}",
            c.stdout.lines().count(),
            seen.len(),
            mismatched.len(),
            mismatched.iter().take(3).collect::<Vec<_>>(),
            c.describe()
        ))
    }
}

/// The kcat under test links Debian's librdkafka 2.0.2.
fn assert_stock_kcat() {
    let v = kcat(&["-V"]);
    assert!(
        v.stdout.contains("librdkafka 2.0.2") || v.stderr.contains("librdkafka 2.0.2"),
        "expected Debian's kcat with librdkafka 2.0.2:\n{}",
        v.describe()
    );
}

#[test]
fn kcat_direct_to_tansu_fails_apiversions() {
    assert_stock_kcat();
    let tansu = Tansu::start();
    let b = tansu.bootstrap();
    create_topic(&b, "kcat-direct", 1);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("one.txt");
    std::fs::write(&input, "k=v\n").unwrap();
    let input = input.to_str().unwrap();
    let p = kcat(&["-P", "-b", &b, "-t", "kcat-direct", "-K", "=", "-l", input]);
    assert!(
        !p.success(),
        "kcat -P unexpectedly worked against tansu:\n{}",
        p.describe()
    );
    assert!(p.stderr.contains(DIRECT_FAILURE), "{}", p.describe());
    let c = kcat(&["-C", "-b", &b, "-t", "kcat-direct", "-e", "-o", "beginning"]);
    assert!(
        !c.success(),
        "kcat -C unexpectedly worked against tansu:\n{}",
        c.describe()
    );
    assert!(c.stderr.contains(DIRECT_FAILURE), "{}", c.describe());
    assert!(
        c.stderr.contains(
            "Failed to query metadata for topic kcat-direct: Local: Broker transport failure"
        ),
        "{}",
        c.describe()
    );
}

#[test]
fn kcat_through_proxy() {
    assert_stock_kcat();
    let tansu = Tansu::start();
    let proxy = Proxy::start(&tansu);
    let b = proxy.bootstrap();
    let mut m = Matrix::new(&format!("kcat via proxy {b}"));
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        m.record(
            "kcat",
            codec,
            kcat_round_trip(&b, &format!("kcat-{codec}"), codec),
        );
    }
    m.finish();
}
