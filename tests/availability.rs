//! Device availability end to end: `P/availability/{device}` at a real
//! mosquitto, for a Modbus TCP unit served by tokio-modbus that stops
//! answering and comes back, across a gateway restart (kill -9) and a
//! broker restart, and for devices removed by a configuration change.
//! (The BLE case, which needs the mock BlueZ, is in tests/ble.rs.)

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::modbus_slave::{Slave, Tables};
use common::*;

const LONG: Duration = Duration::from_secs(60);

#[track_caller]
fn wait_for(sub: &Subscriber, gw: &Gateway, what: &str, pred: impl Fn(&[Message]) -> bool) {
    assert!(
        sub.wait_until(LONG, pred),
        "waited in vain for {what}: {:?}\n{}",
        sub.messages()
            .iter()
            .map(|m| (m.topic.clone(), m.text()))
            .collect::<Vec<_>>(),
        gw.log()
    );
}

/// Whether the last availability of `device` seen is `state`.
fn is(messages: &[Message], device: &str, state: &str) -> bool {
    availability(messages, device).last().map(String::as_str) == Some(state)
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    (pairs.iter())
        .map(|(d, s)| (d.to_string(), s.to_string()))
        .collect()
}

/// A Modbus TCP device polled every 200 ms at `port`, with `extra` keys.
fn modbus_device(name: &str, port: u16, extra: &str) -> String {
    format!(
        "  - name: {name}\n    kind: modbus\n    tcp: {{ host: 127.0.0.1, port: {port} }}\n    poll: 200ms\n    timeout: 300ms\n{extra}    points:\n      - {{ name: v, register: holding, address: 0 }}\n"
    )
}

/// A simulated device that reads every 200 ms (offline after 600 ms
/// without a reading, by default).
fn alive(name: &str) -> String {
    sim_device(name, "200ms", 1_000_000, "")
}

#[test]
fn a_modbus_unit_that_stops_answering_goes_offline_within_offline_after_and_back_online() {
    let broker = Broker::start();
    let mut slave = Slave::new([(1, Tables::default().holding(0, &[7]))]);
    let port = slave.serve_tcp(0);
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::connect(broker.port, "check-av-modbus", AVAILABILITY);
    let devices = modbus_device("meter", port, "    offline_after: 2s\n");
    let config = write_config(dir.path(), broker.port, "", &devices);
    let mut gw = Gateway::start(&config, dir.path());

    wait_for(&sub, &gw, "online", |m| is(m, "meter", "online"));
    let retained = retained_availability(broker.port, "check-av-modbus-1");
    assert_eq!(retained, map(&[("meter", "online")]));

    // The unit goes silent: every request times out from now on.
    let tables = slave.state().units.remove(&1).unwrap();
    let stopped = Instant::now();
    wait_for(&sub, &gw, "offline", |m| is(m, "meter", "offline"));
    let messages = sub.messages();
    let offline = messages.iter().rfind(|m| m.text() == "offline").unwrap();
    let after = offline.at.duration_since(stopped);
    eprintln!("offline {after:?} after the unit stopped answering");
    // Its last answer came at most one poll before it stopped; the timer
    // notices the threshold at once, and the message goes first.
    assert!(
        after >= Duration::from_millis(1_500) && after <= Duration::from_secs(5),
        "offline {after:?} after the unit stopped answering (offline_after 2s)\n{}",
        gw.log()
    );
    let retained = retained_availability(broker.port, "check-av-modbus-2");
    assert_eq!(retained, map(&[("meter", "offline")]));

    // It answers again: online with its next poll (however far the
    // backoff of a silent unit has pushed it).
    slave.state().units.insert(1, tables);
    let back = Instant::now();
    wait_for(&sub, &gw, "online again", |m| {
        availability_changes(m, "meter").len() >= 3
    });
    eprintln!("online again {:?} after the unit answered", back.elapsed());
    let messages = sub.messages();
    assert_eq!(
        availability_changes(&messages, "meter"),
        ["online", "offline", "online"]
    );
    // Only changes: one offline, however many polls failed.
    let offlines = availability(&messages, "meter")
        .iter()
        .filter(|s| *s == "offline")
        .count();
    assert_eq!(offlines, 1, "{:?}", availability(&messages, "meter"));
    let retained = retained_availability(broker.port, "check-av-modbus-3");
    assert_eq!(retained, map(&[("meter", "online")]));
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn after_a_gateway_restart_the_retained_states_come_from_the_store() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::connect(broker.port, "check-av-restart", AVAILABILITY);
    // Nothing listens on the ghost's port: it never reads.
    let ghost = modbus_device("ghost", free_port(), "    offline_after: 1s\n");
    let devices = alive("pump") + &ghost + &alive("old");
    let config = write_config(dir.path(), broker.port, "", &devices);
    let mut gw = Gateway::start(&config, dir.path());
    wait_for(&sub, &gw, "three states", |m| {
        is(m, "pump", "online") && is(m, "ghost", "offline") && is(m, "old", "online")
    });
    gw.kill9();

    // The broker forgets them (an operator clears the topics); `old` is
    // removed from the configuration while the gateway is down.
    for device in ["pump", "ghost", "old"] {
        clear_retained_availability(broker.port, device);
    }
    assert_eq!(
        retained_availability(broker.port, "check-av-restart-1"),
        map(&[])
    );
    let config = write_config(dir.path(), broker.port, "", &(alive("pump") + &ghost));
    sub.clear();
    let gw = Gateway::start(&config, dir.path());
    wait_for(&sub, &gw, "the states again", |m| {
        is(m, "pump", "online") && is(m, "ghost", "offline")
    });
    let retained = retained_availability(broker.port, "check-av-restart-2");
    assert_eq!(
        retained,
        map(&[("ghost", "offline"), ("pump", "online")]),
        "{}",
        gw.log()
    );
    // Published from the stored states, not found out again: the new
    // trackers' findings matched the store, so no change was queued.
    let log = gw.log();
    assert!(
        !log.contains("device ghost is offline") && !log.contains("device pump is online"),
        "{log}"
    );
    assert!(
        log.contains(r#"availability cleared for removed devices ["old"]"#),
        "{log}"
    );
    assert_eq!(availability(&sub.messages(), "old"), [""]);
}

#[test]
fn on_reconnect_after_a_broker_restart_every_state_is_published_again() {
    let mut broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::connect(broker.port, "check-av-broker", AVAILABILITY);
    let ghost = modbus_device("ghost", free_port(), "    offline_after: 1s\n");
    let config = write_config(dir.path(), broker.port, "", &(alive("pump") + &ghost));
    let gw = Gateway::start(&config, dir.path());
    wait_for(&sub, &gw, "both states", |m| {
        is(m, "pump", "online") && is(m, "ghost", "offline")
    });

    // The broker loses the retained states, then restarts (saving that).
    for device in ["pump", "ghost"] {
        clear_retained_availability(broker.port, device);
    }
    assert_eq!(
        retained_availability(broker.port, "check-av-broker-1"),
        map(&[])
    );
    sub.clear();
    broker.restart();
    // The subscriber's session survives the restart; the gateway
    // reconnects and says both states again, though neither changed.
    wait_for(&sub, &gw, "the states again", |m| {
        is(m, "pump", "online") && is(m, "ghost", "offline")
    });
    let retained = retained_availability(broker.port, "check-av-broker-2");
    assert_eq!(
        retained,
        map(&[("ghost", "offline"), ("pump", "online")]),
        "{}",
        gw.log()
    );
    assert!(
        gw.log().matches("device ghost is offline").count() == 1,
        "one change only\n{}",
        gw.log()
    );
}

#[test]
fn a_device_removed_by_a_configuration_change_has_its_availability_cleared() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::connect(broker.port, "check-av-removed", AVAILABILITY);
    let config = write_config(
        dir.path(),
        broker.port,
        "",
        &(alive("pump") + &alive("fan")),
    );
    let mut gw = Gateway::start(&config, dir.path());
    wait_for(&sub, &gw, "both online", |m| {
        is(m, "pump", "online") && is(m, "fan", "online")
    });
    assert_eq!(
        retained_availability(broker.port, "check-av-removed-1"),
        map(&[("fan", "online"), ("pump", "online")])
    );

    // SIGHUP with `fan` gone from the file.
    write_config(dir.path(), broker.port, "", &alive("pump"));
    gw.sighup();
    wait_for(&sub, &gw, "an empty message for fan", |m| is(m, "fan", ""));
    assert_eq!(
        retained_availability(broker.port, "check-av-removed-2"),
        map(&[("pump", "online")]),
        "{}",
        gw.log()
    );
    // (`online` may come twice: queued, and from the stored states when
    // the gateway connected.)
    assert_eq!(availability_changes(&sub.messages(), "fan"), ["online", ""]);

    // It comes back: online again, from a fresh start.
    write_config(
        dir.path(),
        broker.port,
        "",
        &(alive("pump") + &alive("fan")),
    );
    gw.sighup();
    wait_for(&sub, &gw, "fan online again", |m| is(m, "fan", "online"));
    assert_eq!(
        retained_availability(broker.port, "check-av-removed-3"),
        map(&[("fan", "online"), ("pump", "online")])
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}
