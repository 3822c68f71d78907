//! Commands and configurations sent while the gateway is offline wait at
//! the broker: the gateway reaches a real mosquitto through the fault
//! proxy, the link is cut (reset, so the broker sees the disconnect at
//! once), a command is published straight to the broker, and the link
//! comes back. The command runs once on a tokio-modbus slave and is
//! answered `ok`; one that expired meanwhile is answered `expired` and not
//! written.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use common::modbus_slave::*;
use common::proxy::{Fault, Proxy};
use common::*;

const LONG: Duration = Duration::from_secs(60);
const COMMANDS: &str = "fieldgate/gw/commands";

/// A mosquitto, the proxy in front of it, a Modbus slave with a writable
/// holding register, a subscriber to the answers (on the broker itself),
/// and a gateway that reaches the broker through the proxy only.
struct Offline {
    // Dropped first: the gateway, then the subscriber, while their broker lives.
    gw: Gateway,
    sub: Subscriber,
    proxy: Proxy,
    slave: Slave,
    broker: Broker,
    _dir: tempfile::TempDir,
}

impl Offline {
    fn start(client: &str, mqtt_extra: &str) -> Offline {
        Offline::start_with(client, mqtt_extra, "")
    }

    /// As `start`, with `tail` after the devices (top-level sections).
    fn start_with(client: &str, mqtt_extra: &str, tail: &str) -> Offline {
        let broker = Broker::start();
        let proxy = Proxy::start(broker.port);
        let mut slave = Slave::new([(1, Tables::default().holding(10, &[200]))]);
        let port = slave.serve_tcp(0);
        let sub = Subscriber::connect(broker.port, client, "fieldgate/gw/responses");
        let dir = tempfile::tempdir().unwrap();
        let mqtt = format!("  url: {}\n  keep_alive: 5s\n{mqtt_extra}", proxy.url());
        let device = format!(
            "  - name: boiler\n    kind: modbus\n    tcp: {{ host: 127.0.0.1, port: {port} }}\n    poll: 1s\n    timeout: 1500ms\n    points:\n      - {{ name: setpoint, register: holding, address: 10, type: u16, writable: true, min: 5, max: 80 }}\n"
        );
        let config = write_config_mqtt(dir.path(), &mqtt, &format!("{device}{tail}"));
        let gw = Gateway::start(&config, dir.path());
        assert!(gw.wait_for_log("connected to", LONG), "{}", gw.log());
        assert!(gw.wait_for_commands(LONG), "{}", gw.log());
        Offline {
            gw,
            sub,
            proxy,
            slave,
            broker,
            _dir: dir,
        }
    }

    /// Resets the link and waits until both the gateway and the broker saw
    /// the downstream connection go.
    fn cut(&self) {
        let gone_before = disconnects(&self.broker.log());
        self.proxy.set(Fault::Reset);
        assert!(
            self.gw.wait_for_log("commands link down", LONG),
            "{}",
            self.gw.log()
        );
        let deadline = Instant::now() + LONG;
        while disconnects(&self.broker.log()) <= gone_before {
            assert!(Instant::now() < deadline, "{}", self.broker.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes (function 5, 6, 15 or 16) the slave received.
    fn writes(&self) -> usize {
        self.slave.seen().iter().filter(|s| s.function >= 5).count()
    }

    fn answers(&self, id: &str) -> Vec<Value> {
        self.sub
            .messages()
            .iter()
            .map(Message::json)
            .filter(|a| a["id"] == id)
            .collect()
    }

    /// Waits for the first answer to `id`.
    fn answer(&self, id: &str) -> Value {
        let found = |m: &[Message]| m.iter().any(|m| m.json()["id"] == id);
        assert!(
            self.sub.wait_until(LONG, found),
            "no answer to {id}\n{}",
            self.gw.log()
        );
        self.answers(id).remove(0)
    }
}

/// Lines in which mosquitto says the downstream client `gw-cmd` left
/// ("Socket error on client gw-cmd, disconnecting", "Client gw-cmd closed
/// its connection").
fn disconnects(log: &str) -> usize {
    log.lines()
        .map(str::to_lowercase)
        .filter(|l| {
            l.contains("client gw-cmd") && (l.contains("disconnect") || l.contains("closed its"))
        })
        .count()
}

/// `now + offset` in the format commands carry.
fn at(offset: Duration, past: bool) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let then = if past { now - offset } else { now + offset };
    fieldgate::uplink::payload::timestamp(then.as_millis() as i64)
}

fn a_command_sent_while_offline_runs_once_after_the_link_returns(client: &str, mqtt: &str) {
    let mut rig = Offline::start(client, mqtt);
    // Telemetry keeps a clean session; commands have one the broker keeps.
    let log = rig.broker.log();
    let protocol = if mqtt.contains("\"5\"") { "p5" } else { "p2" };
    assert!(
        log.contains(&format!("as gw ({protocol}, c1")),
        "the telemetry connection must start clean\n{log}"
    );
    assert!(
        log.contains(&format!("as gw-cmd ({protocol}, c0")),
        "the downstream connection must keep its session\n{log}"
    );

    rig.cut();
    publish(
        rig.broker.port,
        COMMANDS,
        r#"{"id":"offline-1","device":"boiler","point":"setpoint","value":42}"#,
    );
    // Nothing can reach the gateway meanwhile.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rig.writes(), 0, "written while offline?\n{}", rig.gw.log());
    assert!(rig.answers("offline-1").is_empty());

    rig.proxy.set(Fault::Pass);
    let ok = rig.answer("offline-1");
    assert_eq!(ok["status"], "ok", "{ok}\n{}", rig.gw.log());
    assert_eq!(rig.slave.state().units[&1].holding[&10], 42);
    // A redelivery (an ack lost with the link) would show by now.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rig.writes(), 1, "executed once\n{}", rig.gw.log());
    let answers = rig.answers("offline-1");
    assert!(answers.iter().all(|a| a["status"] == "ok"), "{answers:?}");
    assert!(rig.gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn a_command_sent_while_offline_runs_once_after_the_link_returns_mqtt311() {
    a_command_sent_while_offline_runs_once_after_the_link_returns("check-offline-4", "");
}

#[test]
fn a_command_sent_while_offline_runs_once_after_the_link_returns_mqtt5() {
    a_command_sent_while_offline_runs_once_after_the_link_returns(
        "check-offline-5",
        "  protocol: \"5\"\n",
    );
}

#[test]
fn a_command_that_expired_while_the_gateway_was_offline_is_answered_expired_not_written() {
    let rig = Offline::start("check-offline-expired", "");
    rig.cut();
    // Valid when sent, expired by the time the gateway is back.
    let expires = at(Duration::from_secs(1), false);
    publish(
        rig.broker.port,
        COMMANDS,
        &format!(
            r#"{{"id":"late","device":"boiler","point":"setpoint","value":30,"expires_at":"{expires}"}}"#
        ),
    );
    std::thread::sleep(Duration::from_secs(2));
    rig.proxy.set(Fault::Pass);
    let late = rig.answer("late");
    assert_eq!(late["status"], "expired", "{late}\n{}", rig.gw.log());

    // A later command still runs, so the slave was reachable all along.
    publish(
        rig.broker.port,
        COMMANDS,
        r#"{"id":"fresh","device":"boiler","point":"setpoint","value":31}"#,
    );
    assert_eq!(rig.answer("fresh")["status"], "ok", "{}", rig.gw.log());
    assert_eq!(rig.writes(), 1, "only the fresh command is written");
    assert_eq!(rig.slave.state().units[&1].holding[&10], 31);
}

/// A configuration pushed while offline is applied after the link returns.
#[test]
fn a_configuration_pushed_while_offline_is_applied_after_the_link_returns() {
    let rig = Offline::start("check-offline-config", "");
    let states = Subscriber::connect(
        rig.broker.port,
        "check-offline-states",
        "fieldgate/gw/config/state",
    );
    rig.cut();
    publish(
        rig.broker.port,
        "fieldgate/gw/config/set",
        "version: while-away\ndevices:\n  - { name: demo, kind: simulated, poll: 1s, points: [{ name: v, signal: ramp }] }\n",
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(!rig.gw.log().contains("while-away"), "{}", rig.gw.log());
    rig.proxy.set(Fault::Pass);
    let applied = |m: &[Message]| {
        m.iter()
            .any(|m| m.json()["version"] == "while-away" && m.json()["status"] == "applied")
    };
    assert!(states.wait_until(LONG, applied), "{}", rig.gw.log());
}

/// A Home Assistant control set at QoS 1 whose ack is lost (the link goes
/// mute upstream after the message came in, then drops): the broker sends
/// it again with DUP set and the same packet id, and the journal answers
/// the copy instead of writing the point a second time.
#[test]
fn a_set_whose_ack_was_lost_is_answered_again_not_written_twice() {
    let rig = Offline::start_with("check-offline-set", "", "homeassistant: {}\n");
    let set = "fieldgate/gw/set/boiler/setpoint";
    // The controls' subscription is in place once a first set is answered.
    let deadline = Instant::now() + LONG;
    loop {
        publish(rig.broker.port, set, "20");
        let answered = |m: &[Message]| m.iter().any(|m| m.json()["status"] == "ok");
        if rig.sub.wait_until(Duration::from_secs(2), answered) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no set answered\n{}",
            rig.gw.log()
        );
    }
    let before = rig.writes();
    let answered_before = rig.sub.messages().len();

    rig.proxy.set(Fault::Mute);
    publish(rig.broker.port, set, "33");
    let t0 = Instant::now();
    while rig.writes() == before {
        assert!(t0.elapsed() < LONG, "the set never ran\n{}", rig.gw.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Give the gateway time to journal and send the (lost) ack.
    std::thread::sleep(Duration::from_millis(500));
    rig.cut();
    rig.proxy.set(Fault::Pass);

    // The answer from before the cut (kept in the outbox) and the one to
    // the copy.
    let two = |m: &[Message]| m.len() >= answered_before + 2;
    assert!(
        rig.sub.wait_until(LONG, two),
        "the broker did not deliver the set again\n{}",
        rig.gw.log()
    );
    std::thread::sleep(Duration::from_secs(1));
    let answers: Vec<Value> = rig.sub.messages()[answered_before..]
        .iter()
        .map(Message::json)
        .collect();
    assert!(
        answers
            .iter()
            .all(|a| a["id"] == answers[0]["id"] && a["status"] == "ok"),
        "one id, answered ok each time: {answers:?}"
    );
    assert!(
        rig.gw
            .log()
            .contains("seen before: answered again, not run"),
        "{}",
        rig.gw.log()
    );
    assert_eq!(rig.writes(), before + 1, "written once\n{}", rig.gw.log());
    assert_eq!(rig.slave.state().units[&1].holding[&10], 33);
}
