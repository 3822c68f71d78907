//! What a message from outside can make the gateway do again and again is
//! bounded: a flood of Home Assistant "online" messages (a looping
//! automation, a bridge replaying its retained state) makes at most one
//! discovery pass per 2 s, the last one answered, and telemetry flows on.
//! (The same for Sparkplug NCMD rebirths: tests/sparkplug.rs.)

mod common;

use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(60);
const FLOOD: usize = 1_000;

fn discovery(messages: &[Message]) -> usize {
    let config = |t: &str| t.starts_with("homeassistant/") && t.ends_with("/config");
    messages.iter().filter(|m| config(&m.topic)).count()
}

fn readings(messages: &[Message]) -> usize {
    telemetry(messages).len()
}

#[test]
fn a_flood_of_home_assistant_online_messages_makes_two_discovery_passes() {
    let broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-ha-flood", "#");
    let dir = tempfile::tempdir().unwrap();
    let devices = format!(
        "{}homeassistant: {{}}\n",
        sim_device("room", "50ms", 1_000_000, "")
    );
    let config = write_config(dir.path(), broker.port, "", &devices);
    let gw = Gateway::start(&config, dir.path());
    assert!(
        sub.wait_until(LONG, |m| discovery(m) >= 1 && readings(m) >= 1),
        "no discovery\n{}",
        gw.log()
    );
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());
    // A pass is the gateway's message and the device's: count them once
    // the first pass is surely out.
    std::thread::sleep(Duration::from_secs(1));
    let per_pass = discovery(&sub.messages());
    assert!(
        per_pass >= 2,
        "{per_pass} discovery messages in the first pass"
    );

    let started = Instant::now();
    publish_many(broker.port, "homeassistant/status", "online", FLOOD);
    // One pass at once (or 2 s after the last) and one owed to the rest.
    assert!(
        sub.wait_until(LONG, |m| discovery(m) >= 2 * per_pass),
        "the flood was not answered: {} discovery messages\n{}",
        discovery(&sub.messages()),
        gw.log()
    );
    // Whatever else comes, comes within the next period.
    std::thread::sleep(Duration::from_secs(3));
    let elapsed = started.elapsed().as_secs_f64();
    let messages = sub.messages();
    let passes = (discovery(&messages) - per_pass) / per_pass;
    eprintln!("{FLOOD} \"online\" messages made {passes} discovery passes in {elapsed:.1} s");
    // One at once, then at most one per 2 s.
    assert!(
        passes as f64 <= 1.0 + elapsed / 2.0,
        "{passes} passes in {elapsed:.1} s"
    );
    // The log says so at powers of two, not a thousand times.
    let logged = gw.log().matches("Home Assistant is online").count();
    assert!(
        (1..=11).contains(&logged),
        "{logged} log lines for {FLOOD} \"online\" messages"
    );
    // Telemetry went on: a reading every 50 ms, in order.
    let before = readings(&messages);
    assert!(
        sub.wait_until(LONG, |m| readings(m) >= before + 20),
        "telemetry stopped\n{}",
        gw.log()
    );
    assert_ordered_per_device(&sub.messages());
    // Counted on P/status: every ask not answered at once.
    let coalesced = |m: &[Message]| {
        m.iter()
            .rfind(|m| m.topic == "fieldgate/gw/status")
            .and_then(|m| m.json()["counters"]["discovery_coalesced"].as_u64())
            .unwrap_or(0)
    };
    let counted = |m: &[Message]| {
        let n = coalesced(m) as usize;
        n >= FLOOD - passes && n <= FLOOD
    };
    assert!(
        sub.wait_until(LONG, counted),
        "P/status counts {} coalesced\n{}",
        coalesced(&sub.messages()),
        gw.log()
    );
}
