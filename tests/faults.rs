//! Network faults between the gateway and its broker, played by a TCP
//! proxy (tests/common/proxy.rs): a black hole, resets, latency, slow
//! links, a flapping link; a failover pair of brokers with a `kill -9`;
//! and a second broker implementation (amqtt). Every case checks that no
//! reading is missing at the subscriber and that each device's readings
//! arrive in order, bounds the gateway's peak memory, and prints how long
//! the gateway took to notice the fault, how long it took to drain once
//! the fault ended, and the duplicate rate.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::amqtt::Amqtt;
use common::proxy::{Fault, Proxy};
use common::*;

/// Time for a wait that normally takes seconds.
const LONG: Duration = Duration::from_secs(90);

/// Peak resident memory allowed to the gateway (a debug build idles at
/// about 20 MB): generous, it catches a queue that grows without bound.
const MAX_HWM_KB: u64 = 150 * 1024;

/// A config for gateway `gw` with the brokers `urls` (in failover order)
/// and a keep-alive (with more `mqtt:` keys after it, if any).
fn config(dir: &Path, urls: &[String], keep_alive: &str, devices: &str) -> PathBuf {
    let urls: String = urls.iter().map(|u| format!("    - {u}\n")).collect();
    let text = format!(
        "gateway:\n  id: gw\n  state_dir: {state}\n  status_interval: 5s\n\
         store:\n  flush_interval: 50ms\n\
         mqtt:\n  urls:\n{urls}  keep_alive: {keep_alive}\n  backoff_min: 100ms\n  backoff_max: 1s\n  connect_jitter: 0s\n\
         devices:\n{devices}",
        state = dir.join("state").display(),
    );
    let path = dir.join("fieldgate.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Two devices, one at QoS 1 and one at QoS 2, `each` readings every `poll`.
fn two_devices(poll: &str, each: u64) -> String {
    sim_device("q1", poll, each, "    qos: 1\n") + &sim_device("q2", poll, each, "    qos: 2\n")
}

/// The gateway's peak resident set (VmHWM), in kB.
fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// When a log line was written (its first word).
fn logged_at(line: &str) -> Option<jiff::Timestamp> {
    line.split_whitespace().next()?.parse().ok()
}

/// Seconds from `since` to the first "MQTT link down" logged after it.
fn detection(log: &str, since: jiff::Timestamp) -> Option<f64> {
    log.lines()
        .filter(|l| l.contains("MQTT link down"))
        .filter_map(logged_at)
        .find(|t| *t >= since)
        .map(|t| t.duration_since(since).as_secs_f64())
}

/// Connections the broker accepted, as the gateway logged them.
fn connections(log: &str) -> usize {
    log.lines().filter(|l| l.contains("connected to ")).count()
}

/// What every case reports.
struct Outcome {
    detect: Option<f64>,
    drain: f64,
    duplicates: f64,
    connections: usize,
    #[allow(dead_code)]
    hwm_kb: u64,
}

/// Waits for `total` readings of [`two_devices`] on `subs` together,
/// then checks and measures: nothing missing, order per device, memory.
/// Two seqs of the first `total + 2` are the devices' `online` messages.
#[track_caller]
fn settle(
    case: &str,
    gw: &mut Gateway,
    earlier: &[Message],
    subs: &[&Subscriber],
    total: i64,
    fault_start: jiff::Timestamp,
    fault_end: Instant,
) -> Outcome {
    let all = || -> Vec<Message> {
        let now = subs.iter().flat_map(|s| s.messages());
        earlier.iter().cloned().chain(now).collect()
    };
    let deadline = Instant::now() + LONG;
    while distinct_seqs(&all()).len() < total as usize && Instant::now() < deadline {
        sleep(Duration::from_millis(50));
    }
    let drain = fault_end.elapsed().as_secs_f64();
    let messages = all();
    let seqs = distinct_seqs(&messages);
    let missing: Vec<i64> = (1..=total + 2).filter(|s| !seqs.contains(s)).collect();
    assert!(
        missing.len() <= 2,
        "{case}: {} of {total} arrived, missing e.g. {:?}\n{}",
        seqs.len(),
        &missing[..missing.len().min(10)],
        gw.log()
    );
    assert!(
        reading_seqs_fit(&seqs, total as usize, 2),
        "{case}: unexpected seqs"
    );
    assert_ordered_per_device(earlier);
    for sub in subs {
        assert_ordered_per_device(&sub.messages());
    }
    // Across brokers too: a device's readings on the second broker follow
    // those on the first in each subscriber; check the union once more by
    // arrival time.
    let mut by_time = messages.clone();
    by_time.sort_by_key(|m| m.at);
    assert_ordered_per_device(&by_time);

    let received = telemetry(&messages).len();
    let duplicates = (received - seqs.len()) as f64 / seqs.len() as f64;
    let hwm_kb = vm_hwm_kb(gw.pid());
    let log = gw.log();
    let why = log
        .lines()
        .filter(|l| l.contains("MQTT link down"))
        .find(|l| logged_at(l).is_some_and(|t| t >= fault_start))
        .and_then(|l| l.split("MQTT link down: ").nth(1))
        .map(|l| l.split("; readings").next().unwrap_or(l).to_owned());
    let outcome = Outcome {
        detect: detection(&log, fault_start),
        drain,
        duplicates,
        connections: connections(&log),
        hwm_kb,
    };
    eprintln!(
        "FAULT {case}: dead link detected after {}, drained {:.2}s after the fault, \
         duplicates {:.2}% ({} of {}), {} connection(s), VmHWM {:.1} MB",
        match (outcome.detect, why) {
            (Some(d), Some(why)) => format!("{d:.2}s ({why})"),
            _ => "- (never down)".to_string(),
        },
        outcome.drain,
        outcome.duplicates * 100.0,
        received - seqs.len(),
        seqs.len(),
        outcome.connections,
        hwm_kb as f64 / 1024.0,
    );
    assert!(
        hwm_kb < MAX_HWM_KB,
        "{case}: VmHWM {hwm_kb} kB over {MAX_HWM_KB} kB"
    );
    assert!(
        gw.sigterm_and_wait(Duration::from_secs(20)).success(),
        "{case}: unclean exit\n{}",
        gw.log()
    );
    outcome
}

/// A broker behind the proxy, a subscriber, and a gateway publishing two
/// devices of `each` readings; `fault` goes on once readings flow, for
/// `hold`, then the link passes again.
fn through_proxy(
    case: &str,
    keep_alive: &str,
    poll: &str,
    each: u64,
    fault: impl FnOnce(&Proxy),
    hold: Duration,
) -> (Outcome, String) {
    let broker = Broker::start();
    let proxy = Proxy::start(broker.port);
    let sub = Subscriber::connect(broker.port, &format!("check-{case}"), TELEMETRY);
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &[proxy.url()],
        keep_alive,
        &two_devices(poll, each),
    );
    let mut gw = Gateway::start(&config, dir.path());
    assert!(
        sub.wait_until(LONG, |m| distinct_seqs(m).len() >= 30),
        "{case}: nothing flows before the fault\n{}",
        gw.log()
    );
    let start = jiff::Timestamp::now();
    fault(&proxy);
    sleep(hold);
    proxy.set(Fault::Pass);
    let end = Instant::now();
    let outcome = settle(case, &mut gw, &[], &[&sub], 2 * each as i64, start, end);
    (outcome, gw.log())
}

#[test]
fn blackhole_is_detected_within_two_keep_alives_and_loses_nothing() {
    // keep-alive 2 s: dead after 1.5 periods of silence (3 s), at the
    // latest when the next ping finds the last one unanswered (4 s).
    let (o, log) = through_proxy(
        "blackhole",
        "2s",
        "20ms",
        300,
        |p| p.set(Fault::Blackhole),
        Duration::from_secs(8),
    );
    let detect = o.detect.unwrap_or_else(|| panic!("never noticed\n{log}"));
    // The silence counts from the last packet heard, up to one ack round
    // before the fault; a busy machine fires timers late.
    assert!(
        detect <= 2.0 * 2.0 + 1.0,
        "blackhole noticed after {detect:.2}s"
    );
    assert!(o.connections >= 2, "{log}");
}

/// The same in MQTT 5, where rumqttc refuses a keep-alive under 5 s: a
/// configured 2 s runs as 5 s (it used to panic the uplink).
#[test]
fn blackhole_is_detected_in_mqtt5_too() {
    let (o, log) = through_proxy(
        "blackhole-mqtt5",
        "2s\n  protocol: \"5\"",
        "20ms",
        300,
        |p| p.set(Fault::Blackhole),
        Duration::from_secs(12),
    );
    let detect = o.detect.unwrap_or_else(|| panic!("never noticed\n{log}"));
    assert!(
        detect <= 2.0 * 5.0 + 1.0,
        "blackhole noticed after {detect:.2}s"
    );
}

#[test]
fn reset_is_detected_at_once_and_loses_nothing() {
    let (o, log) = through_proxy(
        "reset",
        "2s",
        "10ms",
        300,
        |p| p.set(Fault::Reset),
        Duration::from_secs(4),
    );
    let detect = o.detect.unwrap_or_else(|| panic!("never noticed\n{log}"));
    assert!(detect < 2.0, "a reset noticed after {detect:.2}s");
    assert!(o.connections >= 2, "{log}");
}

#[test]
fn latency_of_200ms_each_way_keeps_the_session() {
    let (o, log) = through_proxy(
        "latency-200ms",
        "2s",
        "20ms",
        300,
        |p| p.set(Fault::Latency(Duration::from_millis(200))),
        Duration::from_secs(8),
    );
    assert_eq!(o.detect, None, "{log}");
    assert_eq!(o.connections, 1, "{log}");
}

#[test]
fn a_slow_link_of_20_kb_per_second_keeps_the_session() {
    let (o, log) = through_proxy(
        "slow-20kB/s",
        "2s",
        "10ms",
        400,
        |p| p.set(Fault::Slow(20_000)),
        Duration::from_secs(8),
    );
    assert_eq!(o.detect, None, "{log}");
    assert_eq!(o.connections, 1, "{log}");
}

/// At 2 kB/s a full window of publishes queues for seconds ahead of the
/// keep-alive ping, while acks keep coming back: the link lives, and the
/// session stays (rumqttc alone would fail it on the late PINGRESP).
#[test]
fn a_2_kb_per_second_link_that_carries_acks_keeps_its_session() {
    let (o, log) = through_proxy(
        "slow-2kB/s",
        "1s",
        "10ms",
        300,
        |p| p.set(Fault::Slow(2_000)),
        Duration::from_secs(15),
    );
    assert_eq!(o.detect, None, "the slow link was dropped\n{log}");
    assert_eq!(o.connections, 1, "{log}");
}

#[test]
fn a_flapping_link_loses_nothing() {
    let (o, log) = through_proxy(
        "flapping-2s",
        "2s",
        "20ms",
        400,
        |p| p.flap(Duration::from_secs(2), Duration::from_secs(2)),
        Duration::from_secs(11),
    );
    assert!(o.detect.is_some(), "{log}");
    assert!(o.connections >= 3, "{log}");
}

/// Two brokers in `mqtt.urls`: the first dies with `kill -9` mid-flow,
/// the gateway goes on with the second; the first comes back, and when
/// the second stops the gateway returns to the first.
#[test]
fn failover_to_the_second_broker_and_back_after_a_kill_9() {
    let mut first = Broker::start();
    let mut second = Broker::start();
    let sub_first = Subscriber::connect(first.port, "check-failover-1", TELEMETRY);
    let sub_second = Subscriber::connect(second.port, "check-failover-2", TELEMETRY);
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &[first.url(), second.url()],
        "2s",
        &two_devices("10ms", 300),
    );
    let mut gw = Gateway::start(&config, dir.path());
    assert!(
        sub_first.wait_until(LONG, |m| distinct_seqs(m).len() >= 30),
        "{}",
        gw.log()
    );
    let start = jiff::Timestamp::now();
    first.kill9();
    assert!(
        sub_second.wait_until(LONG, |m| !distinct_seqs(m).is_empty()),
        "nothing went to the second broker\n{}",
        gw.log()
    );
    let on_second = jiff::Timestamp::now().duration_since(start).as_secs_f64();
    sleep(Duration::from_secs(2));
    first.restart();
    sleep(Duration::from_secs(1));
    // The second stops (cleanly: what it acked reaches its subscriber),
    // and the gateway comes back to the first.
    second.stop();
    let end = Instant::now();
    let back = format!("connected to {}", first.url());
    let returned = gw.wait_for_log(&back, LONG) && {
        let deadline = Instant::now() + LONG;
        while gw.log().matches(&back).count() < 2 && Instant::now() < deadline {
            sleep(Duration::from_millis(50));
        }
        gw.log().matches(&back).count() >= 2
    };
    assert!(
        returned,
        "never came back to the first broker\n{}",
        gw.log()
    );
    let o = settle(
        "failover-kill-9",
        &mut gw,
        &[],
        &[&sub_first, &sub_second],
        600,
        start,
        end,
    );
    let log = gw.log();
    eprintln!(
        "FAULT failover-kill-9: flowing through the second broker {on_second:.2}s after the kill"
    );
    assert!(o.connections >= 3, "{log}");
}

/// amqtt, another broker implementation: QoS 1 and 2 arrive complete
/// across a restart of the broker. amqtt keeps sessions in memory only,
/// so the gateway is held off (proxy reset) until a subscriber is back
/// on the restarted broker: the test counts what a subscriber saw.
#[test]
fn amqtt_delivers_qos1_and_qos2_across_a_restart() {
    let mut broker = Amqtt::start();
    let proxy = Proxy::start(broker.port);
    let sub = Subscriber::connect(broker.port, "check-amqtt", TELEMETRY);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &[proxy.url()], "5s", &two_devices("10ms", 300));
    let mut gw = Gateway::start(&config, dir.path());
    assert!(
        sub.wait_until(LONG, |m| distinct_seqs(m).len() >= 100),
        "{}\n{}",
        gw.log(),
        broker.log()
    );
    // amqtt 0.12 forwards at the subscription's QoS (2), not at the lower
    // QoS the gateway published with (MQTT 3.1.1 §3.8.4): both devices
    // arrive, the QoS the subscriber sees says nothing of ours.
    let devices: HashSet<String> = telemetry(&sub.messages())
        .into_iter()
        .map(|(d, _, _)| d)
        .collect();
    assert_eq!(devices.len(), 2, "both devices arrive: {devices:?}");

    let start = jiff::Timestamp::now();
    proxy.set(Fault::Reset);
    // What amqtt acknowledged reaches the subscriber before it stops.
    sleep(Duration::from_secs(1));
    // The first subscriber goes: it would get everything a second time
    // after the restart, next to the new one.
    let earlier = sub.messages();
    drop(sub);
    broker.restart();
    let again = Subscriber::connect(broker.port, "check-amqtt-2", TELEMETRY);
    sleep(Duration::from_secs(2));
    proxy.set(Fault::Pass);
    let end = Instant::now();
    let o = settle(
        "amqtt-restart",
        &mut gw,
        &earlier,
        &[&again],
        600,
        start,
        end,
    );
    assert!(o.connections >= 2, "{}", broker.log());
}
