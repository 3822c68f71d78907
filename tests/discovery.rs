//! Home Assistant MQTT discovery end to end, against a real Home Assistant
//! core on a real mosquitto: a Modbus unit served by tokio-modbus, a BLE
//! thermometer on a mock BlueZ and a simulated point appear as entities;
//! a number set in Home Assistant writes the register; availability
//! follows the unit and the gateway; a restarted Home Assistant is told
//! everything again; a removed device goes away.

mod common;

use std::time::Duration;

use common::bluez::MockBluez;
use common::homeassistant::{HomeAssistant, publish_retained};
use common::modbus_slave::{Slave, Tables};
use common::*;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(90);

/// The Modbus meter, the simulated room and the BLE thermometer.
fn devices(modbus_port: u16, with_room: bool) -> String {
    let meter = format!(
        "  - name: meter\n    kind: modbus\n    tcp: {{ host: 127.0.0.1, port: {modbus_port} }}\n    poll: 200ms\n    timeout: 300ms\n    offline_after: 1s\n    points:\n      - {{ name: temp, register: input, address: 0, type: i16, scale: 0.1, unit: °C }}\n      - {{ name: setpoint, register: holding, address: 10, type: i16, scale: 0.1, unit: °C, writable: true, min: 5, max: 80, homeassistant: {{ name: Set point }} }}\n"
    );
    let room = "  - name: room\n    kind: simulated\n    poll: 200ms\n    offline_after: 1h\n    points:\n      - { name: temperature, signal: constant, value: 19.5, unit: °C }\n";
    let thermo = "  - name: livingroom\n    kind: ble\n    address: \"A4:C1:38:00:00:01\"\n    decoder: bthome\n";
    let room = if with_room { room } else { "" };
    format!("{meter}{room}{thermo}homeassistant: {{}}\n")
}

/// The state of the entity with `unique_id`, once it has one.
fn state(ha: &HomeAssistant, unique_id: &str) -> Option<Value> {
    ha.state(&ha.entity_id(unique_id)?)
}

fn number(state: &Value) -> Option<f64> {
    state["state"].as_str()?.parse().ok()
}

/// Whether the entity shows `value` with `unit` and `class`.
fn shows(ha: &HomeAssistant, unique_id: &str, value: f64, unit: &str, class: &str) -> bool {
    state(ha, unique_id).is_some_and(|s| {
        number(&s) == Some(value)
            && s["attributes"]["unit_of_measurement"] == unit
            && s["attributes"]["device_class"] == class
    })
}

fn is(ha: &HomeAssistant, unique_id: &str, wanted: &str) -> bool {
    state(ha, unique_id).is_some_and(|s| s["state"] == wanted)
}

#[track_caller]
fn wait(ha: &HomeAssistant, gw: &Gateway, what: &str, pred: impl Fn(&HomeAssistant) -> bool) {
    assert!(
        ha.wait_until(LONG, |ha| pred(ha)),
        "Home Assistant never showed {what}\n--- gateway ---\n{}\n--- states ---\n{}\n--- Home Assistant ---\n{}",
        gw.log(),
        ha.states(),
        tail(&ha.log(), 60)
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn devices_appear_in_home_assistant_with_controls_availability_and_removal() {
    let broker = Broker::start();
    let mut slave = Slave::new([(
        1,
        Tables {
            input: [(0, 215)].into(),
            ..Tables::default()
        }
        .holding(10, &[200]),
    )]);
    let modbus_port = slave.serve_tcp(0);
    let bluez = MockBluez::start();
    let mut ha = HomeAssistant::start(broker.port);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), broker.port, "", &devices(modbus_port, true));
    let dbus = [("DBUS_SYSTEM_BUS_ADDRESS", bluez.address.as_str())];
    let mut gw = Gateway::start_with_env(&config, dir.path(), "info", &dbus);

    // A Modbus temperature, a simulated one and a BLE thermometer, with
    // their state, unit and device class.
    wait(&ha, &gw, "the three temperatures", |ha| {
        shows(ha, "gw_meter_temp", 21.5, "°C", "temperature")
            && shows(ha, "gw_room_temperature", 19.5, "°C", "temperature")
            && shows(ha, "gw_livingroom_temperature", 25.0, "°C", "temperature")
            && shows(ha, "gw_livingroom_humidity", 50.55, "%", "humidity")
    });
    // Grouped under their devices, connected through the gateway.
    let gateway = ha.device("gw").expect("the gateway is a device");
    for (id, name) in [
        ("gw_meter", "meter"),
        ("gw_room", "room"),
        ("gw_livingroom", "livingroom"),
    ] {
        let device = ha.device(id).unwrap_or_else(|| panic!("device {id}"));
        assert_eq!(device["name"], name);
        assert_eq!(device["via_device_id"], gateway["id"], "{device}");
    }
    let registry = ha.registry();
    let entities = registry["entities"].as_array().cloned().unwrap_or_default();
    let of_meter = entities
        .iter()
        .filter(|e| e["device_id"] == ha.device("gw_meter").unwrap()["id"])
        .count();
    assert_eq!(of_meter, 2, "temp and setpoint");
    wait(&ha, &gw, "the gateway's queue", |ha| {
        state(ha, "gw_queue_rows").is_some_and(|s| number(&s).is_some())
    });

    // The set point is a number: setting it writes the register.
    let setpoint = ha.entity_id("gw_meter_setpoint").expect("the set point");
    assert!(setpoint.starts_with("number."), "{setpoint}");
    let attributes = ha.state(&setpoint).unwrap()["attributes"].clone();
    assert_eq!(
        (&attributes["min"], &attributes["max"]),
        (&json!(5.0), &json!(80.0))
    );
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());
    ha.call(
        "number",
        "set_value",
        json!({"entity_id": setpoint, "value": 22.5}),
    );
    let holding = |slave: &Slave| slave.state().units[&1].holding.get(&10).copied();
    assert!(
        poll_until(|| holding(&slave) == Some(225)),
        "22.5 written: {:?}\n{}",
        holding(&slave),
        gw.log()
    );
    wait(&ha, &gw, "the new set point", |ha| {
        number(&ha.state(&setpoint).unwrap()) == Some(22.5)
    });
    // Out of range: Home Assistant refuses it itself; nothing is written.
    let (status, body) = ha.try_call(
        "number",
        "set_value",
        json!({"entity_id": setpoint, "value": 500}),
    );
    assert!(!(200..300).contains(&status), "500 accepted: {body}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(holding(&slave), Some(225));

    // The unit stops answering: its entities go unavailable, then back.
    let tables = slave.state().units.remove(&1).unwrap();
    wait(&ha, &gw, "meter unavailable", |ha| {
        is(ha, "gw_meter_temp", "unavailable")
    });
    assert!(is(&ha, "gw_room_temperature", "19.5"), "the others stay");
    slave.state().units.insert(1, tables);
    wait(&ha, &gw, "meter back", |ha| {
        shows(ha, "gw_meter_temp", 21.5, "°C", "temperature")
    });

    // A killed gateway: everything unavailable (its will); started again: back.
    gw.kill9();
    wait(&ha, &gw, "all unavailable", |ha| {
        [
            "gw_meter_temp",
            "gw_room_temperature",
            "gw_livingroom_temperature",
        ]
        .iter()
        .all(|id| is(ha, id, "unavailable"))
    });
    let mut gw = Gateway::start_with_env(&config, dir.path(), "info", &dbus);
    wait(&ha, &gw, "all back", |ha| {
        shows(ha, "gw_meter_temp", 21.5, "°C", "temperature")
            && shows(ha, "gw_room_temperature", 19.5, "°C", "temperature")
    });

    // Home Assistant restarts and the broker has lost the discovery
    // messages: when Home Assistant says `online`, they come again.
    ha.stop();
    for id in ["gw", "gw_meter", "gw_room", "gw_livingroom"] {
        publish_retained(
            broker.port,
            &format!("homeassistant/device/{id}/config"),
            "",
        );
    }
    ha.restart();
    wait(&ha, &gw, "the devices announced again", |ha| {
        shows(ha, "gw_meter_temp", 21.5, "°C", "temperature")
            && shows(ha, "gw_room_temperature", 19.5, "°C", "temperature")
    });
    assert!(
        gw.log().contains("Home Assistant is online"),
        "{}",
        gw.log()
    );

    // `room` removed from the configuration: removed from Home Assistant.
    write_config(dir.path(), broker.port, "", &devices(modbus_port, false));
    gw.sighup();
    wait(&ha, &gw, "room removed", |ha| {
        ha.device("gw_room").is_none()
    });
    assert!(ha.device("gw_meter").is_some(), "the others stay");
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

/// Polls `done` for up to a minute.
fn poll_until(done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
