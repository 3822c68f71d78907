//! From one line to point values: pure functions, one per format.
//!
//! Every format first splits the line into a [`Record`] (a JSON object,
//! CSV cells, key/value pairs or regex captures), then the same code looks
//! up each configured field, turns it into a number and applies its scale
//! and offset. An empty value (an empty cell, `null`, `key=`) leaves the
//! field out of the reading; anything else that is not a number makes the
//! whole line bad.

use serde_json::{Map, Value};

use crate::config::serial::{Field, Format, SerialDevice, TimeFormat, TimestampField};

/// Why a line was skipped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BadLine {
    #[error("line longer than {0} bytes")]
    TooLong(usize),
    #[error("not UTF-8")]
    NotUtf8,
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("expected {expected} columns, found {found}")]
    Columns { expected: usize, found: usize },
    #[error("`{0}` is not key{1}value")]
    NotAPair(String, String),
    #[error("does not match the pattern")]
    NoMatch,
    #[error("field `{field}`: `{text}` is not a number")]
    NotANumber { field: String, text: String },
    #[error("field `{0}`: out of range after scale and offset")]
    OutOfRange(String),
    #[error("none of the configured fields")]
    NoField,
    #[error("timestamp `{text}`: {reason}")]
    Timestamp { text: String, reason: String },
}

/// What a good line yields.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// From the timestamp field, when configured and present.
    pub ts_ms: Option<i64>,
    /// Point → number.
    pub values: Map<String, Value>,
}

/// Turns lines of one device into values.
#[derive(Debug, Clone)]
pub struct LineParser {
    format: Format,
    columns: Vec<String>,
    separator: String,
    kv_separator: String,
    pattern: Option<regex_lite::Regex>,
    fields: Vec<(String, Field)>,
    timestamp: Option<TimestampField>,
}

/// One line split by its format.
enum Record<'a> {
    Json(Map<String, Value>),
    Cells(Vec<&'a str>),
    Pairs(Vec<(&'a str, &'a str)>),
    Captures(regex_lite::Captures<'a>),
}

/// A field's raw value.
enum Raw<'a> {
    Json(&'a Value),
    Text(&'a str),
}

impl LineParser {
    pub fn new(device: &SerialDevice) -> LineParser {
        LineParser {
            format: device.format,
            columns: device.columns.clone().unwrap_or_default(),
            separator: device.separator().to_owned(),
            kv_separator: device.kv_separator().to_owned(),
            pattern: device.pattern.as_ref().map(|p| p.0.clone()),
            fields: device
                .fields
                .iter()
                .map(|(source, field)| (source.clone(), field.clone()))
                .collect(),
            timestamp: device.timestamp.clone(),
        }
    }

    /// The values of one line (without its delimiter); `Ok(None)` for a
    /// blank line, which is no reading and no error.
    pub fn parse(&self, line: &[u8]) -> Result<Option<Parsed>, BadLine> {
        let text = std::str::from_utf8(line).map_err(|_| BadLine::NotUtf8)?;
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let record = self.split(text)?;
        let mut values = Map::new();
        for (source, field) in &self.fields {
            if let Some(raw) = record.get(self, source)
                && let Some(number) = number(source, raw)?
            {
                let value = field.convert(number);
                if !value.is_finite() {
                    return Err(BadLine::OutOfRange(source.clone()));
                }
                values.insert(field.point.to_string(), to_json(value));
            }
        }
        if values.is_empty() {
            return Err(BadLine::NoField);
        }
        let ts_ms = match &self.timestamp {
            Some(ts) => match record.get(self, &ts.field) {
                Some(raw) => timestamp(raw, ts.format)?,
                None => None,
            },
            None => None,
        };
        Ok(Some(Parsed { ts_ms, values }))
    }

    fn split<'a>(&self, text: &'a str) -> Result<Record<'a>, BadLine> {
        match self.format {
            Format::Json => match serde_json::from_str(text) {
                Ok(Value::Object(map)) => Ok(Record::Json(map)),
                Ok(_) => Err(BadLine::NotAnObject),
                Err(e) => Err(BadLine::Json(e.to_string())),
            },
            Format::Csv => {
                let cells: Vec<&str> = text.split(self.separator.as_str()).collect();
                if cells.len() == self.columns.len() {
                    Ok(Record::Cells(cells))
                } else {
                    Err(BadLine::Columns {
                        expected: self.columns.len(),
                        found: cells.len(),
                    })
                }
            }
            Format::Kv => text
                .split(self.separator.as_str())
                .map(str::trim)
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    pair.split_once(self.kv_separator.as_str())
                        .map(|(k, v)| (k.trim(), v))
                        .ok_or_else(|| BadLine::NotAPair(pair.into(), self.kv_separator.clone()))
                })
                .collect::<Result<_, _>>()
                .map(Record::Pairs),
            Format::Regex => self
                .pattern
                .as_ref()
                .and_then(|p| p.captures(text))
                .map(Record::Captures)
                .ok_or(BadLine::NoMatch),
        }
    }
}

impl Record<'_> {
    fn get<'r>(&'r self, parser: &LineParser, key: &str) -> Option<Raw<'r>> {
        match self {
            Record::Json(map) => json_path(map, key).map(Raw::Json),
            Record::Cells(cells) => {
                let i = parser.columns.iter().position(|c| c == key)?;
                cells.get(i).copied().map(Raw::Text)
            }
            Record::Pairs(pairs) => pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| Raw::Text(v)),
            Record::Captures(captures) => captures.name(key).map(|m| Raw::Text(m.as_str())),
        }
    }
}

/// `a.b.c` in nested objects (and `list.0` in arrays); a key that itself
/// contains dots is found too.
fn json_path<'a>(map: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = map.get(path) {
        return Some(v);
    }
    let (first, rest) = path.split_once('.')?;
    let mut node = map.get(first)?;
    for segment in rest.split('.') {
        node = match node {
            Value::Object(m) => m.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

/// Text as written by a device: blanks and one pair of double quotes
/// around the value are not part of it.
fn unquote(text: &str) -> &str {
    let text = text.trim();
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text)
        .trim()
}

/// The number in a raw value; `None` when the value is empty.
fn number(field: &str, raw: Raw<'_>) -> Result<Option<f64>, BadLine> {
    let not_a_number = |text: String| BadLine::NotANumber {
        field: field.to_owned(),
        text,
    };
    let text = match raw {
        Raw::Json(Value::Null) => return Ok(None),
        Raw::Json(Value::Number(n)) => {
            return n
                .as_f64()
                .filter(|f| f.is_finite())
                .map(Some)
                .ok_or_else(|| not_a_number(n.to_string()));
        }
        Raw::Json(Value::String(s)) => s.as_str(),
        Raw::Json(other) => return Err(not_a_number(shorten(&other.to_string()))),
        Raw::Text(t) => t,
    };
    let text = unquote(text);
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Some(f)),
        _ => Err(not_a_number(shorten(text))),
    }
}

/// Whole numbers as integers (`12`, not `12.0`), others as they are.
fn to_json(value: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if value.fract() == 0.0 && value.abs() < EXACT {
        Value::from(value as i64)
    } else {
        Value::from(value)
    }
}

/// At most 40 characters of device text in a message.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Milliseconds since the epoch from a timestamp field; `None` when empty.
fn timestamp(raw: Raw<'_>, format: TimeFormat) -> Result<Option<i64>, BadLine> {
    let written;
    let text = match raw {
        Raw::Json(Value::Null) => return Ok(None),
        Raw::Json(Value::String(s)) => s.as_str(),
        Raw::Json(other) => {
            written = other.to_string();
            written.as_str()
        }
        Raw::Text(t) => t,
    };
    let text = unquote(text);
    if text.is_empty() {
        return Ok(None);
    }
    let bad = |reason: &str| BadLine::Timestamp {
        text: shorten(text),
        reason: reason.to_owned(),
    };
    let number = text.parse::<f64>().ok().filter(|f| f.is_finite());
    let ms = match (format, number) {
        (TimeFormat::Rfc3339, _) | (TimeFormat::Auto, None) => text
            .parse::<jiff::Timestamp>()
            .map(|t| t.as_millisecond() as f64)
            .map_err(|_| bad("expected RFC 3339, such as 2026-11-25T10:00:00Z"))?,
        (TimeFormat::UnixS | TimeFormat::UnixMs, None) => {
            return Err(bad("expected a number"));
        }
        (TimeFormat::UnixS, Some(s)) => s * 1_000.0,
        (TimeFormat::UnixMs, Some(ms)) => ms,
        (TimeFormat::Auto, Some(n)) if n.abs() >= 1e11 => n,
        (TimeFormat::Auto, Some(s)) => s * 1_000.0,
    };
    let ms = ms.round();
    // jiff's range (years -9999 to 9999) bounds what the payload can show.
    let in_range = ms.abs() < 2.5e17 && jiff::Timestamp::from_millisecond(ms as i64).is_ok();
    if in_range {
        Ok(Some(ms as i64))
    } else {
        Err(bad("out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Name;
    use proptest::prelude::*;
    use serde_json::json;

    /// A device of `format` from YAML-ish settings given as JSON.
    fn parser(settings: Value) -> LineParser {
        let mut device = json!({ "name": "d", "port": "/dev/null" });
        if let (Value::Object(d), Value::Object(s)) = (&mut device, settings) {
            d.extend(s);
        }
        let device: SerialDevice = serde_json::from_value(device).unwrap();
        LineParser::new(&device)
    }

    fn values(parsed: Result<Option<Parsed>, BadLine>) -> Value {
        Value::Object(parsed.unwrap().unwrap().values)
    }

    #[test]
    fn json_with_nested_keys_scale_and_offset() {
        let p = parser(json!({
            "format": "json",
            "fields": {
                "t": "temperature",
                "env.rh": { "point": "humidity", "unit": "%" },
                "raw.p": { "point": "pressure", "scale": 0.1, "offset": -1000 },
                "gps.fix.0": "lat",
            }
        }));
        let line = br#"{"t": 21.5, "env": {"rh": "40"}, "raw": {"p": 10132}, "gps": {"fix": [48.1, 11.5]}}"#;
        assert_eq!(
            values(p.parse(line)),
            json!({"temperature": 21.5, "humidity": 40, "pressure": 13.2, "lat": 48.1})
        );
        // A field that is absent or null is left out.
        assert_eq!(
            values(p.parse(br#"{"t": 20, "env": {"rh": null}}"#)),
            json!({"temperature": 20})
        );
        assert_eq!(p.parse(b"  \r"), Ok(None));
        assert_eq!(p.parse(br#"{"x": 1}"#), Err(BadLine::NoField));
        assert_eq!(p.parse(b"[1, 2]"), Err(BadLine::NotAnObject));
        assert!(matches!(p.parse(b"{\"t\": 2"), Err(BadLine::Json(_))));
        assert_eq!(
            p.parse(br#"{"t": true}"#),
            Err(BadLine::NotANumber {
                field: "t".into(),
                text: "true".into()
            })
        );
        assert_eq!(p.parse(b"{\"t\": \xff}"), Err(BadLine::NotUtf8));
    }

    #[test]
    fn csv_with_columns_and_separator() {
        let p = parser(json!({
            "format": "csv",
            "columns": ["id", "pm25", "pm10", "status"],
            "separator": ";",
            "fields": { "pm25": "pm2_5", "pm10": "pm10" }
        }));
        assert_eq!(
            values(p.parse(b"7; 12 ;\"15.5\";OK\r")),
            json!({"pm2_5": 12, "pm10": 15.5})
        );
        assert_eq!(values(p.parse(b"7;;3;ERR")), json!({"pm10": 3}));
        assert_eq!(
            p.parse(b"7;12;15"),
            Err(BadLine::Columns {
                expected: 4,
                found: 3
            })
        );
        assert!(matches!(
            p.parse(b"id;pm25;pm10;status"),
            Err(BadLine::NotANumber { .. })
        ));
    }

    #[test]
    fn kv_with_both_separators() {
        let p = parser(json!({
            "format": "kv",
            "fields": { "T": "temperature", "H": "humidity" }
        }));
        assert_eq!(
            values(p.parse(b"T=21.5  H=40 V=3.3")),
            json!({"temperature": 21.5, "humidity": 40})
        );
        assert_eq!(
            p.parse(b"T=21.5 hello"),
            Err(BadLine::NotAPair("hello".into(), "=".into()))
        );
        let p = parser(json!({
            "format": "kv",
            "separator": ",",
            "kv_separator": ":",
            "fields": { "temp": "temperature" }
        }));
        assert_eq!(
            values(p.parse(b"temp: 19.25, mode: auto")),
            json!({"temperature": 19.25})
        );
    }

    #[test]
    fn regex_named_captures() {
        let p = parser(json!({
            "format": "regex",
            "pattern": r"^T(?<t>-?\d+(\.\d+)?)C(?: RH(?<h>\d+)%)?$",
            "fields": { "t": "temperature", "h": "humidity" }
        }));
        assert_eq!(
            values(p.parse(b"T-3.5C RH80%")),
            json!({"temperature": -3.5, "humidity": 80})
        );
        assert_eq!(values(p.parse(b"T21C")), json!({"temperature": 21}));
        assert_eq!(p.parse(b"garbage"), Err(BadLine::NoMatch));
    }

    #[test]
    fn timestamps_in_every_form() {
        let p = |format: &str| {
            parser(json!({
                "format": "json",
                "fields": { "v": "v" },
                "timestamp": { "field": "ts", "format": format }
            }))
        };
        let ts = |p: &LineParser, line: &str| p.parse(line.as_bytes()).map(|r| r.unwrap().ts_ms);
        let auto = p("auto");
        assert_eq!(
            ts(&auto, r#"{"v":1,"ts":1764064800}"#),
            Ok(Some(1_764_064_800_000))
        );
        assert_eq!(
            ts(&auto, r#"{"v":1,"ts":1764064800123}"#),
            Ok(Some(1_764_064_800_123))
        );
        assert_eq!(
            ts(&auto, r#"{"v":1,"ts":"2025-11-25T10:00:00.123Z"}"#),
            Ok(Some(1_764_064_800_123))
        );
        assert_eq!(ts(&auto, r#"{"v":1}"#), Ok(None));
        assert!(matches!(
            ts(&auto, r#"{"v":1,"ts":"yesterday"}"#),
            Err(BadLine::Timestamp { .. })
        ));
        assert!(matches!(
            ts(&auto, r#"{"v":1,"ts":1e300}"#),
            Err(BadLine::Timestamp { .. })
        ));
        assert_eq!(ts(&p("unix_ms"), r#"{"v":1,"ts":5000}"#), Ok(Some(5_000)));
        assert_eq!(ts(&p("unix_s"), r#"{"v":1,"ts":"5.5"}"#), Ok(Some(5_500)));
        assert!(ts(&p("rfc3339"), r#"{"v":1,"ts":5}"#).is_err());
    }

    #[test]
    fn scaled_values_lose_the_binary_noise() {
        let field = Field {
            point: Name::parse("p").unwrap(),
            scale: 0.1,
            offset: 0.0,
            unit: None,
            deadband: None,
            aggregate: None,
            homeassistant: Default::default(),
        };
        assert_eq!(field.convert(215.0), 21.5);
        assert_eq!(to_json(field.convert(215.0)), json!(21.5));
        assert_eq!(to_json(3.0), json!(3));
        assert_eq!(to_json(1e300), json!(1e300));
    }

    fn any_parser() -> impl Strategy<Value = LineParser> {
        prop_oneof![
            Just(parser(
                json!({"format": "json", "fields": {"a": "a", "b.c": "c"},
                "timestamp": {"field": "ts"}})
            )),
            Just(parser(
                json!({"format": "csv", "columns": ["a", "b"], "fields": {"a": "a"},
                "timestamp": {"field": "b"}})
            )),
            Just(parser(json!({"format": "kv", "fields": {"a": "a"}}))),
            Just(parser(
                json!({"format": "kv", "separator": ";", "kv_separator": ":=",
                "fields": {"a": {"point": "a", "scale": 1e300}}})
            )),
            Just(parser(
                json!({"format": "regex", "pattern": r"(?<a>\S*)=(?<ts>.*)",
                "fields": {"a": "a"}, "timestamp": {"field": "ts", "format": "unix_ms"}})
            )),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(p in any_parser(), line in any::<Vec<u8>>()) {
            let _ = p.parse(&line);
        }

        #[test]
        fn arbitrary_text_near_the_formats_never_panics(
            p in any_parser(),
            line in r#"[a-c0-9 .,;:="{}\[\]eE+-]{0,40}"#,
        ) {
            if let Ok(Some(parsed)) = p.parse(line.as_bytes()) {
                prop_assert!(!parsed.values.is_empty());
                // Whatever was parsed can be stored and published.
                prop_assert!(serde_json::to_string(&parsed.values).is_ok());
            }
        }

        #[test]
        fn decoder_and_parser_together_never_panic(
            p in any_parser(),
            input in any::<Vec<u8>>(),
            max_line in 1usize..64,
        ) {
            use tokio_util::codec::Decoder;
            let mut codec = super::super::codec::LineCodec::new(b"\n", max_line);
            let mut buf = bytes::BytesMut::from(&input[..]);
            while let Some(frame) = codec.decode_eof(&mut buf).unwrap() {
                if let super::super::codec::Frame::Line(line) = frame {
                    let _ = p.parse(&line);
                }
            }
        }
    }
}
