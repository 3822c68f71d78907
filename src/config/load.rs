//! From a YAML file to a checked [`Config`].
//!
//! The text is parsed once, into a position-keeping YAML tree. The `config`
//! crate layers `FIELDGATE__SECTION__KEY` environment variables over that
//! tree ([`super::env`]), and the merged tree is typed and checked in one
//! pass, so that every problem is reported with `file:line:column` (or the
//! variable that set the value) and its key path. Whole-config checks
//! (duplicate names, ranges that involve two keys) run on the typed result
//! and are located in the tree by path.

use std::fmt;
use std::path::Path;

use super::env::{self, Overrides};
use super::yaml::{self, Diagnostic, Node, Value};
use super::{Config, DEVICE_KINDS, DeviceConfig, Origin};

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
    let invalid = |problems: Vec<Problem>| ConfigError::Invalid {
        file: file.to_owned(),
        problems,
    };
    let root = yaml::parse(text).map_err(|d| invalid(vec![d]))?;
    if !matches!(root.value, Value::Map(_) | Value::Null) {
        return Err(invalid(vec![not_a_config(&root)]));
    }
    let layered = env::layer(&root, overrides).map_err(|d| invalid(vec![d]))?;
    let located = |mut problems: Vec<Problem>| {
        layered.attribute(&mut problems);
        sort(&mut problems);
        invalid(problems)
    };

    let mut problems = overrides.problems().to_vec();
    let checked = check_tree(&layered.root).map_err(|found| problems.extend(found));
    let mut config = match checked {
        Ok(config) if problems.is_empty() => config,
        _ => return Err(located(problems)),
    };
    config.version = format!("local-{:016x}", fnv1a(text.as_bytes()));
    whole_config_checks(config, &layered.root).map_err(located)
}

/// The checks that span keys, located in `root` by their paths.
fn whole_config_checks(config: Config, root: &Node) -> Result<Config, Vec<Problem>> {
    let mut problems = config.problems();
    for p in &mut problems {
        p.mark = Some(root.locate(&p.path).mark);
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        sort(&mut problems);
        Err(problems)
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

/// Types and checks the tree: the fixed sections through serde, then each
/// device through the type its `kind` names, so that a problem deep inside
/// a device keeps its own position.
fn check_tree(root: &Node) -> Result<Config, Vec<Problem>> {
    if !matches!(root.value, Value::Map(_) | Value::Null) {
        return Err(vec![not_a_config(root)]);
    }
    let mut problems = Vec::new();
    let config = yaml::from_node::<Config>(&root.without("devices"), "")
        .map_err(|found| problems.extend(found))
        .ok();
    let devices = match root.get("devices") {
        Some(devices) => check_devices(devices, &mut problems),
        None => Vec::new(),
    };
    match config {
        Some(mut config) if problems.is_empty() => {
            config.devices = devices;
            Ok(config)
        }
        _ => Err(problems),
    }
}

/// Type-checks a `devices:` list, each device by its `kind`; returns the
/// devices that passed.
fn check_devices(devices: &Node, problems: &mut Vec<Problem>) -> Vec<DeviceConfig> {
    let items: &[Node] = match &devices.value {
        Value::Seq(items) => items,
        Value::Null => &[],
        _ => {
            problems.push(at(devices, "devices", "expected a list of devices".into()));
            return Vec::new();
        }
    };
    let mut typed = Vec::new();
    for (i, device) in items.iter().enumerate() {
        let path = format!("devices[{i}]");
        if !matches!(device.value, Value::Map(_)) {
            problems.push(at(device, &path, "expected a device (a mapping)".into()));
            continue;
        }
        let Some(kind) = device.get("kind") else {
            problems.push(at(device, &path, "missing field `kind`".into()));
            continue;
        };
        let kind_text = match &kind.value {
            Value::Scalar { text, .. } => text.as_str(),
            _ => "",
        };
        match DeviceConfig::from_node(kind_text, device, &path) {
            Some(Ok(d)) => typed.push(d),
            Some(Err(found)) => problems.extend(found),
            None => problems.push(at(
                kind,
                &format!("{path}.kind"),
                format!(
                    "unknown kind `{kind_text}`, expected one of {}",
                    quoted(DEVICE_KINDS)
                ),
            )),
        }
    }
    typed
}

/// The sections a remote configuration may not touch.
const LOCAL_ONLY: &[&str] = &["gateway", "store", "mqtt", "log", "commands", "metrics"];

/// Checks a remote configuration (`version` and `devices`, YAML or JSON)
/// exactly like the local file, and returns `local` with its devices
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
        Some(node) => check_devices(node, &mut problems),
        None => {
            problems.push(at(&root, "devices", "missing field `devices`".into()));
            Vec::new()
        }
    };
    if !problems.is_empty() {
        sort(&mut problems);
        return Err(invalid(problems));
    }
    let mut config = local.clone();
    config.devices = devices;
    config.version = version;
    config.origin = Origin::Remote;
    whole_config_checks(config, &root).map_err(invalid)
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
                    "invalid type: string \"1\", expected u64"
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
            "url: mqtt://127.0.0.1:1883\n  password: 1e3",
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
    fn rendered_errors_name_file_line_and_column() {
        let err = load_str(&MINIMAL.replace("1883", "x"), "site.yaml").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("site.yaml:5:8: mqtt.url: invalid port"),
            "{text}"
        );
    }
}
