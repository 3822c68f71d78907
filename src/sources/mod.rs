//! Sources own their hardware and turn it into [`Reading`]s.
//!
//! Each source runs as its own task and hands readings to the store through
//! an [`Ingest`] handle; it never talks to MQTT. Stopping is cooperative:
//! every task watches the same cancellation token.

pub mod modbus;
pub mod serial;
pub mod simulated;
mod supervisor;

pub use supervisor::{Change, Sources};

use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::config::{Delivery, DeviceConfig, Name, Qos};
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
        let device = self.health.device(reading.device.as_str());
        device.readings.fetch_add(1, Relaxed);
        // What a command that reads a point is answered with.
        if reading.quality == Quality::Good {
            device.remember(reading.ts_ms, &reading.values);
        }
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

/// Devices that share hardware form a group (one serial port, one RS-485
/// bus, one Modbus TCP endpoint): the group is started, stopped and
/// restarted as a whole.
pub fn group_key(device: &DeviceConfig) -> String {
    match device {
        DeviceConfig::Simulated(d) => format!("simulated:{}", d.name),
        DeviceConfig::Serial(d) => format!("serial:{}", d.port),
        DeviceConfig::Modbus(d) => format!("modbus:{}", modbus::bus_of(d)),
    }
}

/// The running tasks of one group, and the handles that write its points.
pub struct Group {
    pub tasks: JoinSet<()>,
    pub writers: HashMap<String, PointWriter>,
}

/// Writes the points of one device, through the task that owns its
/// hardware (so a write takes its turn with the polls).
#[derive(Clone)]
pub enum PointWriter {
    Modbus(modbus::BusHandle),
    Serial(serial::SerialHandle),
}

/// Why a write did not happen: refused before anything was sent, or failed
/// on the way to the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailure {
    pub rejected: bool,
    pub reason: String,
}

impl PointWriter {
    pub async fn write(
        &self,
        device: &str,
        point: &str,
        value: &Value,
    ) -> Result<(), WriteFailure> {
        match self {
            PointWriter::Modbus(bus) => {
                bus.write(device, point, value)
                    .await
                    .map_err(|e| WriteFailure {
                        rejected: e.is_rejected(),
                        reason: e.to_string(),
                    })
            }
            PointWriter::Serial(port) => port.write(point, value).await.map_err(|e| WriteFailure {
                rejected: matches!(
                    e,
                    serial::WriteError::NotWritable(_) | serial::WriteError::InvalidValue(_)
                ),
                reason: e.to_string(),
            }),
        }
    }
}

/// Starts the tasks of one group of devices.
pub fn spawn_group(
    devices: &[DeviceConfig],
    default_qos: Qos,
    ingest: &Ingest,
    cancel: &CancellationToken,
) -> Group {
    let mut tasks = JoinSet::new();
    let mut writers = HashMap::new();
    for device in devices {
        let delivery = device.delivery(default_qos);
        match device {
            DeviceConfig::Simulated(sim) => {
                tasks.spawn(simulated::run(
                    sim.clone(),
                    delivery,
                    ingest.clone(),
                    cancel.clone(),
                ));
            }
            DeviceConfig::Serial(serial) => {
                let port = serial::spawn(serial.clone(), delivery, ingest, cancel, &mut tasks);
                writers.insert(serial.name.to_string(), PointWriter::Serial(port));
            }
            DeviceConfig::Modbus(_) => {} // one task per bus, below
        }
    }
    let modbus = modbus::spawn(devices, default_qos, ingest, cancel, &mut tasks);
    for (device, bus) in modbus.handles() {
        writers.insert(device.clone(), PointWriter::Modbus(bus.clone()));
    }
    Group { tasks, writers }
}

/// Checks that span devices, as (path, message).
pub fn shared_problems(devices: &[DeviceConfig]) -> Vec<(String, String)> {
    modbus::shared_problems(devices)
}
