//! `mqtt.drain_rate`: after an outage the backlog is replayed at a bounded
//! rate. Live readings are not paced, but today they wait until the
//! uplink's fetch reaches them (see the README).

mod common;

use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(90);

const MQTT: &str = "  drain_rate: 250\n";

#[test]
fn a_backlog_drains_at_drain_rate_and_live_readings_follow_unpaced() {
    let old = sim_device("old", "2ms", 1_500, "");
    let mut rig = Rig::with("check-drain", TELEMETRY, "", MQTT, &old);
    rig.broker.stop();
    let mut gw = rig.gateway();
    wait_for_queued(&rig.config, &gw, 1_500, LONG);
    rig.broker.restart();
    // A device that starts reading once the link is back: all its readings
    // are live, and none of them waits for the old device's backlog.
    assert!(gw.wait_for_log("connected to", LONG), "{}", gw.log());
    let live = sim_device("live", "100ms", 100_000, "");
    write_config_with_store(
        rig.dir.path(),
        rig.broker.port,
        "",
        MQTT,
        &format!("{old}{live}"),
    );
    gw.sighup();

    let of = |m: &[Message], device: &str| -> Vec<std::time::Instant> {
        m.iter()
            .filter(|m| m.topic.ends_with(&format!("/telemetry/{device}")))
            .map(|m| m.at)
            .collect()
    };
    let old_done = |m: &[Message]| {
        telemetry(m)
            .iter()
            .filter(|(d, _, _)| d == "old")
            .map(|(_, seq, _)| *seq)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            >= 1_500
    };
    rig.expect(&gw, LONG, old_done);
    let messages = rig.sub.messages();
    assert_ordered_per_device(&messages);
    let old = of(&messages, "old");
    let (first, last) = (old[0], old[old.len() - 1]);
    let span = last - first;
    eprintln!("1,500 backlog readings at drain_rate 250 took {span:?}");
    // 1,500 at 250/s: 6 s, less the first burst; a slow machine only
    // makes it longer.
    assert!(span >= Duration::from_millis(5_000), "{span:?}");
    // The live device's readings arrive too, in order, and once the
    // backlog is out they are not paced: 10 a second.
    let live_count = |m: &[Message]| of(m, "live").len();
    let before = live_count(&rig.sub.messages());
    rig.expect(&gw, LONG, |m| live_count(m) >= before + 20);
    assert_ordered_per_device(&rig.sub.messages());
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

/// Publishes already queued go out in one socket write, not one each
/// (`vendor/README.md`): a write per publish was most of the CPU a reading
/// cost, and what bounded the drain. `/proc/PID/io`'s `syscw` counts every
/// write the process makes (SQLite's and the log's too).
#[test]
fn a_backlog_goes_out_in_far_fewer_socket_writes_than_messages() {
    const BACKLOG: u64 = 3_000;
    let old = sim_device("old", "1ms", BACKLOG, "");
    let mut rig = Rig::with("check-writes", TELEMETRY, "", "  drain_rate: 0\n", &old);
    rig.broker.stop();
    let mut gw = rig.gateway();
    wait_for_queued(&rig.config, &gw, BACKLOG, LONG);
    let writes = || -> u64 {
        let io = std::fs::read_to_string(format!("/proc/{}/io", gw.pid())).unwrap_or_default();
        io.lines()
            .find_map(|l| l.strip_prefix("syscw:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no syscw in /proc/{}/io: {io}", gw.pid()))
    };
    let before = writes();
    rig.broker.restart();
    rig.expect(&gw, LONG, |m| distinct_seqs(m).len() >= BACKLOG as usize);
    let made = writes() - before;
    eprintln!("{BACKLOG} backlog messages took {made} write calls in all");
    assert!(made < BACKLOG / 3, "{made} writes for {BACKLOG} messages");
    assert_ordered_per_device(&rig.sub.messages());
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}
