//! Hot reload: on SIGHUP, and when the config file changes (a debounced watch on its
//! directory, because editors replace files by renaming).
//!
//! A new config is validated whole. If it is invalid, the error is logged as
//! `FILE:LINE: message` and the old config stays in force. If it is valid, the mirror routes
//! apply to the next Produce request, and every other section that changed is reported as
//! needing a restart; it is not applied, not even in part.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::mirror::Mirror;
use crate::telemetry::metrics::Metrics;

/// Quiet time after the last file event before reloading: editors write in several steps.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// The hash that identifies a config's text in `kafka_kinesis_proxy_config_info`.
pub fn config_hash(text: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

pub struct Reloader {
    path: PathBuf,
    running: Config,
    applied_hash: String,
    mirror: Mirror,
    metrics: Arc<Metrics>,
}

impl Reloader {
    pub fn new(path: &Path, running: Config, mirror: Mirror, metrics: Arc<Metrics>) -> Reloader {
        let applied_hash = std::fs::read_to_string(path)
            .map(|t| config_hash(&t))
            .unwrap_or_default();
        metrics
            .config_info
            .with_label_values(&[&applied_hash])
            .set(1);
        Reloader {
            path: path.to_owned(),
            running,
            applied_hash,
            mirror,
            metrics,
        }
    }

    /// Reloads on SIGHUP and on file changes until the process ends.
    pub async fn run(mut self) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _watcher = match self.watch(tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot watch the config file; reload with SIGHUP");
                None
            }
        };
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot handle SIGHUP");
                return;
            }
        };
        loop {
            tokio::select! {
                Some(()) = rx.recv() => {
                    // Debounce: wait until the file has been quiet for a moment.
                    while tokio::time::timeout(DEBOUNCE, rx.recv()).await.is_ok_and(|e| e.is_some()) {}
                    self.reload(false).await;
                }
                Some(()) = hangup.recv() => self.reload(true).await,
            }
        }
    }

    fn watch(&self, tx: mpsc::UnboundedSender<()>) -> notify::Result<notify::RecommendedWatcher> {
        let file_name = self.path.file_name().map(|n| n.to_owned());
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    let ours = event
                        .paths
                        .iter()
                        .any(|p| p.file_name() == file_name.as_deref());
                    if ours && !event.kind.is_access() {
                        let _ = tx.send(());
                    }
                }
            })?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    }

    /// Reloads the file; `forced` (SIGHUP) reloads even when the text is unchanged.
    pub async fn reload(&mut self, forced: bool) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                // Mid-rename the file can be briefly missing; the next event retries.
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read config for reload; keeping the config in force");
                return;
            }
        };
        let hash = config_hash(&text);
        if hash == self.applied_hash && !forced {
            return;
        }
        let new = match Config::parse(&self.path, &text) {
            Ok(c) => c,
            Err(e) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(error = %e, "config reload rejected; the previous config stays in force");
                return;
            }
        };
        let restart = self.running.restart_required(&new);
        for section in &restart {
            tracing::warn!(
                section,
                "config section changed: needs restart; not applied"
            );
        }
        self.metrics
            .config_restart_required
            .set(i64::from(!restart.is_empty()));
        self.mirror.apply_routes(&new.mirror).await;
        for r in &new.mirror {
            tracing::info!(topic = %r.topic, stream = %r.target, percent = r.percent, partition_key = ?r.partition_key, mode = %r.mode, "route in force");
        }
        self.running.mirror = new.mirror;
        let _ = self
            .metrics
            .config_info
            .remove_label_values(&[&self.applied_hash]);
        self.metrics.config_info.with_label_values(&[&hash]).set(1);
        self.applied_hash = hash;
        self.metrics.config_reloads.with_label_values(&["ok"]).inc();
        tracing::info!(path = %self.path.display(), hash = %self.applied_hash, "config reloaded");
    }
}
