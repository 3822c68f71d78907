//! Modbus end to end: a slave served by tokio-modbus (TCP on a free port,
//! RTU over a pty pair) → the gateway → mosquitto → a subscriber. The slave
//! counts the requests it answers, so coalescing and the cost of a dead
//! unit are measured where they happen.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fieldgate::clock::Deadline;
use fieldgate::sources::WriteFault;
use serde_json::{Value, json};
use tokio_modbus::prelude::ExceptionCode;

use common::modbus_slave::*;
use common::*;

const LONG: Duration = Duration::from_secs(60);

// ---- helpers -------------------------------------------------------------------------------

/// (ts in ms, values, quality, error) of `device`'s readings, in arrival order.
fn readings(sub: &Subscriber, device: &str) -> Vec<(i64, Value, String, Option<String>)> {
    sub.messages()
        .iter()
        .filter(|m| m.topic.ends_with(&format!("/telemetry/{device}")))
        .map(|m| {
            let j = m.json();
            let ts: jiff::Timestamp = j["ts"].as_str().unwrap().parse().unwrap();
            let error = j.get("error").and_then(|e| e.as_str()).map(str::to_owned);
            let quality = j["quality"].as_str().unwrap().to_owned();
            (ts.as_millisecond(), j["values"].clone(), quality, error)
        })
        .collect()
}

fn wait_for(sub: &Subscriber, gw: &Gateway, what: &str, pred: impl Fn(&Subscriber) -> bool) {
    let deadline = Instant::now() + LONG;
    while !pred(sub) {
        assert!(
            Instant::now() < deadline,
            "waited in vain for {what}\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn f32_words(x: f32) -> [u16; 2] {
    let b = x.to_bits();
    [(b >> 16) as u16, b as u16]
}

fn u64_words(b: u64) -> [u16; 4] {
    [
        (b >> 48) as u16,
        (b >> 32) as u16,
        (b >> 16) as u16,
        b as u16,
    ]
}

fn f64_words(x: f64) -> [u16; 4] {
    u64_words(x.to_bits())
}

fn swapped(words: &[u16]) -> Vec<u16> {
    words.iter().map(|w| w.swap_bytes()).collect()
}

fn reversed(words: &[u16]) -> Vec<u16> {
    words.iter().rev().copied().collect()
}

/// Unit 1 of the TCP slave: every type in every order, at known addresses.
fn every_type() -> Tables {
    let abcd = [0x1234, 0x5678];
    let i32_words = [
        ((-123_456i32 as u32) >> 16) as u16,
        (-123_456i32 as u32) as u16,
    ];
    let i64_words = u64_words(-5i64 as u64);
    let mut t = Tables::default()
        .holding(0, &[65_534, 0xFFFE])
        .holding(2, &abcd)
        .holding(4, &reversed(&abcd))
        .holding(6, &swapped(&abcd))
        .holding(8, &swapped(&reversed(&abcd)))
        .holding(10, &i32_words)
        .holding(12, &[0x0123, 0x4567, 0x89AB, 0xCDEF])
        .holding(16, &reversed(&i64_words))
        .holding(20, &f32_words(230.1))
        .holding(22, &reversed(&f32_words(-12.5)))
        .holding(24, &swapped(&f32_words(1.5)))
        .holding(26, &swapped(&reversed(&f32_words(0.25))))
        .holding(28, &f64_words(-1234.5678))
        .holding(32, &reversed(&f64_words(6.022_140_76e23)))
        .holding(36, &[0x5344, 0x4D36, 0x3330, 0x2D4D]) // "SDM630-M"
        // 42 and 43 are not points: max_gap 2 reads across them.
        .holding(40, &[0b1000_0001, 2301, 0xDEAD, 0xBEEF])
        .holding(44, &[(-150i16) as u16])
        .holding(100, &[0, 0]);
    t.input.insert(0, f32_words(50.0)[0]);
    t.input.insert(1, f32_words(50.0)[1]);
    t.coils.extend([(0, true), (1, false), (2, true)]);
    t.discrete.extend([(0, false), (1, true)]);
    t
}

const EVERY_TYPE_POINTS: &str = "
      - { name: u16, register: holding, address: 0 }
      - { name: i16, register: holding, address: 1, type: i16 }
      - { name: u32-abcd, register: holding, address: 2, type: u32 }
      - { name: u32-cdab, register: holding, address: 4, type: u32, word_order: little }
      - { name: u32-badc, register: holding, address: 6, type: u32, byte_order: little }
      - { name: u32-dcba, register: holding, address: 8, type: u32, word_order: little, byte_order: little }
      - { name: i32, register: holding, address: 10, type: i32 }
      - { name: u64, register: holding, address: 12, type: u64 }
      - { name: i64-little, register: holding, address: 16, type: i64, word_order: little }
      - { name: f32-abcd, register: holding, address: 20, type: f32 }
      - { name: f32-cdab, register: holding, address: 22, type: f32, word_order: little }
      - { name: f32-badc, register: holding, address: 24, type: f32, byte_order: little }
      - { name: f32-dcba, register: holding, address: 26, type: f32, word_order: little, byte_order: little }
      - { name: f64, register: holding, address: 28, type: f64 }
      - { name: f64-little, register: holding, address: 32, type: f64, word_order: little }
      - { name: model, register: holding, address: 36, type: string, length: 4 }
      - { name: bit0, register: holding, address: 40, bit: 0 }
      - { name: bit1, register: holding, address: 40, bit: 1 }
      - { name: bit7, register: holding, address: 40, bit: 7 }
      - { name: scaled, register: holding, address: 41, scale: 0.1, offset: -40 }
      - { name: negative-scaled, register: holding, address: 44, type: i16, scale: 0.1 }
      - { name: setpoint, register: holding, address: 100, type: u32, word_order: little, writable: true, min: 0, max: 100000 }
      - { name: frequency, register: input, address: 0, type: f32 }
      - { name: pump, register: coil, address: 0, writable: true }
      - { name: fan, register: coil, address: 1 }
      - { name: heater, register: coil, address: 2 }
      - { name: door, register: discrete, address: 0 }
      - { name: alarm, register: discrete, address: 1 }
";

/// Whole values are integers (`50`, not `50.0`), as from every source.
fn expected_values() -> Value {
    json!({
        "u16": 65534, "i16": -2,
        "u32-abcd": 0x1234_5678, "u32-cdab": 0x1234_5678, "u32-badc": 0x1234_5678, "u32-dcba": 0x1234_5678,
        "i32": -123_456, "u64": 0x0123_4567_89AB_CDEFu64, "i64-little": -5,
        "f32-abcd": 230.1, "f32-cdab": -12.5, "f32-badc": 1.5, "f32-dcba": 0.25,
        "f64": -1234.5678, "f64-little": 6.022_140_76e23,
        "model": "SDM630-M", "bit0": true, "bit1": false, "bit7": true,
        "scaled": 190.1, "negative-scaled": -15, "setpoint": 0, "frequency": 50,
        "pump": true, "fan": false, "heater": true, "door": false, "alarm": true,
    })
}

fn tcp_device(name: &str, port: u16, extra: &str, points: &str) -> String {
    format!(
        "  - name: {name}\n    kind: modbus\n    tcp: {{ host: 127.0.0.1, port: {port} }}\n    poll: 200ms\n    timeout: 500ms\n{extra}    points:{points}"
    )
}

/// A broker, a TCP slave with [`every_type`] as unit 1, a temp dir and a
/// subscriber to all telemetry.
fn tcp_rig(client: &str) -> (Broker, Slave, u16, tempfile::TempDir, Subscriber) {
    let broker = Broker::start();
    let mut slave = Slave::new([(1, every_type())]);
    let port = slave.serve_tcp(0);
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::connect(broker.port, client, "fieldgate/gw/telemetry/#");
    (broker, slave, port, dir, sub)
}

// ---- tests -----------------------------------------------------------------------------------

#[test]
fn tcp_every_type_and_order_reaches_the_subscriber_in_five_coalesced_reads() {
    let (broker, slave, port, dir, sub) = tcp_rig("check-modbus-types");
    let device = tcp_device("plc", port, "    max_gap: 2\n", EVERY_TYPE_POINTS);
    let config = write_config(dir.path(), broker.port, "", &device);
    let mut gw = Gateway::start(&config, dir.path());

    wait_for(&sub, &gw, "five readings", |s| {
        readings(s, "plc").len() >= 5
    });
    for (_, values, quality, error) in readings(&sub, "plc") {
        assert_eq!((quality.as_str(), error), ("good", None));
        assert_eq!(values, expected_values());
    }

    // One read per table, two for the holding registers (0-44 across the
    // gap, and 100-101), whatever the number of polls.
    let seen = slave.seen();
    let mut shapes: BTreeMap<(u8, u16, u16), usize> = BTreeMap::new();
    for s in &seen {
        *shapes.entry((s.function, s.address, s.count)).or_default() += 1;
    }
    let reads: Vec<(u8, u16, u16)> = shapes.keys().copied().collect();
    assert_eq!(
        reads,
        [(1, 0, 3), (2, 0, 2), (3, 0, 45), (3, 100, 2), (4, 0, 2)]
    );
    let polls = shapes[&(3, 0, 45)];
    assert!(
        shapes.values().all(|n| n.abs_diff(polls) <= 1),
        "{shapes:?}"
    );
    assert!(polls >= 5);
    eprintln!("{} requests for {polls} polls of 28 points", seen.len());

    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    assert!(!gw.log().contains("WARN"), "{}", gw.log());
}

#[test]
fn exceptions_and_a_killed_server_give_bad_readings_then_recovery() {
    let (broker, mut slave, port, dir, sub) = tcp_rig("check-modbus-faults");
    let points = "
      - { name: u16, register: holding, address: 0, deadband: 1 }
      - { name: frequency, register: input, address: 0, type: f32 }
";
    let config = write_config(
        dir.path(),
        broker.port,
        "",
        &tcp_device("plc", port, "", points),
    );
    let mut gw = Gateway::start(&config, dir.path());
    // Readings after the `from`-th, and how many of them have `quality`.
    let since = |s: &Subscriber, from: usize| readings(s, "plc").split_off(from);
    let count = |s: &Subscriber, from: usize, quality: &str| {
        since(s, from).iter().filter(|r| r.2 == quality).count()
    };
    wait_for(&sub, &gw, "good readings", |s| count(s, 0, "good") >= 3);

    // The device refuses every request: one bad reading says why, however
    // many polls fail. (A poll cut in two by the change may add one with
    // only one of the points failed.)
    let refused = "u16: reading holding 0-0: exception 0x02 (Illegal data address); \
         frequency: reading input 0-1: exception 0x02 (Illegal data address)";
    let from = readings(&sub, "plc").len();
    slave
        .state()
        .refuse
        .insert(1, ExceptionCode::IllegalDataAddress);
    let full = |s: &Subscriber| {
        let all = since(s, from);
        all.into_iter()
            .filter(|r| r.3.as_deref() == Some(refused))
            .collect::<Vec<_>>()
    };
    wait_for(&sub, &gw, "a bad reading", |s| !full(s).is_empty());
    let requests_before = slave.seen().len();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        slave.seen().len() >= requests_before + 10,
        "polling goes on"
    );
    let bad = full(&sub);
    assert_eq!(bad.len(), 1, "once per change of fault: {bad:?}");
    assert_eq!(bad[0].1, json!({}), "failed points are left out");
    assert!(count(&sub, from, "bad") <= 2);

    // Recovery publishes every value again, deadband or not.
    let from = readings(&sub, "plc").len();
    slave.state().refuse.clear();
    wait_for(&sub, &gw, "recovery", |s| count(s, from, "good") >= 1);
    let back = since(&sub, from)
        .into_iter()
        .find(|r| r.2 == "good")
        .unwrap();
    // A whole value is an integer, as from every other kind of source.
    assert_eq!(back.1, json!({"u16": 65534, "frequency": 50}));

    // The server dies: connections close, connects are refused.
    let from = readings(&sub, "plc").len();
    slave.kill();
    wait_for(&sub, &gw, "bad readings after the kill", |s| {
        count(s, from, "bad") >= 1
    });
    std::thread::sleep(Duration::from_secs(2));
    let errors: Vec<String> = since(&sub, from).into_iter().filter_map(|r| r.3).collect();
    assert!(
        (1..=3).contains(&errors.len())
            && errors
                .iter()
                .any(|e| e.starts_with("cannot connect to 127.0.0.1")),
        "{errors:?}\n{}",
        gw.log()
    );
    let from = readings(&sub, "plc").len();
    slave.serve_tcp(port);
    wait_for(&sub, &gw, "recovery after the restart", |s| {
        count(s, from, "good") >= 1
    });
    assert_eq!(readings(&sub, "plc").pop().unwrap().2, "good");

    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    let log = gw.log();
    assert_eq!(log.matches("reading again").count(), 2, "{log}");
}

#[test]
fn rtu_units_share_a_port_and_a_silent_unit_costs_one_timeout_per_poll() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let port_link = dir.path().join("ttyUSB0");
    let unit = |value: u16| Tables::default().holding(0, &[value, value + 1]);
    let mut slave = Slave::new([(1, unit(100)), (2, unit(200))]);
    slave.serve_rtu(&port_link);
    let sub = Subscriber::connect(broker.port, "check-modbus-rtu", "fieldgate/gw/telemetry/#");
    let rtu = format!(
        "{{ port: {}, baud: 19200, parity: even }}",
        port_link.display()
    );
    let device = |name: &str, unit: u8, timeout: &str, retries: u8| {
        format!(
            "  - name: {name}\n    kind: modbus\n    rtu: {rtu}\n    unit: {unit}\n    poll: 300ms\n    timeout: {timeout}\n    retries: {retries}\n    points:\n      - {{ name: a, register: holding, address: 0 }}\n      - {{ name: b, register: holding, address: 1 }}\n"
        )
    };
    // The silent unit waits 500ms per request and would retry three times.
    let devices = device("meter-1", 1, "1s", 1)
        + &device("meter-2", 2, "1s", 1)
        + &device("ghost", 3, "500ms", 3);
    let config = write_config(dir.path(), broker.port, "", &devices);
    let mut gw = Gateway::start(&config, dir.path());

    wait_for(&sub, &gw, "the ghost's fault", |s| {
        !readings(s, "ghost").is_empty()
    });
    let fault_ts = readings(&sub, "ghost")[0].0;
    std::thread::sleep(Duration::from_secs(7));
    let measured_from = fault_ts + 2_500;
    for (device, first) in [("meter-1", 100), ("meter-2", 200)] {
        let all = readings(&sub, device);
        assert!(
            all.iter()
                .all(|r| r.1 == json!({"a": first, "b": first + 1}) && r.2 == "good")
        );
        let ts: Vec<i64> = all
            .iter()
            .map(|r| r.0)
            .filter(|t| *t >= measured_from)
            .collect();
        let gaps: Vec<i64> = ts.windows(2).map(|w| w[1] - w[0]).collect();
        // Each round: poll 300ms, then the ghost's one timeout of 500ms
        // delays the next poll by at most that (plus slack for a loaded
        // machine); with its three retries the gaps would be 2s.
        let worst = gaps.iter().copied().max().unwrap_or_default();
        assert!(gaps.len() >= 8, "{device}: {gaps:?}");
        assert!(worst <= 300 + 500 + 600, "{device}: gaps {gaps:?}");
        eprintln!(
            "{device}: {} polls in the window, worst gap {worst}ms",
            gaps.len()
        );
    }
    // Once silent, the ghost gets one request per poll, no retries, and
    // every round the others get their turn.
    let seen = slave.seen();
    let third_ghost = seen.iter().filter(|s| s.unit == 3).nth(2).unwrap().at;
    let late: Vec<u8> = seen
        .iter()
        .filter(|s| s.at > third_ghost)
        .map(|s| s.unit)
        .collect();
    assert!(late.windows(2).all(|w| w != [3, 3]), "{late:?}");
    // And after three silent polls it is asked less and less often.
    let polls = |unit| late.iter().filter(|u| **u == unit).count();
    assert!(polls(3) * 3 <= polls(1), "{late:?}");
    let ghost_readings = readings(&sub, "ghost");
    assert_eq!(ghost_readings.len(), 1, "{ghost_readings:?}");
    assert_eq!(
        ghost_readings[0].3.as_deref(),
        Some("no answer within 500ms")
    );

    let log = gw.log();
    let warned = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("ghost"));
    assert_eq!(warned.count(), 1, "logged once, not per poll\n{log}");

    // The USB adapter is unplugged, then plugged back in (as another pty).
    slave.kill();
    let _ = std::fs::remove_file(&port_link);
    wait_for(&sub, &gw, "the unplugged port", |s| {
        readings(s, "meter-1")
            .iter()
            .any(|r| r.3.as_deref().is_some_and(|e| e.contains("cannot open")))
    });
    let good = |s: &Subscriber| {
        readings(s, "meter-1")
            .iter()
            .filter(|r| r.2 == "good")
            .count()
    };
    let good_before = good(&sub);
    slave.serve_rtu(&port_link);
    wait_for(&sub, &gw, "the replugged port", |s| good(s) > good_before);

    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

/// Writes go through the library API the commands will use, on the bus
/// that polls, and come back as the new values.
#[test]
fn writes_encode_values_and_use_functions_5_6_and_16() {
    let mut slave = Slave::new([(1, every_type().holding(50, &[0]))]);
    let port = slave.serve_tcp(0);
    let dir = tempfile::tempdir().unwrap();
    let points = "
      - { name: setpoint, register: holding, address: 50, type: i16, scale: 0.1, writable: true, min: -20, max: 80 }
      - { name: target, register: holding, address: 100, type: u32, word_order: little, writable: true }
      - { name: pump, register: coil, address: 0, writable: true }
      - { name: fan, register: coil, address: 1 }
";
    let text = write_config(
        dir.path(),
        1,
        "",
        &(tcp_device("plc", port, "", points)
            + &tcp_device("ghost", port, "    unit: 9\n", points)),
    );
    let config = fieldgate::config::load(&text).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let path = dir.path().join("state").join("fieldgate.db");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let (store, thread) =
            fieldgate::store::Store::open(&path, &config.store, fieldgate::clock::Clock::system())
                .unwrap();
        let ingest =
            fieldgate::sources::Ingest::new(store.clone(), fieldgate::health::Health::new());
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut running = fieldgate::sources::spawn_group(
            &config.devices,
            config.mqtt.qos,
            &config.ble,
            &ingest,
            &cancel,
        );
        let writers = running.writers.clone();
        let write = |device: &'static str, point: &'static str, value: serde_json::Value| {
            let writer = writers.get(device).cloned();
            async move {
                match writer {
                    Some(w) => w.write(device, point, &value, Deadline::never()).await,
                    None => Err(fieldgate::sources::WriteFailure {
                        fault: WriteFault::Rejected,
                        reason: format!("no Modbus device `{device}`"),
                    }),
                }
            }
        };

        write("plc", "setpoint", json!(-12.5)).await.unwrap();
        write("plc", "target", json!(70_000)).await.unwrap();
        write("plc", "pump", json!(false)).await.unwrap();
        {
            let state = slave.state();
            assert_eq!(state.units[&1].holding[&50], (-125i16) as u16);
            assert_eq!(
                [state.units[&1].holding[&100], state.units[&1].holding[&101]],
                [70_000u32 as u16, 1]
            );
            assert!(!state.units[&1].coils[&0]);
            let writes: Vec<(u8, u16, u16)> = state
                .seen
                .iter()
                .filter(|s| s.function >= 5)
                .map(|s| (s.function, s.address, s.count))
                .collect();
            assert_eq!(writes, [(6, 50, 1), (16, 100, 2), (5, 0, 1)]);
        }

        let rejected = [
            write("plc", "fan", json!(true)).await,
            write("plc", "setpoint", json!(80.5)).await,
            write("plc", "setpoint", json!("warm")).await,
            write("plc", "nothing", json!(1)).await,
            write("nobody", "pump", json!(1)).await,
        ];
        for result in &rejected {
            assert!(
                result
                    .as_ref()
                    .is_err_and(|e| e.fault == WriteFault::Rejected),
                "{result:?}"
            );
        }
        assert_eq!(
            rejected[1].as_ref().unwrap_err().reason,
            "invalid value for `setpoint`: 80.5 is above max 80"
        );
        // A unit that does not answer: the write fails, after its timeout.
        let failed = write("ghost", "pump", json!(true)).await.unwrap_err();
        assert_eq!(failed.fault, WriteFault::Failed);
        assert_eq!(
            failed.reason,
            "write to `pump` failed: no answer within 500ms"
        );
        // A write whose deadline passed before its turn is never sent.
        let before = slave.seen().iter().filter(|s| s.function >= 5).count();
        let clock = fieldgate::clock::Clock::system();
        let gone = Deadline::new(clock.clone(), Some(clock.now_ms() - 1));
        let expired = writers["plc"]
            .write("plc", "pump", &json!(true), gone)
            .await
            .unwrap_err();
        assert_eq!(expired.fault, WriteFault::Expired, "{expired:?}");
        let after = slave.seen().iter().filter(|s| s.function >= 5).count();
        assert_eq!(after, before, "an expired write must not reach the device");

        cancel.cancel();
        while running.tasks.join_next().await.is_some() {}
        drop((ingest, store));
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap();
    });
    slave.kill();
}

/// The shipped example names a serial port that is not here: the gateway
/// keeps running and reports the fault; it does not crash.
#[test]
fn a_missing_serial_port_is_a_bad_reading_not_a_crash() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::connect(
        broker.port,
        "check-modbus-missing",
        "fieldgate/gw/telemetry/#",
    );
    let missing: PathBuf = dir.path().join("ttyUSB9");
    let device = format!(
        "  - name: meter\n    kind: modbus\n    rtu: {{ port: {} }}\n    poll: 100ms\n    points:\n      - {{ name: v, register: input, address: 0, type: f32 }}\n",
        missing.display()
    );
    let config = write_config(dir.path(), broker.port, "", &device);
    let mut gw = Gateway::start(&config, dir.path());
    wait_for(&sub, &gw, "a bad reading", |s| {
        !readings(s, "meter").is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    let all = readings(&sub, "meter");
    assert_eq!(all.len(), 1, "{all:?}");
    let error = all[0].3.clone().unwrap();
    assert!(
        error.starts_with(&format!("cannot open {}", missing.display())),
        "{error}"
    );
    assert!(gw.is_running());
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

/// A map with a hole in the middle of a coalesced block (register 15 does
/// not exist: the slave answers exception 2 for any read that spans it):
/// the gateway finds the refusing point, reads around it, reports it once,
/// and every other point keeps its value every poll.
#[test]
fn a_hole_in_a_coalesced_block_is_found_and_read_around() {
    let broker = Broker::start();
    let words: Vec<u16> = (0..30).map(|i| 1_000 + i).collect();
    let mut tables = Tables::default().holding(0, &words);
    tables.holding.remove(&15);
    let mut slave = Slave::new([(1, tables)]);
    let port = slave.serve_tcp(0);
    let sub = Subscriber::connect(broker.port, "check-modbus-hole", "fieldgate/gw/telemetry/#");
    let dir = tempfile::tempdir().unwrap();
    let points: String = (0..30)
        .map(|i| format!("      - {{ name: p{i}, register: holding, address: {i} }}\n"))
        .collect();
    let device = format!(
        "  - name: meter\n    kind: modbus\n    tcp: {{ host: 127.0.0.1, port: {port} }}\n    poll: 200ms\n    heartbeat: 200ms\n    points:\n{points}"
    );
    let config = write_config(dir.path(), broker.port, "", &device);
    let mut gw = Gateway::start(&config, dir.path());

    let good_polls = |s: &Subscriber| {
        readings(s, "meter")
            .iter()
            .filter(|r| r.2 == "good")
            .count()
    };
    wait_for(&sub, &gw, "ten good polls", |s| good_polls(s) >= 10);
    let all = readings(&sub, "meter");
    // The first poll names the refusing point and reads the rest.
    let bad: Vec<_> = all.iter().filter(|r| r.2 != "good").collect();
    assert_eq!(bad.len(), 1, "reported once: {bad:?}");
    let error = bad[0].3.clone().unwrap_or_default();
    assert!(
        error.contains("p15") && error.contains("exception 0x02"),
        "{error}"
    );
    assert_eq!(bad[0].1.as_object().map(|v| v.len()), Some(29), "{bad:?}");
    // Every poll after: the 29 other points, each with its value.
    for (_, values, _, _) in all.iter().filter(|r| r.2 == "good") {
        let values = values.as_object().unwrap();
        assert_eq!(values.len(), 29, "{values:?}");
        for i in (0..30).filter(|i| *i != 15) {
            assert_eq!(values[&format!("p{i}")], json!(1_000 + i), "p{i}");
        }
        assert!(!values.contains_key("p15"));
    }
    // Requests per poll once the map is known: count what the slave saw
    // between two good readings.
    let seen = slave.seen();
    let before = seen.len();
    let polls_before = good_polls(&sub);
    wait_for(&sub, &gw, "five more polls", |s| {
        good_polls(s) >= polls_before + 5
    });
    let requests = slave.seen().len() - before;
    let polls = good_polls(&sub) - polls_before;
    let per_poll = requests as f64 / polls as f64;
    // The first poll's requests come back to back; the next poll is 200ms on.
    let first_poll = 1 + seen
        .windows(2)
        .position(|w| w[1].at - w[0].at > Duration::from_millis(100))
        .unwrap_or(seen.len());
    eprintln!(
        "hole: {first_poll} requests in the poll that found it, then {per_poll:.2} requests per poll ({requests} over {polls} polls)"
    );
    assert!(per_poll <= 2.5, "{per_poll} requests per poll");
    let log = gw.log();
    let warned = log
        .lines()
        .filter(|l| l.contains("refuses part of a read"))
        .count();
    assert_eq!(warned, 1, "{log}");

    // Now the unit refuses everything (the wrong unit answering, a device
    // in a bad state): that is a fault, not more holes, and the gateway
    // does not split the reads again every poll.
    slave
        .state()
        .refuse
        .insert(1, ExceptionCode::IllegalDataAddress);
    wait_for(&sub, &gw, "the fault", |s| {
        readings(s, "meter").last().is_some_and(|r| r.2 == "bad")
    });
    std::thread::sleep(Duration::from_millis(500));
    let before = slave.seen().len();
    std::thread::sleep(Duration::from_secs(2));
    let refused = slave.seen().len() - before;
    eprintln!("refused whole: {refused} requests in 2 s");
    assert!(
        refused <= 2 * 12,
        "{refused} requests in 2 s of 200ms polls"
    );
    slave.state().refuse.clear();
    let polls_before = good_polls(&sub);
    wait_for(&sub, &gw, "recovery", |s| good_polls(s) > polls_before);
    let back = readings(&sub, "meter").pop().unwrap();
    assert_eq!(back.1.as_object().map(|v| v.len()), Some(29), "{back:?}");
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    slave.kill();
}

/// RTU frames over TCP (a serial-to-Ethernet converter in raw mode): two
/// units read through one connection, and a dead third unit on the same
/// line backs off, so that the live ones get the line back.
#[test]
fn rtu_over_tcp_reads_two_units_and_a_dead_unit_backs_off() {
    let broker = Broker::start();
    let unit = |value: u16| Tables::default().holding(0, &[value, value + 1]);
    let mut slave = Slave::new([(1, unit(100)), (2, unit(200))]);
    let port = slave.serve_rtu_over_tcp();
    let sub = Subscriber::connect(
        broker.port,
        "check-modbus-rtu-tcp",
        "fieldgate/gw/telemetry/#",
    );
    let dir = tempfile::tempdir().unwrap();
    let device = |name: &str, unit: u8| {
        format!(
            "  - name: {name}\n    kind: modbus\n    tcp: {{ host: 127.0.0.1, port: {port}, framing: rtu }}\n    unit: {unit}\n    poll: 200ms\n    heartbeat: 200ms\n    timeout: 500ms\n    retries: 0\n    points:\n      - {{ name: a, register: holding, address: 0 }}\n      - {{ name: b, register: holding, address: 1 }}\n"
        )
    };
    let devices = device("meter-1", 1) + &device("meter-2", 2) + &device("ghost", 3);
    let config = write_config(dir.path(), broker.port, "", &devices);
    let mut gw = Gateway::start(&config, dir.path());

    wait_for(&sub, &gw, "the ghost's fault", |s| {
        !readings(s, "ghost").is_empty()
    });
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    for (device, first) in [("meter-1", 100), ("meter-2", 200)] {
        let all = readings(&sub, device);
        assert!(all.len() >= 10, "{device}: {all:?}");
        assert!(
            all.iter()
                .all(|r| r.1 == json!({"a": first, "b": first + 1}) && r.2 == "good"),
            "{device}: {all:?}"
        );
    }
    // Gaps between meter-1's polls: in the first seconds each round waits
    // for the ghost's timeout; once it backed off, most rounds do not.
    let ts: Vec<i64> = readings(&sub, "meter-1").iter().map(|r| r.0).collect();
    let gaps: Vec<i64> = ts.windows(2).map(|w| w[1] - w[0]).collect();
    let (early, late) = gaps.split_at(gaps.len().min(3));
    let slow = |g: &[i64]| g.iter().filter(|g| **g >= 450).count();
    let mean = |g: &[i64]| g.iter().sum::<i64>() as f64 / g.len().max(1) as f64;
    eprintln!(
        "rtu over tcp: meter-1 gaps first 3 polls {early:?} (mean {:.0} ms); after: {} gaps, mean {:.0} ms, worst {} ms, {} of them ≥ 450 ms (a round that waits for the ghost)",
        mean(early),
        late.len(),
        mean(late),
        late.iter().max().copied().unwrap_or_default(),
        slow(late)
    );
    let seen = slave.seen();
    let ghost = seen.iter().filter(|s| s.unit == 3 && s.at >= t0).count();
    let meter = seen.iter().filter(|s| s.unit == 1 && s.at >= t0).count();
    eprintln!("rtu over tcp: in 10 s, the ghost was asked {ghost} times, meter-1 {meter} times");
    assert!(ghost * 5 <= meter, "ghost {ghost}, meter {meter}");
    assert!(slow(late) * 3 <= late.len(), "{gaps:?}");
    let log = gw.log();
    assert_eq!(
        log.matches("polled less often").count(),
        1,
        "the back-off is logged once\n{log}"
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    slave.kill();
}
