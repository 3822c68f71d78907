//! The YAML of a `kind: serial` device.

mod template;

pub use template::WriteTemplate;

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, de::value::MapAccessDeserializer};

use crate::config::modbus::ValueType;
use crate::config::report::{self, Aggregate, Deadband, PointReport, Report};
use crate::config::{
    BatchConfig, Bounded, DeviceSpec, Duration, EntityHints, PointShape, PointSpec,
};
use crate::reading::{Name, Priority, Qos};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialDevice {
    pub name: Name,
    /// Path of the serial device: `/dev/ttyACM0`, `/dev/serial/by-id/…`.
    pub port: String,
    /// Line speed in bits per second.
    #[serde(default = "SerialDevice::default_baud")]
    pub baud: Bounded<1, 4_000_000>,
    #[serde(default)]
    pub parity: Parity,
    /// Bits per character, 5 to 8.
    #[serde(default = "SerialDevice::default_data_bits")]
    pub data_bits: Bounded<5, 8>,
    /// 1 or 2.
    #[serde(default = "SerialDevice::default_stop_bits")]
    pub stop_bits: Bounded<1, 2>,
    #[serde(default)]
    pub flow_control: FlowControl,
    /// Ends every line. With the default `\n`, a `\r` before it is dropped
    /// too, so `\r\n` lines need no setting.
    #[serde(default = "SerialDevice::default_delimiter")]
    pub delimiter: String,
    /// Longest line in bytes, delimiter excluded; longer lines are skipped
    /// and counted as bad input.
    #[serde(default = "SerialDevice::default_max_line")]
    pub max_line: Bounded<1, 16_777_216>,
    /// How a line is split into fields.
    pub format: Format,
    /// `format: csv`: the name of each column, in order.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// `format: csv`: between columns (default `,`); `format: kv`: between
    /// pairs (default a space; runs of it count as one).
    #[serde(default)]
    pub separator: Option<String>,
    /// `format: kv`: between a key and its value (default `=`).
    #[serde(default)]
    pub kv_separator: Option<String>,
    /// `format: regex`: a regular expression whose named captures are the
    /// fields.
    #[serde(default)]
    pub pattern: Option<Pattern>,
    /// Source field → point. Fields missing from a line are left out of its
    /// reading.
    pub fields: BTreeMap<String, Field>,
    /// A field that carries the time of the reading; without it (or when a
    /// line lacks it) the time of arrival is used.
    #[serde(default)]
    pub timestamp: Option<TimestampField>,
    /// Report the device as stale when no line arrives for this long.
    #[serde(default)]
    pub stale_after: Option<Duration>,
    /// Reported `offline` when no reading carried a value for this long;
    /// `stale_after` when unset, else 60 s.
    #[serde(default)]
    pub offline_after: Option<Duration>,
    /// Points with a `deadband` are sent at least this often.
    #[serde(default = "SerialDevice::default_heartbeat")]
    pub heartbeat: Duration,
    /// Point → the text sent to set it, with `{point}` and `{value}`
    /// placeholders, e.g. `"SET {point} {value}\n"`.
    #[serde(default)]
    pub write: BTreeMap<Name, WriteTemplate>,
    /// MQTT QoS of this device's readings; `mqtt.qos` when unset.
    #[serde(default)]
    pub qos: Option<Qos>,
    #[serde(default)]
    pub priority: Priority,
    /// Several readings per publish, as a JSON array.
    #[serde(default)]
    pub batch: Option<BatchConfig>,
}

impl SerialDevice {
    fn default_baud() -> Bounded<1, 4_000_000> {
        Bounded(9_600)
    }
    fn default_data_bits() -> Bounded<5, 8> {
        Bounded(8)
    }
    fn default_stop_bits() -> Bounded<1, 2> {
        Bounded(1)
    }
    fn default_delimiter() -> String {
        "\n".into()
    }
    fn default_max_line() -> Bounded<1, 16_777_216> {
        Bounded(4_096)
    }
    fn default_heartbeat() -> Duration {
        report::DEFAULT_HEARTBEAT
    }

    /// The column separator (csv) or pair separator (kv) in effect.
    pub fn separator(&self) -> &str {
        match (&self.separator, self.format) {
            (Some(s), _) => s,
            (None, Format::Csv) => ",",
            (None, _) => " ",
        }
    }

    pub fn kv_separator(&self) -> &str {
        self.kv_separator.as_deref().unwrap_or("=")
    }

    /// Format-specific keys set for another format, as (key, format it
    /// belongs to).
    fn misplaced_keys(&self) -> Vec<(&'static str, &'static str)> {
        let set = [
            ("columns", self.columns.is_some(), "csv"),
            ("kv_separator", self.kv_separator.is_some(), "kv"),
            ("pattern", self.pattern.is_some(), "regex"),
        ];
        let mut found: Vec<_> = set
            .into_iter()
            .filter(|(_, present, format)| *present && *format != self.format.as_str())
            .map(|(key, _, format)| (key, format))
            .collect();
        if self.separator.is_some() && !matches!(self.format, Format::Csv | Format::Kv) {
            found.push(("separator", "csv` or `format: kv"));
        }
        found
    }

    /// Source fields a line can provide, when the format fixes them.
    fn known_sources(&self) -> Option<(Vec<&str>, &'static str)> {
        match self.format {
            Format::Csv => Some((
                self.columns.iter().flatten().map(String::as_str).collect(),
                "one of `columns`",
            )),
            Format::Regex => Some((
                self.pattern
                    .iter()
                    .flat_map(|p| p.0.capture_names().flatten())
                    .collect(),
                "a named capture of `pattern`",
            )),
            Format::Json | Format::Kv => None,
        }
    }
}

impl DeviceSpec for SerialDevice {
    crate::common_device_fields!();
    /// The points it reads, and those it can be told (a `write` template).
    fn points(&self) -> Vec<PointSpec> {
        let mut names: Vec<&Name> = self.fields.values().map(|f| &f.point).collect();
        names.extend(self.write.keys());
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|name| PointSpec {
                name: name.to_string(),
                writable: self.write.contains_key(name),
                min: None,
                max: None,
            })
            .collect()
    }

    /// Fields parse as numbers; one that carries text is learned as such.
    fn shapes(&self) -> Vec<PointShape> {
        let shape = |f: &Field| {
            PointShape::new(&f.point, ValueType::F64, f.aggregate.as_ref())
                .shown(f.unit.as_ref(), &f.homeassistant)
        };
        self.fields.values().map(shape).collect()
    }

    fn offline_after(&self) -> Duration {
        // A line comes when the device sends one: there is no poll to count.
        (self.offline_after.or(self.stale_after)).unwrap_or(report::DEFAULT_OFFLINE_AFTER)
    }

    fn report(&self) -> Report {
        let report = |f: &Field| PointReport {
            deadband: f.deadband,
            aggregate: f.aggregate.clone(),
        };
        Report {
            heartbeat: self.heartbeat,
            deadband: None,
            points: (self.fields.values())
                .map(|f| (f.point.to_string(), report(f)))
                .collect(),
        }
    }

    fn problems(&self) -> Vec<(String, String)> {
        let mut found: Vec<(String, String)> = Vec::new();
        let mut problem = |path: &str, message: String| found.push((path.to_owned(), message));
        let timing = report::heartbeat_problems(self.heartbeat);
        for (path, message) in timing
            .into_iter()
            .chain(report::offline_after_problems(self.offline_after))
        {
            problem(&path, message);
        }
        for (source, field) in &self.fields {
            let rules = PointReport {
                deadband: field.deadband,
                aggregate: field.aggregate.clone(),
            };
            // A line's text says whether a value is a number only when it
            // arrives: samples that are not are left out of the window.
            for (path, message) in report::point_problems(&format!("fields.{source}"), &rules, true)
            {
                problem(&path, message);
            }
        }
        if self.port.trim().is_empty() {
            problem("port", "expected the path of a serial device".into());
        }
        if self.delimiter.is_empty() || self.delimiter.len() > 16 {
            problem("delimiter", "expected 1 to 16 bytes".into());
        }
        for (key, format) in self.misplaced_keys() {
            problem(key, format!("only used with `format: {format}`"));
        }
        match self.format {
            Format::Csv => match &self.columns {
                None => problem("columns", "`format: csv` needs `columns`".into()),
                Some(columns) if columns.is_empty() => {
                    problem("columns", "expected at least one column".into());
                }
                Some(columns) => {
                    for (i, column) in columns.iter().enumerate() {
                        if columns[..i].contains(column) {
                            problem(
                                &format!("columns[{i}]"),
                                format!("duplicate column `{column}`"),
                            );
                        }
                    }
                }
            },
            Format::Regex if self.pattern.is_none() => {
                problem("pattern", "`format: regex` needs `pattern`".into());
            }
            Format::Kv if self.kv_separator().is_empty() => {
                problem("kv_separator", "must not be empty".into());
            }
            _ => {}
        }
        if matches!(self.format, Format::Csv | Format::Kv) {
            if self.separator().is_empty() {
                problem("separator", "must not be empty".into());
            } else if self.format == Format::Kv && self.separator() == self.kv_separator() {
                problem("kv_separator", "must differ from `separator`".into());
            }
        }
        if self.fields.is_empty() {
            problem("fields", "expected at least one field".into());
        }
        let known = self.known_sources();
        let mut points: BTreeMap<&Name, &str> = BTreeMap::new();
        for (source, field) in &self.fields {
            let path = format!("fields.{source}");
            if let Some((names, what)) = &known
                && !names.contains(&source.as_str())
            {
                problem(&path, format!("`{source}` is not {what}"));
            }
            if let Some(first) = points.insert(&field.point, source) {
                problem(
                    &path,
                    format!(
                        "point `{}` is already the target of field `{first}`",
                        field.point
                    ),
                );
            }
            for (key, v) in [("scale", field.scale), ("offset", field.offset)] {
                if !v.is_finite() {
                    problem(&format!("{path}.{key}"), "expected a finite number".into());
                }
            }
        }
        if let (Some(ts), Some((names, what))) = (&self.timestamp, &known)
            && !names.contains(&ts.field.as_str())
        {
            problem("timestamp.field", format!("`{}` is not {what}", ts.field));
        }
        if self.stale_after.is_some_and(|d| d.get().is_zero()) {
            problem("stale_after", "must be at least 1ms".into());
        }
        found
    }
}

/// How a line is split into fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A JSON object; nested keys as `outer.inner`.
    Json,
    /// Values separated by `separator`, named by `columns`.
    Csv,
    /// `key=value` pairs.
    Kv,
    /// Named captures of `pattern`.
    Regex,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Kv => "kv",
            Format::Regex => "regex",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    #[default]
    None,
    Odd,
    Even,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    #[default]
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// Where a source field goes: written either as the point name alone or
/// as `{ point, scale, offset, unit, deadband, aggregate }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub point: Name,
    /// The value sent is `raw * scale + offset`.
    pub scale: f64,
    pub offset: f64,
    /// The unit of the point's values.
    pub unit: Option<String>,
    /// Sent only when it moved beyond this; unset: every line.
    pub deadband: Option<Deadband>,
    /// Sent as one summary per window instead.
    pub aggregate: Option<Aggregate>,
    /// How Home Assistant shows it.
    pub homeassistant: EntityHints,
}

impl Field {
    /// Applies scale and offset.
    pub fn convert(&self, raw: f64) -> f64 {
        if self.scale == 1.0 && self.offset == 0.0 {
            return raw;
        }
        let value = raw * self.scale + self.offset;
        // 12 significant digits hide the binary noise of the multiplication
        // (215 * 0.1 = 21.500000000000004) and keep more than any sensor
        // resolves.
        format!("{value:.11e}").parse().unwrap_or(value)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldDetail {
    /// The point this field's values go to.
    point: Name,
    /// Multiplies the raw value.
    #[serde(default = "FieldDetail::default_scale")]
    scale: f64,
    /// Added after `scale`.
    #[serde(default)]
    offset: f64,
    /// The unit of the point's values.
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    deadband: Option<Deadband>,
    #[serde(default)]
    aggregate: Option<Aggregate>,
    #[serde(default)]
    homeassistant: EntityHints,
}

impl FieldDetail {
    fn default_scale() -> f64 {
        1.0
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl<'de> Visitor<'de> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a point name or { point, scale, offset, unit, deadband, aggregate, homeassistant }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(Field {
                    point: Name::parse(v).map_err(E::custom)?,
                    scale: 1.0,
                    offset: 0.0,
                    unit: None,
                    deadband: None,
                    aggregate: None,
                    homeassistant: EntityHints::default(),
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field, A::Error> {
                let d = FieldDetail::deserialize(MapAccessDeserializer::new(map))?;
                Ok(Field {
                    point: d.point,
                    scale: d.scale,
                    offset: d.offset,
                    unit: d.unit,
                    deadband: d.deadband,
                    aggregate: d.aggregate,
                    homeassistant: d.homeassistant,
                })
            }
        }
        d.deserialize_any(FieldVisitor)
    }
}

/// The time of a reading, taken from one of its fields.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampField {
    /// The source field (as in `fields`).
    pub field: String,
    #[serde(default)]
    pub format: TimeFormat,
}

/// How a timestamp is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// A number: Unix seconds, or milliseconds when above 10^11 (that is
    /// after 1973 in milliseconds, or after the year 5000 in seconds);
    /// text: RFC 3339.
    #[default]
    Auto,
    UnixS,
    UnixMs,
    /// `2026-11-25T10:00:00.123Z`, `2026-11-25T11:00:00+01:00`.
    Rfc3339,
}

/// A regular expression, compiled when the config is read so that
/// `fieldgate check` reports a broken one at its position.
#[derive(Debug, Clone)]
pub struct Pattern(pub regex_lite::Regex);

/// Two patterns are the same when their text is.
impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        regex_lite::Regex::new(&text).map(Pattern).map_err(|e| {
            // The crate's message spans several lines (pattern, caret, error):
            // keep its last line, the reason.
            let full = e.to_string();
            let reason = full.lines().last().unwrap_or_default();
            let reason = reason.strip_prefix("error: ").unwrap_or(reason);
            de::Error::custom(format!("invalid regular expression: {reason}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, load_str};

    fn problems(devices: &str) -> Vec<String> {
        let text = format!("gateway: {{ id: gw }}\nmqtt: {{ url: mqtt://h }}\ndevices:\n{devices}");
        match load_str(&text, "f.yaml") {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid { problems, .. }) => problems
                .iter()
                .map(|p| {
                    let m = p.mark.unwrap();
                    format!("{}:{}: {}: {}", m.line, m.col, p.path, p.message)
                })
                .collect(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_complete_device_passes_with_defaults() {
        let devices = "  - name: w\n    kind: serial\n    port: /dev/ttyACM0\n    format: json\n    \
                       fields: { t: temperature, env.rh: { point: humidity, unit: \"%\" } }\n";
        assert_eq!(problems(devices), Vec::<String>::new());
    }

    #[test]
    fn checks_across_keys_are_located() {
        let devices = "
  - name: pm
    kind: serial
    port: /dev/ttyUSB0
    format: csv
    columns: [a, b]
    pattern: 'x'
    fields: { a: x, c: x }
    timestamp: { field: z }
";
        assert_eq!(
            problems(devices),
            [
                "10:14: devices[0].pattern: only used with `format: regex`",
                "11:24: devices[0].fields.c: `c` is not one of `columns`",
                "11:24: devices[0].fields.c: point `x` is already the target of field `a`",
                "12:25: devices[0].timestamp.field: `z` is not one of `columns`",
            ]
        );
    }

    #[test]
    fn type_errors_point_into_fields_and_templates() {
        let devices = "
  - name: re
    kind: serial
    port: /dev/ttyUSB0
    format: regex
    pattern: '(?<t>['
    fields: { t: { point: T } }
    write: { sp: 'SET {x}' }
";
        assert_eq!(
            problems(devices),
            [
                "9:14: devices[0].pattern: invalid regular expression: found unclosed character class",
                "10:27: devices[0].fields.t.point: invalid name `T`, expected 1 to 64 characters of a-z, 0-9, `_` or `-`",
                "11:18: devices[0].write.sp: unknown placeholder `{x}`, expected `{point}` or `{value}`",
            ]
        );
    }
}
