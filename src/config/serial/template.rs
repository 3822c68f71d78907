//! Write templates: the text a device expects to set one of its points,
//! such as `"SET {point} {value}\n"`.

use std::fmt::Write as _;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A parsed template: literal text, `{point}` and `{value}`; `{{` and `}}`
/// stand for braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteTemplate(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Point,
    Value,
}

impl WriteTemplate {
    pub fn parse(text: &str) -> Result<WriteTemplate, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.as_str().starts_with('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.as_str().starts_with('}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let rest = chars.as_str();
                    let Some(end) = rest.find('}') else {
                        return Err("unclosed `{`, write `{{` for a brace".into());
                    };
                    let piece = match &rest[..end] {
                        "point" => Piece::Point,
                        "value" => Piece::Value,
                        other => {
                            return Err(format!(
                                "unknown placeholder `{{{other}}}`, expected `{{point}}` or `{{value}}`"
                            ));
                        }
                    };
                    chars = rest[end + 1..].chars();
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(piece);
                }
                '}' => return Err("unmatched `}`, write `}}` for a brace".into()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        if pieces.is_empty() {
            return Err("expected the text to send, e.g. \"SET {point} {value}\\n\"".into());
        }
        Ok(WriteTemplate(pieces))
    }

    /// The bytes to send to set `point` to `value`. Numbers are written as
    /// in JSON (`22`, `21.5`), booleans as `1` or `0`, text as it is;
    /// text with control characters is refused, so a value cannot end the
    /// line early and smuggle in a second command.
    pub fn render(&self, point: &str, value: &Value) -> Result<Vec<u8>, String> {
        let value = match value {
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => u8::from(*b).to_string(),
            Value::String(s) if s.chars().any(char::is_control) => {
                return Err("text values must not contain control characters".into());
            }
            Value::String(s) => s.clone(),
            other => {
                return Err(format!(
                    "expected a number, a boolean or text, found {other}"
                ));
            }
        };
        let mut out = String::new();
        for piece in &self.0 {
            let _ = match piece {
                Piece::Text(t) => out.write_str(t),
                Piece::Point => out.write_str(point),
                Piece::Value => out.write_str(&value),
            };
        }
        Ok(out.into_bytes())
    }
}

impl<'de> Deserialize<'de> for WriteTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        WriteTemplate::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(template: &str, value: Value) -> Result<String, String> {
        let t = WriteTemplate::parse(template)?;
        t.render("setpoint", &value)
            .map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn placeholders_are_filled_in() {
        assert_eq!(
            render("SET {point} {value}\n", json!(22)).unwrap(),
            "SET setpoint 22\n"
        );
        assert_eq!(render("S{value}\r\n", json!(21.5)).unwrap(), "S21.5\r\n");
        assert_eq!(render("FAN={value};", json!(true)).unwrap(), "FAN=1;");
        assert_eq!(render("M {value}", json!("auto")).unwrap(), "M auto");
        assert_eq!(
            render("{{\"{point}\":{value}}}\n", json!(-3)).unwrap(),
            "{\"setpoint\":-3}\n"
        );
    }

    #[test]
    fn bad_templates_and_values_are_refused() {
        for (template, expected) in [
            ("SET {pont}", "unknown placeholder `{pont}`"),
            ("SET {value", "unclosed `{`"),
            ("SET }", "unmatched `}`"),
            ("", "expected the text to send"),
        ] {
            let err = WriteTemplate::parse(template).unwrap_err();
            assert!(err.contains(expected), "{template}: {err}");
        }
        assert!(render("M {value}", json!("a\nSET x 1")).is_err());
        assert!(render("M {value}", json!(null)).is_err());
        assert!(render("M {value}", json!([1])).is_err());
    }
}
