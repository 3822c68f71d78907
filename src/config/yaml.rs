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

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle};
use serde::de::{self, DeserializeOwned, DeserializeSeed, Error as _, Unexpected, Visitor};

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

// ---------------------------------------------------------------------------------------------
// Scalar resolution (YAML 1.2 core schema)

enum Resolved {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str,
}

fn resolve(text: &str) -> Resolved {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        _ => {}
    }
    let radix = |prefix: &str, radix: u32| {
        let digits = text.strip_prefix(prefix)?;
        // from_str_radix would also accept a sign, which YAML does not allow here.
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        i128::from_str_radix(digits, radix).ok()
    };
    let int = text.parse::<i128>().ok();
    if let Some(i) = int.or_else(|| radix("0x", 16)).or_else(|| radix("0o", 8)) {
        return Resolved::Int(i);
    }
    yaml_float(text).map_or(Resolved::Str, Resolved::Float)
}

/// Rust's float parser accepts `inf`, `NaN` and `infinity`, which YAML treats as strings, so the
/// YAML grammar is checked first.
fn yaml_float(text: &str) -> Option<f64> {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    if matches!(body, ".inf" | ".Inf" | ".INF") {
        let sign = if text.starts_with('-') { -1.0 } else { 1.0 };
        return Some(sign * f64::INFINITY);
    }
    if matches!(text, ".nan" | ".NaN" | ".NAN") {
        return Some(f64::NAN);
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (body, None),
    };
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", "")) => false,
        Some((int, frac)) => (int.is_empty() || digits(int)) && (frac.is_empty() || digits(frac)),
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    (mantissa_ok && exponent_ok)
        .then(|| text.parse().ok())
        .flatten()
}

// ---------------------------------------------------------------------------------------------
// Deserialization

/// State shared by every deserializer of one attempt.
struct Pass<'a> {
    pruned: &'a HashSet<usize>,
    /// Unknown keys do not abort the attempt, so they are collected on the side.
    unknown: RefCell<Vec<Diagnostic>>,
}

/// Where an error belongs, fixed by the innermost failing node.
#[derive(Debug)]
struct At {
    mark: Mark,
    path: String,
    /// Node to skip on the next attempt.
    prune: usize,
    /// Caused only by an earlier pruning; not worth reporting.
    cascade: bool,
}

#[derive(Debug)]
struct Error {
    message: String,
    at: Option<At>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        let message = msg.to_string();
        Error { message, at: None }
    }
}

/// A "missing field" for a pruned key, or a short sequence after pruning an element, only echoes
/// an error that was already reported.
fn is_cascade(node: &Node, message: &str, pruned: &HashSet<usize>) -> bool {
    let is_pruned = |n: &Node| pruned.contains(&addr(n));
    match &node.value {
        Value::Map(pairs) => {
            let field = message
                .strip_prefix("missing field `")
                .and_then(|m| m.strip_suffix('`'));
            let pruned_key = |f| {
                pairs
                    .iter()
                    .any(|(k, v)| is_key(k, f) && (is_pruned(k) || is_pruned(v)))
            };
            field.is_some_and(pruned_key)
        }
        Value::Seq(items) => message.starts_with("invalid length") && items.iter().any(is_pruned),
        Value::Null | Value::Scalar { .. } => false,
    }
}

struct NodeDe<'a> {
    node: &'a Node,
    path: String,
    pass: &'a Pass<'a>,
}

/// Runs `f` on `node` and pins any error that no deeper node claimed on `node`.
fn attributed<'a, T>(
    (node, path): (&'a Node, String),
    pass: &'a Pass<'a>,
    prune: usize,
    f: impl FnOnce(NodeDe<'a>) -> Result<T, Error>,
) -> Result<T, Error> {
    f(NodeDe {
        node,
        path: path.clone(),
        pass,
    })
    .map_err(|mut err| {
        if err.at.is_none() {
            let cascade = is_cascade(node, &err.message, pass.pruned);
            err.at = Some(At {
                mark: node.mark,
                path,
                prune,
                cascade,
            });
        }
        err
    })
}

impl NodeDe<'_> {
    fn unexpected(&self) -> Unexpected<'_> {
        match &self.node.value {
            Value::Null => Unexpected::Other("null"),
            Value::Scalar { text, plain: false } => Unexpected::Str(text),
            Value::Scalar { text, plain: true } => match resolve(text) {
                Resolved::Null => Unexpected::Other("null"),
                Resolved::Bool(b) => Unexpected::Bool(b),
                Resolved::Int(i) => u64::try_from(i)
                    .map(Unexpected::Unsigned)
                    .or_else(|_| i64::try_from(i).map(Unexpected::Signed))
                    .unwrap_or(Unexpected::Other("integer")),
                Resolved::Float(f) => Unexpected::Float(f),
                Resolved::Str => Unexpected::Str(text),
            },
            Value::Seq(_) => Unexpected::Seq,
            Value::Map(_) => Unexpected::Map,
        }
    }

    fn invalid<'de, V: Visitor<'de>>(&self, visitor: &V) -> Error {
        Error::invalid_type(self.unexpected(), visitor)
    }
}

impl<'de> de::Deserializer<'de> for NodeDe<'de> {
    type Error = Error;

    /// Also serves sequences, maps and units: for other nodes serde's visitors then report the
    /// type mismatch in their own words.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (path, pass) = (self.path, self.pass);
        match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Scalar { text, plain: false } => visitor.visit_str(text),
            Value::Scalar { text, plain: true } => match resolve(text) {
                Resolved::Null => visitor.visit_unit(),
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::Int(i) => match (u64::try_from(i), i64::try_from(i)) {
                    (Ok(u), _) => visitor.visit_u64(u),
                    (_, Ok(s)) => visitor.visit_i64(s),
                    _ => visitor.visit_i128(i),
                },
                Resolved::Float(f) => visitor.visit_f64(f),
                Resolved::Str => visitor.visit_str(text),
            },
            Value::Seq(items) => visitor.visit_seq(SeqDe {
                items: items.iter().enumerate(),
                path,
                pass,
            }),
            Value::Map(pairs) => visitor.visit_map(MapDe::new(pairs, path, pass, None)),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf
        unit unit_struct seq tuple tuple_struct map
    }

    /// Any scalar is taken as written, so `id: 0123` or `version: 1.0` stay text.
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Scalar { text, .. } => visitor.visit_str(text),
            _ => Err(self.invalid(&visitor)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.node.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V>(self, _: &'static str, visitor: V) -> Result<V::Value, Error>
    where
        V: Visitor<'de>,
    {
        visitor.visit_newtype_struct(self)
    }

    /// Unknown keys are reported and hidden from the visitor so the struct still deserializes and
    /// errors elsewhere keep being found.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match &self.node.value {
            // Not deserialize_any: serde's struct visitors would accept a sequence positionally.
            Value::Map(pairs) => {
                visitor.visit_map(MapDe::new(pairs, self.path, self.pass, Some(fields)))
            }
            _ => Err(self.invalid(&visitor)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let (path, pass, prune) = (self.path.clone(), self.pass, addr(self.node));
        match &self.node.value {
            // serde's own string deserializer already knows how to be a unit variant.
            Value::Scalar { text, .. } => {
                visitor.visit_enum(de::value::StrDeserializer::<Error>::new(text))
            }
            Value::Map(pairs) => match pairs.as_slice() {
                [(key, value)] => visitor.visit_enum(EnumDe {
                    key,
                    value,
                    path,
                    pass,
                    prune,
                }),
                _ => Err(self.invalid(&visitor)),
            },
            _ => Err(self.invalid(&visitor)),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

struct SeqDe<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    path: String,
    pass: &'a Pass<'a>,
}

impl<'de> de::SeqAccess<'de> for SeqDe<'de> {
    type Error = Error;

    fn next_element_seed<T>(&mut self, seed: T) -> Result<Option<T::Value>, Error>
    where
        T: DeserializeSeed<'de>,
    {
        let pruned = self.pass.pruned;
        let Some((i, item)) = self.items.find(|(_, n)| !pruned.contains(&addr(n))) else {
            return Ok(None);
        };
        // Indices stay those of the source document even after earlier elements were pruned.
        let path = format!("{}[{i}]", self.path);
        let prune = addr(item);
        attributed((item, path), self.pass, prune, |de| seed.deserialize(de)).map(Some)
    }
}

struct MapDe<'a> {
    pairs: std::slice::Iter<'a, (Node, Node)>,
    path: String,
    pass: &'a Pass<'a>,
    /// Set for structs: keys outside this list are reported instead of passed on.
    fields: Option<&'static [&'static str]>,
    value: Option<(&'a Node, String)>,
}

impl<'a> MapDe<'a> {
    fn new(
        pairs: &'a [(Node, Node)],
        path: String,
        pass: &'a Pass<'a>,
        fields: Option<&'static [&'static str]>,
    ) -> Self {
        let pairs = pairs.iter();
        MapDe {
            pairs,
            path,
            pass,
            fields,
            value: None,
        }
    }
}

fn unknown_key_message(key: &str, fields: &[&str]) -> String {
    let list: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
    match list.as_slice() {
        [] => format!("unknown key `{key}`, no keys are allowed here"),
        [only] => format!("unknown key `{key}`, expected {only}"),
        _ => format!("unknown key `{key}`, expected one of {}", list.join(", ")),
    }
}

impl<'de> de::MapAccess<'de> for MapDe<'de> {
    type Error = Error;

    fn next_key_seed<K>(&mut self, seed: K) -> Result<Option<K::Value>, Error>
    where
        K: DeserializeSeed<'de>,
    {
        let pruned = self.pass.pruned;
        for (key, value) in self.pairs.by_ref() {
            if pruned.contains(&addr(key)) || pruned.contains(&addr(value)) {
                continue;
            }
            let label = key_label(key);
            let path = join_key(&self.path, label);
            if let Some(fields) = self.fields
                && !(matches!(key.value, Value::Scalar { .. }) && fields.contains(&label))
            {
                let message = unknown_key_message(label, fields);
                self.pass
                    .unknown
                    .borrow_mut()
                    .push(diag(key.mark, path, message));
                continue;
            }
            self.value = Some((value, path.clone()));
            let prune = addr(key);
            return attributed((key, path), self.pass, prune, |de| seed.deserialize(de)).map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let Some((value, path)) = self.value.take() else {
            return Err(Error::custom("map value requested before its key"));
        };
        let prune = addr(value);
        attributed((value, path), self.pass, prune, |de| seed.deserialize(de))
    }
}

/// `{variant: content}`. Errors in the content point at the content but prune the whole enum
/// node: pruning only the content would leave a malformed enum and a second, cascaded error.
struct EnumDe<'a> {
    key: &'a Node,
    value: &'a Node,
    path: String,
    pass: &'a Pass<'a>,
    prune: usize,
}

impl<'de> de::EnumAccess<'de> for EnumDe<'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        // An unknown variant is left for the caller to pin on the enum node itself.
        let key = NodeDe {
            node: self.key,
            path: self.path.clone(),
            pass: self.pass,
        };
        Ok((seed.deserialize(key)?, self))
    }
}

impl<'de> EnumDe<'de> {
    fn content<T>(self, f: impl FnOnce(NodeDe<'de>) -> Result<T, Error>) -> Result<T, Error> {
        let path = join_key(&self.path, key_label(self.key));
        attributed((self.value, path), self.pass, self.prune, f)
    }
}

impl<'de> de::VariantAccess<'de> for EnumDe<'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        self.content(|de| match de.node.value {
            Value::Null => Ok(()),
            _ => Err(Error::invalid_type(de.unexpected(), &"unit variant")),
        })
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        self.content(|de| seed.deserialize(de))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Error> {
        self.content(|de| de::Deserializer::deserialize_seq(de, visitor))
    }

    fn struct_variant<V>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error>
    where
        V: Visitor<'de>,
    {
        self.content(|de| de::Deserializer::deserialize_struct(de, "", fields, visitor))
    }
}

/// Deserialize `T` from `node`, collecting every error. `base_path` prefixes all paths
/// (e.g. `"devices[2]"`; `""` for the root). Errors are sorted by (line, col) and de-duplicated.
///
/// Each failed attempt records one error and prunes the failing node; the next attempt looks for
/// further errors in what is left. Even if a later attempt succeeds the document was invalid, so
/// `Ok` only comes from a clean first attempt.
pub fn from_node<T: DeserializeOwned>(node: &Node, base_path: &str) -> Result<T, Vec<Diagnostic>> {
    match from_node_lenient(node, base_path) {
        (Some(value), diags) if diags.is_empty() => Ok(value),
        (_, diags) => Err(diags),
    }
}

/// [`from_node`], and the value as well when the only problems are unknown
/// keys: those are left out of the value and change nothing else in it, so
/// the checks that span keys can still run on it.
pub fn from_node_lenient<T: DeserializeOwned>(
    node: &Node,
    base_path: &str,
) -> (Option<T>, Vec<Diagnostic>) {
    let root = addr(node);
    let mut pruned = HashSet::new();
    let mut diags = Vec::new();
    // Every attempt but the last prunes a new node, which bounds the loop.
    for attempt in 0..=measure(node).0 {
        let pass = Pass {
            pruned: &pruned,
            unknown: RefCell::default(),
        };
        let result = attributed((node, base_path.to_owned()), &pass, root, T::deserialize);
        diags.append(&mut pass.unknown.into_inner());
        let err = match result {
            Ok(value) if attempt == 0 => return (Some(value), sorted(diags)),
            Ok(_) => break,
            Err(err) => err,
        };
        let Some(at) = err.at else { break };
        if !at.cascade {
            diags.push(diag(at.mark, at.path, err.message));
        }
        if at.prune == root || !pruned.insert(at.prune) {
            break;
        }
    }
    (None, sorted(diags))
}

fn sorted(mut diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    diags.sort_by(|a, b| {
        let key = |d: &Diagnostic| (d.mark.map(|m| (m.line, m.col)), d.path.clone());
        key(a).cmp(&key(b)).then_with(|| a.message.cmp(&b.message))
    });
    diags.dedup();
    diags
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        gateway: Gw,
        devices: Vec<Dev>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Gw {
        id: String,
        #[serde(default)]
        poll: Option<Secs>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Dev {
        name: String,
        #[serde(default)]
        qos: Option<u8>,
        points: Vec<Pt>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Pt {
        name: String,
        r#type: Kind,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        F32,
        U16,
        Bits(u8),
    }

    /// Stands in for the gateway's duration type: "5s" style, custom error otherwise.
    #[derive(Debug, PartialEq)]
    struct Secs(u64);

    impl<'de> Deserialize<'de> for Secs {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let text = String::deserialize(d)?;
            let secs = text.strip_suffix('s').and_then(|n| n.parse().ok());
            secs.map(Secs).ok_or_else(|| {
                D::Error::custom(format!("invalid duration `{text}`, expected e.g. `5s`"))
            })
        }
    }

    const VALID: &str = "\
gateway:
  id: gw-01
  poll: 5s
devices:
  - name: boiler
    qos: 1
    points:
      - name: temp
        type: f32
  - name: pump
    points:
      - name: rpm
        type: u16
      - name: flags
        type: {bits: 4}
";

    fn errors(text: &str) -> Vec<Diagnostic> {
        from_node::<Doc>(&parse(text).unwrap(), "").unwrap_err()
    }

    /// Asserts each diagnostic's line, column, path and a fragment of its message, in order.
    fn expect(errs: &[Diagnostic], want: &[(usize, usize, &str, &str)]) {
        assert_eq!(errs.len(), want.len(), "{errs:#?}");
        for (e, &(line, col, path, fragment)) in errs.iter().zip(want) {
            let mark = Some(Mark { line, col });
            assert_eq!((e.mark, e.path.as_str()), (mark, path), "{e:?}");
            assert!(e.message.contains(fragment), "{e:?}");
        }
    }

    /// Replaces one line of `VALID` (1-based) to inject an error at a known position.
    fn valid_with(line: usize, replacement: &str) -> String {
        let mut lines: Vec<&str> = VALID.lines().collect();
        lines[line - 1] = replacement;
        lines.join("\n") + "\n"
    }

    fn scalar(text: &str) -> Value {
        let text = text.into();
        Value::Scalar { text, plain: true }
    }

    #[test]
    fn valid_document_deserializes() {
        let doc: Doc = from_node(&parse(VALID).unwrap(), "").unwrap();
        let pt = |name: &str, r#type| Pt {
            name: name.into(),
            r#type,
        };
        let dev = |name: &str, qos, points| Dev {
            name: name.into(),
            qos,
            points,
        };
        let gateway = Gw {
            id: "gw-01".into(),
            poll: Some(Secs(5)),
        };
        let devices = vec![
            dev("boiler", Some(1), vec![pt("temp", Kind::F32)]),
            dev(
                "pump",
                None,
                vec![pt("rpm", Kind::U16), pt("flags", Kind::Bits(4))],
            ),
        ];
        assert_eq!(doc, Doc { gateway, devices });
    }

    #[test]
    fn wrong_type_points_at_value() {
        let errs = errors(&valid_with(6, "    qos: high"));
        expect(
            &errs,
            &[(
                6,
                10,
                "devices[0].qos",
                "invalid type: string \"high\", expected u8",
            )],
        );
        assert_eq!(
            errs[0].to_string(),
            format!("devices[0].qos: {}", errs[0].message)
        );

        // A base path prefixes everything when a sub-tree is checked on its own.
        let root = parse("- name: a\n  qos: high\n  points: []\n").unwrap();
        let errs = from_node::<Dev>(root.locate("[0]"), "devices[0]").unwrap_err();
        expect(&errs, &[(2, 8, "devices[0].qos", "expected u8")]);
    }

    #[test]
    fn unknown_key_does_not_hide_other_errors() {
        let errs = errors(&valid_with(3, "  pol: 5s").replace("rpm", "[rpm]"));
        let unknown = "unknown key `pol`, expected one of `id`, `poll`";
        let wrong_type = "invalid type: sequence, expected a string";
        expect(
            &errs,
            &[
                (3, 3, "gateway.pol", unknown),
                (12, 15, "devices[1].points[0].name", wrong_type),
            ],
        );
    }

    #[test]
    fn errors_in_three_devices_without_cascades() {
        let text = "\
gateway: {id: gw}
devices:
  - name: [a]
    points: []
  - name: b
    qos: -1
    points: []
  - name: c
    points:
      - name: x
        type: {bits: 300}
";
        // Each failing node is pruned and retried; no "missing field" echoes may follow.
        expect(
            &errors(text),
            &[
                (
                    3,
                    11,
                    "devices[0].name",
                    "invalid type: sequence, expected a string",
                ),
                (
                    6,
                    10,
                    "devices[1].qos",
                    "invalid value: integer `-1`, expected u8",
                ),
                (
                    11,
                    22,
                    "devices[2].points[0].type.bits",
                    "integer `300`, expected u8",
                ),
            ],
        );
    }

    #[test]
    fn missing_field_at_struct() {
        let unknown = "unknown key `nme`, expected one of `name`, `qos`, `points`";
        expect(
            &errors(&valid_with(10, "  - nme: pump")),
            &[
                (10, 5, "devices[1]", "missing field `name`"),
                (10, 5, "devices[1].nme", unknown),
            ],
        );
    }

    #[test]
    fn out_of_range_integer() {
        let errs = errors(&valid_with(6, "    qos: 300"));
        expect(&errs, &[(6, 10, "devices[0].qos", "")]);
        assert_eq!(errs[0].message, "invalid value: integer `300`, expected u8");
    }

    #[test]
    fn unknown_enum_variant() {
        let errs = errors(&valid_with(9, "        type: f64"));
        let message = "unknown variant `f64`, expected one of `f32`, `u16`, `bits`";
        expect(&errs, &[(9, 15, "devices[0].points[0].type", message)]);
    }

    #[test]
    fn custom_deserialize_error() {
        let errs = errors(&valid_with(3, "  poll: 5 parsecs"));
        let message = "invalid duration `5 parsecs`, expected e.g. `5s`";
        expect(&errs, &[(3, 9, "gateway.poll", message)]);
    }

    #[test]
    fn parse_errors_have_positions() {
        let one = |text: &str| vec![parse(text).unwrap_err()];
        expect(&one("a: [1, 2\nb: 3\n"), &[(2, 2, "", "")]);
        expect(&one("a:\n\tb: 1\n"), &[(2, 2, "", "tabs")]);
        expect(
            &one("a: 1\n---\nb: 2\n"),
            &[(2, 1, "", "single YAML document")],
        );
        expect(
            &one("x:\n  a: 1\n  \"a\": 2\n"),
            &[(3, 3, "x.a", "duplicate key `a`")],
        );
        // saphyr caps flow nesting itself, but not block nesting.
        let deep = "- ".repeat(MAX_DEPTH + 1) + "x\n";
        assert!(parse(&deep).unwrap_err().message.contains("nesting deeper"));

        // Empty documents and null spellings are Null; tags are ignored.
        assert_eq!(parse("").unwrap().value, Value::Null);
        let node = parse("a: ~\nb:\nc: !!str x\n").unwrap();
        assert_eq!(node.get("a").unwrap().value, Value::Null);
        assert_eq!(node.get("b").unwrap().value, Value::Null);
        assert_eq!(node.get("c").unwrap().value, scalar("x"));
    }

    #[test]
    fn aliases_resolve_and_bombs_fail() {
        let node = parse("a: &x [1, 2]\nb: *x\n").unwrap();
        assert_eq!(node.get("b").unwrap().mark, Mark { line: 2, col: 4 });
        assert_eq!(node.get("a").unwrap().value, node.get("b").unwrap().value);
        assert!(parse("&a [*a]\n").unwrap_err().message.contains("alias"));

        let mut bomb = String::from("l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let refs = vec![format!("*l{}", i - 1); 9].join(", ");
            bomb += &format!("l{i}: &l{i} [{refs}]\n");
        }
        // 9^4 copies of `lol` by line 5 exhaust the budget.
        expect(
            &[parse(&bomb).unwrap_err()],
            &[(5, 10, "l4[0]", "aliases expand")],
        );
    }

    #[test]
    fn locate_follows_paths() {
        let root = parse(VALID).unwrap();
        let node = root.locate("devices[1].points[0].type");
        assert_eq!(
            (node.mark, &node.value),
            (Mark { line: 13, col: 15 }, &scalar("u16"))
        );
        let deepest = root.locate("devices[1].points[0].type.bits.x");
        assert_eq!(deepest.mark, Mark { line: 13, col: 15 });
        assert_eq!(
            root.locate("devices[7].name").mark,
            Mark { line: 5, col: 3 }
        );
        assert_eq!(root.locate("").mark, root.mark);
        assert!(root.without("gateway").get("gateway").is_none());
        assert!(root.without("gateway").get("devices").is_some());
    }

    #[test]
    fn quoted_and_plain_numbers() {
        #[derive(Debug, Deserialize)]
        struct S {
            s: String,
            n: Option<u16>,
        }
        let s: S = from_node(&parse("s: \"123\"\nn: 123\n").unwrap(), "").unwrap();
        assert_eq!((s.s.as_str(), s.n), ("123", Some(123)));
        let s: S = from_node(&parse("s: 123\nn: 0x1F\n").unwrap(), "").unwrap();
        assert_eq!((s.s.as_str(), s.n), ("123", Some(31)));
        let errs = from_node::<S>(&parse("s: ~\nn: \"123\"\n").unwrap(), "").unwrap_err();
        let quoted = "invalid type: string \"123\", expected u16";
        expect(
            &errs,
            &[
                (1, 4, "s", "invalid type: null, expected a string"),
                (2, 4, "n", quoted),
            ],
        );
    }

    #[test]
    fn core_schema_resolution() {
        let kind = |t| match resolve(t) {
            Resolved::Null => "null",
            Resolved::Bool(_) => "bool",
            Resolved::Int(_) => "int",
            Resolved::Float(_) => "float",
            Resolved::Str => "str",
        };
        let cases = "~:null TRUE:bool yes:str -12:int 0o17:int 0x:str 0123:int 1.5:float \
            -2e3:float .5:float 5.:float .inf:float -.inf:float .nan:float inf:str nan:str \
            .:str 1e:str 1.2.3:str";
        for case in cases.split_whitespace() {
            let (text, expected) = case.rsplit_once(':').unwrap();
            assert_eq!(kind(text), expected, "{text}");
        }
    }
}
