//! A `gatt` device's connection: connect, discover, subscribe to the
//! `notify` characteristics and read the `read` ones every `poll`; when the
//! link drops, reconnect with capped exponential backoff.

use std::time::{Duration, Instant};

use btleplug::api::{Characteristic as GattCharacteristic, Peripheral as _, WriteType};
use btleplug::platform::Peripheral;
use futures::StreamExt;
use serde_json::Map;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::adapter::explain;
use super::decode::value;
use super::device::DeviceState;
use super::write::{Requests, WriteError, WriteRequest};
use crate::backoff::Backoff;
use crate::config::ble::{BleDevice, Characteristic, Mode};
use crate::reading::Delivery;
use crate::sources::Ingest;

/// Connecting or discovering services longer than this fails the attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the scanner tells a connection about its peripheral.
#[derive(Debug)]
pub enum Signal {
    /// The scanner saw the device: this is its peripheral.
    Found(Peripheral),
    Connected,
    Disconnected,
}

/// How a session ended.
enum End {
    Cancelled,
    /// The store is shutting down.
    Stopped,
    Failed(String),
}

pub async fn run(
    device: BleDevice,
    delivery: Delivery,
    ingest: Ingest,
    mut signals: mpsc::Receiver<Signal>,
    requests: Requests,
    cancel: CancellationToken,
) {
    // The previous connection task of this device has ended: its scanner
    // joined it before starting this one.
    let mut writes = requests.lock_owned().await;
    let mut state = DeviceState::new(&device, delivery, &ingest, Instant::now());
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut peripheral: Option<Peripheral> = None;
    let mut attempts: u64 = 0;
    loop {
        // Wait for the scanner to see the device.
        while peripheral.is_none() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if let Some(reading) = state.check_stale(Instant::now())
                        && state.emit(reading).await.is_err()
                    {
                        return;
                    }
                }
                signal = signals.recv() => match signal {
                    Some(Signal::Found(p)) => peripheral = Some(p),
                    Some(_) => {}
                    None => return,
                },
                Some(request) = writes.recv() => refuse(request, "not seen yet"),
            }
        }
        let Some(p) = peripheral.clone() else {
            continue;
        };
        attempts += 1;
        let link = GattLink {
            signals: &mut signals,
            writes: &mut writes,
            backoff: &mut backoff,
            cancel: &cancel,
        };
        let end = session(&p, &device, &mut state, link, attempts).await;
        let cause = match end {
            End::Cancelled => {
                let _ = tokio::time::timeout(Duration::from_secs(2), p.disconnect()).await;
                return;
            }
            End::Stopped => return,
            End::Failed(cause) => cause,
        };
        if let Some(reading) = state.failed(cause)
            && state.emit(reading).await.is_err()
        {
            return;
        }
        let delay = backoff.next_delay();
        tracing::debug!(device = %device.name, "reconnecting in {delay:?}");
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => break,
                signal = signals.recv() => match signal {
                    Some(Signal::Found(p)) => peripheral = Some(p),
                    Some(_) => {}
                    None => return,
                },
                Some(request) = writes.recv() => refuse(request, "reconnecting"),
            }
        }
    }
}

fn refuse(request: WriteRequest, why: &str) {
    let _ = request
        .reply
        .send(Err(WriteError::NotConnected(why.to_owned())));
}

/// What a connection shares with the task that makes it.
struct GattLink<'a> {
    signals: &'a mut mpsc::Receiver<Signal>,
    writes: &'a mut mpsc::Receiver<WriteRequest>,
    backoff: &'a mut Backoff,
    cancel: &'a CancellationToken,
}

/// One connection, from connect to its end.
async fn session(
    p: &Peripheral,
    device: &BleDevice,
    state: &mut DeviceState,
    link: GattLink<'_>,
    attempt: u64,
) -> End {
    let GattLink {
        signals,
        writes,
        backoff,
        cancel,
    } = link;
    let setup = async {
        if !p.is_connected().await.unwrap_or(false) {
            timed(CONNECT_TIMEOUT, "connect", p.connect()).await?;
        }
        timed(CONNECT_TIMEOUT, "service discovery", p.discover_services()).await?;
        let found = p.characteristics();
        let mut chars = Vec::new();
        for c in &device.characteristics {
            let Some(gatt) = found
                .iter()
                .find(|g| g.uuid == c.uuid.0 && g.service_uuid == c.service.0)
            else {
                return Err(format!(
                    "the device has no characteristic {} in service {}",
                    c.uuid, c.service
                ));
            };
            chars.push((c, gatt.clone()));
        }
        let notifications = p.notifications().await.map_err(|e| explain(&e))?;
        for (c, gatt) in &chars {
            if c.mode == Mode::Notify {
                timed(READ_TIMEOUT, "subscribe", p.subscribe(gatt)).await?;
            }
        }
        Ok::<_, String>((chars, notifications))
    };
    let (chars, mut notifications) = tokio::select! {
        _ = cancel.cancelled() => return End::Cancelled,
        result = setup => match result {
            Ok(ready) => ready,
            Err(e) => return End::Failed(format!("cannot connect: {e}")),
        },
    };
    backoff.reset();
    let what = if attempt == 1 {
        "connected"
    } else {
        "reconnected"
    };
    state.recovered(Instant::now());
    tracing::info!(device = %device.name, attempt, "BLE: {what}");

    let reads: Vec<&(&Characteristic, GattCharacteristic)> =
        chars.iter().filter(|(c, _)| c.mode == Mode::Read).collect();
    let mut poll = tokio::time::interval(device.poll.get());
    let mut stale_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let values = tokio::select! {
            _ = cancel.cancelled() => return End::Cancelled,
            signal = signals.recv() => match signal {
                Some(Signal::Disconnected) => return End::Failed("the device dropped the connection".into()),
                Some(_) => continue,
                None => return End::Cancelled,
            },
            note = notifications.next() => {
                let Some(note) = note else {
                    return End::Failed("the notification stream ended".into());
                };
                let Some((c, _)) = chars.iter().find(|(c, _)| {
                    c.uuid.0 == note.uuid && c.service.0 == note.service_uuid && c.mode == Mode::Notify
                }) else {
                    continue;
                };
                state.heard(Instant::now());
                match value::decode(c, &note.value) {
                    Ok(v) => Map::from_iter([(c.point.to_string(), v)]),
                    Err(e) => {
                        state.undecodable(&e);
                        continue;
                    }
                }
            }
            _ = poll.tick(), if !reads.is_empty() => {
                let mut values = Map::new();
                for (c, gatt) in &reads {
                    let bytes = match timed(READ_TIMEOUT, "read", p.read(gatt)).await {
                        Ok(bytes) => bytes,
                        Err(e) => return End::Failed(format!("cannot read {}: {e}", c.point)),
                    };
                    match value::decode(c, &bytes) {
                        Ok(v) => {
                            values.insert(c.point.to_string(), v);
                        }
                        Err(e) => state.undecodable(&e),
                    }
                }
                state.heard(Instant::now());
                values
            }
            Some(request) = writes.recv() => {
                if request.deadline.passed() {
                    let _ = request.reply.send(Err(WriteError::Expired));
                    continue;
                }
                let target = chars.iter().find(|(c, _)| c.point.as_str() == request.point);
                let result = match target {
                    Some((_, gatt)) => timed(
                        READ_TIMEOUT,
                        "write",
                        p.write(gatt, &request.bytes, WriteType::WithResponse),
                    )
                    .await
                    .map_err(WriteError::Failed),
                    None => Err(WriteError::NotWritable(request.point.clone())),
                };
                if let Err(e) = &result {
                    tracing::warn!(device = %device.name, point = %request.point, "{e}");
                }
                let _ = request.reply.send(result);
                continue;
            }
            _ = stale_tick.tick() => {
                if let Some(reading) = state.check_stale(Instant::now())
                    && state.emit(reading).await.is_err()
                {
                    return End::Stopped;
                }
                continue;
            }
        };
        if values.is_empty() || !state.accept(Instant::now(), None) {
            continue;
        }
        let reading = state.reading(values, None);
        if state.emit(reading).await.is_err() {
            return End::Stopped;
        }
    }
}

async fn timed<T>(
    limit: Duration,
    what: &str,
    call: impl Future<Output = btleplug::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {}", explain(&e))),
        Err(_) => Err(format!("{what}: no answer within {limit:?}")),
    }
}
