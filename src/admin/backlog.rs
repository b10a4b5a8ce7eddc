//! The mirror's backlog, as `/routes` shows it and `status` sums it up: how much waits for
//! Kinesis and where (memory, the write-ahead log, the spools), how old the oldest undelivered
//! exchange is, how close the disk limit is, and which durability is actually in force.

use indicatif::HumanBytes;
use prometheus::IntGauge;
use serde::{Deserialize, Serialize};

use crate::config::Durability;
use crate::mirror::Mirror;
use crate::telemetry::metrics::Metrics;

/// What the config asked of the mirror's backlog. Both keys need a restart to change, so they
/// are taken once, at startup.
#[derive(Debug, Clone, Copy)]
pub struct BacklogSettings {
    /// `mirror_buffer.durability`.
    pub durability: Durability,
    /// `spool.max_bytes`: the disk limit of the log and the spools together.
    pub max_bytes: u64,
}

/// The `backlog` object of `/routes`. The byte counts and the age are the gauges `/metrics`
/// shows, read at the same moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backlog {
    /// The durability configured: `wal`, `sync` or `memory`.
    pub durability: String,
    /// Whether exchanges are written ahead to the log: false in `memory` mode, and when the
    /// configured log could not be opened.
    pub log_open: bool,
    /// `wal_bytes`.
    pub log_bytes: u64,
    /// `spool_bytes`, over every stream.
    pub spool_bytes: u64,
    /// `spool.max_bytes`, which bounds `log_bytes + spool_bytes`.
    pub max_bytes: u64,
    /// `wal_oldest_undelivered_age_seconds`.
    pub oldest_undelivered_age_seconds: u64,
    /// `wal_replay_remaining_bytes`.
    pub replay_remaining_bytes: u64,
    /// `mirror_buffer_bytes`: records decoded and queued in memory.
    pub memory_bytes: u64,
}

fn gauge(gauge: &IntGauge) -> u64 {
    u64::try_from(gauge.get()).unwrap_or(0)
}

impl Backlog {
    pub(crate) fn read(settings: BacklogSettings, mirror: &Mirror, metrics: &Metrics) -> Backlog {
        Backlog {
            durability: settings.durability.name().to_owned(),
            log_open: mirror.write_ahead_log_open(),
            log_bytes: gauge(&metrics.wal.bytes),
            spool_bytes: metrics.spool_bytes_total(),
            max_bytes: settings.max_bytes,
            oldest_undelivered_age_seconds: gauge(&metrics.wal.oldest_undelivered_age_seconds),
            replay_remaining_bytes: gauge(&metrics.wal.replay_remaining_bytes),
            memory_bytes: gauge(&metrics.mirror_buffer_bytes),
        }
    }

    /// What counts against `spool.max_bytes`.
    fn disk_bytes(&self) -> u64 {
        self.log_bytes + self.spool_bytes
    }

    fn log_missing(&self) -> bool {
        !self.log_open && self.durability != Durability::Memory.name()
    }

    /// One line: e.g. `backlog: wal, in memory 1.50 MiB, log 12.30 MiB + spools 4.00 MiB of
    /// 1.00 GiB (1.6%), oldest undelivered 42 s, replaying 0 B`.
    pub(crate) fn summary(&self) -> String {
        let share = self.disk_bytes() as f64 / self.max_bytes.max(1) as f64 * 100.0;
        let limit = format!("of {} ({share:.1}%)", HumanBytes(self.max_bytes));
        let memory = HumanBytes(self.memory_bytes);
        let spools = HumanBytes(self.spool_bytes);
        if self.log_open {
            format!(
                "backlog: {}, in memory {memory}, log {} + spools {spools} {limit}, oldest undelivered {} s, replaying {}",
                self.durability,
                HumanBytes(self.log_bytes),
                self.oldest_undelivered_age_seconds,
                HumanBytes(self.replay_remaining_bytes),
            )
        } else {
            let log = if self.log_missing() {
                " (log NOT open)"
            } else {
                ""
            };
            format!(
                "backlog: {}{log}, in memory {memory}, spools {spools} {limit}",
                self.durability
            )
        }
    }

    /// What an operator must act on: a configured log that is not open, a full disk.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.log_missing() {
            problems.push(format!(
                "durability {} configured but the write-ahead log is not open: a crash loses what waits in memory; see the proxy's log",
                self.durability
            ));
        }
        if self.disk_bytes() >= self.max_bytes {
            let used = format!(
                "{} of spool.max_bytes {}",
                HumanBytes(self.disk_bytes()),
                HumanBytes(self.max_bytes)
            );
            problems.push(if self.log_open {
                format!("disk limit reached ({used}): Produce responses for routed topics are held until Kinesis takes the backlog")
            } else {
                format!("disk limit reached ({used}): the spools take no more records until Kinesis takes the backlog")
            });
        }
        problems
    }
}
