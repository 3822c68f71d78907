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
pub mod decode;
mod device;
mod gatt;
mod power;
pub mod scan;
mod scanner;
mod write;

pub use write::{GattHandle, WriteError};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Ingest;
use crate::config::ble::{BleConfig, BleDevice, Decoder};
use crate::reading::Delivery;

/// Starts the scanner of the adapter (and the connections of `gatt`
/// devices) in `tasks`, until cancelled; returns the write handles of the
/// `gatt` devices, by device name.
pub fn spawn(
    settings: BleConfig,
    devices: Vec<(BleDevice, Delivery)>,
    ingest: &Ingest,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Vec<(String, GattHandle)> {
    let mut handles = Vec::new();
    let devices: Vec<_> = devices
        .into_iter()
        .map(|(device, delivery)| {
            let requests = (device.decoder == Decoder::Gatt).then(|| {
                let (handle, requests) = GattHandle::new(&device);
                handles.push((device.name.to_string(), handle));
                requests
            });
            (device, delivery, requests)
        })
        .collect();
    tasks.spawn(scanner::run(
        settings,
        devices,
        ingest.clone(),
        cancel.clone(),
    ));
    handles
}
