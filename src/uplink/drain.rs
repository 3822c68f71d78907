//! `mqtt.drain_rate`: a backlog is replayed politely. After an outage a
//! whole fleet reconnects at once, each gateway with hours of readings;
//! sent as fast as the link allows, they would hammer the broker (AWS IoT
//! Core takes 100 publishes per second per connection). Only the backlog
//! is paced: rows stored before the connection came up. A live reading
//! goes at once, ahead of the backlog, when no older reading of its device
//! is still waiting (each device's readings stay in order).

use std::collections::HashSet;
use std::time::Instant;

use super::throttle::Throttle;

/// Ready messages looked at for a live one to send ahead of the backlog.
const SCAN: usize = 1_000;

/// A ready message as the drain sees it.
pub struct Candidate<'a> {
    /// The `seq` of its (first) row.
    pub seq: i64,
    pub device: &'a str,
    /// Its packet id would be free (see `inflight.rs`).
    pub can_send: bool,
}

#[derive(Debug)]
pub struct Drain {
    throttle: Option<Throttle>,
    /// Rows below this `seq` were stored before the connection came up.
    backlog_end: i64,
}

impl Drain {
    /// `per_second` 0: no limit.
    pub fn new(per_second: u32, now: Instant) -> Drain {
        Drain {
            throttle: Throttle::new(per_second, now),
            backlog_end: i64::MAX,
        }
    }

    /// The connection is up: rows from `next_seq` on are live.
    pub fn connected(&mut self, next_seq: i64) {
        self.backlog_end = next_seq;
    }

    /// Whether the row `seq` was stored before this connection came up.
    pub fn is_backlog(&self, seq: i64) -> bool {
        seq < self.backlog_end
    }

    /// Which of the ready messages (in order) to send next, if any; takes
    /// a token when it is backlog.
    pub fn pick<'a>(
        &mut self,
        mut ready: impl Iterator<Item = Candidate<'a>>,
        now: Instant,
    ) -> Option<usize> {
        let first = ready.next()?;
        if !first.can_send {
            return None;
        }
        let Some(throttle) = self.throttle.as_mut() else {
            return Some(0);
        };
        if first.seq >= self.backlog_end || throttle.take(1, now) == 1 {
            return Some(0);
        }
        // The backlog waits for a token: a live message may go ahead if no
        // older message of its device waits before it.
        let mut waiting: HashSet<&str> = HashSet::from([first.device]);
        for (i, c) in ready.enumerate().take(SCAN) {
            if c.seq < self.backlog_end {
                waiting.insert(c.device);
            } else if c.can_send && !waiting.contains(c.device) {
                return Some(i + 1);
            } else {
                waiting.insert(c.device);
            }
        }
        None
    }

    /// When the backlog may go on, if it is being paced.
    pub fn next_at(&self, first_seq: i64, now: Instant) -> Option<Instant> {
        match &self.throttle {
            Some(t) if first_seq < self.backlog_end => Some(t.next_at(now)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(items: &[(i64, &'static str)]) -> impl Iterator<Item = Candidate<'static>> {
        items.iter().copied().map(|(seq, device)| Candidate {
            seq,
            device,
            can_send: true,
        })
    }

    #[test]
    fn the_backlog_is_paced_and_live_readings_of_other_devices_pass() {
        let now = Instant::now();
        // 10 per second: a burst of one token.
        let mut drain = Drain::new(10, now);
        drain.connected(100);
        let queue = [(1, "a"), (2, "b"), (100, "a"), (101, "c")];
        assert_eq!(drain.pick(ready(&queue), now), Some(0), "a token");
        // No token left: `a` has backlog waiting, `c` has none.
        assert_eq!(drain.pick(ready(&queue), now), Some(3));
        assert_eq!(drain.pick(ready(&[(2, "b"), (100, "b")]), now), None);
        assert!(drain.next_at(2, now).is_some());
        assert!(drain.next_at(100, now).is_none());
        // A tenth of a second later, the backlog goes on.
        let later = now + std::time::Duration::from_millis(100);
        assert_eq!(drain.pick(ready(&queue[1..]), later), Some(0));
        // Live messages go at once.
        assert_eq!(drain.pick(ready(&[(100, "a")]), now), Some(0));
    }

    #[test]
    fn without_a_rate_or_a_free_id_nothing_is_held_or_reordered() {
        let now = Instant::now();
        let mut drain = Drain::new(0, now);
        drain.connected(100);
        assert_eq!(drain.pick(ready(&[(1, "a"), (2, "a")]), now), Some(0));
        let busy = [Candidate {
            seq: 1,
            device: "a",
            can_send: false,
        }];
        assert_eq!(drain.pick(busy.into_iter(), now), None);
        assert_eq!(drain.pick(ready(&[]), now), None);
    }
}
