//! From a YAML file to a checked [`Config`].
//!
//! The text is parsed once, into a position-keeping YAML tree. The `config`
//! crate layers `FIELDGATE__SECTION__KEY` environment variables over that
//! tree ([`super::env`]), and the merged tree is typed and checked in one
//! pass, so that every problem is reported with `file:line:column` (or the
//! variable that set the value) and its key path. Whole-config checks
//! (duplicate names, ranges that involve two keys) run on every section and
//! device that could be typed ([`tree`]), in the same pass, and are located
//! in the tree by path. Messages are then put in the file's words
//! ([`words`]); missing files are warnings ([`files`]).

use std::fmt;
use std::path::Path;

use super::env::{self, Overrides};
use super::yaml::{self, Diagnostic, Node, Value};
use super::{Config, Origin};

mod credentials;
mod files;
mod partial;
#[cfg(test)]
mod reference;
mod show;
mod tree;
mod words;

use partial::typed_devices;
pub use show::{HIDDEN, RemoteDevices, show};
use tree::{check_tree, semantic, top_key};
use words::polish;

/// One problem in a configuration: where, which key, what was expected.
pub type Problem = Diagnostic;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", Rendered(.file, .problems))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
}

/// `file:line:column: path: message`, one problem per line; a problem in a
/// value set by an environment variable names the variable instead:
/// `FIELDGATE__MQTT__QOS: mqtt.qos: message (environment variable)`.
struct Rendered<'a>(&'a str, &'a [Problem]);

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match (&p.variable, p.mark) {
                (Some(variable), _) => write!(f, "{variable}: ")?,
                (None, Some(m)) => write!(f, "{}:{}:{}: ", self.0, m.line, m.col)?,
                (None, None) => write!(f, "{}: ", self.0)?,
            }
            if p.path.is_empty() {
                write!(f, "{}", p.message)?;
            } else {
                write!(f, "{}: {}", p.path, p.message)?;
            }
            if p.variable.is_some() {
                write!(f, " (environment variable)")?;
            }
        }
        Ok(())
    }
}

/// Reads and checks a configuration file, environment overrides included.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    load_str(&text, &path.display().to_string())
}

/// Checks configuration text, with the `FIELDGATE__…` variables of this
/// process over it; `file` names it in error messages.
pub fn load_str(text: &str, file: &str) -> Result<Config, ConfigError> {
    load_with(text, file, &Overrides::from_process())
}

/// [`load_str`] with the given environment variables.
fn load_with(text: &str, file: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
    check_with(text, file, overrides).result
}

/// What checking a configuration found: the configuration, or every problem
/// in it; and the warnings, which do not make it invalid.
#[derive(Debug)]
pub struct Checked {
    pub result: Result<Config, ConfigError>,
    pub warnings: Warnings,
}

/// Findings that do not stop the gateway (a file that is not there yet, a
/// serial adapter that is unplugged), as `file:line:column: path: warning:
/// message` lines.
#[derive(Debug, Default)]
pub struct Warnings {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for Warnings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let warnings: Vec<Problem> = self
            .problems
            .iter()
            .map(|p| Problem {
                message: format!("warning: {}", p.message),
                ..p.clone()
            })
            .collect();
        Rendered(&self.file, &warnings).fmt(f)
    }
}

/// Reads and checks a configuration file, environment overrides included,
/// as `fieldgate check` does: with the warnings.
pub fn check(path: &Path) -> Result<Checked, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let file = path.display().to_string();
    Ok(check_with(&text, &file, &Overrides::from_process()))
}

/// Checks `text` in one pass: type errors, and the checks that span keys on
/// every part that could be typed.
fn check_with(text: &str, file: &str, overrides: &Overrides) -> Checked {
    let finish = |result: Result<Config, Vec<Problem>>, warnings: Vec<Problem>| Checked {
        result: result.map_err(|mut problems| {
            polish(&mut problems);
            sort(&mut problems);
            ConfigError::Invalid {
                file: file.to_owned(),
                problems,
            }
        }),
        warnings: Warnings {
            file: file.to_owned(),
            problems: warnings,
        },
    };
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(d) => return finish(Err(vec![d]), Vec::new()),
    };
    if !matches!(root.value, Value::Map(_) | Value::Null) {
        return finish(Err(vec![not_a_config(&root)]), Vec::new());
    }
    let layered = match env::layer(&root, overrides) {
        Ok(layered) => layered,
        Err(d) => return finish(Err(vec![d]), Vec::new()),
    };
    if layered.root.value == Value::Null {
        let empty = at(
            &layered.root,
            "",
            "the file is empty: expected a mapping with gateway, mqtt and devices".into(),
        );
        return finish(Err(vec![empty]), Vec::new());
    }
    let mut problems = overrides.problems().to_vec();
    let typed = check_tree(&layered.root);
    problems.extend(typed.problems);
    let mut spanning = typed.spanning;
    layered.mention_variables(&mut spanning);
    problems.extend(spanning);
    let mut warnings = typed.warnings;
    layered.attribute(&mut warnings);
    sort(&mut warnings);
    layered.attribute(&mut problems);
    let result = match typed.config {
        Some(mut config) if problems.is_empty() => {
            config.version = format!("local-{:016x}", fnv1a(text.as_bytes()));
            Ok(config)
        }
        _ => Err(problems),
    };
    finish(result, warnings)
}

/// Places problems found on the typed configuration at their keys.
fn locate(problems: &mut [Problem], root: &Node) {
    for p in problems {
        p.mark = Some(root.locate(&p.path).mark);
    }
}

/// A stable hash (unlike std's, which may change between releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The file's problems in order of position, then those of environment
/// variables by name.
fn sort(problems: &mut Vec<Problem>) {
    problems.sort_by(|a, b| {
        let key = |p: &Problem| (p.variable.clone(), p.mark.map(|m| (m.line, m.col)));
        key(a).cmp(&key(b))
    });
    problems.dedup();
}

fn not_a_config(root: &Node) -> Problem {
    at(
        root,
        "",
        "expected a mapping with gateway, mqtt and devices".into(),
    )
}

/// The sections a remote configuration may not touch.
const LOCAL_ONLY: &[&str] = &[
    "gateway",
    "store",
    "mqtt",
    "log",
    "commands",
    "metrics",
    "ble",
    "remote_config",
    "sparkplug",
    "homeassistant",
];

/// Checks a remote configuration (`version` and `devices`, YAML or JSON)
/// exactly like the local file, and against what the local file trusts it
/// with (see [`super::trust`]), and returns `local` with its devices
/// replaced. Identity, broker, credentials and store stay local.
pub fn load_remote(text: &str, local: &Config) -> Result<Config, ConfigError> {
    let file = "remote configuration";
    let invalid = |problems: Vec<Problem>| ConfigError::Invalid {
        file: file.to_owned(),
        problems,
    };
    let root = yaml::parse(text).map_err(|d| invalid(vec![d]))?;
    let Value::Map(entries) = &root.value else {
        return Err(invalid(vec![at(
            &root,
            "",
            "expected a mapping with `version` and `devices`".into(),
        )]));
    };
    let mut problems = Vec::new();
    for (key, _) in entries {
        let Value::Scalar { text: name, .. } = &key.value else {
            continue;
        };
        match name.as_str() {
            "version" | "devices" => {}
            section if LOCAL_ONLY.contains(&section) => problems.push(at(
                key,
                section,
                format!(
                    "`{section}` stays local: a remote configuration may change `devices` only"
                ),
            )),
            other => problems.push(at(
                key,
                other,
                format!("unknown key `{other}`, expected `version` or `devices`"),
            )),
        }
    }
    let version = match root.get("version").map(|v| &v.value) {
        Some(Value::Scalar { text, .. }) if !text.is_empty() && text.len() <= 128 => text.clone(),
        Some(_) => {
            let node = root.get("version").unwrap_or(&root);
            problems.push(at(
                node,
                "version",
                "expected a version string of 1 to 128 characters".into(),
            ));
            String::new()
        }
        None => {
            problems.push(at(&root, "version", "missing field `version`".into()));
            String::new()
        }
    };
    let devices = match root.get("devices") {
        Some(node) => typed_devices(node, &mut problems),
        None => {
            problems.push(at(&root, "devices", "missing field `devices`".into()));
            Vec::new()
        }
    };
    let mut config = local.clone();
    config.version = version;
    config.origin = Origin::Remote;
    // The local sections passed their checks already: what is found now is
    // the devices'.
    let (found, _warnings) = semantic(&mut config, devices, &root, &[]);
    problems.extend(found);
    problems.extend(super::trust::check(local, &config.devices, &root));
    if !problems.is_empty() {
        polish(&mut problems);
        sort(&mut problems);
        return Err(invalid(problems));
    }
    Ok(config)
}

/// The warnings about the devices of a remote configuration that passed
/// [`load_remote`] (`merged` is what it returned): serial ports not on this
/// machine, located in `text`, under the name `file`.
pub fn remote_warnings(text: &str, merged: &Config, file: &str) -> Warnings {
    let mut problems = files::missing(merged);
    // The local sections' files are the local file's warnings.
    problems.retain(|p| top_key(&p.path) == "devices");
    if let Ok(root) = yaml::parse(text) {
        locate(&mut problems, &root);
    }
    sort(&mut problems);
    Warnings {
        file: file.to_owned(),
        problems,
    }
}

fn at(node: &Node, path: &str, message: String) -> Problem {
    Diagnostic {
        mark: Some(node.mark),
        path: path.to_owned(),
        message,
        variable: None,
    }
}

fn quoted(words: &[&str]) -> String {
    words
        .iter()
        .map(|w| format!("`{w}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Config {
    /// Checks that span several keys, as (path, message) problems.
    fn problems(&self) -> Vec<Problem> {
        let mut found = Vec::new();
        let mut push = |path: String, message: String| {
            found.push(Diagnostic {
                mark: None,
                path,
                message,
                variable: None,
            });
        };
        for (path, message) in self.mqtt.problems() {
            push(path, message);
        }
        let telemetry_id = self
            .mqtt
            .client_id
            .as_deref()
            .unwrap_or(self.gateway.id.as_str());
        for (path, message) in self.commands.problems(telemetry_id) {
            push(path, message);
        }
        if self.homeassistant.is_some() && self.mqtt.format == super::Format::Sparkplug {
            push(
                "homeassistant".into(),
                "Home Assistant discovery reads the JSON telemetry topics: not with `mqtt.format: sparkplug`".into(),
            );
        }
        match (self.mqtt.format, &self.sparkplug) {
            (super::Format::Sparkplug, None) => push(
                "sparkplug.group_id".into(),
                "missing: `mqtt.format: sparkplug` needs a `sparkplug:` section with `group_id`"
                    .into(),
            ),
            (super::Format::Json, Some(_)) => push(
                "mqtt.format".into(),
                "a `sparkplug:` section is only used with `mqtt.format: sparkplug`".into(),
            ),
            _ => {}
        }
        if self.gateway.status_interval.get() < std::time::Duration::from_secs(1) {
            push(
                "gateway.status_interval".into(),
                "must be at least 1s".into(),
            );
        }
        let store = &self.store;
        if store.flush_interval.get().is_zero() {
            push("store.flush_interval".into(), "must be at least 1ms".into());
        }
        if store.max_bytes.is_some_and(|b| b.0 < 1 << 20) {
            push("store.max_bytes".into(), "must be at least 1MiB".into());
        }
        if store.max_rows == Some(0) {
            push("store.max_rows".into(), "must be at least 1".into());
        }
        if store
            .max_age
            .is_some_and(|a| a.get() < std::time::Duration::from_secs(1))
        {
            push("store.max_age".into(), "must be at least 1s".into());
        }
        let mut seen = std::collections::HashMap::new();
        for (i, device) in self.devices.iter().enumerate() {
            if let Some(first) = seen.insert(device.name().clone(), i) {
                push(
                    format!("devices[{i}].name"),
                    format!(
                        "duplicate device name `{}`, already used by devices[{first}]",
                        device.name()
                    ),
                );
                seen.insert(device.name().clone(), first);
            }
            for (below, message) in device.problems() {
                push(format!("devices[{i}].{below}"), message);
            }
        }
        for (path, message) in super::modbus::shared_problems(&self.devices) {
            push(path, message);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "\
gateway:
  id: gw-1
  state_dir: /tmp/x
mqtt:
  url: mqtt://127.0.0.1:1883
devices:
  - name: demo
    kind: simulated
    poll: 1s
    points:
      - { name: wave, signal: sine, min: 0, max: 100, period: 60s }
";

    fn problems(text: &str) -> Vec<Problem> {
        match load_str(text, "f.yaml") {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let config = load_str(MINIMAL, "f.yaml").unwrap();
        assert_eq!(config.gateway.id.as_str(), "gw-1");
        assert_eq!(config.mqtt.brokers()[0].port, 1883);
        assert_eq!(
            config.store.flush_interval,
            super::super::Duration::from_millis(200)
        );
        assert_eq!(config.devices.len(), 1);
    }

    #[test]
    fn wrong_type_is_reported_at_its_line_and_column() {
        let text = MINIMAL.replace("poll: 1s", "poll: fast");
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        let p = &found[0];
        assert_eq!(p.path, "devices[0].poll");
        assert_eq!(p.mark.map(|m| (m.line, m.col)), Some((9, 11)));
        assert!(p.message.contains("expected a duration"), "{}", p.message);
    }

    #[test]
    fn unknown_kind_and_unknown_key_are_both_reported() {
        let text = MINIMAL.replace("kind: simulated", "kind: telepathy")
            + "  - name: b\n    kind: simulated\n    colour: red\n    points: [{ name: x, signal: ramp }]\n";
        let found = problems(&text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].path, "devices[0].kind");
        assert!(found[0].message.contains("unknown kind `telepathy`"));
        assert_eq!(found[1].path, "devices[1].colour");
        assert_eq!(found[1].mark.map(|m| m.line), Some(14));
    }

    #[test]
    fn duplicate_device_names_point_at_the_second() {
        let text = MINIMAL.to_owned()
            + "  - name: demo\n    kind: simulated\n    points: [{ name: x, signal: ramp }]\n";
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "devices[1].name");
        assert_eq!(found[0].mark.map(|m| m.line), Some(12));
        assert!(found[0].message.contains("duplicate device name `demo`"));
    }

    #[test]
    fn an_empty_devices_key_is_an_empty_list() {
        let text = MINIMAL[..MINIMAL.find("devices:").unwrap()].to_owned() + "devices:\n";
        assert!(load_str(&text, "f.yaml").unwrap().devices.is_empty());
        let text = MINIMAL[..MINIMAL.find("devices:").unwrap()].to_owned();
        assert!(load_str(&text, "f.yaml").unwrap().devices.is_empty());
    }

    #[test]
    fn a_remote_configuration_replaces_the_devices_only() {
        let local = load_str(MINIMAL, "f.yaml").unwrap();
        let remote = "version: v2\ndevices:\n  - { name: fresh, kind: simulated, points: [{ name: x, signal: ramp }] }\n";
        let merged = load_remote(remote, &local).unwrap();
        assert_eq!(merged.version, "v2");
        assert_eq!(merged.origin, Origin::Remote);
        assert_eq!(merged.devices.len(), 1);
        assert_eq!(merged.devices[0].name().as_str(), "fresh");
        assert_eq!(merged.gateway.id.as_str(), "gw-1");

        // JSON is welcome too.
        let json = r#"{"version": "v3", "devices": []}"#;
        assert!(load_remote(json, &local).unwrap().devices.is_empty());
    }

    #[test]
    fn a_remote_configuration_is_checked_like_the_file_and_may_not_touch_mqtt() {
        let local = load_str(MINIMAL, "f.yaml").unwrap();
        let remote = "version: v9\nmqtt:\n  url: mqtt://evil:1883\ndevices:\n  - name: a\n    kind: simulated\n    poll: soon\n    colour: red\n    points: [{ name: x, signal: ramp }]\n";
        let err = load_remote(remote, &local).unwrap_err().to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 3, "{err}");
        assert!(
            lines[0].starts_with("remote configuration:2:1: mqtt: `mqtt` stays local"),
            "{err}"
        );
        assert!(
            lines[1].starts_with("remote configuration:7:11: devices[0].poll: invalid duration"),
            "{err}"
        );
        assert!(
            lines[2].starts_with("remote configuration:8:5: devices[0].colour: unknown key"),
            "{err}"
        );
        let err = load_remote("devices: []\n", &local)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `version`"), "{err}");
    }

    fn with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars = vars.iter().map(|(k, v)| (k.into(), v.into()));
        load_with(text, "f.yaml", &Overrides::from_vars(vars))
    }

    fn env_problems(text: &str, vars: &[(&str, &str)]) -> Vec<Problem> {
        match with_env(text, vars) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn scalars_are_typed_once_by_yaml_1_2_rules() {
        // A quoted number is a string, and `yes` is not a bool: both are
        // refused at their own position, not converted.
        let text = MINIMAL.replace(
            "  url: mqtt://127.0.0.1:1883\n",
            "  url: mqtt://127.0.0.1:1883\n  qos: \"1\"\n",
        ) + "  - name: m\n    kind: modbus\n    tcp: { host: 127.0.0.1 }\n    points:\n      - { name: v, register: holding, address: 0, writable: yes }\n";
        let found = problems(&text);
        let found: Vec<_> = found
            .iter()
            .map(|p| {
                (
                    p.mark.map(|m| (m.line, m.col)),
                    p.path.as_str(),
                    p.message.as_str(),
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                (
                    Some((6, 8)),
                    "mqtt.qos",
                    "invalid type: string \"1\", expected a whole number, 0 or more"
                ),
                (
                    Some((17, 61)),
                    "devices[1].points[0].writable",
                    "invalid type: string \"yes\", expected a boolean"
                ),
            ]
        );

        // Text that looks like a number stays as written.
        let text = MINIMAL.replace("id: gw-1", "id: 0123");
        let config = load_str(&text, "f.yaml").unwrap();
        assert_eq!(config.gateway.id.as_str(), "0123");
        let text = MINIMAL.replace(
            "url: mqtt://127.0.0.1:1883",
            "url: mqtt://127.0.0.1:1883\n  username: u\n  password: 1e3",
        );
        let config = load_str(&text, "f.yaml").unwrap();
        assert_eq!(config.mqtt.password.as_deref(), Some("1e3"));
    }

    #[test]
    fn environment_variables_override_the_file() {
        let config = with_env(
            MINIMAL,
            &[
                ("FIELDGATE__MQTT__QOS", "2"),
                ("FIELDGATE__MQTT__PASSWORD", "0123"),
                ("FIELDGATE__MQTT__USERNAME", "gw"),
                ("FIELDGATE__GATEWAY__ID", "gw-env"),
                ("FIELDGATE__STORE__MAX_ROWS", "1000"),
                ("OTHER__MQTT__QOS", "7"),
            ],
        )
        .unwrap();
        assert_eq!(config.mqtt.qos, super::super::Qos::ExactlyOnce);
        assert_eq!(config.mqtt.password.as_deref(), Some("0123"));
        assert_eq!(config.gateway.id.as_str(), "gw-env");
        assert_eq!(config.store.max_rows, Some(1000));
        // Untouched parts keep the file's values and the version its hash.
        assert_eq!(config.devices.len(), 1);
        assert_eq!(config.version, load_str(MINIMAL, "f.yaml").unwrap().version);
        // The whole configuration may come from the environment.
        let config = with_env(
            "",
            &[
                ("FIELDGATE__GATEWAY__ID", "gw-9"),
                ("FIELDGATE__MQTT__URL", "mqtt://h:1883"),
            ],
        )
        .unwrap();
        assert_eq!(config.gateway.id.as_str(), "gw-9");
    }

    #[test]
    fn a_bad_override_names_its_variable_and_file_problems_keep_their_place() {
        let text = MINIMAL.replace("poll: 1s", "poll: fast");
        let found = env_problems(
            &text,
            &[
                ("FIELDGATE__MQTT__QOS", "7"),
                ("FIELDGATE__MQTT__COLOUR", "red"),
                ("FIELDGATE__STORE__MAX_BYTES", "1KiB"),
            ],
        );
        let found: Vec<_> = found
            .iter()
            .map(|p| {
                let at = p.mark.map(|m| (m.line, m.col));
                (at, p.variable.as_deref(), p.path.as_str())
            })
            .collect();
        assert_eq!(
            found,
            [
                (Some((9, 11)), None, "devices[0].poll"),
                (None, Some("FIELDGATE__MQTT__COLOUR"), "mqtt.colour"),
                (None, Some("FIELDGATE__MQTT__QOS"), "mqtt.qos"),
                // Found in the same pass as the type errors.
                (None, Some("FIELDGATE__STORE__MAX_BYTES"), "store.max_bytes"),
            ]
        );

        // A whole-config check on an overridden value names the variable too.
        let err = with_env(MINIMAL, &[("FIELDGATE__STORE__MAX_BYTES", "1KiB")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "FIELDGATE__STORE__MAX_BYTES: store.max_bytes: must be at least 1MiB (environment variable)"
        );
        let err = with_env(MINIMAL, &[("FIELDGATE__MQTT__QOS", "7")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "FIELDGATE__MQTT__QOS: mqtt.qos: invalid value: integer `7`, expected 0, 1 or 2 (environment variable)"
        );
    }

    #[test]
    fn type_errors_and_the_checks_that_span_keys_come_in_one_pass() {
        let text = "\
gateway:
  id: gw-1
  status_interval: 10ms
mqtt:
  url: mqtt://h:1883
  qos: high
devices:
  - name: a
    kind: simulated
    poll: fast
    points: [{ name: x, signal: ramp }]
  - name: st
    kind: serial
    port: /dev/ttyX
    format: json
    columns: [a, b]
    fields: { t: temp, h: temp }
  - name: st
    kind: simulated
    points: [{ name: y, signal: ramp }]
";
        let found: Vec<String> = problems(text)
            .iter()
            .map(|p| {
                let m = p.mark.unwrap();
                format!("{}:{} {}: {}", m.line, m.col, p.path, p.message)
            })
            .collect();
        assert_eq!(
            found,
            [
                "3:20 gateway.status_interval: must be at least 1s",
                "6:8 mqtt.qos: invalid type: string \"high\", expected a whole number, 0 or more",
                "10:11 devices[0].poll: invalid duration `fast`, expected a duration such as 500ms, 5s, 2m, 1h or 7d",
                "16:14 devices[1].columns: only used with `format: csv`",
                "17:18 devices[1].fields.t: point `temp` is already the target of field `h`",
                "18:11 devices[2].name: duplicate device name `st`, already used by devices[1]",
            ],
            "{found:#?}"
        );
    }

    #[test]
    fn a_part_with_only_unknown_keys_is_still_checked_as_a_whole() {
        let text = MINIMAL.replace(
            "  id: gw-1\n",
            "  id: gw-1\n  colour: red\n  status_interval: 1ms\n",
        ) + "  - { name: b, kind: simulated, colour: red, points: [] }\n";
        let found: Vec<_> = problems(&text).into_iter().map(|p| p.path).collect();
        assert_eq!(
            found,
            [
                "gateway.colour",
                "gateway.status_interval",
                "devices[1].colour",
                "devices[1].points"
            ]
        );
    }

    #[test]
    fn a_device_with_a_bad_point_still_has_its_other_points_checked() {
        // Errors inside points leave out only those points.
        let devices = r#"  - name: m
    kind: modbus
    colour: red
    points:
      - { name: a, register: holding, address: 0, min: 1 }
      - { name: b, register: holdng, address: 1 }
      - { name: a, register: input, address: 2, writable: true }
      - { name: c, register: coil, address: x }
      - { name: d, register: coil, address: 3, scale: 2 }
  - name: m
    kind: simulated
    points: []
"#;
        let text = MINIMAL.to_owned() + devices;
        let found: Vec<String> = problems(&text)
            .iter()
            .map(|p| format!("{}: {}", p.mark.unwrap().line, p))
            .collect();
        assert_eq!(
            found,
            [
                "12: devices[1].rtu: expected `rtu: { port: … }` or `tcp: { host: … }`",
                "14: devices[1].colour: unknown key `colour`, expected one of `name`, `rtu`, `tcp`, \
                 `unit`, `poll`, `timeout`, `retries`, `address_base`, `max_gap`, `max_registers`, \
                 `max_bits`, `heartbeat`, `offline_after`, `qos`, `priority`, `batch`, `points`",
                "16: devices[1].points[0].min: does not apply to points that are not writable",
                "17: devices[1].points[1].register: unknown value `holdng`, did you mean `holding`? \
                 Expected one of `coil`, `discrete`, `input`, `holding`",
                // Numbered as in the file, although points[1] was left out.
                "18: devices[1].points[2].name: duplicate point name `a`, already used by points[0]",
                "18: devices[1].points[2].writable: input registers are read-only: only coils and \
                 holding registers can be written",
                "19: devices[1].points[3].address: invalid type: string \"x\", expected an integer \
                 from 0 to 4294967295",
                "20: devices[1].points[4].scale: does not apply to `bool` and `string` points",
                "21: devices[2].name: duplicate device name `m`, already used by devices[1]",
                "23: devices[2].points: expected at least one point",
            ],
            "{found:#?}"
        );

        // A bad key of the device itself is left out (it takes its
        // default) and the rest is checked in the same pass, the duplicate
        // name of the next device included.
        let text = MINIMAL.to_owned() + &devices.replace("    colour: red\n", "    unit: fast\n");
        let found: Vec<String> = problems(&text).iter().map(|p| p.path.clone()).collect();
        assert_eq!(
            found,
            [
                "devices[1].rtu",
                "devices[1].unit",
                "devices[1].points[0].min",
                "devices[1].points[1].register",
                "devices[1].points[2].name",
                "devices[1].points[2].writable",
                "devices[1].points[3].address",
                "devices[1].points[4].scale",
                "devices[2].name",
                "devices[2].points",
            ]
        );
    }

    #[test]
    fn a_required_section_that_fails_keeps_the_others_checked() {
        // No mqtt at all, and a gateway that cannot be typed: the store's
        // own check still runs (an unknown key beside it changes nothing),
        // and nothing is said about the stand-ins.
        let text = "gateway: { id: [x] }\nstore: { max_rows: 0, colour: red }\ndevices:\n";
        let found: Vec<_> = problems(text)
            .into_iter()
            .map(|p| (p.path, p.message))
            .collect();
        assert_eq!(
            found,
            [
                (String::new(), "missing field `mqtt`".into()),
                (
                    "gateway.id".into(),
                    "invalid type: list, expected text".into()
                ),
                ("store.max_rows".into(), "must be at least 1".into()),
                (
                    "store.colour".into(),
                    "unknown key `colour`, expected one of `flush_interval`, `flush_rows`, \
                     `max_bytes`, `max_rows`, `max_age`, `memory_buffer`"
                        .into()
                ),
            ]
        );
    }

    #[test]
    fn an_empty_file_says_so() {
        for text in ["", "# nothing yet\n", "~\n"] {
            let found = problems(text);
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(
                found[0].message,
                "the file is empty: expected a mapping with gateway, mqtt and devices"
            );
        }
    }

    #[test]
    fn a_second_password_from_a_variable_names_the_variable() {
        let text = MINIMAL.replace(
            "  url: mqtt://127.0.0.1:1883\n",
            "  url: mqtt://127.0.0.1:1883\n  username: gw\n  password_file: /etc/fieldgate/mqtt.pass\n",
        );
        let err = with_env(&text, &[("FIELDGATE__MQTT__PASSWORD", "s3cret")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "FIELDGATE__MQTT__PASSWORD: mqtt.password: set only one of `password`, `password_file`, \
             `token_file`, `token_command`; also set: `password_file` (line 7) (environment variable)"
        );
        // Both in the file: the one the gateway would not use is at fault.
        let both = text.replace("  username: gw\n", "  username: gw\n  token_file: /t\n");
        let found = problems(&both);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].path, "mqtt.token_file");
        assert_eq!(found[0].mark.map(|m| m.line), Some(7));
        assert!(
            found[0]
                .message
                .ends_with("also set: `password_file` (line 8)"),
            "{found:?}"
        );
    }

    #[test]
    fn a_check_that_spans_keys_names_the_variable_that_set_the_other_key() {
        let text = MINIMAL.replace(
            "  url: mqtt://127.0.0.1:1883\n",
            "  urls: [mqtt://a, mqtt://b]\n  backoff_min: 10s\n",
        );
        let err = with_env(
            &text,
            &[
                ("FIELDGATE__MQTT__URL", "mqtt://c"),
                ("FIELDGATE__MQTT__BACKOFF_MAX", "5s"),
            ],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.yaml:5:9: mqtt.urls: set either `url` or `urls`, not both \
             (`mqtt.url` is set by FIELDGATE__MQTT__URL)\n\
             f.yaml:6:16: mqtt.backoff_min: must not exceed mqtt.backoff_max (5s) \
             (`mqtt.backoff_max` is set by FIELDGATE__MQTT__BACKOFF_MAX)"
        );
        // Without the variables, nothing is added.
        let text = text.replace(
            "  backoff_min: 10s\n",
            "  backoff_min: 10s\n  backoff_max: 5s\n",
        );
        let err = load_str(&text, "f.yaml").unwrap_err().to_string();
        assert!(
            err.ends_with("must not exceed mqtt.backoff_max (5s)"),
            "{err}"
        );
    }

    #[test]
    fn a_password_without_a_username_is_refused() {
        for (key, value) in [
            ("password", "s3cret"),
            ("password_file", "/p"),
            ("token_file", "/t"),
            ("token_command", "echo t"),
        ] {
            let text = MINIMAL.replace(
                "  url: mqtt://127.0.0.1:1883\n",
                &format!("  url: mqtt://127.0.0.1:1883\n  {key}: {value}\n"),
            );
            let found = problems(&text);
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(found[0].path, format!("mqtt.{key}"));
            assert_eq!(
                found[0].mark.map(|m| (m.line, m.col)),
                Some((6, key.len() + 5))
            );
            assert!(found[0].message.contains("needs `username`"), "{found:?}");
            let with_user = text.replace("mqtt:\n", "mqtt:\n  username: gw\n");
            assert!(load_str(&with_user, "f.yaml").is_ok(), "{with_user}");
            let empty_user = text.replace("mqtt:\n", "mqtt:\n  username: \"\"\n");
            assert_eq!(problems(&empty_user).len(), 1, "{empty_user}");
        }
        // The variable that set the password is named.
        let err = with_env(MINIMAL, &[("FIELDGATE__MQTT__PASSWORD", "x")]).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "FIELDGATE__MQTT__PASSWORD: mqtt.password: a password needs `username`"
            ),
            "{err}"
        );
    }

    #[test]
    fn missing_files_and_ports_are_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let there = dir.path().join("ca.pem");
        std::fs::write(&there, "x").unwrap();
        let gone = dir.path().join("gone");
        let text = format!(
            "\
gateway: {{ id: gw }}
mqtt:
  url: mqtts://h
  username: u
  password_file: {gone}/pass
  tls: {{ ca_file: {there}, cert_file: {gone}/c.pem, key_file: {gone}/k.pem }}
  client_id: gw-{{machine_id}}
  machine_id_file: {gone}/machine-id
devices:
  - {{ name: m, kind: modbus, rtu: {{ port: {gone}/ttyUSB0 }}, points: [{{ name: a, register: coil, address: 0 }}] }}
  - {{ name: s, kind: serial, port: {there}, format: kv, fields: {{ t: t }} }}
",
            gone = gone.display(),
            there = there.display()
        );
        let checked = check_with(&text, "f.yaml", &Overrides::default());
        assert!(checked.result.is_ok(), "{:?}", checked.result);
        let found: Vec<_> = checked
            .warnings
            .problems
            .iter()
            .map(|p| (p.mark.map(|m| m.line), p.path.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (Some(5), "mqtt.password_file"),
                (Some(6), "mqtt.tls.cert_file"),
                (Some(6), "mqtt.tls.key_file"),
                (Some(8), "mqtt.machine_id_file"),
                (Some(10), "devices[0].rtu.port"),
            ]
        );
        // A file named by a variable: the warning names the variable.
        let vars = Overrides::from_vars([(
            "FIELDGATE__MQTT__TOKEN_FILE".into(),
            format!("{}/token", gone.display()).into(),
        )]);
        let by_variable = check_with(&text.replace("  password_file", "  # "), "f.yaml", &vars);
        assert!(by_variable.result.is_ok(), "{:?}", by_variable.result);
        // The file's warnings first, then the variables'.
        let last = by_variable.warnings.problems.last().unwrap();
        assert_eq!(
            (last.path.as_str(), last.variable.as_deref(), last.mark),
            ("mqtt.token_file", Some("FIELDGATE__MQTT__TOKEN_FILE"), None)
        );
        let shown = by_variable.warnings.to_string();
        assert!(
            shown.lines().last().unwrap().starts_with(&format!(
                "FIELDGATE__MQTT__TOKEN_FILE: mqtt.token_file: warning: {}/token does not exist",
                gone.display()
            )),
            "{shown}"
        );

        let shown = checked.warnings.to_string();
        assert!(
            shown.starts_with(&format!(
                "f.yaml:5:18: mqtt.password_file: warning: {}/pass does not exist",
                gone.display()
            )),
            "{shown}"
        );
    }

    #[test]
    fn rendered_errors_name_file_line_and_column() {
        let err = load_str(&MINIMAL.replace("1883", "x"), "site.yaml").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("site.yaml:5:8: mqtt.url: invalid port"),
            "{text}"
        );
    }
}
