//! The `kafka-kinesis-proxy` command: wires configuration, logging, metrics, the mirror and the
//! proxy together.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use kafka_kinesis_proxy::admin::backlog::BacklogSettings;
use kafka_kinesis_proxy::admin::http::{self, AdminState};
use kafka_kinesis_proxy::admin::reload::Reloader;
use kafka_kinesis_proxy::admin::{shard_for, status};
use kafka_kinesis_proxy::config::Config;
use kafka_kinesis_proxy::kinesis::budget::Budget;
use kafka_kinesis_proxy::kinesis::client::Clients;
use kafka_kinesis_proxy::kinesis::dead_letter::DeadLetterFile;
use kafka_kinesis_proxy::kinesis::replay::replay_dead_letters;
use kafka_kinesis_proxy::kinesis::writer::WriterSettings;
use kafka_kinesis_proxy::mirror::Mirror;
use kafka_kinesis_proxy::proxy::{check_tls_files, Proxy};
use kafka_kinesis_proxy::telemetry::inventory::Inventory;
use kafka_kinesis_proxy::telemetry::logging::{self, LogFormat};
use kafka_kinesis_proxy::telemetry::metrics::Metrics;
use kafka_kinesis_proxy::verify;

#[derive(Parser)]
#[command(
    version,
    about = "Kafka wire-protocol proxy that mirrors produced records into Amazon Kinesis"
)]
struct Cli {
    /// Log format; the level comes from RUST_LOG (default: info).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "plain",
        env = "KKP_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy daemon.
    Run {
        /// Path to the TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config and print a summary; exits non-zero with FILE:LINE: message on error.
    CheckConfig {
        /// Path to the TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Show a running proxy's routes, rates, success ratio and shard spread.
    Status {
        /// The proxy's admin endpoint (admin.bind).
        #[arg(long, default_value = "127.0.0.1:9464")]
        admin: String,
        /// Seconds between refreshes (and between the two samples rates are computed from).
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Print one view and exit, for scripts.
        #[arg(long)]
        once: bool,
    },
    /// Work with the spool and the dead-letter file.
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
    /// Print the open shard the mirror would send a Kafka record with KEY to now, and the
    /// decimal hash key it routes by (the key transformed as the mirror does: hex, `md5:`,
    /// the route's partition_key).
    ShardFor {
        /// Path to the TOML config (for the routes, and the Kinesis region, endpoint and
        /// credentials).
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        options: shard_for::Options,
    },
    /// Check that TOPIC's stream holds exactly the records the mirror should have put there.
    /// Exits 0 when it does, 1 on any discrepancy, 2 on error.
    Verify {
        /// Path to the TOML config ([kafka], [kinesis] and the topic's [[mirror]] route).
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        options: verify::Options,
    },
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Re-send dead letters after fixing their cause; those still failing go back to the file.
    Replay {
        /// Path to the TOML config (for the Kinesis region, endpoint and credentials, and the
        /// default dead-letter file).
        #[arg(long)]
        config: PathBuf,
        /// Dead-letter file to replay (default: dead-letters.jsonl in spool.dir).
        #[arg(long)]
        dead_letters: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let outcome = match cli.command {
        Command::Verify { config, options } => {
            return run_verify(&config, &options);
        }
        Command::Status {
            admin,
            interval,
            once,
        } => {
            let interval = std::time::Duration::from_secs_f64(interval.max(0.1));
            runtime()
                .and_then(|rt| Ok(rt.block_on(status::run(&admin, interval, once))?))
                .map(|()| ExitCode::SUCCESS)
        }
        Command::CheckConfig { config: path } => with_config(&path, |config| {
            // The files behind the TLS keys change without the config changing, so they are
            // checked here as the proxy would load them.
            let certificates = check_tls_files(
                config.listener.tls.as_ref(),
                config.kafka.as_ref().and_then(|k| k.tls.as_ref()),
            )?;
            println!("{}: ok\n{config}", path.display());
            for (key, summary) in certificates {
                println!("{key}: {summary}");
            }
            Ok(())
        }),
        Command::Run { config: path } => {
            with_config(&path, |config| runtime()?.block_on(run(config, &path)))
        }
        Command::Spool {
            command:
                SpoolCommand::Replay {
                    config: path,
                    dead_letters,
                },
        } => with_config(&path, |config| {
            runtime()?.block_on(replay(config, dead_letters))
        }),
        Command::ShardFor {
            config: path,
            options,
        } => with_config(&path, |config| {
            let placement = runtime()?.block_on(shard_for::run(&config, &options))?;
            println!("{} {}", placement.shard_id, placement.hash);
            Ok(())
        }),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the config and runs `command` with it. An invalid config exits with status 2 and
/// `FILE:LINE: message`.
fn with_config(
    path: &Path,
    command: impl FnOnce(Config) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    match Config::load(path) {
        Ok(config) => command(config).map(|()| ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::from(2))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn run(config: Config, path: &Path) -> anyhow::Result<()> {
    tracing::info!(config = %path.display(), routes = config.mirror.len(), "starting");
    kafka_kinesis_proxy::proxy::raise_open_files_limit(config.listener.max_connections);
    let metrics = Arc::new(Metrics::with_topic_labels(config.admin.max_topic_labels));
    let inventory = Arc::new(Inventory::default());
    let dead_letters = match config.spool.dead_letter_file() {
        Some(path) => Some(Arc::new(
            DeadLetterFile::open(&path)
                .with_context(|| format!("dead-letter file {}", path.display()))?
                .with_limits(config.spool.dead_letters),
        )),
        None => None,
    };
    let settings = WriterSettings {
        kinesis: config.kinesis.clone(),
        buffer: config.mirror_buffer.clone(),
        spool: config.spool.clone(),
        budget: Arc::new(Budget::new(
            config.mirror_buffer.max_bytes,
            metrics.mirror_buffer_bytes.clone(),
        )),
        dead_letters,
    };
    let backlog = BacklogSettings {
        durability: config.mirror_buffer.durability,
        max_bytes: config.spool.max_bytes,
    };
    let mirror = Mirror::start(&config.mirror, settings, metrics.clone(), inventory.clone()).await;

    let admin_bind = config.admin.bind;
    tokio::spawn(Reloader::new(path, config.clone(), mirror.clone(), metrics.clone()).run());
    let grace = config.shutdown_grace;
    let brokers_file = kafka_kinesis_proxy::proxy::brokers_file_location(&config, path);
    let has_kafka = config.kafka.is_some();
    let proxy = Proxy::new(
        config,
        mirror.clone(),
        metrics.clone(),
        inventory.clone(),
        brokers_file,
    )?;
    // Held transactions whose EndTxn the proxy never sees are decided by Kafka's markers.
    // kinesis-only partitions' first offsets after a live switch follow Kafka's.
    // Standalone, no transaction reaches the mirror and no Kafka gave out offsets: there is
    // nothing to read.
    if has_kafka {
        mirror.read_markers_with(kafka_kinesis_proxy::proxy::transaction_markers(&proxy));
        mirror.read_log_ends_with(kafka_kinesis_proxy::proxy::log_end_offsets(&proxy));
    }
    let admin = http::bind(
        admin_bind,
        AdminState {
            metrics: metrics.clone(),
            mirror: mirror.clone(),
            inventory,
            proxy: proxy.clone(),
            backlog,
        },
    )
    .await?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            metrics.dual_write.tick();
        }
    });
    tokio::select! {
        served = proxy.serve() => served?,
        served = admin => served.context("admin endpoint")?,
        _ = shutdown_signal() => {}
    }
    let deadline = std::time::Instant::now() + grace;
    tracing::info!(grace_secs = grace.as_secs(), "shutting down: finishing in-flight Kafka requests, then flushing the mirror; a second signal exits at once");
    tokio::spawn(async {
        shutdown_signal().await;
        // Everything already spooled is on disk (each append is fsynced).
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    proxy.shut_down(deadline).await;
    mirror.shut_down(deadline).await;
    tracing::info!("stopped");
    Ok(())
}

async fn replay(config: Config, dead_letters: Option<PathBuf>) -> anyhow::Result<()> {
    let path = dead_letters
        .or_else(|| config.spool.dead_letter_file())
        .context("no dead-letter file: pass --dead-letters FILE or set spool.dir")?;
    let clients = Clients::new(config.kinesis.clone());
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} dead letters ({elapsed})")
            .expect("valid template"),
    );
    let summary = replay_dead_letters(&clients, &path, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .await?;
    bar.finish_and_clear();
    println!(
        "{}: {} dead letters, {} delivered, {} still failing{}",
        path.display(),
        summary.total,
        summary.delivered,
        summary.failed,
        if summary.failed > 0 {
            " (appended back to the file)"
        } else {
            ""
        }
    );
    anyhow::ensure!(
        summary.failed == 0,
        "{} dead letters could not be delivered",
        summary.failed
    );
    Ok(())
}

/// `verify` exits 2 on any error, config errors included, so that 1 means discrepancies only.
fn run_verify(path: &Path, options: &verify::Options) -> ExitCode {
    let report = Config::load(path)
        // Its message already names the file, the line and the cause.
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|config| {
            let verified = runtime()?.block_on(verify::run(&config, options));
            verified.with_context(|| format!("verify `{}`", options.topic))
        });
    match report {
        Ok(report) => report.exit_code(),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
