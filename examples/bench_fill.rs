//! Pre-fills a store with a backlog, through the library's `Outbox`, in
//! large transactions: the 1,000,000-row backlog that `scripts/bench.sh`
//! drains. Ten devices `dev0`..`dev9` with two points each, one reading per
//! millisecond ending now, all at one QoS and priority `normal`.
//!
//! ```sh
//! cargo run --release --example bench_fill -- /tmp/state/fieldgate.db 1000000 --qos 1
//! ```

mod common;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use fieldgate::reading::Qos;
use fieldgate::store::{Changes, Limits, Outbox};

#[derive(Parser)]
struct Args {
    /// The store to create or extend (`gateway.state_dir/fieldgate.db`).
    db: PathBuf,
    /// Readings to add.
    rows: usize,
    /// Their QoS.
    #[arg(long, default_value = "1", value_parser = parse_qos)]
    qos: Qos,
    /// Readings per transaction.
    #[arg(long, default_value_t = 50_000)]
    batch: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let devices = common::devices(10, args.qos);
    let mut outbox = Outbox::open(&args.db, Limits::default())?;
    let start = Instant::now();
    let first_ts = fieldgate::clock::Clock::system().now_ms() - args.rows as i64;
    let mut done = 0;
    while done < args.rows {
        let n = args.batch.min(args.rows - done);
        let readings: Vec<_> = (done..done + n)
            .map(|i| outbox.stage(&devices[i % devices.len()].reading(first_ts + i as i64)))
            .collect();
        let changes = Changes {
            readings: &readings,
            ..Changes::default()
        };
        outbox.commit(&changes, fieldgate::clock::Clock::system().now_ms())?;
        done += n;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "rows={done} seconds={seconds:.2} rows_per_s={:.0}",
        done as f64 / seconds
    );
    Ok(())
}

/// `0`, `1` or `2` on the command line.
fn parse_qos(text: &str) -> Result<Qos, String> {
    text.parse::<u8>()
        .ok()
        .and_then(Qos::from_u8)
        .ok_or_else(|| format!("invalid QoS `{text}`: expected 0, 1 or 2"))
}
