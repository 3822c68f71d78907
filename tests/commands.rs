//! Commands end to end: mosquitto → gateway → a tokio-modbus slave, and
//! the answers back on `P/responses`.

mod common;

use std::time::Duration;

use serde_json::Value;

use common::modbus_slave::*;
use common::*;

const LONG: Duration = Duration::from_secs(60);
const COMMANDS: &str = "fieldgate/gw/commands";

const POINTS: &str = "
      - { name: setpoint, register: holding, address: 10, type: i16, scale: 0.1, writable: true, min: 5, max: 80 }
      - { name: big, register: holding, address: 100, type: u32, word_order: little, writable: true }
      - { name: temperature, register: input, address: 0, type: i16, scale: 0.1 }
";

fn device(name: &str, port: u16, extra: &str) -> String {
    format!(
        "  - name: {name}\n    kind: modbus\n    tcp: {{ host: 127.0.0.1, port: {port} }}\n    poll: 200ms\n    timeout: 1500ms\n{extra}    points:{POINTS}"
    )
}

fn slave() -> (Slave, u16) {
    let mut tables = Tables::default().holding(10, &[200]).holding(100, &[0, 0]);
    tables.input.insert(0, 215);
    let mut slave = Slave::new([(1, tables)]);
    let port = slave.serve_tcp(0);
    (slave, port)
}

/// A broker, the slave, a subscriber to the answers, and a connected
/// gateway with one device, `boiler`.
fn rig(client: &str) -> (Broker, Slave, Subscriber, tempfile::TempDir, Gateway) {
    let broker = Broker::start();
    let (slave, port) = slave();
    let sub = Subscriber::connect(broker.port, client, "fieldgate/gw/responses");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), broker.port, "", &device("boiler", port, ""));
    let gw = Gateway::start(&config, dir.path());
    assert!(gw.wait_for_log("connected to", LONG), "{}", gw.log());
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());
    (broker, slave, sub, dir, gw)
}

/// Writes (function 5, 6, 15 or 16) the slave received.
fn writes(slave: &Slave) -> usize {
    slave.seen().iter().filter(|s| s.function >= 5).count()
}

fn responses(sub: &Subscriber) -> Vec<Value> {
    sub.messages()
        .iter()
        .filter(|m| m.topic.ends_with("/responses"))
        .map(Message::json)
        .collect()
}

fn answer(sub: &Subscriber, id: &str, gw: &Gateway) -> Value {
    let found = |m: &[Message]| {
        m.iter()
            .any(|m| m.topic.ends_with("/responses") && m.json()["id"] == id)
    };
    assert!(
        sub.wait_until(LONG, found),
        "no answer to {id}\n{}",
        gw.log()
    );
    responses(sub).into_iter().find(|r| r["id"] == id).unwrap()
}

#[test]
fn a_write_reaches_the_slave_scaled_and_in_word_order_and_is_answered_ok() {
    let (broker, slave, sub, _dir, mut gw) = rig("check-cmd");

    publish(
        broker.port,
        COMMANDS,
        r#"{"id":"c-1","device":"boiler","point":"setpoint","value":22.5}"#,
    );
    let ok = answer(&sub, "c-1", &gw);
    assert_eq!(ok["status"], "ok", "{ok}");
    assert_eq!(
        slave.state().units[&1].holding[&10],
        225,
        "scale 0.1 undone"
    );

    publish(
        broker.port,
        COMMANDS,
        r#"{"id":"c-2","device":"boiler","point":"big","value":70000}"#,
    );
    assert_eq!(answer(&sub, "c-2", &gw)["status"], "ok");
    let units = &slave.state().units[&1];
    assert_eq!(
        [units.holding[&100], units.holding[&101]],
        [70_000u32 as u16, 1],
        "low word first"
    );

    // A read answers with the value last read from the device.
    publish(
        broker.port,
        COMMANDS,
        r#"{"id":"c-3","device":"boiler","point":"temperature","action":"read"}"#,
    );
    let read = answer(&sub, "c-3", &gw);
    assert_eq!(
        (read["status"].as_str(), read["value"].as_f64()),
        (Some("ok"), Some(21.5)),
        "{read}"
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn every_rejection_is_answered_with_its_reason_and_nothing_reaches_the_slave() {
    let (broker, slave, sub, _dir, mut gw) = rig("check-reject-cmd");

    let cases: [(&str, &str, &str); 8] = [
        (
            "r-json",
            r#"{"id":"r-json","device":"boiler",#"#,
            "invalid JSON",
        ),
        (
            "r-dev",
            r#"{"id":"r-dev","device":"furnace","point":"setpoint","value":20}"#,
            "unknown device `furnace`",
        ),
        (
            "r-pt",
            r#"{"id":"r-pt","device":"boiler","point":"valve","value":1}"#,
            "has no point `valve`",
        ),
        (
            "r-ro",
            r#"{"id":"r-ro","device":"boiler","point":"temperature","value":1}"#,
            "not writable",
        ),
        (
            "r-max",
            r#"{"id":"r-max","device":"boiler","point":"setpoint","value":95}"#,
            "above the point's max 80",
        ),
        (
            "r-type",
            r#"{"id":"r-type","device":"boiler","point":"setpoint","value":"warm"}"#,
            "invalid value",
        ),
        (
            "r-field",
            r#"{"id":"r-field","device":"boiler","point":"setpoint","value":20,"when":"now"}"#,
            "unknown field `when`",
        ),
        (
            "r-old",
            r#"{"id":"r-old","device":"boiler","point":"setpoint","value":20,"expires_at":"2020-01-01T00:00:00Z"}"#,
            "expired at",
        ),
    ];
    for (_, payload, _) in &cases {
        publish(broker.port, COMMANDS, payload);
    }
    let all =
        |m: &[Message]| m.iter().filter(|m| m.topic.ends_with("/responses")).count() >= cases.len();
    assert!(
        sub.wait_until(LONG, all),
        "{:?}\n{}",
        responses(&sub),
        gw.log()
    );
    let answers = responses(&sub);
    for (id, _, reason) in cases {
        // Invalid JSON has no readable id: its answer carries an empty one.
        let want = if id == "r-json" { "" } else { id };
        let a = answers
            .iter()
            .find(|a| a["id"] == want)
            .unwrap_or_else(|| panic!("{id}: {answers:?}"));
        let status = if id == "r-old" { "expired" } else { "rejected" };
        assert_eq!(a["status"], status, "{id}: {a}");
        assert!(a["error"].as_str().unwrap().contains(reason), "{id}: {a}");
    }
    assert_eq!(
        writes(&slave),
        0,
        "a rejected command must never reach the device"
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn a_repeated_id_runs_once_and_is_answered_twice() {
    let (broker, slave, sub, _dir, mut gw) = rig("check-twice");

    let command = r#"{"id":"once","device":"boiler","point":"setpoint","value":30}"#;
    publish(broker.port, COMMANDS, command);
    answer(&sub, "once", &gw);
    publish(broker.port, COMMANDS, command);
    let twice = |m: &[Message]| m.iter().filter(|m| m.topic.ends_with("/responses")).count() >= 2;
    assert!(sub.wait_until(LONG, twice), "{}", gw.log());
    let answers = responses(&sub);
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0], answers[1], "the same answer, from the journal");
    assert_eq!(writes(&slave), 1, "executed once");
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn an_unreachable_slave_fails_and_an_answer_survives_a_broker_outage() {
    let mut broker = Broker::start();
    let (mut slave, port) = slave();
    let sub = Subscriber::connect(broker.port, "check-fail", "fieldgate/gw/responses");
    let dir = tempfile::tempdir().unwrap();
    // `ghost` is unit 9: the slave never answers it, so its write takes the
    // whole timeout; the broker goes away meanwhile.
    let devices = device("boiler", port, "") + &device("ghost", port, "    unit: 9\n");
    let config = write_config(dir.path(), broker.port, "", &devices);
    let mut gw = Gateway::start(&config, dir.path());
    assert!(gw.wait_for_log("connected to", LONG), "{}", gw.log());
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());

    publish(
        broker.port,
        COMMANDS,
        r#"{"id":"slow","device":"ghost","point":"setpoint","value":20}"#,
    );
    std::thread::sleep(Duration::from_millis(300));
    broker.stop();
    assert!(gw.wait_for_log("command slow", LONG), "{}", gw.log());
    // Answered while the broker was away: not delivered yet, but kept.
    assert!(
        responses(&sub).is_empty(),
        "answered before the outage; the test proves nothing"
    );
    broker.restart();
    let late = answer(&sub, "slow", &gw);
    assert_eq!(late["status"], "failed", "{late}");
    assert!(
        late["error"].as_str().unwrap().contains("no answer"),
        "{late}"
    );

    slave.kill();
    publish(
        broker.port,
        COMMANDS,
        r#"{"id":"dead","device":"boiler","point":"setpoint","value":20}"#,
    );
    let dead = answer(&sub, "dead", &gw);
    assert_eq!(dead["status"], "failed", "{dead}");
    assert!(!dead["error"].as_str().unwrap().is_empty());
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

/// Publishes a command at QoS 1 over MQTT 5 with the given PUBLISH
/// properties (`response-topic`, `correlation-data`).
fn publish_v5(port: u16, properties: &[(&str, &str)], payload: &str) {
    let mut pub_ = std::process::Command::new("mosquitto_pub");
    pub_.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-V", "mqttv5", "-q", "1", "-t", COMMANDS]);
    for (name, value) in properties {
        pub_.args(["-D", "publish", name, value]);
    }
    let status = pub_.args(["-m", payload]).status().unwrap();
    assert!(status.success());
}

#[test]
fn mqtt5_answers_go_to_the_response_topic_with_the_correlation_data() {
    let broker = Broker::start();
    let (_slave, port) = slave();
    let dir = tempfile::tempdir().unwrap();
    let mqtt = format!(
        "  url: mqtt://127.0.0.1:{}\n  protocol: \"5\"\n",
        broker.port
    );
    let config = write_config_mqtt(dir.path(), &mqtt, &device("boiler", port, ""));
    let mut gw = Gateway::start(&config, dir.path());
    assert!(gw.wait_for_log("connected to", LONG), "{}", gw.log());
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());

    let port_s = broker.port.to_string();
    let listener = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port_s,
            "-V",
            "mqttv5",
            "-t",
            "app/replies/7",
            "-C",
            "1",
            "-W",
            "30",
            "-F",
            "%D|%p",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    publish_v5(
        broker.port,
        &[
            ("response-topic", "app/replies/7"),
            ("correlation-data", "req-42"),
        ],
        r#"{"id":"v5","device":"boiler","point":"setpoint","value":25}"#,
    );
    let out = listener.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (correlation, payload) = text
        .trim()
        .split_once('|')
        .unwrap_or_else(|| panic!("{text:?}\n{}", gw.log()));
    assert_eq!(correlation, "req-42");
    let answer: Value = serde_json::from_str(payload).unwrap();
    assert_eq!(answer["id"], "v5");
    assert_eq!(answer["status"], "ok");
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

/// MQTT 5 lets the sender choose the answer's topic. One that is a filter
/// (`evil/#`) used to be stored, refused by the client library at publish,
/// and retried first after every reconnect: telemetry stopped for good.
#[test]
fn a_wildcard_response_topic_is_answered_rejected_and_telemetry_keeps_flowing() {
    let broker = Broker::start();
    let (_slave, port) = slave();
    let sub = Subscriber::connect(broker.port, "check-evil", "fieldgate/gw/#");
    let dir = tempfile::tempdir().unwrap();
    let mqtt = format!(
        "  url: mqtt://127.0.0.1:{}\n  protocol: \"5\"\n",
        broker.port
    );
    let devices = format!(
        "{}{}",
        device("boiler", port, ""),
        sim_device("ticker", "100ms", 100_000, "")
    );
    let config = write_config_mqtt(dir.path(), &mqtt, &devices);
    let mut gw = Gateway::start(&config, dir.path());
    assert!(gw.wait_for_log("connected to", LONG), "{}", gw.log());
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());

    publish_v5(
        broker.port,
        &[("response-topic", "evil/#")],
        r#"{"id":"evil","device":"boiler","point":"setpoint","value":25}"#,
    );

    let rejected = answer(&sub, "evil", &gw);
    assert_eq!(rejected["status"], "rejected", "{rejected}");
    let error = rejected["error"].as_str().unwrap();
    assert!(
        error.contains("evil/#") && error.contains("wildcard"),
        "{error}"
    );

    // Telemetry goes on after the answer, on the same connection.
    let ticks = |m: &[Message]| {
        telemetry(m)
            .iter()
            .filter(|(device, _, _)| device == "ticker")
            .count()
    };
    let before = ticks(&sub.messages());
    assert!(
        sub.wait_until(LONG, |m| ticks(m) >= before + 20),
        "telemetry stopped after the command\n{}",
        gw.log()
    );
    assert_eq!(gw.log().matches("connected to").count(), 1, "{}", gw.log());
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

/// A row with a bad topic already in the store (written by an older
/// version) goes to the dead letters instead of blocking the rows behind it.
#[test]
fn a_stored_answer_to_a_wildcard_topic_is_dead_lettered_not_retried() {
    let broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-poison", "fieldgate/gw/#");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    {
        let mut outbox =
            fieldgate::store::Outbox::open(&fieldgate::store::db_path(&state), Default::default())
                .unwrap();
        let poison = fieldgate::store::CommandAnswer {
            source: "commands".into(),
            topic: "evil/#".into(),
            payload: r#"{"id":"old","status":"ok"}"#.into(),
            correlation: None,
            qos: fieldgate::reading::Qos::AtLeastOnce,
            priority: fieldgate::reading::Priority::High,
            ts_ms: 1_700_000_000_000,
        };
        outbox.answer_command("old", &poison).unwrap();
    }
    let config = write_config(
        dir.path(),
        broker.port,
        "",
        &sim_device("ticker", "100ms", 30, ""),
    );
    let mut gw = Gateway::start(&config, dir.path());
    assert!(
        sub.wait_until(LONG, |m| telemetry(m).len() >= 30),
        "telemetry blocked behind the stored row\n{}",
        gw.log()
    );
    assert_eq!(gw.log().matches("connected to").count(), 1, "{}", gw.log());
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    let (code, stats) = queue(&config, &["stats"]);
    assert_eq!(code, 0, "{stats}");
    assert!(stats.contains("dead letters"), "{stats}");
    assert!(stats.contains("wildcard"), "{stats}");
}

/// Peak resident memory of a process, in kB (`VmHWM`).
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The store's files on disk (database and WAL), in bytes.
fn store_bytes(state: &std::path::Path) -> u64 {
    ["fieldgate.db", "fieldgate.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(state.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// A flood of unreadable commands: they come on the downstream connection,
/// which waits for the command queue with a bounded number of commands
/// unacknowledged, so telemetry keeps moving on its own connection and
/// memory stays flat; unreadable ones are answered at most 10 a second, so
/// the store does not fill.
#[test]
fn a_burst_of_20000_junk_commands_leaves_the_link_and_telemetry_alone() {
    let broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-flood", "fieldgate/gw/telemetry/#");
    let dir = tempfile::tempdir().unwrap();
    let ticks = 200;
    let config = write_config(
        dir.path(),
        broker.port,
        "",
        &sim_device("ticker", "100ms", ticks, ""),
    );
    let mut gw = Gateway::start(&config, dir.path());
    assert!(gw.wait_for_log("connected to", LONG), "{}", gw.log());
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());
    let state = dir.path().join("state");
    let rss_before = peak_rss_kb(gw.pid());

    let mut junk = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-q", "1", "-t", COMMANDS, "-l"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    {
        use std::io::Write;
        let mut stdin = junk.stdin.take().unwrap();
        for i in 0..20_000 {
            writeln!(stdin, "junk {i} {{\"id\":").unwrap();
        }
    }
    assert!(junk.wait().unwrap().success());
    let burst = t0.elapsed();

    let arrived = |m: &[Message]| telemetry(m).len() as u64 >= ticks;
    assert!(sub.wait_until(LONG, arrived), "{}", gw.log());
    // While the burst lasted (at least 2 s are looked at), the ticker's
    // readings kept arriving at 90 % of their rate or more.
    let window = burst.max(Duration::from_secs(2));
    let during = sub
        .messages()
        .iter()
        .filter(|m| m.at >= t0 && m.at <= t0 + window)
        .count() as f64;
    let expected = window.as_secs_f64() * 10.0;
    let rss_after = peak_rss_kb(gw.pid());
    let log = gw.log();
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    // A clean stop folds the WAL back: what is left is what was kept.
    let stored = store_bytes(&state);
    eprintln!(
        "burst {burst:?}: telemetry {during} of {expected:.0} expected, peak RSS {rss_before} -> {rss_after} kB, store {stored} B"
    );
    assert!(
        during >= 0.9 * expected,
        "{during} < 0.9 × {expected}\n{log}"
    );
    // Debug builds idle at about 20 MB here; the burst may add little.
    assert!(rss_before > 0, "no VmHWM for the gateway");
    assert!(
        rss_after <= rss_before + 4 * 1024,
        "peak RSS went from {rss_before} to {rss_after} kB"
    );
    assert!(stored < 2 << 20, "the store holds {stored} bytes");
    assert_eq!(log.matches("connected to").count(), 1, "{log}");
    assert!(log.contains("not answered (rate limit)"), "{log}");
}

/// Answers to `id` so far.
fn answers_to(sub: &Subscriber, id: &str) -> Vec<Value> {
    responses(sub)
        .into_iter()
        .filter(|r| r["id"] == id)
        .collect()
}

/// A broker's redelivery or a cloud's resend while the write still waits
/// on a slow device: one write, and no answer but the true one.
#[test]
fn a_duplicate_of_a_running_command_waits_for_its_answer() {
    let (broker, slave, sub, _dir, mut gw) = rig("check-dup-running");
    slave.state().write_delay = Some(Duration::from_millis(1_000));

    let command = r#"{"id":"twice","device":"boiler","point":"setpoint","value":30}"#;
    publish(broker.port, COMMANDS, command);
    publish(broker.port, COMMANDS, command);
    answer(&sub, "twice", &gw);
    // Time for a second, wrong answer to show up if there were one.
    std::thread::sleep(Duration::from_secs(2));
    publish(broker.port, COMMANDS, command);
    let later = |m: &[Message]| m.iter().filter(|m| m.topic.ends_with("/responses")).count() >= 2;
    assert!(sub.wait_until(LONG, later), "{}", gw.log());
    let answers = answers_to(&sub, "twice");
    assert!(
        answers.iter().all(|a| a["status"] == "ok"),
        "{answers:?}\n{}",
        gw.log()
    );
    assert_eq!(writes(&slave), 1, "executed once\n{}", gw.log());
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

/// A command that expires while it waits behind a unit that times out is
/// answered `expired` and never written.
#[test]
fn a_command_that_expires_in_the_queue_is_not_written() {
    let broker = Broker::start();
    let (slave, port) = slave();
    let sub = Subscriber::connect(broker.port, "check-late", "fieldgate/gw/responses");
    let dir = tempfile::tempdir().unwrap();
    // `ghost` is unit 9 on the same bus: the slave never answers it, so
    // each of its polls holds the bus for its 3 s timeout.
    let ghost = format!(
        "  - name: ghost\n    kind: modbus\n    tcp: {{ host: 127.0.0.1, port: {port} }}\n    unit: 9\n    poll: 200ms\n    timeout: 3s\n    retries: 0\n    points:\n      - {{ name: x, register: holding, address: 10, type: u16 }}\n"
    );
    let devices = format!("{}{ghost}", device("boiler", port, ""));
    let config = write_config(dir.path(), broker.port, "", &devices);
    let mut gw = Gateway::start(&config, dir.path());
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());

    // Right after a poll of the ghost starts, the bus is held for 3 s.
    let ghost_polls = || slave.seen().iter().filter(|s| s.unit == 9).count();
    let seen = ghost_polls();
    let t0 = std::time::Instant::now();
    while ghost_polls() == seen {
        assert!(
            t0.elapsed() < LONG,
            "the ghost is never polled\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1);
    let command = format!(
        r#"{{"id":"late","device":"boiler","point":"setpoint","value":30,"expires_at":"{expires}"}}"#
    );
    publish(broker.port, COMMANDS, &command);
    let late = answer(&sub, "late", &gw);
    assert_eq!(late["status"], "expired", "{late}\n{}", gw.log());
    // The bus is free again and polls on: still no write.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(writes(&slave), 0, "{}", gw.log());
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

/// A command cut off by `kill -9` while its write ran is answered `failed`
/// when it comes again, and not written twice.
#[test]
fn a_command_cut_off_by_a_crash_is_answered_failed_and_not_run_again() {
    let broker = Broker::start();
    let (slave, port) = slave();
    slave.state().write_delay = Some(Duration::from_millis(1_200));
    let sub = Subscriber::connect(broker.port, "check-crash", "fieldgate/gw/responses");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), broker.port, "", &device("boiler", port, ""));
    let mut gw = Gateway::start(&config, dir.path());
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());

    let command = r#"{"id":"cut","device":"boiler","point":"setpoint","value":30}"#;
    publish(broker.port, COMMANDS, command);
    let t0 = std::time::Instant::now();
    while writes(&slave) == 0 {
        assert!(t0.elapsed() < LONG, "no write\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    // The slave has the write and takes its time to answer: the gateway
    // dies before it hears back.
    gw.kill9();
    // The broker keeps the commands session: the copy waits for the
    // gateway to come back.
    publish(broker.port, COMMANDS, command);
    let mut gw = Gateway::start(&config, dir.path());
    let cut = answer(&sub, "cut", &gw);
    assert_eq!(cut["status"], "failed", "{cut}");
    assert!(
        cut["error"].as_str().unwrap().contains("gateway stopped"),
        "{cut}"
    );
    assert_eq!(answers_to(&sub, "cut").len(), 1);
    assert_eq!(writes(&slave), 1, "{}", gw.log());
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

/// A meter whose `l1-current` raises exception 2 on every poll: its
/// `l3-voltage` still reads, in readings marked bad, and a `read` answers
/// it with the time of the last poll even while its deadband holds it back.
#[test]
fn a_read_answers_a_point_of_a_partly_failing_device_with_its_last_poll() {
    let broker = Broker::start();
    let mut tables = Tables::default();
    tables.input.insert(0, 2305);
    // No holding register 500: the slave answers exception 2 for it.
    let mut slave = Slave::new([(1, tables)]);
    let port = slave.serve_tcp(0);
    let sub = Subscriber::connect(broker.port, "check-read-partly", "fieldgate/gw/#");
    let dir = tempfile::tempdir().unwrap();
    let meter = format!(
        "  - name: meter\n    kind: modbus\n    tcp: {{ host: 127.0.0.1, port: {port} }}\n    poll: 200ms\n    timeout: 1500ms\n    points:\n      - {{ name: l3-voltage, register: input, address: 0, type: u16, scale: 0.1, deadband: 5 }}\n      - {{ name: l1-current, register: holding, address: 500, type: u16 }}\n"
    );
    let config = write_config(dir.path(), broker.port, "", &meter);
    let mut gw = Gateway::start(&config, dir.path());

    let first = |m: &[Message]| {
        m.iter().any(|m| {
            m.topic.ends_with("/telemetry/meter") && m.json()["values"]["l3-voltage"].is_number()
        })
    };
    assert!(sub.wait_until(LONG, first), "{}", gw.log());
    let published = sub
        .messages()
        .into_iter()
        .find(|m| m.topic.ends_with("/telemetry/meter"))
        .unwrap()
        .json();
    assert_eq!(published["quality"], "bad", "{published}");
    assert!(
        published["error"].as_str().unwrap().contains("l1-current"),
        "{published}"
    );

    // Ten more polls, all held back by the deadband.
    std::thread::sleep(Duration::from_secs(2));
    publish(
        broker.port,
        COMMANDS,
        r#"{"id":"r-1","device":"meter","point":"l3-voltage","action":"read"}"#,
    );
    let read = answer(&sub, "r-1", &gw);
    assert_eq!(read["status"], "ok", "{read}");
    assert_eq!(read["value"].as_f64(), Some(230.5), "{read}");
    let at = |v: &Value| {
        v.as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .unwrap_or_else(|| panic!("not a timestamp: {v}"))
    };
    let polled_after = at(&read["value_ts"]).duration_since(at(&published["ts"]));
    assert!(
        polled_after >= jiff::SignedDuration::from_millis(1_500),
        "value_ts is the first publish, not the last poll: {read} {published}"
    );

    publish(
        broker.port,
        COMMANDS,
        r#"{"id":"r-2","device":"meter","point":"l1-current","action":"read"}"#,
    );
    let never = answer(&sub, "r-2", &gw);
    assert_eq!(never["status"], "failed", "{never}");

    // The two answers are counted apart from the readings.
    let counted = |m: &[Message]| {
        m.iter().any(|m| {
            m.topic == "fieldgate/gw/status" && m.json()["counters"]["answers_published"] == 2
        })
    };
    assert!(sub.wait_until(LONG, counted), "{}", gw.log());
    let messages = sub.messages();
    let status = latest_status(&messages).unwrap();
    assert_eq!(
        status["counters"]["published"],
        distinct_seqs(&messages).len(),
        "{status}"
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

/// A flood of readable commands, each with its own id (each is journaled
/// and answered): the journal stays under `commands.journal_max`, the
/// store drains, and telemetry keeps flowing.
#[test]
fn a_flood_of_20000_journaled_commands_keeps_the_journal_bounded() {
    let broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-journal-flood", "fieldgate/gw/#");
    let dir = tempfile::tempdir().unwrap();
    let ticks = 300;
    let config = write_config(
        dir.path(),
        broker.port,
        "",
        &sim_device("ticker", "100ms", ticks, ""),
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("commands:\n  journal_max: 1000\n");
    std::fs::write(&config, text).unwrap();
    let mut gw = Gateway::start(&config, dir.path());
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());

    let mut flood = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-q", "1", "-t", COMMANDS, "-l"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    {
        use std::io::Write;
        let mut stdin = flood.stdin.take().unwrap();
        for i in 0..20_000 {
            writeln!(
                stdin,
                r#"{{"id":"flood-{i}","device":"nobody","point":"x","value":1}}"#
            )
            .unwrap();
        }
    }
    assert!(flood.wait().unwrap().success());
    let burst = t0.elapsed();
    let answered = |m: &[Message]| {
        m.iter().filter(|m| m.topic.ends_with("/responses")).count() >= 20_000
            && telemetry(m).len() as u64 >= ticks
    };
    assert!(
        sub.wait_until(Duration::from_secs(120), answered),
        "{} answers, {} readings\n{}",
        (sub.messages().iter())
            .filter(|m| m.topic.ends_with("/responses"))
            .count(),
        telemetry(&sub.messages()).len(),
        gw.log()
    );
    let drained = t0.elapsed();
    // While the commands were worked through (the ticker stops after 30 s).
    let window = drained.min(Duration::from_secs(25));
    let during = sub
        .messages()
        .iter()
        .filter(|m| m.topic.contains("/telemetry/") && m.at >= t0 && m.at <= t0 + window)
        .count() as f64;
    let expected = window.as_secs_f64() * 10.0;
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    let state = dir.path().join("state");
    let db = rusqlite::Connection::open(state.join("fieldgate.db")).unwrap();
    let journal: i64 = db
        .query_row("SELECT count(*) FROM command_journal", [], |r| r.get(0))
        .unwrap();
    let queued: i64 = db
        .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    drop(db);
    let stored = store_bytes(&state);
    eprintln!(
        "burst {burst:?}, all answered after {drained:?}: telemetry {during} of {expected:.0} expected while they were worked through, journal {journal} rows, outbox {queued} rows, store {stored} B"
    );
    assert!(journal <= 1_000, "{journal} journal rows");
    assert_eq!(queued, 0, "every answer and reading was delivered");
    assert!(during >= 0.9 * expected, "{during} < 0.9 × {expected}");
}
