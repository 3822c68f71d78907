//! The README's configuration tables against the keys the checker takes.
//!
//! The keys are found by asking the checker itself: an unknown key put into
//! a mapping is refused with the list of the keys that mapping takes, and a
//! key whose value then refuses an unknown key of its own is a section (or
//! a list or map of them) to walk into. So a key added to a struct shows up
//! here without anyone listing it, and a test fails until the README has
//! its row.

use std::collections::{BTreeMap, BTreeSet};

use super::super::DEVICE_KINDS;
use super::super::yaml::{self, Node, Value};
use super::check_tree;

const PROBE: &str = "zz_probe";

/// A valid file around the probes.
const BASE: &str = "gateway: { id: gw }\nmqtt: { url: \"mqtt://h\" }\n";

/// One valid device of each kind, to probe inside.
const DEVICES: &[(&str, &str)] = &[
    (
        "simulated",
        "{ name: d, kind: simulated, points: [{ name: p, signal: ramp }] }",
    ),
    (
        "serial",
        "{ name: d, kind: serial, port: /dev/x, format: json, fields: { t: t } }",
    ),
    (
        "modbus",
        "{ name: d, kind: modbus, tcp: { host: h }, points: [{ name: p, register: holding, address: 0 }] }",
    ),
    (
        "ble",
        "{ name: d, kind: ble, address: \"A4:C1:38:12:34:56\", decoder: gatt, characteristics: [{ point: p, service: 180d, uuid: 2a37 }] }",
    ),
];

/// A step of a key path: a key, the first item of a list, any key of a map.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    First,
    Any,
}

/// The README's notation: `mqtt.tls.ca_file`, `points[].name`, `fields.*.scale`.
fn render(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::First => out.push_str("[]"),
            Step::Any => out.push_str(".*"),
        }
    }
    out
}

/// The checker's notation for the same node: `points[0].name`, `fields.k`.
fn checker_path(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        let key = match step {
            Step::Key(k) => k.as_str(),
            Step::Any => "k",
            Step::First => {
                out.push_str("[0]");
                continue;
            }
        };
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(key);
    }
    out
}

fn scalar(text: &str) -> Node {
    let value = Value::Scalar {
        text: text.to_owned(),
        plain: true,
    };
    Node {
        value,
        mark: yaml::Mark { line: 1, col: 1 },
    }
}

/// `doc` with the probe key added to the mapping at `steps` (made a mapping,
/// and made to exist, when it is not).
fn with_probe(doc: &Node, steps: &[Step]) -> Node {
    let mut doc = doc.clone();
    let node = node_at(&mut doc, steps);
    match &mut node.value {
        Value::Map(pairs) => pairs.push((scalar(PROBE), scalar("1"))),
        other => *other = Value::Map(vec![(scalar(PROBE), scalar("1"))]),
    }
    doc
}

/// The node at `steps`, made to exist.
fn node_at<'a>(doc: &'a mut Node, steps: &[Step]) -> &'a mut Node {
    let mut node = doc;
    for step in steps {
        node = match step {
            Step::Key(_) | Step::Any => {
                let key = match step {
                    Step::Key(k) => k.as_str(),
                    _ => "k",
                };
                if !matches!(node.value, Value::Map(_)) {
                    node.value = Value::Map(Vec::new());
                }
                let Value::Map(pairs) = &mut node.value else {
                    unreachable!("made a mapping above")
                };
                let at = match pairs.iter().position(|(k, _)| yaml::key_label(k) == key) {
                    Some(at) => at,
                    None => {
                        pairs.push((scalar(key), scalar("~")));
                        pairs.len() - 1
                    }
                };
                &mut pairs[at].1
            }
            Step::First => {
                if !matches!(&node.value, Value::Seq(items) if !items.is_empty()) {
                    node.value = Value::Seq(vec![scalar("~")]);
                }
                let Value::Seq(items) = &mut node.value else {
                    unreachable!("made a list above")
                };
                &mut items[0]
            }
        };
    }
    node
}

/// The keys the mapping at `steps` takes, if the checker says it is one.
fn keys_at(doc: &Node, steps: &[Step]) -> Option<Vec<String>> {
    let probed = with_probe(doc, steps);
    let path = yaml::join_key(&checker_path(steps), PROBE);
    let problems = check_tree(&probed).problems;
    let refusal = problems.iter().find(|p| p.path == path)?;
    let list = ["unknown key `", "unknown field `"]
        .iter()
        .find_map(|prefix| refusal.message.strip_prefix(prefix))?
        .strip_prefix(PROBE)?
        .strip_prefix('`')?;
    let keys = list.split('`').skip(1).step_by(2).map(str::to_owned);
    Some(keys.collect())
}

/// Keys the checker takes below `steps`: leaves (values) and containers
/// (sections, lists and maps of sections), in the README's notation, with
/// `skip` steps left off the front.
#[derive(Default)]
struct Accepted {
    leaves: BTreeSet<String>,
    containers: BTreeSet<String>,
    /// The path of each key, leaf or container.
    steps: Vec<Vec<Step>>,
}

impl Accepted {
    fn walk(&mut self, doc: &Node, steps: &[Step], skip: usize) {
        let Some(keys) = keys_at(doc, steps) else {
            return;
        };
        for key in keys {
            let mut child = steps.to_vec();
            child.push(Step::Key(key));
            let name = render(&child[skip..]);
            self.steps.push(child.clone());
            let inner = [None, Some(Step::First), Some(Step::Any)]
                .into_iter()
                .map(|step| {
                    let mut inner = child.clone();
                    inner.extend(step);
                    inner
                })
                .find(|inner| keys_at(doc, inner).is_some());
            match inner {
                Some(inner) => {
                    self.containers.insert(name);
                    self.walk(doc, &inner, skip);
                }
                None => {
                    self.leaves.insert(name);
                }
            }
        }
    }

    fn all(&self) -> BTreeSet<String> {
        self.leaves.union(&self.containers).cloned().collect()
    }
}

/// The keys in the README's `| key | default | meaning |` tables: outside
/// the `kind:` sections (full paths; `devices[].…` for every device), and
/// in each (below the device).
#[derive(Default, Debug)]
struct Documented {
    top: BTreeSet<String>,
    every_device: BTreeSet<String>,
    kinds: BTreeMap<String, BTreeSet<String>>,
}

fn documented(readme: &str) -> Documented {
    let mut found = Documented::default();
    let mut kind: Option<String> = None;
    let mut in_table = false;
    for line in readme.lines() {
        if line.starts_with("## ") {
            kind = None;
        }
        if let Some(rest) = line.strip_prefix("### `kind: ") {
            kind = rest.strip_suffix('`').map(str::to_owned);
        }
        if line.replace(' ', "") == "|key|default|meaning|" {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        let cell = line.split('|').nth(1).unwrap_or_default();
        let mut previous = String::new();
        for (i, token) in cell.split('`').skip(1).step_by(2).enumerate() {
            // `a.b` / `c` and `a.b`, `.c` both mean a.c.
            let parent = previous.rsplit_once('.').map_or("", |(p, _)| p);
            let key = if i > 0 && token.starts_with('.') {
                format!("{parent}{token}")
            } else if i > 0 && !token.contains('.') && !parent.is_empty() {
                format!("{parent}.{token}")
            } else {
                token.to_owned()
            };
            match (&kind, key.strip_prefix("devices[].")) {
                (Some(kind), _) => {
                    found
                        .kinds
                        .entry(kind.clone())
                        .or_default()
                        .insert(key.clone());
                }
                (None, Some(below)) => {
                    found.every_device.insert(below.to_owned());
                }
                (None, None) => {
                    found.top.insert(key.clone());
                }
            }
            previous = key;
        }
    }
    found
}

fn list(keys: &BTreeSet<String>) -> String {
    keys.iter().map(|k| format!("\n  {k}")).collect()
}

#[test]
fn every_key_in_the_readme_tables_is_accepted_and_every_accepted_key_is_there() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md beside Cargo.toml");
    let docs = documented(&readme);
    let mut undocumented = BTreeSet::new();
    let mut refused = BTreeSet::new();

    let base = yaml::parse(BASE).expect("a valid base file");
    let mut top = Accepted::default();
    top.walk(&base, &[], 0);
    // The check itself must have found the sections, or it proves nothing.
    assert!(top.leaves.contains("mqtt.url"), "{:?}", top.leaves);
    assert!(top.containers.contains("mqtt.tls"), "{:?}", top.containers);
    undocumented.extend(top.leaves.difference(&docs.top).cloned());
    refused.extend(docs.top.difference(&top.all()).cloned());

    let kinds: Vec<&str> = DEVICES.iter().map(|(kind, _)| *kind).collect();
    assert_eq!(kinds, DEVICE_KINDS, "a device to probe for each kind");
    for (kind, device) in DEVICES {
        let text = format!("{BASE}devices:\n  - {device}\n");
        let doc = yaml::parse(&text).expect("a valid device");
        assert!(check_tree(&doc).problems.is_empty(), "{text}");
        let mut accepted = Accepted::default();
        let at = [Step::Key("devices".into()), Step::First];
        accepted.walk(&doc, &at, at.len());
        // `kind` picks the type and is not one of its keys.
        accepted.leaves.insert("kind".into());
        let mut mine = docs.kinds.get(*kind).cloned().unwrap_or_default();
        mine.extend(docs.every_device.iter().cloned());
        let named = |keys: BTreeSet<String>| -> BTreeSet<String> {
            keys.into_iter()
                .map(|k| format!("devices[].{k} (kind: {kind})"))
                .collect()
        };
        undocumented.extend(named(accepted.leaves.difference(&mine).cloned().collect()));
        refused.extend(named(mine.difference(&accepted.all()).cloned().collect()));
    }
    assert!(
        undocumented.is_empty() && refused.is_empty(),
        "keys `fieldgate check` accepts that the README's configuration tables do not list \
         (add a row | `key` | default | meaning | to the table of its section):{}\n\
         keys the README's tables list that `fieldgate check` refuses:{}",
        list(&undocumented),
        list(&refused)
    );
}

#[test]
fn the_readme_notation_is_read_as_key_paths() {
    let readme = "\
## Configuration
| key | default | meaning |
|---|---|---|
| `mqtt.password` / `password_file` | none | x |
| `mqtt.tls.cert_file`, `mqtt.tls.key_file` | none | `not.a.key` |
| `devices[].batch.max_bytes` | | |
### `kind: ble`
| key | default | meaning |
|---|---|---|
| `characteristics[].service`, `.uuid` | required | |
| `fields.*.scale` | | |
## MQTT topics
| key | default | meaning |
|---|---|---|
| `commands.max_age` | | |
";
    let docs = documented(readme);
    let set = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        docs.top,
        set(&[
            "commands.max_age",
            "mqtt.password",
            "mqtt.password_file",
            "mqtt.tls.cert_file",
            "mqtt.tls.key_file"
        ])
    );
    assert_eq!(docs.every_device, set(&["batch.max_bytes"]));
    assert_eq!(
        docs.kinds["ble"],
        set(&[
            "characteristics[].service",
            "characteristics[].uuid",
            "fields.*.scale"
        ])
    );
}

/// A message that names a Rust type (outside the backticks that quote the
/// user's words and the valid values).
fn rust_words(message: &str) -> Option<&'static str> {
    let unquoted: String = message.split('`').step_by(2).collect::<Vec<_>>().join(" ");
    let words: Vec<&str> = unquoted
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .collect();
    const RUST: &[&str] = &[
        "struct", "enum", "variant", "tuple", "newtype", "Option", "Vec", "sequence", "map", "u8",
        "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize", "f32",
        "f64", "str", "String", "char",
    ];
    // `unit` alone is also a key (a point's unit).
    let phrases = ["unit value", "unit variant"];
    RUST.iter()
        .copied()
        .find(|rust| words.contains(rust))
        .or_else(|| phrases.into_iter().find(|p| unquoted.contains(p)))
}

#[test]
fn no_message_names_a_rust_type() {
    assert_eq!(
        rust_words("invalid type: map, expected struct X"),
        Some("struct")
    );
    assert_eq!(rust_words("expected one of `u16`, `f32`"), None);
    assert_eq!(rust_words("invalid type: unit value"), Some("unit value"));

    let mut docs = vec![BASE.to_owned()];
    docs.extend(
        DEVICES
            .iter()
            .map(|(_, device)| format!("{BASE}devices:\n  - {device}\n")),
    );
    let wrong = [
        Value::Map(vec![(scalar("a"), scalar("1"))]),
        Value::Seq(vec![Node {
            value: Value::Seq(Vec::new()),
            mark: yaml::Mark { line: 1, col: 1 },
        }]),
        Value::Scalar {
            text: "zz".into(),
            plain: true,
        },
        Value::Scalar {
            text: "-1".into(),
            plain: true,
        },
        Value::Scalar {
            text: "1e400".into(),
            plain: true,
        },
        Value::Null,
    ];
    let mut leaks = BTreeSet::new();
    let mut probed = 0;
    for text in &docs {
        let doc = yaml::parse(text).expect("a valid file");
        let mut accepted = Accepted::default();
        accepted.walk(&doc, &[], 0);
        for steps in &accepted.steps {
            for value in &wrong {
                let mut bad = doc.clone();
                node_at(&mut bad, steps).value = value.clone();
                let typed = check_tree(&bad);
                let mut problems = typed.problems;
                problems.extend(typed.spanning);
                super::polish(&mut problems);
                probed += 1;
                for p in problems {
                    if let Some(rust) = rust_words(&p.message) {
                        leaks.insert(format!("{} ({rust}): {}", p.path, p.message));
                    }
                }
            }
        }
    }
    assert!(
        probed > 500,
        "only {probed} probes: the walk found too little"
    );
    assert!(
        leaks.is_empty(),
        "messages naming Rust types:{}",
        list(&leaks)
    );
}
