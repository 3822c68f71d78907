//! The `fieldgate` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fieldgate::config::{self, ConfigError};
use tracing_subscriber::EnvFilter;

mod cli;

const DEFAULT_CONFIG: &str = "/etc/fieldgate/fieldgate.yaml";

/// IoT edge gateway: reads Modbus, serial, BLE and simulated devices, keeps
/// every reading in a local store-and-forward queue, and publishes it to an
/// MQTT broker, through outages and restarts.
#[derive(Parser)]
#[command(name = "fieldgate", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway until SIGINT or SIGTERM.
    Run {
        /// Configuration file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check a configuration file: prints OK, or every problem as
    /// file:line:column: key.path: message (exit code 2); warnings (files
    /// and ports not found) are printed but do not fail.
    Check {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// A remote configuration (`version` and `devices`, YAML or JSON)
        /// to check against the file before it is pushed.
        #[arg(long)]
        remote: Option<PathBuf>,
    },
    /// Inspect the store-and-forward queue (safe while the gateway runs).
    Queue {
        /// Configuration file (before or after the action).
        #[arg(short, long, default_value = DEFAULT_CONFIG, global = true)]
        config: PathBuf,
        #[command(subcommand)]
        action: cli::queue::Action,
    },
    /// Show the effective configuration, or drop the cached remote one.
    Config {
        /// Configuration file (before or after the action).
        #[arg(short, long, default_value = DEFAULT_CONFIG, global = true)]
        config: PathBuf,
        #[command(subcommand)]
        action: cli::config::Action,
    },
    /// Look for BLE devices nearby.
    Ble {
        /// Configuration file, for `ble.adapter` (optional).
        #[arg(short, long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        action: cli::ble::Action,
    },
    /// Print the version.
    Version,
}

/// Exit code for an invalid configuration or usage, as clap uses.
const INVALID: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("fieldgate {}", fieldgate::VERSION);
            ExitCode::SUCCESS
        }
        Command::Check { config, remote } => cli::check::run(&config, remote.as_deref()),
        Command::Run { config: path } => {
            let config = match config::load(&path) {
                Ok(c) => c,
                Err(e) => return config_failure(e),
            };
            init_logging(config.log.level.as_deref());
            outcome(run(config, path))
        }
        Command::Config {
            config: path,
            action,
        } => {
            let config = match config::load(&path) {
                Ok(c) => c,
                Err(e) => return config_failure(e),
            };
            outcome(cli::config::run(&config, &path, action))
        }
        Command::Queue { config, action } => {
            let config = match config::load(&config) {
                Ok(c) => c,
                Err(e) => return config_failure(e),
            };
            match cli::queue::run(&config, action) {
                Ok(cli::queue::QueueOutcome::Done) => ExitCode::SUCCESS,
                Ok(cli::queue::QueueOutcome::NeedsConfirmation) => ExitCode::from(INVALID),
                Err(e) => outcome(Err(e)),
            }
        }
        Command::Ble { config, action } => {
            let adapter = match config.map(|path| config::load(&path)) {
                Some(Ok(c)) => c.ble.adapter,
                Some(Err(e)) => return config_failure(e),
                None => None,
            };
            outcome(cli::ble::run(action, adapter))
        }
    }
}

fn config_failure(e: ConfigError) -> ExitCode {
    eprintln!("{e}");
    match e {
        ConfigError::Invalid { .. } => ExitCode::from(INVALID),
        ConfigError::Read { .. } => ExitCode::FAILURE,
    }
}

fn outcome(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // The journal timestamps every line itself, and shows escape codes raw.
    let journal = fieldgate::service::stderr_is_journal();
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!journal && std::io::stderr().is_terminal());
    if journal {
        fmt.without_time().init();
    } else {
        fmt.init();
    }
}

fn run(config: config::Config, path: PathBuf) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(fieldgate::gateway::run(config, path))?;
    Ok(())
}
