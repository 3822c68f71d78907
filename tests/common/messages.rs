//! Reading what a [`Subscriber`](super::Subscriber) received: telemetry
//! seqs, per-device order, status counters and values.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::Message;

/// Telemetry messages as (device, seq, qos), in arrival order.
pub fn telemetry(messages: &[Message]) -> Vec<(String, i64, u8)> {
    messages
        .iter()
        .filter(|m| m.topic.contains("/telemetry/"))
        .map(|m| {
            let json = m.json();
            let device = json["device"].as_str().expect("device").to_owned();
            let seq = json["seq"].as_i64().expect("seq");
            (device, seq, m.qos)
        })
        .collect()
}

/// Distinct seqs received.
pub fn distinct_seqs(messages: &[Message]) -> BTreeSet<i64> {
    telemetry(messages)
        .into_iter()
        .map(|(_, seq, _)| seq)
        .collect()
}

/// The seqs `readings` readings of `devices` simulated devices (see
/// `sim_device`) get from a fresh store: the store's seqs are shared with
/// each device's `online` message, which the telemetry topics do not
/// carry, so `devices` of the first `readings + devices` are not readings.
pub fn reading_seqs_fit(seqs: &BTreeSet<i64>, readings: usize, devices: usize) -> bool {
    let top = (readings + devices) as i64;
    seqs.len() == readings && seqs.iter().all(|s| (1..=top).contains(s))
}

/// Panics unless every device's readings arrived in ascending seq order,
/// ignoring re-sent duplicates of already-seen seqs.
pub fn assert_ordered_per_device(messages: &[Message]) {
    let mut last: HashMap<String, i64> = Default::default();
    let mut seen = HashSet::new();
    for (device, seq, _) in telemetry(messages) {
        if !seen.insert(seq) {
            continue;
        }
        let prev = last.insert(device.clone(), seq).unwrap_or(0);
        assert!(
            seq > prev,
            "device {device}: seq {seq} arrived after {prev}"
        );
    }
}

/// The latest `P/status` payload, if any.
pub fn latest_status(messages: &[Message]) -> Option<serde_json::Value> {
    messages
        .iter()
        .rfind(|m| m.topic.ends_with("/status"))
        .map(Message::json)
}

/// The latest `P/status` counters of `device` (`devices.<device>`), if any.
pub fn device_status(messages: &[Message], device: &str) -> Option<serde_json::Value> {
    messages
        .iter()
        .rev()
        .filter(|m| m.topic.ends_with("/status"))
        .find_map(|m| m.json().get("devices")?.get(device).cloned())
}

/// The values of `device`'s readings, in arrival order, duplicates dropped.
pub fn device_values(messages: &[Message], device: &str) -> Vec<serde_json::Value> {
    let mut seen = HashSet::new();
    messages
        .iter()
        .filter(|m| m.topic.ends_with(&format!("/telemetry/{device}")))
        .map(Message::json)
        .filter(|j| seen.insert(j["seq"].as_i64()))
        .map(|j| j["values"].clone())
        .collect()
}
