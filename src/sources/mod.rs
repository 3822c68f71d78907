//! Sources own their hardware and turn it into [`Reading`]s.
//!
//! Each source runs as its own task and hands readings to the store through
//! an [`Ingest`] handle; it never talks to MQTT. Stopping is cooperative:
//! every task watches the same cancellation token.

pub mod modbus;
pub mod simulated;

use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::config::{Config, Delivery, DeviceConfig, Name};
use crate::health::{DeviceHealth, Health};
use crate::store::{Store, StoreError};

/// One sample of a device: the values of its points at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device: Name,
    /// Milliseconds since the Unix epoch, UTC.
    pub ts_ms: i64,
    /// Point name → value (number, bool or string).
    pub values: Map<String, Value>,
    pub quality: Quality,
    /// Why the quality is bad (a timeout, an exception code, …).
    pub error: Option<String>,
    pub delivery: Delivery,
}

/// Whether the values can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    Good = 0,
    Bad = 1,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Bad => "bad",
        }
    }

    pub fn from_code(code: i64) -> Quality {
        if code == 0 {
            Quality::Good
        } else {
            Quality::Bad
        }
    }
}

/// Where sources put readings: the store's append queue, counted.
#[derive(Clone)]
pub struct Ingest {
    store: Store,
    health: Arc<Health>,
}

impl Ingest {
    pub fn new(store: Store, health: Arc<Health>) -> Ingest {
        Ingest { store, health }
    }

    /// Queues a reading; fails only when the store is shutting down.
    pub async fn append(&self, reading: Reading) -> Result<(), StoreError> {
        self.health.readings_in.fetch_add(1, Relaxed);
        self.health
            .device(reading.device.as_str())
            .readings
            .fetch_add(1, Relaxed);
        self.store.append(reading).await
    }

    /// The counters of one device, for its source to update.
    pub fn device_health(&self, device: &Name) -> Arc<DeviceHealth> {
        self.health.device(device.as_str())
    }
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The running sources: their tasks, and the handles that write points.
pub struct Running {
    pub tasks: JoinSet<()>,
    pub modbus: modbus::Writers,
}

/// Starts one task per device, or per bus for devices that share one.
pub fn spawn_all(config: &Config, ingest: &Ingest, cancel: &CancellationToken) -> Running {
    let mut tasks = JoinSet::new();
    for device in &config.devices {
        let delivery = device.delivery(config.mqtt.qos);
        match device {
            DeviceConfig::Simulated(sim) => {
                tasks.spawn(simulated::run(
                    sim.clone(),
                    delivery,
                    ingest.clone(),
                    cancel.clone(),
                ));
            }
            DeviceConfig::Modbus(_) => {} // grouped by bus below
        }
    }
    let modbus = modbus::spawn(config, ingest, cancel, &mut tasks);
    Running { tasks, modbus }
}

/// Checks that span devices, as (path, message).
pub fn shared_problems(devices: &[DeviceConfig]) -> Vec<(String, String)> {
    modbus::shared_problems(devices)
}
