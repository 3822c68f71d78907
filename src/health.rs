//! Counters that tell an operator how the gateway is doing: readings in
//! and out, reconnects, and per device its readings, bad input and errors.
//! Published on `P/status` (retained, every `gateway.status_interval`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::Serialize;

pub struct Health {
    started: Instant,
    /// The last rate sample: when, `readings_in` then, and the rate it gave.
    rate: Mutex<(Instant, u64, f64)>,
    /// Readings handed to the store.
    pub readings_in: AtomicU64,
    /// Readings the broker acknowledged (or that left at QoS 0).
    pub published: AtomicU64,
    /// Answers to commands the broker acknowledged (they travel through
    /// the store as readings do, but are not readings).
    pub answers_published: AtomicU64,
    /// Connections after the first.
    pub reconnects: AtomicU64,
    /// Commands left unacknowledged because the gateway did not take them
    /// in time (the broker sends them again on the next connection).
    pub commands_dropped: AtomicU64,
    /// Whether the downstream connection (commands and configurations) is
    /// up and subscribed.
    pub downstream_up: AtomicBool,
    /// Unreadable commands not answered, to bound the answers a flood of
    /// junk can cause (each is logged and counted instead).
    pub commands_unanswered: AtomicU64,
    /// Commands rejected unread (not JSON, unknown fields, too large): not
    /// journaled, answered at most a few per second.
    pub commands_unreadable: AtomicU64,
    /// Home Assistant "online" messages and Sparkplug NCMD rebirths not
    /// answered at once, each answered by the next pass, shared with others
    /// (at most one per period: `uplink/pace.rs`).
    pub discovery_coalesced: AtomicU64,
    pub rebirths_coalesced: AtomicU64,
    /// What is wrong with the MQTT link beyond a retry, if anything
    /// (another client using our client id).
    uplink_problem: Mutex<Option<String>>,
    devices: Mutex<BTreeMap<String, Arc<DeviceHealth>>>,
}

/// One device's counters; its source updates them.
#[derive(Default)]
pub struct DeviceHealth {
    pub readings: AtomicU64,
    /// Input that could not be turned into a reading (serial lines, frames).
    pub bad_input: AtomicU64,
    /// Failed reads, timeouts, lost connections.
    pub errors: AtomicU64,
    /// What is wrong now, if anything (cleared when it works again).
    problem: Mutex<Option<String>>,
    /// The last value read of each point, and when it was read.
    latest: Mutex<BTreeMap<String, (i64, serde_json::Value)>>,
}

impl DeviceHealth {
    /// Sets or clears the current problem; returns true when it changed, so
    /// the caller logs once per change of state.
    pub fn set_problem(&self, problem: Option<String>) -> bool {
        let mut current = self.problem.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = *current != problem;
        *current = problem;
        changed
    }

    /// Keeps the values read, for commands that read.
    pub fn remember(&self, ts_ms: i64, values: &serde_json::Map<String, serde_json::Value>) {
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        for (point, value) in values {
            latest.insert(point.clone(), (ts_ms, value.clone()));
        }
    }

    /// The last value read of `point` and its time.
    pub fn latest(&self, point: &str) -> Option<(i64, serde_json::Value)> {
        let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        latest.get(point).cloned()
    }

    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Snapshot {
    pub uptime_s: u64,
    /// Readings taken per second lately (between two snapshots).
    pub readings_per_s: f64,
    pub readings_in: u64,
    pub published: u64,
    pub answers_published: u64,
    pub reconnects: u64,
    pub commands_dropped: u64,
    pub commands_unanswered: u64,
    pub commands_unreadable: u64,
    pub discovery_coalesced: u64,
    pub rebirths_coalesced: u64,
    /// Whether commands can reach the gateway now (the downstream connection).
    pub downstream_up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplink_problem: Option<String>,
    pub devices: BTreeMap<String, DeviceSnapshot>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceSnapshot {
    pub readings: u64,
    pub bad_input: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Health {
    pub fn new() -> Arc<Health> {
        Arc::new(Health {
            started: Instant::now(),
            rate: Mutex::new((Instant::now(), 0, 0.0)),
            readings_in: AtomicU64::new(0),
            published: AtomicU64::new(0),
            answers_published: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            commands_dropped: AtomicU64::new(0),
            downstream_up: AtomicBool::new(false),
            commands_unanswered: AtomicU64::new(0),
            commands_unreadable: AtomicU64::new(0),
            discovery_coalesced: AtomicU64::new(0),
            rebirths_coalesced: AtomicU64::new(0),
            uplink_problem: Mutex::new(None),
            devices: Mutex::new(BTreeMap::new()),
        })
    }

    /// Sets or clears what is wrong with the MQTT link.
    pub fn set_uplink_problem(&self, problem: Option<String>) {
        *self
            .uplink_problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = problem;
    }

    /// The counters of `device`, created on first use.
    pub fn device(&self, device: &str) -> Arc<DeviceHealth> {
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        devices.entry(device.to_owned()).or_default().clone()
    }

    /// Readings taken per second since the previous sample (at least a
    /// second ago; the last rate when it is more recent).
    fn readings_per_s(&self, readings_in: u64) -> f64 {
        let mut sample = self.rate.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, before, rate) = *sample;
        let elapsed = at.elapsed().as_secs_f64();
        if elapsed < 1.0 {
            return rate;
        }
        let rate = readings_in.saturating_sub(before) as f64 / elapsed;
        let rate = (rate * 100.0).round() / 100.0;
        *sample = (Instant::now(), readings_in, rate);
        rate
    }

    pub fn snapshot(&self) -> Snapshot {
        let devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        let readings_in = self.readings_in.load(Relaxed);
        Snapshot {
            uptime_s: self.started.elapsed().as_secs(),
            readings_per_s: self.readings_per_s(readings_in),
            readings_in,
            published: self.published.load(Relaxed),
            answers_published: self.answers_published.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            commands_dropped: self.commands_dropped.load(Relaxed),
            commands_unanswered: self.commands_unanswered.load(Relaxed),
            commands_unreadable: self.commands_unreadable.load(Relaxed),
            discovery_coalesced: self.discovery_coalesced.load(Relaxed),
            rebirths_coalesced: self.rebirths_coalesced.load(Relaxed),
            downstream_up: self.downstream_up.load(Relaxed),
            uplink_problem: self
                .uplink_problem
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            devices: devices
                .iter()
                .map(|(name, d)| {
                    let snap = DeviceSnapshot {
                        readings: d.readings.load(Relaxed),
                        bad_input: d.bad_input.load(Relaxed),
                        errors: d.errors.load(Relaxed),
                        problem: d.problem(),
                    };
                    (name.clone(), snap)
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_problems_show_in_the_snapshot() {
        let health = Health::new();
        let pump = health.device("pump");
        pump.readings.fetch_add(3, Relaxed);
        pump.errors.fetch_add(1, Relaxed);
        assert!(pump.set_problem(Some("timeout".into())));
        assert!(
            !pump.set_problem(Some("timeout".into())),
            "no change, no log"
        );
        health.published.fetch_add(2, Relaxed);
        let snap = health.snapshot();
        assert_eq!(snap.published, 2);
        let p = &snap.devices["pump"];
        assert_eq!((p.readings, p.errors, p.bad_input), (3, 1, 0));
        assert_eq!(p.problem.as_deref(), Some("timeout"));
        assert!(pump.set_problem(None));
        let json = serde_json::to_value(health.snapshot()).unwrap();
        assert!(json["devices"]["pump"].get("problem").is_none());
    }
}
