//! End to end: simulated sources → store → uplink → a real mosquitto →
//! a subscriber. Each test starts its own broker on a free port.

mod common;

use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(120);

#[test]
fn ten_thousand_qos1_readings_arrive_complete_and_in_order() {
    let devices: String = (0..10)
        .map(|i| sim_device(&format!("dev{i}"), "1ms", 1_000, "    qos: 1\n"))
        .collect();
    let rig = Rig::new("check-10k", TELEMETRY, &devices);

    let started = Instant::now();
    let mut gw = rig.gateway();
    let complete = rig
        .sub
        .wait_until(LONG, |m| distinct_seqs(m).len() >= 10_000);
    let elapsed = started.elapsed();
    assert!(
        complete,
        "only {} readings arrived\n{}",
        rig.sub.count(),
        gw.log()
    );
    let messages = rig.sub.messages();
    let seqs = distinct_seqs(&messages);
    assert!(
        reading_seqs_fit(&seqs, 10_000, 10),
        "a seq is missing or unexpected: {} seqs, up to {:?}",
        seqs.len(),
        seqs.last()
    );
    assert_ordered_per_device(&messages);
    assert!(telemetry(&messages).iter().all(|(_, _, qos)| *qos == 1));
    eprintln!(
        "10,000 readings end to end in {elapsed:?} ({:.0} readings/s)",
        10_000.0 / elapsed.as_secs_f64()
    );

    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    assert_eq!(stored_rows(rig.dir.path()), 0, "the store must be empty");
}

#[test]
fn broker_restart_mid_flow_loses_nothing() {
    let devices =
        sim_device("a", "2ms", 2_000, "") + &sim_device("b", "2ms", 2_000, "    qos: 2\n");
    // A persistent session, so the broker queues for the subscriber while
    // it is away, too.
    let mut rig = Rig::new("check-restart", TELEMETRY, &devices);
    let mut gw = rig.gateway();

    rig.expect(&gw, LONG, |m| distinct_seqs(m).len() >= 500);
    rig.broker.stop();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        gw.is_running(),
        "the gateway must survive the outage\n{}",
        gw.log()
    );
    rig.broker.restart();

    let complete = rig
        .sub
        .wait_until(LONG, |m| distinct_seqs(m).len() >= 4_000);
    assert!(
        complete,
        "{} of 4000 arrived\n{}",
        distinct_seqs(&rig.sub.messages()).len(),
        gw.log()
    );
    let messages = rig.sub.messages();
    assert!(reading_seqs_fit(&distinct_seqs(&messages), 4_000, 2));
    assert_ordered_per_device(&messages);
    let log = gw.log();
    assert!(
        log.contains("down"),
        "the outage must have been noticed\n{log}"
    );

    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    assert_eq!(stored_rows(rig.dir.path()), 0);
}

#[test]
fn without_a_broker_readings_accumulate_then_drain() {
    // Create the subscriber's session first, then take the broker away.
    let mut rig = Rig::new("check-late", TELEMETRY, &sim_device("late", "5ms", 300, ""));
    rig.broker.stop();

    let mut gw = Gateway::start_logging(&rig.config, rig.dir.path(), "fieldgate=debug");
    assert!(
        gw.wait_for_log("down", Duration::from_secs(20)),
        "{}",
        gw.log()
    );
    let outage_started = Instant::now();

    // The queue grows while there is nowhere to send it.
    let queued = || queued_rows(&rig.config);
    let deadline = Instant::now() + LONG;
    // The readings, and the device's `online`.
    while queued() < 301 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(queued(), 301, "all readings must wait in the store");
    assert!(gw.is_running());
    assert_eq!(rig.sub.count(), 0);

    // rumqttc retries at once, forever; the uplink must pace its attempts
    // (backoff 100ms doubling to 1s here): a handful per second, not a
    // busy loop. The bound is generous: one attempt per 50ms, the lower
    // end of the jitter.
    let attempts = gw
        .log()
        .matches("fieldgate::uplink: reconnecting in")
        .count();
    let allowed = 2 + (outage_started.elapsed().as_millis() / 50) as usize;
    assert!(
        (2..=allowed).contains(&attempts),
        "{attempts} attempts, at most {allowed} allowed"
    );
    // Logged once per change of state, not once per attempt: one line for
    // the telemetry connection, one for the commands connection.
    let log = gw.log();
    assert_eq!(log.matches("WARN").count(), 2, "{log}");
    assert_eq!(log.matches("MQTT link down").count(), 1, "{log}");
    assert_eq!(log.matches("commands link down").count(), 1, "{log}");

    rig.broker.restart();
    rig.expect(&gw, LONG, |m| distinct_seqs(m).len() >= 300);
    assert!(reading_seqs_fit(
        &distinct_seqs(&rig.sub.messages()),
        300,
        1
    ));
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    assert_eq!(stored_rows(rig.dir.path()), 0);
}

#[test]
fn kill_9_loses_no_committed_reading() {
    let devices = sim_device("k1", "1ms", 100_000, "") + &sim_device("k2", "1ms", 100_000, "");
    let rig = Rig::new("check-kill", TELEMETRY, &devices);

    let mut gw = rig.gateway();
    rig.expect(&gw, LONG, |m| distinct_seqs(m).len() >= 1_000);
    gw.kill9();
    // What was committed and not yet acknowledged when it died (what was
    // acknowledged first was never written, or deleted).
    let (dir, port) = (rig.dir.path(), rig.broker.port);
    let stored = stored_seqs(dir);
    let delivered = distinct_seqs(&rig.sub.messages());
    eprintln!(
        "at the kill: {} delivered, {} stored, {} stored and delivered",
        delivered.len(),
        stored.len(),
        stored.intersection(&delivered).count()
    );

    // The restarted gateway sends what the first one could not.
    let config = write_config(dir, port, "", &sim_device("k1", "1s", 1, ""));
    let mut gw = Gateway::start(&config, dir);
    // The first connection waits up to `mqtt.connect_jitter`; the
    // subscriber may already hold every seq from before the kill.
    assert!(gw.wait_for_log("connected to", LONG), "{}", gw.log());
    rig.expect_seqs(&gw, LONG, &stored);
    assert_ordered_per_device(&rig.sub.messages());
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    assert_eq!(stored_rows(dir), 0, "{}", gw.log());
}

#[test]
fn readings_acked_before_their_commit_are_never_written() {
    let devices = sim_device("w1", "5ms", 200, "") + &sim_device("w2", "5ms", 200, "");
    // Connected at once, so that no reading waits for the link.
    let rig = Rig::with(
        "check-written",
        TELEMETRY,
        "",
        "  connect_jitter: 0s\n",
        &devices,
    );
    // Commits at the default interval, 200 ms (the tests' 50 ms can be
    // shorter than an ack to a debug build on a busy machine): most
    // readings beat their commit.
    let text = std::fs::read_to_string(&rig.config).unwrap();
    let text = text.replace("  flush_interval: 50ms\n", "");
    std::fs::write(&rig.config, text).unwrap();
    let status = Subscriber::connect(rig.broker.port, "check-status", "fieldgate/gw/status");
    let mut gw = rig.gateway();
    rig.expect(&gw, LONG, |m| distinct_seqs(m).len() >= 400);
    let done = |m: &[Message]| m.iter().any(|m| m.json()["counters"]["published"] == 400);
    assert!(status.wait_until(LONG, done), "{}", gw.log());
    let last = status.messages().last().unwrap().json();
    let written = last["queue"]["written"].as_u64().unwrap();
    let taken = last["counters"]["readings_in"].as_u64().unwrap();
    eprintln!("{written} of {taken} readings written to the store");
    assert_eq!(taken, 400);
    assert!(written * 2 < taken, "most readings were written: {last}");
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    assert_eq!(stored_rows(rig.dir.path()), 0);
}

#[test]
fn devices_publish_with_their_own_qos() {
    let devices = sim_device("q0", "5ms", 50, "    qos: 0\n")
        + &sim_device("q1", "5ms", 50, "    qos: 1\n")
        + &sim_device("q2", "5ms", 50, "    qos: 2\n");
    let rig = Rig::new("check-qos", TELEMETRY, &devices);
    let status = Subscriber::connect(rig.broker.port, "check-status", "fieldgate/gw/status");
    let mut gw = rig.gateway();
    rig.expect(&gw, LONG, |m| distinct_seqs(m).len() >= 150);
    for (device, _, qos) in telemetry(&rig.sub.messages()) {
        let expected = device[1..].parse::<u8>().unwrap();
        assert_eq!(qos, expected, "{device} arrived with QoS {qos}");
    }
    let birth = status.messages()[0].json();
    assert_eq!(birth["state"], "online");
    assert_eq!(birth["version"], env!("CARGO_PKG_VERSION"));
    let config_version = birth["config_version"].as_str().unwrap();
    assert!(config_version.starts_with("local-"), "{config_version}");
    assert!(birth["queue"]["rows"].is_u64());

    // Every status_interval (1s here) the status is refreshed with counters.
    let counted = |m: &[Message]| {
        m.iter().any(|m| {
            let j = m.json();
            j["counters"]["published"] == 150 && j["devices"]["q2"]["readings"] == 50
        })
    };
    assert!(
        status.wait_until(Duration::from_secs(20), counted),
        "{:?}",
        status.messages()
    );

    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    // A clean shutdown replaces the retained status with `offline` itself.
    let offline = |m: &[Message]| m.last().is_some_and(|m| m.json()["state"] == "offline");
    assert!(
        status.wait_until(Duration::from_secs(10), offline),
        "{}",
        gw.log()
    );
    assert_eq!(
        status.messages().last().unwrap().json(),
        serde_json::json!({ "state": "offline" })
    );
    assert!(gw.log().contains("stopped"));
    let late = Subscriber::connect(rig.broker.port, "check-retained", "fieldgate/gw/status");
    assert!(late.wait_until(Duration::from_secs(10), |m| !m.is_empty()));
    assert!(late.messages()[0].retain, "the status must be retained");
    assert_eq!(late.messages()[0].json()["state"], "offline");
    assert_eq!(stored_rows(rig.dir.path()), 0);
}

/// rumqttc reuses a packet id while an older QoS 2 message with that id
/// awaits PUBCOMP. With one id→row map that deletes the wrong row and then
/// meets an ack it cannot place; here every row must be delivered exactly
/// once on a single connection and deleted exactly once.
#[test]
fn mixed_qos_1_and_2_with_inflight_100_delete_exactly_the_acked_rows() {
    let devices: String = (0..10)
        .map(|i| {
            sim_device(
                &format!("m{i}"),
                "1ms",
                1_000,
                &format!("    qos: {}\n", 1 + i % 2),
            )
        })
        .collect();
    let rig = Rig::with(
        "check-mixed",
        TELEMETRY,
        "",
        "  max_inflight: 100\n",
        &devices,
    );
    let mut gw = rig.gateway();
    rig.expect(&gw, LONG, |m| distinct_seqs(m).len() >= 10_000);
    std::thread::sleep(Duration::from_millis(500));

    let messages = rig.sub.messages();
    let received = telemetry(&messages);
    assert_eq!(
        received.len(),
        10_000,
        "no row may be sent twice on one connection"
    );
    assert!(reading_seqs_fit(&distinct_seqs(&messages), 10_000, 10));
    let qos2 = received.iter().filter(|(_, _, q)| *q == 2).count();
    assert_eq!(qos2, 5_000);
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    let log = gw.log();
    assert_eq!(
        log.matches("connected to").count(),
        1,
        "one connection only\n{log}"
    );
    assert!(!log.contains("bookkeeping"), "{log}");
    assert_eq!(stored_rows(rig.dir.path()), 0);
}
