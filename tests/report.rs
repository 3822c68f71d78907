//! Report by exception and windows end to end, for each kind of source: a
//! constant value is sent at the heartbeat, not every poll; a moving one
//! only beyond its deadband; a window sends the summary of its samples.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use common::modbus_slave::*;
use common::*;

const LONG: Duration = Duration::from_secs(60);

/// Every rule below uses this heartbeat.
const HEARTBEAT_MS: i64 = 1_000;

/// (ts in ms, values) of `device`'s readings, in arrival order, duplicates
/// dropped.
fn readings(messages: &[Message], device: &str) -> Vec<(i64, Value)> {
    let mut seen = HashSet::new();
    messages
        .iter()
        .filter(|m| m.topic.ends_with(&format!("/telemetry/{device}")))
        .map(Message::json)
        .filter(|j| seen.insert(j["seq"].as_i64()))
        .map(|j| {
            assert_eq!(j["quality"], "good", "{j}");
            let ts: jiff::Timestamp = j["ts"].as_str().unwrap().parse().unwrap();
            (ts.as_millisecond(), j["values"].clone())
        })
        .collect()
}

/// Readings the source took, as `P/status` counts them (before any is
/// held back).
fn taken(messages: &[Message], device: &str) -> u64 {
    device_status(messages, device)
        .and_then(|d| d["readings"].as_u64())
        .unwrap_or(0)
}

/// (ts, value) of each reading that carried `point`.
fn sends(readings: &[(i64, Value)], point: &str) -> Vec<(i64, f64)> {
    readings
        .iter()
        .filter_map(|(ts, v)| Some((*ts, v.get(point)?.as_f64()?)))
        .collect()
}

/// `constant` never changed: it is sent first, then once per heartbeat,
/// far less often than the `polls` taken. `moving` changed every poll or
/// two: each send is beyond `band` from the one before, unless its
/// heartbeat was due.
fn assert_by_exception(
    readings: &[(i64, Value)],
    polls: u64,
    constant: &str,
    moving: &str,
    band: f64,
) {
    let fixed = sends(readings, constant);
    assert!(
        fixed.len() >= 2,
        "sent at the heartbeat too: {fixed:?} of {polls} polls"
    );
    assert!(
        (fixed.len() as u64) * 4 <= polls,
        "not every poll: {} sends of {polls} polls",
        fixed.len()
    );
    for pair in fixed.windows(2) {
        // Polls land anywhere within the heartbeat: allow for their
        // spacing, not more.
        assert!(
            pair[1].0 - pair[0].0 >= HEARTBEAT_MS - 200,
            "{constant} sent before its heartbeat: {fixed:?}"
        );
        assert_eq!(pair[0].1, pair[1].1);
    }
    let moved = sends(readings, moving);
    assert!(moved.len() >= 3, "{moved:?}");
    assert!(
        (moved.len() as u64) * 3 / 2 <= polls,
        "{moving} held back within its band: {} sends of {polls} polls",
        moved.len()
    );
    for pair in moved.windows(2) {
        let ((t0, v0), (t1, v1)) = (pair[0], pair[1]);
        assert!(
            (v1 - v0).abs() > band || t1 - t0 >= HEARTBEAT_MS - 200,
            "{moving} sent within its deadband: {v0} then {v1} ({moved:?})"
        );
    }
}

#[test]
fn simulated_constant_at_the_heartbeat_ramp_beyond_its_deadband() {
    let broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-report-sim", "fieldgate/gw/#");
    let dir = tempfile::tempdir().unwrap();
    // The ramp rises 10 per poll: beyond 25 every third poll.
    let device = "  - name: sim\n    kind: simulated\n    poll: 100ms\n    count: 40\n    heartbeat: 1s\n    points:\n      - { name: fixed, signal: constant, value: 7, deadband: 0.5 }\n      - { name: ramp, signal: ramp, min: 0, max: 1000, period: 10s, deadband: 25 }\n";
    let config = write_config(dir.path(), broker.port, "", device);
    let mut gw = Gateway::start(&config, dir.path());
    assert!(
        sub.wait_until(LONG, |m| taken(m, "sim") >= 40),
        "{}",
        gw.log()
    );
    // The last readings are published before the next status.
    std::thread::sleep(Duration::from_millis(1_500));
    let messages = sub.messages();
    let readings = readings(&messages, "sim");
    assert!(
        readings.len() < 40,
        "a reading with nothing to send is not stored: {}",
        readings.len()
    );
    assert_by_exception(&readings, 40, "fixed", "ramp", 25.0);
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn serial_constant_at_the_heartbeat_counter_beyond_its_deadband() {
    let broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-report-serial", "fieldgate/gw/#");
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("tty");
    let device = format!(
        "  - name: line\n    kind: serial\n    port: {}\n    format: json\n    heartbeat: 1s\n    fields:\n      c: {{ point: fixed, deadband: 0.5 }}\n      m: {{ point: moving, deadband: 3 }}\n",
        link.display()
    );
    let config = write_config(dir.path(), broker.port, "", &device);
    let mut pty = Pty::start(&link);
    let mut gw = Gateway::start(&config, dir.path());
    assert!(gw.wait_for_log("serial port open", LONG), "{}", gw.log());
    // One line per 50 ms for 4 s; `m` rises by one per line.
    for i in 0..80 {
        pty.send(format!("{{\"c\": 7, \"m\": {i}}}\n").as_bytes());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        sub.wait_until(LONG, |m| taken(m, "line") >= 80),
        "{}",
        gw.log()
    );
    std::thread::sleep(Duration::from_millis(1_500));
    let readings = readings(&sub.messages(), "line");
    assert_by_exception(&readings, 80, "fixed", "moving", 3.0);
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn modbus_constant_at_the_heartbeat_register_beyond_its_deadband() {
    let broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-report-modbus", "fieldgate/gw/#");
    let mut slave = Slave::new([(1, Tables::default().holding(0, &[7, 0]))]);
    let port = slave.serve_tcp(0);
    let dir = tempfile::tempdir().unwrap();
    let device = format!(
        "  - name: plc\n    kind: modbus\n    tcp: {{ host: 127.0.0.1, port: {port} }}\n    poll: 100ms\n    heartbeat: 1s\n    points:\n      - {{ name: fixed, register: holding, address: 0, deadband: 0.5 }}\n      - {{ name: moving, register: holding, address: 1, deadband: 3 }}\n"
    );
    let config = write_config(dir.path(), broker.port, "", &device);
    let mut gw = Gateway::start(&config, dir.path());
    assert!(
        sub.wait_until(LONG, |m| !readings(m, "plc").is_empty()),
        "{}",
        gw.log()
    );
    let polls_before = taken(&sub.messages(), "plc");
    // The register rises by one per 50 ms for 4 s.
    for i in 1..=80u16 {
        if let Some(unit) = slave.state().units.get_mut(&1) {
            unit.holding.insert(1, i);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1_500));
    let messages = sub.messages();
    let polls = taken(&messages, "plc") - polls_before;
    assert!(polls >= 20, "{polls} polls\n{}", gw.log());
    let readings = readings(&messages, "plc");
    assert_by_exception(&readings, polls, "fixed", "moving", 3.0);
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    slave.kill();
}

/// The simulated ramp at `ts_ms`, as the test computes it.
fn ramp(ts_ms: i64) -> f64 {
    let phase = ts_ms.rem_euclid(10_000) as f64 / 10_000.0;
    (1_000.0 * phase * 1e6).round() / 1e6
}

#[test]
fn a_one_second_window_summarises_a_100ms_ramp() {
    let broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-report-window", "fieldgate/gw/#");
    let dir = tempfile::tempdir().unwrap();
    // Two identical ramps: `raw` sent every poll, `agg` per window.
    let device = "  - name: sim\n    kind: simulated\n    poll: 100ms\n    count: 35\n    points:\n      - { name: raw, signal: ramp, min: 0, max: 1000, period: 10s }\n      - { name: agg, signal: ramp, min: 0, max: 1000, period: 10s, aggregate: { window: 1s, functions: [min, max, mean, last, count] } }\n";
    let config = write_config(dir.path(), broker.port, "", device);
    let mut gw = Gateway::start(&config, dir.path());
    // The source stops after 35 samples; the timer closes the last window.
    let counted = |m: &[Message]| {
        let all = readings(m, "sim");
        let n: u64 = all
            .iter()
            .filter_map(|(_, v)| v.get("agg")?.get("count")?.as_u64())
            .sum();
        n >= 35
    };
    assert!(sub.wait_until(LONG, counted), "{}", gw.log());
    let readings = readings(&sub.messages(), "sim");
    let raw = sends(&readings, "raw");
    assert_eq!(raw.len(), 35);
    for (ts, value) in &raw {
        assert_eq!(*value, ramp(*ts), "the ramp at {ts}");
    }
    let windows: Vec<(i64, &Value)> = readings
        .iter()
        .filter_map(|(ts, v)| Some((*ts, v.get("agg")?)))
        .collect();
    assert!(windows.len() >= 3, "{windows:?}");
    for (end, summary) in &windows {
        assert_eq!(end % 1_000, 0, "aligned to the second: {end}");
        let samples: Vec<f64> = raw
            .iter()
            .filter(|(ts, _)| (end - 1_000..*end).contains(ts))
            .map(|(_, v)| *v)
            .collect();
        assert!(!samples.is_empty(), "a window with no sample is not sent");
        let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
        let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        let close = |key: &str, want: f64| {
            let got = summary[key].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-6,
                "{key}: {got} != {want} in {summary}"
            );
        };
        close("min", min);
        close("max", max);
        close("mean", mean);
        close("last", *samples.last().unwrap());
        assert_eq!(summary["count"], json!(samples.len()), "{summary}");
    }
    // Nothing else is sent of `agg`.
    assert!(
        readings
            .iter()
            .all(|(_, v)| v.get("agg").is_none_or(Value::is_object))
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}
