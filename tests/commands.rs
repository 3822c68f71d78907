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
