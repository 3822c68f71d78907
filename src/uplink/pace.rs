//! Bounds what outside messages can make the uplink do again and again:
//! every `homeassistant/status` "online" asks for all the discovery
//! messages, every Sparkplug NCMD rebirth for all the births. A flood of
//! them (a looping automation, a misbehaving host) would otherwise keep
//! the link busy with the same messages and starve telemetry. Asks that
//! come too soon after a pass are coalesced into one pass when its time
//! comes: the last ask is always answered, at most once per period.

use tokio::time::{Duration, Instant};

pub struct Pace {
    every: Duration,
    last: Option<Instant>,
    /// An ask came too soon: a pass is owed at `last + every`.
    owed: bool,
}

impl Pace {
    pub fn new(every: Duration) -> Pace {
        Pace {
            every,
            last: None,
            owed: false,
        }
    }

    /// A pass is asked for: true when it may go now (it is then taken as
    /// done); false when it is owed for later (already owed: coalesced).
    pub fn ask(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|last| now < last + self.every) {
            self.owed = true;
            false
        } else {
            self.done(now);
            true
        }
    }

    /// A pass went out for another reason (a new configuration, a new
    /// connection): it answers what was owed.
    pub fn done(&mut self, now: Instant) {
        self.last = Some(now);
        self.owed = false;
    }

    /// When the owed pass may go, if one is owed.
    pub fn due(&self) -> Option<Instant> {
        match (self.owed, self.last) {
            (true, Some(last)) => Some(last + self.every),
            _ => None,
        }
    }

    /// True (and taken as done) when the owed pass may go now.
    pub fn take_due(&mut self, now: Instant) -> bool {
        if self.due().is_some_and(|due| now >= due) {
            self.done(now);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_in_a_burst_make_one_pass_now_and_one_when_the_period_is_up() {
        let t0 = Instant::now();
        let every = Duration::from_secs(2);
        let mut pace = Pace::new(every);
        assert!(pace.ask(t0));
        assert_eq!(pace.due(), None);
        let mut passes = 1;
        for i in 1..1_000u64 {
            passes += u32::from(pace.ask(t0 + Duration::from_millis(i)));
        }
        assert_eq!(passes, 1);
        assert_eq!(pace.due(), Some(t0 + every));
        assert!(!pace.take_due(t0 + Duration::from_millis(1_999)));
        assert!(pace.take_due(t0 + every));
        assert_eq!(pace.due(), None);
        // Nothing more was asked: nothing more is owed.
        assert!(!pace.take_due(t0 + every * 3));
        // After a quiet period, an ask goes at once.
        assert!(pace.ask(t0 + every * 3));
    }

    #[test]
    fn a_pass_for_another_reason_answers_what_was_owed() {
        let t0 = Instant::now();
        let mut pace = Pace::new(Duration::from_secs(1));
        assert!(pace.ask(t0));
        assert!(!pace.ask(t0 + Duration::from_millis(10)));
        pace.done(t0 + Duration::from_millis(20));
        assert_eq!(pace.due(), None);
    }
}
