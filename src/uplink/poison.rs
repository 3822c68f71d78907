//! Rows the broker will never take must not stop the rows behind them.
//!
//! A broker that receives a packet it will not take (too large, denied by
//! an ACL) often just closes the connection, MQTT 3.1.1 having no way to
//! say why. The row would then go first again after every reconnect, and
//! nothing else would ever be sent. So when the broker closes a connection
//! while publishes wait for their first ack, each of them counts an
//! attempt, and with several in flight the next connection sends that
//! many one at a time, so that a good row is acked (and deleted) and the
//! culprit is caught alone. Only a close right after the
//! publish was written counts ([`PIN_WINDOW`]): a broker that closes on a
//! packet does so as it reads it, while a restart or a client stealing our
//! client id closes at any moment. A row pinned `max_attempts` times
//! goes to the dead letters (the count is kept in the store, so restarts
//! do not reset it). A timeout or a blackhole never counts; a reset counts
//! only within the window, and a good row resent after a reconnect is
//! acked at once, so a flapping link does not pin the same row again.
//!
//! Sizes are checked before sending, against `mqtt.max_packet_size` and
//! the MQTT 5 broker's own limit, and the gateway learns from the broker:
//! once a row of S bytes was dead-lettered because the broker closed on
//! it, rows of S bytes or more count as too large too (until a restart).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::store::RowKey;

/// How soon after a publish was written a clean close is blamed on it.
pub const PIN_WINDOW: Duration = Duration::from_secs(1);

/// A publish the broker had not acknowledged when it closed: its rows, its
/// size on the wire, and how long before the close it was written.
pub type Suspect = (Vec<RowKey>, usize, Duration);

/// What survives from one connection to the next.
#[derive(Debug, Default)]
pub struct PoisonWatch {
    /// Publishes still to send one at a time to find the culprit.
    pub probe: usize,
    /// The smallest publish the broker closed the connection on until its
    /// row was dead-lettered.
    pub oversize_from: Option<usize>,
    pub refusals: RefusalLog,
}

/// How often refusals for a reason already logged are summed up in a line.
pub const REFUSAL_SUMMARY: Duration = Duration::from_secs(60);

/// Reasons logged one by one at most; more are summed up together.
const REFUSAL_REASONS: usize = 16;

/// Refusals of readings, for the log: a broker that refuses a device's
/// readings (an ACL, a quota) refuses every one of them, and a line per
/// refusal would fill the journal. The first refusal for a reason is
/// logged, later ones are summed up every [`REFUSAL_SUMMARY`]; every
/// refused reading is in the dead letters all the same.
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// Per reason: when it was last logged, and the readings refused since.
    reasons: HashMap<String, (Instant, usize)>,
}

impl RefusalLog {
    /// `n` readings were refused for `reason`: the line to log now, if any.
    pub fn refused(&mut self, n: usize, reason: &str, now: Instant) -> Option<String> {
        // Sizes and the like in a reason would make every refusal new.
        let key = if self.reasons.contains_key(reason) || self.reasons.len() < REFUSAL_REASONS {
            reason
        } else {
            "other reasons"
        };
        let Some((logged, since)) = self.reasons.get_mut(key) else {
            self.reasons.insert(key.to_owned(), (now, 0));
            return Some(format!(
                "the broker refused {n} reading(s) ({reason}): moved to the dead letters; \
                 more for this reason are summed up every {}s",
                REFUSAL_SUMMARY.as_secs()
            ));
        };
        *since += n;
        let elapsed = now.saturating_duration_since(*logged);
        if elapsed < REFUSAL_SUMMARY {
            return None;
        }
        let line = format!(
            "the broker refused {since} more reading(s) in {}s ({key}): moved to the dead letters",
            elapsed.as_secs()
        );
        (*logged, *since) = (now, 0);
        Some(line)
    }
}

impl PoisonWatch {
    /// The broker closed the connection while `suspects` (oldest first)
    /// waited for their first ack: returns the publishes to count an
    /// attempt on, those written within [`PIN_WINDOW`] of the close. With
    /// more than one in flight, the next connection sends that many one
    /// at a time, so that the culprit is found alone.
    pub fn after_close(&mut self, suspects: Vec<Suspect>) -> Vec<(Vec<RowKey>, usize)> {
        if suspects.len() > 1 {
            self.probe = suspects.len();
        }
        suspects
            .into_iter()
            .filter(|(_, _, age)| *age <= PIN_WINDOW)
            .map(|(keys, size, _)| (keys, size))
            .collect()
    }

    /// The row of `size` bytes was dead-lettered after closes: as large or
    /// larger is too large from now on.
    pub fn learned_oversize(&mut self, size: usize) {
        self.oversize_from = Some(self.oversize_from.map_or(size, |s| s.min(size)));
    }

    /// Bytes a packet may have: the configured and the broker's limit, and
    /// below what the broker closed on.
    pub fn limit(&self, configured: usize, broker: Option<u32>) -> usize {
        let broker = broker.map_or(usize::MAX, |b| usize::try_from(b).unwrap_or(usize::MAX));
        let learned = self
            .oversize_from
            .map_or(usize::MAX, |s| s.saturating_sub(1));
        configured.min(broker).min(learned)
    }
}

/// Bytes a PUBLISH of `body` to `topic` takes on the wire, at most: fixed
/// header (up to 5), topic (2 + its length), packet id (2), MQTT 5
/// properties (up to 8, plus the correlation data).
pub fn packet_size(topic: &str, body: usize, correlation: usize) -> usize {
    5 + 2 + topic.len() + 2 + 8 + correlation + body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::Priority;

    fn key(seq: i64) -> RowKey {
        RowKey {
            priority: Priority::Normal,
            seq,
        }
    }

    #[test]
    fn young_suspects_are_pinned_and_several_are_probed_one_at_a_time() {
        let mut watch = PoisonWatch::default();
        let now = Duration::from_millis(5);
        assert!(watch.after_close(vec![]).is_empty());
        assert_eq!(
            watch.after_close(vec![(vec![key(1)], 10, now)]),
            [(vec![key(1)], 10)]
        );
        assert_eq!(watch.probe, 0);
        // Written long before the close: not what the broker closed on.
        assert!(
            watch
                .after_close(vec![(vec![key(1)], 10, PIN_WINDOW * 2)])
                .is_empty()
        );
        let three = vec![
            (vec![key(1)], 10, now),
            (vec![key(2)], 20, PIN_WINDOW * 2),
            (vec![key(3)], 30, now),
        ];
        assert_eq!(
            watch.after_close(three),
            [(vec![key(1)], 10), (vec![key(3)], 30)]
        );
        // The next connection sends three one at a time.
        assert_eq!(watch.probe, 3);
    }

    #[test]
    fn refusals_are_logged_once_per_reason_then_summed_up() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let acl = "0x87 Not authorized";
        let first = log.refused(1, acl, t0).unwrap();
        assert!(first.starts_with("the broker refused 1 reading(s) (0x87 Not authorized)"));
        // Twice a second for a minute: nothing more until the summary.
        for i in 1..120 {
            assert_eq!(log.refused(1, acl, at(i * 500)), None, "{i}");
        }
        let summary = log.refused(1, acl, at(60_000)).unwrap();
        assert!(
            summary
                .starts_with("the broker refused 120 more reading(s) in 60s (0x87 Not authorized)"),
            "{summary}"
        );
        assert_eq!(log.refused(1, acl, at(60_500)), None);
        // Another reason is news.
        assert!(log.refused(2, "0x97 Quota exceeded", at(61_000)).is_some());
        // Reasons that differ in every line are summed up together.
        for size in 0..100 {
            log.refused(1, &format!("{size} bytes exceed the limit"), at(61_000));
        }
        assert!(log.reasons.len() <= REFUSAL_REASONS + 1);
    }

    #[test]
    fn the_limit_is_the_lowest_of_config_broker_and_experience() {
        let mut watch = PoisonWatch::default();
        assert_eq!(watch.limit(1000, None), 1000);
        assert_eq!(watch.limit(1000, Some(500)), 500);
        watch.learned_oversize(800);
        watch.learned_oversize(900);
        assert_eq!(watch.limit(1000, None), 799);
        assert_eq!(watch.limit(1000, Some(500)), 500);
        assert!(packet_size("a/b", 100, 0) >= 100 + 2 + 3 + 2);
    }
}
