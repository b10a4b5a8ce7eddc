//! What each `mirror_buffer.durability` mode costs: the three mirroring paths compared with
//! "memory" (no write-ahead log) round by round, and the latency "sync" adds (its answers wait
//! for the fsync covering their exchange).

use serde_json::{json, Value};

use super::{fmt_stats, stats, stats_json, Measurement, PathUnderTest, Stats};

/// (path id, `mirror_buffer.durability` to set, or None for the default, label). "memory", the
/// baseline of the comparison, comes first.
pub(crate) const PATHS: [(&str, Option<&str>, &str); 3] = [
    (
        "kkp-mirror-memory",
        Some("memory"),
        "kafka-kinesis-proxy, 100% mirrored (mock Kinesis), durability memory",
    ),
    (
        "kkp-mirror",
        None,
        "kafka-kinesis-proxy, 100% mirrored (mock Kinesis), durability wal (the default)",
    ),
    (
        "kkp-mirror-sync",
        Some("sync"),
        "kafka-kinesis-proxy, 100% mirrored (mock Kinesis), durability sync",
    ),
];

/// The Markdown tables and their JSON; empty when "memory" was not measured.
pub(crate) fn compare(paths: &[PathUnderTest], results: &[Vec<Measurement>]) -> (String, Value) {
    let measured = |id: &str| {
        paths
            .iter()
            .zip(results)
            .find(|(p, ms)| p.id == id && !ms.is_empty())
            .map(|(_, ms)| ms.as_slice())
    };
    let Some(memory) = measured(PATHS[0].0) else {
        return (String::new(), Value::Null);
    };
    let mut md = String::from(
        "\n### Durability modes, as ratios to `memory`\n\n\
         Per-round ratio to the `memory` path of the same round, median (min–max): peak \
         throughput, p99 latency at the fixed rate, and the proxy's CPU seconds per MB (which \
         includes writing the log and delivering every record).\n\n\
         | mode | path | throughput vs memory | p99 vs memory | CPU s/MB vs memory |\n\
         |---|---|---|---|---|\n",
    );
    let mut modes = Vec::new();
    for (id, mode, _) in PATHS {
        let Some(ms) = measured(id) else { continue };
        let throughput = ratios(ms, memory, |m| Some(m.msgs_per_sec));
        let p99 = ratios(ms, memory, |m| Some(m.p99_ms));
        let cpu = ratios(ms, memory, |m| m.proxy_cpu_s_per_mb);
        let mode = mode.unwrap_or("wal");
        md.push_str(&format!(
            "| {mode} | {id} | {} | {} | {} |\n",
            fmt_stats(throughput, 2),
            fmt_stats(p99, 2),
            fmt_stats(cpu, 2)
        ));
        modes.push(json!({
            "mode": mode,
            "path": id,
            "throughput_vs_memory": stats_json(throughput),
            "p99_vs_memory": stats_json(p99),
            "cpu_s_per_mb_vs_memory": stats_json(cpu),
        }));
    }
    let mut added = Vec::new();
    if let Some(sync) = measured(PATHS[2].0) {
        md.push_str("\nLatency `sync` adds, in ms (per-round difference, median (min–max)):\n\n| over | p50 | p99 |\n|---|---|---|\n");
        for (base_id, base_mode) in [(PATHS[0].0, "memory"), (PATHS[1].0, "wal")] {
            let Some(base) = measured(base_id) else {
                continue;
            };
            let p50 = differences(sync, base, |m| m.p50_ms);
            let p99 = differences(sync, base, |m| m.p99_ms);
            md.push_str(&format!(
                "| {base_mode} | {} | {} |\n",
                fmt_stats(p50, 2),
                fmt_stats(p99, 2)
            ));
            added.push(json!({
                "over": base_mode,
                "p50_ms": stats_json(p50),
                "p99_ms": stats_json(p99),
            }));
        }
    }
    (md, json!({"modes": modes, "sync_added_latency": added}))
}

fn ratios(
    ms: &[Measurement],
    base: &[Measurement],
    f: impl Fn(&Measurement) -> Option<f64>,
) -> Stats {
    let per_round: Vec<f64> = ms
        .iter()
        .zip(base)
        .filter_map(|(m, b)| Some(f(m)? / f(b)?))
        .collect();
    stats(&per_round)
}

fn differences(ms: &[Measurement], base: &[Measurement], f: impl Fn(&Measurement) -> f64) -> Stats {
    let per_round: Vec<f64> = ms.iter().zip(base).map(|(m, b)| f(m) - f(b)).collect();
    stats(&per_round)
}
