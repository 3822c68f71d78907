//! Configuration from the cloud: pushed on `P/config/set`, checked like the
//! local file and against what the local file trusts it with, cached for
//! offline boots, applied without a restart; SIGHUP for the local file; and
//! the broker ACL of the README's security model.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::modbus_slave::{Slave, Tables};
use common::*;

const LONG: Duration = Duration::from_secs(120);
const SET: &str = "fieldgate/gw/config/set";

fn states(messages: &[Message]) -> Vec<serde_json::Value> {
    messages
        .iter()
        .filter(|m| m.topic == "fieldgate/gw/config/state")
        .map(Message::json)
        .collect()
}

fn readings_of(messages: &[Message], device: &str) -> usize {
    telemetry(messages)
        .iter()
        .filter(|(d, _, _)| d == device)
        .count()
}

fn wait_state(sub: &Subscriber, version: &str, status: &str, gw: &Gateway) -> serde_json::Value {
    let found = |m: &[Message]| {
        states(m)
            .iter()
            .any(|s| s["version"] == version && s["status"] == status)
    };
    assert!(
        sub.wait_until(LONG, found),
        "no {status} state for {version}\n{}",
        gw.log()
    );
    states(&sub.messages())
        .into_iter()
        .rfind(|s| s["version"] == version)
        .unwrap()
}

const KEEP: &str = "  - { name: keep, kind: simulated, poll: 20ms, count: 400, points: [{ name: v, signal: ramp }] }\n";
const GONE: &str =
    "  - { name: gone, kind: simulated, poll: 20ms, points: [{ name: v, signal: ramp }] }\n";
const FRESH: &str =
    "  - { name: fresh, kind: simulated, poll: 20ms, points: [{ name: v, signal: sine }] }\n";

#[test]
fn pushed_devices_start_and_stop_while_untouched_ones_flow_on_and_survive_an_offline_boot() {
    let mut rig = Rig::new("check-remote", "fieldgate/gw/#", &format!("{KEEP}{GONE}"));
    let mut gw = rig.gateway();
    rig.expect(&gw, LONG, |m| {
        readings_of(m, "gone") >= 10 && readings_of(m, "keep") >= 10
    });
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());

    publish(
        rig.broker.port,
        SET,
        &format!("version: v2\ndevices:\n{KEEP}{FRESH}"),
    );
    let state = wait_state(&rig.sub, "v2", "applied", &gw);
    assert_eq!(state["running_version"], "v2");
    rig.expect(&gw, LONG, |m| readings_of(m, "fresh") >= 10);
    let log = gw.log();
    assert!(
        log.contains("added [\"fresh\"], removed [\"gone\"], restarted []"),
        "{log}"
    );

    // The removed device stops; the untouched one never missed a reading.
    std::thread::sleep(Duration::from_millis(500));
    let gone = readings_of(&rig.sub.messages(), "gone");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        readings_of(&rig.sub.messages(), "gone"),
        gone,
        "removed, yet still publishing"
    );
    // Its retained availability is cleared; the new device's is online.
    rig.expect(&gw, LONG, |m| {
        availability(m, "gone").last().map(String::as_str) == Some("")
            && availability(m, "fresh").last().map(String::as_str) == Some("online")
    });
    rig.expect(&gw, LONG, |m| readings_of(m, "keep") >= 400);
    assert_eq!(
        readings_of(&rig.sub.messages(), "keep"),
        400,
        "each of keep's 400 readings exactly once"
    );
    let status = latest_status(&rig.sub.messages()).unwrap();
    assert_eq!(
        (
            status["config_version"].as_str(),
            status["config_origin"].as_str()
        ),
        (Some("v2"), Some("remote"))
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());

    // Offline boot: the cached remote devices run and queue.
    rig.broker.stop();
    let before = readings_of(&rig.sub.messages(), "fresh");
    let mut gw = rig.gateway();
    assert!(gw.wait_for_log("origin=\"remote\"", LONG), "{}", gw.log());
    wait_for_queued(&rig.config, &gw, 20, LONG);
    rig.broker.restart();
    rig.expect(&gw, LONG, |m| readings_of(m, "fresh") >= before + 20);
    let after = rig.sub.messages();
    assert!(
        telemetry(&after)
            .iter()
            .all(|(d, _, _)| d != "gone" || readings_of(&after, "gone") == gone)
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());

    // `config show` says where each part comes from; clear-remote drops it.
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fieldgate"))
            .args(args)
            .arg("--config")
            .arg(&rig.config)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let show = run(&["config", "show"]);
    assert!(
        show.contains("# devices: the remote configuration \"v2\""),
        "{show}"
    );
    assert!(
        show.contains("\ndevices:  # the remote configuration \"v2\""),
        "{show}"
    );
    assert!(show.contains("  # remote v2:"), "{show}");
    assert!(run(&["config", "clear-remote"]).contains("dropped the remote configuration v2"));
    assert!(
        run(&["config", "show"])
            .contains("# devices: the local file (no remote configuration cached)")
    );
}

#[test]
fn broken_or_overreaching_configurations_are_rejected_and_change_nothing() {
    let rig = Rig::new("check-reject", "fieldgate/gw/#", GONE);
    let mut gw = rig.gateway();
    rig.expect(&gw, LONG, |m| readings_of(m, "gone") >= 5);
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());

    let broken = "version: v3\ndevices:\n  - name: bad\n    kind: simulated\n    poll: often\n    colour: red\n    points: [{ name: v, signal: ramp }]\n";
    publish(rig.broker.port, SET, broken);
    let state = wait_state(&rig.sub, "v3", "rejected", &gw);
    let error = state["error"].as_str().unwrap();
    assert!(
        error.contains("remote configuration:5:11: devices[0].poll: invalid duration `often`"),
        "{error}"
    );
    assert!(
        error.contains("remote configuration:6:5: devices[0].colour: unknown key"),
        "{error}"
    );
    assert_eq!(
        state["running_version"]
            .as_str()
            .map(|v| v.starts_with("local-")),
        Some(true)
    );

    publish(
        rig.broker.port,
        SET,
        "{\"version\": \"v4\", \"mqtt\": {\"url\": \"mqtt://elsewhere\"}, \"devices\": []}",
    );
    let state = wait_state(&rig.sub, "v4", "rejected", &gw);
    assert!(
        state["error"]
            .as_str()
            .unwrap()
            .contains("`mqtt` stays local"),
        "{state}"
    );

    // Still the old devices, still publishing.
    let now = readings_of(&rig.sub.messages(), "gone");
    rig.expect(&gw, LONG, |m| readings_of(m, "gone") >= now + 10);
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

#[test]
fn sighup_applies_an_edited_local_file_and_keeps_running_on_a_broken_one() {
    let rig = Rig::new("check-hup", TELEMETRY, GONE);
    let mut gw = rig.gateway();
    rig.expect(&gw, LONG, |m| readings_of(m, "gone") >= 5);
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());

    write_config(
        rig.dir.path(),
        rig.broker.port,
        "",
        &format!("{GONE}{FRESH}"),
    );
    gw.sighup();
    rig.expect(&gw, LONG, |m| readings_of(m, "fresh") >= 5);

    std::fs::write(&rig.config, "gateway: {id: gw\nthis is not yaml: [").unwrap();
    gw.sighup();
    assert!(
        gw.wait_for_log("SIGHUP: keeping the running configuration", LONG),
        "{}",
        gw.log()
    );
    let fresh = readings_of(&rig.sub.messages(), "fresh");
    rig.expect(&gw, LONG, |m| readings_of(m, "fresh") >= fresh + 10);
    assert!(gw.is_running());
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

// ---- the local file decides what commands may write -------------------------------------------

const COMMANDS: &str = "fieldgate/gw/commands";

/// `boiler` as the local file has it (`temperature` read-only, `setpoint`
/// writable within 5..80), or as a push that widens both.
fn boiler(port: u16, widened: bool) -> String {
    let (temperature, setpoint) = if widened {
        (
            ", writable: true, min: -1000, max: 1000",
            "min: 0, max: 6000",
        )
    } else {
        ("", "min: 5, max: 80")
    };
    format!(
        "  - name: boiler\n    kind: modbus\n    tcp: {{ host: 127.0.0.1, port: {port} }}\n    poll: 200ms\n    points:\n      - {{ name: temperature, register: holding, address: 0, type: u16, scale: 0.1{temperature} }}\n      - {{ name: setpoint, register: holding, address: 10, type: u16, writable: true, {setpoint} }}\n"
    )
}

fn boiler_slave() -> (Slave, u16) {
    let tables = Tables::default().holding(0, &[215]).holding(10, &[20]);
    let mut slave = Slave::new([(1, tables)]);
    let port = slave.serve_tcp(0);
    (slave, port)
}

/// Writes (function 5, 6, 15 or 16) the slave received.
fn writes(slave: &Slave) -> usize {
    slave.seen().iter().filter(|s| s.function >= 5).count()
}

fn setpoint_register(slave: &Slave) -> Option<u16> {
    slave.state().units.get(&1)?.holding.get(&10).copied()
}

fn command(broker: u16, id: &str, point: &str, value: &str) {
    let body = format!(r#"{{"id":"{id}","device":"boiler","point":"{point}","value":{value}}}"#);
    publish(broker, COMMANDS, &body);
}

fn answer(sub: &Subscriber, id: &str, gw: &Gateway) -> serde_json::Value {
    let of = |m: &Message| m.topic == "fieldgate/gw/responses" && m.json()["id"] == id;
    assert!(
        sub.wait_until(LONG, |m| m.iter().any(of)),
        "no answer to {id}\n{}",
        gw.log()
    );
    let messages = sub.messages();
    messages.iter().find(|m| of(m)).map(Message::json).unwrap()
}

/// The gateway subscribes before it says it is online: once a new online
/// status arrives, what is published to it is delivered.
fn wait_subscribed(_rig: &Rig, gw: &Gateway) {
    // Commands and configurations come on the downstream connection.
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());
}

/// (line, column) of `value` on the line of `text` that holds `line`.
fn position(text: &str, line: &str, value: &str) -> (usize, usize) {
    let (i, found) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(line))
        .unwrap();
    (i + 1, found.find(value).unwrap() + 1)
}

#[test]
fn a_push_that_widens_writes_is_rejected_and_the_writes_it_wanted_never_reach_the_slave() {
    let (slave, port) = boiler_slave();
    let rig = Rig::new("check-trust", "fieldgate/gw/#", &boiler(port, false));
    let mut gw = rig.gateway();
    wait_subscribed(&rig, &gw);

    let push = format!("version: v-wide\ndevices:\n{}", boiler(port, true));
    publish(rig.broker.port, SET, &push);
    let state = wait_state(&rig.sub, "v-wide", "rejected", &gw);
    let error = state["error"].as_str().unwrap_or_default();
    let (line, col) = position(&push, "name: temperature", "true");
    let (min_line, min_col) = position(&push, "name: setpoint", "0, max");
    let max_col = position(&push, "name: setpoint", "6000").1;
    for expected in [
        format!(
            "remote configuration:{line}:{col}: devices[0].points[0].writable: `boiler.temperature` is not writable in the local file"
        ),
        format!(
            "remote configuration:{min_line}:{min_col}: devices[0].points[1].min: `boiler.setpoint`: min 0 is below 5"
        ),
        format!(
            "remote configuration:{min_line}:{max_col}: devices[0].points[1].max: `boiler.setpoint`: max 6000 is above 80"
        ),
    ] {
        assert!(error.contains(&expected), "{expected}\nnot in\n{error}");
    }
    assert_eq!(
        state["running_version"]
            .as_str()
            .map(|v| v.starts_with("local-")),
        Some(true),
        "{state}"
    );

    command(rig.broker.port, "w-temp", "temperature", "99.5");
    command(rig.broker.port, "w-set", "setpoint", "500");
    let temp = answer(&rig.sub, "w-temp", &gw);
    let set = answer(&rig.sub, "w-set", &gw);
    assert_eq!(
        (temp["status"].as_str(), temp["error"].as_str()),
        (
            Some("rejected"),
            Some("point `temperature` is not writable")
        ),
        "{temp}"
    );
    assert_eq!(
        (set["status"].as_str(), set["error"].as_str()),
        (Some("rejected"), Some("500 is above the point's max 80")),
        "{set}"
    );
    assert_eq!(writes(&slave), 0, "{:?}", slave.seen());
    assert_eq!(setpoint_register(&slave), Some(20));
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());

    // Opted in, the same push applies, and the write it allows arrives.
    let strict = std::fs::read_to_string(&rig.config).unwrap();
    let trusting = format!("{strict}remote_config: {{ allow_writes: true }}\n");
    std::fs::write(&rig.config, trusting).unwrap();
    let mut gw = rig.gateway();
    wait_subscribed(&rig, &gw);
    publish(rig.broker.port, SET, &push);
    let state = wait_state(&rig.sub, "v-wide", "applied", &gw);
    assert_eq!(state["running_version"], "v-wide", "{state}");
    command(rig.broker.port, "w-set-2", "setpoint", "500");
    let set = answer(&rig.sub, "w-set-2", &gw);
    assert_eq!(set["status"], "ok", "{set}");
    assert_eq!(setpoint_register(&slave), Some(500));
    assert_eq!(writes(&slave), 1, "{:?}", slave.seen());
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());

    // With the opt-in withdrawn, the cached push is refused at boot and
    // the local devices run.
    std::fs::write(&rig.config, strict).unwrap();
    let mut gw = rig.gateway();
    assert!(
        gw.wait_for_log(
            "the cached remote configuration v-wide no longer passes the checks; running the local devices",
            LONG
        ),
        "{}",
        gw.log()
    );
    assert!(
        gw.log()
            .contains("`boiler.temperature` is not writable in the local file"),
        "{}",
        gw.log()
    );
    wait_subscribed(&rig, &gw);
    command(rig.broker.port, "w-set-3", "setpoint", "70");
    command(rig.broker.port, "w-set-4", "setpoint", "500");
    assert_eq!(answer(&rig.sub, "w-set-3", &gw)["status"], "ok");
    let set = answer(&rig.sub, "w-set-4", &gw);
    assert_eq!(
        (set["status"].as_str(), set["error"].as_str()),
        (Some("rejected"), Some("500 is above the point's max 80")),
        "{set}"
    );
    assert_eq!(setpoint_register(&slave), Some(70));
    assert_eq!(writes(&slave), 2, "{:?}", slave.seen());
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

// ---- the broker ACL of the README's security model ----------------------------------------------

/// The README's ACL example, for gateway `gw` instead of `pi-boiler-01`.
fn readme_acl() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let fence = "```text\n# /etc/mosquitto/acl";
    let start = readme.find(fence).expect("the ACL example in the README") + "```text\n".len();
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end].replace("pi-boiler-01", "gw")
}

fn add_user(file: &Path, user: &str, password: &str) {
    let mut cmd = Command::new("mosquitto_passwd");
    if !file.exists() {
        cmd.arg("-c");
    }
    let status = cmd
        .arg("-b")
        .arg(file)
        .args([user, password])
        .status()
        .unwrap();
    assert!(status.success(), "mosquitto_passwd {user}");
}

fn publish_as(port: u16, user: &str, topic: &str, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-u", user, "-P", &format!("{user}-secret")])
        .args(["-t", topic, "-m", payload])
        .status()
        .unwrap();
    assert!(status.success(), "mosquitto_pub as {user} to {topic}");
}

/// `mosquitto_sub -v` as a user, its output in a file.
struct Listener {
    child: Child,
    out: PathBuf,
}

impl Listener {
    fn start(port: u16, user: &str, dir: &Path) -> Listener {
        let out = dir.join(format!("{user}.sub"));
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub", "-d", "-v", "-q", "1"])
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-u", user, "-P", &format!("{user}-secret")])
            .args(["-t", "fieldgate/gw/#"])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let listener = Listener { child, out };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listener.text().contains("received SUBACK") {
            assert!(
                Instant::now() < deadline,
                "{user}: no SUBACK\n{}",
                listener.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        listener
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// (topic, payload) of what arrived; `-d` adds lines of its own.
    fn messages(&self) -> Vec<(String, String)> {
        self.text()
            .lines()
            .filter(|l| l.starts_with("fieldgate/gw/"))
            .filter_map(|l| l.split_once(' '))
            .map(|(t, p)| (t.to_owned(), p.to_owned()))
            .collect()
    }

    fn has(&self, topic: &str, needles: &[&str]) -> bool {
        self.messages()
            .iter()
            .any(|(t, p)| t.ends_with(topic) && needles.iter().all(|n| p.contains(n)))
    }

    fn wait_for(&self, topic: &str, needles: &[&str], gw: &Gateway) {
        let deadline = Instant::now() + LONG;
        while !self.has(topic, needles) {
            assert!(
                Instant::now() < deadline,
                "no {topic} with {needles:?}\n{}\n{}",
                self.text(),
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn under_the_readme_acl_the_gateway_works_and_only_the_cloud_commands_it() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    for user in ["gw", "cloud", "intruder"] {
        add_user(&passwd, user, &format!("{user}-secret"));
    }
    let acl = dir.path().join("acl");
    std::fs::write(&acl, readme_acl()).unwrap();
    let broker = Broker::start_with_config(&format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}\n",
        passwd.display(),
        acl.display()
    ));
    let (slave, port) = boiler_slave();
    let config = write_config(
        dir.path(),
        broker.port,
        "  username: gw\n  password: gw-secret\n",
        &boiler(port, false),
    );
    let cloud = Listener::start(broker.port, "cloud", dir.path());
    let intruder = Listener::start(broker.port, "intruder", dir.path());
    let mut gw = Gateway::start(&config, dir.path());
    // Online means subscribed (the subscriptions go first).
    cloud.wait_for("/status", &["\"online\""], &gw);
    cloud.wait_for("/telemetry/boiler", &["\"temperature\""], &gw);
    cloud.wait_for("/availability/boiler", &["online"], &gw);
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());

    let set = |version: &str, range: &str| {
        let devices = boiler(port, false).replace("min: 5, max: 80", range);
        format!("version: {version}\ndevices:\n{devices}")
    };
    let command = |id: &str, value: u16| {
        format!(r#"{{"id":"{id}","device":"boiler","point":"setpoint","value":{value}}}"#)
    };
    for user in ["intruder", "gw"] {
        publish_as(
            broker.port,
            user,
            COMMANDS,
            &command(&format!("c-{user}"), 50),
        );
        let version = format!("v-{user}");
        publish_as(broker.port, user, SET, &set(&version, "min: 40, max: 60"));
    }
    publish_as(broker.port, "cloud", COMMANDS, &command("c-cloud", 42));
    // Answered before the new configuration restarts the device: a write
    // still on the bus then would be answered "failed" (the bus stopped).
    cloud.wait_for("/responses", &["\"c-cloud\"", "\"ok\""], &gw);
    publish_as(
        broker.port,
        "cloud",
        SET,
        &set("v-cloud", "min: 10, max: 60"),
    );
    cloud.wait_for("/config/state", &["\"v-cloud\"", "\"applied\""], &gw);

    // What the others sent was dropped by the broker: a command that had
    // reached the gateway would have been written before the cloud's.
    assert_eq!(writes(&slave), 1, "{:?}", slave.seen());
    assert_eq!(setpoint_register(&slave), Some(42));
    for user in ["intruder", "gw"] {
        assert!(
            !cloud.has("/responses", &[&format!("c-{user}")]),
            "{}",
            cloud.text()
        );
        assert!(
            !cloud.has("/config/state", &[&format!("v-{user}")]),
            "{}",
            cloud.text()
        );
    }
    assert!(
        gw.log().contains("configuration v-cloud (remote) applied"),
        "{}",
        gw.log()
    );
    assert_eq!(
        intruder.messages(),
        [],
        "the intruder read the gateway's topics"
    );
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}

/// The retained `P/config/state` names what runs: at start, and after
/// `config clear-remote` and SIGHUP, when the local devices run again.
#[test]
fn the_retained_config_state_follows_clear_remote_and_sighup() {
    let rig = Rig::new("check-state", "fieldgate/gw/#", GONE);
    let mut gw = rig.gateway();
    let origin = |m: &Message| m.json()["running_origin"].as_str().map(str::to_owned);
    let local_state = |m: &[Message]| {
        m.iter().any(|m| {
            m.topic == "fieldgate/gw/config/state" && origin(m).as_deref() == Some("local")
        })
    };
    rig.expect(&gw, LONG, local_state);
    assert!(gw.wait_for_commands(LONG), "{}", gw.log());

    publish(
        rig.broker.port,
        SET,
        &format!("version: v2\ndevices:\n{FRESH}"),
    );
    let state = wait_state(&rig.sub, "v2", "applied", &gw);
    assert_eq!(state["running_origin"], "remote");
    rig.expect(&gw, LONG, |m| readings_of(m, "fresh") >= 5);

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(["config", "clear-remote", "--config"])
        .arg(&rig.config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    rig.sub.clear();
    gw.sighup();
    rig.expect(&gw, LONG, local_state);
    rig.expect(&gw, LONG, |m| readings_of(m, "gone") >= 5);

    // What a dashboard connecting now is told.
    let late = Subscriber::connect(rig.broker.port, "check-state-late", "fieldgate/gw/#");
    let retained = |topic: &'static str| move |m: &[Message]| m.iter().any(|m| m.topic == topic);
    assert!(late.wait_until(LONG, retained("fieldgate/gw/config/state")));
    assert!(late.wait_until(LONG, retained("fieldgate/gw/status")));
    let messages = late.messages();
    let state = messages
        .iter()
        .rfind(|m| m.topic == "fieldgate/gw/config/state")
        .unwrap()
        .json();
    let status = latest_status(&messages).unwrap();
    assert_eq!(state["running_origin"], "local", "{state}");
    assert_eq!(
        state["running_version"], status["config_version"],
        "{state} {status}"
    );
    assert_eq!(status["config_origin"], "local", "{status}");
    assert!(gw.sigterm_and_wait(Duration::from_secs(20)).success());
}
