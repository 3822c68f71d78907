//! Typing a configuration tree part by part, so that one pass finds every
//! problem: a section or device that cannot be typed is reported, and the
//! checks that span keys still run on every part that could be.

use super::super::Config;
use super::super::yaml::{self, Node, Value};
use super::partial::{Known, TypedDevice, typed_devices};
use super::{Problem, at, credentials, files, locate, not_a_config};

/// The typed configuration, if it could be typed at all, and its problems.
/// When there are problems the configuration is partial (the sections and
/// devices that failed to type are stand-ins or left out) and good only for
/// finding more problems.
pub(super) struct Typed {
    pub(super) config: Option<Config>,
    /// Type errors (unknown keys included).
    pub(super) problems: Vec<Problem>,
    /// The problems of the checks that span keys.
    pub(super) spanning: Vec<Problem>,
    pub(super) warnings: Vec<Problem>,
}

/// Values for required sections that failed to type, so that the checks
/// that span keys still run on the other sections.
const STAND_INS: &str = "gateway: { id: stand-in }\nmqtt: { url: \"mqtt://stand-in\" }\n";

/// Types and checks the tree: the fixed sections through serde, then each
/// device through the type its `kind` names, so that a problem deep inside
/// a device keeps its own position. The checks that span keys run on every
/// section and device that could be typed, so one pass finds everything.
pub(super) fn check_tree(root: &Node) -> Typed {
    if !matches!(root.value, Value::Map(_) | Value::Null) {
        return Typed {
            config: None,
            problems: vec![not_a_config(root)],
            spanning: Vec::new(),
            warnings: Vec::new(),
        };
    }
    let mut problems = Vec::new();
    let sections = root.without("devices");
    // Top-level keys whose value is not the file's own (their problems
    // were reported already, or they are stand-ins).
    let mut replaced: Vec<String> = Vec::new();
    let config = match yaml::from_node_lenient::<Config>(&sections, "") {
        // Unknown keys, if any, are left out; the rest is the file's.
        (Some(config), found) => {
            problems.extend(found);
            Some(config)
        }
        (None, found) => {
            // An unknown key leaves its section's value as it is.
            replaced = found
                .iter()
                .filter(|p| !p.message.starts_with("unknown key `") || !p.path.contains('.'))
                .map(|p| top_key(&p.path).to_owned())
                .collect();
            problems.extend(found);
            stand_in(&sections, &mut replaced, &mut problems)
        }
    };
    let devices = match root.get("devices") {
        Some(devices) => typed_devices(devices, &mut problems),
        None => Vec::new(),
    };
    let Some(mut config) = config else {
        return Typed {
            config: None,
            problems,
            spanning: Vec::new(),
            warnings: Vec::new(),
        };
    };
    let (spanning, warnings) = semantic(&mut config, devices, root, &replaced);
    Typed {
        config: Some(config),
        problems,
        spanning,
        warnings,
    }
}

/// `gateway` of `gateway.id`, `devices` of `devices[2].poll`.
pub(super) fn top_key(path: &str) -> &str {
    let end = path.find(['.', '[']).unwrap_or(path.len());
    &path[..end]
}

/// The sections without the keys in `replaced`, and with a stand-in for each
/// required section that is then missing (added to `replaced`), typed. A
/// required section the file lacks is a problem: serde names only the first
/// missing field, and none after a type error.
fn stand_in(
    sections: &Node,
    replaced: &mut Vec<String>,
    problems: &mut Vec<Problem>,
) -> Option<Config> {
    let mut tree = sections.clone();
    let Value::Map(pairs) = &mut tree.value else {
        return None;
    };
    pairs.retain(|(k, _)| !replaced.iter().any(|r| r == key_text(k)));
    let Ok(Node {
        value: Value::Map(stand_ins),
        ..
    }) = yaml::parse(STAND_INS)
    else {
        return None;
    };
    for (key, value) in stand_ins {
        let name = key_text(&key).to_owned();
        if !pairs.iter().any(|(k, _)| key_text(k) == name) {
            let message = format!("missing field `{name}`");
            let absent = sections.get(&name).is_none();
            if absent
                && !problems
                    .iter()
                    .any(|p| p.path.is_empty() && p.message == message)
            {
                problems.push(at(sections, "", message));
            }
            pairs.push((key, value));
            replaced.push(name);
        }
    }
    yaml::from_node_lenient::<Config>(&tree, "").0
}

fn key_text(key: &Node) -> &str {
    match &key.value {
        Value::Scalar { text, .. } => text,
        _ => "",
    }
}

/// The checks that span keys, on `config` with `devices` (the ones that
/// could be typed), and the warnings, located in `root`. Findings in
/// sections named in `replaced` are left out: those are not the file's
/// values.
pub(super) fn semantic(
    config: &mut Config,
    devices: Vec<TypedDevice>,
    root: &Node,
    replaced: &[String],
) -> (Vec<Problem>, Vec<Problem>) {
    let mut index = Vec::new();
    let mut kept = Vec::new();
    let mut known = Vec::new();
    config.devices = devices
        .into_iter()
        .map(|t| {
            index.push(t.index);
            kept.push(t.kept);
            known.push(t.known);
            t.device
        })
        .collect();
    let mut problems = config.problems();
    problems.extend(credentials::problems(&config.mqtt, root));
    let mut warnings = files::missing(config);
    for found in [&mut problems, &mut warnings] {
        found.retain(|p| !replaced.iter().any(|r| r == top_key(&p.path)));
        for (j, lists) in kept.iter().enumerate() {
            let device = format!("devices[{j}]");
            for (list, keep) in lists {
                // "expected at least one point" after leaving out the bad ones.
                let whole = format!("{device}.{list}");
                found.retain(|p| p.path != whole);
                let mine = found.iter_mut().filter(|p| {
                    p.path
                        .strip_prefix(&device)
                        .is_some_and(|r| r.starts_with('.'))
                });
                for p in mine {
                    p.path = renumber(&p.path, list, keep);
                    p.message = renumber(&p.message, list, keep);
                }
            }
        }
        for p in found.iter_mut() {
            p.path = renumber(&p.path, "devices", &index);
            p.message = renumber(&p.message, "devices", &index);
        }
        found.retain(|p| index.iter().zip(&known).all(|(&i, k)| k.vouches_for(i, p)));
        locate(found, root);
    }
    // Only what the file says, whole, goes on: stand-ins are for the checks.
    let mut known = known.iter();
    config
        .devices
        .retain(|_| known.next().is_some_and(|k| *k == Known::Whole));
    (problems, warnings)
}

/// `list[i]` in `text` as `list[index[i]]`: the checks saw only the items
/// that could be typed, the user sees the file's numbering.
fn renumber(text: &str, list: &str, index: &[usize]) -> String {
    let mark = format!("{list}[");
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(&mark) {
        let (before, after) = rest.split_at(start + mark.len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        // `setpoints[0]` is not an item of `points`.
        let whole_word = !out[..out.len() - mark.len()]
            .chars()
            .next_back()
            .is_some_and(word);
        match after[..digits]
            .parse::<usize>()
            .ok()
            .and_then(|i| index.get(i))
        {
            Some(i) if whole_word => out.push_str(&i.to_string()),
            _ => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}
