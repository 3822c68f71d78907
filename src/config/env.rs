//! `FIELDGATE__SECTION__KEY` environment variables layered over the file.
//!
//! The file is parsed once, into the position-keeping [`Node`] tree of
//! [`super::yaml`]. That tree is handed to the `config` crate as a source,
//! the crate layers `config::Environment` over it, and the merged result is
//! turned back into a [`Node`] tree, which the one checker then types and
//! checks as a whole. Scalars travel through the `config` crate as text, so
//! the typing rules stay those of [`super::yaml`] (a quoted `"1"` stays a
//! string, `yes` is not a bool); a variable's value is typed like a plain
//! YAML scalar (`FIELDGATE__MQTT__QOS=1` is the integer 1).
//!
//! Nodes from the file keep their positions. Nodes set by a variable are
//! remembered by path, so that a problem there names the variable instead
//! of a line ([`Layered::attribute`]).

use std::collections::HashMap;
use std::ffi::OsString;

use ::config::{Environment, Map, Source, Value as Merged, ValueKind};

use super::yaml::{Diagnostic, Mark, Node, Value, join_key, key_label};

const PREFIX: &str = "FIELDGATE";
const SEPARATOR: &str = "__";
/// Placeholder position of a node set by a variable (file positions start
/// at 1:1); [`Layered::attribute`] replaces it by the variable's name.
const FROM_ENV: Mark = Mark { line: 0, col: 0 };
/// `origin` of a file value in the `config` crate's tree: this and the index
/// of its node. Values set by a variable have the crate's own origin.
const FILE_ORIGIN: &str = "fieldgate file node ";

/// One `FIELDGATE__…` variable.
#[derive(Debug, Clone)]
struct Variable {
    /// As it is written in the environment, e.g. `FIELDGATE__MQTT__QOS`.
    name: String,
    /// The key path the `config` crate makes of it, e.g. `mqtt.qos`.
    key: String,
    value: String,
}

/// The `FIELDGATE__…` variables of an environment.
#[derive(Debug, Clone, Default)]
pub(super) struct Overrides {
    /// Sorted by name.
    vars: Vec<Variable>,
    /// Variables that cannot be used (a value that is not UTF-8).
    problems: Vec<Diagnostic>,
}

impl Overrides {
    /// The variables of this process.
    pub(super) fn from_process() -> Self {
        Self::from_vars(std::env::vars_os())
    }

    /// The `FIELDGATE__…` variables among `vars`, matched and named as the
    /// `config` crate does: the name is not case-sensitive, `__` separates
    /// the keys, names that are not UTF-8 are skipped.
    pub(super) fn from_vars(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        let pattern = format!("{PREFIX}{SEPARATOR}").to_lowercase();
        let mut found = Overrides::default();
        for (name, value) in vars {
            let Ok(name) = name.into_string() else {
                continue;
            };
            let lower = name.to_lowercase();
            let Some(rest) = lower.strip_prefix(&pattern) else {
                continue;
            };
            let key = rest.replace(SEPARATOR, ".");
            match value.into_string() {
                Ok(value) => found.vars.push(Variable { name, key, value }),
                Err(_) => found.problems.push(Diagnostic {
                    mark: None,
                    path: key,
                    message: "the value is not valid UTF-8".into(),
                    variable: Some(name),
                }),
            }
        }
        found.vars.sort_by(|a, b| a.name.cmp(&b.name));
        found.problems.sort_by(|a, b| a.variable.cmp(&b.variable));
        found
    }

    /// Problems with the variables themselves, before any checking.
    pub(super) fn problems(&self) -> &[Diagnostic] {
        &self.problems
    }

    /// The variable for a node at `path` that no file node matches: the one
    /// that sets exactly `path`, else the first one that sets something
    /// below it, else `inherited` (the variable of the enclosing node), else
    /// the first one below the nearest ancestor of `path` (the empty list
    /// entries that `FIELDGATE__DEVICES[3]__NAME` makes before the fourth).
    fn variable_for(&self, path: &str, inherited: Option<&str>) -> String {
        let below = |key: &str, path: &str| {
            key.strip_prefix(path)
                .is_some_and(|rest| rest.starts_with(['.', '[']))
        };
        let exact = self.vars.iter().find(|v| v.key == path);
        if let Some(v) = exact.or_else(|| self.vars.iter().find(|v| below(&v.key, path))) {
            return v.name.clone();
        }
        if let Some(name) = inherited {
            return name.to_owned();
        }
        let mut ancestor = path;
        while let Some(end) = ancestor.rfind(['.', '[']) {
            ancestor = &ancestor[..end];
            if let Some(v) = self.vars.iter().find(|v| below(&v.key, ancestor)) {
                return v.name.clone();
            }
        }
        format!("{PREFIX}{SEPARATOR}…")
    }
}

/// Whether `node` of a layered tree was set by a variable.
pub(super) fn from_variable(node: &Node) -> bool {
    node.mark == FROM_ENV
}

/// The file's tree with the variables layered over it.
#[derive(Debug)]
pub(super) struct Layered {
    pub(super) root: Node,
    /// Path of each node set by a variable -> the variable's name.
    from_env: HashMap<String, String>,
}

impl Layered {
    /// Problems found on nodes set by a variable name it instead of a
    /// position.
    pub(super) fn attribute(&self, problems: &mut [Diagnostic]) {
        for p in problems {
            if p.mark == Some(FROM_ENV) {
                p.mark = None;
                p.variable = Some(self.variable_at(&p.path));
            }
        }
    }

    /// A problem in the file that spans keys may be caused by a key a
    /// variable set beside it (or below it): when the message names such a
    /// key, it says which variable set it.
    pub(super) fn mention_variables(&self, problems: &mut [Diagnostic]) {
        for p in problems.iter_mut().filter(|p| p.mark != Some(FROM_ENV)) {
            let parent = p.path.rfind(['.', '[']).map_or("", |end| &p.path[..end]);
            let mut named: Vec<(&String, &String)> = self
                .from_env
                .iter()
                .filter(|(path, _)| *path != &p.path)
                .filter_map(|(path, variable)| {
                    let key = [parent, p.path.as_str()].into_iter().find_map(|above| {
                        let rest = match above {
                            "" => path.as_str(),
                            _ => path.strip_prefix(above)?.strip_prefix('.')?,
                        };
                        (!rest.contains(['.', '['])).then_some(rest)
                    })?;
                    mentions(&p.message, key).then_some((path, variable))
                })
                .collect();
            named.sort();
            for (path, variable) in named {
                p.message += &format!(" (`{path}` is set by {variable})");
            }
        }
    }

    /// The variable of the node at `path` or, for a path beyond it (a
    /// problem in a part the node lacks), of its nearest ancestor.
    pub(super) fn variable_at(&self, mut path: &str) -> String {
        loop {
            if let Some(name) = self.from_env.get(path) {
                return name.clone();
            }
            match path.rfind(['.', '[']) {
                Some(end) => path = &path[..end],
                None => return format!("{PREFIX}{SEPARATOR}…"),
            }
        }
    }
}

/// Whether `message` names `key` as a word of its own.
pub(super) fn mentions(message: &str, key: &str) -> bool {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    message.match_indices(key).any(|(at, _)| {
        !word(message[..at].chars().next_back()) && !word(message[at + key.len()..].chars().next())
    })
}

/// Layers `overrides` over `root` (a mapping or null) with the `config`
/// crate. Fails only if the crate does.
pub(super) fn layer(root: &Node, overrides: &Overrides) -> Result<Layered, Diagnostic> {
    let mut nodes = Vec::new();
    let file = FileTree(to_merged(root, true, &mut nodes));
    let variables: Map<String, String> = overrides
        .vars
        .iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();
    let environment = Environment::with_prefix(PREFIX)
        .prefix_separator(SEPARATOR)
        .separator(SEPARATOR)
        .source(Some(variables));
    let merged = ::config::Config::builder()
        .add_source(file)
        .add_source(environment)
        .build()
        .map_err(|e| Diagnostic {
            mark: None,
            path: String::new(),
            message: format!("cannot layer the {PREFIX}{SEPARATOR}… variables over the file: {e}"),
            variable: None,
        })?
        .cache;
    let mut rebuild = Rebuild {
        nodes,
        overrides,
        from_env: HashMap::new(),
    };
    // An empty file stays null rather than becoming an empty mapping.
    let value = match &merged.kind {
        ValueKind::Table(table) if !table.is_empty() => {
            Value::Map(rebuild.entries(table, Some(root), "", None))
        }
        _ => root.value.clone(),
    };
    Ok(Layered {
        root: Node {
            value,
            mark: root.mark,
        },
        from_env: rebuild.from_env,
    })
}

/// The file as a `config` source.
#[derive(Debug, Clone)]
struct FileTree(Merged);

impl Source for FileTree {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Merged>, ::config::ConfigError> {
        match &self.0.kind {
            ValueKind::Table(table) => Ok(table.clone()),
            _ => Ok(Map::new()),
        }
    }
}

/// A key as the `config` crate keeps it. Scalar keys are their text, but
/// the crate reads top-level keys as paths (`a.b` would become `a: {b: …}`),
/// so there only simple words are kept as text. Other keys (sequences,
/// mappings, null, odd top-level keys: all wrong in a configuration, but to
/// be reported as written) become a name no variable can produce, unique in
/// its mapping; [`Rebuild`] puts the original key back.
fn map_key(key: &Node, top: bool) -> String {
    let word = |text: &str| {
        !text.is_empty()
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    match &key.value {
        Value::Scalar { text, .. } if !top || word(text) => text.clone(),
        _ => format!("\0{}:{}", key.mark.line, key.mark.col),
    }
}

/// The file's tree in the `config` crate's terms: scalars as their text,
/// each value's origin naming its node in `nodes`.
fn to_merged<'a>(node: &'a Node, top: bool, nodes: &mut Vec<&'a Node>) -> Merged {
    let origin = format!("{FILE_ORIGIN}{}", nodes.len());
    nodes.push(node);
    let kind = match &node.value {
        Value::Null => ValueKind::Nil,
        Value::Scalar { text, .. } => ValueKind::String(text.clone()),
        Value::Seq(items) => {
            ValueKind::Array(items.iter().map(|n| to_merged(n, false, nodes)).collect())
        }
        Value::Map(pairs) => ValueKind::Table(
            pairs
                .iter()
                .map(|(k, v)| (map_key(k, top), to_merged(v, false, nodes)))
                .collect(),
        ),
    };
    Merged::new(Some(&origin), kind)
}

/// Turns the merged tree back into nodes.
struct Rebuild<'a> {
    nodes: Vec<&'a Node>,
    overrides: &'a Overrides,
    from_env: HashMap<String, String>,
}

impl<'a> Rebuild<'a> {
    /// The file node a merged value is, by its origin.
    fn origin(&self, value: &Merged) -> Option<&'a Node> {
        let id = value.origin()?.strip_prefix(FILE_ORIGIN)?.parse().ok()?;
        self.nodes.get::<usize>(id).copied()
    }

    /// `twin` is the file's node at the same key path: the `config` crate
    /// rebuilds the mappings it merges, without their origin, so a mapping
    /// with no origin is the file's when the file has one there. (Values
    /// inside sequences are copied with their origins.)
    fn node(
        &mut self,
        value: &Merged,
        twin: Option<&'a Node>,
        path: &str,
        inherited: Option<&str>,
    ) -> Node {
        let own = self.origin(value).or_else(|| {
            let both_maps = matches!(value.kind, ValueKind::Table(_))
                && twin.is_some_and(|t| matches!(t.value, Value::Map(_)));
            twin.filter(|_| both_maps)
        });
        let variable = match own {
            Some(_) => inherited.map(str::to_owned),
            None => {
                let name = self.overrides.variable_for(path, inherited);
                self.from_env.insert(path.to_owned(), name.clone());
                Some(name)
            }
        };
        let inherited = variable.as_deref();
        let value = match &value.kind {
            ValueKind::Nil => Value::Null,
            ValueKind::String(text) => Value::Scalar {
                text: text.clone(),
                // A variable's value reads like a plain scalar.
                plain: own.is_none_or(|n| matches!(n.value, Value::Scalar { plain: true, .. })),
            },
            ValueKind::Table(table) => Value::Map(self.entries(table, own, path, inherited)),
            ValueKind::Array(items) => Value::Seq(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.node(item, None, &format!("{path}[{i}]"), inherited))
                    .collect(),
            ),
            other => Value::Scalar {
                text: other.to_string(),
                plain: true,
            },
        };
        let mark = own.map_or(FROM_ENV, |n| n.mark);
        Node { value, mark }
    }

    /// The entries of a merged mapping: the file's keys first, in the
    /// file's order and with their own keys; keys only a variable sets
    /// after them, by name.
    fn entries(
        &mut self,
        table: &Map<String, Merged>,
        own: Option<&'a Node>,
        path: &str,
        inherited: Option<&str>,
    ) -> Vec<(Node, Node)> {
        let file_pairs: &'a [(Node, Node)] = match own.map(|n| &n.value) {
            Some(Value::Map(pairs)) => pairs,
            _ => &[],
        };
        let top = path.is_empty();
        let mut keyed: Vec<(Option<usize>, &String, &Merged)> = table
            .iter()
            .map(|(k, v)| {
                let at = file_pairs
                    .iter()
                    .position(|(key, _)| map_key(key, top) == *k);
                (at, k, v)
            })
            .collect();
        keyed.sort_by(|a, b| (a.0.is_none(), a.0, a.1).cmp(&(b.0.is_none(), b.0, b.1)));
        keyed
            .into_iter()
            .map(|(at, k, v)| {
                let (key, twin) = match at.and_then(|i| file_pairs.get(i)) {
                    Some((key, twin)) => (key.clone(), Some(twin)),
                    None => {
                        let text = k.clone();
                        let value = Value::Scalar { text, plain: true };
                        let key = Node {
                            value,
                            mark: FROM_ENV,
                        };
                        (key, None)
                    }
                };
                let child = join_key(path, key_label(&key));
                let value = self.node(v, twin, &child, inherited);
                (key, value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::yaml::parse;
    use super::*;

    fn overrides(vars: &[(&str, &str)]) -> Overrides {
        Overrides::from_vars(vars.iter().map(|(k, v)| (k.into(), v.into())))
    }

    fn layered(text: &str, vars: &[(&str, &str)]) -> Layered {
        layer(&parse(text).unwrap(), &overrides(vars)).unwrap()
    }

    const FILE: &str = "\
gateway:
  id: gw-1
mqtt:
  url: mqtt://h:1883
  qos: \"1\"
devices:
  - { name: a, kind: simulated }
";

    #[test]
    fn without_variables_the_tree_comes_back_unchanged() {
        for text in [
            FILE,
            "",
            "a: ~\nb: [1, \"2\", {c: yes}]\nx.y: 3\n? [k]\n: v\n~: n\n\"~\": q\n",
        ] {
            let root = parse(text).unwrap();
            let back = layered(text, &[("PATH", "/bin"), ("FIELDGATEX", "1")]);
            assert_eq!(back.root, root, "{text}");
            assert!(back.from_env.is_empty());
        }
    }

    #[test]
    fn variables_replace_and_add_values_typed_as_plain_scalars() {
        let back = layered(
            FILE,
            &[
                ("FIELDGATE__MQTT__QOS", "2"),
                ("fieldgate__mqtt__username", "u"),
                ("FIELDGATE__STORE__MAX_ROWS", "10"),
            ],
        );
        let root = &back.root;
        let mqtt = root.get("mqtt").unwrap();
        let qos = mqtt.get("qos").unwrap();
        let plain = |text: &str| Value::Scalar {
            text: text.into(),
            plain: true,
        };
        assert_eq!(qos.value, plain("2"));
        assert_eq!(qos.mark, FROM_ENV);
        // The key stays the file's; the new key comes after the file's keys.
        let Value::Map(pairs) = &mqtt.value else {
            panic!("{mqtt:?}")
        };
        let keys: Vec<_> = pairs.iter().map(|(k, _)| (key_label(k), k.mark)).collect();
        assert_eq!(
            keys,
            [
                ("url", Mark { line: 4, col: 3 }),
                ("qos", Mark { line: 5, col: 3 }),
                ("username", FROM_ENV)
            ]
        );
        assert_eq!(mqtt.mark, Mark { line: 4, col: 3 });
        assert_eq!(root.locate("mqtt.url").mark, Mark { line: 4, col: 8 });
        assert_eq!(
            root.locate("devices[0].name").mark,
            Mark { line: 7, col: 13 }
        );
        assert_eq!(root.locate("store.max_rows").value, plain("10"));

        let mut problems = [
            "mqtt.qos",
            "mqtt.username",
            "store",
            "store.max_rows.x",
            "mqtt.url",
        ]
        .map(|path| Diagnostic {
            mark: Some(root.locate(path).mark),
            path: path.into(),
            message: String::new(),
            variable: None,
        });
        back.attribute(&mut problems);
        let named: Vec<_> = problems.iter().map(|p| p.variable.as_deref()).collect();
        assert_eq!(
            named,
            [
                Some("FIELDGATE__MQTT__QOS"),
                Some("fieldgate__mqtt__username"),
                Some("FIELDGATE__STORE__MAX_ROWS"),
                Some("FIELDGATE__STORE__MAX_ROWS"),
                None
            ]
        );
        assert_eq!(problems[4].mark, Some(Mark { line: 4, col: 8 }));
    }

    #[test]
    fn a_variable_can_replace_a_section_or_reach_into_a_list() {
        let back = layered(
            FILE,
            &[
                ("FIELDGATE__GATEWAY", "x"),
                ("FIELDGATE__DEVICES[0]__POLL", "5s"),
            ],
        );
        let gateway = back.root.get("gateway").unwrap();
        assert_eq!(gateway.mark, FROM_ENV);
        let device = back.root.locate("devices[0]");
        assert_eq!(device.mark, Mark { line: 7, col: 5 });
        assert_eq!(device.get("poll").unwrap().mark, FROM_ENV);
        assert_eq!(
            back.variable_at("devices[0].poll"),
            "FIELDGATE__DEVICES[0]__POLL"
        );
        assert_eq!(back.variable_at("gateway.id"), "FIELDGATE__GATEWAY");

        // Entries a variable adds to a list, and the empty ones before it.
        let back = layered(FILE, &[("FIELDGATE__DEVICES[2]__NAME", "c")]);
        let devices = back.root.get("devices").unwrap();
        let Value::Seq(items) = &devices.value else {
            panic!("{devices:?}")
        };
        assert_eq!(items.len(), 3);
        assert_eq!(items[1].value, Value::Null);
        assert_eq!(
            back.variable_at("devices[1]"),
            "FIELDGATE__DEVICES[2]__NAME"
        );
        assert_eq!(
            back.variable_at("devices[2].kind"),
            "FIELDGATE__DEVICES[2]__NAME"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_value_that_is_not_utf8_is_a_problem_of_its_variable() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff, 0xfe]);
        let found = Overrides::from_vars([
            ("FIELDGATE__MQTT__PASSWORD".into(), bad.clone()),
            (OsString::from_vec(vec![0xff]), bad),
        ]);
        assert!(found.vars.is_empty());
        assert_eq!(found.problems.len(), 1);
        let p = &found.problems[0];
        assert_eq!(p.variable.as_deref(), Some("FIELDGATE__MQTT__PASSWORD"));
        assert_eq!(p.path, "mqtt.password");
    }
}
