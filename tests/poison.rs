//! Rows the broker will never take: too large for its `max_packet_size`.
//! They go to the dead letters, and every other row keeps flowing.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(90);

/// A device of 80 points: about 2 KB per reading (always the same size),
/// against a broker that takes packets of 1 KB at most.
fn big_device(count: u64) -> String {
    let points: String = (0..80)
        .map(|i| {
            format!("      - {{ name: point_{i:02}, signal: constant, min: 0, max: 1000, value: 123.456 }}\n")
        })
        .collect();
    format!(
        "  - name: big\n    kind: simulated\n    poll: 1s\n    count: {count}\n    points:\n{points}"
    )
}

fn dead_letters(messages: &[Message], device: &str) -> u64 {
    latest_status(messages)
        .and_then(|s| s["queue"]["dead_letters"][device].as_u64())
        .unwrap_or(0)
}

fn oversize_readings_are_dead_lettered(protocol: &str, max_connections: usize) {
    let broker = Broker::start_with_config("max_packet_size 1024\n");
    let sub = Subscriber::connect(
        broker.port,
        &format!("check-big-{protocol}"),
        "fieldgate/gw/#",
    );
    let dir = tempfile::tempdir().unwrap();
    let devices = format!(
        "{}{}",
        big_device(20),
        sim_device("small", "100ms", 200, "")
    );
    let mqtt = format!("  protocol: \"{protocol}\"\n");
    let config = write_config(dir.path(), broker.port, &mqtt, &devices);
    let mut gw = Gateway::start(&config, dir.path());

    let small = |m: &[Message]| {
        telemetry(m)
            .iter()
            .filter(|(device, _, _)| device == "small")
            .count()
    };
    assert!(
        sub.wait_until(LONG, |m| small(m) >= 200 && dead_letters(m, "big") >= 20),
        "small: {}, big dead letters: {}\n{}",
        small(&sub.messages()),
        dead_letters(&sub.messages(), "big"),
        gw.log()
    );
    let messages = sub.messages();
    assert_ordered_per_device(&messages);
    assert!(
        !telemetry(&messages)
            .iter()
            .any(|(device, _, _)| device == "big"),
        "a reading of `big` got through a 1 KB broker"
    );
    let log = gw.log();
    let connections = log.matches("connected to").count();
    eprintln!("MQTT {protocol}: {connections} connection(s)");
    assert!(
        connections <= max_connections,
        "{connections} connections\n{log}"
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    let (code, stats) = queue(&config, &["stats"]);
    assert_eq!(code, 0, "{stats}");
    assert!(
        stats.contains("maximum packet size") || stats.contains("closed the connection"),
        "{stats}"
    );

    // The operator's view, and a way back once the broker takes them.
    let (code, listed) = queue(&config, &["dead-letters", "-n", "100", "--device", "big"]);
    assert_eq!(code, 0, "{listed}");
    assert!(listed.lines().count() >= 20, "{listed}");
    assert!(listed.lines().all(|l| l.contains(" big ")), "{listed}");
    let before = queued_rows(&config);
    let (code, retried) = queue(&config, &["retry-dead", "--device", "big"]);
    assert_eq!(code, 0, "{retried}");
    let n: u64 = retried
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{retried}"));
    assert!(n >= 20, "{retried}");
    assert_eq!(queued_rows(&config), before + n);
    let (_, listed) = queue(&config, &["dead-letters", "--device", "big"]);
    assert!(listed.trim().is_empty(), "{listed}");
}

/// MQTT 3.1.1: the broker just closes the connection on a packet that is
/// too large. The first reading costs a few connections; after that, the
/// gateway knows the size and sends none of them.
#[test]
fn mqtt_311_oversize_readings_go_to_the_dead_letters_in_a_few_connections() {
    oversize_readings_are_dead_lettered("3.1.1", 5);
}

/// MQTT 5: the broker says its limit in CONNACK; nothing too large is sent.
#[test]
fn mqtt_5_oversize_readings_are_dead_lettered_before_any_is_sent() {
    oversize_readings_are_dead_lettered("5", 1);
}

/// The seqs of the readings in `messages`, single or batched, in order.
fn readings(messages: &[Message]) -> Vec<i64> {
    messages
        .iter()
        .flat_map(|m| match m.json() {
            serde_json::Value::Array(items) => items,
            one => vec![one],
        })
        .filter_map(|r| r["seq"].as_i64())
        .collect()
}

/// A batch too large for the broker is not the readings' fault: MQTT 3.1.1
/// learns its size when the broker closes on it, MQTT 5 knows the limit;
/// either way the readings then go one by one, and all arrive.
#[test]
fn batches_too_large_for_the_broker_are_split_and_nothing_is_lost() {
    for protocol in ["3.1.1", "5"] {
        let broker = Broker::start_with_config("max_packet_size 1024\n");
        let sub = Subscriber::connect(broker.port, "check-split", "fieldgate/gw/telemetry/#");
        let dir = tempfile::tempdir().unwrap();
        let batch = "    batch: { max_readings: 50, max_delay: 500ms }\n";
        let devices = sim_device("batched", "20ms", 300, batch);
        let mqtt = format!("  protocol: \"{protocol}\"\n");
        let config = write_config(dir.path(), broker.port, &mqtt, &devices);
        let mut gw = Gateway::start(&config, dir.path());
        let seqs = |m: &[Message]| readings(m).into_iter().collect::<BTreeSet<_>>().len();
        assert!(
            sub.wait_until(LONG, |m| seqs(m) >= 300),
            "MQTT {protocol}: {} of 300\n{}",
            seqs(&sub.messages()),
            gw.log()
        );
        // In order, ignoring re-sent duplicates of seqs already seen.
        let mut seen = BTreeSet::new();
        let firsts: Vec<i64> = readings(&sub.messages())
            .into_iter()
            .filter(|seq| seen.insert(*seq))
            .collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "out of order: {firsts:?}"
        );
        let log = gw.log();
        let connections = log.matches("connected to").count();
        eprintln!("MQTT {protocol}, batches split: {connections} connection(s)");
        assert!(connections <= 5, "{connections} connections\n{log}");
        assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
        assert_eq!(stored_rows(dir.path()), 0, "{log}");
        let (_, stats) = queue(&config, &["stats"]);
        assert!(
            !stats.contains("batched  "),
            "dead letters of `batched`: {stats}"
        );
    }
}
