//! Enforces the layers named at the top of `lib.rs`: reads every file
//! under `src/` and fails when a module names one beside or above it.

use std::path::{Path, PathBuf};

/// Lowest first. A module may name only modules of a lower rank.
const LAYERS: &[(&str, u8)] = &[
    ("reading", 1),
    ("clock", 1),
    ("backoff", 1),
    ("health", 1),
    ("config", 2),
    ("store", 3),
    ("sources", 4),
    ("uplink", 4),
    ("commands", 5),
    ("metrics", 6),
    ("service", 6),
    ("resident", 6),
    ("time_sync", 6),
    ("gateway", 7),
];

fn rank(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

/// The top-level module a file under `src/` belongs to; `None` for the
/// crate root and the binary (`main.rs`, `cli/`), which may name anything.
fn owner(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    match name {
        "lib" | "main" | "cli" | "layers_test" => None,
        _ => Some(name.to_owned()),
    }
}

/// The top-level modules a source text names through `crate::` (or
/// `$crate::` in a macro), grouped imports (`crate::{a, b::c}`) included.
/// Line comments are skipped: a doc link is not a dependency.
fn named_modules(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `mycrate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push(leading_ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.push(leading_ident(&item));
        } else {
            found.push(leading_ident(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

fn leading_ident(text: &str) -> String {
    text.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Every violation in the files under `root`, as `file: a names b`.
fn violations(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    collect(root, &mut files);
    let mut found = Vec::new();
    for file in files {
        let Ok(relative) = file.strip_prefix(root) else {
            continue;
        };
        let Some(from) = owner(relative) else {
            continue;
        };
        let Some(from_rank) = rank(&from) else {
            found.push(format!(
                "{}: module `{from}` has no layer in LAYERS",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for to in named_modules(&text) {
            if to == from || to == "VERSION" || to == "common_device_fields" {
                continue; // the crate root's constant and exported macro
            }
            match rank(&to) {
                Some(r) if r < from_rank => {}
                Some(_) => found.push(format!(
                    "{}: `{from}` (layer {from_rank}) names `{to}`, which is not below it",
                    relative.display()
                )),
                None => found.push(format!(
                    "{}: `{from}` names `{to}`, which has no layer in LAYERS",
                    relative.display()
                )),
            }
        }
    }
    found
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn no_module_names_a_layer_beside_or_above_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &mut files);
    assert!(files.len() > 50, "read only {} files", files.len());
    let found = violations(&root);
    assert!(found.is_empty(), "layer violations:\n{}", found.join("\n"));
}

#[test]
fn the_check_sees_every_form_of_a_path() {
    let text = "use crate::store::Store;\n\
                use crate::{config::Qos, sources::{Reading, Ingest}};\n\
                fn f() { $crate::uplink::x(); }\n\
                // crate::commands in a comment is no dependency\n\
                let a = mycrate::gateway::x;";
    assert_eq!(
        named_modules(text),
        ["store", "config", "sources", "uplink"].map(String::from)
    );
}

#[test]
fn the_check_fails_on_an_upward_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::write(store.join("mod.rs"), "use crate::sources::Reading;\n").unwrap();
    std::fs::write(dir.path().join("reading.rs"), "use crate::clock::Clock;\n").unwrap();
    std::fs::write(dir.path().join("mystery.rs"), "\n").unwrap();
    let mut found = violations(dir.path());
    found.sort();
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found[0].contains("`mystery` has no layer"), "{found:?}");
    assert!(
        found[1].contains("`reading` (layer 1) names `clock`"),
        "{found:?}"
    );
    assert!(
        found[2].contains("`store` (layer 3) names `sources`"),
        "{found:?}"
    );
}
