//! Runs the sources of the configured devices, and changes them while the
//! gateway runs: only the groups whose devices changed stop or start, so a
//! new configuration never interrupts the readings of untouched devices.

use std::collections::{BTreeMap, BTreeSet};

use tokio_util::sync::CancellationToken;

use super::{Group, Ingest, PointWriter, group_key, spawn_group};
use crate::config::{BleConfig, DeviceConfig};
use crate::reading::Qos;

struct Running {
    devices: Vec<DeviceConfig>,
    cancel: CancellationToken,
    group: Group,
}

pub struct Sources {
    ingest: Ingest,
    default_qos: Qos,
    ble: BleConfig,
    running: BTreeMap<String, Running>,
}

/// What an `apply` did, by device name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Changed, or sharing hardware with a changed device.
    pub restarted: Vec<String>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.restarted.is_empty()
    }
}

fn groups(devices: &[DeviceConfig]) -> BTreeMap<String, Vec<DeviceConfig>> {
    let mut groups: BTreeMap<String, Vec<DeviceConfig>> = BTreeMap::new();
    for device in devices {
        groups
            .entry(group_key(device))
            .or_default()
            .push(device.clone());
    }
    groups
}

fn names(devices: &[DeviceConfig]) -> impl Iterator<Item = String> + '_ {
    devices.iter().map(|d| d.name().to_string())
}

impl Sources {
    pub fn start(
        devices: &[DeviceConfig],
        default_qos: Qos,
        ble: BleConfig,
        ingest: Ingest,
    ) -> Sources {
        let mut sources = Sources {
            ingest,
            default_qos,
            ble,
            running: BTreeMap::new(),
        };
        for (key, devices) in groups(devices) {
            sources.launch(key, devices);
        }
        sources
    }

    fn launch(&mut self, key: String, devices: Vec<DeviceConfig>) {
        let cancel = CancellationToken::new();
        let group = spawn_group(&devices, self.default_qos, &self.ble, &self.ingest, &cancel);
        self.running.insert(
            key,
            Running {
                devices,
                cancel,
                group,
            },
        );
    }

    /// Runs `devices` from now on. A stopped group has handed all its
    /// readings to the store before its replacement starts.
    pub async fn apply(&mut self, devices: &[DeviceConfig]) -> Change {
        let wanted = groups(devices);
        let before: BTreeSet<String> = self
            .running
            .values()
            .flat_map(|r| names(&r.devices))
            .collect();
        let after: BTreeSet<String> = names(devices).collect();
        let mut change = Change {
            added: after.difference(&before).cloned().collect(),
            removed: before.difference(&after).cloned().collect(),
            restarted: Vec::new(),
        };
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(key, running)| wanted.get(*key) != Some(&running.devices))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some(running) = self.running.remove(&key) {
                change
                    .restarted
                    .extend(names(&running.devices).filter(|n| after.contains(n)));
                stop(running).await;
            }
        }
        for (key, devices) in wanted {
            if !self.running.contains_key(&key) {
                self.launch(key, devices);
            }
        }
        change.restarted.retain(|n| !change.added.contains(n));
        change.restarted.sort();
        change.restarted.dedup();
        change
    }

    /// The writer of `device`'s points, if its source can write.
    pub fn writer(&self, device: &str) -> Option<PointWriter> {
        self.running
            .values()
            .find_map(|r| r.group.writers.get(device).cloned())
    }

    /// Stops every source; their last readings are in the store's queue
    /// when this returns.
    pub async fn stop_all(&mut self) {
        for (_, running) in std::mem::take(&mut self.running) {
            stop(running).await;
        }
    }
}

async fn stop(mut running: Running) {
    running.cancel.cancel();
    while running.group.tasks.join_next().await.is_some() {}
}
