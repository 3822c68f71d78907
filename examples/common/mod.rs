//! What the bench examples share: readings shaped like those of the
//! simulated devices that `scripts/bench.sh` runs (two points per device, a
//! sine temperature and a constant setpoint), built with the simulated
//! source's own signal code.

use fieldgate::config::Duration;
use fieldgate::config::simulated::{Signal, SimulatedPoint};
use fieldgate::reading::{Delivery, Name, Priority, Qos};
use fieldgate::reading::{Quality, Reading};
use serde_json::{Map, Value};

/// One simulated device: its name and points.
pub struct Device {
    pub name: Name,
    pub points: [SimulatedPoint; 2],
    pub delivery: Delivery,
}

/// `count` devices named `dev0`, `dev1`, … publishing at `qos`.
pub fn devices(count: usize, qos: Qos) -> Vec<Device> {
    let point = |name: &str, signal, min, max| SimulatedPoint {
        name: Name::parse(name).expect("valid point name"),
        signal,
        min,
        max,
        period: Duration::from_secs(60),
        value: None,
        deadband: None,
        aggregate: None,
        unit: None,
        homeassistant: Default::default(),
    };
    (0..count)
        .map(|i| Device {
            name: Name::parse(&format!("dev{i}")).expect("valid device name"),
            points: [
                point("temperature", Signal::Sine, 55.0, 75.0),
                point("setpoint", Signal::Constant, 65.0, 65.0),
            ],
            delivery: Delivery {
                qos,
                priority: Priority::Normal,
            },
        })
        .collect()
}

impl Device {
    /// The reading this device takes at `ts_ms`, as the simulated source
    /// builds it.
    pub fn reading(&self, ts_ms: i64) -> Reading {
        let values: Map<String, Value> = self
            .points
            .iter()
            .map(|p| (p.name.to_string(), Value::from(p.sample(ts_ms))))
            .collect();
        Reading {
            device: self.name.clone(),
            ts_ms,
            // A time since boot of about a day, as on a gateway in service.
            mono_ms: ts_ms.rem_euclid(86_400_000),
            unsynced: false,
            values,
            quality: Quality::Good,
            error: None,
            delivery: self.delivery,
        }
    }
}
