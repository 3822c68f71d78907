//! Deserialization from the position-keeping tree: typing by the YAML 1.2 core schema, and
//! every failure recorded against the innermost failing node, which is pruned before the next
//! attempt.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Error as _, Unexpected, Visitor};

use super::{Diagnostic, Mark, Node, Value, addr, diag, is_key, join_key, key_label, measure};

// ---------------------------------------------------------------------------------------------
// Scalar resolution (YAML 1.2 core schema)

pub(super) enum Resolved {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str,
}

pub(super) fn resolve(text: &str) -> Resolved {
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
    match from_node_partial(node, base_path) {
        (value, pruned, diags) if pruned.is_empty() => (value, diags),
        (_, _, diags) => (None, diags),
    }
}

/// [`from_node_lenient`], and also the value typed without the nodes that
/// failed, with their paths (empty when nothing failed but unknown keys).
/// Such a value holds defaults in place of what failed, and fewer items in
/// lists where an item failed: good for checks on the parts that typed,
/// not to run.
pub fn from_node_partial<T: DeserializeOwned>(
    node: &Node,
    base_path: &str,
) -> (Option<T>, Vec<String>, Vec<Diagnostic>) {
    let root = addr(node);
    let mut pruned = HashSet::new();
    let mut paths = Vec::new();
    let mut diags = Vec::new();
    // Every attempt but the last prunes a new node, which bounds the loop.
    for _ in 0..=measure(node).0 {
        let pass = Pass {
            pruned: &pruned,
            unknown: RefCell::default(),
        };
        let result = attributed((node, base_path.to_owned()), &pass, root, T::deserialize);
        diags.append(&mut pass.unknown.into_inner());
        let err = match result {
            Ok(value) => return (Some(value), paths, sorted(diags)),
            Err(err) => err,
        };
        let Some(at) = err.at else { break };
        if !at.cascade {
            diags.push(diag(at.mark, at.path.clone(), err.message));
        }
        if at.prune == root || !pruned.insert(at.prune) {
            break;
        }
        paths.push(at.path);
    }
    (None, paths, sorted(diags))
}

fn sorted(mut diags: Vec<Diagnostic>) -> Vec<Diagnostic> {
    diags.sort_by(|a, b| {
        let key = |d: &Diagnostic| (d.mark.map(|m| (m.line, m.col)), d.path.clone());
        key(a).cmp(&key(b)).then_with(|| a.message.cmp(&b.message))
    });
    diags.dedup();
    diags
}
