//! What a poll publishes: the values that moved beyond their deadband (or
//! whose heartbeat is due), and a bad-quality reading when reads fail,
//! once per change of the fault rather than once per poll.

use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::reading::Quality;

/// One poll's result for one point: its value, or why it has none.
pub type PointResult = Result<Value, String>;

/// The publishing state of one device.
#[derive(Debug)]
pub struct Publisher {
    names: Vec<String>,
    deadbands: Vec<Option<f64>>,
    heartbeat: Duration,
    /// Last published value of each point, and when.
    last: Vec<Option<(Value, Instant)>>,
    /// The fault of the last poll, if it had one.
    fault: Option<String>,
    /// When a reading that carried the current fault was last published.
    fault_published: Option<Instant>,
}

/// What to publish now.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    pub values: Map<String, Value>,
    pub quality: Quality,
    pub error: Option<String>,
}

impl Publisher {
    pub fn new(
        points: impl IntoIterator<Item = (String, Option<f64>)>,
        heartbeat: Duration,
    ) -> Self {
        let (names, deadbands): (Vec<_>, Vec<_>) = points.into_iter().unzip();
        let last = vec![None; names.len()];
        Publisher {
            names,
            deadbands,
            heartbeat,
            last,
            fault: None,
            fault_published: None,
        }
    }

    /// The fault of the last poll, if any.
    pub fn fault(&self) -> Option<&str> {
        self.fault.as_deref()
    }

    /// Every value the poll read, published or held back by its deadband:
    /// a command that reads a point gets the last poll's value.
    pub fn values_read(&self, outcomes: &[Option<PointResult>]) -> Map<String, Value> {
        self.names
            .iter()
            .zip(outcomes)
            .filter_map(|(name, outcome)| {
                Some((name.clone(), outcome.as_ref()?.as_ref().ok()?.clone()))
            })
            .collect()
    }

    /// Decides what the poll that ended in `outcomes` (one per point, in
    /// point order; `None` for a point not read on purpose) publishes, if
    /// anything.
    pub fn publish(
        &mut self,
        outcomes: Vec<Option<PointResult>>,
        now: Instant,
    ) -> Option<Publication> {
        let error = summary(&self.names, &outcomes);
        let recovered = self.fault.is_some() && error.is_none();
        let mut values = Map::new();
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let Some(outcome) = outcome else {
                continue;
            };
            let Ok(value) = outcome else {
                // Published afresh once it reads again.
                self.last[i] = None;
                continue;
            };
            let due = match (&self.last[i], self.deadbands[i]) {
                (None, _) | (_, None) => true,
                (Some((old, at)), Some(band)) => {
                    recovered
                        || now.duration_since(*at) >= self.heartbeat
                        || moved(old, &value, band)
                }
            };
            if due {
                self.last[i] = Some((value.clone(), now));
                values.insert(self.names[i].clone(), value);
            }
        }
        let changed = error != self.fault;
        self.fault = error.clone();
        match error {
            None if values.is_empty() => None,
            None => Some(Publication {
                values,
                quality: Quality::Good,
                error: None,
            }),
            Some(error) => {
                let heartbeat = self
                    .fault_published
                    .is_none_or(|at| now.duration_since(at) >= self.heartbeat);
                if values.is_empty() && !changed && !heartbeat {
                    return None;
                }
                self.fault_published = Some(now);
                Some(Publication {
                    values,
                    quality: Quality::Bad,
                    error: Some(error),
                })
            }
        }
    }
}

/// Whether `new` differs from `old` by more than `band` (any change for
/// values that are not numbers).
fn moved(old: &Value, new: &Value, band: f64) -> bool {
    match (old.as_f64(), new.as_f64()) {
        (Some(a), Some(b)) => (a - b).abs() > band,
        _ => old != new,
    }
}

/// One text for the failures of a poll: the reason alone when every point
/// failed for it, else the points each reason hit.
fn summary(names: &[String], outcomes: &[Option<PointResult>]) -> Option<String> {
    let read = outcomes.iter().filter(|o| o.is_some()).count();
    let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
    for (name, outcome) in names.iter().zip(outcomes) {
        let Some(Err(reason)) = outcome else { continue };
        match reasons.iter_mut().find(|(r, _)| r == reason) {
            Some((_, points)) => points.push(name),
            None => reasons.push((reason, vec![name])),
        }
    }
    if reasons.is_empty() {
        return None;
    }
    let parts: Vec<String> = reasons
        .into_iter()
        .map(|(reason, points)| {
            if points.len() == read {
                reason.to_owned()
            } else {
                format!("{}: {reason}", points.join(", "))
            }
        })
        .collect();
    Some(parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn publisher() -> Publisher {
        let points = [("power".to_owned(), Some(5.0)), ("energy".to_owned(), None)];
        Publisher::new(points, Duration::from_secs(60))
    }

    fn keys(p: &Option<Publication>) -> Vec<String> {
        p.as_ref()
            .map(|p| p.values.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn deadband_holds_small_moves_until_the_heartbeat() {
        let mut p = publisher();
        let t0 = Instant::now();
        let poll = |p: &mut Publisher, power: f64, secs| {
            p.publish(
                vec![Some(Ok(json!(power))), Some(Ok(json!(1)))],
                t0 + Duration::from_secs(secs),
            )
        };
        assert_eq!(keys(&poll(&mut p, 100.0, 0)), ["energy", "power"]);
        assert_eq!(keys(&poll(&mut p, 104.0, 1)), ["energy"], "within the band");
        assert_eq!(keys(&poll(&mut p, 105.5, 2)), ["energy", "power"]);
        assert_eq!(keys(&poll(&mut p, 105.5, 61)), ["energy"]);
        assert_eq!(
            keys(&poll(&mut p, 105.5, 62)),
            ["energy", "power"],
            "heartbeat"
        );
    }

    #[test]
    fn a_lasting_fault_is_published_once_then_recovery_publishes_everything() {
        let mut p = publisher();
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let timeout = || Some(Err("no answer within 1s".to_owned()));
        p.publish(vec![Some(Ok(json!(1.0))), Some(Ok(json!(1)))], at(0));

        let first = p.publish(vec![timeout(), timeout()], at(1)).unwrap();
        assert_eq!(first.quality, Quality::Bad);
        assert_eq!(first.error.as_deref(), Some("no answer within 1s"));
        assert!(first.values.is_empty());
        assert_eq!(p.publish(vec![timeout(), timeout()], at(2)), None);
        assert!(
            p.publish(vec![timeout(), timeout()], at(61)).is_some(),
            "heartbeat"
        );

        // Part of the map fails: the rest is published, marked bad.
        let partly = p
            .publish(
                vec![Some(Ok(json!(1.0))), Some(Err("exception".into()))],
                at(62),
            )
            .unwrap();
        assert_eq!(partly.error.as_deref(), Some("energy: exception"));
        assert_eq!(keys(&Some(partly)), ["power"]);

        let back = p
            .publish(vec![Some(Ok(json!(1.0))), Some(Ok(json!(2)))], at(63))
            .unwrap();
        assert_eq!(back.quality, Quality::Good);
        assert_eq!(
            keys(&Some(back)),
            ["energy", "power"],
            "all values after recovery"
        );
        assert_eq!(p.fault(), None);

        // A point left out on purpose is neither a value nor a fault.
        let skipped = p.publish(vec![Some(Ok(json!(9.0))), None], at(64)).unwrap();
        assert_eq!(skipped.quality, Quality::Good);
        assert_eq!(keys(&Some(skipped)), ["power"]);
    }

    #[test]
    fn values_read_include_those_the_deadband_holds_back_and_skip_failures() {
        let mut p = publisher();
        let t0 = Instant::now();
        p.publish(vec![Some(Ok(json!(100.0))), Some(Ok(json!(1)))], t0);
        let poll = vec![Some(Ok(json!(101.0))), Some(Err("exception 2".to_owned()))];
        let read = p.values_read(&poll);
        let published = p.publish(poll, t0 + Duration::from_secs(1)).unwrap();
        assert!(published.values.is_empty(), "within the band");
        assert_eq!(read, json!({"power": 101.0}).as_object().unwrap().clone());
    }

    #[test]
    fn bools_and_strings_publish_on_any_change() {
        let mut p = Publisher::new([("on".to_owned(), Some(0.0))], Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(p.publish(vec![Some(Ok(json!(true)))], t0).is_some());
        assert!(p.publish(vec![Some(Ok(json!(true)))], t0).is_none());
        assert!(p.publish(vec![Some(Ok(json!(false)))], t0).is_some());
    }
}
