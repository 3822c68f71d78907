//! BLE sensors through BlueZ (btleplug over D-Bus): one scanner per adapter
//! routes advertisements to the devices configured by address or name and
//! decodes them (BTHome, Ruuvi, ATC1441, pvvx); `gatt` devices get a
//! connection of their own, subscribed or read at `poll`, and reconnected
//! with backoff when the link drops.
//!
//! Without an adapter, BlueZ or D-Bus the scanner says why once, gives each
//! BLE device a bad reading and a problem on `P/status`, and tries again
//! every `ble.retry_interval`; other sources are not affected.

mod adapter;
pub mod config;
pub mod decode;
mod device;
mod gatt;
pub mod scan;
mod scanner;

pub use config::{BleConfig, BleDevice, Characteristic, Decoder, Endian, Mode, ValueType};

use tokio_util::sync::CancellationToken;

use super::Ingest;
use crate::config::Delivery;

/// Runs the scanner of the adapter (and the connections of `gatt` devices)
/// until cancelled.
pub async fn run(
    settings: BleConfig,
    devices: Vec<(BleDevice, Delivery)>,
    ingest: Ingest,
    cancel: CancellationToken,
) {
    scanner::run(settings, devices, ingest, cancel).await;
}
