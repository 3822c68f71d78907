use crate::config::{Config, ConfigError, DeviceConfig, load_remote, load_str};

use super::Endpoint;

const HEAD: &str = "gateway: { id: gw }\nmqtt: { url: \"mqtt://127.0.0.1:1883\" }\n";

/// Devices of the local file; remote documents below are edits of them.
const DEVICES: &str = r#"  - name: boiler
    kind: modbus
    tcp: { host: 10.0.0.5, port: 502 }
    unit: 1
    poll: 5s
    points:
      - { name: temperature, register: holding, address: 0, type: i16, scale: 0.1, deadband: 0.2 }
      - { name: setpoint, register: holding, address: 10, type: u16, writable: true, min: 5, max: 80 }
  - name: panel
    kind: serial
    port: /dev/ttyUSB0
    format: kv
    fields: { t: temperature }
    write: { valve: "SET valve {value}\n" }
  - name: fan
    kind: ble
    address: "AA:BB:CC:DD:EE:01"
    decoder: gatt
    characteristics:
      - { point: level, uuid: 2a19, service: 180f, mode: read }
      - { point: speed, uuid: 2a3f, service: 180f, mode: read, writable: true }
"#;

fn local(remote_config: &str) -> Config {
    let text = format!("{HEAD}{remote_config}devices:\n{DEVICES}");
    match load_str(&text, "f.yaml") {
        Ok(config) => config,
        Err(e) => panic!("{e}"),
    }
}

fn document(devices: &str) -> String {
    format!("version: v2\ndevices:\n{devices}")
}

/// The local devices with `edits` (from, to) applied, each of which must
/// change the text.
fn edited(edits: &[(&str, &str)]) -> String {
    let mut devices = DEVICES.to_owned();
    for (from, to) in edits {
        assert!(devices.contains(from), "{from}");
        devices = devices.replacen(from, to, 1);
    }
    devices
}

/// (line, column) of `value` on the first line of `text` that holds `line`.
fn at(text: &str, line: &str, value: &str) -> (usize, usize) {
    let (i, found) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(line))
        .unwrap_or_else(|| panic!("no line with {line}"));
    let col = found.find(value).unwrap_or_else(|| panic!("no {value}"));
    (i + 1, col + 1)
}

/// The refusal of a remote document: (path, (line, column), message).
fn refused(local: &Config, devices: &str) -> Vec<(String, (usize, usize), String)> {
    match load_remote(&document(devices), local) {
        Err(ConfigError::Invalid { problems, .. }) => problems
            .into_iter()
            .map(|p| {
                let mark = p.mark.map_or((0, 0), |m| (m.line, m.col));
                (p.path, mark, p.message)
            })
            .collect(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn paths(found: &[(String, (usize, usize), String)]) -> Vec<&str> {
    found.iter().map(|(p, _, _)| p.as_str()).collect()
}

fn applies(local: &Config, devices: &str) -> Config {
    match load_remote(&document(devices), local) {
        Ok(config) => config,
        Err(e) => panic!("expected it to apply, got:\n{e}"),
    }
}

const WIDENING: &[(&str, &str)] = &[
    (
        "type: i16, scale: 0.1, deadband: 0.2 }",
        "type: i16, scale: 0.1, writable: true, min: -1000, max: 1000 }",
    ),
    ("min: 5, max: 80", "min: 0, max: 6000"),
];

#[test]
fn the_local_devices_themselves_apply() {
    let config = applies(&local(""), DEVICES);
    assert_eq!(config.devices, local("").devices);
}

#[test]
fn a_point_made_writable_and_a_widened_range_are_refused_at_their_positions() {
    let devices = edited(WIDENING);
    let doc = document(&devices);
    let found = refused(&local(""), &devices);
    assert_eq!(
        paths(&found),
        [
            "devices[0].points[0].writable",
            "devices[0].points[1].min",
            "devices[0].points[1].max",
        ],
        "{found:#?}"
    );
    assert_eq!(found[0].1, at(&doc, "name: temperature", "true"));
    assert_eq!(found[1].1, at(&doc, "name: setpoint", "0, max"));
    assert_eq!(found[2].1, at(&doc, "name: setpoint", "6000"));
    assert!(
        found[0]
            .2
            .starts_with("`boiler.temperature` is not writable in the local file"),
        "{}",
        found[0].2
    );
    assert!(found[0].2.contains("remote_config.allow_writes"));
    assert!(found[1].2.contains("min 0 is below 5, the local min"));
    assert!(found[2].2.contains("max 6000 is above 80, the local max"));

    // Rendered like every other problem of a remote document.
    let err = load_remote(&doc, &local("")).unwrap_err().to_string();
    let (line, col) = at(&doc, "name: temperature", "true");
    assert!(
        err.starts_with(&format!(
            "remote configuration:{line}:{col}: devices[0].points[0].writable: "
        )),
        "{err}"
    );

    // Leaving a bound out widens the range too.
    let found = refused(
        &local(""),
        &edited(&[("writable: true, min: 5, max: 80", "writable: true, max: 80")]),
    );
    assert_eq!(paths(&found), ["devices[0].points[1].min"]);
    assert!(found[0].2.contains("no min, the local min is 5"));
}

#[test]
fn a_narrower_range_or_a_point_made_read_only_applies() {
    let config = applies(
        &local(""),
        &edited(&[("min: 5, max: 80", "min: 10, max: 50")]),
    );
    let DeviceConfig::Modbus(boiler) = &config.devices[0] else {
        panic!("{:?}", config.devices[0]);
    };
    assert_eq!(
        (boiler.points[1].min, boiler.points[1].max),
        (Some(10.0), Some(50.0))
    );
    applies(
        &local(""),
        &edited(&[(", writable: true, min: 5, max: 80", "")]),
    );
}

#[test]
fn a_writable_point_keeps_where_and_how_it_writes() {
    let found = refused(
        &local(""),
        &edited(&[(
            "address: 10, type: u16, writable",
            "address: 11, type: i32, word_order: little, scale: 2, writable",
        )]),
    );
    let expected =
        ["address", "type", "word_order", "scale"].map(|key| format!("devices[0].points[1].{key}"));
    assert_eq!(paths(&found), expected, "{found:#?}");
    assert!(
        found[0]
            .2
            .starts_with("`boiler.setpoint` is writable, so its `address` must stay")
    );

    let found = refused(
        &local(""),
        &edited(&[(
            "register: holding, address: 10, type: u16",
            "register: coil, address: 10",
        )]),
    );
    // A coil is a bool: `type` differs with `register`.
    let mut found = paths(&found);
    found.sort();
    assert_eq!(
        found,
        ["devices[0].points[1].register", "devices[0].points[1].type"]
    );

    // The device's unit and address base decide which registers a write reaches.
    let devices = edited(&[
        ("    unit: 1\n", "    unit: 2\n    address_base: 1\n"),
        (
            "register: holding, address: 0,",
            "register: holding, address: 1,",
        ),
    ]);
    let found = refused(&local(""), &devices);
    assert_eq!(
        paths(&found),
        ["devices[0].unit", "devices[0].address_base"],
        "{found:#?}"
    );
    assert_eq!(found[0].1, at(&document(&devices), "unit: 2", "2"));
    assert!(
        found[0]
            .2
            .starts_with("`boiler` has writable points, so its `unit` must stay")
    );

    // The same point under another device name is a new write permission.
    let found = refused(&local(""), &edited(&[("name: boiler", "name: boiler-2")]));
    assert_eq!(paths(&found), ["devices[0].points[1].writable"]);
}

#[test]
fn a_serial_write_template_may_not_change_or_be_added() {
    let found = refused(
        &local(""),
        &edited(&[(
            r#"write: { valve: "SET valve {value}\n" }"#,
            r#"write: { valve: "SET valve 100\n{value}\n", pump: "P {value}\n" }"#,
        )]),
    );
    assert_eq!(
        paths(&found),
        ["devices[1].write.valve", "devices[1].write.pump"],
        "{found:#?}"
    );
    assert!(found[0].2.contains("its `write template` must stay"));
    assert!(
        found[1]
            .2
            .starts_with("`panel.pump` is not writable in the local file")
    );

    // Another port is another device, even one the local file allows.
    let trusting = local("remote_config: { allow_endpoints: [/dev/ttyUSB1] }\n");
    let found = refused(&trusting, &edited(&[("/dev/ttyUSB0", "/dev/ttyUSB1")]));
    assert_eq!(paths(&found), ["devices[1].port"], "{found:#?}");
    assert!(found[0].2.starts_with("`panel` has writable points"));
}

#[test]
fn a_gatt_characteristic_may_not_become_writable_or_move() {
    let found = refused(
        &local(""),
        &edited(&[
            (
                "service: 180f, mode: read }",
                "service: 180f, mode: read, writable: true }",
            ),
            ("uuid: 2a3f", "uuid: 2a40"),
        ]),
    );
    assert_eq!(
        paths(&found),
        [
            "devices[2].characteristics[0].writable",
            "devices[2].characteristics[1].uuid"
        ],
        "{found:#?}"
    );
    // How it is read is not how it is written.
    applies(
        &local(""),
        &edited(&[("mode: read, writable", "mode: notify, writable")]),
    );
}

#[test]
fn endpoints_come_from_the_local_file_or_its_allow_list() {
    let meter = |endpoint: &str| {
        format!(
            "{DEVICES}  - {{ name: meter, kind: modbus, {endpoint}, unit: 2, points: [{{ name: p, register: input, address: 0 }}] }}\n"
        )
    };
    // Another unit behind an endpoint of the local file.
    applies(&local(""), &meter("tcp: { host: 10.0.0.5 }"));

    let devices = meter("tcp: { host: 10.0.0.9 }");
    let found = refused(&local(""), &devices);
    assert_eq!(paths(&found), ["devices[3].tcp"], "{found:#?}");
    assert_eq!(found[0].1, at(&document(&devices), "name: meter", "{ host"));
    assert!(
        found[0]
            .2
            .starts_with("`tcp://10.0.0.9:502` is not an endpoint of the local file"),
        "{}",
        found[0].2
    );
    let found = refused(&local(""), &meter("rtu: { port: /dev/ttyUSB1 }"));
    assert_eq!(paths(&found), ["devices[3].rtu.port"]);
    let ble = format!(
        "{DEVICES}  - {{ name: tag, kind: ble, address: 'A4:C1:38:00:00:01', decoder: atc }}\n"
    );
    let found = refused(&local(""), &ble);
    assert_eq!(paths(&found), ["devices[3].address"]);
    assert!(
        found[0]
            .2
            .starts_with("`ble:A4:C1:38:00:00:01` is not an endpoint")
    );

    let trusting = local(
        "remote_config:\n  allow_endpoints: [\"tcp://10.0.0.9:502\", /dev/ttyUSB1, \"ble:a4:c1:38:00:00:01\"]\n",
    );
    applies(&trusting, &meter("tcp: { host: 10.0.0.9 }"));
    applies(&trusting, &meter("rtu: { port: /dev/ttyUSB1 }"));
    applies(&trusting, &ble);
    let found = refused(&trusting, &meter("tcp: { host: 10.0.0.9, port: 503 }"));
    assert_eq!(paths(&found), ["devices[3].tcp"]);
    // Opting in to writes does not open endpoints.
    let found = refused(&local("remote_config: { allow_writes: true }\n"), &devices);
    assert_eq!(paths(&found), ["devices[3].tcp"]);
}

#[test]
fn read_only_points_and_everything_but_writes_and_endpoints_may_change() {
    let devices = edited(&[
        (
            "{ name: temperature, register: holding, address: 0, type: i16, scale: 0.1, deadband: 0.2 }",
            "{ name: temperature, register: input, address: 4, type: f32, deadband: 1 }\n      - { name: pressure, register: input, address: 8 }",
        ),
        (
            "poll: 5s",
            "poll: 1s\n    qos: 2\n    priority: high\n    batch: { max_readings: 10 }",
        ),
        (
            "fields: { t: temperature }",
            "fields: { t: temperature, h: humidity }",
        ),
        (
            "      - { point: level, uuid: 2a19, service: 180f, mode: read }\n",
            "",
        ),
    ]);
    let config = applies(&local(""), &devices);
    let DeviceConfig::Modbus(boiler) = &config.devices[0] else {
        panic!("{:?}", config.devices[0]);
    };
    assert_eq!(boiler.points.len(), 3);
    assert_eq!(boiler.points[2].deadband, None);
    assert_eq!(boiler.poll, crate::config::Duration::from_secs(1));

    // Devices without writes may go, and read-only ones come.
    applies(
        &local(""),
        "  - { name: demo, kind: simulated, points: [{ name: w, signal: sine }] }\n",
    );
}

#[test]
fn opting_in_to_writes_lets_a_document_widen_them() {
    let config = applies(
        &local("remote_config: { allow_writes: true }\n"),
        &edited(WIDENING),
    );
    let DeviceConfig::Modbus(boiler) = &config.devices[0] else {
        panic!("{:?}", config.devices[0]);
    };
    assert!(boiler.points[0].writable);
    assert_eq!(boiler.points[1].max, Some(6000.0));
    // The trust itself stays local.
    let err = load_remote(
        "version: v3\nremote_config: { allow_writes: true }\nble: { adapter: hci1 }\ndevices: []\n",
        &local(""),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("remote configuration:2:1: remote_config: `remote_config` stays local"),
        "{err}"
    );
    assert!(
        err.contains("remote configuration:3:1: ble: `ble` stays local"),
        "{err}"
    );
}

#[test]
fn endpoints_are_written_one_way_and_checked_where_they_are_written() {
    for (text, shown) in [
        ("tcp://10.0.0.5:502", "tcp://10.0.0.5:502"),
        ("tcp://PLC.local", "tcp://plc.local:502"),
        ("tcp://[FD00::5]:1502", "tcp://[fd00::5]:1502"),
        ("/dev/serial/by-id/usb-FTDI", "/dev/serial/by-id/usb-FTDI"),
        ("ble:a4:c1:38:12:34:56", "ble:A4:C1:38:12:34:56"),
        ("ble-name:ATC_1234", "ble-name:ATC_1234"),
    ] {
        let parsed = Endpoint::parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.to_string(), shown);
        assert_eq!(Endpoint::parse(shown), Ok(parsed));
    }
    for bad in [
        "10.0.0.5:502",
        "tcp://",
        "tcp://h:0",
        "tcp://h:70000",
        "tcp://fd00::5",
        "tcp://h/x",
        "ble:A4:C1",
        "ble-name:",
        "ttyUSB0",
        "/",
    ] {
        assert!(Endpoint::parse(bad).is_err(), "{bad}");
    }
    let text = format!(
        "{HEAD}remote_config:\n  allow_endpoints: [/dev/ttyUSB1, \"udp://h\"]\n  allow_writes: yes\n"
    );
    let found = match load_str(&text, "f.yaml") {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("{other:?}"),
    };
    let found: Vec<_> = found
        .iter()
        .map(|p| (p.path.as_str(), p.mark.map(|m| (m.line, m.col))))
        .collect();
    assert_eq!(
        found,
        [
            (
                "remote_config.allow_endpoints[1]",
                Some(at(&text, "udp", "\"udp"))
            ),
            (
                "remote_config.allow_writes",
                Some(at(&text, "allow_writes", "yes"))
            ),
        ]
    );
}
