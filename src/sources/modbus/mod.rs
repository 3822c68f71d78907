//! Modbus RTU and TCP devices.
//!
//! Devices on the same serial port, or at the same TCP host and port, share
//! one bus task ([`bus::run`]) that owns the connection, so requests never
//! overlap. Each device's points are coalesced into as few reads as possible
//! ([`plan`]); words become values by pure functions ([`value`]); what a poll
//! publishes (deadbands, heartbeats, faults once per change) is decided in
//! [`publish`]. Point writes go through a [`BusHandle`], in turn with the
//! polls.

mod bus;
mod config;
mod link;
pub mod plan;
pub mod publish;
pub mod value;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use bus::{BusHandle, WriteError};
pub use config::{ModbusDevice, ModbusPoint, Parity, RtuPort, TcpEndpoint};
pub use link::Endpoint;

use super::Ingest;
use crate::config::{Delivery, DeviceConfig, Qos};

/// Writes to the points of every Modbus device, by device name.
#[derive(Clone, Default)]
pub struct Writers {
    buses: HashMap<String, BusHandle>,
}

impl Writers {
    /// The bus handle of each device.
    pub fn handles(&self) -> impl Iterator<Item = (&String, &BusHandle)> {
        self.buses.iter()
    }

    /// Writes `value` to `point` of `device`; see [`BusHandle::write`].
    pub async fn write(&self, device: &str, point: &str, value: &Value) -> Result<(), WriteError> {
        match self.buses.get(device) {
            Some(bus) => bus.write(device, point, value).await,
            None => Err(WriteError::UnknownDevice(device.to_owned())),
        }
    }
}

impl ModbusDevice {
    /// The bus this device is on.
    pub fn endpoint(&self) -> Option<Endpoint> {
        match (&self.rtu, &self.tcp) {
            (Some(rtu), _) => Some(Endpoint::Rtu(rtu.clone())),
            (None, Some(tcp)) => Some(Endpoint::Tcp(tcp.clone())),
            (None, None) => None,
        }
    }
}

/// The bus a device is on, as text: devices with the same one share it.
pub fn bus_of(device: &ModbusDevice) -> String {
    device.endpoint().map(|e| bus_key(&e)).unwrap_or_default()
}

/// Where devices meet on a bus: the serial port, or the TCP host and port.
fn bus_key(endpoint: &Endpoint) -> String {
    match endpoint {
        Endpoint::Rtu(rtu) => format!("rtu:{}", rtu.port),
        Endpoint::Tcp(tcp) => format!("tcp:{}:{}", tcp.host, tcp.port),
    }
}

/// The Modbus devices among `devices`, grouped by bus in order of appearance.
fn buses(devices: &[DeviceConfig]) -> Vec<(Endpoint, Vec<Arc<ModbusDevice>>)> {
    let mut buses: Vec<(String, Endpoint, Vec<Arc<ModbusDevice>>)> = Vec::new();
    for device in devices {
        let DeviceConfig::Modbus(device) = device else {
            continue;
        };
        let Some(endpoint) = device.endpoint() else {
            continue;
        };
        let key = bus_key(&endpoint);
        match buses.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, _, devices)) => devices.push(Arc::new(device.clone())),
            None => buses.push((key, endpoint, vec![Arc::new(device.clone())])),
        }
    }
    buses.into_iter().map(|(_, e, d)| (e, d)).collect()
}

/// Starts one task per bus; returns the handles that write points.
pub fn spawn(
    devices: &[DeviceConfig],
    default_qos: Qos,
    ingest: &Ingest,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Writers {
    let mut writers = Writers::default();
    for (endpoint, devices) in buses(devices) {
        let (jobs_tx, jobs) = mpsc::channel(16);
        let handle = BusHandle::new(jobs_tx, devices.clone());
        let pollers = devices
            .iter()
            .map(|device| {
                let delivery = Delivery {
                    qos: device.qos.unwrap_or(default_qos),
                    priority: device.priority,
                };
                let health = ingest.device_health(&device.name);
                writers
                    .buses
                    .insert(device.name.to_string(), handle.clone());
                bus::Poller::new(device.clone(), delivery, health)
            })
            .collect();
        let link = link::Link::new(endpoint);
        tasks.spawn(bus::run(
            link,
            pollers,
            jobs,
            ingest.clone(),
            cancel.clone(),
        ));
    }
    writers
}

/// Checks across devices, as (path, message): devices that share a serial
/// port must agree on its line settings.
pub fn shared_problems(devices: &[DeviceConfig]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut first_on_port: HashMap<&str, (usize, &RtuPort)> = HashMap::new();
    for (i, device) in devices.iter().enumerate() {
        let DeviceConfig::Modbus(ModbusDevice { rtu: Some(rtu), .. }) = device else {
            continue;
        };
        match first_on_port.get(rtu.port.as_str()) {
            None => {
                first_on_port.insert(&rtu.port, (i, rtu));
            }
            Some((first, settings)) if *settings != rtu => found.push((
                format!("devices[{i}].rtu"),
                format!(
                    "{} is already used by devices[{first}] with other settings; devices on one port share baud, parity, data_bits and stop_bits",
                    rtu.port
                ),
            )),
            Some(_) => {}
        }
    }
    found
}
