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
            outcome(cli::outln!("fieldgate {}", fieldgate::VERSION).map_err(anyhow::Error::from))
        }
        Command::Check { config, remote } => cli::check::run(&config, remote.as_deref()),
        Command::Run { config: path } => {
            let checked = match config::check(&path) {
                Ok(checked) => checked,
                Err(e) => return config_failure(e),
            };
            let config = match checked.result {
                Ok(c) => c,
                Err(e) => return config_failure(e),
            };
            init_logging(config.log.level.as_deref());
            // What `check` warns about (a password file not there yet, an
            // unplugged adapter) is why a gateway that starts fine then
            // cannot log in or read: said once, where its log is read.
            for line in checked.warnings.to_string().lines() {
                tracing::warn!("{line}");
            }
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

/// Exit code 2 for a file that cannot be read too: a missing or unreadable
/// configuration does not fix itself, and the systemd unit does not restart
/// on 2 (`RestartPreventExitStatus=2`).
fn config_failure(e: ConfigError) -> ExitCode {
    eprintln!("{e}");
    match e {
        ConfigError::Invalid { .. } | ConfigError::Read { .. } => ExitCode::from(INVALID),
    }
}

fn outcome(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): what it wanted, it has.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes, each said once. Library errors name their
/// source in their own message and also return it as `source()`, so
/// `{:#}` would repeat every cause after the message that already has it.
fn chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
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

/// Threads for blocking calls (files, DNS, the BLE radio power cycle) at
/// most, and how long an idle one is kept: enough that a DNS lookup hung
/// on a dead network holds up nothing else, and gone soon after.
const MAX_BLOCKING: usize = 16;
const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(2);

fn run(config: config::Config, path: PathBuf) -> anyhow::Result<()> {
    fieldgate::resident::limit_malloc_arenas();
    // One thread runs every task: the gateway waits on I/O almost all the
    // time, and a second worker cost more in wake-ups and hand-overs
    // between the two (a third of the CPU per reading at 1,000 readings/s,
    // `scripts/bench.sh`) than it ever gained, besides its stack and
    // allocator arena. The store has a thread of its own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(MAX_BLOCKING)
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(fieldgate::gateway::run(config, path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot create the state directory /x: {source}")]
    struct StateDir {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::from(StateDir { source: io }).context("cannot open the store");
        assert_eq!(
            chain(&e),
            "cannot open the store: cannot create the state directory /x: entity not found"
        );
        let plain = anyhow::anyhow!("no broker").context("cannot start");
        assert_eq!(chain(&plain), "cannot start: no broker");
    }

    #[test]
    fn a_closed_pipe_is_recognised_under_context() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(is_broken_pipe(&anyhow::Error::from(io).context("printing")));
        let other = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(!is_broken_pipe(&anyhow::Error::from(other)));
    }
}
