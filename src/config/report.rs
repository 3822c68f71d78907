//! What a device sends of its readings, whatever its kind: a point's
//! `deadband` (report by exception) or `aggregate` window, and the device's
//! `heartbeat`. The sources layer applies these in one place.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::config::Duration;

/// The heartbeat when a device does not set one.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(300);

/// Polls without a value before a polled device is reported offline.
pub const POLLS_BEFORE_OFFLINE: u32 = 3;

/// When a device that is not polled is reported offline, unless it says.
pub const DEFAULT_OFFLINE_AFTER: Duration = Duration::from_secs(60);

/// The shortest default `offline_after`: three polls of a device polled
/// every few milliseconds pass in one slow commit of the store, and the
/// device would flap between online and offline.
pub const MIN_DEFAULT_OFFLINE_AFTER: Duration = Duration::from_secs(1);

/// A polled device's `offline_after`: the one set, or three polls (at
/// least [`MIN_DEFAULT_OFFLINE_AFTER`]).
pub fn offline_after_polls(set: Option<Duration>, poll: Duration) -> Duration {
    set.unwrap_or_else(|| {
        let polls = Duration(poll.get().saturating_mul(POLLS_BEFORE_OFFLINE));
        polls.max(MIN_DEFAULT_OFFLINE_AFTER)
    })
}

/// The `offline_after` problem, if any.
pub fn offline_after_problems(set: Option<Duration>) -> Vec<(String, String)> {
    match set {
        Some(d) if d.get().is_zero() => {
            vec![("offline_after".into(), "must be at least 1ms".into())]
        }
        _ => Vec::new(),
    }
}

/// How far a point must move from the value last sent before it is sent
/// again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadband {
    /// In the point's unit; `0` sends on any change.
    Absolute(f64),
    /// Percent of the value last sent (`2%`).
    Percent(f64),
}

const DEADBAND_EXPECTED: &str = "a number 0 or more, or a percentage such as 2%";

impl Deadband {
    /// Whether `new` is far enough from `old` (the value last sent).
    pub fn exceeded(self, old: f64, new: f64) -> bool {
        let band = match self {
            Deadband::Absolute(band) => band,
            Deadband::Percent(percent) => old.abs() * percent / 100.0,
        };
        (new - old).abs() > band
    }

    fn parse(text: &str) -> Result<Deadband, String> {
        let bad = || format!("invalid deadband `{text}`, expected {DEADBAND_EXPECTED}");
        let trimmed = text.trim();
        let (number, percent) = match trimmed.strip_suffix('%') {
            Some(n) => (n.trim_end(), true),
            None => (trimmed, false),
        };
        let value: f64 = number.parse().map_err(|_| bad())?;
        if !value.is_finite() || value < 0.0 {
            return Err(bad());
        }
        Ok(if percent {
            Deadband::Percent(value)
        } else {
            Deadband::Absolute(value)
        })
    }
}

impl fmt::Display for Deadband {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Deadband::Absolute(v) => write!(f, "{v}"),
            Deadband::Percent(v) => write!(f, "{v}%"),
        }
    }
}

impl<'de> Deserialize<'de> for Deadband {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DeadbandVisitor;
        impl Visitor<'_> for DeadbandVisitor {
            type Value = Deadband;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DEADBAND_EXPECTED)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Deadband, E> {
                Deadband::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Deadband, E> {
                Deadband::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Deadband, E> {
                Ok(Deadband::Absolute(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Deadband, E> {
                Deadband::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(DeadbandVisitor)
    }
}

/// `aggregate:` of a point: one summary per window instead of each sample.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    /// Windows are aligned to the wall clock: a `1m` window closes at :00.
    pub window: Duration,
    /// What the summary holds; all five when unset.
    #[serde(default = "Aggregate::all_functions")]
    pub functions: Vec<Function>,
}

impl Aggregate {
    fn all_functions() -> Vec<Function> {
        Function::ALL.to_vec()
    }

    /// Problems of this setting, as (key below `aggregate`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        if self.window.get().is_zero() {
            found.push(("window".into(), "must be at least 1ms".into()));
        }
        if self.functions.is_empty() {
            found.push((
                "functions".into(),
                "expected at least one of min, max, mean, last, count".into(),
            ));
        }
        found
    }
}

/// One summary of a window's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    Min,
    Max,
    Mean,
    Last,
    Count,
}

impl Function {
    pub const ALL: [Function; 5] = [
        Function::Min,
        Function::Max,
        Function::Mean,
        Function::Last,
        Function::Count,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Function::Min => "min",
            Function::Max => "max",
            Function::Mean => "mean",
            Function::Last => "last",
            Function::Count => "count",
        }
    }
}

/// What one point sends.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PointReport {
    pub deadband: Option<Deadband>,
    pub aggregate: Option<Aggregate>,
}

/// What one device sends: its heartbeat, and the rules of its points.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Points with a deadband are sent at least this often.
    pub heartbeat: Duration,
    /// The deadband of points that have no rule of their own (BLE
    /// advertisements, whose measurements are not listed).
    pub deadband: Option<Deadband>,
    /// Point name → its rules; points not listed are sent every reading
    /// (or by `deadband` when it is set).
    pub points: Vec<(String, PointReport)>,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            heartbeat: DEFAULT_HEARTBEAT,
            deadband: None,
            points: Vec::new(),
        }
    }
}

impl Report {
    /// Whether every reading passes unchanged.
    pub fn is_plain(&self) -> bool {
        self.deadband.is_none()
            && self
                .points
                .iter()
                .all(|(_, p)| p.deadband.is_none() && p.aggregate.is_none())
    }
}

/// Problems of a point's `deadband` and `aggregate` keys at `path` (e.g.
/// `points[2]`), as (path, message); `numeric` says whether the point's
/// values are numbers.
pub fn point_problems(path: &str, report: &PointReport, numeric: bool) -> Vec<(String, String)> {
    let mut found = Vec::new();
    if let Some(aggregate) = &report.aggregate {
        if !numeric {
            found.push((
                format!("{path}.aggregate"),
                "only numbers can be aggregated; this point is not numeric".into(),
            ));
        }
        for (key, message) in aggregate.problems() {
            found.push((format!("{path}.aggregate.{key}"), message));
        }
        if report.deadband.is_some() {
            found.push((
                format!("{path}.deadband"),
                "does not apply to an aggregated point (it sends one summary per window)".into(),
            ));
        }
    }
    found
}

/// The `heartbeat` problem, if any.
pub fn heartbeat_problems(heartbeat: Duration) -> Vec<(String, String)> {
    if heartbeat.get().is_zero() {
        vec![("heartbeat".into(), "must be at least 1ms".into())]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, load_str};

    /// (line, column, message) of each problem of a `devices:` section.
    fn problems(devices: &str) -> Vec<(usize, usize, String)> {
        let text = format!("gateway: {{ id: gw }}\nmqtt: {{ url: mqtt://h }}\ndevices:\n{devices}");
        match load_str(&text, "f.yaml") {
            Err(ConfigError::Invalid { problems, .. }) => problems
                .into_iter()
                .map(|p| {
                    let (line, col) = p.mark.map_or((0, 0), |m| (m.line, m.col));
                    (line, col, format!("{}: {}", p.path, p.message))
                })
                .collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn a_bad_deadband_is_reported_at_its_position() {
        let found = problems(
            "  - name: s\n    kind: simulated\n    points:\n      - { name: a, signal: sine, deadband: 2x }\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        let (line, col, message) = &found[0];
        assert_eq!((*line, *col), (7, 44), "{message}");
        assert!(
            message.contains("invalid deadband `2x`, expected a number 0 or more"),
            "{message}"
        );
    }

    #[test]
    fn aggregates_need_numbers_a_window_and_functions() {
        let found = problems(
            "  - name: m\n    kind: modbus\n    tcp: { host: h }\n    heartbeat: 0s\n    points:\n      - { name: on, register: coil, address: 0, aggregate: { window: 1m } }\n      - { name: t, register: input, address: 1, deadband: 1, aggregate: { window: 0s, functions: [] } }\n",
        );
        let texts: Vec<&str> = found.iter().map(|(_, _, t)| t.as_str()).collect();
        assert!(
            texts
                .iter()
                .any(|t| t.starts_with("devices[0].heartbeat: must be at least 1ms")),
            "{texts:?}"
        );
        for expected in [
            "devices[0].points[0].aggregate: only numbers can be aggregated",
            "devices[0].points[1].aggregate.window: must be at least 1ms",
            "devices[0].points[1].aggregate.functions: expected at least one",
            "devices[0].points[1].deadband: does not apply to an aggregated point",
        ] {
            assert!(
                texts.iter().any(|t| t.starts_with(expected)),
                "{expected}\n{texts:?}"
            );
        }
        let on = found
            .iter()
            .find(|(_, _, t)| t.contains("points[0].aggregate"))
            .unwrap();
        assert_eq!(on.0, 9, "at the point's line");
        let unknown = problems(
            "  - name: m\n    kind: modbus\n    tcp: { host: h }\n    points:\n      - { name: u, register: input, address: 2, aggregate: { window: 1m, functions: [median] } }\n",
        );
        assert!(
            unknown[0]
                .2
                .starts_with("devices[0].points[0].aggregate.functions[0]: unknown value `median`"),
            "{unknown:?}"
        );
    }

    #[test]
    fn every_kind_takes_the_keys() {
        let text = "gateway: { id: gw }\nmqtt: { url: mqtt://h }\ndevices:\n\
  - { name: s, kind: simulated, heartbeat: 1m, points: [ { name: a, signal: ramp, deadband: 2%, aggregate: null }, { name: b, signal: ramp, aggregate: { window: 1s, functions: [min, count] } } ] }\n\
  - { name: p, kind: serial, port: /dev/null, format: json, heartbeat: 10m, fields: { t: { point: t, deadband: 0.5 }, h: { point: h, aggregate: { window: 1m } } } }\n\
  - { name: b, kind: ble, address: 'A4:C1:38:00:00:01', decoder: bthome, deadband: 0.2, heartbeat: 15m }\n\
  - { name: m, kind: modbus, tcp: { host: h }, points: [ { name: v, register: input, address: 0, deadband: 0 } ] }\n";
        let config = load_str(text, "f.yaml").unwrap();
        let reports: Vec<Report> = config.devices.iter().map(|d| d.spec().report()).collect();
        assert_eq!(reports[0].heartbeat, Duration::from_secs(60));
        assert_eq!(
            reports[0].points[0].1.deadband,
            Some(Deadband::Percent(2.0))
        );
        assert_eq!(
            reports[0].points[1]
                .1
                .aggregate
                .as_ref()
                .map(|a| a.functions.clone()),
            Some(vec![Function::Min, Function::Count])
        );
        let serial: Vec<&str> = reports[1].points.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(serial, ["h", "t"]);
        assert_eq!(
            reports[1].points[1].1.deadband,
            Some(Deadband::Absolute(0.5))
        );
        assert_eq!(
            reports[1].points[0]
                .1
                .aggregate
                .as_ref()
                .map(|a| a.functions.len()),
            Some(5),
            "all five by default"
        );
        assert_eq!(reports[2].deadband, Some(Deadband::Absolute(0.2)));
        assert_eq!(reports[3].heartbeat, DEFAULT_HEARTBEAT);
        assert_eq!(
            reports[3].points[0].1.deadband,
            Some(Deadband::Absolute(0.0))
        );
    }

    #[test]
    fn a_bad_offline_after_is_reported_at_its_position_for_every_kind() {
        let found = problems(concat!(
            "  - { name: s, kind: simulated, offline_after: 0s, points: [ { name: a, signal: sine } ] }\n",
            "  - { name: p, kind: serial, port: /dev/null, format: json, offline_after: 0ms, fields: { t: t } }\n",
            "  - { name: m, kind: modbus, tcp: { host: h }, offline_after: 0s, points: [ { name: v, register: input, address: 0 } ] }\n",
            "  - { name: b, kind: ble, address: 'A4:C1:38:00:00:01', decoder: bthome, offline_after: soon }\n",
        ));
        let texts: Vec<String> = found
            .iter()
            .map(|(line, _, t)| format!("{line}: {t}"))
            .collect();
        for expected in [
            "4: devices[0].offline_after: must be at least 1ms",
            "5: devices[1].offline_after: must be at least 1ms",
            "6: devices[2].offline_after: must be at least 1ms",
            "7: devices[3].offline_after: invalid duration `soon`",
        ] {
            assert!(
                texts.iter().any(|t| t.starts_with(expected)),
                "{expected}\n{texts:?}"
            );
        }
        assert_eq!(texts.len(), 4, "{texts:?}");
    }

    #[test]
    fn deadbands_parse_as_numbers_or_percentages() {
        assert_eq!(Deadband::parse("2%"), Ok(Deadband::Percent(2.0)));
        assert_eq!(Deadband::parse("0.5"), Ok(Deadband::Absolute(0.5)));
        assert_eq!(Deadband::parse(" 1.5 %"), Ok(Deadband::Percent(1.5)));
        for bad in ["2x", "-1", "%", "", "inf", "NaN%"] {
            let err = Deadband::parse(bad).unwrap_err();
            assert!(err.contains("expected a number 0 or more"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_percent_deadband_is_relative_to_the_value_sent() {
        let band = Deadband::Percent(2.0);
        assert!(!band.exceeded(100.0, 102.0), "2 % of 100 is not beyond");
        assert!(band.exceeded(100.0, 102.5));
        assert!(band.exceeded(-100.0, -97.5), "the size of the value counts");
        assert!(!band.exceeded(10.0, 10.1));
        assert!(band.exceeded(0.0, 0.001), "any change from zero");
        assert!(Deadband::Absolute(0.0).exceeded(1.0, 1.0001));
        assert!(!Deadband::Absolute(0.0).exceeded(1.0, 1.0));
    }
}
