//! The `fieldgate` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fieldgate::config::{self, ConfigError};
use fieldgate::store::{self, Outbox};
use tracing_subscriber::EnvFilter;

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
    /// file:line:column: key.path: message (exit code 2).
    Check {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Inspect the store-and-forward queue (safe while the gateway runs).
    Queue {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum QueueAction {
    /// Rows, bytes and oldest reading, per device and priority.
    Stats,
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
        Command::Check { config } => match config::load(&config) {
            Ok(_) => {
                println!("OK");
                ExitCode::SUCCESS
            }
            Err(e) => config_failure(e),
        },
        Command::Run { config } => {
            let config = match config::load(&config) {
                Ok(c) => c,
                Err(e) => return config_failure(e),
            };
            init_logging(config.log.level.as_deref());
            outcome(run(config))
        }
        Command::Queue { config, action } => {
            let config = match config::load(&config) {
                Ok(c) => c,
                Err(e) => return config_failure(e),
            };
            match action {
                QueueAction::Stats => outcome(queue_stats(&config)),
            }
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

fn run(config: config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(fieldgate::gateway::run(config))?;
    Ok(())
}

fn queue_stats(config: &config::Config) -> anyhow::Result<()> {
    let path = store::db_path(&config.gateway.state_dir);
    if !path.exists() {
        println!("no store at {} yet: 0 rows", path.display());
        return Ok(());
    }
    let outbox =
        Outbox::open_read_only(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let totals = outbox.totals()?;
    let now = jiff::Timestamp::now().as_millisecond();
    println!("store   {}", path.display());
    println!("rows    {}", totals.rows);
    println!("bytes   {}", totals.bytes);
    println!("next    seq {}", outbox.next_seq());
    let stats = outbox.device_stats()?;
    if !stats.is_empty() {
        println!();
        println!(
            "{:<24} {:<8} {:>10} {:>12} {:>12}",
            "device", "priority", "rows", "bytes", "oldest"
        );
        for s in stats {
            let age = std::time::Duration::from_millis((now - s.oldest_ts_ms).max(0) as u64);
            println!(
                "{:<24} {:<8} {:>10} {:>12} {:>12}",
                s.device,
                s.priority.as_str(),
                s.rows,
                s.bytes,
                format!("{}s", age.as_secs())
            );
        }
    }
    Ok(())
}
