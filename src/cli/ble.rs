//! `fieldgate ble …`: looking for BLE devices before writing their YAML.

use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Subcommand;
use fieldgate::sources::ble::scan;

#[derive(Subcommand)]
pub enum Action {
    /// Lists nearby devices: address, RSSI, name, and what each decoder
    /// (bthome, ruuvi, atc, pvvx) reads from their advertisements.
    Scan {
        /// How long to listen.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The adapter (hci0, hci1, …); `ble.adapter` of --config, else the first.
        #[arg(long)]
        adapter: Option<String>,
    },
}

pub fn run(action: Action, configured_adapter: Option<String>) -> anyhow::Result<()> {
    let Action::Scan { seconds, adapter } = action;
    let adapter = adapter.or(configured_adapter);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    eprintln!("scanning for {seconds}s …");
    let seen = runtime
        .block_on(scan::scan(adapter.as_deref(), Duration::from_secs(seconds)))
        .map_err(|cause| anyhow!("BLE unavailable: {cause}"))?;
    out!("{}", scan::render(&seen))?;
    Ok(())
}
