//! The `kafka-kinesis-proxy` command: wires configuration, logging, metrics, the mirror and the
//! proxy together.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use kafka_kinesis_proxy::kinesis::client::{build_client, load_shard_map};
use kafka_kinesis_proxy::kinesis::shard_map::hash_key;
use kafka_kinesis_proxy::mirror::Mirror;
use kafka_kinesis_proxy::ops::admin;
use kafka_kinesis_proxy::ops::config::Config;
use kafka_kinesis_proxy::ops::logging::{self, LogFormat};
use kafka_kinesis_proxy::ops::metrics::Metrics;
use kafka_kinesis_proxy::proxy::Proxy;

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
    /// Print the open shard that KEY maps to now, and KEY's decimal hash key.
    ShardFor {
        /// Path to the TOML config (for the Kinesis region, endpoint and credentials).
        #[arg(long)]
        config: PathBuf,
        /// Stream name.
        #[arg(long)]
        stream: String,
        /// Partition key.
        #[arg(long)]
        key: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let config_path = match &cli.command {
        Command::Run { config }
        | Command::CheckConfig { config }
        | Command::ShardFor { config, .. } => config.clone(),
    };
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let outcome = match cli.command {
        Command::CheckConfig { .. } => {
            println!("{}: ok\n{config}", config_path.display());
            Ok(())
        }
        Command::Run { .. } => runtime().and_then(|rt| rt.block_on(run(config, &config_path))),
        Command::ShardFor { stream, key, .. } => {
            runtime().and_then(|rt| rt.block_on(shard_for(config, &stream, &key)))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
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
    let metrics = Arc::new(Metrics::new());
    let admin = admin::bind(config.admin.bind, metrics.clone()).await?;
    let client = match config.mirror.is_empty() {
        true => None,
        false => Some(build_client(&config.kinesis).await),
    };
    let mirror = Mirror::start(&config.mirror, client, &config.kinesis, metrics.clone());
    let proxy = Proxy::new(config, mirror, metrics);
    tokio::select! {
        served = proxy.serve() => served?,
        served = admin => served.context("admin endpoint")?,
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}

async fn shard_for(config: Config, stream: &str, key: &str) -> anyhow::Result<()> {
    let client = build_client(&config.kinesis).await;
    let map = load_shard_map(&client, stream).await?;
    let hash = hash_key(key);
    let shard = map.shard_for_hash(hash).with_context(|| {
        format!(
            "no open shard of `{stream}` covers hash key {hash} (the stream is resharding; retry)"
        )
    })?;
    println!("{} {hash}", shard.id);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
