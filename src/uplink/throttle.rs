//! `mqtt.max_messages_per_second`: a token bucket, so that a gateway
//! draining a week of backlog never floods a broker that bills or drops
//! per message.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Throttle {
    rate: f64,
    /// A tenth of a second's worth: enough to keep publishes flowing in
    /// small bursts, small enough that any window stays near the rate.
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Throttle {
    /// `None` for 0, which means no limit.
    pub fn new(per_second: u32, now: Instant) -> Option<Throttle> {
        (per_second > 0).then(|| {
            let rate = f64::from(per_second);
            let burst = (rate / 10.0).max(1.0);
            Throttle {
                rate,
                burst,
                tokens: burst,
                last: now,
            }
        })
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// How many of `wanted` messages may go now; takes their tokens.
    pub fn take(&mut self, wanted: usize, now: Instant) -> usize {
        self.refill(now);
        let granted = (self.tokens.floor() as usize).min(wanted);
        self.tokens -= granted as f64;
        granted
    }

    /// Gives back a token taken for a message that did not go.
    pub fn refund(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.burst);
    }

    /// When the next message may go.
    pub fn next_at(&self, now: Instant) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        now + Duration::from_secs_f64(missing / self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_than_the_rate_plus_a_small_burst_in_any_window() {
        let start = Instant::now();
        let mut t = Throttle::new(100, start).unwrap();
        // Ask every millisecond for ten seconds; count per 1 s window.
        let mut sent = Vec::new();
        for ms in 0..10_000u64 {
            let now = start + Duration::from_millis(ms);
            let n = t.take(1_000, now);
            sent.extend(std::iter::repeat_n(ms, n));
        }
        assert!(
            (990..=1_010).contains(&sent.len()),
            "{} in 10 s at 100/s",
            sent.len()
        );
        for from in (0..9_000).step_by(250) {
            let in_window = sent
                .iter()
                .filter(|&&ms| ms >= from && ms < from + 1_000)
                .count();
            assert!(in_window <= 110, "{in_window} in the second from {from} ms");
        }
    }

    #[test]
    fn next_at_points_to_when_a_token_is_back() {
        let start = Instant::now();
        let mut t = Throttle::new(10, start).unwrap();
        assert_eq!(t.take(5, start), 1);
        assert_eq!(t.take(5, start), 0);
        let at = t.next_at(start);
        assert_eq!(at - start, Duration::from_millis(100));
        assert_eq!(t.take(5, at), 1);
        assert!(Throttle::new(0, start).is_none());
    }
}
