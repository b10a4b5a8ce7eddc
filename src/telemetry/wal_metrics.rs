//! Metrics of the write-ahead log of Produce exchanges (`mirror_buffer.durability`).

use prometheus::{exponential_buckets, Histogram, HistogramOpts, IntGauge, Registry};

/// The write-ahead log's metrics, registered with the proxy's other metrics.
#[derive(Clone)]
pub struct WalMetrics {
    /// How long each fsync of the log took.
    pub fsync_duration: Histogram,
    /// Age of the oldest exchange whose records are not all done (0 when none waits).
    pub oldest_undelivered_age_seconds: IntGauge,
    /// Bytes of the log still to read into the mirror: the replay after a restart, and the
    /// exchanges deferred while the mirror is behind (0 once none is left).
    pub replay_remaining_bytes: IntGauge,
    /// Bytes of all the log's segments on disk.
    pub bytes: IntGauge,
}

impl WalMetrics {
    pub(crate) fn register(registry: &Registry, name: impl Fn(&str) -> String) -> WalMetrics {
        let gauge = |short: &str, help: &str| {
            let g = IntGauge::new(name(short), help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let fsync_duration = Histogram::with_opts(
            HistogramOpts::new(
                name("wal_fsync_duration_seconds"),
                "Time each fsync of the write-ahead log took.",
            )
            .buckets(exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")),
        )
        .expect("valid metric");
        registry
            .register(Box::new(fsync_duration.clone()))
            .expect("unique metric");
        WalMetrics {
            fsync_duration,
            oldest_undelivered_age_seconds: gauge(
                "wal_oldest_undelivered_age_seconds",
                "Age of the oldest Produce exchange in the write-ahead log with records not yet delivered.",
            ),
            replay_remaining_bytes: gauge(
                "wal_replay_remaining_bytes",
                "Bytes of the write-ahead log still to read into the mirror: the replay after a restart, and exchanges deferred while the mirror is behind.",
            ),
            bytes: gauge("wal_bytes", "Bytes of the write-ahead log on disk."),
        }
    }
}
