//! Ingest: readings per second committed durably into the store, the way
//! sources hand them over (`Ingest::append` → the store thread → batched
//! SQLite transactions with the default `store` settings: WAL,
//! `synchronous=FULL`, a commit every 1,000 changes or 200 ms). Many
//! simulated devices of two points each append as fast as they can; the
//! clock stops once the last reading is committed.
//!
//! ```sh
//! cargo run --release --example bench_ingest -- /tmp/ingest --readings 500000 --devices 100
//! ```

mod common;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use fieldgate::clock::Clock;
use fieldgate::config::StoreConfig;
use fieldgate::health::Health;
use fieldgate::reading::Qos;
use fieldgate::sources::Ingest;
use fieldgate::store::{self, Store};

#[derive(Parser)]
struct Args {
    /// An empty directory for the store.
    dir: PathBuf,
    /// Readings in all.
    #[arg(long, default_value_t = 500_000)]
    readings: usize,
    /// Simulated devices appending at once.
    #[arg(long, default_value_t = 100)]
    devices: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (store, thread) = Store::open(
        &store::db_path(&args.dir),
        &StoreConfig::default(),
        Clock::system(),
    )?;
    let ingest = Ingest::new(store.clone(), Health::new());
    let per_device = args.readings / args.devices;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for device in common::devices(args.devices, Qos::AtLeastOnce) {
        let ingest = ingest.clone();
        tasks.spawn(async move {
            for _ in 0..per_device {
                ingest
                    .append(device.reading(ingest.clock().now_ms()))
                    .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    store.flush().await?;
    let seconds = start.elapsed().as_secs_f64();
    let committed = per_device * args.devices;
    drop((store, ingest));
    tokio::task::spawn_blocking(move || thread.join()).await?;
    println!(
        "readings={committed} seconds={seconds:.2} readings_per_s={:.0}",
        committed as f64 / seconds
    );
    Ok(())
}
