//! The `kafka-kinesis-proxy` command: wires configuration, logging and the proxy together.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use kafka_kinesis_proxy::ops::config::Config;
use kafka_kinesis_proxy::ops::logging::{self, LogFormat};
use kafka_kinesis_proxy::proxy::Proxy;

#[derive(Parser)]
#[command(version, about = "Kafka wire-protocol proxy that mirrors produced records into Amazon Kinesis")]
struct Cli {
    /// Log format; the level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value = "plain", env = "KKP_LOG_FORMAT")]
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                println!("{}: ok\n{c}", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let config = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let proxy = Proxy::new(config);
        tokio::select! {
            served = proxy.serve() => served?,
            _ = shutdown_signal() => tracing::info!("shutting down"),
        }
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
