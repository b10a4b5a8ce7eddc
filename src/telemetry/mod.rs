//! Telemetry, the floor beside configuration: metrics, logs, the dual-write ratio and the
//! producer inventory. Every stage may record into it; it imports nothing above it.

pub mod dual_write;
pub mod inventory;
pub mod logging;
pub mod metrics;
pub mod topic_labels;
pub mod wal_metrics;
