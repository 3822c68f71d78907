//! Sources own their hardware and turn it into [`Reading`]s.
//!
//! Each source runs as its own task and hands readings to the store through
//! an [`Ingest`] handle; it never talks to MQTT. Stopping is cooperative:
//! every task watches the same cancellation token.

pub mod simulated;

use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Delivery, DeviceConfig, Name};
use crate::store::Store;

/// One sample of a device: the values of its points at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device: Name,
    /// Milliseconds since the Unix epoch, UTC.
    pub ts_ms: i64,
    /// Point name → value (number, bool or string).
    pub values: Map<String, Value>,
    pub quality: Quality,
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

/// Where sources put readings: the store's append queue.
pub type Ingest = Store;

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Starts one task per device (buses shared by several devices will group
/// them here as those sources arrive).
pub fn spawn_all(config: &Config, ingest: &Ingest, cancel: &CancellationToken) -> JoinSet<()> {
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
        }
    }
    tasks
}
