//! The command line as users meet it: `check`, `config show`, `version`,
//! exit codes, and what `run` says at start.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::Gateway;

fn fieldgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fieldgate"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run fieldgate")
}

/// Writes `gw.yaml` in `dir`: gateway `gw-1` with its state in
/// `dir/state`, then `rest`.
fn site(dir: &Path, rest: &str) -> std::path::PathBuf {
    let file = dir.join("gw.yaml");
    let state = dir.join("state");
    let head = format!("gateway: {{ id: gw-1, state_dir: {} }}\n", state.display());
    std::fs::write(&file, head + rest).unwrap();
    file
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
            "{f}:19:16: devices[1].points[0].value: invalid type: list, expected a number"
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
            format!(
                "{f}:5:8: mqtt.qos: invalid type: string \"1\", expected a whole number, 0 or more"
            ),
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

/// Runs `check` on `text` written to a file; returns the file's name, the
/// exit code, stdout and stderr.
fn check_text(
    yaml: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (String, Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("site.yaml");
    std::fs::write(&file, yaml).unwrap();
    let name = file.display().to_string();
    let mut all = vec!["check", "--config", &name];
    all.extend(args);
    let out = fieldgate(&all, env);
    (
        name,
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// Type errors and the problems that span keys of the issue's example, in
/// one run: a device that cannot be typed does not hide the others.
const MIXED: &str = "\
gateway:
  id: gw-1
mqtt:
  url: mqtt://broker.example:1883
  qos: \"1\"
devices:
  - name: station
    kind: serial
    port: /dev/fieldgate-absent-0
    baud: fast
    format: json
    fields: { t: temperature }
  - name: counter
    kind: serial
    port: /dev/fieldgate-absent-1
    format: json
    columns: [a, b]
    fields: {}
  - name: re
    kind: serial
    port: /dev/fieldgate-absent-2
    format: regex
    pattern: '^T(?<t>[0-9.]+)$'
    fields: { t: temperature, h: humidity }
  - name: meter
    kind: modbus
    tcp: { host: 10.0.0.5 }
    points:
      - { name: v, register: holdng, address: 0 }
  - name: pump
    kind: modbus
    tcp: { host: 10.0.0.5 }
    points:
      - { name: a, register: input, address: 2, type: f32 }
      - { name: a, register: input, address: 4, type: f32 }
";

#[test]
fn check_reports_type_and_semantic_problems_in_one_pass() {
    let (f, code, stdout, stderr) = check_text(MIXED, &[], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stdout.is_empty());
    // Problems come first, then the warnings; each has its position.
    let (problems, warnings): (Vec<&str>, Vec<&str>) =
        stderr.lines().partition(|l| !l.contains("warning:"));
    let expected = [
        format!(
            "{f}:5:8: mqtt.qos: invalid type: string \"1\", expected a whole number, 0 or more"
        ),
        format!(
            "{f}:10:11: devices[0].baud: invalid type: string \"fast\", expected a whole number, 0 or more"
        ),
        format!("{f}:17:14: devices[1].columns: only used with `format: csv`"),
        format!("{f}:18:13: devices[1].fields: expected at least one field"),
        format!("{f}:24:34: devices[2].fields.h: `h` is not a named capture of `pattern`"),
        format!(
            "{f}:29:30: devices[3].points[0].register: unknown value `holdng`, did you mean `holding`? Expected one of `coil`, `discrete`, `input`, `holding`"
        ),
        format!(
            "{f}:35:17: devices[4].points[1].name: duplicate point name `a`, already used by points[0]"
        ),
    ];
    for (i, want) in expected.iter().enumerate() {
        assert!(
            problems
                .get(i)
                .is_some_and(|l| l.starts_with(want.as_str())),
            "line {i}: want {want}\n{stderr}"
        );
    }
    assert_eq!(problems.len(), expected.len(), "{stderr}");
    // Ports of every device, also of the one whose `baud` failed to type;
    // a USB adapter may be plugged in later, so these do not fail the
    // check by themselves.
    assert_eq!(warnings.len(), 3, "{stderr}");
    for (i, line) in [(0, 9), (1, 15), (2, 21)] {
        assert!(
            warnings[i].starts_with(&format!(
                "{f}:{line}:11: devices[{i}].port: warning: /dev/fieldgate-absent-{i} does not exist"
            )),
            "{stderr}"
        );
    }
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.contains("warning:")),
        "{stderr}"
    );
}

#[test]
fn the_readme_password_variable_beside_the_example_file_is_named() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.yaml");
    let out = fieldgate(
        &["check", "--config", example],
        &[("FIELDGATE__MQTT__PASSWORD", "s3cret")],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let problems: Vec<&str> = stderr.lines().filter(|l| !l.contains("warning:")).collect();
    assert_eq!(problems.len(), 1, "{stderr}");
    assert!(
        problems[0].starts_with(
            "FIELDGATE__MQTT__PASSWORD: mqtt.password: set only one of `password`, `password_file`"
        ),
        "{stderr}"
    );
    assert!(problems[0].contains("`password_file` (line "), "{stderr}");
    assert!(problems[0].ends_with("(environment variable)"), "{stderr}");
}

#[test]
fn a_password_without_a_username_fails_check() {
    let yaml = "\
gateway: { id: gw-1 }
mqtt:
  url: mqtt://broker.example:1883
  password: s3cret
";
    let (f, code, stdout, stderr) = check_text(yaml, &[], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stdout.is_empty());
    assert!(
        stderr.starts_with(&format!(
            "{f}:4:13: mqtt.password: a password needs `username` too"
        )),
        "{stderr}"
    );
    let (_, code, stdout, stderr) = check_text(yaml, &[], &[("FIELDGATE__MQTT__USERNAME", "gw")]);
    assert_eq!((code, stdout.trim()), (Some(0), "OK"), "{stderr}");
}

#[test]
fn near_misses_get_a_suggestion() {
    let yaml = "\
gateway: { id: gw-1 }
mqtt:
  url: mqtt://broker.example:1883
  protocol: \"3.11\"
  keep_alve: 10s
devices:
  - name: m
    kind: modbsu
";
    let (f, code, _, stderr) = check_text(yaml, &[], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "{f}:4:13: mqtt.protocol: invalid value: string \"3.11\", did you mean `3.1.1`?"
        )),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{f}:5:3: mqtt.keep_alve: unknown key `keep_alve`, did you mean `keep_alive`? Expected one of"
        )),
        "{stderr}"
    );
    assert!(
        lines[2].starts_with(&format!(
            "{f}:8:11: devices[0].kind: unknown kind `modbsu`, did you mean `modbus`?"
        )),
        "{stderr}"
    );
    // A variable's key too.
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.yaml");
    let out = fieldgate(
        &["check", "--config", demo],
        &[("FIELDGATE__MQTT__USRNAME", "gw")],
    );
    assert!(
        text(&out.stderr).starts_with(
            "FIELDGATE__MQTT__USRNAME: mqtt.usrname: unknown key `usrname`, did you mean `username`?"
        ),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_empty_file_says_so_without_type_names() {
    let (f, code, _, stderr) = check_text("# to be written\n", &[], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr.trim_end(),
        format!("{f}:1:1: the file is empty: expected a mapping with gateway, mqtt and devices")
    );
    let (_, _, _, stderr) = check_text(
        "gateway: { id: gw }\nmqtt: { url: mqtt://h }\ndevices:\n  - { name: m, kind: modbus, tcp: { host: h }, points: [x] }\n",
        &[],
        &[],
    );
    assert!(
        stderr.contains("expected a mapping of modbus point settings"),
        "{stderr}"
    );
    assert!(!stderr.contains("struct"), "{stderr}");
}

#[test]
fn a_remote_document_is_checked_against_the_local_file() {
    let dir = tempfile::tempdir().unwrap();
    // The demo file, trusting one more serial port for remote devices.
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.yaml");
    let mut trusting = std::fs::read_to_string(demo).unwrap();
    trusting.push_str("\nremote_config: { allow_endpoints: [/dev/fieldgate-absent] }\n");
    let local = dir.path().join("local.yaml");
    std::fs::write(&local, trusting).unwrap();
    let local = local.to_str().unwrap();
    let doc = dir.path().join("doc.json");
    let doc_name = doc.to_str().unwrap();
    let check = |json: &str| {
        std::fs::write(&doc, json).unwrap();
        let out = fieldgate(&["check", "--config", local, "--remote", doc_name], &[]);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };

    let good = r#"{"version": "v7", "devices": [{"name": "tank", "kind": "simulated", "points": [{"name": "level", "signal": "ramp"}]}]}"#;
    let (code, stdout, stderr) = check(good);
    assert_eq!((code, stdout.trim()), (Some(0), "OK"), "{stderr}");

    // Problems are located in the document, under its own name; the
    // local-only sections are refused as the gateway would refuse them.
    let bad = "{\"version\": \"v8\",\n \"mqtt\": {\"url\": \"mqtt://evil\"},\n \"devices\": [{\"name\": \"tank\", \"kind\": \"simulated\", \"pol\": \"1s\", \"points\": []}]}";
    let (code, stdout, stderr) = check(bad);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stdout.is_empty());
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("{doc_name}:2:2: mqtt: `mqtt` stays local")),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{doc_name}:3:52: devices[0].pol: unknown key `pol`, did you mean `poll`?"
        )),
        "{stderr}"
    );
    // A device with an unknown key is still checked as a whole.
    assert_eq!(
        lines[2],
        format!("{doc_name}:3:75: devices[0].points: expected at least one point"),
        "{stderr}"
    );

    // A serial port that is not here is a warning, as in the local file.
    let serial = "version: v10\ndevices:\n  - { name: s, kind: serial, port: /dev/fieldgate-absent, format: kv, fields: { t: t } }\n";
    let (code, stdout, stderr) = check(serial);
    assert_eq!((code, stdout.trim()), (Some(0), "OK"), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "{doc_name}:3:36: devices[0].port: warning: /dev/fieldgate-absent does not exist"
        )),
        "{stderr}"
    );

    // The trust rules of the running gateway apply: no new write permission.
    let writes = "version: v11\ndevices:\n  - name: plc\n    kind: modbus\n    rtu: { port: /dev/fieldgate-absent }\n    points:\n      - { name: valve, register: coil, address: 0, writable: true }\n";
    let (code, _, stderr) = check(writes);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("may not create or widen write permissions"),
        "{stderr}"
    );

    // Without `gateway` it is not mistaken for a local file.
    let (code, _, stderr) = check(r#"{"version": "v9", "devices": []}"#);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("missing field"), "{stderr}");

    // A missing document exits as a missing configuration file does.
    std::fs::remove_file(&doc).unwrap();
    let out = fieldgate(&["check", "--config", local, "--remote", doc_name], &[]);
    let missing_file = fieldgate(&["check", "--config", doc_name], &[]);
    assert!(!out.status.success());
    assert_eq!(out.status.code(), missing_file.status.code());
    assert!(text(&out.stderr).contains("cannot read"));

    // An invalid local file is reported, and the document is not checked.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, BROKEN).unwrap();
    std::fs::write(&doc, good).unwrap();
    let out = fieldgate(
        &[
            "check",
            "--config",
            broken.to_str().unwrap(),
            "--remote",
            doc_name,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains(&format!(
            "{doc_name} not checked: the local file is invalid"
        )),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn warnings_alone_do_not_fail_check() {
    let yaml = "\
gateway: { id: gw-1 }
mqtt:
  url: mqtts://broker.example:8883
  username: gw
  password_file: /nonexistent/fieldgate/mqtt.pass
  tls: { ca_file: /nonexistent/fieldgate/ca.pem }
";
    let (f, code, stdout, stderr) = check_text(yaml, &[], &[]);
    assert_eq!((code, stdout.trim()), (Some(0), "OK"), "{stderr}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            format!(
                "{f}:5:18: mqtt.password_file: warning: /nonexistent/fieldgate/mqtt.pass does not exist: the gateway cannot log in to the broker until it does"
            ),
            format!(
                "{f}:6:19: mqtt.tls.ca_file: warning: /nonexistent/fieldgate/ca.pem does not exist: the gateway cannot connect to the broker until it does"
            ),
        ]
    );
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
    let file = site(
        dir.path(),
        "mqtt: { url: mqtt://127.0.0.1:1 }\ndevices: []\n",
    );
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
    let set = [("FIELDGATE__MQTT__URL", "mqtt://127.0.0.1:1")];
    let out = fieldgate(&["check", "--config", file], &set);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn config_show_says_what_the_environment_changes_and_hides_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let file = site(
        dir.path(),
        "mqtt:\n  url: mqtt://127.0.0.1:1\n  username: gw\n  password: \"s3cret\"\ndevices: []\n",
    );
    let env = [
        ("FIELDGATE__GATEWAY__ID", "pi-07"),
        ("FIELDGATE__MQTT__PASSWORD", "0th3r"),
        ("FIELDGATE__STORE__MAX_ROWS", "5000"),
    ];
    let f = file.to_str().unwrap();
    let out = fieldgate(&["config", "--config", f, "show"], &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let show = text(&out.stdout);
    let lines: Vec<&str> = show.lines().collect();
    assert!(
        lines[0].starts_with(&format!(
            "# the effective configuration: the local file {f}, the FIELDGATE__… variables"
        )),
        "{show}"
    );
    assert_eq!(
        lines[1],
        "# in effect: gateway.id pi-07, client id pi-07, broker mqtt://127.0.0.1:1, topics fieldgate/pi-07/…, state_dir ".to_owned()
            + &dir.path().join("state").display().to_string(),
    );
    assert_eq!(
        lines[2],
        "# devices: the local file (no remote configuration cached)"
    );
    assert_eq!(
        &lines[3..12],
        [
            format!("gateway:  # {f}:1"),
            "  id: pi-07  # FIELDGATE__GATEWAY__ID".into(),
            format!(
                "  state_dir: {}  # {f}:1",
                dir.path().join("state").display()
            ),
            "store:  # FIELDGATE__STORE__MAX_ROWS".into(),
            "  max_rows: 5000  # FIELDGATE__STORE__MAX_ROWS".into(),
            format!("mqtt:  # {f}:2"),
            format!("  url: mqtt://127.0.0.1:1  # {f}:3"),
            format!("  username: gw  # {f}:4"),
            "  password: (hidden)  # FIELDGATE__MQTT__PASSWORD".into(),
        ],
        "{show}"
    );
    // Sections the file leaves out are there, at their defaults.
    for section in ["log", "commands", "metrics", "ble"] {
        assert!(
            lines.contains(&format!("{section}: {{}}  # not set: all defaults").as_str()),
            "{section}: {show}"
        );
    }
    assert!(
        lines.contains(&format!("devices: []  # {f}:6").as_str()),
        "{show}"
    );
    assert!(
        !show.contains("s3cret") && !show.contains("0th3r"),
        "{show}"
    );
}

/// A cached remote configuration in force: its devices are shown in place
/// of the file's, each line naming the remote version and its line.
#[test]
fn config_show_prints_the_cached_remote_devices_with_their_origin() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let file = site(
        dir.path(),
        "mqtt: { url: mqtt://127.0.0.1:1 }\ndevices:\n  - { name: near, kind: simulated, poll: 1s, points: [{ name: w, signal: sine }] }\n",
    );
    let f = file.to_str().unwrap();
    let remote = fieldgate::store::RemoteConfig {
        version: "v7".into(),
        text: "version: v7\ndevices:\n  - name: far\n    kind: simulated\n    poll: 2s\n    points: [{ name: level, signal: ramp }]\n".into(),
        at_ms: 1_764_000_000_000,
    };
    fieldgate::store::Outbox::open(&fieldgate::store::db_path(&state), Default::default())
        .unwrap()
        .save_remote_config(&remote)
        .unwrap();
    let out = fieldgate(&["config", "--config", f, "show"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let show = text(&out.stdout);
    assert!(
        show.contains("\n# devices: the remote configuration \"v7\", applied 2025-11-24T16:00:00.000Z (cached in "),
        "{show}"
    );
    let devices = &show[show.find("\ndevices:").expect("a devices section") + 1..];
    assert_eq!(
        devices.lines().collect::<Vec<_>>()[1..],
        [
            "  - name: far  # remote v7:3",
            "    kind: simulated  # remote v7:4",
            "    poll: 2s  # remote v7:5",
            "    points:  # remote v7:6",
            "      - name: level  # remote v7:6",
            "        signal: ramp  # remote v7:6",
        ],
        "{show}"
    );
    assert!(
        devices.starts_with("devices:  # the remote configuration \"v7\""),
        "{show}"
    );
    assert!(!show.contains("near"), "{show}");

    // A cached one the file no longer trusts is not in force: the file's
    // devices are shown, and why.
    let broken = fieldgate::store::RemoteConfig {
        version: "v8".into(),
        text: "version: v8\ndevices:\n  - { name: far, kind: bluetooth }\n".into(),
        at_ms: 1_764_000_000_000,
    };
    fieldgate::store::Outbox::open(&fieldgate::store::db_path(&state), Default::default())
        .unwrap()
        .save_remote_config(&broken)
        .unwrap();
    let out = fieldgate(&["config", "--config", f, "show"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let show = text(&out.stdout);
    assert!(
        show.contains("\n# devices: the local file, because the cached remote configuration \"v8\" no longer passes the checks:\n# remote configuration:3:"),
        "{show}"
    );
    assert!(
        show.contains(&format!("\ndevices:  # {f}:3\n  - name: near  # {f}:4\n")),
        "{show}"
    );
    assert!(!show.contains("far"), "{show}");
}

/// `run` says what `check` warns about once, at start, in its log: not
/// again on every reconnection, nor on SIGHUP.
#[test]
fn run_logs_the_warnings_of_check_once_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = site(
        dir.path(),
        "mqtt:\n  url: mqtt://127.0.0.1:1\n  username: gw\n  password_file: /nonexistent/fieldgate/mqtt.pass\ndevices:\n  - { name: demo, kind: simulated, poll: 1s, points: [{ name: w, signal: sine }] }\n",
    );
    let f = file.to_str().unwrap();
    let mut gw = Gateway::start_logging(&file, dir.path(), "info");
    let long = Duration::from_secs(30);
    assert!(gw.wait_for_log("MQTT link down", long), "{}", gw.log());
    assert!(gw.wait_for_log("commands link down", long), "{}", gw.log());
    gw.sighup();
    assert!(gw.wait_for_log("reloaded", long), "{}", gw.log());
    assert!(gw.sigterm_and_wait(long).success(), "{}", gw.log());
    let log = gw.log();
    let warning = format!(
        "{f}:5:18: mqtt.password_file: warning: /nonexistent/fieldgate/mqtt.pass does not exist: the gateway cannot log in to the broker until it does"
    );
    let lines: Vec<&str> = log.lines().collect();
    let at: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains(&warning))
        .collect();
    assert_eq!(at.len(), 1, "{log}");
    assert!(lines[at[0]].contains("WARN"), "{log}");
    let link_down = lines.iter().position(|l| l.contains("MQTT link down"));
    assert!(link_down.is_some_and(|down| at[0] < down), "{log}");
}
