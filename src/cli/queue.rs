//! `fieldgate queue`: look into the store-and-forward queue, and empty it,
//! while the gateway runs. `stats` and `peek` only read; `purge` deletes
//! only when asked with `--yes`.

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use fieldgate::config::{Config, Duration};
use fieldgate::store::{self, Outbox, RowKind, StoreError};
use fieldgate::uplink::payload;

#[derive(Subcommand)]
pub enum Action {
    /// Rows, bytes and oldest reading per device and priority, and the
    /// readings dropped by the store's limits.
    Stats,
    /// The next readings the gateway will send, as their MQTT payloads.
    Peek {
        /// How many.
        #[arg(short = 'n', default_value_t = 10)]
        count: usize,
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
    },
    /// Readings the broker refused or would never take, newest first, and why.
    DeadLetters {
        /// How many.
        #[arg(short = 'n', default_value_t = 20)]
        count: usize,
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
    },
    /// Put the dead letters back into the queue (after fixing the broker's
    /// limits or ACL); a running gateway sends them from its next connection.
    RetryDead {
        /// Only this device's.
        #[arg(long)]
        device: Option<String>,
    },
    /// Delete queued readings (they will never be sent).
    Purge {
        /// Only this device's readings.
        #[arg(long)]
        device: Option<String>,
        /// Only readings older than this, e.g. 7d or 12h.
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<Duration>,
        /// Really delete; without it, only say how many would go.
        #[arg(long)]
        yes: bool,
    },
}

pub enum QueueOutcome {
    Done,
    /// `purge` without `--yes`.
    NeedsConfirmation,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse()
}

pub fn run(config: &Config, action: Action) -> anyhow::Result<QueueOutcome> {
    let path = store::db_path(&config.gateway.state_dir);
    let outbox = match open(&path) {
        Ok(outbox) => outbox,
        // Not created yet, or created a moment ago by a starting gateway.
        Err(StoreError::Uninitialized) => return empty(&path),
        Err(StoreError::Sqlite(_)) if !path.exists() => return empty(&path),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    let now = jiff::Timestamp::now().as_millisecond();
    match action {
        Action::Stats => stats(&outbox, now)?,
        Action::Peek { count, device } => {
            for row in outbox.peek(count, device.as_deref())? {
                let body = match row.kind {
                    RowKind::Availability => {
                        format!("availability of {}: {:?}", row.device, row.values)
                    }
                    RowKind::Reading => payload::telemetry(&row),
                };
                outln!("{:<6} qos{} {body}", row.priority.as_str(), row.qos as u8)?;
            }
        }
        Action::DeadLetters { count, device } => {
            for d in outbox.dead_letter_list(count, device.as_deref())? {
                outln!(
                    "seq {:<10} {:<24} {}  {}",
                    d.seq,
                    d.device,
                    payload::timestamp(d.ts_ms),
                    d.reason
                )?;
            }
        }
        Action::RetryDead { device } => {
            let mut outbox = Outbox::open_for_changes(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let n = outbox.retry_dead(device.as_deref())?;
            outln!(
                "{n} dead letter(s) queued again; a running gateway sends them from its next connection"
            )?;
        }
        Action::Purge {
            device,
            older_than,
            yes,
        } => {
            let before = older_than.map(|age| now - age.get().as_millis() as i64);
            let what = match (&device, &older_than) {
                (Some(d), Some(age)) => format!("readings of {d} older than {age}"),
                (Some(d), None) => format!("readings of {d}"),
                (None, Some(age)) => format!("readings older than {age}"),
                (None, None) => "readings".to_owned(),
            };
            if !yes {
                let n = outbox.count(device.as_deref(), before)?;
                outln!("{n} {what} would be deleted; run again with --yes to delete them")?;
                return Ok(QueueOutcome::NeedsConfirmation);
            }
            let mut outbox = Outbox::open_for_changes(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let n = outbox.purge(device.as_deref(), before)?;
            outln!("deleted {n} {what}")?;
        }
    }
    Ok(QueueOutcome::Done)
}

/// A gateway that is starting holds the database while it checks it; give
/// it a moment rather than fail.
fn open(path: &Path) -> Result<Outbox, StoreError> {
    let mut tries = 0;
    loop {
        match Outbox::open_read_only(path) {
            Err(StoreError::Sqlite(_)) if path.exists() && tries < 30 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

fn empty(path: &Path) -> anyhow::Result<QueueOutcome> {
    outln!("no store at {} yet: 0 rows", path.display())?;
    Ok(QueueOutcome::Done)
}

fn stats(outbox: &Outbox, now_ms: i64) -> anyhow::Result<()> {
    let totals = outbox.totals()?;
    outln!("rows      {}", totals.rows)?;
    outln!("bytes     {}", totals.bytes)?;
    outln!("disk      {} bytes in use", outbox.used_bytes()?)?;
    outln!("next      seq {}", outbox.next_seq())?;
    let devices = outbox.device_stats()?;
    if !devices.is_empty() {
        outln!()?;
        outln!(
            "{:<24} {:<8} {:>10} {:>12} {:>10}",
            "device",
            "priority",
            "rows",
            "bytes",
            "oldest"
        )?;
        for d in devices {
            let age = std::time::Duration::from_millis((now_ms - d.oldest_ts_ms).max(0) as u64);
            outln!(
                "{:<24} {:<8} {:>10} {:>12} {:>9}s",
                d.device,
                d.priority.as_str(),
                d.rows,
                d.bytes,
                age.as_secs()
            )?;
        }
    }
    let dead = outbox.dead_letters()?;
    if !dead.is_empty() {
        outln!()?;
        outln!("{:<24} {:>10}", "dead letters", "readings")?;
        for (device, n) in dead {
            outln!("{device:<24} {n:>10}")?;
        }
        for d in outbox.dead_letter_list(3, None)? {
            outln!("  last: seq {} of {}: {}", d.seq, d.device, d.reason)?;
        }
        outln!("  (`fieldgate queue dead-letters` lists them, `retry-dead` sends them again)")?;
    }
    let evictions = outbox.evictions()?;
    if !evictions.is_empty() {
        outln!()?;
        outln!("{:<24} {:>10}", "evicted", "readings")?;
        for (device, n) in evictions {
            outln!("{device:<24} {n:>10}")?;
        }
    }
    Ok(())
}
