//! Simulated devices: sine, ramp, random and constant signals at a fixed
//! poll interval. The demo and the test suite's load generator.

mod signal;

use serde_json::{Map, Value};
use tokio::time::{MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

use super::Ingest;
use crate::config::simulated::SimulatedDevice;
use crate::reading::Delivery;
use crate::reading::{Quality, Reading};

/// Emits one reading per `poll` until cancelled (or `count` readings are out).
pub async fn run(
    device: SimulatedDevice,
    delivery: Delivery,
    ingest: Ingest,
    cancel: CancellationToken,
) {
    let mut tick = interval(device.poll.get());
    // A stalled process should not answer with a burst of stale samples.
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut sent: u64 = 0;
    while device.count.is_none_or(|limit| sent < limit) {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let stamp = ingest.clock().stamp();
        let ts_ms = stamp.wall_ms;
        let values: Map<String, Value> = device
            .points
            .iter()
            .map(|p| (p.name.to_string(), Value::from(p.sample(ts_ms))))
            .collect();
        let reading = Reading {
            device: device.name.clone(),
            ts_ms,
            mono_ms: stamp.mono_ms,
            unsynced: stamp.unsynced,
            values,
            quality: Quality::Good,
            error: None,
            delivery,
        };
        if ingest.append(reading).await.is_err() {
            break; // the store is shutting down
        }
        sent += 1;
    }
    tracing::debug!(device = %device.name, sent, "simulated source stopped");
}
