//! Configuration from the cloud: pushed on `P/config/set`, checked like the
//! local file, cached for offline boots, applied without a restart; and
//! SIGHUP for the local file.

mod common;

use std::time::{Duration, Instant};

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
    let deadline = Instant::now() + LONG;
    while queued_rows(&rig.config) < 20 {
        assert!(Instant::now() < deadline, "{}", gw.log());
        std::thread::sleep(Duration::from_millis(100));
    }
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
    assert!(show.contains("--- remote configuration v2"), "{show}");
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
