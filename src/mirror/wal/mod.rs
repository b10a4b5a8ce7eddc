//! The write-ahead log of Produce exchanges (`mirror_buffer.durability = "wal"` or `"sync"`):
//! every exchange that names a routed topic is appended, as the connection received it, before
//! the client is answered, so that a killed process loses nothing Kafka acknowledged. Records
//! are marked in the same log as the writers finish with them; an exchange whose records are
//! all done is marked complete, and the oldest segments go once all theirs are. After a
//! restart the exchanges not complete are replayed into the stage, their settled records
//! skipped. While running, an exchange the stage had no room for is read back from where it
//! was written ([`Wal::read_back`], for `mirror::intake`'s catch-up).
//!
//! The log lives in `<spool.dir>/wal/`, segments `NNNNNNNNNNNNNNNNNNNN.log` of the frames of
//! `kinesis::segment_log` (see [`entry`] for the payloads). One thread owns the files
//! ([`appender`]); callers send the bytes they hold and await the write (`wal`) or the fsync
//! covering it (`sync`). Marks are written at once and never waited for: the page cache keeps
//! them through a kill -9; a power loss can cost the marks of the last fsync interval, which
//! replays (never loses) their records.

mod appender;
mod entry;
mod feed;
mod marks;
mod recovery;
#[cfg(test)]
mod restart_tests;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::config::{Durability, SpoolConfig};
use crate::kinesis::segment_log::{SegmentDir, SegmentLogError};
use crate::kinesis::spool::DEFAULT_SEGMENT_BYTES;
use crate::telemetry::wal_metrics::WalMetrics;
pub(crate) use appender::LogPosition;
use appender::{Appender, AppenderSettings, Command, FsyncWake};
use entry::{decode, Entry, MAX_PAYLOAD_BYTES};
pub(crate) use entry::{Logged, LoggedExchange};
pub(in crate::mirror) use feed::open_in_background;
pub(crate) use marks::ExchangeLog;
pub(crate) use recovery::{Replay, Replayed};

/// Test hook (see README): each fsync of the log first sleeps this many milliseconds.
const FSYNC_DELAY_ENV: &str = "KKP_TEST_WAL_FSYNC_DELAY_MS";
const SEGMENT_SUFFIX: &str = ".log";

#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log: {0}")]
    Log(Arc<SegmentLogError>),
    #[error("write-ahead log fsync: {0}")]
    Sync(Arc<std::io::Error>),
    #[error("write-ahead log segment {segment} holds no entry to replay at offset {offset}")]
    NotAnExchange { segment: u64, offset: u64 },
    #[error("the write-ahead log is closed")]
    Closed,
}

impl From<SegmentLogError> for WalError {
    fn from(e: SegmentLogError) -> WalError {
        WalError::Log(Arc::new(e))
    }
}

/// The log's directory under the spool's.
pub fn wal_dir(spool_dir: &std::path::Path) -> PathBuf {
    spool_dir.join(crate::config::WAL_DIR_NAME)
}

/// The handle exchanges are logged through.
pub(crate) struct Wal {
    commands: Sender<Command>,
    /// The log's files, to read deferred exchanges back from.
    files: SegmentDir,
    /// `sync`: appends complete after their fsync.
    durable: bool,
    next_id: AtomicU64,
    fsync_wake: FsyncWake,
}

impl Drop for Wal {
    fn drop(&mut self) {
        // The fsync thread's sender must not keep the appender alive once the log is let go.
        self.fsync_wake
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

impl Wal {
    /// Opens the log under `spool.dir`, recovering what an earlier run left, and starts its
    /// threads. `None` in `memory` mode or without a spool directory. Blocking file I/O.
    /// `spooled_bytes` tells what the spools hold, which counts against `spool.max_bytes` too.
    pub(crate) fn open(
        spool: &SpoolConfig,
        durability: Durability,
        metrics: WalMetrics,
        spooled_bytes: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Result<Option<(Wal, Replay)>, WalError> {
        let (Some(dir), false) = (&spool.dir, durability == Durability::Memory) else {
            return Ok(None);
        };
        let fsync_delay = std::env::var(FSYNC_DELAY_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(Duration::ZERO, Duration::from_millis);
        let settings = AppenderSettings {
            // Small limits get small segments, so that delivered ones free room in time.
            segment_bytes: DEFAULT_SEGMENT_BYTES.min((spool.max_bytes / 4).max(1)),
            max_bytes: spool.max_bytes,
            spooled_bytes,
            fsync_interval: spool.fsync_interval,
            fsync_bytes: spool.fsync_bytes,
            fsync_delay,
        };
        let (wal, replay) = Wal::start(&wal_dir(dir), settings, durability, metrics)?;
        Ok(Some((wal, replay)))
    }

    fn start(
        dir: &std::path::Path,
        settings: AppenderSettings,
        durability: Durability,
        metrics: WalMetrics,
    ) -> Result<(Wal, Replay), WalError> {
        let files = SegmentDir::create(dir, SEGMENT_SUFFIX)?;
        let lock = files.lock()?;
        let mut recovery = recovery::recover(&files)?;
        metrics
            .replay_remaining_bytes
            .set(recovery.replay.remaining_bytes() as i64);
        let (commands, received) = std::sync::mpsc::channel();
        recovery.replay.attach(commands.clone());
        let fsync_wake: FsyncWake = Arc::new(std::sync::Mutex::new(Some(commands.clone())));
        Appender::spawn(
            (files.clone(), lock),
            recovery.state,
            settings,
            metrics,
            (fsync_wake.clone(), received),
        )
        .map_err(|e| WalError::from(crate::kinesis::segment_log::io_err(dir)(e)))?;
        let wal = Wal {
            commands,
            files,
            durable: durability == Durability::Sync,
            next_id: AtomicU64::new(recovery.next_id),
            fsync_wake,
        };
        Ok((wal, recovery.replay))
    }

    /// Waits until every mark sent before is written and fsynced: at shutdown, so that the
    /// next run does not replay records this one delivered or spooled.
    pub(crate) async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.commands.send(Command::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }

    /// Logs an exchange and waits until it is written (`wal`) or fsynced (`sync`), and while
    /// the log is full. `None` when it could not be logged (the error is logged): the mirror
    /// then holds it in memory only, as in `memory` mode.
    pub(crate) async fn append(
        &self,
        client_id: &str,
        version: i16,
        request_body: &Bytes,
        response_frame: Option<&Bytes>,
    ) -> Option<Arc<ExchangeLog>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let exchange = LoggedExchange {
            id,
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            version,
            client_id: client_id.to_owned(),
            request_body: request_body.clone(),
            response_frame: response_frame.cloned(),
        };
        match self.log(Logged::Exchange(exchange)).await {
            Ok(position) => Some(ExchangeLog::new(
                (id, position),
                self.commands.clone(),
                HashSet::new(),
                None,
            )),
            Err(e) => {
                tracing::error!(error = %e, "cannot log a Produce exchange: the mirror holds it in memory only");
                None
            }
        }
    }

    /// Logs a transaction-control exchange, and waits as [`Wal::append`] does.
    pub(crate) async fn append_txn_control(&self, exchange: &crate::mirror::TxnControlExchange) {
        if let Err(e) = self.log(Logged::txn_control(exchange)).await {
            tracing::error!(error = %e, "cannot log a transaction-control exchange: after a crash, its transaction's held records are looked up in Kafka");
        }
    }

    /// Reads `logged`'s exchange back from where it was written, while the mirror holds it
    /// (so its segment is kept). Blocking file I/O.
    pub(crate) fn read_back(&self, logged: &ExchangeLog) -> Result<LoggedExchange, WalError> {
        let LogPosition {
            segment, offset, ..
        } = logged.position();
        match read_logged(&self.files, segment, offset)? {
            Logged::Exchange(exchange) if exchange.id == logged.id() => Ok(exchange),
            _ => Err(WalError::NotAnExchange { segment, offset }),
        }
    }

    async fn log(&self, logged: Logged) -> Result<LogPosition, WalError> {
        let (done, written) = oneshot::channel();
        let command = Command::Append {
            logged,
            durable: self.durable,
            done,
        };
        match self.commands.send(command) {
            Ok(()) => written.await.unwrap_or(Err(WalError::Closed)),
            Err(_) => Err(WalError::Closed),
        }
    }
}

/// The entry a Produce or transaction-control exchange was logged as at `offset` of `segment`.
/// Blocking file I/O.
fn read_logged(files: &SegmentDir, segment: u64, offset: u64) -> Result<Logged, WalError> {
    let payload = files.read_frame(segment, offset, MAX_PAYLOAD_BYTES)?;
    match decode(payload) {
        Ok(Entry::Logged(logged)) => Ok(logged),
        _ => Err(WalError::NotAnExchange { segment, offset }),
    }
}
