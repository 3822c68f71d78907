//! The command line as users meet it: `check`, `version`, exit codes.

use std::path::Path;
use std::process::{Command, Output, Stdio};

fn fieldgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fieldgate"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run fieldgate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_shipped_config_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let out = fieldgate(&["check", "--config", path.to_str().unwrap()], &[]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                text(&out.stderr)
            );
            assert_eq!(text(&out.stdout).trim(), "OK");
            checked += 1;
        }
    }
    assert!(checked >= 2, "expected the demo and the example in config/");
}

const BROKEN: &str = "\
gateway:
  id: gw-1
mqtt:
  url: mqtt://broker.example:1883
  qos: 1
  retain_everything: true
devices:
  - name: pump
    kind: simulated
    poll: 1s
    points:
      - { name: flow, signal: sine, min: 0, max: 10 }
  - name: tank
    kind: simulated
    poll: often
    points:
      - name: level
        signal: constant
        value: [1, 2]
";

#[test]
fn check_names_file_line_column_and_key_of_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, BROKEN).unwrap();
    let out = fieldgate(&["check", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let f = file.display();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "{f}:6:3: mqtt.retain_everything: unknown key `retain_everything`, expected one of"
        )),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{f}:15:11: devices[1].poll: invalid duration `often`"
        )),
        "{stderr}"
    );
    assert!(
        lines[2].starts_with(&format!(
            "{f}:19:16: devices[1].points[0].value: invalid type: sequence"
        )),
        "{stderr}"
    );
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn environment_overrides_are_applied_and_checked() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.yaml");
    let ok = fieldgate(
        &["check", "--config", demo],
        &[
            ("FIELDGATE__MQTT__PASSWORD", "s3cret"),
            ("FIELDGATE__MQTT__USERNAME", "u"),
        ],
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));

    let bad = fieldgate(
        &["check", "--config", demo],
        &[("FIELDGATE__MQTT__QOS", "5")],
    );
    assert_eq!(bad.status.code(), Some(2));
    let stderr = text(&bad.stderr);
    assert!(
        stderr.contains("environment") && stderr.contains("mqtt.qos"),
        "{stderr}"
    );
}

/// `check` and `run` read the file the same way: same exit code, same
/// messages.
fn check_and_run(file: &Path, env: &[(&str, &str)]) -> [(Option<i32>, String); 2] {
    let file = file.to_str().unwrap();
    ["check", "run"].map(|command| {
        let out = fieldgate(&[command, "--config", file], env);
        assert!(text(&out.stdout).is_empty(), "{command}");
        (out.status.code(), text(&out.stderr))
    })
}

#[test]
fn quoted_numbers_and_yes_are_strings_for_check_and_run_alike() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typed.yaml");
    std::fs::write(
        &file,
        "\
gateway:
  id: gw-1
mqtt:
  url: mqtt://broker.example:1883
  qos: \"1\"
devices:
  - name: boiler
    kind: modbus
    tcp: { host: 127.0.0.1 }
    points:
      - { name: setpoint, register: holding, address: 10, writable: yes }
",
    )
    .unwrap();
    let [check, run] = check_and_run(&file, &[]);
    assert_eq!(check, run);
    let (code, stderr) = check;
    assert_eq!(code, Some(2));
    let f = file.display();
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            format!("{f}:5:8: mqtt.qos: invalid type: string \"1\", expected u64"),
            format!(
                "{f}:11:69: devices[0].points[0].writable: invalid type: string \"yes\", expected a boolean"
            ),
        ],
        "{stderr}"
    );
}

#[test]
fn an_invalid_override_names_its_variable_for_check_and_run_alike() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.yaml");
    let [check, run] = check_and_run(&demo, &[("FIELDGATE__MQTT__QOS", "7")]);
    assert_eq!(check, run);
    let (code, stderr) = check;
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr.trim_end(),
        "FIELDGATE__MQTT__QOS: mqtt.qos: invalid value: integer `7`, expected 0, 1 or 2 (environment variable)"
    );

    // An override that is fine is applied; a file problem keeps its place
    // beside an override's.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, BROKEN).unwrap();
    let [check, run] = check_and_run(
        &file,
        &[
            ("FIELDGATE__MQTT__QOS", "2"),
            ("FIELDGATE__DEVICES", "none"),
        ],
    );
    assert_eq!(check, run);
    let (code, stderr) = check;
    assert_eq!(code, Some(2));
    let f = file.display();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("{f}:6:3: mqtt.retain_everything: unknown key")),
        "{stderr}"
    );
    assert_eq!(
        lines[1],
        "FIELDGATE__DEVICES: devices: expected a list of devices (environment variable)"
    );
}

#[test]
fn run_refuses_an_invalid_or_missing_config_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, BROKEN).unwrap();
    let out = fieldgate(&["run", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("devices[1].poll"));

    // systemd does not restart on 2 (RestartPreventExitStatus=2): a
    // missing file does not appear by itself.
    let missing = dir.path().join("nope.yaml");
    for command in ["check", "run"] {
        let out = fieldgate(&[command, "--config", missing.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        assert!(text(&out.stderr).contains("cannot read"), "{command}");
    }
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/fieldgate.service"),
    )
    .unwrap();
    assert!(unit.lines().any(|l| l == "RestartPreventExitStatus=2"));
}

#[test]
fn version_and_usage() {
    let out = fieldgate(&["version"], &[]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("fieldgate {}", env!("CARGO_PKG_VERSION"))
    );
    let out = fieldgate(&["frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

/// What `fieldgate … | head -1` does to us: the reader is gone before or
/// while we print.
fn into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(args)
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run fieldgate")
}

#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.yaml");
    std::fs::write(
        &file,
        format!(
            "gateway: {{ id: gw-1, state_dir: {} }}\nmqtt: {{ url: mqtt://127.0.0.1:1883 }}\ndevices: []\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let config = file.to_str().unwrap();
    let commands: [&[&str]; 5] = [
        &["queue", "--config", config, "stats"],
        &["queue", "--config", config, "peek"],
        &["config", "--config", config, "show"],
        &["check", "--config", config],
        &["version"],
    ];
    for args in commands {
        let out = into_closed_pipe(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stderr), "", "{args:?}");
    }
}

#[test]
fn an_error_names_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    // A state directory that cannot be created, even by root.
    let file = dir.path().join("gw.yaml");
    std::fs::write(
        &file,
        "gateway: { id: gw-1, state_dir: /proc/fieldgate-test/state }\nmqtt: { url: mqtt://127.0.0.1:1 }\ndevices: []\n",
    )
    .unwrap();
    let out = fieldgate(&["run", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.matches("cannot create the state directory").count(),
        1,
        "{stderr}"
    );
    assert_eq!(stderr.matches("(os error").count(), 1, "{stderr}");
}

/// What the package and `scripts/install.sh` put at
/// /etc/fieldgate/fieldgate.yaml: refused until the broker is set, so an
/// unedited install reads and queues nothing (exit 2: systemd does not
/// restart it).
#[test]
fn the_installed_configuration_is_refused_until_the_broker_is_set() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/installed/fieldgate.yaml");
    let file = file.to_str().unwrap();
    for command in ["check", "run"] {
        let out = fieldgate(&[command, "--config", file], &[]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{command}: {stderr}");
        assert!(
            stderr.contains(": mqtt.url: missing"),
            "{command}: {stderr}"
        );
    }
    let set = [("FIELDGATE__MQTT__URL", "mqtt://127.0.0.1:1883")];
    let out = fieldgate(&["check", "--config", file], &set);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn config_show_says_what_the_environment_changes_and_hides_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gw.yaml");
    std::fs::write(
        &file,
        format!(
            "gateway: {{ id: gw-1, state_dir: {} }}\nmqtt:\n  url: mqtt://127.0.0.1:1883\n  username: gw\n  password: \"s3cret\"\ndevices: []\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let env = [
        ("FIELDGATE__GATEWAY__ID", "pi-07"),
        ("FIELDGATE__MQTT__PASSWORD", "0th3r"),
    ];
    let out = fieldgate(
        &["config", "--config", file.to_str().unwrap(), "show"],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let show = text(&out.stdout);
    assert!(
        show.starts_with("# gateway, store, mqtt, log, commands, metrics, ble: the local file"),
        "{show}"
    );
    assert!(
        show.contains("#   FIELDGATE__GATEWAY__ID=pi-07\n"),
        "{show}"
    );
    assert!(
        show.contains("#   FIELDGATE__MQTT__PASSWORD=(hidden)\n"),
        "{show}"
    );
    assert!(
        show.contains("# in effect: gateway.id pi-07, client id pi-07, broker mqtt://127.0.0.1:1883, topics fieldgate/pi-07/…"),
        "{show}"
    );
    assert!(show.contains("  password: (hidden)\n"), "{show}");
    assert!(
        !show.contains("s3cret") && !show.contains("0th3r"),
        "{show}"
    );
}
