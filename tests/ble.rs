//! BLE end to end without a radio: the gateway's btleplug talks to a mock
//! BlueZ (python-dbusmock's `bluez5` template, driven by
//! `tests/ble/driver.py`) on a private dbus-daemon, and its readings go
//! through a real mosquitto to a subscriber.
//!
//! Each test starts its own bus; `DBUS_SYSTEM_BUS_ADDRESS` is set for the
//! spawned processes only. Needs `dbus-daemon` and `python3-dbusmock`
//! (installed by scripts/test.sh).

mod common;

use std::fs;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::bluez::MockBluez;
use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// Telemetry payloads of `device`, in arrival order.
fn readings(messages: &[Message], device: &str) -> Vec<Value> {
    let topic = format!("fieldgate/gw/telemetry/{device}");
    messages
        .iter()
        .filter(|m| m.topic == topic)
        .map(Message::json)
        .collect()
}

fn good_with(messages: &[Message], device: &str, check: impl Fn(&Value) -> bool) -> bool {
    readings(messages, device)
        .iter()
        .any(|r| r["quality"] == "good" && check(&r["values"]))
}

fn any_bad(messages: &[Message], device: &str) -> bool {
    readings(messages, device)
        .iter()
        .any(|r| r["quality"] == "bad")
}

/// The driver's BTHome thermometer, with `extra` keys.
fn livingroom(extra: &str) -> String {
    format!(
        "  - name: livingroom\n    kind: ble\n    address: \"A4:C1:38:00:00:01\"\n    decoder: bthome\n{extra}"
    )
}

/// The driver's heart-rate strap, connected over GATT and read every `poll`.
fn strap(poll: &str, characteristics: &str) -> String {
    format!(
        "  - name: strap\n    kind: ble\n    address: \"AA:BB:CC:DD:EE:03\"\n    decoder: gatt\n    min_interval: 0s\n    poll: {poll}\n    characteristics:\n{characteristics}"
    )
}

/// Waits until `pred` holds for what `rig` received; else fails with the
/// messages and the logs of the gateway and the mock.
#[track_caller]
fn expect_or_dump(rig: &Rig, gw: &Gateway, bluez: &MockBluez, pred: impl Fn(&[Message]) -> bool) {
    assert!(
        rig.sub.wait_until(WAIT, pred),
        "{:?}\n{}\n{}",
        rig.sub
            .messages()
            .iter()
            .map(Message::text)
            .collect::<Vec<_>>(),
        gw.log(),
        bluez.logs()
    );
}

/// A gateway with `devices` and `ble:` keys, on the system bus at `dbus`,
/// and a rig whose subscriber `client` gets its telemetry.
fn start(dbus: &str, client: &str, devices: &str, ble: &str) -> (Gateway, Rig) {
    let rig = Rig::new(client, TELEMETRY, devices);
    if !ble.is_empty() {
        let text = fs::read_to_string(&rig.config).unwrap() + "ble:\n" + ble;
        fs::write(&rig.config, text).unwrap();
    }
    let gw = Gateway::start_with_env(
        &rig.config,
        rig.dir.path(),
        "info",
        &[("DBUS_SYSTEM_BUS_ADDRESS", dbus)],
    );
    (gw, rig)
}

#[test]
fn bthome_and_ruuvi_advertisements_become_readings() {
    let bluez = MockBluez::start();
    let devices = livingroom("    min_interval: 0s\n")
        + "  - name: tag
    kind: ble
    local_name: Ruuvi 0002
    decoder: ruuvi
    min_interval: 2s
";
    let (mut gw, rig) = start(&bluez.address, "check-adverts", &devices, "");

    let bthome = |v: &Value| v["temperature"] == 25.0 && v["humidity"] == 50.55;
    let ruuvi = |v: &Value| {
        v["temperature"] == 24.3
            && v["humidity"] == 53.49
            && v["pressure"] == 1000.44
            && v["battery_voltage"] == 2.977
            && v["acceleration_z"] == 1.036
            && v["mac"] == "CB:B8:33:4C:88:4F"
    };
    let both = |m: &[Message]| good_with(m, "livingroom", bthome) && good_with(m, "tag", ruuvi);
    expect_or_dump(&rig, &gw, &bluez, both);

    // Adverts come every 0.3 s, each with a new packet id / sequence: the
    // BTHome device (min_interval 0s) gets most, the Ruuvi tag one per 2 s.
    thread::sleep(Duration::from_secs(4));
    let messages = rig.sub.messages();
    let (fast, slow) = (
        readings(&messages, "livingroom"),
        readings(&messages, "tag"),
    );
    let times: Vec<i64> = slow
        .iter()
        .map(|r| {
            let ts = r["ts"].as_str().unwrap();
            ts.parse::<jiff::Timestamp>().unwrap().as_millisecond()
        })
        .collect();
    assert!(
        times.windows(2).all(|w| w[1] - w[0] >= 1_900),
        "min_interval 2s: {times:?}"
    );
    assert!(
        fast.len() > slow.len() * 2,
        "{} bthome and {} ruuvi readings",
        fast.len(),
        slow.len()
    );
    // Every advert, not only changed ones: BlueZ filters repeats unless
    // the discovery filter asks for DuplicateData (btleplug 0.13 does).
    let mock_log = bluez.mock_log();
    let filters: Vec<&str> = mock_log
        .lines()
        .filter(|l| l.contains("SetDiscoveryFilter"))
        .collect();
    assert!(
        !filters.is_empty()
            && filters
                .iter()
                .all(|l| l.contains(r#""DuplicateData": True"#)),
        "{mock_log}"
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn gatt_notifications_and_reads_become_readings_and_a_dropped_link_reconnects() {
    let bluez = MockBluez::start();
    let devices = strap(
        "1s",
        "      - { point: heart_rate, service: 180d, uuid: 2a37, type: u8, skip: 1 }
      - { point: battery, service: 180f, uuid: 2a19, type: u8, mode: read }
",
    );
    let (mut gw, rig) = start(&bluez.address, "check-gatt", &devices, "");

    let before = |m: &[Message]| {
        (60..=62).all(|bpm| good_with(m, "strap", |v| v["heart_rate"] == bpm))
            && good_with(m, "strap", |v| v["battery"] == 87)
    };
    expect_or_dump(&rig, &gw, &bluez, before);
    let after = |m: &[Message]| {
        good_with(m, "strap", |v| {
            v["heart_rate"].as_u64().is_some_and(|b| b >= 90)
        })
    };
    assert!(
        rig.sub.wait_until(WAIT, after),
        "no notification after the drop\n{}\n{}",
        gw.log(),
        bluez.logs()
    );
    let dropped = readings(&rig.sub.messages(), "strap")
        .into_iter()
        .find(|r| r["quality"] == "bad")
        .expect("a bad reading for the dropped link");
    assert_eq!(dropped["error"], "the device dropped the connection");
    let log = gw.log();
    assert!(log.contains("BLE: connected"), "{log}");
    assert!(log.contains("BLE: reconnected"), "{log}");
    assert!(
        bluez
            .driver_log()
            .contains("connected and subscribed again")
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn a_command_writes_a_writable_gatt_characteristic() {
    let bluez = MockBluez::start();
    let devices = strap(
        "500ms",
        "      - { point: setpoint, service: fff0, uuid: fff1, type: i16, scale: 0.1, mode: read, writable: true }
      - { point: battery, service: 180f, uuid: 2a19, mode: read }
",
    );
    let (mut gw, rig) = start(&bluez.address, "check-write", &devices, "");
    let port = rig.broker.port;
    let responses = Subscriber::connect(port, "check-responses", "fieldgate/gw/responses");
    let setpoint = |x: f64| move |m: &[Message]| good_with(m, "strap", |v| v["setpoint"] == x);
    assert!(
        rig.sub.wait_until(WAIT, setpoint(21.0)),
        "{}\n{}",
        gw.log(),
        bluez.logs()
    );

    assert!(gw.wait_for_commands(WAIT), "{}", gw.log());
    let command = |id: &str, point: &str, value: &str| {
        let payload =
            format!(r#"{{"id":"{id}","device":"strap","point":"{point}","value":{value}}}"#);
        publish(port, "fieldgate/gw/commands", &payload);
    };
    let answer = |id: &str| {
        let id = id.to_owned();
        move |m: &[Message]| m.iter().any(|m| m.json()["id"] == id.as_str())
    };
    let answered = |id: &str| -> Value {
        assert!(responses.wait_until(WAIT, answer(id)), "{}", gw.log());
        responses
            .messages()
            .iter()
            .map(Message::json)
            .find(|j| j["id"] == id)
            .unwrap()
    };

    command("w-1", "setpoint", "23.5");
    assert_eq!(answered("w-1")["status"], "ok", "{}", gw.log());
    assert!(
        rig.sub.wait_until(WAIT, setpoint(23.5)),
        "read back\n{}",
        gw.log()
    );

    command("w-2", "setpoint", "5000");
    let out_of_range = answered("w-2");
    assert_eq!(out_of_range["status"], "rejected");
    assert!(
        out_of_range["error"]
            .as_str()
            .unwrap()
            .contains("out of range"),
        "{out_of_range}"
    );
    command("w-3", "battery", "50");
    assert_eq!(answered("w-3")["status"], "rejected");
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn without_a_bus_the_cause_is_logged_once_and_simulated_devices_keep_publishing() {
    let devices = livingroom("") + &sim_device("wave", "100ms", 1_000_000, "");
    let missing = "unix:path=/nonexistent/no-such-bus";
    let retry = "  retry_interval: 500ms\n";
    let (mut gw, rig) = start(missing, "check-nobus", &devices, retry);

    rig.expect(&gw, WAIT, |m| any_bad(m, "livingroom"));
    let started = rig.sub.count();
    // Several retries (every 500 ms) later, the simulated device still
    // publishes and the cause was logged once.
    thread::sleep(Duration::from_secs(3));
    assert!(
        rig.sub.wait_until(WAIT, |m| m.len() >= started + 20),
        "the simulated device stopped\n{}",
        gw.log()
    );
    let messages = rig.sub.messages();
    let bad_readings: Vec<Value> = readings(&messages, "livingroom");
    assert_eq!(
        bad_readings.len(),
        1,
        "one bad reading per change: {bad_readings:?}"
    );
    let error = bad_readings[0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("BLE unavailable: no system D-Bus") && error.contains("no-such-bus"),
        "{error}"
    );
    let log = gw.log();
    assert_eq!(log.matches("BLE unavailable").count(), 1, "{log}");
    assert_eq!(log.matches("WARN").count(), 1, "{log}");
    assert!(gw.is_running());
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn a_bluez_that_starts_late_is_found_by_the_retries() {
    let mut bus = MockBluez::bus_only();
    let devices = livingroom("    min_interval: 0s\n");
    let retry = "  retry_interval: 500ms\n";
    let (mut gw, rig) = start(&bus.address, "check-late", &devices, retry);

    rig.expect(&gw, WAIT, |m| any_bad(m, "livingroom"));
    let first = &readings(&rig.sub.messages(), "livingroom")[0];
    assert_eq!(
        first["error"],
        "BLE unavailable: BlueZ is not running (no org.bluez on the system D-Bus; start bluetooth.service)"
    );

    bus.add_bluez();
    let good = |m: &[Message]| good_with(m, "livingroom", |v| v["temperature"] == 25.0);
    assert!(
        rig.sub.wait_until(WAIT, good),
        "{}\n{}",
        gw.log(),
        bus.logs()
    );
    // Logged once per cause, however many retries (the mock may also be
    // seen for a moment without its adapter: another cause, logged once).
    let log = gw.log();
    assert_eq!(log.matches("BlueZ is not running").count(), 1, "{log}");
    assert!(log.matches("BLE unavailable").count() <= 2, "{log}");
    assert!(log.contains("BLE: scanning"), "{log}");
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

/// BTHome service data encrypted as a device does (<https://bthome.io/encryption/>):
/// device information 0x41, the objects sealed with AES-CCM, the counter,
/// the MIC; as hex, for the driver.
fn sealed(key: &[u8; 16], mac: [u8; 6], counter: u32, objects: &[u8]) -> String {
    use ccm::aead::generic_array::GenericArray;
    use ccm::aead::{AeadInPlace, KeyInit};
    type Cipher = ccm::Ccm<aes::Aes128, ccm::consts::U4, ccm::consts::U13>;
    let info = 0x41;
    let nonce = [&mac[..], &[0xD2, 0xFC, info], &counter.to_le_bytes()].concat();
    let mut data = objects.to_vec();
    let mic = Cipher::new(GenericArray::from_slice(key))
        .encrypt_in_place_detached(GenericArray::from_slice(&nonce), &[], &mut data)
        .expect("encrypt");
    [&[info][..], &data, &counter.to_le_bytes(), &mic]
        .concat()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const VAULT_KEY: &str = "00112233445566778899aabbccddeeff";

#[test]
fn encrypted_bthome_decodes_and_replays_and_wrong_keys_are_counted() {
    let key = [
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE,
        0xFF,
    ];
    let mut wrong = key;
    wrong[15] ^= 1;
    let mac = [0xA4, 0xC1, 0x38, 0x00, 0x00, 0x04];
    // Packet id, then a temperature: 21.00, 21.50, 99.99, 77.77, 22.00 °C.
    let t = |id: u8, centi: u16| {
        let [lo, hi] = centi.to_le_bytes();
        vec![0x00, id, 0x02, lo, hi]
    };
    let adverts = [
        sealed(&key, mac, 10, &t(1, 2100)),
        sealed(&key, mac, 11, &t(2, 2150)),
        sealed(&key, mac, 9, &t(3, 9999)), // an older counter: a replay
        sealed(&wrong, mac, 12, &t(4, 7777)), // another key: the MIC fails
        sealed(&key, mac, 13, &t(5, 2200)), // then repeated until the end
    ]
    .join(",");
    let bluez = MockBluez::start_with(&[("FIELDGATE_TEST_SEALED", &adverts)]);
    let devices = format!(
        "  - name: vault\n    kind: ble\n    address: \"A4:C1:38:00:00:04\"\n    decoder: bthome\n    bindkey: {VAULT_KEY}\n    min_interval: 0s\n"
    );
    let (mut gw, rig) = start(&bluez.address, "check-sealed", &devices, "");
    let status = Subscriber::connect(
        rig.broker.port,
        "check-sealed-status",
        "fieldgate/gw/status",
    );

    let last = |m: &[Message]| good_with(m, "vault", |v| v["temperature"] == 22.0);
    expect_or_dump(&rig, &gw, &bluez, last);
    // The repeats of the last advert are the same advert, not replays.
    thread::sleep(Duration::from_secs(2));
    let temperatures: Vec<Value> = readings(&rig.sub.messages(), "vault")
        .iter()
        .map(|r| {
            assert_eq!(r["quality"], "good", "{r}");
            r["values"]["temperature"].clone()
        })
        .collect();
    assert_eq!(
        temperatures,
        [Value::from(21), Value::from(21.5), Value::from(22)],
        "{}",
        gw.log()
    );
    let counted = |m: &[Message]| device_status(m, "vault").is_some_and(|d| d["bad_input"] == 2);
    assert!(
        status.wait_until(WAIT, counted),
        "{:?}\n{}",
        latest_status(&status.messages()),
        gw.log()
    );
    let log = gw.log();
    assert_eq!(
        log.matches("replayed advertisement refused").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("MIC check failed").count(), 1, "{log}");
    assert!(
        !log.to_lowercase().contains("8899aabb"),
        "the key is logged: {log}"
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

/// The mock's adverts stop after a few rounds; the scanner watchdog
/// (`ble.watchdog: 1s`) restarts discovery, then, as that does not bring
/// them back in `power` mode, power-cycles the adapter; the silence shows
/// as the device's problem on `P/status` and ends when adverts return.
fn stalled_scan(mode: &str) -> (MockBluez, Gateway, Rig, Subscriber) {
    let bluez = MockBluez::start_with(&[("FIELDGATE_TEST_STALL", mode)]);
    let devices = livingroom("    min_interval: 0s\n    stale_after: 1h\n");
    let client = format!("check-stall-{mode}");
    let (gw, rig) = start(&bluez.address, &client, &devices, "  watchdog: 1s\n");
    let status = Subscriber::connect(
        rig.broker.port,
        &format!("{client}-status"),
        "fieldgate/gw/status",
    );
    assert!(
        bluez.wait_for_driver("stalled", WAIT),
        "{}\n{}",
        gw.log(),
        bluez.logs()
    );
    (bluez, gw, rig, status)
}

/// After the driver resumed, new readings arrive and the problem is gone;
/// with `noted`, `P/status` showed it while the radio was silent.
fn expect_recovery(bluez: &MockBluez, gw: &Gateway, rig: &Rig, status: &Subscriber, noted: bool) {
    let before = readings(&rig.sub.messages(), "livingroom").len();
    expect_or_dump(rig, gw, bluez, |m| {
        readings(m, "livingroom").len() >= before + 3
    });
    assert!(
        gw.wait_for_log("BLE: advertisements arrive again", WAIT),
        "{}",
        gw.log()
    );
    let shown = |m: &[Message]| {
        m.iter().filter(|m| m.topic.ends_with("/status")).any(|m| {
            m.json()["devices"]["livingroom"]["problem"]
                .as_str()
                .is_some_and(|p| p.starts_with("scanner: no advertisement for 1s"))
        })
    };
    if noted {
        assert!(
            status.wait_until(WAIT, shown),
            "{:?}",
            latest_status(&status.messages())
        );
    }
    let cleared =
        |m: &[Message]| device_status(m, "livingroom").is_some_and(|d| d.get("problem").is_none());
    status.clear();
    assert!(
        status.wait_until(WAIT, cleared),
        "{:?}",
        latest_status(&status.messages())
    );
}

#[test]
fn the_scanner_watchdog_restarts_a_stalled_scan() {
    let (bluez, mut gw, rig, status) = stalled_scan("restart");
    assert!(
        bluez.wait_for_driver("resumed after a discovery restart", WAIT),
        "{}\n{}",
        gw.log(),
        bluez.logs()
    );
    // Too short a silence for a status message to see it.
    expect_recovery(&bluez, &gw, &rig, &status, false);
    let log = gw.log();
    assert_eq!(log.matches("; restarting discovery").count(), 1, "{log}");
    assert!(!log.contains("power-cycled"), "{log}");
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn the_scanner_watchdog_power_cycles_the_adapter_when_a_restart_does_not_help() {
    let (bluez, mut gw, rig, status) = stalled_scan("power");
    assert!(
        bluez.wait_for_driver("resumed after a power cycle", WAIT),
        "{}\n{}",
        gw.log(),
        bluez.logs()
    );
    expect_recovery(&bluez, &gw, &rig, &status, true);
    let log = gw.log();
    assert_eq!(log.matches("; restarting discovery").count(), 1, "{log}");
    assert_eq!(log.matches("power-cycled the adapter").count(), 1, "{log}");
    assert_eq!(
        log.matches("advertisements arrive again").count(),
        1,
        "{log}"
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

/// Runs `fieldgate ble scan` on `bus`: its status, stdout and stderr.
fn ble_scan(bus: &MockBluez, seconds: u32) -> (std::process::Output, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(["ble", "scan", "--seconds", &seconds.to_string()])
        .envs(bus.env())
        .output()
        .expect("run fieldgate ble scan");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[test]
fn ble_scan_lists_devices_with_what_the_decoders_read() {
    let bluez = MockBluez::start();
    let (out, stdout, stderr) = ble_scan(&bluez, 2);
    assert!(out.status.success(), "{stdout}{stderr}\n{}", bluez.logs());
    assert!(stdout.contains("A4:C1:38:00:00:01"), "{stdout}");
    assert!(
        stdout.contains("decoder: bthome humidity=50.55 temperature=25.0"),
        "{stdout}"
    );
    assert!(stdout.contains("Ruuvi 0002"), "{stdout}");
    assert!(stdout.contains("decoder: ruuvi"), "{stdout}");
    assert!(stdout.contains("HR-strap"), "{stdout}");
}

#[test]
fn ble_scan_names_a_missing_bluez() {
    let bus = MockBluez::bus_only();
    let (out, _, stderr) = ble_scan(&bus, 1);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("BlueZ is not running"), "{stderr}");
}

/// (ts in ms, value) of each good reading of `device` that carried `point`,
/// after the first `skip` readings.
fn point_sends(messages: &[Message], device: &str, point: &str, skip: usize) -> Vec<(i64, f64)> {
    readings(messages, device)
        .into_iter()
        .skip(skip)
        .filter(|r| r["quality"] == "good")
        .filter_map(|r| {
            let ts: jiff::Timestamp = r["ts"].as_str()?.parse().ok()?;
            Some((ts.as_millisecond(), r["values"][point].as_f64()?))
        })
        .collect()
}

/// Readings `device` took, as `P/status` counts them (before any is held
/// back by a deadband).
fn taken(messages: &[Message], device: &str) -> u64 {
    device_status(messages, device)
        .and_then(|d| d["readings"].as_u64())
        .unwrap_or(0)
}

#[test]
fn repeated_adverts_and_reads_are_sent_at_the_heartbeat_moves_beyond_the_deadband() {
    let bluez = MockBluez::start();
    // The thermometer advertises the same 25.00 °C three times a second;
    // the strap's battery reads 87 every 200 ms; its heart rate rises by
    // one per notification (90, 91, … 99, 90, …).
    let devices = livingroom("    min_interval: 0s\n    deadband: 0.1\n    heartbeat: 2s\n")
        + &strap(
            "200ms",
            "      - { point: heart_rate, service: 180d, uuid: 2a37, type: u8, skip: 1, deadband: 2 }
      - { point: battery, service: 180f, uuid: 2a19, type: u8, mode: read, deadband: 0 }
",
        )
        + "    heartbeat: 2s\n";
    let rig = Rig::new("check-ble-report", "fieldgate/gw/#", &devices);
    let mut gw = Gateway::start_with_env(
        &rig.config,
        rig.dir.path(),
        "info",
        &[("DBUS_SYSTEM_BUS_ADDRESS", &bluez.address)],
    );
    // After the reconnection (a bad reading, then every value again).
    let second = |m: &[Message]| {
        readings(m, "strap")
            .iter()
            .any(|r| r["values"]["heart_rate"].as_u64().is_some_and(|b| b >= 90))
    };
    expect_or_dump(&rig, &gw, &bluez, second);
    let messages = rig.sub.messages();
    let (adverts_before, strap_before) =
        (taken(&messages, "livingroom"), taken(&messages, "strap"));
    let skip = readings(&messages, "strap").len();
    thread::sleep(Duration::from_secs(7));
    let messages = rig.sub.messages();
    let adverts = taken(&messages, "livingroom") - adverts_before;
    let strap_readings = taken(&messages, "strap") - strap_before;
    assert!(
        adverts >= 10 && strap_readings >= 15,
        "{adverts} adverts, {strap_readings} strap readings\n{}",
        gw.log()
    );

    // A constant: at the heartbeat, not every advert or read.
    let thermo = point_sends(&messages, "livingroom", "temperature", 0);
    let battery = point_sends(&messages, "strap", "battery", skip);
    for (sends, taken) in [(&thermo, adverts), (&battery, strap_readings)] {
        assert!(sends.len() >= 2, "sent at the heartbeat too: {sends:?}");
        assert!(
            (sends.len() as u64) * 3 <= taken + 3,
            "{} sends of {taken}: {sends:?}",
            sends.len()
        );
        for pair in sends.windows(2) {
            assert!(
                pair[1].0 - pair[0].0 >= 1_700,
                "before the heartbeat: {sends:?}"
            );
        }
    }
    // A moving value: each send beyond its deadband of 2 from the last one.
    let rate = point_sends(&messages, "strap", "heart_rate", skip);
    assert!(rate.len() >= 3, "{rate:?}");
    for pair in rate.windows(2) {
        let ((t0, v0), (t1, v1)) = (pair[0], pair[1]);
        assert!(
            (v1 - v0).abs() > 2.0 || t1 - t0 >= 1_700,
            "within the deadband: {rate:?}"
        );
    }
    assert!(rate.iter().all(|(_, b)| (90.0..=99.0).contains(b)));
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn a_sensor_whose_adverts_stop_goes_offline() {
    // The mock stops advertising after six rounds (1.8 s); with the
    // scanner watchdog off nothing brings the adverts back.
    let bluez = MockBluez::start_with(&[("FIELDGATE_TEST_STALL", "power")]);
    let devices = livingroom("    min_interval: 0s\n    stale_after: 1h\n    offline_after: 2s\n");
    let (gw, rig) = start(
        &bluez.address,
        "check-ble-avail",
        &devices,
        "  watchdog: 0s\n",
    );
    let av = Subscriber::connect(rig.broker.port, "check-ble-avail-states", AVAILABILITY);
    let state = |m: &[Message]| availability(m, "livingroom").last().cloned();
    assert!(
        av.wait_until(WAIT, |m| state(m).as_deref() == Some("online")),
        "{}\n{}",
        gw.log(),
        bluez.logs()
    );
    assert!(
        bluez.wait_for_driver("stalled", WAIT),
        "{}\n{}",
        gw.log(),
        bluez.logs()
    );
    assert!(
        av.wait_until(WAIT, |m| state(m).as_deref() == Some("offline")),
        "{:?}\n{}\n{}",
        availability(&av.messages(), "livingroom"),
        gw.log(),
        bluez.logs()
    );
    // Offline only once the last reading is `offline_after` old: it was
    // the last advert's, no bad reading came between (stale_after 1h).
    let messages = rig.sub.messages();
    let last = messages
        .iter()
        .rfind(|m| m.topic.ends_with("/telemetry/livingroom"))
        .expect("readings");
    assert_eq!(last.json()["quality"], "good");
    let offline = av.messages().into_iter().rfind(|m| m.text() == "offline");
    let silent_for = offline.expect("offline").at.duration_since(last.at);
    eprintln!("offline {silent_for:?} after the last reading");
    assert!(
        silent_for >= Duration::from_millis(1_500) && silent_for <= Duration::from_secs(5),
        "offline {silent_for:?} after the last reading (offline_after 2s)"
    );
    assert_eq!(
        availability_changes(&av.messages(), "livingroom"),
        ["online", "offline"]
    );
    let retained = retained_availability(rig.broker.port, "check-ble-avail-fresh");
    assert_eq!(
        retained.get("livingroom").map(String::as_str),
        Some("offline")
    );
}
