//! Sparkplug B end to end: the gateway as an edge node at a real
//! mosquitto, a Modbus unit served by tokio-modbus, and everything it
//! sends decoded by pysparkplug, a host library that is not ours. The
//! session rules are checked over the capture.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::modbus_slave::{Slave, Tables};
use common::sparkplug::{decode, host_command, metric, of};
use common::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);
const ALL: &str = "spBv1.0/#";
const NODE: &str = "spBv1.0/plant/{}/gw";

fn topic(kind: &str, device: Option<&str>) -> String {
    let node = NODE.replace("{}", kind);
    match device {
        Some(d) => format!("{node}/{d}"),
        None => node,
    }
}

fn count(messages: &[Message], topic: &str) -> usize {
    messages.iter().filter(|m| m.topic == topic).count()
}

#[track_caller]
fn wait(sub: &Subscriber, gw: &Gateway, what: &str, pred: impl Fn(&[Message]) -> bool) {
    assert!(
        sub.wait_until(LONG, pred),
        "waited in vain for {what}: {:?}\n{}",
        sub.messages().iter().map(|m| &m.topic).collect::<Vec<_>>(),
        gw.log()
    );
}

/// A config for a Sparkplug edge node `gw` in group `plant`.
fn config(dir: &std::path::Path, port: u16, devices: &str) -> std::path::PathBuf {
    let devices = format!("{devices}sparkplug:\n  group_id: plant\n");
    write_config(dir, port, "  format: sparkplug\n", &devices)
}

/// Where the decoded messages of `kind` are.
fn positions(decoded: &[Value], kind: &str) -> Vec<usize> {
    (decoded.iter().enumerate())
        .filter(|(_, m)| m["type"] == kind)
        .map(|(i, _)| i)
        .collect()
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// The `bdSeq` of an NBIRTH or NDEATH.
fn bd_seq(message: &Value) -> i64 {
    int(&metric(message, "bdSeq").unwrap()["value"])
}

/// The `bdSeq`s of the node's births and of its deaths, in order.
fn bd_seqs(decoded: &[Value]) -> (Vec<i64>, Vec<i64>) {
    let of_type = |kind: &str| {
        of(decoded, kind, None)
            .into_iter()
            .map(bd_seq)
            .collect::<Vec<i64>>()
    };
    (of_type("NBIRTH"), of_type("NDEATH"))
}

/// Every DDATA metric is declared, with the same datatype, by the last
/// DBIRTH of its device before it; returns how many were checked.
fn data_is_declared_by_its_birth(decoded: &[Value]) -> usize {
    let mut declared: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut checked = 0;
    for m in decoded {
        let device = m["device"].as_str().unwrap_or_default().to_owned();
        let metrics = m["metrics"].as_array().cloned().unwrap_or_default();
        match m["type"].as_str() {
            Some("NBIRTH") => declared.clear(),
            Some("DBIRTH") => {
                let names = metrics.iter().map(|x| {
                    let name = x["name"].as_str().unwrap_or_default().to_owned();
                    (name, x["datatype"].as_str().unwrap_or_default().to_owned())
                });
                declared.insert(device, names.collect());
            }
            Some("DDEATH") => {
                declared.remove(&device);
            }
            Some("DDATA") => {
                let born = declared
                    .get(&device)
                    .unwrap_or_else(|| panic!("DDATA of {device} before its DBIRTH: {m}"));
                for x in &metrics {
                    let name = x["name"].as_str().unwrap_or_default();
                    assert_eq!(
                        born.get(name).map(String::as_str),
                        x["datatype"].as_str(),
                        "{device}/{name} in DDATA as its DBIRTH declares it: {m}"
                    );
                    assert!(x["timestamp"].is_u64(), "every metric has its time: {m}");
                    checked += 1;
                }
            }
            _ => {}
        }
    }
    checked
}

/// One `seq` for all N and D messages of the node but NDEATH: NBIRTH is 0, each next
/// one adds 1, 255 is followed by 0. Returns how many times it wrapped.
fn seq_is_continuous(decoded: &[Value]) -> usize {
    let mut wraps = 0;
    let mut last: Option<i64> = None;
    // What hosts send (NCMD, DCMD) has no seq of the node's; NDEATH none.
    let numbered = ["NBIRTH", "DBIRTH", "NDATA", "DDATA", "DDEATH"];
    for m in decoded
        .iter()
        .filter(|m| numbered.iter().any(|t| m["type"] == *t))
    {
        let seq = int(&m["seq"]);
        if m["type"] == "NBIRTH" {
            assert_eq!(seq, 0, "NBIRTH has seq 0: {m}");
        } else {
            let before = last.unwrap_or_else(|| panic!("{m} before any NBIRTH"));
            assert_eq!(seq, (before + 1) % 256, "seq follows {before}: {m}");
            wraps += usize::from(seq == 0);
        }
        last = Some(seq);
    }
    wraps
}

#[test]
fn births_data_seq_and_device_deaths_as_a_sparkplug_host_reads_them() {
    let broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-spb-rules", ALL);
    // 7 as u16, -5 as i16, 215 scaled by 0.1.
    let mut slave = Slave::new([(1, Tables::default().holding(0, &[7, 0xfffb, 215]))]);
    let port = slave.serve_tcp(0);
    let meter = format!(
        "  - name: meter\n    kind: modbus\n    tcp: {{ host: 127.0.0.1, port: {port} }}\n    poll: 200ms\n    timeout: 300ms\n    offline_after: 1s\n    heartbeat: 200ms\n    points:\n      - {{ name: count, register: holding, address: 0 }}\n      - {{ name: delta, register: holding, address: 1, type: i16 }}\n      - {{ name: temp, register: holding, address: 2, scale: 0.1, unit: °C }}\n"
    );
    let window = "  - name: win\n    kind: simulated\n    poll: 100ms\n    offline_after: 1h\n    points:\n      - { name: v, signal: ramp, min: 0, max: 10, period: 10s, aggregate: { window: 1s } }\n";
    // Enough messages for `seq` to come round.
    let fast = sim_device("fast", "10ms", 400, "");
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), broker.port, &(meter + window + &fast));
    let mut gw = Gateway::start(&config, dir.path());

    wait(&sub, &gw, "300 messages and a window", |m| {
        m.len() >= 300 && m.iter().any(|x| x.topic == topic("DDATA", Some("win")))
    });
    // The unit goes silent: DDEATH; it answers again: DBIRTH.
    let tables = slave.state().units.remove(&1).unwrap();
    wait(&sub, &gw, "DDEATH of meter", |m| {
        count(m, &topic("DDEATH", Some("meter"))) >= 1
    });
    slave.state().units.insert(1, tables);
    wait(&sub, &gw, "DBIRTH of meter again", |m| {
        count(m, &topic("DBIRTH", Some("meter"))) >= 2
    });
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());

    let messages = sub.messages();
    for m in messages.iter().filter(|m| !m.topic.contains("/NDEATH/")) {
        assert_eq!(
            (m.qos, m.retain),
            (0, false),
            "QoS 0, not retained: {}",
            m.topic
        );
    }
    let decoded = decode(&messages);
    assert_eq!(decoded[0]["type"], "NBIRTH", "NBIRTH first: {}", decoded[0]);
    let nbirth = &decoded[0];
    assert_eq!(metric(nbirth, "bdSeq").unwrap()["datatype"], "INT64");
    let rebirth = metric(nbirth, "Node Control/Rebirth").unwrap();
    assert_eq!(
        (&rebirth["datatype"], &rebirth["value"]),
        (&"BOOLEAN".into(), &false.into())
    );

    let wraps = seq_is_continuous(&decoded);
    assert!(wraps >= 1, "seq came round {wraps} times");
    let checked = data_is_declared_by_its_birth(&decoded);
    assert!(checked >= 300, "{checked} DDATA metrics checked");

    // Datatypes as the specification's table says, values as read.
    let birth = of(&decoded, "DBIRTH", Some("meter"))[0];
    let datatype = |name| metric(birth, name).unwrap()["datatype"].clone();
    assert_eq!(datatype("count"), "UINT16");
    assert_eq!(datatype("delta"), "INT16");
    assert_eq!(datatype("temp"), "DOUBLE");
    let data = of(&decoded, "DDATA", Some("meter"));
    let first = data.iter().find(|d| metric(d, "delta").is_some()).unwrap();
    assert_eq!(metric(first, "delta").unwrap()["value"], -5);
    assert_eq!(metric(first, "count").unwrap()["value"], 7);
    assert_eq!(metric(first, "temp").unwrap()["value"], 21.5);

    // A window is one metric per function.
    let win = of(&decoded, "DBIRTH", Some("win"))[0];
    for (name, t) in [
        ("v/min", "DOUBLE"),
        ("v/max", "DOUBLE"),
        ("v/mean", "DOUBLE"),
        ("v/last", "DOUBLE"),
        ("v/count", "UINT64"),
    ] {
        assert_eq!(metric(win, name).unwrap()["datatype"], t, "{win}");
    }
    let summary = of(&decoded, "DDATA", Some("win"))[0];
    assert!(
        int(&metric(summary, "v/count").unwrap()["value"]) >= 1,
        "{summary}"
    );

    // DDEATH after the unit stopped, DBIRTH when it came back, in order.
    let meter_life: Vec<&str> = decoded
        .iter()
        .filter(|m| m["device"] == "meter" && m["type"] != "DDATA")
        .map(|m| m["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(meter_life, ["DBIRTH", "DDEATH", "DBIRTH"]);
    // A clean stop says NDEATH itself, with the births' bdSeq.
    let death = of(&decoded, "NDEATH", None);
    assert_eq!(death.len(), 1);
    assert_eq!(
        metric(death[0], "bdSeq").unwrap()["value"],
        metric(nbirth, "bdSeq").unwrap()["value"]
    );
}

#[test]
fn the_will_carries_the_births_bd_seq_and_a_backlog_comes_back_historical() {
    let mut broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-spb-will", ALL);
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        broker.port,
        &sim_device("pump", "100ms", 1_000_000, ""),
    );
    let mut gw = Gateway::start(&config, dir.path());
    let ddata = topic("DDATA", Some("pump"));
    wait(&sub, &gw, "live data", |m| count(m, &ddata) >= 3);

    // The broker goes away for a while: the readings wait in the store.
    broker.stop();
    std::thread::sleep(Duration::from_millis(1_500));
    let before = count(&sub.messages(), &ddata);
    broker.restart();
    let nbirth = topic("NBIRTH", None);
    wait(&sub, &gw, "a second NBIRTH and data", |m| {
        count(m, &nbirth) >= 2 && count(m, &ddata) > before
    });
    // Until live data follows the backlog (decoded twice a second).
    let live =
        |m: &Value| m["type"] == "DDATA" && metric(m, "v").unwrap()["is_historical"] == false;
    let live_again = poll_until(|| {
        std::thread::sleep(Duration::from_millis(500));
        let decoded = decode(&sub.messages());
        let second = positions(&decoded, "NBIRTH").get(1).copied();
        let second = second.unwrap_or(decoded.len());
        decoded[second..].iter().filter(|m| live(m)).count() >= 3
    });
    assert!(live_again, "no live data after the backlog\n{}", gw.log());
    // kill -9: the broker publishes the will.
    gw.kill9();
    let ndeath = topic("NDEATH", None);
    wait(&sub, &gw, "the will", |m| count(m, &ndeath) >= 1);
    // Started again: a new bdSeq, from the store.
    let gw = Gateway::start(&config, dir.path());
    wait(&sub, &gw, "a third NBIRTH", |m| count(m, &nbirth) >= 3);

    let decoded = decode(&sub.messages());
    let (births, deaths) = bd_seqs(&decoded);
    // The broker may say the first session's will too when it stops.
    assert_eq!(
        deaths.last(),
        Some(&births[1]),
        "the will names the killed session: births {births:?}, deaths {deaths:?}"
    );
    assert!(deaths.iter().all(|d| births[..2].contains(d)), "{deaths:?}");
    assert!(
        births[0] < births[1] && births[1] < births[2],
        "bdSeq grows with every CONNECT, across a restart: {births:?}"
    );
    seq_is_continuous(&decoded);
    data_is_declared_by_its_birth(&decoded);

    // After the second NBIRTH, the readings of the outage come first,
    // marked historical; live ones follow, not marked.
    // The second session: from its NBIRTH to the next one (the broker may
    // replay the first session's will in between).
    let sessions = positions(&decoded, "NBIRTH");
    let second = sessions[1];
    let after: Vec<&Value> = decoded[second..sessions[2]]
        .iter()
        .filter(|m| m["type"] == "DDATA")
        .collect();
    let historical = |m: &Value| metric(m, "v").unwrap()["is_historical"] == true;
    let backlog = after.iter().take_while(|m| historical(m)).count();
    assert!(backlog >= 5, "{backlog} historical DDATA after the outage");
    let kinds: Vec<bool> = after.iter().map(|m| historical(m)).collect();
    assert!(
        after[backlog..].iter().all(|m| !historical(m)) && after.len() > backlog,
        "live data after the backlog: historical or not, in order: {kinds:?}"
    );
    // Historical readings keep the time they were taken: in the outage.
    let outage_ts = int(&metric(after[0], "v").unwrap()["timestamp"]);
    let reborn = int(&decoded[second]["timestamp"]);
    assert!(
        outage_ts < reborn - 500,
        "{outage_ts} taken before {reborn}"
    );
}

#[test]
fn a_host_asks_for_a_rebirth_and_writes_a_modbus_point_by_name_and_by_alias() {
    let broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-spb-cmd", ALL);
    let mut slave = Slave::new([(1, Tables::default().holding(0, &[3]))]);
    let port = slave.serve_tcp(0);
    let meter = format!(
        "  - name: meter\n    kind: modbus\n    tcp: {{ host: 127.0.0.1, port: {port} }}\n    poll: 200ms\n    points:\n      - {{ name: setpoint, register: holding, address: 0, type: i16, writable: true, min: -100, max: 100 }}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), broker.port, &meter);
    let answers = Subscriber::connect(broker.port, "check-spb-answers", "fieldgate/gw/responses");
    let gw = Gateway::start(&config, dir.path());
    let dbirth = topic("DBIRTH", Some("meter"));
    wait(&sub, &gw, "DBIRTH", |m| count(m, &dbirth) >= 1);
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());

    // NCMD Node Control/Rebirth: NBIRTH and DBIRTH again, nothing between.
    host_command(broker.port, &["rebirth", "plant", "gw"]);
    let nbirth = topic("NBIRTH", None);
    wait(&sub, &gw, "the rebirth", |m| {
        count(m, &nbirth) >= 2 && count(m, &dbirth) >= 2
    });
    let holding = |slave: &Slave| slave.state().units[&1].holding.get(&0).copied();
    // DCMD by name, with its datatype.
    let dcmd = |by: &str, key: &str, datatype: &str, value: &str| {
        let args = ["dcmd", "plant", "gw", "meter", by, key, datatype, value];
        host_command(broker.port, &args);
    };
    dcmd("name", "setpoint", "INT16", "-7");
    assert!(
        poll_until(|| holding(&slave) == Some(0xfff9)),
        "-7 written: {:?}\n{}",
        holding(&slave),
        gw.log()
    );
    let decoded = decode(&sub.messages());
    let alias =
        metric(of(&decoded, "DBIRTH", Some("meter"))[0], "setpoint").unwrap()["alias"].clone();
    // By alias, without datatype: the DBIRTH's.
    let alias = alias
        .as_u64()
        .unwrap_or_else(|| panic!("an alias: {decoded:?}"));
    dcmd("alias", &alias.to_string(), "-", "9");
    assert!(
        poll_until(|| holding(&slave) == Some(9)),
        "9 written: {:?}\n{}",
        holding(&slave),
        gw.log()
    );
    let ddata = topic("DDATA", Some("meter"));
    let shows = |value: i64| {
        let ddata = ddata.clone();
        move |m: &[Message]| {
            let data: Vec<Message> = m.iter().filter(|x| x.topic == ddata).cloned().collect();
            decode(&data)
                .iter()
                .any(|d| metric(d, "setpoint").is_some_and(|x| x["value"] == value))
        }
    };
    wait(&sub, &gw, "-7 in a DDATA", shows(-7));
    wait(&sub, &gw, "9 in a DDATA", shows(9));
    // Out of the point's range: refused by the commands path, answered
    // on `P/responses`, nothing written.
    dcmd("name", "setpoint", "INT16", "500");
    let rejected = |m: &[Message]| {
        m.iter().any(|x| {
            x.topic == "fieldgate/gw/responses"
                && x.json()["status"] == "rejected"
                && x.json()["id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("spb-meter-"))
        })
    };
    wait(&answers, &gw, "the refusal on P/responses", rejected);
    assert_eq!(holding(&slave), Some(9), "nothing written");

    let decoded = decode(&sub.messages());
    seq_is_continuous(&decoded);
    data_is_declared_by_its_birth(&decoded);
    // The rebirth: same bdSeq, and the DBIRTH straight after the NBIRTH.
    let births = positions(&decoded, "NBIRTH");
    assert_eq!(births.len(), 2);
    assert_eq!(bd_seq(&decoded[births[0]]), bd_seq(&decoded[births[1]]));
    assert_eq!(
        decoded[births[1] + 1]["type"],
        "DBIRTH",
        "{}",
        decoded[births[1] + 1]
    );
}

/// A host gone wrong floods the node with NCMD rebirths: at most one set
/// of births a second (`uplink/pace.rs`), the last ask answered, and the
/// data flows on, in sequence.
#[test]
fn a_flood_of_rebirths_makes_at_most_one_set_of_births_a_second() {
    const FLOOD: usize = 1_000;
    let broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-spb-flood", ALL);
    let dir = tempfile::tempdir().unwrap();
    let room = sim_device("room", "50ms", 1_000_000, "");
    let config = config(dir.path(), broker.port, &room);
    let gw = Gateway::start(&config, dir.path());
    let nbirth = topic("NBIRTH", None);
    let ddata = topic("DDATA", Some("room"));
    wait(&sub, &gw, "NBIRTH and DDATA", |m| {
        count(m, &nbirth) >= 1 && count(m, &ddata) >= 1
    });
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());

    let started = Instant::now();
    host_command(broker.port, &["rebirth", "plant", "gw", &FLOOD.to_string()]);
    // One set at once, or a second after the last (at connection), and
    // one more owed to the rest.
    wait(&sub, &gw, "births for the flood", |m| {
        count(m, &nbirth) >= 2
    });
    std::thread::sleep(Duration::from_secs(2));
    let elapsed = started.elapsed().as_secs_f64();
    let births = count(&sub.messages(), &nbirth) - 1;
    eprintln!("{FLOOD} rebirths asked made {births} sets of births in {elapsed:.1} s");
    assert!(
        births as f64 <= 1.0 + elapsed,
        "{births} sets of births in {elapsed:.1} s"
    );
    let before = count(&sub.messages(), &ddata);
    wait(&sub, &gw, "DDATA after the flood", |m| {
        count(m, &ddata) >= before + 20
    });
    let decoded = decode(&sub.messages());
    seq_is_continuous(&decoded);
    data_is_declared_by_its_birth(&decoded);
}

/// Polls `done` for up to a minute.
fn poll_until(done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + LONG;
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The primary host's retained STATE, as a host publishes it.
fn host_state(port: u16, online: bool, timestamp: u64) {
    let payload = format!(r#"{{"online":{online},"timestamp":{timestamp}}}"#);
    let status = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-r"])
        .args(["-t", "spBv1.0/STATE/scada", "-m", &payload])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success(), "mosquitto_pub failed");
}

#[test]
fn with_a_primary_host_the_node_is_born_only_while_the_host_is_online() {
    let broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-spb-host", ALL);
    let dir = tempfile::tempdir().unwrap();
    let devices = sim_device("pump", "100ms", 1_000_000, "")
        + "sparkplug:\n  group_id: plant\n  primary_host: scada\n";
    let config = write_config(dir.path(), broker.port, "  format: sparkplug\n", &devices);
    let gw = Gateway::start(&config, dir.path());
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());
    std::thread::sleep(Duration::from_secs(1));
    let node_messages = |m: &[Message]| -> usize {
        m.iter()
            .filter(|x| x.topic.starts_with("spBv1.0/plant/"))
            .count()
    };
    assert_eq!(
        node_messages(&sub.messages()),
        0,
        "nothing before the host is online"
    );

    let nbirth = topic("NBIRTH", None);
    let ndeath = topic("NDEATH", None);
    let ddata = topic("DDATA", Some("pump"));
    host_state(broker.port, true, 1_000);
    wait(&sub, &gw, "NBIRTH and data", |m| {
        count(m, &nbirth) == 1 && count(m, &ddata) >= 3
    });
    // Offline: NDEATH from the node itself, then silence.
    host_state(broker.port, false, 2_000);
    wait(&sub, &gw, "NDEATH", |m| count(m, &ndeath) == 1);
    std::thread::sleep(Duration::from_millis(500));
    let at_death = node_messages(&sub.messages());
    // A stale STATE (older than the last) changes nothing.
    host_state(broker.port, true, 1_500);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        node_messages(&sub.messages()),
        at_death,
        "silent while the host is offline"
    );
    host_state(broker.port, true, 3_000);
    wait(&sub, &gw, "NBIRTH again", |m| {
        count(m, &nbirth) == 2 && count(m, &ddata) >= 6
    });

    let decoded = decode(&sub.messages());
    seq_is_continuous(&decoded);
    data_is_declared_by_its_birth(&decoded);
    let (births, deaths) = bd_seqs(&decoded);
    assert_eq!(deaths, [births[0]], "births {births:?}");
    assert!(births[1] > births[0], "a new connection: {births:?}");
    // Nothing of the node's between its NDEATH and its next NBIRTH.
    let node: Vec<&Value> = decoded.iter().filter(|m| m["group"] == "plant").collect();
    let death = node.iter().position(|m| m["type"] == "NDEATH").unwrap();
    let next = node[death + 1];
    assert_eq!(next["type"], "NBIRTH", "{next}");
}

#[test]
fn with_qos_1_births_and_data_are_acknowledged_and_leave_the_store() {
    let broker = Broker::start();
    let sub = Subscriber::connect(broker.port, "check-spb-qos1", ALL);
    let dir = tempfile::tempdir().unwrap();
    let devices = sim_device("pump", "100ms", 20, "") + "sparkplug:\n  group_id: plant\n  qos: 1\n";
    let config = write_config(dir.path(), broker.port, "  format: sparkplug\n", &devices);
    let status = Subscriber::connect(broker.port, "check-spb-status", "fieldgate/gw/status");
    let mut gw = Gateway::start(&config, dir.path());
    let ddata = topic("DDATA", Some("pump"));
    wait(&sub, &gw, "the 20 readings", |m| count(m, &ddata) >= 20);
    // The gateway's own status keeps its topic (retained, no will of its own).
    wait(&status, &gw, "P/status online", |m| {
        latest_status(m).is_some_and(|s| s["state"] == "online")
    });
    for m in sub
        .messages()
        .iter()
        .filter(|m| m.topic.starts_with("spBv1.0/plant/"))
    {
        assert_eq!((m.qos, m.retain), (1, false), "{}", m.topic);
    }
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
    assert_eq!(
        queued_rows(&config),
        0,
        "every row acknowledged and deleted"
    );
    let decoded = decode(&sub.messages());
    seq_is_continuous(&decoded);
    let values: Vec<&Value> = of(&decoded, "DDATA", Some("pump"))
        .into_iter()
        .filter_map(|m| metric(m, "v"))
        .map(|v| &v["value"])
        .collect();
    assert_eq!(values.len(), 20, "each reading once: {values:?}");
}
