//! Modbus RTU and TCP devices.
//!
//! Devices on the same serial port, or at the same TCP host and port, share
//! one bus task ([`bus::run`]) that owns the connection, so requests never
//! overlap. Each device's points are coalesced into as few reads as possible
//! ([`plan`]); words become values by pure functions ([`value`]); how a
//! poll's faults are published (once per change) is decided in
//! [`publish`]; deadbands and heartbeats are applied on the way to the
//! store, as for every kind. Point writes go through a [`BusHandle`], in turn with the
//! polls.

mod bus;
mod link;
pub mod plan;
mod poll;
pub mod publish;
mod read;
pub mod value;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use bus::{BusHandle, WriteError};
pub use link::Endpoint;

use self::plan::Limits;
use self::value::Layout;
use super::Ingest;
use crate::config::DeviceConfig;
use crate::config::modbus::{ModbusDevice, ModbusPoint};
use crate::reading::{Delivery, Qos};

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

    /// Request coalescing settings.
    pub fn limits(&self) -> Limits {
        Limits {
            max_gap: self.max_gap,
            max_registers: self.max_registers.get() as u16,
            max_bits: self.max_bits.get() as u16,
        }
    }

    /// The points with defaults resolved and 0-based addresses.
    pub fn layouts(&self) -> Vec<Layout> {
        self.points
            .iter()
            .map(|p| p.layout(self.address_base.get()))
            .collect()
    }
}

impl ModbusPoint {
    /// This point's layout, its address made 0-based (`base` is 0 or 1).
    pub fn layout(&self, base: u64) -> Layout {
        Layout {
            register: self.register,
            address: self.protocol_address(base),
            value_type: self.value_type(),
            length: self.length.unwrap_or(1),
            word_order: self.word_order.unwrap_or_default(),
            byte_order: self.byte_order.unwrap_or_default(),
            bit: self.bit,
            scale: self.scale.unwrap_or(1.0),
            offset: self.offset.unwrap_or(0.0),
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
        let (jobs_tx, jobs) = mpsc::channel(bus::WRITES_WAITING);
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
                poll::Poller::new(device.clone(), delivery, health)
            })
            .collect();
        let link = link::ModbusLink::new(endpoint);
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

#[cfg(test)]
mod tests {
    use super::value::{Order, RegisterKind, ValueType};
    use crate::config::{DeviceConfig, load_str};

    const HEAD: &str = "gateway: { id: gw }\nmqtt: { url: \"mqtt://127.0.0.1:1883\" }\ndevices:\n";

    #[test]
    fn defaults_and_a_one_based_map() {
        let text = format!(
            "{HEAD}  - name: m\n    kind: modbus\n    tcp: {{ host: 127.0.0.1 }}\n    address_base: 1\n    points:\n      - {{ name: v, register: holding, address: 40, type: f32, word_order: little }}\n      - {{ name: on, register: input, address: 1, bit: 3 }}\n"
        );
        let config = load_str(&text, "f.yaml").unwrap();
        let DeviceConfig::Modbus(m) = &config.devices[0] else {
            panic!("a modbus device");
        };
        assert_eq!((m.unit, m.tcp.as_ref().unwrap().port), (1, 502));
        assert_eq!(
            (m.poll.to_string(), m.timeout.to_string()),
            ("5s".into(), "1s".into())
        );
        assert_eq!(m.retries.get(), 1);
        let layouts = m.layouts();
        assert_eq!(
            (layouts[0].address, layouts[0].word_order),
            (39, Order::Little)
        );
        assert_eq!(layouts[0].register, RegisterKind::Holding);
        assert_eq!(
            (layouts[1].value_type, layouts[1].bit),
            (ValueType::Bool, Some(3))
        );
        assert_eq!(layouts[1].address, 0);
    }
}
