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
