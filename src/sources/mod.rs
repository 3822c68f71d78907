//! Sources own their hardware and turn it into [`Reading`]s.
//!
//! Each source runs as its own task and hands readings to the store through
//! an [`Ingest`] handle; it never talks to MQTT. Stopping is cooperative:
//! every task watches the same cancellation token.

mod availability;
pub mod ble;
mod exception;
pub mod modbus;
pub mod serial;
pub mod simulated;
mod supervisor;

pub use supervisor::{Change, Sources};

use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::clock::{Clock, Deadline};
use crate::config::{BleConfig, DeviceConfig};
use crate::health::{DeviceHealth, Health};
use crate::reading::{Name, Qos, Reading};
use crate::store::{DeviceState, Store, StoreError};

/// Where sources put readings: the store's append queue, counted, through
/// the report-by-exception rules of the devices of a group.
#[derive(Clone)]
pub struct Ingest {
    store: Store,
    health: Arc<Health>,
    /// The rules of the group this handle was given to; none outside one.
    filters: Option<Arc<exception::Filters>>,
    /// The availability of the group's devices; none outside a group.
    availability: Option<Arc<availability::Availability>>,
}

impl Ingest {
    pub fn new(store: Store, health: Arc<Health>) -> Ingest {
        Ingest {
            store,
            health,
            filters: None,
            availability: None,
        }
    }

    /// A handle that applies the deadbands, heartbeats and windows of
    /// `devices`, and tracks their availability, with state of its own.
    fn for_group(&self, devices: &[DeviceConfig], default_qos: Qos) -> Ingest {
        let filters = exception::Filters::new(devices, default_qos);
        let now = self.clock().monotonic();
        Ingest {
            store: self.store.clone(),
            health: self.health.clone(),
            filters: (!filters.is_empty()).then(|| Arc::new(filters)),
            availability: Some(Arc::new(availability::Availability::new(devices, now))),
        }
    }

    /// Queues what the device's rules leave of a reading (the counters and
    /// the value a `read` command answers with see all of it); fails only
    /// when the store is shutting down.
    pub async fn append(&self, mut reading: Reading) -> Result<(), StoreError> {
        // One rule for every kind: `65`, never `65.0` from one and `65` from another.
        crate::reading::whole_numbers_as_integers(&mut reading.values);
        self.health.readings_in.fetch_add(1, Relaxed);
        let device = self.health.device(reading.device.as_str());
        device.readings.fetch_add(1, Relaxed);
        // What a command that reads a point is answered with. A bad reading
        // carries the points that did read (a failed point has no value in
        // it), and those values are as good as in any other reading.
        device.remember(reading.ts_ms, &reading.values);
        if let Some(availability) = &self.availability {
            let now = self.clock().monotonic();
            let read = !reading.values.is_empty();
            if let Some(state) = availability.reading(reading.device.as_str(), read, now) {
                self.report_availability(reading.device.as_str(), state)
                    .await?;
            }
        }
        let Some(filters) = &self.filters else {
            return self.store.append(reading).await;
        };
        for reading in filters.apply(reading, self.clock().monotonic()) {
            self.store.append(reading).await?;
        }
        Ok(())
    }

    /// Stores the windows that have ended by now.
    async fn close_windows(&self) -> Result<(), StoreError> {
        let Some(filters) = &self.filters else {
            return Ok(());
        };
        for reading in filters.close_ended(self.clock().now_ms()) {
            self.store.append(reading).await?;
        }
        Ok(())
    }

    /// Reports the devices that stopped reading.
    async fn check_availability(&self) -> Result<(), StoreError> {
        let Some(availability) = &self.availability else {
            return Ok(());
        };
        for device in availability.check(self.clock().monotonic()) {
            self.report_availability(&device, DeviceState::Offline)
                .await?;
        }
        Ok(())
    }

    /// When a device may next go offline.
    fn next_availability_check(&self) -> Option<std::time::Instant> {
        self.availability.as_ref()?.next_check()
    }

    /// Stores a change of a device's availability; one the store could not
    /// take is reported again at the next reading or check.
    async fn report_availability(
        &self,
        device: &str,
        state: DeviceState,
    ) -> Result<(), StoreError> {
        let Some(availability) = &self.availability else {
            return Ok(());
        };
        match self.store.set_availability(device.to_owned(), state).await {
            Ok(changed) => {
                if availability.stored() {
                    tracing::info!("availability changes are stored again");
                }
                if changed {
                    tracing::info!("device {device} is {}", state.as_str());
                }
            }
            Err(StoreError::Closed) => return Err(StoreError::Closed),
            Err(e) => {
                // Said once per episode: a full disk fails every poll.
                if availability.unstored(device) {
                    tracing::warn!(
                        "cannot store that device {device} is {} (retried with its next reading): {e}",
                        state.as_str()
                    );
                }
            }
        }
        Ok(())
    }

    /// When the next window ends (Unix ms), if one is open.
    fn next_window_close(&self) -> Option<i64> {
        self.filters.as_ref()?.next_close()
    }

    /// The clock that stamps readings.
    pub fn clock(&self) -> &Clock {
        self.store.clock()
    }

    /// The counters of one device, for its source to update.
    pub fn device_health(&self, device: &Name) -> Arc<DeviceHealth> {
        self.health.device(device.as_str())
    }
}

/// Devices that share hardware form a group (one serial port, one RS-485
/// bus, one Modbus TCP endpoint): the group is started, stopped and
/// restarted as a whole.
pub fn group_key(device: &DeviceConfig) -> String {
    match device {
        DeviceConfig::Simulated(d) => format!("simulated:{}", d.name),
        DeviceConfig::Serial(d) => format!("serial:{}", d.port),
        DeviceConfig::Modbus(d) => format!("modbus:{}", modbus::bus_of(d)),
        // One scanner per adapter: every BLE device is in its group.
        DeviceConfig::Ble(_) => "ble".into(),
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
    Ble(ble::GattHandle),
}

/// Why a write did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailure {
    pub fault: WriteFault,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFault {
    /// Refused before anything was sent: not writable, invalid value.
    Rejected,
    /// Too many writes already wait for the device's bus or port.
    Busy,
    /// Its deadline passed while it waited for its turn; nothing was sent.
    Expired,
    /// Sent, or on its way, and the device did not take it.
    Failed,
}

impl PointWriter {
    /// Writes `value` to `point`, unless `deadline` passes before the
    /// device's turn comes.
    pub async fn write(
        &self,
        device: &str,
        point: &str,
        value: &Value,
        deadline: Deadline,
    ) -> Result<(), WriteFailure> {
        let failure = |fault, reason: String| WriteFailure { fault, reason };
        match self {
            PointWriter::Modbus(bus) => {
                bus.write(device, point, value, deadline)
                    .await
                    .map_err(|e| {
                        let fault = match e {
                            modbus::WriteError::Busy(_) => WriteFault::Busy,
                            modbus::WriteError::Expired => WriteFault::Expired,
                            ref e if e.is_rejected() => WriteFault::Rejected,
                            _ => WriteFault::Failed,
                        };
                        failure(fault, e.to_string())
                    })
            }
            PointWriter::Serial(port) => port.write(point, value, deadline).await.map_err(|e| {
                let fault = match e {
                    serial::WriteError::NotWritable(_) | serial::WriteError::InvalidValue(_) => {
                        WriteFault::Rejected
                    }
                    serial::WriteError::Busy => WriteFault::Busy,
                    serial::WriteError::Expired => WriteFault::Expired,
                    _ => WriteFault::Failed,
                };
                failure(fault, e.to_string())
            }),
            PointWriter::Ble(gatt) => gatt.write(point, value, deadline).await.map_err(|e| {
                let fault = match e {
                    ble::WriteError::Busy => WriteFault::Busy,
                    ble::WriteError::Expired => WriteFault::Expired,
                    ref e if e.is_rejected() => WriteFault::Rejected,
                    _ => WriteFault::Failed,
                };
                failure(fault, e.to_string())
            }),
        }
    }
}

/// Hands a write to the task that owns the device's hardware without
/// waiting: a full queue is `busy`, a gone task `stopped`.
fn hand_over<T, E>(
    queue: &tokio::sync::mpsc::Sender<T>,
    write: T,
    busy: E,
    stopped: E,
) -> Result<(), E> {
    use tokio::sync::mpsc::error::TrySendError;
    queue.try_send(write).map_err(|e| match e {
        TrySendError::Full(_) => busy,
        TrySendError::Closed(_) => stopped,
    })
}

/// Starts the tasks of one group of devices.
pub fn spawn_group(
    devices: &[DeviceConfig],
    default_qos: Qos,
    ble: &BleConfig,
    ingest: &Ingest,
    cancel: &CancellationToken,
) -> Group {
    let mut tasks = JoinSet::new();
    let mut writers = HashMap::new();
    let mut ble_devices = Vec::new();
    let ingest = &ingest.for_group(devices, default_qos);
    if ingest.filters.as_ref().is_some_and(|f| f.has_windows()) {
        tasks.spawn(exception::run_timer(ingest.clone(), cancel.clone()));
    }
    tasks.spawn(availability::run_timer(ingest.clone(), cancel.clone()));
    for device in devices {
        let delivery = device.delivery(default_qos);
        match device {
            DeviceConfig::Ble(ble) => ble_devices.push((ble.clone(), delivery)),
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
    // One scanner for the adapter, whatever the number of BLE devices.
    if !ble_devices.is_empty() {
        let handles = ble::spawn(ble.clone(), ble_devices, ingest, cancel, &mut tasks);
        for (device, handle) in handles {
            writers.insert(device, PointWriter::Ble(handle));
        }
    }
    let modbus = modbus::spawn(devices, default_qos, ingest, cancel, &mut tasks);
    for (device, bus) in modbus.handles() {
        writers.insert(device.clone(), PointWriter::Modbus(bus.clone()));
    }
    Group { tasks, writers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Delivery, Priority, Quality};
    use serde_json::json;

    #[test]
    fn a_bad_reading_still_gives_commands_the_values_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let (store, _thread) = Store::open(
            &dir.path().join("t.db"),
            &Default::default(),
            Clock::system(),
        )
        .unwrap();
        let health = Health::new();
        let ingest = Ingest::new(store, health.clone());
        let reading = |ts_ms, values: serde_json::Value, quality| Reading {
            device: Name::parse("meter").unwrap(),
            ts_ms,
            mono_ms: ts_ms,
            unsynced: false,
            values: values.as_object().unwrap().clone(),
            quality,
            error: (quality == Quality::Bad).then(|| "l1-current: exception 2".to_owned()),
            delivery: Delivery {
                qos: Qos::AtLeastOnce,
                priority: Priority::Normal,
            },
        };
        runtime.block_on(async {
            let good = reading(1_000, json!({"l3-voltage": 230.5}), Quality::Good);
            ingest.append(good).await.unwrap();
            let bad = reading(
                2_000,
                json!({"l3-voltage": 231.5, "energy": 12.0}),
                Quality::Bad,
            );
            ingest.append(bad).await.unwrap();
        });
        let meter = health.device("meter");
        assert_eq!(meter.latest("l3-voltage"), Some((2_000, json!(231.5))));
        assert_eq!(meter.latest("l1-current"), None);
        // Whole numbers as integers, from here on (the store, the payloads).
        assert_eq!(meter.latest("energy"), Some((2_000, json!(12))));
    }
}
