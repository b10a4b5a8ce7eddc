//! `[admin]` and `[spool]`: the admin HTTP endpoint, and where records Kinesis cannot take yet
//! are kept on disk.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::listener::ListenerConfig;
use super::{invalid, positive, Invalid};

/// Unrouted topics that get their own metric label by default.
pub const DEFAULT_MAX_TOPIC_LABELS: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub bind: std::net::SocketAddr,
    /// Unrouted topics that get their own `topic` label in metrics; the rest share `(other)`.
    pub max_topic_labels: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SpoolConfig {
    /// Spool segments and the dead-letter file live here; required once routes exist.
    pub dir: Option<PathBuf>,
    /// The whole disk use of the write-ahead log and the spool together.
    pub max_bytes: u64,
    pub dead_letters: DeadLetterLimits,
    /// Group commit of the write-ahead log: an fsync at most this often (`fsync_interval_ms`)…
    pub fsync_interval: std::time::Duration,
    /// …or once this many bytes were written since the last one (`fsync_bytes`).
    pub fsync_bytes: u64,
}

pub const DEFAULT_FSYNC_INTERVAL_MS: u64 = 10;
pub const DEFAULT_FSYNC_BYTES: u64 = 1024 * 1024;

/// How much disk the dead-letter file may take: it rotates once it holds `max_bytes`, and
/// keeps up to `rotated_files` rotated files. None is ever deleted by the proxy (only `spool
/// replay` consumes them): when all are full, writers block instead of dropping letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterLimits {
    pub max_bytes: u64,
    pub rotated_files: u32,
}

pub const DEFAULT_DEAD_LETTER_MAX_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_DEAD_LETTER_ROTATED_FILES: u32 = 8;
/// More rotated files than this is a typo, not a plan: each is listed on every rotation.
const MAX_DEAD_LETTER_ROTATED_FILES: u64 = 1000;

impl Default for DeadLetterLimits {
    fn default() -> Self {
        DeadLetterLimits {
            max_bytes: DEFAULT_DEAD_LETTER_MAX_BYTES,
            rotated_files: DEFAULT_DEAD_LETTER_ROTATED_FILES,
        }
    }
}

/// The write-ahead log's directory under `spool.dir`, beside the streams' spools.
pub const WAL_DIR_NAME: &str = "wal";

impl SpoolConfig {
    /// The JSON-lines file of records that can never be delivered.
    pub fn dead_letter_file(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join("dead-letters.jsonl"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    bind: Option<Spanned<String>>,
    max_topic_labels: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpool {
    dir: Option<Spanned<String>>,
    max_bytes: Option<Spanned<u64>>,
    dead_letter_max_bytes: Option<Spanned<u64>>,
    dead_letter_rotated_files: Option<Spanned<u64>>,
    fsync_interval_ms: Option<Spanned<u64>>,
    fsync_bytes: Option<Spanned<u64>>,
}

pub(super) fn validate_admin(
    raw: Option<RawAdmin>,
    listener: &ListenerConfig,
) -> Result<AdminConfig, Invalid> {
    let (bind, max_topic_labels) = raw.map_or((None, None), |a| (a.bind, a.max_topic_labels));
    let max_topic_labels = match max_topic_labels {
        None => DEFAULT_MAX_TOPIC_LABELS,
        Some(v) => usize::try_from(*v.get_ref()).unwrap_or(usize::MAX),
    };
    let Some(bind) = bind else {
        return Ok(AdminConfig {
            bind: ([127, 0, 0, 1], 9464).into(),
            max_topic_labels,
        });
    };
    let addr = bind
        .get_ref()
        .parse::<std::net::SocketAddr>()
        .or_else(|_| {
            invalid(
                bind.span(),
                format!("admin.bind: `{}` is not IP:PORT", bind.get_ref()),
            )
        })?;
    if addr.port() == listener.bootstrap_port
        || listener
            .broker_ports
            .explicit
            .values()
            .any(|p| *p == addr.port())
    {
        return invalid(
            bind.span(),
            format!(
                "admin.bind: port {} collides with a Kafka listener port",
                addr.port()
            ),
        );
    }
    Ok(AdminConfig {
        bind: addr,
        max_topic_labels,
    })
}

pub(super) fn validate_spool(
    raw: Option<Spanned<RawSpool>>,
    has_routes: bool,
) -> Result<SpoolConfig, Invalid> {
    let span = raw.as_ref().map(|r| r.span());
    let raw = raw.map(Spanned::into_inner);
    let dead_letters = validate_dead_letter_limits(raw.as_ref())?;
    let fsync_interval = std::time::Duration::from_millis(positive(
        raw.as_ref().and_then(|r| r.fsync_interval_ms.as_ref()),
        DEFAULT_FSYNC_INTERVAL_MS,
        "spool.fsync_interval_ms",
    )?);
    let fsync_bytes = positive(
        raw.as_ref().and_then(|r| r.fsync_bytes.as_ref()),
        DEFAULT_FSYNC_BYTES,
        "spool.fsync_bytes",
    )?;
    let (dir, max_bytes) = raw.map_or((None, None), |r| (r.dir, r.max_bytes));
    let dir = match dir {
        Some(d) if d.get_ref().trim().is_empty() => return invalid(d.span(), "spool.dir: must not be empty"),
        Some(d) => Some(PathBuf::from(d.into_inner())),
        None if has_routes => {
            return Err((
                span,
                "spool.dir: required when [[mirror]] routes exist, so records Kinesis cannot take have a durable place (add [spool] dir = \"/var/lib/kafka-kinesis-proxy\")".to_owned(),
            ))
        }
        None => None,
    };
    let max_bytes = positive(
        max_bytes.as_ref(),
        10 * 1024 * 1024 * 1024,
        "spool.max_bytes",
    )?;
    Ok(SpoolConfig {
        dir,
        max_bytes,
        dead_letters,
        fsync_interval,
        fsync_bytes,
    })
}

fn validate_dead_letter_limits(raw: Option<&RawSpool>) -> Result<DeadLetterLimits, Invalid> {
    let max_bytes = positive(
        raw.and_then(|r| r.dead_letter_max_bytes.as_ref()),
        DEFAULT_DEAD_LETTER_MAX_BYTES,
        "spool.dead_letter_max_bytes",
    )?;
    let rotated_files = match raw.and_then(|r| r.dead_letter_rotated_files.as_ref()) {
        None => DEFAULT_DEAD_LETTER_ROTATED_FILES,
        Some(v) if *v.get_ref() > MAX_DEAD_LETTER_ROTATED_FILES => {
            return invalid(
                v.span(),
                format!("spool.dead_letter_rotated_files: at most {MAX_DEAD_LETTER_ROTATED_FILES}"),
            )
        }
        Some(v) => *v.get_ref() as u32,
    };
    Ok(DeadLetterLimits {
        max_bytes,
        rotated_files,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::{parse, BASE};

    #[test]
    fn dead_letter_limits_default_and_are_validated_by_key() {
        let config = parse(&format!("{BASE}[spool]\ndir = \"/tmp/s\"\n")).expect("valid");
        assert_eq!(
            config.spool.dead_letters,
            super::DeadLetterLimits::default()
        );
        let config = parse(&format!(
            "{BASE}[spool]\ndead_letter_max_bytes = 1000\ndead_letter_rotated_files = 0\n"
        ))
        .expect("valid");
        assert_eq!(config.spool.dead_letters.max_bytes, 1000);
        assert_eq!(config.spool.dead_letters.rotated_files, 0);
        let zero = parse(&format!("{BASE}[spool]\ndead_letter_max_bytes = 0\n")).unwrap_err();
        assert!(
            zero.contains("spool.dead_letter_max_bytes: must be greater than 0"),
            "{zero}"
        );
        let many = parse(&format!(
            "{BASE}[spool]\ndead_letter_rotated_files = 5000\n"
        ))
        .unwrap_err();
        assert!(
            many.contains("spool.dead_letter_rotated_files: at most 1000"),
            "{many}"
        );
    }
}
