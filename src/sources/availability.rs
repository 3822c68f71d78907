//! Device availability, for every kind of source: between the sources and
//! the store, each reading of a configured device tells its [`Tracker`]
//! whether the device read, and a timer per group (see [`run_timer`])
//! notices devices whose readings stopped altogether (BLE adverts that no
//! longer come, a source task that is stuck).
//!
//! A device reads when a reading carries at least one value: a partial
//! poll still proves the device answers. A reading with no value (a
//! timeout, no answer, every point failed, a BLE device gone stale) does
//! not, whatever failed: the device, its bus or the source. After
//! `offline_after` without a value the device is `offline`; the next value
//! makes it `online` again.
//!
//! Only changes leave a tracker, and the store writes only changes to the
//! state it keeps, so a group restarted by a configuration change (fresh
//! trackers) repeats nothing the broker already has.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::DeviceConfig;
use crate::store::DeviceState;

use super::Ingest;

/// The longest the timer sleeps: bounds how late a device is noticed
/// after the clock jumped.
const TIMER_MAX_SLEEP: Duration = Duration::from_secs(1);
/// The shortest, so that a tiny `offline_after` cannot spin the timer.
const TIMER_MIN_SLEEP: Duration = Duration::from_millis(10);

/// One device's availability.
#[derive(Debug)]
pub struct Tracker {
    offline_after: Duration,
    /// When it last read, or when tracking began.
    last_read: Instant,
    /// What was last reported; `None` before the first report.
    state: Option<DeviceState>,
}

impl Tracker {
    pub fn new(offline_after: Duration, now: Instant) -> Tracker {
        Tracker {
            offline_after,
            last_read: now,
            state: None,
        }
    }

    /// A reading arrived; `read` says whether it carried a value. Returns
    /// the new state when it changed.
    pub fn reading(&mut self, read: bool, now: Instant) -> Option<DeviceState> {
        if !read {
            return self.check(now);
        }
        self.last_read = now;
        self.change(DeviceState::Online)
    }

    /// `offline` once `offline_after` passed without a value.
    pub fn check(&mut self, now: Instant) -> Option<DeviceState> {
        if now.saturating_duration_since(self.last_read) < self.offline_after {
            return None;
        }
        self.change(DeviceState::Offline)
    }

    /// When [`check`](Self::check) may next have something to say.
    pub fn next_check(&self) -> Option<Instant> {
        (self.state != Some(DeviceState::Offline)).then(|| self.last_read + self.offline_after)
    }

    /// The change could not be stored: report it again next time.
    pub fn unreported(&mut self) {
        self.state = None;
    }

    fn change(&mut self, state: DeviceState) -> Option<DeviceState> {
        (self.state != Some(state)).then(|| {
            self.state = Some(state);
            state
        })
    }
}

/// The trackers of one group's devices, by device name.
#[derive(Debug, Default)]
pub struct Availability {
    trackers: HashMap<String, Mutex<Tracker>>,
    /// The store refused the last change (a full disk, say).
    failing: AtomicBool,
}

impl Availability {
    pub fn new(devices: &[DeviceConfig], now: Instant) -> Availability {
        let trackers = devices.iter().map(|device| {
            let tracker = Tracker::new(device.spec().offline_after().get(), now);
            (device.name().to_string(), Mutex::new(tracker))
        });
        Availability {
            trackers: trackers.collect(),
            failing: AtomicBool::new(false),
        }
    }

    /// A reading of `device`; its new state when it changed.
    pub fn reading(&self, device: &str, read: bool, now: Instant) -> Option<DeviceState> {
        lock(self.trackers.get(device)?).reading(read, now)
    }

    /// The devices that went offline by `now`.
    pub fn check(&self, now: Instant) -> Vec<String> {
        (self.trackers.iter())
            .filter(|(_, t)| lock(t).check(now).is_some())
            .map(|(device, _)| device.clone())
            .collect()
    }

    /// The earliest time a device may go offline.
    pub fn next_check(&self) -> Option<Instant> {
        self.trackers
            .values()
            .filter_map(|t| lock(t).next_check())
            .min()
    }

    /// The store could not take `device`'s change: it is reported again
    /// with the next reading or check. Says whether this starts a run of
    /// failures.
    pub fn unstored(&self, device: &str) -> bool {
        if let Some(t) = self.trackers.get(device) {
            lock(t).unreported();
        }
        !self.failing.swap(true, Ordering::Relaxed)
    }

    /// The store took a change; says whether that ends a run of failures.
    pub fn stored(&self) -> bool {
        self.failing.swap(false, Ordering::Relaxed)
    }
}

/// A tracker whose holder panicked is still consistent: every update of
/// it is a whole assignment.
fn lock(tracker: &Mutex<Tracker>) -> MutexGuard<'_, Tracker> {
    tracker.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reports the devices of `ingest`'s group that stop reading, until
/// cancelled or the store shuts down.
pub async fn run_timer(ingest: Ingest, cancel: CancellationToken) {
    loop {
        let now = ingest.clock().monotonic();
        let wait = ingest
            .next_availability_check()
            .map_or(TIMER_MAX_SLEEP, |at| at.saturating_duration_since(now))
            .clamp(TIMER_MIN_SLEEP, TIMER_MAX_SLEEP);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        if ingest.check_availability().await.is_err() {
            break; // the store is shutting down
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn devices(yaml: &str) -> Vec<DeviceConfig> {
        let text = format!("gateway: {{ id: gw }}\nmqtt: {{ url: mqtt://h }}\ndevices:\n{yaml}");
        load_str(&text, "f.yaml").unwrap().devices
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_device_is_online_when_it_reads_and_offline_after_the_threshold() {
        let t0 = Instant::now();
        let mut t = Tracker::new(3 * S, t0);
        assert_eq!(t.check(t0 + 2 * S), None, "not yet");
        assert_eq!(t.next_check(), Some(t0 + 3 * S));
        assert_eq!(t.reading(true, t0 + 2 * S), Some(DeviceState::Online));
        assert_eq!(t.reading(true, t0 + 3 * S), None, "only changes");
        // Readings without a value do not count as reading.
        assert_eq!(t.reading(false, t0 + 4 * S), None);
        assert_eq!(t.reading(false, t0 + 5 * S), None);
        assert_eq!(t.check(t0 + 5_999 * S / 1_000), None, "just under 3 s");
        assert_eq!(t.reading(false, t0 + 6 * S), Some(DeviceState::Offline));
        assert_eq!(t.check(t0 + 60 * S), None, "said once");
        assert_eq!(t.next_check(), None, "nothing to wait for");
        assert_eq!(t.reading(true, t0 + 61 * S), Some(DeviceState::Online));
        assert_eq!(t.next_check(), Some(t0 + 64 * S));
    }

    #[test]
    fn a_device_that_never_reads_goes_offline_and_an_unstored_change_is_repeated() {
        let t0 = Instant::now();
        let mut t = Tracker::new(S, t0);
        assert_eq!(t.check(t0 + S), Some(DeviceState::Offline));
        t.unreported();
        assert_eq!(t.check(t0 + 2 * S), Some(DeviceState::Offline));
    }

    #[test]
    fn defaults_are_three_polls_or_sixty_seconds_per_kind() {
        let found = devices(concat!(
            "  - { name: sim, kind: simulated, poll: 2s, points: [ { name: v, signal: sine } ] }\n",
            "  - { name: set, kind: simulated, poll: 2s, offline_after: 1m, points: [ { name: v, signal: sine } ] }\n",
            "  - { name: fast, kind: simulated, poll: 10ms, points: [ { name: v, signal: sine } ] }\n",
            "  - { name: short, kind: simulated, poll: 10ms, offline_after: 50ms, points: [ { name: v, signal: sine } ] }\n",
            "  - { name: mb, kind: modbus, tcp: { host: h }, poll: 5s, points: [ { name: v, register: input, address: 0 } ] }\n",
            "  - { name: line, kind: serial, port: /dev/null, format: json, fields: { t: t } }\n",
            "  - { name: stale, kind: serial, port: /dev/null, format: json, stale_after: 2m, fields: { t: t } }\n",
            "  - { name: adv, kind: ble, address: 'A4:C1:38:00:00:01', decoder: bthome }\n",
            "  - { name: slow, kind: ble, address: 'A4:C1:38:00:00:02', decoder: atc, min_interval: 30s }\n",
            "  - { name: gatt, kind: ble, address: 'A4:C1:38:00:00:03', decoder: gatt, poll: 10s, characteristics: [ { point: x, uuid: 2a37, service: 180d } ] }\n",
        ));
        let got: std::collections::BTreeMap<String, Duration> = (found.iter())
            .map(|d| (d.name().to_string(), d.spec().offline_after().get()))
            .collect();
        let want: std::collections::BTreeMap<String, Duration> = [
            ("sim", 6),
            ("set", 60),
            ("fast", 1),
            ("mb", 15),
            ("line", 60),
            ("stale", 120),
            ("adv", 60),
            ("slow", 90),
            ("gatt", 30),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_owned(), s * S))
        .chain([("short".to_owned(), Duration::from_millis(50))])
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_group_reports_each_device_once() {
        // (poll 1s and 2s: three polls each, above the 1 s floor)
        let group = devices(concat!(
            "  - { name: a, kind: simulated, poll: 1s, points: [ { name: v, signal: sine } ] }\n",
            "  - { name: b, kind: simulated, poll: 2s, points: [ { name: v, signal: sine } ] }\n",
        ));
        let t0 = Instant::now();
        let av = Availability::new(&group, t0);
        assert_eq!(av.next_check(), Some(t0 + 3 * S));
        assert_eq!(av.reading("a", true, t0), Some(DeviceState::Online));
        assert_eq!(av.reading("elsewhere", true, t0), None);
        assert_eq!(av.check(t0 + 3 * S), ["a"]);
        assert_eq!(av.check(t0 + 3 * S), Vec::<String>::new());
        assert_eq!(av.next_check(), Some(t0 + 6 * S));
        assert_eq!(av.check(t0 + 6 * S), ["b"]);
        assert_eq!(av.next_check(), None);

        // The store refuses a change: said once, reported again next time.
        assert_eq!(av.reading("b", true, t0 + 7 * S), Some(DeviceState::Online));
        assert!(av.unstored("b"));
        assert!(!av.unstored("b"), "once per run of failures");
        assert_eq!(av.reading("b", true, t0 + 8 * S), Some(DeviceState::Online));
        assert!(av.stored(), "the run ends");
        assert!(!av.stored());
    }
}
