//! Reconnect delays: capped exponential backoff with jitter, so a fleet of
//! gateways does not reconnect in lockstep after a broker restart.
//!
//! A connection the broker accepts is not yet a success: only one that
//! stayed up for `stable_after` and on which the broker acknowledged
//! something resets the backoff. A connection closed within seconds of its
//! CONNACK (another client with the same client id takes the session over,
//! a broker that drops us at once) counts as a failure, so such a link
//! cannot make the gateway retry at full speed.

use std::time::Duration;

/// How long a connection must stay up, by default, to reset the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    stable_after: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            stable_after: STABLE_AFTER,
            failures: 0,
        }
    }

    /// How long a connection must last (and see an ack) to count as a success.
    pub fn stable_after(mut self, stable_after: Duration) -> Backoff {
        self.stable_after = stable_after;
        self
    }

    /// The delay before the next attempt: `min * 2^failures`, capped at
    /// `max`, of which a random half is taken off ("equal jitter"). Every
    /// call counts one more failure, unless a stable connection came between.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Whether a connection that was up for `up_for`, on which the broker
    /// acknowledged something (`acked`), was a stable one.
    pub fn is_stable(&self, up_for: Duration, acked: bool) -> bool {
        acked && up_for >= self.stable_after
    }

    /// A connection the broker had accepted has ended. A stable one resets
    /// the backoff (the next attempt comes after about `min`); any other
    /// counts as a failure, as a refused attempt does. Returns whether it
    /// was stable.
    pub fn connection_ended(&mut self, up_for: Duration, acked: bool) -> bool {
        let stable = self.is_stable(up_for, acked);
        if stable {
            self.failures = 0;
        }
        stable
    }

    /// Starts over at `min`: for links where success is plain (a serial
    /// port opened, a Modbus reply). The MQTT uplink uses
    /// [`Backoff::connection_ended`] instead.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The failures counted since the last stable connection.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// A random delay in `[0, max]`, for the first connection after a start,
/// so that gateways powered up together do not all connect at once.
pub fn start_jitter(max: Duration) -> Duration {
    max.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn within(d: Duration, ceiling: u64) -> bool {
        d >= ms(ceiling / 2) && d <= ms(ceiling)
    }

    #[test]
    fn doubles_within_jitter_and_caps() {
        let mut b = Backoff::new(ms(100), ms(1_000));
        let ceilings = [100, 200, 400, 800, 1_000, 1_000, 1_000];
        for ceiling in ceilings {
            let d = b.next_delay();
            assert!(within(d, ceiling), "{d:?} for {ceiling}");
        }
        assert!(b.connection_ended(STABLE_AFTER, true));
        assert!(b.next_delay() <= ms(100));
    }

    #[test]
    fn only_a_stable_acked_connection_resets() {
        let mut b = Backoff::new(ms(100), ms(10_000)).stable_after(ms(30_000));
        for _ in 0..3 {
            b.next_delay();
        }
        // Up long enough, but the broker never acknowledged anything.
        assert!(!b.connection_ended(ms(60_000), false));
        assert!(within(b.next_delay(), 800));
        // Acked, but closed before it was stable.
        assert!(!b.connection_ended(ms(29_999), true));
        assert!(within(b.next_delay(), 1_600));
        // Up for the whole window and acked: back to the first delay.
        assert!(b.connection_ended(ms(30_000), true));
        assert_eq!(b.failures(), 0);
        assert!(within(b.next_delay(), 100));
    }

    #[test]
    fn connections_closed_right_after_connack_keep_backing_off() {
        // Two clones taking the session from each other: every connection
        // is accepted and closed within a second. Without the stable
        // window each would reset the backoff and retry at once.
        let mut b = Backoff::new(ms(500), ms(60_000));
        let mut waited = Duration::ZERO;
        let mut attempts = 0;
        while waited < Duration::from_secs(30) {
            attempts += 1;
            assert!(!b.connection_ended(ms(800), true));
            waited += b.next_delay() + ms(800);
        }
        assert!(attempts <= 8, "{attempts} attempts in 30 s");
        assert!(b.failures() >= 5);
    }

    #[test]
    fn start_jitter_stays_within_its_bound() {
        for _ in 0..100 {
            assert!(start_jitter(ms(1_000)) <= ms(1_000));
        }
        assert_eq!(start_jitter(Duration::ZERO), Duration::ZERO);
    }
}
