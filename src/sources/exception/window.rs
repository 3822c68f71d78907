//! The maths of one point's `aggregate` window: samples folded into
//! min/max/sum/count/last, windows aligned to the wall clock (multiples of
//! their span since the Unix epoch, so a `1m` window closes at :00).

use serde_json::{Map, Number, Value};

use crate::config::report::{Aggregate, Function};

/// One point's window: the one open, if any.
#[derive(Debug)]
pub struct Window {
    span_ms: i64,
    functions: Vec<Function>,
    open: Option<Open>,
}

/// The samples of the open window, folded.
#[derive(Debug)]
struct Open {
    start: i64,
    min: f64,
    max: f64,
    sum: f64,
    count: u64,
    last: f64,
}

/// A closed window: when it ended (Unix ms) and its summary object.
pub type Closed = (i64, Value);

impl Window {
    pub fn new(aggregate: &Aggregate) -> Window {
        let span_ms = i64::try_from(aggregate.window.get().as_millis()).unwrap_or(i64::MAX);
        let mut functions = aggregate.functions.clone();
        functions.dedup();
        Window {
            span_ms: span_ms.max(1),
            functions,
            open: None,
        }
    }

    /// The start of the window that holds `ts_ms`.
    pub fn start_of(&self, ts_ms: i64) -> i64 {
        ts_ms - ts_ms.rem_euclid(self.span_ms)
    }

    /// When the open window ends, if one is open.
    pub fn end(&self) -> Option<i64> {
        self.open
            .as_ref()
            .map(|o| o.start.saturating_add(self.span_ms))
    }

    /// Adds a sample taken at `ts_ms`; returns the window it closed, if it
    /// falls after the open one. A late sample (before the open window) is
    /// counted in the open window, so that no window is sent twice.
    pub fn add(&mut self, ts_ms: i64, value: f64) -> Option<Closed> {
        if !value.is_finite() {
            return None;
        }
        let start = self.start_of(ts_ms);
        let closed = match &self.open {
            Some(open) if start > open.start => self.take(),
            _ => None,
        };
        match &mut self.open {
            Some(open) => {
                open.min = open.min.min(value);
                open.max = open.max.max(value);
                open.sum += value;
                open.count += 1;
                open.last = value;
            }
            None => {
                self.open = Some(Open {
                    start,
                    min: value,
                    max: value,
                    sum: value,
                    count: 1,
                    last: value,
                });
            }
        }
        closed
    }

    /// Closes the open window if it ended at or before `now_ms`.
    pub fn close_if_ended(&mut self, now_ms: i64) -> Option<Closed> {
        if self.end().is_some_and(|end| end <= now_ms) {
            self.take()
        } else {
            None
        }
    }

    fn take(&mut self) -> Option<Closed> {
        let end = self.end()?;
        let open = self.open.take()?;
        let mut summary = Map::new();
        for function in &self.functions {
            let value = match function {
                Function::Min => number(open.min),
                Function::Max => number(open.max),
                Function::Mean => number(open.sum / open.count as f64),
                Function::Last => number(open.last),
                Function::Count => Value::from(open.count),
            };
            summary.insert(function.as_str().to_owned(), value);
        }
        Some((end, Value::Object(summary)))
    }
}

/// A JSON number, integral when the value is (a register's 12 stays `12`,
/// not `12.0`).
fn number(v: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if v.fract() == 0.0 && v.abs() < EXACT {
        Value::from(v as i64)
    } else {
        Number::from_f64(v).map_or(Value::Null, Value::Number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Duration;
    use serde_json::json;

    fn window(ms: u64, functions: &[Function]) -> Window {
        Window::new(&Aggregate {
            window: Duration::from_millis(ms),
            functions: functions.to_vec(),
        })
    }

    #[test]
    fn windows_align_to_the_clock() {
        let w = window(60_000, &Function::ALL);
        // 10:00:59.999 belongs to the window 10:00:00 - 10:01:00.
        let t = 1_764_842_459_999;
        assert_eq!(w.start_of(t), 1_764_842_400_000);
        assert_eq!(w.start_of(1_764_842_400_000), 1_764_842_400_000);
        assert_eq!(w.start_of(-1), -60_000, "before the epoch too");
    }

    #[test]
    fn a_window_summarises_its_samples_and_closes_on_a_later_one() {
        let mut w = window(1_000, &Function::ALL);
        assert_eq!(w.add(10_000, 3.0), None);
        assert_eq!(w.add(10_400, 1.5), None);
        assert_eq!(w.add(10_999, 6.0), None);
        assert_eq!(w.end(), Some(11_000));
        let (end, summary) = w.add(11_000, 100.0).unwrap();
        assert_eq!(end, 11_000);
        assert_eq!(
            summary,
            json!({"min": 1.5, "max": 6, "mean": 3.5, "last": 6, "count": 3})
        );
        // The new sample opened the next window.
        assert_eq!(w.end(), Some(12_000));
    }

    #[test]
    fn only_the_listed_functions_are_sent() {
        let mut w = window(1_000, &[Function::Max, Function::Count]);
        w.add(0, 2.0);
        w.add(1, 4.0);
        let (_, summary) = w.close_if_ended(1_000).unwrap();
        assert_eq!(summary, json!({"max": 4, "count": 2}));
    }

    #[test]
    fn an_empty_window_sends_nothing_and_a_timer_closes_a_quiet_one() {
        let mut w = window(1_000, &Function::ALL);
        assert_eq!(w.close_if_ended(5_000), None, "nothing sampled");
        w.add(5_100, 1.0);
        assert_eq!(w.close_if_ended(5_999), None, "not over yet");
        let (end, summary) = w.close_if_ended(6_000).unwrap();
        assert_eq!((end, summary["count"].clone()), (6_000, json!(1)));
        assert_eq!(w.close_if_ended(60_000), None, "closed once");
        // After a gap, the next sample opens its own window: the ones in
        // between had no sample and are not sent.
        assert_eq!(w.add(9_500, 2.0), None);
        assert_eq!(w.end(), Some(10_000));
    }

    #[test]
    fn late_samples_join_the_open_window_and_bad_numbers_are_skipped() {
        let mut w = window(1_000, &[Function::Count, Function::Min]);
        w.add(2_500, 5.0);
        assert_eq!(w.add(1_900, 1.0), None, "late: counted in the open window");
        assert_eq!(w.add(2_600, f64::NAN), None);
        let (end, summary) = w.close_if_ended(3_000).unwrap();
        assert_eq!((end, summary), (3_000, json!({"count": 2, "min": 1})));
    }
}
