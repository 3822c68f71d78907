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
use super::write::Requests;
use crate::config::ble::{BleConfig, BleDevice};
use crate::reading::Delivery;
use crate::sources::Ingest;

/// How long an unmatched peripheral is not looked up again (its name may
/// arrive later).
const RECHECK_UNMATCHED: Duration = Duration::from_secs(5);
/// A D-Bus call that takes longer than this means BlueZ is gone.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

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
        adapter
            .start_scan(ScanFilter::default())
            .await
            .map_err(|e| explain(&e))?;
        tracing::info!(adapter = %name, devices = self.all.len(), "BLE: scanning");
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
    fn addresses_are_read_from_bluez_ids() {
        assert_eq!(
            address_in_id("hci0/dev_A4_C1_38_12_34_5F"),
            Some([0xA4, 0xC1, 0x38, 0x12, 0x34, 0x5F])
        );
        assert_eq!(address_in_id("hci0"), None);
        assert_eq!(address_in_id("hci0/dev_A4_C1"), None);
    }
}
