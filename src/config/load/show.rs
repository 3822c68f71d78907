//! The effective configuration as text: the file with the `FIELDGATE__…`
//! variables over it (the tree the checker types) and the devices of a
//! remote configuration in place of the file's, every value followed by
//! where it comes from, secrets hidden.
//!
//! The tree is printed rather than the typed [`Config`](super::Config):
//! it keeps what the user wrote and where, which is what this is for. Keys
//! that are not in the tree are at their defaults.

use std::fmt::Write as _;

use super::super::env::{Layered, Overrides, from_variable, layer};
use super::super::yaml::{self, Node, Value, join_key};
use super::{ConfigError, LOCAL_ONLY, Problem, at};

/// The devices of a remote configuration, to show in place of the file's.
pub struct RemoteDevices<'a> {
    /// The document as received (`version` and `devices`).
    pub text: &'a str,
    /// Its version, which names its lines: `remote v7:12`.
    pub version: &'a str,
    /// Said after `devices:` (when it was applied, where it is cached).
    pub about: &'a str,
}

/// Shown instead of a secret's value.
pub const HIDDEN: &str = "(hidden)";

/// Whether the value of a key (or of a variable ending in that key) is a
/// credential: passwords, tokens (and the command that prints one), keys.
/// The `…_file` keys are paths and stay visible.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let key = key.rsplit("__").next().unwrap_or(&key);
    if key.ends_with("_file") {
        return false;
    }
    ["password", "passwd", "token", "secret", "key", "credential"]
        .iter()
        .any(|word| key.contains(word))
}

/// The effective configuration of `text` (the file named `file`) with the
/// `FIELDGATE__…` variables of this process over it and, when `remote` is
/// given, its devices instead of the file's; as YAML with a comment after
/// every value saying where it comes from (`file:line`, a variable's name,
/// `remote VERSION:line`). Every top-level section is shown; one the file
/// does not have is `{}` (all defaults), or `null` for one that is off
/// unless set (`sparkplug`).
pub fn show(
    text: &str,
    file: &str,
    remote: Option<&RemoteDevices<'_>>,
) -> Result<String, ConfigError> {
    show_with(text, file, remote, &Overrides::from_process())
}

fn show_with(
    text: &str,
    file: &str,
    remote: Option<&RemoteDevices<'_>>,
    overrides: &Overrides,
) -> Result<String, ConfigError> {
    let invalid = |file: &str, problems: Vec<Problem>| ConfigError::Invalid {
        file: file.to_owned(),
        problems,
    };
    let root = yaml::parse(text).map_err(|d| invalid(file, vec![d]))?;
    let layered = layer(&root, overrides).map_err(|d| invalid(file, vec![d]))?;
    let remote_devices = match remote {
        Some(r) => {
            let doc = yaml::parse(r.text).map_err(|d| invalid("remote configuration", vec![d]))?;
            let Some(devices) = doc.get("devices").cloned() else {
                let missing = at(&doc, "devices", "missing field `devices`".into());
                return Err(invalid("remote configuration", vec![missing]));
            };
            Some((devices, r))
        }
        None => None,
    };
    let mut out = Printer {
        file,
        layered: &layered,
        remote: None,
        text: String::new(),
    };
    for section in LOCAL_ONLY.iter().chain(&["devices"]) {
        match (section, &remote_devices) {
            (&"devices", Some((devices, r))) => {
                out.remote = Some(r.version);
                out.entry(0, section, devices, section, r.about);
            }
            _ => match pair(&layered.root, section) {
                Some((key, value)) => {
                    let origin = out.origin(key, value, section);
                    out.entry(0, section, value, section, &origin);
                }
                // A section whose absence turns its feature off has
                // required keys: `{}` would not read back.
                None if ["sparkplug", "homeassistant"].contains(section) => {
                    out.line(0, &format!("{section}: null"), "not set: off");
                }
                None => {
                    let empty = if *section == "devices" { "[]" } else { "{}" };
                    out.line(0, &format!("{section}: {empty}"), "not set: all defaults");
                }
            },
        }
    }
    Ok(out.text)
}

/// The key and value of `key` in a mapping.
fn pair<'a>(node: &'a Node, key: &str) -> Option<(&'a Node, &'a Node)> {
    match &node.value {
        Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| matches!(&k.value, Value::Scalar { text, .. } if text == key))
            .map(|(k, v)| (k, v)),
        _ => None,
    }
}

struct Printer<'a> {
    file: &'a str,
    layered: &'a Layered,
    /// The version of the remote configuration whose nodes are printed,
    /// while they are.
    remote: Option<&'a str>,
    text: String,
}

impl Printer<'_> {
    /// Where the value at `path` comes from; `key` is where its line is.
    fn origin(&self, key: &Node, value: &Node, path: &str) -> String {
        if let Some(version) = self.remote {
            return format!("remote {version}:{}", key.mark.line);
        }
        if from_variable(value) || from_variable(key) {
            return self.layered.variable_at(path);
        }
        format!("{}:{}", self.file, key.mark.line)
    }

    fn line(&mut self, indent: usize, body: &str, comment: &str) {
        let _ = writeln!(self.text, "{:indent$}{body}  # {comment}", "");
    }

    /// `key: value  # origin`, or `key:  # origin` and the value below it.
    fn entry(&mut self, indent: usize, key: &str, value: &Node, path: &str, origin: &str) {
        let label = scalar(key, true);
        if is_secret(key) && !matches!(value.value, Value::Null) {
            return self.line(indent, &format!("{label}: {HIDDEN}"), origin);
        }
        match inline(value) {
            Some(text) => self.line(indent, &format!("{label}: {text}"), origin),
            None => {
                self.line(indent, &format!("{label}:"), origin);
                self.block(indent + 2, value, path);
            }
        }
    }

    /// A mapping's entries or a sequence's items, each on its own lines.
    fn block(&mut self, indent: usize, node: &Node, path: &str) {
        match &node.value {
            Value::Map(pairs) => {
                for (key, value) in pairs {
                    let name = yaml::key_label(key);
                    let child = join_key(path, name);
                    let origin = self.origin(key, value, &child);
                    self.entry(indent, name, value, &child, &origin);
                }
            }
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let child = format!("{path}[{i}]");
                    let origin = self.origin(item, item, &child);
                    match inline(item) {
                        Some(text) => self.line(indent, &format!("- {text}"), &origin),
                        None => {
                            // The item's first line after the dash.
                            let start = self.text.len();
                            self.block(indent + 2, item, &child);
                            self.text
                                .replace_range(start + indent..start + indent + 2, "- ");
                        }
                    }
                }
            }
            Value::Null | Value::Scalar { .. } => {}
        }
    }
}

/// A value that fits on its key's line: scalars and empty collections.
fn inline(node: &Node) -> Option<String> {
    match &node.value {
        Value::Null => Some("~".into()),
        Value::Scalar { text, plain } => Some(scalar(text, *plain)),
        Value::Map(pairs) if pairs.is_empty() => Some("{}".into()),
        Value::Seq(items) if items.is_empty() => Some("[]".into()),
        Value::Map(_) | Value::Seq(_) => None,
    }
}

/// A scalar as YAML that reads back the same: plain when it was plain and
/// stays plain in block style, else double-quoted (which keeps it a
/// string, as quoting did in the file).
fn scalar(text: &str, plain: bool) -> String {
    let special = |c: char| "-?:,[]{}#&*!|>'\"%@`".contains(c);
    let stays_plain = plain
        && !text.is_empty()
        && text.trim() == text
        && !text.starts_with(special)
        && !text.ends_with(':')
        && !text.contains(": ")
        && !text.contains(" #")
        && !text.contains(|c: char| c.is_control());
    // A leading `-` is fine before anything but a space (`-5`, `-x`).
    let signed = plain && text.starts_with('-') && !text.starts_with("- ") && text.len() > 1;
    if stays_plain || (signed && scalar(&text[1..], true) == text[1..]) {
        text.to_owned()
    } else {
        serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Overrides {
        Overrides::from_vars(pairs.iter().map(|(k, v)| (k.into(), v.into())))
    }

    /// The tree without positions, to compare what two texts say.
    fn shape(node: &Node) -> String {
        match &node.value {
            Value::Null => "~".into(),
            Value::Scalar { text, plain } => format!("{text:?}{}", if *plain { "" } else { "q" }),
            Value::Seq(items) => format!(
                "[{}]",
                items.iter().map(shape).collect::<Vec<_>>().join(",")
            ),
            Value::Map(pairs) => format!(
                "{{{}}}",
                pairs
                    .iter()
                    .map(|(k, v)| format!("{}:{}", shape(k), shape(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    const FILE: &str = "\
gateway: { id: gw-1, state_dir: /tmp/x }
mqtt:
  url: mqtt://127.0.0.1:1
  username: gw
  password: \"s3, cret\"
  tls: { ca_file: /ca.pem }
devices:
  - name: demo
    kind: simulated
    poll: 1s
    points:
      - { name: wave, signal: sine, min: -5, max: \"100\", period: 60s }
      - name: \"a: b # c\"
        signal: ramp
";

    #[test]
    fn every_value_says_where_it_comes_from() {
        let shown = show_with(
            FILE,
            "f.yaml",
            None,
            &vars(&[("FIELDGATE__GATEWAY__ID", "pi-07")]),
        )
        .unwrap();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(
            &lines[..4],
            [
                "gateway:  # f.yaml:1",
                "  id: pi-07  # FIELDGATE__GATEWAY__ID",
                "  state_dir: /tmp/x  # f.yaml:1",
                "store: {}  # not set: all defaults",
            ],
            "{shown}"
        );
        assert!(
            shown.contains("\n  password: (hidden)  # f.yaml:5\n"),
            "{shown}"
        );
        assert!(!shown.contains("s3"), "{shown}");
        assert!(
            shown.contains("\n  tls:  # f.yaml:6\n    ca_file: /ca.pem  # f.yaml:6\n"),
            "{shown}"
        );
        for section in LOCAL_ONLY {
            assert!(
                shown.contains(&format!("\n{section}")) || shown.starts_with(section),
                "{section}: {shown}"
            );
        }
        assert!(
            shown.contains("\n  - name: demo  # f.yaml:8\n    kind: simulated  # f.yaml:9\n"),
            "{shown}"
        );
        assert!(
            shown.contains("\n      - name: wave  # f.yaml:12\n        signal: sine"),
            "{shown}"
        );
    }

    #[test]
    fn what_is_shown_reads_back_as_the_same_tree() {
        let text = FILE.replace("  password: \"s3, cret\"\n", "");
        let shown = show_with(&text, "f.yaml", None, &Overrides::default()).unwrap();
        let before = yaml::parse(&text).unwrap();
        let after = yaml::parse(&shown).unwrap();
        for section in ["gateway", "mqtt", "devices"] {
            assert_eq!(
                shape(before.get(section).unwrap()),
                shape(after.get(section).unwrap()),
                "{shown}"
            );
        }
        // The checker finds the same in both (this text has three problems,
        // which the quoting must keep: a quoted number stays a string).
        let found = |text: &str| match super::super::load_with(text, "f", &Overrides::default()) {
            Err(ConfigError::Invalid { problems, .. }) => problems
                .into_iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(found(&text).len(), 3, "{:?}", found(&text));
        assert_eq!(found(&text), found(&shown));
    }

    #[test]
    fn remote_devices_replace_the_files_and_name_their_version() {
        let remote = RemoteDevices {
            text: "version: v7\ndevices:\n  - { name: far, kind: simulated, poll: 1s, points: [{ name: w, signal: sine }] }\n",
            version: "v7",
            about: "the remote configuration v7",
        };
        let shown = show_with(FILE, "f.yaml", Some(&remote), &Overrides::default()).unwrap();
        assert!(
            shown.ends_with(
                "devices:  # the remote configuration v7\n  - name: far  # remote v7:3\n    kind: simulated  # remote v7:3\n    poll: 1s  # remote v7:3\n    points:  # remote v7:3\n      - name: w  # remote v7:3\n        signal: sine  # remote v7:3\n"
            ),
            "{shown}"
        );
        assert!(!shown.contains("demo"), "{shown}");
    }

    #[test]
    fn credentials_are_secrets_and_paths_are_not() {
        for key in [
            "password",
            "token_command",
            "bindkey",
            "FIELDGATE__MQTT__PASSWORD",
            "api_key",
        ] {
            assert!(is_secret(key), "{key}");
        }
        for key in [
            "password_file",
            "token_file",
            "key_file",
            "username",
            "keep_alive",
            "FIELDGATE__GATEWAY__ID",
        ] {
            assert!(!is_secret(key), "{key}");
        }
    }

    #[test]
    fn scalars_keep_their_type() {
        assert_eq!(scalar("1", true), "1");
        assert_eq!(scalar("1", false), "\"1\"");
        assert_eq!(scalar("-5", true), "-5");
        assert_eq!(scalar("- x", true), "\"- x\"");
        assert_eq!(scalar("a: b", true), "\"a: b\"");
        assert_eq!(scalar("mqtt://h:1", true), "mqtt://h:1");
        assert_eq!(scalar("", true), "\"\"");
    }
}
