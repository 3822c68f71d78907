//! Position-keeping YAML loading and error-collecting deserialization: the one YAML reader and
//! the one set of typing rules (YAML 1.2 core schema) of the configuration, for `fieldgate
//! check` and `fieldgate run` alike.
//!
//! Every problem in a configuration file must be listed with `file:line:column`, the key path and
//! what was expected; serde deserializers stop at the first error, and the `config` crate's value
//! tree keeps no positions (it only layers environment variables over this tree, see
//! `config/env.rs`). So this module parses YAML into a [`Node`] tree that keeps positions, and
//! [`from_node`] deserializes from that tree, records each failure against the innermost failing
//! node, prunes that node and retries until the rest of the document deserializes.

mod de;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle};

pub use de::{from_node, from_node_lenient, from_node_partial};

/// Alias expansions beyond this many copied nodes are refused (billion-laughs protection).
const ALIAS_BUDGET: usize = 10_000;
/// Deeper documents are refused: dropping, cloning and deserializing the tree all recurse.
const MAX_DEPTH: usize = 256;

/// 1-based line and column of a node or key in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub line: usize,
    pub col: usize,
}

impl From<&Marker> for Mark {
    fn from(m: &Marker) -> Self {
        // saphyr counts lines from 1 but columns from 0.
        let (line, col) = (m.line(), m.col() + 1);
        Mark { line, col }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub mark: Mark,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// `plain` is false for quoted and block scalars: they are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Keys keep their own marks (for "unknown key" errors).
    Map(Vec<(Node, Node)>),
}

/// One problem found in a document: where, which key path, and what was expected.
///
/// `Display` shows `path: message` (only `message` at the root); the caller adds `file:line:col`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}{}", .path, if .path.is_empty() { "" } else { ": " }, .message)]
pub struct Diagnostic {
    pub mark: Option<Mark>,
    pub path: String,
    pub message: String,
    /// The `FIELDGATE__…` environment variable that set the value, when it
    /// did not come from the document (`mark` is then `None`).
    pub variable: Option<String>,
}

fn diag(mark: Mark, path: String, message: impl Into<String>) -> Diagnostic {
    let message = message.into();
    Diagnostic {
        mark: Some(mark),
        path,
        message,
        variable: None,
    }
}

pub(super) fn join_key(parent: &str, key: &str) -> String {
    match parent {
        "" => key.to_owned(),
        _ => format!("{parent}.{key}"),
    }
}

/// How a key appears in paths and messages.
pub(super) fn key_label(key: &Node) -> &str {
    match &key.value {
        Value::Scalar { text, .. } => text,
        Value::Null => "~",
        Value::Seq(_) | Value::Map(_) => "<non-scalar key>",
    }
}

fn is_key(node: &Node, key: &str) -> bool {
    matches!(&node.value, Value::Scalar { text, .. } if text == key)
}

/// Identity of a node in the (never mutated) tree, used to mark it as pruned.
fn addr(node: &Node) -> usize {
    std::ptr::from_ref(node).addr()
}

/// Number of nodes and nesting height.
fn measure(node: &Node) -> (usize, usize) {
    let children: Vec<&Node> = match &node.value {
        Value::Null | Value::Scalar { .. } => Vec::new(),
        Value::Seq(items) => items.iter().collect(),
        Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
    };
    children
        .into_iter()
        .map(measure)
        .fold((1, 1), |(size, height), (s, h)| {
            (size + s, height.max(h + 1))
        })
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// A collection under construction. Map entries are stored flat (key, value, key, ...), so an
/// odd length means the next node is a value.
struct Frame {
    mark: Mark,
    anchor: usize,
    map: bool,
    items: Vec<Node>,
}

/// Turns saphyr's event stream into a tree.
#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    /// Anchor id -> (node, node count, height).
    anchors: HashMap<usize, (Node, usize, usize)>,
    expanded: usize,
    root: Option<Node>,
}

impl Builder {
    /// Path of the node about to be added, for parse-time diagnostics.
    fn path(&self) -> String {
        self.stack
            .iter()
            .fold(String::new(), |path, f| match (f.map, f.items.last()) {
                (true, Some(key)) if f.items.len() % 2 == 1 => join_key(&path, key_label(key)),
                (true, _) => path,
                (false, _) => format!("{path}[{}]", f.items.len()),
            })
    }

    fn open(&mut self, map: bool, anchor: usize, mark: Mark) -> Result<(), Diagnostic> {
        if self.stack.len() >= MAX_DEPTH {
            let msg = format!("nesting deeper than {MAX_DEPTH} levels");
            return Err(diag(mark, self.path(), msg));
        }
        let items = Vec::new();
        self.stack.push(Frame {
            mark,
            anchor,
            map,
            items,
        });
        Ok(())
    }

    fn close(&mut self) -> Result<(), Diagnostic> {
        let Some(frame) = self.stack.pop() else {
            return Ok(());
        };
        let value = if frame.map {
            let mut items = frame.items.into_iter();
            let mut pairs = Vec::new();
            while let (Some(key), Some(value)) = (items.next(), items.next()) {
                pairs.push((key, value));
            }
            Value::Map(pairs)
        } else {
            Value::Seq(frame.items)
        };
        let mark = frame.mark;
        self.finish(Node { value, mark }, frame.anchor)
    }

    fn alias(&mut self, id: usize, mark: Mark) -> Result<(), Diagnostic> {
        let Some((target, size, height)) = self.anchors.get(&id) else {
            let msg = "alias refers to an anchor that encloses it";
            return Err(diag(mark, self.path(), msg));
        };
        // Count before copying so a bomb never gets the chance to allocate.
        self.expanded += size;
        if self.expanded > ALIAS_BUDGET {
            let msg = format!("aliases expand to more than {ALIAS_BUDGET} nodes");
            return Err(diag(mark, self.path(), msg));
        }
        if self.stack.len() + height > MAX_DEPTH {
            let msg = format!("alias makes nesting deeper than {MAX_DEPTH} levels");
            return Err(diag(mark, self.path(), msg));
        }
        // The copy points at the alias so errors show where the value is used.
        let value = target.value.clone();
        self.finish(Node { value, mark }, 0)
    }

    fn finish(&mut self, node: Node, anchor: usize) -> Result<(), Diagnostic> {
        if anchor != 0 {
            let (size, height) = measure(&node);
            self.anchors.insert(anchor, (node.clone(), size, height));
        }
        if let Some(top) = self.stack.last()
            && top.map
            && top.items.len() % 2 == 0
            && top.items.iter().step_by(2).any(|k| same_key(k, &node))
        {
            let label = key_label(&node);
            let msg = format!("duplicate key `{label}`");
            return Err(diag(node.mark, join_key(&self.path(), label), msg));
        }
        match self.stack.last_mut() {
            Some(top) => top.items.push(node),
            None => self.root = Some(node),
        }
        Ok(())
    }
}

/// `a` and `"a"` name the same key; non-scalar keys are never compared.
fn same_key(a: &Node, b: &Node) -> bool {
    match (&a.value, &b.value) {
        (Value::Scalar { text: a, .. }, Value::Scalar { text: b, .. }) => a == b,
        (Value::Null, Value::Null) => true,
        _ => false,
    }
}

/// Parse one YAML document. Syntax errors come back as a Diagnostic with the parser's position.
/// An empty document is `Value::Null`. More than one document is an error. Anchors/aliases are
/// resolved by copying, with a budget of 10 000 expanded nodes. Duplicate keys in one
/// mapping are an error (at the second key). Tags are ignored.
pub fn parse(text: &str) -> Result<Node, Diagnostic> {
    let mut builder = Builder::default();
    let mut documents = 0;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| diag(e.marker().into(), String::new(), e.info()))?;
        let mark = Mark::from(&span.start);
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    let msg = "expected a single YAML document, found a second one";
                    return Err(diag(mark, String::new(), msg));
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = style == ScalarStyle::Plain;
                let value = match text.as_ref() {
                    "" | "~" | "null" | "Null" | "NULL" if plain => Value::Null,
                    _ => Value::Scalar {
                        text: text.into_owned(),
                        plain,
                    },
                };
                builder.finish(Node { value, mark }, anchor)?;
            }
            Event::SequenceStart(anchor, _tag) => builder.open(false, anchor, mark)?,
            Event::MappingStart(anchor, _tag) => builder.open(true, anchor, mark)?,
            Event::SequenceEnd | Event::MappingEnd => builder.close()?,
            Event::Alias(id) => builder.alias(id, mark)?,
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
    let mark = Mark { line: 1, col: 1 };
    Ok(builder.root.unwrap_or(Node {
        value: Value::Null,
        mark,
    }))
}

enum Seg<'p> {
    Key(&'p str),
    Index(usize),
}

/// Splits `devices[1].points[0].type`; stops at the first malformed segment.
fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[') {
            let Some((index, tail)) = inner.split_once(']') else {
                break;
            };
            let Ok(index) = index.parse() else { break };
            out.push(Seg::Index(index));
            rest = tail;
        } else {
            let body = rest.strip_prefix('.').unwrap_or(rest);
            let end = body.find(['.', '[']).unwrap_or(body.len());
            out.push(Seg::Key(&body[..end]));
            rest = &body[end..];
        }
    }
    out
}

impl Node {
    /// Value of `key` when this node is a mapping with a scalar key equal to `key`.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(pairs) => pairs.iter().find(|(k, _)| is_key(k, key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A copy of this mapping without `key` (other nodes: unchanged copy).
    pub fn without(&self, key: &str) -> Node {
        let mut copy = self.clone();
        if let Value::Map(pairs) = &mut copy.value {
            pairs.retain(|(k, _)| !is_key(k, key));
        }
        copy
    }

    /// The node at a path like `devices[1].points[0].type` (as produced in Diagnostic.path),
    /// or the deepest existing ancestor when the path goes beyond the tree.
    pub fn locate(&self, path: &str) -> &Node {
        let mut node = self;
        for seg in segments(path) {
            let next = match (seg, &node.value) {
                (Seg::Key(key), _) => node.get(key),
                (Seg::Index(i), Value::Seq(items)) => items.get(i),
                (Seg::Index(_), _) => None,
            };
            match next {
                Some(child) => node = child,
                None => break,
            }
        }
        node
    }
}
