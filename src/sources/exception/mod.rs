//! Report by exception and windows, for every kind of source: between the
//! sources and the store, each reading of a configured device passes its
//! device's [`DeviceFilter`] (deadbands, heartbeat, windows) on its way in.
//!
//! The state lives as long as the group of devices it was built for: a
//! group restarted by a configuration change gets fresh state, and a
//! removed device's state goes with its group. Windows close when a sample
//! arrives past their end, and on a timer per group (see [`run_timer`]),
//! so a device that goes quiet still gets its last window sent.

mod filter;
mod window;

pub use filter::DeviceFilter;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::DeviceConfig;
use crate::reading::{Qos, Reading};

use super::Ingest;

/// The longest the timer sleeps: bounds how late a window is closed after
/// the wall clock jumped, and how soon one opened meanwhile is noticed.
const TIMER_MAX_SLEEP: Duration = Duration::from_secs(1);

/// The filters of one group's devices, by device name; only devices that
/// have rules get one.
#[derive(Debug, Default)]
pub struct Filters(HashMap<String, Mutex<DeviceFilter>>);

impl Filters {
    pub fn new(devices: &[DeviceConfig], default_qos: Qos) -> Filters {
        let filters = devices
            .iter()
            .filter_map(|device| {
                let report = device.spec().report();
                if report.is_plain() {
                    return None;
                }
                let delivery = device.delivery(default_qos);
                let filter = DeviceFilter::new(device.name().clone(), delivery, &report);
                Some((device.name().to_string(), Mutex::new(filter)))
            })
            .collect();
        Filters(filters)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn has_windows(&self) -> bool {
        self.0.values().any(|f| lock(f).has_windows())
    }

    /// What to store of `reading` (itself when its device has no rules).
    pub fn apply(&self, reading: Reading, now: std::time::Instant) -> Vec<Reading> {
        match self.0.get(reading.device.as_str()) {
            Some(filter) => lock(filter).apply(reading, now),
            None => vec![reading],
        }
    }

    /// The windows of every device that ended at or before `now_ms`.
    pub fn close_ended(&self, now_ms: i64) -> Vec<Reading> {
        let mut out: Vec<Reading> = (self.0.values())
            .flat_map(|f| lock(f).close_ended(now_ms))
            .collect();
        out.sort_by_key(|r| r.ts_ms);
        out
    }

    /// The earliest end of an open window, over every device.
    pub fn next_close(&self) -> Option<i64> {
        self.0.values().filter_map(|f| lock(f).next_close()).min()
    }
}

/// A filter whose holder panicked is still consistent enough to go on:
/// every update of it is a whole assignment.
fn lock(filter: &Mutex<DeviceFilter>) -> MutexGuard<'_, DeviceFilter> {
    filter.lock().unwrap_or_else(|e| e.into_inner())
}

/// Closes the windows of `ingest`'s group as their end passes, until
/// cancelled or the store shuts down. It sleeps until the next end by the
/// wall clock, at most [`TIMER_MAX_SLEEP`] at a time.
pub async fn run_timer(ingest: Ingest, cancel: CancellationToken) {
    loop {
        let now = ingest.clock().now_ms();
        let wait_ms = ingest
            .next_window_close()
            .map_or(i64::MAX, |end| end.saturating_sub(now));
        let max = TIMER_MAX_SLEEP.as_millis() as i64;
        let wait = Duration::from_millis(wait_ms.clamp(1, max) as u64);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        if ingest.close_windows().await.is_err() {
            break; // the store is shutting down
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use crate::reading::{Name, Priority, Quality};
    use serde_json::{Map, json};

    fn devices(yaml: &str) -> Vec<DeviceConfig> {
        let text = format!("gateway: {{ id: gw }}\nmqtt: {{ url: mqtt://h }}\ndevices:\n{yaml}");
        load_str(&text, "f.yaml").unwrap().devices
    }

    fn reading(device: &str, ts_ms: i64, value: f64) -> Reading {
        let mut values = Map::new();
        values.insert("v".into(), json!(value));
        Reading {
            device: Name::parse(device).unwrap(),
            ts_ms,
            mono_ms: ts_ms,
            unsynced: false,
            values,
            quality: Quality::Good,
            error: None,
            delivery: crate::reading::Delivery {
                qos: Qos::AtMostOnce,
                priority: Priority::Normal,
            },
        }
    }

    #[test]
    fn only_devices_with_rules_get_state_and_the_others_pass_untouched() {
        let plain =
            devices("  - { name: a, kind: simulated, points: [ { name: v, signal: sine } ] }\n");
        assert!(Filters::new(&plain, Qos::AtLeastOnce).is_empty());

        let mixed = devices(
            "  - { name: a, kind: simulated, points: [ { name: v, signal: sine } ] }\n  - { name: b, kind: simulated, priority: high, qos: 2, points: [ { name: v, signal: sine, aggregate: { window: 1s, functions: [count] } } ] }\n",
        );
        let filters = Filters::new(&mixed, Qos::AtLeastOnce);
        assert_eq!(filters.0.len(), 1, "state for `b` only");
        assert!(filters.has_windows());
        let now = std::time::Instant::now();
        for ts in [100, 200] {
            assert_eq!(filters.apply(reading("a", ts, 1.0), now).len(), 1);
            assert!(filters.apply(reading("b", ts, 1.0), now).is_empty());
        }
        assert_eq!(filters.next_close(), Some(1_000));
        assert!(filters.close_ended(999).is_empty());
        let closed = filters.close_ended(1_000);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].device.as_str(), "b");
        assert_eq!(closed[0].values["v"], json!({"count": 2}));
        // The window's reading travels as its device's readings do.
        assert_eq!(closed[0].delivery.priority, Priority::High);
        assert_eq!(closed[0].delivery.qos, Qos::ExactlyOnce);
        assert_eq!(filters.next_close(), None);
    }
}
