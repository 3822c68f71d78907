//! What a poll hands on: the values it read, and a bad-quality reading
//! when reads fail, once per change of the fault (and every `heartbeat`
//! while it lasts) rather than once per poll. Deadbands and windows are
//! applied after this, for every kind of source alike.

use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::reading::Quality;

/// One poll's result for one point: its value, or why it has none.
pub type PointResult = Result<Value, String>;

/// The fault state of one device.
#[derive(Debug)]
pub struct Publisher {
    names: Vec<String>,
    heartbeat: Duration,
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
    pub fn new(names: impl IntoIterator<Item = String>, heartbeat: Duration) -> Self {
        Publisher {
            names: names.into_iter().collect(),
            heartbeat,
            fault: None,
            fault_published: None,
        }
    }

    /// The fault of the last poll, if any.
    pub fn fault(&self) -> Option<&str> {
        self.fault.as_deref()
    }

    /// Decides what the poll that ended in `outcomes` (one per point, in
    /// point order; `None` for a point not read on purpose) publishes, if
    /// anything. While a fault lasts unchanged, the points that still read
    /// go out as good values without it.
    pub fn publish(
        &mut self,
        outcomes: Vec<Option<PointResult>>,
        now: Instant,
    ) -> Option<Publication> {
        let error = summary(&self.names, &outcomes);
        let values: Map<String, Value> = (self.names.iter())
            .zip(outcomes)
            .filter_map(|(name, outcome)| Some((name.clone(), outcome?.ok()?)))
            .collect();
        let changed = error != self.fault;
        self.fault = error.clone();
        let good = |values| Publication {
            values,
            quality: Quality::Good,
            error: None,
        };
        match error {
            None if values.is_empty() => None,
            None => Some(good(values)),
            Some(error) => {
                let heartbeat = self
                    .fault_published
                    .is_none_or(|at| now.duration_since(at) >= self.heartbeat);
                if !changed && !heartbeat {
                    return (!values.is_empty()).then(|| good(values));
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
        let points = ["power".to_owned(), "energy".to_owned()];
        Publisher::new(points, Duration::from_secs(60))
    }

    fn keys(p: &Option<Publication>) -> Vec<String> {
        p.as_ref()
            .map(|p| p.values.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn every_value_read_is_handed_on() {
        let mut p = publisher();
        let t0 = Instant::now();
        for _ in 0..3 {
            let out = p.publish(vec![Some(Ok(json!(1.0))), Some(Ok(json!(1)))], t0);
            assert_eq!(keys(&out), ["energy", "power"]);
        }
    }

    #[test]
    fn a_lasting_fault_is_published_once_per_change_and_heartbeat() {
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

        // Part of the map fails: the rest is published, marked bad, once;
        // then the points that read go on as good values.
        let part = || vec![Some(Ok(json!(1.0))), Some(Err("exception".into()))];
        let partly = p.publish(part(), at(62)).unwrap();
        assert_eq!(partly.error.as_deref(), Some("energy: exception"));
        assert_eq!(partly.quality, Quality::Bad);
        assert_eq!(keys(&Some(partly)), ["power"]);
        let lasting = p.publish(part(), at(63)).unwrap();
        assert_eq!(
            (lasting.quality, lasting.error.clone()),
            (Quality::Good, None)
        );
        assert_eq!(keys(&Some(lasting)), ["power"]);

        let back = p
            .publish(vec![Some(Ok(json!(1.0))), Some(Ok(json!(2)))], at(64))
            .unwrap();
        assert_eq!(back.quality, Quality::Good);
        assert_eq!(keys(&Some(back)), ["energy", "power"]);
        assert_eq!(p.fault(), None);

        // A point left out on purpose is neither a value nor a fault.
        let skipped = p.publish(vec![Some(Ok(json!(9.0))), None], at(65)).unwrap();
        assert_eq!(skipped.quality, Quality::Good);
        assert_eq!(keys(&Some(skipped)), ["power"]);
    }
}
