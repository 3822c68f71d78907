//! What a BLE source remembers about one device: when it was last heard,
//! its last measurement counter and reading, whether it is stale. Times
//! are passed in, so the rules are tested without a radio.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::decode::{DecodeError, Sealed};
use crate::config::Duration as ConfigDuration;
use crate::config::ble::BleDevice;
use crate::health::DeviceHealth;
use crate::reading::{Delivery, Name};
use crate::reading::{Quality, Reading};
use crate::sources::Ingest;
use crate::store::StoreError;

pub struct DeviceState {
    pub name: Name,
    delivery: Delivery,
    health: Arc<DeviceHealth>,
    ingest: Ingest,
    min_interval: Duration,
    stale_after: ConfigDuration,
    last_heard: Instant,
    last_emitted: Option<Instant>,
    last_counter: Option<u32>,
    /// The last accepted encrypted advertisement: its counter must go up.
    /// In memory only, so a gateway restart accepts the next counter.
    last_sealed: Option<Sealed>,
    stale: bool,
    /// What the scanner watchdog says while the radio is silent, shown as
    /// this device's problem (with `stale` when it is stale too).
    scanner_note: Option<String>,
}

/// The problem of a device whose encrypted advertisements are replayed.
const REPLAYED: &str = "replayed advertisement refused (encryption counter not above the last)";

impl DeviceState {
    pub fn new(device: &BleDevice, delivery: Delivery, ingest: &Ingest, now: Instant) -> Self {
        DeviceState {
            name: device.name.clone(),
            delivery,
            health: ingest.device_health(&device.name),
            ingest: ingest.clone(),
            min_interval: device.min_interval.get(),
            stale_after: device.stale_after,
            last_heard: now,
            last_emitted: None,
            last_counter: None,
            last_sealed: None,
            stale: false,
            scanner_note: None,
        }
    }

    /// Any sign of life (an advertisement, a signal strength update, a
    /// value): a stale device is back.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        if self.stale {
            self.stale = false;
            if self.health.set_problem(None) {
                tracing::info!(device = %self.name, "heard again");
            }
        }
    }

    /// Whether a decoded measurement becomes a reading: not a repeat of the
    /// last counter, and not within `min_interval` of the last reading.
    pub fn accept(&mut self, now: Instant, counter: Option<u32>) -> bool {
        if counter.is_some() && counter == self.last_counter {
            return false; // the same measurement, advertised again
        }
        self.last_counter = counter;
        if self
            .last_emitted
            .is_some_and(|t| now.duration_since(t) < self.min_interval)
        {
            return false;
        }
        self.last_emitted = Some(now);
        true
    }

    /// Whether an encrypted advertisement is new: its counter above the
    /// last accepted one. The same counter and MIC again is the same
    /// advertisement heard twice (BlueZ reports every copy it receives):
    /// dropped, not counted. Anything else not above the last counter is a
    /// replay: refused, counted as bad input, and a problem (logged once
    /// per change).
    pub fn fresh(&mut self, sealed: Sealed) -> bool {
        match self.last_sealed {
            Some(last) if last == sealed => false,
            Some(last) if sealed.counter <= last.counter => {
                self.health.bad_input.fetch_add(1, Relaxed);
                if self.health.set_problem(Some(REPLAYED.into())) {
                    tracing::warn!(
                        device = %self.name,
                        counter = sealed.counter,
                        last = last.counter,
                        "{REPLAYED}"
                    );
                }
                false
            }
            _ => {
                self.last_sealed = Some(sealed);
                true
            }
        }
    }

    /// An advertisement that the decoder refused: counted, and a problem
    /// (logged once per change).
    pub fn undecodable(&self, e: &DecodeError) {
        self.health.bad_input.fetch_add(1, Relaxed);
        let problem = format!("undecodable advertisement: {e}");
        if self.health.set_problem(Some(problem.clone())) {
            tracing::warn!(device = %self.name, "{problem}");
        }
    }

    /// Good data again after an undecodable or replayed advertisement.
    pub fn decoded(&self) {
        let undecodable = self
            .health
            .problem()
            .is_some_and(|p| p.starts_with("undecodable") || p == REPLAYED);
        if undecodable && self.health.set_problem(None) {
            tracing::info!(device = %self.name, "advertisements decode again");
        }
    }

    /// A bad reading when the device has been silent for `stale_after`.
    pub fn check_stale(&mut self, now: Instant) -> Option<Reading> {
        if self.stale || now.duration_since(self.last_heard) < self.stale_after.get() {
            return None;
        }
        self.stale = true;
        self.failed(self.stale_problem())
    }

    fn stale_problem(&self) -> String {
        let stale = format!("stale: nothing for {}", self.stale_after);
        match &self.scanner_note {
            Some(note) => format!("{stale}; {note}"),
            None => stale,
        }
    }

    /// The scanner watchdog's state (`None`: advertisements arrive again),
    /// shown as the problem; the watchdog logs it, once for all devices.
    pub fn set_scanner_note(&mut self, note: Option<&str>) {
        self.scanner_note = note.map(str::to_owned);
        let problem = if self.stale {
            Some(self.stale_problem())
        } else {
            self.scanner_note.clone()
        };
        self.health.set_problem(problem);
    }

    /// A failure (no adapter, a lost connection, silence): counted, a
    /// problem, and a bad reading, only when the problem changes, so the
    /// log and the store get one entry per change of state.
    pub fn failed(&self, problem: String) -> Option<Reading> {
        let reading = self.failed_quietly(problem)?;
        if let Some(problem) = &reading.error {
            tracing::warn!(device = %self.name, "{problem}");
        }
        Some(reading)
    }

    /// As [`failed`](Self::failed), for a cause the caller has logged
    /// already (once for all devices).
    pub fn failed_quietly(&self, problem: String) -> Option<Reading> {
        self.health.errors.fetch_add(1, Relaxed);
        if !self.health.set_problem(Some(problem.clone())) {
            return None;
        }
        Some(self.reading(Map::new(), Some(problem)))
    }

    /// Clears the problem a failure set (the adapter is back, connected);
    /// the caller logs it.
    pub fn recovered(&mut self, now: Instant) {
        self.last_heard = now;
        self.stale = false;
        self.health.set_problem(None);
    }

    pub fn reading(&self, values: Map<String, Value>, error: Option<String>) -> Reading {
        let stamp = self.ingest.clock().stamp();
        Reading {
            device: self.name.clone(),
            ts_ms: stamp.wall_ms,
            mono_ms: stamp.mono_ms,
            unsynced: stamp.unsynced,
            values,
            quality: if error.is_some() {
                Quality::Bad
            } else {
                Quality::Good
            },
            error,
            delivery: self.delivery,
        }
    }

    /// Hands a reading to the store; fails only when it shuts down.
    pub async fn emit(&self, reading: Reading) -> Result<(), StoreError> {
        self.ingest.append(reading).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeviceConfig;
    use crate::config::load_str;
    use crate::health::Health;
    use crate::reading::{Priority, Qos};
    use crate::store::Store;

    fn device(extra: &str) -> BleDevice {
        let text = format!(
            "gateway: {{ id: gw }}\nmqtt: {{ url: mqtt://127.0.0.1 }}\ndevices:\n  - {{ name: t, kind: ble, address: 'A4:C1:38:00:00:01', decoder: bthome{extra} }}\n"
        );
        match load_str(&text, "t.yaml").unwrap().devices.remove(0) {
            DeviceConfig::Ble(d) => d,
            other => panic!("{other:?}"),
        }
    }

    /// What the store needs to stay open during a test.
    struct Fixture(
        #[allow(dead_code)] tokio::runtime::Runtime,
        #[allow(dead_code)] tempfile::TempDir,
    );

    fn state(extra: &str) -> (DeviceState, Arc<Health>, Instant, Fixture) {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let (store, _thread) = Store::open(
            &dir.path().join("t.db"),
            &Default::default(),
            crate::clock::Clock::system(),
        )
        .unwrap();
        let health = Health::new();
        let ingest = Ingest::new(store, health.clone());
        let delivery = Delivery {
            qos: Qos::AtLeastOnce,
            priority: Priority::Normal,
        };
        let now = Instant::now();
        let state = DeviceState::new(&device(extra), delivery, &ingest, now);
        (state, health, now, Fixture(runtime, dir))
    }

    #[test]
    fn repeats_and_readings_within_min_interval_are_dropped() {
        let (mut s, _, t0, _f) = state(", min_interval: 10s");
        let at = |secs| t0 + Duration::from_secs(secs);
        assert!(s.accept(at(0), Some(1)));
        assert!(!s.accept(at(1), Some(1)), "the same packet id again");
        assert!(!s.accept(at(2), Some(2)), "new, but within min_interval");
        assert!(!s.accept(at(11), Some(2)), "a repeat of the dropped one");
        assert!(s.accept(at(12), Some(3)));
        // Without a counter only the interval counts.
        assert!(!s.accept(at(13), None));
        assert!(s.accept(at(23), None));
    }

    #[test]
    fn every_new_measurement_with_min_interval_zero() {
        let (mut s, _, t0, _f) = state(", min_interval: 0s");
        assert!(s.accept(t0, Some(7)));
        assert!(s.accept(t0, Some(8)));
        assert!(!s.accept(t0, Some(8)));
    }

    #[test]
    fn a_silent_device_goes_stale_once_and_comes_back() {
        let (mut s, health, t0, _f) = state(", stale_after: 60s");
        assert!(s.check_stale(t0 + Duration::from_secs(59)).is_none());
        let bad = s.check_stale(t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(bad.quality, Quality::Bad);
        assert_eq!(bad.error.as_deref(), Some("stale: nothing for 1m"));
        assert!(
            s.check_stale(t0 + Duration::from_secs(90)).is_none(),
            "once"
        );
        let snap = health.snapshot();
        assert_eq!(
            snap.devices["t"].problem.as_deref(),
            Some("stale: nothing for 1m")
        );
        s.heard(t0 + Duration::from_secs(95));
        assert_eq!(health.snapshot().devices["t"].problem, None);
        assert!(s.check_stale(t0 + Duration::from_secs(100)).is_none());
    }

    fn sealed(counter: u32, mic: u8) -> Sealed {
        Sealed {
            counter,
            mic: [mic; 4],
        }
    }

    #[test]
    fn encrypted_counters_must_go_up() {
        let (mut s, health, _, _f) = state("");
        assert!(s.fresh(sealed(5, 1)));
        assert!(!s.fresh(sealed(5, 1)), "the same advertisement again");
        assert_eq!(health.snapshot().devices["t"].bad_input, 0);
        assert_eq!(health.snapshot().devices["t"].problem, None);
        assert!(!s.fresh(sealed(4, 2)), "an older one");
        assert!(!s.fresh(sealed(5, 3)), "the same counter, another payload");
        assert_eq!(health.snapshot().devices["t"].bad_input, 2);
        assert_eq!(
            health.snapshot().devices["t"].problem.as_deref(),
            Some(REPLAYED)
        );
        assert!(s.fresh(sealed(6, 4)));
        s.decoded();
        assert_eq!(health.snapshot().devices["t"].problem, None);
        assert!(!s.fresh(sealed(5, 1)), "refused after a newer one");
        assert!(s.fresh(sealed(u32::MAX, 0)));
        assert!(!s.fresh(sealed(0, 0)));
    }

    #[test]
    fn the_scanner_note_shows_with_or_without_staleness() {
        let (mut s, health, t0, _f) = state(", stale_after: 60s");
        let problem = || health.snapshot().devices["t"].problem.clone();
        s.set_scanner_note(Some("no advertisements; discovery restarted"));
        assert_eq!(
            problem().as_deref(),
            Some("no advertisements; discovery restarted")
        );
        let bad = s.check_stale(t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(
            bad.error.as_deref(),
            Some("stale: nothing for 1m; no advertisements; discovery restarted")
        );
        s.set_scanner_note(Some("adapter power-cycled"));
        assert_eq!(
            problem().as_deref(),
            Some("stale: nothing for 1m; adapter power-cycled")
        );
        s.set_scanner_note(None);
        assert_eq!(problem().as_deref(), Some("stale: nothing for 1m"));
        s.heard(t0 + Duration::from_secs(61));
        assert_eq!(problem(), None);
    }

    #[test]
    fn failures_give_one_bad_reading_per_change() {
        let (mut s, health, t0, _f) = state("");
        assert!(s.failed("no adapter".into()).is_some());
        assert!(s.failed("no adapter".into()).is_none());
        assert!(s.failed("BlueZ is not running".into()).is_some());
        assert_eq!(health.snapshot().devices["t"].errors, 3);
        s.recovered(t0);
        assert_eq!(health.snapshot().devices["t"].problem, None);
        s.undecodable(&DecodeError("short".into()));
        assert_eq!(health.snapshot().devices["t"].bad_input, 1);
        s.decoded();
        assert_eq!(health.snapshot().devices["t"].problem, None);
    }
}
