//! One scanner per adapter: scans continuously, routes each advertisement
//! to the device configured with its address or name, and hands `gatt`
//! devices their peripheral and its connection events.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use btleplug::api::{Central, CentralEvent, Peripheral as _, ScanFilter};
use btleplug::platform::{Adapter, Manager, PeripheralId};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::adapter::{self, explain};
use super::decode::bthome::Encryption;
use super::decode::{self, DecodeError, Decoded};
use super::device::DeviceState;
use super::gatt::{self, Signal};
use super::power;
use super::write::Requests;
use crate::config::ble::{BleConfig, BleDevice};
use crate::reading::Delivery;
use crate::sources::Ingest;

/// How long an unmatched peripheral is not looked up again (its name may
/// arrive later).
const RECHECK_UNMATCHED: Duration = Duration::from_secs(5);
/// A D-Bus call that takes longer than this means BlueZ is gone.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between two power cycles of a silent adapter.
const MAX_CYCLE_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// Which configured device a peripheral is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Advert(usize),
    Gatt(usize),
}

/// The store is shutting down: the source stops.
struct StoreClosed;

struct Routing {
    target: Option<Target>,
    checked: Instant,
}

/// The scanner loop: open the adapter, scan until it fails, report the
/// cause, wait, again.
pub async fn run(
    settings: BleConfig,
    devices: Vec<(BleDevice, Delivery, Option<Requests>)>,
    ingest: Ingest,
    cancel: CancellationToken,
) {
    let now = Instant::now();
    let mut scanner = Scanner {
        all: devices
            .iter()
            .map(|(d, delivery, _)| DeviceState::new(d, *delivery, &ingest, now))
            .collect(),
        adverts: Vec::new(),
        gatts: Vec::new(),
        routes: HashMap::new(),
        ingest,
        watchdog: Watchdog::new(settings.watchdog.get(), now),
    };
    for (device, delivery, requests) in devices {
        if let Some(requests) = requests {
            scanner.gatts.push(Gatt {
                device,
                delivery,
                requests,
                signals: None,
            });
        } else {
            let state = DeviceState::new(&device, delivery, &scanner.ingest, now);
            scanner.adverts.push((device, state));
        }
    }
    let retry = settings
        .retry_interval
        .get()
        .max(Duration::from_millis(100));
    let mut manager: Option<Manager> = None;
    let mut down: Option<String> = None;
    loop {
        let outcome = match adapter::open(&mut manager, settings.adapter.as_deref()).await {
            Ok((adapter, name)) => {
                scanner
                    .scan(&adapter, &name, &mut down, &cancel, retry)
                    .await
            }
            Err(cause) => Err(cause),
        };
        let cause = match outcome {
            Ok(()) => return, // cancelled
            Err(cause) => cause,
        };
        if down.as_deref() != Some(cause.as_str()) {
            tracing::warn!(
                "BLE unavailable: {cause}; retrying every {}",
                settings.retry_interval
            );
            if scanner.unavailable(&cause).await.is_err() {
                return;
            }
            down = Some(cause);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// A `gatt` device: what its connection task needs.
struct Gatt {
    device: BleDevice,
    delivery: Delivery,
    requests: Requests,
    /// While scanning, the channel to its connection.
    signals: Option<mpsc::Sender<Signal>>,
}

struct Scanner {
    /// Every BLE device, for reporting the adapter's state.
    all: Vec<DeviceState>,
    adverts: Vec<(BleDevice, DeviceState)>,
    gatts: Vec<Gatt>,
    routes: HashMap<PeripheralId, Routing>,
    ingest: Ingest,
    watchdog: Watchdog,
}

/// What the scanner watchdog has done about a silent radio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Advertisements arrive (or not for long).
    Listening,
    /// Discovery was restarted at this time.
    Restarted(Instant),
    /// The adapter was power-cycled `times` times, the last at this time.
    PowerCycled(Instant, u32),
}

/// What to do about a silent radio now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    RestartDiscovery,
    PowerCycle { times: u32 },
}

/// Notices that no advertisement at all arrived for `after` (BlueZ scans
/// are known to stop silently after hours on a Raspberry Pi): restarts
/// discovery once, then power-cycles the adapter, waiting twice as long
/// after each cycle (up to 30 min) so a dead controller is not hammered.
struct Watchdog {
    after: Duration,
    last_advert: Instant,
    stage: Stage,
}

impl Watchdog {
    fn new(after: Duration, now: Instant) -> Watchdog {
        Watchdog {
            after,
            last_advert: now,
            stage: Stage::Listening,
        }
    }

    /// An advertisement arrived; true when that ends a silence the
    /// watchdog acted on.
    fn advert(&mut self, now: Instant) -> bool {
        self.last_advert = now;
        std::mem::replace(&mut self.stage, Stage::Listening) != Stage::Listening
    }

    /// Discovery (re)started: the silence is measured from now.
    fn restarted_scan(&mut self, now: Instant) {
        self.last_advert = now;
    }

    /// What is due at `now`, if anything; the stage moves on with it.
    fn due(&mut self, now: Instant) -> Option<Action> {
        if self.after.is_zero() || now.duration_since(self.last_advert) < self.after {
            return None;
        }
        let (since, wait, times) = match self.stage {
            Stage::Listening => {
                self.stage = Stage::Restarted(now);
                return Some(Action::RestartDiscovery);
            }
            Stage::Restarted(at) => (at, self.after, 0),
            Stage::PowerCycled(at, times) => {
                let factor = 2u32.saturating_pow(times.min(16));
                let wait = self
                    .after
                    .saturating_mul(factor)
                    .min(MAX_CYCLE_INTERVAL.max(self.after));
                (at, wait, times)
            }
        };
        if now.duration_since(since) < wait {
            return None;
        }
        let times = times.saturating_add(1);
        self.stage = Stage::PowerCycled(now, times);
        Some(Action::PowerCycle { times })
    }
}

impl Scanner {
    /// A bad reading and a problem for every device.
    async fn unavailable(&mut self, cause: &str) -> Result<(), StoreClosed> {
        for state in &self.all {
            if let Some(reading) = state.failed_quietly(format!("BLE unavailable: {cause}")) {
                state.emit(reading).await.map_err(|_| StoreClosed)?;
            }
        }
        Ok(())
    }

    fn recovered(&mut self) {
        let now = Instant::now();
        for state in &mut self.all {
            state.recovered(now);
        }
        for (_, state) in &mut self.adverts {
            state.recovered(now);
        }
    }

    /// Scans until cancelled (`Ok`) or the adapter fails (`Err`, its cause).
    /// Once scanning, clears `down` and the problems it caused.
    async fn scan(
        &mut self,
        adapter: &Adapter,
        name: &str,
        down: &mut Option<String>,
        cancel: &CancellationToken,
        check_every: Duration,
    ) -> Result<(), String> {
        let mut events = adapter.events().await.map_err(|e| explain(&e))?;
        // btleplug 0.13 sets DuplicateData: true in the discovery filter,
        // so BlueZ reports every advert, also one that repeats the bytes of
        // the last (tests/ble.rs checks the filter the mock received).
        adapter
            .start_scan(ScanFilter::default())
            .await
            .map_err(|e| explain(&e))?;
        tracing::info!(adapter = %name, devices = self.all.len(), "BLE: scanning");
        self.watchdog.restarted_scan(Instant::now());
        if down.take().is_some() {
            self.recovered();
        }
        self.routes.clear();
        let connections = cancel.child_token();
        let mut tasks = JoinSet::new();
        for gatt in &mut self.gatts {
            let (tx, rx) = mpsc::channel(16);
            gatt.signals = Some(tx);
            tasks.spawn(gatt::run(
                gatt.device.clone(),
                gatt.delivery,
                self.ingest.clone(),
                rx,
                gatt.requests.clone(),
                connections.clone(),
            ));
        }
        let mut stale_tick = tokio::time::interval(Duration::from_secs(1));
        let mut check = tokio::time::interval(check_every);
        let outcome = loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), adapter.stop_scan()).await;
                    break Ok(());
                }
                event = events.next() => match event {
                    Some(event) => {
                        if let Err(StoreClosed) = self.on_event(adapter, event).await {
                            break Ok(());
                        }
                    }
                    None => break Err("the BlueZ event stream ended (D-Bus connection lost)".into()),
                },
                _ = stale_tick.tick() => {
                    // Phones and the like rotate random addresses: forget
                    // the peripherals that are none of ours.
                    self.routes.retain(|_, r| {
                        r.target.is_some() || r.checked.elapsed() < RECHECK_UNMATCHED
                    });
                    let now = Instant::now();
                    for (_, state) in &mut self.adverts {
                        if let Some(reading) = state.check_stale(now)
                            && state.emit(reading).await.is_err()
                        {
                            return Ok(()); // the store is shutting down
                        }
                    }
                    // Only devices that advertise say anything about the
                    // scan: a connected gatt device stops advertising.
                    if !self.adverts.is_empty()
                        && let Some(action) = self.watchdog.due(now)
                    {
                        // A stop need not wait for BlueZ's slow answers.
                        tokio::select! {
                            _ = cancel.cancelled() => break Ok(()),
                            () = self.act(adapter, name, action) => {}
                        }
                    }
                }
                _ = check.tick() => {
                    match tokio::time::timeout(CALL_TIMEOUT, adapter.adapter_info()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break Err(explain(&e)),
                        Err(_) => break Err("BlueZ does not answer".into()),
                    }
                }
            }
        };
        connections.cancel();
        while tasks.join_next().await.is_some() {}
        for gatt in &mut self.gatts {
            gatt.signals = None;
        }
        outcome
    }

    /// Restarts discovery or power-cycles the adapter, says so in the log
    /// (once per stage: repeated cycles are at debug level) and as every
    /// advertising device's problem.
    async fn act(&mut self, adapter: &Adapter, name: &str, action: Action) {
        let silent = crate::config::Duration::from_millis(
            u64::try_from(self.watchdog.after.as_millis()).unwrap_or(u64::MAX),
        );
        let note = match action {
            Action::RestartDiscovery => {
                tracing::warn!(
                    adapter = %name,
                    "BLE: no advertisement for {silent} although devices are configured; restarting discovery"
                );
                format!("scanner: no advertisement for {silent}, discovery restarted")
            }
            Action::PowerCycle { times } => {
                let outcome = power::cycle(name).await;
                match (&outcome, times) {
                    (Ok(()), 1) => tracing::warn!(
                        adapter = %name,
                        "BLE: still no advertisement after restarting discovery; power-cycled the adapter"
                    ),
                    (Err(e), 1) => tracing::warn!(
                        adapter = %name,
                        "BLE: still no advertisement after restarting discovery; {e}"
                    ),
                    (Ok(()), _) => {
                        tracing::debug!(adapter = %name, times, "BLE: power-cycled again")
                    }
                    (Err(e), _) => tracing::debug!(adapter = %name, times, "BLE: {e}"),
                }
                match outcome {
                    Ok(()) => format!(
                        "scanner: no advertisement for {silent}, adapter power-cycled ({times}×)"
                    ),
                    Err(e) => format!("scanner: no advertisement for {silent}; {e}"),
                }
            }
        };
        // A power cycle ends BlueZ's discovery sessions; either way, ask
        // for a fresh one. A controller just powered on may answer
        // NotReady for a moment: a few tries, 1 s then 2 s apart; after
        // that the watchdog's next step (a later power cycle) tries again.
        let _ = tokio::time::timeout(CALL_TIMEOUT, adapter.stop_scan()).await;
        let mut pause = Duration::from_secs(1);
        for attempt in 1..=3 {
            let cause =
                match tokio::time::timeout(CALL_TIMEOUT, adapter.start_scan(ScanFilter::default()))
                    .await
                {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => explain(&e),
                    Err(_) => "BlueZ does not answer".to_owned(),
                };
            tracing::debug!(adapter = %name, attempt, "BLE: restarting discovery: {cause}");
            if attempt < 3 {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
        for (_, state) in &mut self.adverts {
            state.set_scanner_note(Some(&note));
        }
    }

    /// An advertisement of any device: the radio works.
    fn advertised(&mut self) {
        if self.watchdog.advert(Instant::now()) {
            tracing::info!("BLE: advertisements arrive again");
            for (_, state) in &mut self.adverts {
                state.set_scanner_note(None);
            }
        }
    }

    /// The key and address that open a BTHome device's encrypted
    /// advertisements: the address BlueZ heard it from (devices found by
    /// name), else the configured one.
    fn encryption<'a>(&'a self, i: usize, id: &PeripheralId) -> Option<Encryption<'a>> {
        let device = &self.adverts[i].0;
        let key = device.bindkey.as_ref()?;
        let mac = address_in_id(&id.to_string()).or(device.address.map(|a| a.0))?;
        Some(Encryption { key, mac })
    }

    /// Routes one event.
    async fn on_event(
        &mut self,
        adapter: &Adapter,
        event: CentralEvent,
    ) -> Result<(), StoreClosed> {
        if matches!(
            event,
            CentralEvent::DeviceDiscovered(_)
                | CentralEvent::ManufacturerDataAdvertisement { .. }
                | CentralEvent::ServiceDataAdvertisement { .. }
                | CentralEvent::ServicesAdvertisement { .. }
                | CentralEvent::RssiUpdate { .. }
        ) {
            self.advertised();
        }
        let (id, data) = match event {
            CentralEvent::DeviceDiscovered(id) => {
                let target = self.route(adapter, &id, true).await;
                if let Some(Target::Advert(i)) = target {
                    // BlueZ may hold the device's data from before we listened.
                    self.heard(i);
                    if let Ok(p) = adapter.peripheral(&id).await
                        && let Ok(Some(props)) = p.properties().await
                    {
                        let decoder = self.adverts[i].0.decoder;
                        let decoded = decode::decode_advert(
                            decoder,
                            &props.manufacturer_data,
                            &props.service_data,
                            self.encryption(i, &id),
                        );
                        return self.deliver(i, decoded).await;
                    }
                }
                return Ok(());
            }
            CentralEvent::ManufacturerDataAdvertisement {
                id,
                manufacturer_data,
            } => (id, Some((manufacturer_data, HashMap::new()))),
            CentralEvent::ServiceDataAdvertisement { id, service_data } => {
                (id, Some((HashMap::new(), service_data)))
            }
            CentralEvent::RssiUpdate { id, .. }
            | CentralEvent::DeviceUpdated(id)
            | CentralEvent::ServicesAdvertisement { id, .. } => (id, None),
            CentralEvent::DeviceConnected(id) => {
                self.signal(adapter, &id, Signal::Connected).await;
                return Ok(());
            }
            CentralEvent::DeviceDisconnected(id) => {
                self.signal(adapter, &id, Signal::Disconnected).await;
                return Ok(());
            }
            _ => return Ok(()),
        };
        match self.route(adapter, &id, false).await {
            Some(Target::Advert(i)) => {
                self.heard(i);
                let Some((manufacturer_data, service_data)) = data else {
                    return Ok(());
                };
                let decoder = self.adverts[i].0.decoder;
                let decoded = decode::decode_advert(
                    decoder,
                    &manufacturer_data,
                    &service_data,
                    self.encryption(i, &id),
                );
                self.deliver(i, decoded).await
            }
            _ => Ok(()),
        }
    }

    fn heard(&mut self, i: usize) {
        self.adverts[i].1.heard(Instant::now());
    }

    async fn deliver(
        &mut self,
        i: usize,
        decoded: Option<Result<Decoded, DecodeError>>,
    ) -> Result<(), StoreClosed> {
        let (device, state) = &mut self.adverts[i];
        // A device with a key takes encrypted advertisements only, even
        // if its address could not be told (then none decrypts).
        let decoded = match decoded {
            Some(Ok(d)) if device.bindkey.is_some() && d.sealed.is_none() => {
                Some(Err(DecodeError(
                    "unencrypted BTHome advertisement from a device with a bindkey (refused)"
                        .into(),
                )))
            }
            other => other,
        };
        match decoded {
            None => Ok(()),
            Some(Err(e)) => {
                tracing::debug!(device = %state.name, "undecodable advertisement: {e}");
                state.undecodable(&e);
                Ok(())
            }
            Some(Ok(decoded)) => {
                if let Some(sealed) = decoded.sealed
                    && !state.fresh(sealed)
                {
                    return Ok(());
                }
                state.decoded();
                if decoded.values.is_empty() || !state.accept(Instant::now(), decoded.counter) {
                    return Ok(());
                }
                let reading = state.reading(decoded.values, None);
                state.emit(reading).await.map_err(|_| StoreClosed)
            }
        }
    }

    async fn signal(&mut self, adapter: &Adapter, id: &PeripheralId, signal: Signal) {
        if let Some(Target::Gatt(j)) = self.route(adapter, id, false).await
            && let Some(tx) = &self.gatts[j].signals
        {
            let _ = tx.try_send(signal);
        }
    }

    /// Which device a peripheral is: by the address in its id where every
    /// device has an address, else by its properties (name), cached.
    async fn route(
        &mut self,
        adapter: &Adapter,
        id: &PeripheralId,
        discovered: bool,
    ) -> Option<Target> {
        if let Some(known) = self.routes.get(id) {
            let fresh = known.checked.elapsed() < RECHECK_UNMATCHED;
            if known.target.is_some() || (fresh && !discovered) {
                return known.target;
            }
        }
        let mut address = address_in_id(&id.to_string());
        let mut local_name = None;
        let by_name = self
            .adverts
            .iter()
            .map(|(d, _)| d)
            .chain(self.gatts.iter().map(|g| &g.device))
            .any(|d| d.address.is_none());
        let peripheral = if by_name || address.is_none() || self.has_gatt_match(address) {
            match tokio::time::timeout(CALL_TIMEOUT, adapter.peripheral(id)).await {
                Ok(Ok(p)) => {
                    address = Some(p.address().into_inner());
                    if by_name
                        && let Ok(Ok(Some(props))) =
                            tokio::time::timeout(CALL_TIMEOUT, p.properties()).await
                    {
                        local_name = props.local_name.or(props.advertisement_name);
                    }
                    Some(p)
                }
                _ => None,
            }
        } else {
            None
        };
        let target = address.and_then(|address| {
            let name = local_name.as_deref();
            if let Some(i) = self
                .adverts
                .iter()
                .position(|(d, _)| d.matches(address, name))
            {
                return Some(Target::Advert(i));
            }
            let j = self
                .gatts
                .iter()
                .position(|g| g.device.matches(address, name))?;
            Some(Target::Gatt(j))
        });
        if let (Some(Target::Gatt(j)), Some(p)) = (target, peripheral)
            && let Some(tx) = &self.gatts[j].signals
        {
            let _ = tx.try_send(Signal::Found(p));
        }
        if let Some(target) = target {
            let device = match target {
                Target::Advert(i) => &self.adverts[i].0,
                Target::Gatt(j) => &self.gatts[j].device,
            };
            tracing::info!(device = %device.name, peripheral = %id, "BLE: found {}", device.identity());
        }
        self.routes.insert(
            id.clone(),
            Routing {
                target,
                checked: Instant::now(),
            },
        );
        target
    }

    fn has_gatt_match(&self, address: Option<[u8; 6]>) -> bool {
        address.is_some_and(|a| self.gatts.iter().any(|g| g.device.matches(a, None)))
    }
}

/// The address in a BlueZ peripheral id such as `hci0/dev_A4_C1_38_12_34_56`.
fn address_in_id(id: &str) -> Option<[u8; 6]> {
    let dev = id.rsplit('/').next()?.strip_prefix("dev_")?;
    crate::config::ble::MacAddress::parse(dev.get(..17)?.replace('_', ":").as_str()).map(|m| m.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_restarts_then_power_cycles_with_backoff() {
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut w = Watchdog::new(Duration::from_secs(120), t0);
        assert_eq!(w.due(at(119)), None);
        assert_eq!(w.due(at(120)), Some(Action::RestartDiscovery));
        assert_eq!(w.due(at(121)), None, "once");
        assert_eq!(w.due(at(239)), None);
        assert_eq!(w.due(at(240)), Some(Action::PowerCycle { times: 1 }));
        // Then 4 min, 8 min, … between cycles, at most 30 min.
        assert_eq!(w.due(at(240 + 239)), None);
        assert_eq!(w.due(at(480)), Some(Action::PowerCycle { times: 2 }));
        assert_eq!(w.due(at(480 + 479)), None);
        assert_eq!(w.due(at(960)), Some(Action::PowerCycle { times: 3 }));
        let mut t = 960;
        for times in 4..30 {
            let wait = (120u64 << (times - 1)).min(1800);
            assert_eq!(w.due(at(t + wait - 1)), None, "{times}");
            t += wait;
            assert_eq!(w.due(at(t)), Some(Action::PowerCycle { times }), "{times}");
        }
        // An advertisement ends it; the next silence starts from scratch.
        assert!(w.advert(at(t + 1)));
        assert!(!w.advert(at(t + 2)), "said once");
        assert_eq!(w.due(at(t + 121)), None);
        assert_eq!(w.due(at(t + 122)), Some(Action::RestartDiscovery));
    }

    #[test]
    fn a_watchdog_of_zero_is_off_and_a_new_scan_resets_the_clock() {
        let t0 = Instant::now();
        let mut off = Watchdog::new(Duration::ZERO, t0);
        assert_eq!(off.due(t0 + Duration::from_secs(86_400)), None);
        let mut w = Watchdog::new(Duration::from_secs(60), t0);
        w.restarted_scan(t0 + Duration::from_secs(50));
        assert_eq!(w.due(t0 + Duration::from_secs(100)), None);
        assert_eq!(
            w.due(t0 + Duration::from_secs(110)),
            Some(Action::RestartDiscovery)
        );
    }

    #[test]
    fn addresses_are_read_from_bluez_ids() {
        assert_eq!(
            address_in_id("hci0/dev_A4_C1_38_12_34_5F"),
            Some([0xA4, 0xC1, 0x38, 0x12, 0x34, 0x5F])
        );
        assert_eq!(address_in_id("hci0"), None);
        assert_eq!(address_in_id("hci0/dev_A4_C1"), None);
    }
}
