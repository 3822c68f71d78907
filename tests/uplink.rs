//! The uplink against real brokers' demands: TLS and mutual TLS, passwords
//! and rotating tokens, MQTT 5 refusals, failover, priorities, throttling,
//! batches, and a link that dies without a word.

mod common;

use std::time::{Duration, Instant};

use common::pki::Pki;
use common::proxy::Proxy;
use common::*;

const LONG: Duration = Duration::from_secs(120);

fn devices(n: u64) -> String {
    sim_device("meter", "5ms", n, "")
}

#[test]
fn tls_verifies_the_broker_and_a_wrong_ca_keeps_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let good = Pki::make(dir.path(), "good");
    let other = Pki::make(dir.path(), "other");
    let tls_port = free_port();
    let broker = Broker::start_with_config(&good.listener(tls_port, false));
    let sub = Subscriber::connect(broker.port, "check-tls", "fieldgate/gw/telemetry/#");

    let mqtt = |ca: &std::path::Path| {
        format!(
            "  url: mqtts://127.0.0.1:{tls_port}\n  tls:\n    ca_file: {}\n",
            ca.display()
        )
    };
    let config = write_config_mqtt(dir.path(), &mqtt(&other.ca), &devices(100));
    let mut gw = Gateway::start(&config, dir.path());
    assert!(gw.wait_for_log("unknown CA", LONG), "{}", gw.log());
    // The readings and the device's `online`.
    wait_for_queued(&config, &gw, 101, LONG);
    assert_eq!(sub.count(), 0);
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());

    let config = write_config_mqtt(dir.path(), &mqtt(&good.ca), "");
    let mut gw = Gateway::start(&config, dir.path());
    assert!(
        sub.wait_until(LONG, |m| distinct_seqs(m).len() >= 100),
        "{}",
        gw.log()
    );
    assert!(reading_seqs_fit(&distinct_seqs(&sub.messages()), 100, 1));
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    assert_eq!(stored_rows(dir.path()), 0);
}

#[test]
fn mutual_tls_delivers_with_the_client_certificate_and_is_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::make(dir.path(), "m");
    let tls_port = free_port();
    let broker = Broker::start_with_config(&pki.listener(tls_port, true));
    let sub = Subscriber::connect(broker.port, "check-mtls", "fieldgate/gw/telemetry/#");

    let without = format!(
        "  url: mqtts://127.0.0.1:{tls_port}\n  tls:\n    ca_file: {}\n",
        pki.ca.display()
    );
    let config = write_config_mqtt(dir.path(), &without, &devices(50));
    let mut gw = Gateway::start(&config, dir.path());
    assert!(gw.wait_for_log("MQTT link down", LONG), "{}", gw.log());
    let log = gw.log();
    assert!(
        log.contains("client certificate"),
        "the cause must be named:\n{log}"
    );
    wait_for_queued(&config, &gw, 50, LONG);
    assert_eq!(sub.count(), 0);
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());

    let with = format!(
        "{without}    cert_file: {}\n    key_file: {}\n",
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let config = write_config_mqtt(dir.path(), &with, "");
    let mut gw = Gateway::start(&config, dir.path());
    assert!(
        sub.wait_until(LONG, |m| distinct_seqs(m).len() >= 50),
        "{}",
        gw.log()
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    assert_eq!(stored_rows(dir.path()), 0);
}

/// A second listener that wants a user name and password; the first one
/// (for the test's subscriber) stays anonymous.
fn password_broker(dir: &std::path::Path, port: u16) -> Broker {
    let passwords = dir.join("passwd");
    let status = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["gw", "right-secret"])
        .status()
        .unwrap();
    assert!(status.success());
    Broker::start_with(
        "per_listener_settings true",
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\n",
            passwords.display()
        ),
    )
}

#[test]
fn a_wrong_password_is_refused_and_retried_losing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = password_broker(dir.path(), port);
    let sub = Subscriber::connect(broker.port, "check-pass", "fieldgate/gw/telemetry/#");
    let pass = dir.path().join("mqtt.pass");
    std::fs::write(&pass, "wrong-secret\n").unwrap();
    let mqtt = format!(
        "  url: mqtt://127.0.0.1:{port}\n  username: gw\n  password_file: {}\n",
        pass.display()
    );
    let config = write_config_mqtt(dir.path(), &mqtt, &devices(60));
    let mut gw = Gateway::start_logging(&config, dir.path(), "fieldgate=debug");
    assert!(
        gw.wait_for_log("the broker refused the connection", LONG),
        "{}",
        gw.log()
    );
    wait_for_queued(&config, &gw, 61, LONG); // and the device's `online`
    // Retried, not given up: several attempts while the password is wrong.
    let deadline = Instant::now() + LONG;
    while gw.log().matches("reconnecting in").count() < 3 {
        assert!(Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(sub.count(), 0);
    // Others can read the file: the gateway says so.
    assert!(gw.log().contains("readable by every user"), "{}", gw.log());

    // The right password, written while the gateway runs: the next attempt uses it.
    std::fs::write(&pass, "right-secret\n").unwrap();
    assert!(
        sub.wait_until(LONG, |m| distinct_seqs(m).len() >= 60),
        "{}",
        gw.log()
    );
    assert!(reading_seqs_fit(&distinct_seqs(&sub.messages()), 60, 1));
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    assert_eq!(stored_rows(dir.path()), 0);
}

#[test]
fn a_rotated_token_file_is_read_again_before_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker = password_broker(dir.path(), port);
    let sub = Subscriber::connect(broker.port, "check-token", "fieldgate/gw/telemetry/#");
    let token = dir.path().join("token");
    std::fs::write(&token, "expired-token").unwrap();
    let mqtt = format!(
        "  url: mqtt://127.0.0.1:{port}\n  username: gw\n  token_file: {}\n",
        token.display()
    );
    let config = write_config_mqtt(dir.path(), &mqtt, &devices(40));
    let mut gw = Gateway::start(&config, dir.path());
    assert!(gw.wait_for_log("refused", LONG), "{}", gw.log());
    std::fs::write(&token, "right-secret").unwrap();
    assert!(
        sub.wait_until(LONG, |m| distinct_seqs(m).len() >= 40),
        "{}",
        gw.log()
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn mqtt5_refusals_go_to_the_dead_letters_while_other_devices_flow() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "topic readwrite fieldgate/gw/status\ntopic write fieldgate/gw/telemetry/open\ntopic write fieldgate/gw/availability/#\n",
    )
    .unwrap();
    let broker = Broker::start_with(
        "per_listener_settings true",
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {}\n",
            acl.display()
        ),
    );
    let sub = Subscriber::connect(broker.port, "check-acl", "fieldgate/gw/#");
    let devices =
        sim_device("open", "5ms", 50, "") + &sim_device("secret", "5ms", 50, "    qos: 2\n");
    let mqtt = format!("  url: mqtt://127.0.0.1:{port}\n  protocol: \"5\"\n");
    let config = write_config_mqtt(dir.path(), &mqtt, &devices);
    let mut gw = Gateway::start(&config, dir.path());

    let open = |m: &[Message]| telemetry(m).iter().filter(|(d, _, _)| d == "open").count();
    assert!(sub.wait_until(LONG, |m| open(m) >= 50), "{}", gw.log());
    let status_reports_dead = |m: &[Message]| {
        m.iter().any(|m| {
            m.topic.ends_with("/status") && m.json()["queue"]["dead_letters"]["secret"] == 50
        })
    };
    assert!(sub.wait_until(LONG, status_reports_dead), "{}", gw.log());
    assert!(
        telemetry(&sub.messages())
            .iter()
            .all(|(d, _, _)| d == "open")
    );
    assert!(
        gw.log().contains("moved to the dead letters"),
        "{}",
        gw.log()
    );
    // 50 refusals for one reason within seconds: one line, not fifty.
    assert_eq!(
        gw.log()
            .lines()
            .filter(|l| l.contains("the broker refused") && l.contains("reading(s)"))
            .count(),
        1,
        "{}",
        gw.log()
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());

    let (_, stats) = queue(&config, &["stats"]);
    let dead = stats
        .lines()
        .skip_while(|l| !l.starts_with("dead letters"))
        .nth(1)
        .unwrap();
    assert_eq!(
        dead.split_whitespace().collect::<Vec<_>>(),
        ["secret", "50"],
        "{stats}"
    );
    assert!(stats.contains("0x87"), "the reason is kept:\n{stats}");
    assert_eq!(
        stored_rows(dir.path()),
        0,
        "refused rows are not retried forever"
    );
}

#[test]
fn with_the_first_broker_dead_delivery_goes_through_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-failover", "fieldgate/gw/telemetry/#");
    let dead = free_port();
    let mqtt = format!(
        "  urls:\n    - mqtt://127.0.0.1:{dead}\n    - mqtt://127.0.0.1:{}\n",
        broker.port
    );
    let config = write_config_mqtt(dir.path(), &mqtt, &devices(50));
    let mut gw = Gateway::start(&config, dir.path());
    assert!(
        sub.wait_until(LONG, |m| distinct_seqs(m).len() >= 50),
        "{}",
        gw.log()
    );
    let log = gw.log();
    assert!(log.contains(&format!("127.0.0.1:{dead}")), "{log}");
    assert!(
        log.contains(&format!("connected to mqtt://127.0.0.1:{}", broker.port)),
        "{log}"
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn a_backlog_drains_high_priority_first_within_the_throttle() {
    let mut broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-prio", "fieldgate/gw/telemetry/#");
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    let per_device = 400;
    let devices = sim_device("low", "1ms", per_device, "    priority: low\n")
        + &sim_device("normal", "1ms", per_device, "")
        + &sim_device("high", "1ms", per_device, "    priority: high\n");
    let rate = 200;
    let config = write_config(
        dir.path(),
        broker.port,
        &format!("  max_messages_per_second: {rate}\n"),
        &devices,
    );
    let mut gw = Gateway::start(&config, dir.path());
    wait_for_queued(&config, &gw, 3 * per_device, LONG);
    broker.restart();
    let total = 3 * per_device as usize;
    assert!(
        sub.wait_until(LONG, |m| distinct_seqs(m).len() >= total),
        "{}",
        gw.log()
    );

    let messages = sub.messages();
    let order: Vec<String> = telemetry(&messages)
        .into_iter()
        .map(|(d, _, _)| d)
        .collect();
    let last = |d: &str| order.iter().rposition(|x| x == d).unwrap();
    let first = |d: &str| order.iter().position(|x| x == d).unwrap();
    assert!(
        last("high") < first("normal"),
        "high must drain before normal"
    );
    assert!(
        last("normal") < first("low"),
        "normal must drain before low"
    );
    assert_ordered_per_device(&messages);

    // No 5 s window carries more than 5 x rate x 1.1 messages.
    let times: Vec<Instant> = messages
        .iter()
        .filter(|m| m.topic.contains("/telemetry/"))
        .map(|m| m.at)
        .collect();
    let bound = (5.0 * f64::from(rate) * 1.1) as usize;
    for (i, start) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < Duration::from_secs(5))
            .count();
        assert!(
            in_window <= bound,
            "{in_window} messages in 5 s, bound {bound}"
        );
    }
    let span = times.last().unwrap().duration_since(times[0]);
    eprintln!("{total} readings at {rate}/s took {span:?} to arrive");
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn batches_arrive_as_arrays_and_survive_a_broker_kill() {
    let mut broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-batch", "fieldgate/gw/telemetry/#");
    let dir = tempfile::tempdir().unwrap();
    let batch = "    batch: { max_readings: 50, max_delay: 500ms }\n";
    let devices = sim_device("b", "2ms", 1_500, batch);
    let config = write_config(dir.path(), broker.port, "", &devices);
    let mut gw = Gateway::start(&config, dir.path());

    let seqs = |m: &[Message]| -> std::collections::BTreeSet<i64> {
        m.iter()
            .flat_map(|m| m.json().as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["seq"].as_i64())
            .collect()
    };
    assert!(
        sub.wait_until(LONG, |m| seqs(m).len() >= 300),
        "{}",
        gw.log()
    );
    broker.stop();
    std::thread::sleep(Duration::from_secs(2));
    broker.restart();
    if !sub.wait_until(LONG, |m| seqs(m).len() >= 1_500) {
        // Seen under load: the broker acked every reading (the store is
        // empty) but passed none to the subscriber after its restart.
        let got = seqs(&sub.messages());
        let missing: Vec<i64> = (2..=1_501).filter(|s| !got.contains(s)).take(20).collect();
        panic!(
            "the subscriber has {} of 1,500 readings (first missing: {missing:?}); rows left in the store: {}; subscriber's last error: {:?}\n{}\n{}",
            got.len(),
            stored_rows(dir.path()),
            sub.last_error(),
            broker.log(),
            gw.log()
        );
    }

    let messages = sub.messages();
    assert!(reading_seqs_fit(&seqs(&messages), 1_500, 1));
    let sizes: Vec<usize> = messages
        .iter()
        .map(|m| m.json().as_array().map_or(0, Vec::len))
        .collect();
    assert!(
        sizes.iter().all(|&n| (1..=50).contains(&n)),
        "every message is an array of 1 to 50: {sizes:?}"
    );
    let full = sizes.iter().filter(|&&n| n == 50).count();
    assert!(full * 2 > sizes.len(), "most batches are full: {sizes:?}");
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    assert_eq!(stored_rows(dir.path()), 0);
}

#[test]
fn a_silently_dead_link_is_noticed_and_replaced() {
    let broker = Broker::start();
    let proxy = Proxy::start(broker.port);
    let sub = Subscriber::connect(broker.port, "check-blackhole", "fieldgate/gw/telemetry/#");
    let dir = tempfile::tempdir().unwrap();
    let keep_alive = 2.0;
    let mqtt = format!("  url: mqtt://127.0.0.1:{}\n  keep_alive: 2s\n", proxy.port);
    let config = write_config_mqtt(dir.path(), &mqtt, &sim_device("k", "10ms", 800, ""));
    let mut gw = Gateway::start(&config, dir.path());
    assert!(
        sub.wait_until(LONG, |m| distinct_seqs(m).len() >= 100),
        "{}",
        gw.log()
    );

    let blackholed = jiff::Timestamp::now();
    proxy.blackhole_existing();
    assert!(gw.wait_for_log("the link is dead", LONG), "{}", gw.log());
    assert!(
        sub.wait_until(LONG, |m| distinct_seqs(m).len() >= 800),
        "{}",
        gw.log()
    );
    assert!(reading_seqs_fit(&distinct_seqs(&sub.messages()), 800, 1));

    // Noticed by the gateway's own watchdog (1.5 periods of silence) or by
    // rumqttc's unanswered ping, whichever comes first. The bound is loose
    // on purpose (a busy machine fires timers late); the figure is printed.
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("the link is dead"))
        .unwrap();
    let noticed: jiff::Timestamp = line.split_whitespace().next().unwrap().parse().unwrap();
    let after = noticed.duration_since(blackholed).as_secs_f64();
    eprintln!("blackholed link noticed after {after:.2}s (keep-alive {keep_alive}s): {line}");
    assert!(after <= keep_alive * 2.0 + 1.0, "noticed after {after:.2}s");
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

/// A config for a gateway `gw` with the default backoff (500 ms doubling
/// up to 60 s), as a cloned SD card would carry it.
fn clone_config(dir: &std::path::Path, port: u16, mqtt_extra: &str) -> std::path::PathBuf {
    let path = dir.join("fieldgate.yaml");
    let text = format!(
        "gateway:\n  id: gw\n  state_dir: {state}\n  status_interval: 1s\nstore:\n  flush_interval: 50ms\nmqtt:\n  url: mqtt://127.0.0.1:{port}\n{mqtt_extra}devices:\n{devices}",
        state = dir.join("state").display(),
        devices = sim_device("meter", "1s", 1_000, ""),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Two gateways with one id (a cloned SD card) against one mosquitto: each
/// connection takes the session from the other. Counted from mosquitto's
/// log, which notes every connection it accepts.
fn clones_back_off_and_name_the_cause(protocol: &str) {
    let broker = Broker::start();
    let status = Subscriber::connect(broker.port, "check-clones", "fieldgate/gw/status");
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let extra = format!("  protocol: \"{protocol}\"\n");
    let started = Instant::now();
    let gw_a = Gateway::start(&clone_config(a.path(), broker.port, &extra), a.path());
    let gw_b = Gateway::start(&clone_config(b.path(), broker.port, &extra), b.path());
    let cause = "another client probably uses the same client id `gw`";
    let mut named_after = None;
    while started.elapsed() < Duration::from_secs(30) {
        if named_after.is_none() && (gw_a.log().contains(cause) || gw_b.log().contains(cause)) {
            named_after = Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = broker.log();
    let connections = log.matches(" as gw (").count();
    eprintln!("{protocol}: {connections} connections in 30 s; cause named after {named_after:?}");
    let logs = format!(
        "{log}\n--- a ---\n{}\n--- b ---\n{}",
        gw_a.log(),
        gw_b.log()
    );
    assert!(connections >= 2, "{logs}");
    assert!(
        connections <= 30,
        "{connections} connections in 30 s\n{logs}"
    );
    assert!(named_after.is_some(), "no gateway named the cause\n{logs}");
    // The same, on the retained status of a later connection.
    let flagged = status.messages().iter().any(|m| {
        m.json()["uplink"]["problem"]
            .as_str()
            .is_some_and(|p| p.contains(cause))
    });
    assert!(flagged, "no P/status said so\n{logs}");
}

#[test]
fn cloned_gateways_back_off_and_say_why() {
    clones_back_off_and_name_the_cause("3.1.1");
}

#[test]
fn cloned_gateways_back_off_and_say_why_mqtt5() {
    clones_back_off_and_name_the_cause("5");
}

#[test]
fn machine_id_fills_the_client_id_and_a_missing_one_stops_the_start() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("machine-id");
    let extra = format!(
        "  client_id: \"gw-{{machine_id}}\"\n  machine_id_file: {}\n",
        file.display()
    );
    let config = clone_config(dir.path(), broker.port, &extra);

    let mut gw = Gateway::start(&config, dir.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = gw.try_status() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1), "{}", gw.log());
    let log = gw.log();
    assert!(
        log.contains("{machine_id}") && log.contains("cannot be read"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").unwrap();
    let mut gw = Gateway::start(&config, dir.path());
    let deadline = Instant::now() + LONG;
    while !broker
        .log()
        .contains(" as gw-0123456789abcdef0123456789abcdef (")
    {
        assert!(Instant::now() < deadline, "{}\n{}", broker.log(), gw.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}
