//! Devices for the checks that span devices (duplicate names, ports shared
//! with other settings, …), also those that fail to type: each takes part
//! with what can be known of it, so that one pass finds everything.
//!
//! A device whose keys fail to type is typed without them (they hold their
//! defaults); a device that cannot be typed even so (a required key
//! failed, an unknown kind) takes part by its name alone. Problems that may
//! come from what stands in for the failed parts are left out: they would
//! not be the file's (`format: xml` stands in as `json`, which makes
//! `columns` look misplaced).

use std::collections::{BTreeMap, BTreeSet};

use super::super::env::mentions;
use super::super::yaml::{self, Node, Value};
use super::super::{DEVICE_KINDS, DeviceConfig};
use super::{Problem, at, quoted};

/// A device for the checks: its index in the file, and when items of its
/// lists were left out, the file's index of each item kept, by list.
pub(super) struct TypedDevice {
    pub(super) index: usize,
    pub(super) device: DeviceConfig,
    pub(super) kept: Vec<(String, Vec<usize>)>,
    pub(super) known: Known,
}

/// How much of a device the checks see.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Known {
    /// All of it, but list items that failed (see `kept`).
    Whole,
    /// All but the keys at these paths below the device, which failed.
    Without(Vec<String>),
    /// Its name: the rest is a stand-in.
    Name,
}

impl Known {
    /// Whether a problem (paths and message in the file's numbering) can
    /// be trusted as far as the device at `devices[index]` goes: one that
    /// is not about it can.
    pub(super) fn vouches_for(&self, index: usize, p: &Problem) -> bool {
        let me = format!("devices[{index}]");
        let below = |path: &str, at: &str| {
            path.strip_prefix(at)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        };
        let mine = below(&p.path, &me);
        if !mine && !p.message.contains(&me) {
            return true;
        }
        match self {
            Known::Whole => true,
            // The duplicate-name problem, on this device or the other.
            Known::Name => p.path.strip_suffix("].name").is_some_and(|device| {
                device
                    .strip_prefix("devices[")
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            }),
            // A problem at a failed key, or at a mapping it was left out of
            // (`fields` with no field left), or that names it.
            Known::Without(failed) => !failed.iter().any(|f| {
                let key = f.rsplit(['.', '[']).next().unwrap_or(f);
                let failed_at = format!("{me}.{f}");
                let around =
                    below(&p.path, &failed_at) || (p.path != me && below(&failed_at, &p.path));
                (mine && around) || mentions(&p.message, key)
            }),
        }
    }
}

/// Type-checks a `devices:` list, each device by its `kind`; returns every
/// device that can take part in the checks, with its index in the list.
pub(super) fn typed_devices(devices: &Node, problems: &mut Vec<Problem>) -> Vec<TypedDevice> {
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
            typed.extend(by_name(i, device, &path));
            continue;
        };
        let kind_text = match &kind.value {
            Value::Scalar { text, .. } => text.as_str(),
            _ => "",
        };
        match DeviceConfig::from_node(kind_text, device, &path) {
            Some((Some(typed_device), pruned, found)) => {
                typed.extend(known(i, typed_device, device, &path, &pruned));
                problems.extend(found);
            }
            Some((None, _, found)) => {
                typed.extend(by_name(i, device, &path));
                problems.extend(found);
            }
            None => {
                problems.push(at(
                    kind,
                    &format!("{path}.kind"),
                    format!(
                        "unknown kind `{kind_text}`, expected one of {}",
                        quoted(DEVICE_KINDS)
                    ),
                ));
                typed.extend(by_name(i, device, &path));
            }
        }
    }
    typed
}

/// A device typed without the nodes at `pruned` (full paths): whole items
/// of its own lists are left out and renumbered; other nodes are failed
/// keys. An item of a deeper list would shift numbers that cannot be
/// mended: then only the name is known.
fn known(
    index: usize,
    device: DeviceConfig,
    node: &Node,
    path: &str,
    pruned: &[String],
) -> Option<TypedDevice> {
    let mut items: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    let mut failed = Vec::new();
    for full in pruned {
        let Some(below) = full.strip_prefix(path).and_then(|r| r.strip_prefix('.')) else {
            return by_name(index, node, path);
        };
        let item = below.split_once('[').and_then(|(list, rest)| {
            let n = rest.strip_suffix(']')?.parse().ok()?;
            (!list.contains('.')).then_some((list, n))
        });
        match item {
            Some((list, n)) => {
                items.entry(list).or_default().insert(n);
            }
            None if below.ends_with(']') => return by_name(index, node, path),
            None => failed.push(below.to_owned()),
        }
    }
    let mut kept = Vec::new();
    for (list, bad) in items {
        let len = match node.get(list).map(|n| &n.value) {
            Some(Value::Seq(all)) => all.len(),
            _ => return by_name(index, node, path),
        };
        let keep = (0..len).filter(|i| !bad.contains(i)).collect();
        kept.push((list.to_owned(), keep));
    }
    let known = if failed.is_empty() {
        Known::Whole
    } else {
        Known::Without(failed)
    };
    Some(TypedDevice {
        index,
        device,
        kept,
        known,
    })
}

/// What stands in for a device of which only the name is known.
const STAND_IN: &str = "name: stand-in\npoints: [{ name: stand-in, signal: sine }]\n";

/// A stand-in with the device's name, if it has a valid one.
fn by_name(index: usize, node: &Node, path: &str) -> Option<TypedDevice> {
    let name = node.get("name")?;
    let mut stand_in = yaml::parse(STAND_IN).ok()?;
    if let Value::Map(pairs) = &mut stand_in.value {
        for (key, value) in pairs.iter_mut() {
            if matches!(&key.value, Value::Scalar { text, .. } if text == "name") {
                *value = name.clone();
            }
        }
    }
    match DeviceConfig::from_node("simulated", &stand_in, path)? {
        (Some(device), pruned, _) if pruned.is_empty() => Some(TypedDevice {
            index,
            device,
            kept: Vec::new(),
            known: Known::Name,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::env::Overrides;
    use super::super::{ConfigError, check_with};

    const HEAD: &str = "gateway: { id: gw }\nmqtt: { url: \"mqtt://127.0.0.1:1\" }\ndevices:\n";

    /// `line: path: message` of every problem.
    fn problems(devices: &str) -> Vec<String> {
        let checked = check_with(&format!("{HEAD}{devices}"), "f.yaml", &Overrides::default());
        match checked.result {
            Err(ConfigError::Invalid { problems, .. }) => problems
                .iter()
                .map(|p| {
                    format!(
                        "{}: {}: {}",
                        p.mark.map_or(0, |m| m.line),
                        p.path,
                        p.message
                    )
                })
                .collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn a_device_that_fails_to_type_still_counts_for_duplicate_names_and_ports() {
        let found = problems(
            "  - { name: meter, kind: modbus, rtu: { port: /dev/ttyUSB0, baud: 9600 }, points: [{ name: a, register: holding, address: 0 }] }
  - { name: meter, kind: modbus, poll: fast, rtu: { port: /dev/ttyUSB0, baud: 19200 }, points: [{ name: a, register: holding, address: 0 }] }
  - { name: meter, kind: serial, port: /dev/ttyS0, format: xml }
  - { name: meter, kind: bluetooth }
  - { name: sim, kind: simulated, poll: fast, points: [{ name: w, signal: sine }, { name: w, signal: ramp }] }
",
        );
        assert_eq!(
            found,
            [
                "5: devices[1].name: duplicate device name `meter`, already used by devices[0]",
                "5: devices[1].poll: invalid duration `fast`, expected a duration such as 500ms, 5s, 2m, 1h or 7d",
                "5: devices[1].rtu: /dev/ttyUSB0 is already used by devices[0] with other settings; devices on one port share baud, parity, data_bits and stop_bits",
                "6: devices[2].name: duplicate device name `meter`, already used by devices[0]",
                "6: devices[2].format: unknown value `xml`, expected one of `json`, `csv`, `kv`, `regex`",
                "7: devices[3].name: duplicate device name `meter`, already used by devices[0]",
                "7: devices[3].kind: unknown kind `bluetooth`, expected one of `simulated`, `serial`, `modbus`, `ble`",
                "8: devices[4].poll: invalid duration `fast`, expected a duration such as 500ms, 5s, 2m, 1h or 7d",
                "8: devices[4].points[1].name: duplicate point name `w`, already used by points[0]",
            ],
            "{found:#?}"
        );
    }

    #[test]
    fn what_stands_in_for_a_failed_key_makes_no_problem_of_its_own() {
        // `format: xml` stands in as the default `json`, with which
        // `columns` would be misplaced: that is not the file's problem.
        let found = problems(
            "  - { name: s, kind: serial, port: /dev/ttyS0, format: xml, columns: [a, b] }\n",
        );
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].contains("devices[0].format: unknown value `xml`"),
            "{found:#?}"
        );
        // A mapping left without a required key is left out with it: with
        // `rtu` unknown, no port is shared and nothing says it is missing;
        // `points: []` is the file's own problem. A required key of the
        // device that fails leaves only its name.
        let found = problems(
            "  - { name: m, kind: modbus, rtu: { port: /dev/ttyUSB0 }, points: [{ name: a, register: holding, address: 0 }] }
  - { name: m, kind: modbus, rtu: { port: [x], baud: 19200 }, points: [] }
  - { name: m, kind: serial, port: /dev/ttyS0, format: [csv], columns: [a] }
",
        );
        assert_eq!(
            found,
            [
                "5: devices[1].name: duplicate device name `m`, already used by devices[0]",
                "5: devices[1].rtu.port: invalid type: list, expected text",
                "5: devices[1].points: expected at least one point",
                "6: devices[2].name: duplicate device name `m`, already used by devices[0]",
                "6: devices[2].format: invalid type: list, expected a format value",
            ],
            "{found:#?}"
        );
    }
}
