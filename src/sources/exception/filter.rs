//! One device's report-by-exception state: which values are sent now
//! (deadband, heartbeat, recovery after a fault) and which go into a
//! window instead.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::window::{Closed, Window};
use crate::config::report::{Deadband, Report};
use crate::reading::{Delivery, Name, Quality, Reading};

/// Points outside the configuration (BLE measurements named by the
/// decoder) whose last value is kept for a device-wide deadband; others
/// beyond this are sent every time, so a flood of names costs no memory.
const MAX_UNLISTED: usize = 64;

/// The value of a point last sent, and when.
#[derive(Debug)]
struct Sent {
    value: Value,
    at: Instant,
}

#[derive(Debug)]
pub struct DeviceFilter {
    device: Name,
    delivery: Delivery,
    heartbeat: Duration,
    /// For points that have no rule of their own.
    default_deadband: Option<Deadband>,
    deadbands: HashMap<String, Deadband>,
    windows: HashMap<String, Window>,
    sent: HashMap<String, Sent>,
    /// The last reading was bad: the next good one sends every value.
    faulted: bool,
    /// `ts_ms - mono_ms` and the sync mark of the last reading: a window is
    /// stamped at its end, and its monotonic time and mark follow from the
    /// last sample's.
    last_clock: (i64, bool),
}

impl DeviceFilter {
    pub fn new(device: Name, delivery: Delivery, report: &Report) -> DeviceFilter {
        let mut deadbands = HashMap::new();
        let mut windows = HashMap::new();
        for (point, rules) in &report.points {
            if let Some(aggregate) = &rules.aggregate {
                windows.insert(point.clone(), Window::new(aggregate));
            } else if let Some(band) = rules.deadband {
                deadbands.insert(point.clone(), band);
            }
        }
        DeviceFilter {
            device,
            delivery,
            heartbeat: report.heartbeat.get(),
            default_deadband: report.deadband,
            deadbands,
            windows,
            sent: HashMap::new(),
            faulted: false,
            last_clock: (0, false),
        }
    }

    pub fn has_windows(&self) -> bool {
        !self.windows.is_empty()
    }

    /// What to store of `reading`, in order: the windows it closed, then
    /// the reading with the values that are due (none when nothing is).
    /// A bad reading is kept whole, error and values, except the values of
    /// aggregated points, which go to their windows.
    pub fn apply(&mut self, mut reading: Reading, now: Instant) -> Vec<Reading> {
        let mut closed = Vec::new();
        let values = std::mem::take(&mut reading.values);
        let recovered = std::mem::replace(&mut self.faulted, reading.quality == Quality::Bad);
        self.last_clock = (reading.ts_ms - reading.mono_ms, reading.unsynced);
        for (point, value) in values {
            if let Some(window) = self.windows.get_mut(&point) {
                // Not a number: nothing to summarise.
                if let Some(v) = value.as_f64() {
                    closed.extend(window.add(reading.ts_ms, v).map(|c| (point, c)));
                }
                continue;
            }
            if reading.quality == Quality::Bad || recovered || self.due(&point, &value, now) {
                self.remember(point.clone(), value.clone(), now);
                reading.values.insert(point, value);
            }
        }
        let mut out = self.window_readings(closed);
        if reading.quality == Quality::Bad || !reading.values.is_empty() {
            out.push(reading);
        }
        out
    }

    /// The windows that ended at or before `now_ms`, as readings.
    pub fn close_ended(&mut self, now_ms: i64) -> Vec<Reading> {
        let closed = (self.windows.iter_mut())
            .filter_map(|(point, w)| w.close_if_ended(now_ms).map(|c| (point.clone(), c)))
            .collect();
        self.window_readings(closed)
    }

    /// The earliest end of an open window.
    pub fn next_close(&self) -> Option<i64> {
        self.windows.values().filter_map(Window::end).min()
    }

    /// Whether a point's value is to be sent: no deadband, never sent,
    /// beyond its deadband, or its heartbeat is due.
    fn due(&self, point: &str, value: &Value, now: Instant) -> bool {
        let Some(band) = self.deadband(point) else {
            return true;
        };
        let Some(sent) = self.sent.get(point) else {
            return true;
        };
        if now.saturating_duration_since(sent.at) >= self.heartbeat {
            return true;
        }
        match (sent.value.as_f64(), value.as_f64()) {
            (Some(old), Some(new)) => band.exceeded(old, new),
            // Strings, bools, or a change of type: any difference.
            _ => sent.value != *value,
        }
    }

    fn deadband(&self, point: &str) -> Option<Deadband> {
        self.deadbands.get(point).copied().or(self.default_deadband)
    }

    fn remember(&mut self, point: String, value: Value, now: Instant) {
        if self.deadband(&point).is_none() {
            return; // sent every time: nothing to compare with
        }
        let listed = self.deadbands.contains_key(&point);
        if listed || self.sent.contains_key(&point) || self.sent.len() < MAX_UNLISTED {
            self.sent.insert(point, Sent { value, at: now });
        }
    }

    /// Closed windows as readings: one per window end, stamped with it.
    fn window_readings(&self, closed: Vec<(String, Closed)>) -> Vec<Reading> {
        let mut by_end: BTreeMap<i64, Map<String, Value>> = BTreeMap::new();
        for (point, (end, summary)) in closed {
            by_end.entry(end).or_default().insert(point, summary);
        }
        by_end
            .into_iter()
            .map(|(ts_ms, values)| Reading {
                device: self.device.clone(),
                ts_ms,
                mono_ms: ts_ms - self.last_clock.0,
                unsynced: self.last_clock.1,
                values,
                quality: Quality::Good,
                error: None,
                delivery: self.delivery,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::report::{Aggregate, Function, PointReport};
    use crate::reading::{Priority, Qos};
    use serde_json::json;

    const DELIVERY: Delivery = Delivery {
        qos: Qos::AtLeastOnce,
        priority: Priority::Normal,
    };

    fn filter(points: &[(&str, Option<Deadband>)], default: Option<Deadband>) -> DeviceFilter {
        let report = Report {
            heartbeat: crate::config::Duration::from_secs(60),
            deadband: default,
            points: (points.iter())
                .map(|(n, d)| {
                    let rules = PointReport {
                        deadband: *d,
                        aggregate: None,
                    };
                    (n.to_string(), rules)
                })
                .collect(),
        };
        DeviceFilter::new(Name::parse("d").unwrap(), DELIVERY, &report)
    }

    fn reading(ts_ms: i64, values: Value, error: Option<&str>) -> Reading {
        let Value::Object(values) = values else {
            panic!("not an object")
        };
        Reading {
            device: Name::parse("d").unwrap(),
            ts_ms,
            mono_ms: ts_ms,
            unsynced: false,
            values,
            quality: if error.is_some() {
                Quality::Bad
            } else {
                Quality::Good
            },
            error: error.map(str::to_owned),
            delivery: DELIVERY,
        }
    }

    /// The values sent of each reading `apply` returned.
    fn sent(f: &mut DeviceFilter, at: Instant, values: Value) -> Vec<Value> {
        f.apply(reading(0, values, None), at)
            .into_iter()
            .map(|r| Value::Object(r.values))
            .collect()
    }

    #[test]
    fn deadband_holds_small_moves_until_the_heartbeat() {
        let mut f = filter(&[("power", Some(Deadband::Absolute(5.0)))], None);
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let poll = |f: &mut DeviceFilter, power: f64, s| {
            sent(f, at(s), json!({"power": power, "energy": 1}))
        };
        assert_eq!(
            poll(&mut f, 100.0, 0),
            [json!({"power": 100.0, "energy": 1})]
        );
        assert_eq!(
            poll(&mut f, 104.0, 1),
            [json!({"energy": 1})],
            "within the band"
        );
        assert_eq!(
            poll(&mut f, 105.5, 2),
            [json!({"power": 105.5, "energy": 1})]
        );
        assert_eq!(poll(&mut f, 105.5, 61), [json!({"energy": 1})]);
        assert_eq!(
            poll(&mut f, 105.5, 62),
            [json!({"power": 105.5, "energy": 1})],
            "heartbeat"
        );
    }

    #[test]
    fn a_reading_with_nothing_due_is_not_stored() {
        let mut f = filter(&[("t", Some(Deadband::Percent(2.0)))], None);
        let t0 = Instant::now();
        assert_eq!(sent(&mut f, t0, json!({"t": 50.0})).len(), 1);
        assert!(
            sent(&mut f, t0, json!({"t": 50.9})).is_empty(),
            "< 2 % of 50"
        );
        assert_eq!(sent(&mut f, t0, json!({"t": 51.1})), [json!({"t": 51.1})]);
    }

    #[test]
    fn strings_and_bools_are_sent_when_they_differ() {
        let mut f = filter(
            &[
                ("on", Some(Deadband::Absolute(10.0))),
                ("mode", Some(Deadband::Absolute(10.0))),
            ],
            None,
        );
        let t0 = Instant::now();
        assert_eq!(
            sent(&mut f, t0, json!({"on": true, "mode": "auto"})).len(),
            1
        );
        assert!(sent(&mut f, t0, json!({"on": true, "mode": "auto"})).is_empty());
        assert_eq!(
            sent(&mut f, t0, json!({"on": false, "mode": "auto"})),
            [json!({"on": false})]
        );
        assert_eq!(
            sent(&mut f, t0, json!({"on": false, "mode": "eco"})),
            [json!({"mode": "eco"})]
        );
        assert_eq!(
            sent(&mut f, t0, json!({"on": 1, "mode": "eco"})),
            [json!({"on": 1})],
            "type changed"
        );
    }

    #[test]
    fn bad_readings_pass_whole_and_recovery_sends_every_value() {
        let band = Some(Deadband::Absolute(0.0));
        let mut f = filter(&[("a", band), ("b", band)], None);
        let t0 = Instant::now();
        sent(&mut f, t0, json!({"a": 1, "b": 2}));
        let bad = f.apply(reading(5, json!({"a": 1}), Some("b: timeout")), t0);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].error.as_deref(), Some("b: timeout"));
        assert_eq!(
            Value::Object(bad[0].values.clone()),
            json!({"a": 1}),
            "not filtered"
        );
        let empty = f.apply(reading(6, json!({}), Some("timeout")), t0);
        assert_eq!(empty.len(), 1, "an error with no values is still stored");
        assert_eq!(
            sent(&mut f, t0, json!({"a": 1, "b": 2})),
            [json!({"a": 1, "b": 2})],
            "recovery"
        );
        assert!(sent(&mut f, t0, json!({"a": 1, "b": 2})).is_empty());
    }

    #[test]
    fn a_device_wide_deadband_covers_unlisted_points_within_a_bound() {
        let mut f = filter(&[], Some(Deadband::Absolute(1.0)));
        let t0 = Instant::now();
        sent(&mut f, t0, json!({"temperature": 20.0}));
        assert!(sent(&mut f, t0, json!({"temperature": 20.5})).is_empty());
        for i in 0..200 {
            sent(&mut f, t0, json!({ format!("p{i}"): 1 }));
        }
        assert!(f.sent.len() <= MAX_UNLISTED);
        // Beyond the bound a point is sent every time rather than tracked.
        assert_eq!(sent(&mut f, t0, json!({"p199": 1})), [json!({"p199": 1})]);
    }

    #[test]
    fn aggregated_points_go_to_their_window_the_others_keep_their_rules() {
        let report = Report {
            heartbeat: crate::config::Duration::from_secs(60),
            deadband: None,
            points: vec![(
                "avg".into(),
                PointReport {
                    deadband: None,
                    aggregate: Some(Aggregate {
                        window: crate::config::Duration::from_secs(1),
                        functions: vec![Function::Mean, Function::Count],
                    }),
                },
            )],
        };
        let mut f = DeviceFilter::new(Name::parse("d").unwrap(), DELIVERY, &report);
        let t0 = Instant::now();
        let out = f.apply(reading(1_200, json!({"avg": 1, "raw": 1}), None), t0);
        assert_eq!(out.len(), 1);
        assert_eq!(Value::Object(out[0].values.clone()), json!({"raw": 1}));
        assert!(
            f.apply(reading(1_700, json!({"avg": 2}), None), t0)
                .is_empty()
        );
        assert_eq!(f.next_close(), Some(2_000));
        let out = f.apply(reading(2_100, json!({"avg": 10, "raw": 2}), None), t0);
        assert_eq!(out.len(), 2, "the closed window, then the reading");
        assert_eq!(out[0].ts_ms, 2_000);
        assert_eq!(
            Value::Object(out[0].values.clone()),
            json!({"avg": {"mean": 1.5, "count": 2}})
        );
        assert_eq!(Value::Object(out[1].values.clone()), json!({"raw": 2}));
        assert!(f.close_ended(2_999).is_empty());
        let quiet = f.close_ended(3_000);
        assert_eq!(
            Value::Object(quiet[0].values.clone()),
            json!({"avg": {"mean": 10, "count": 1}})
        );
    }
}
