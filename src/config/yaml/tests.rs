//! The reader and the deserializer, on documents with known positions.

use serde::Deserialize;
use serde::de::{self, Error as _};

use super::de::{Resolved, resolve};
use super::*;

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
