//! The gateway's time: wall time (what a reading is stamped with) and
//! monotonic time (what timeouts and schedules measure) behind one handle.
//!
//! Every stamp goes through a [`Clock`] so that a test can run the gateway
//! at a chosen date, and so that a Pi whose wall clock is wrong until NTP
//! syncs can be detected and corrected in one place.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// A cheap, cloneable handle: the system's clocks, or a manual one.
#[derive(Debug, Clone, Default)]
pub struct Clock(Source);

#[derive(Debug, Clone, Default)]
enum Source {
    #[default]
    System,
    Manual(Arc<Manual>),
}

/// A clock that moves only when told, for tests.
#[derive(Debug)]
struct Manual {
    /// Milliseconds since the Unix epoch.
    wall_ms: AtomicI64,
    /// Milliseconds since `origin`.
    elapsed_ms: AtomicI64,
    origin: Instant,
}

impl Clock {
    /// The system's wall clock and `Instant`.
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that reads `wall_ms` (Unix epoch milliseconds) until
    /// [`Clock::advance`] moves it.
    pub fn manual(wall_ms: i64) -> Clock {
        Clock(Source::Manual(Arc::new(Manual {
            wall_ms: AtomicI64::new(wall_ms),
            elapsed_ms: AtomicI64::new(0),
            origin: Instant::now(),
        })))
    }

    /// Wall time in milliseconds since the Unix epoch, UTC.
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            Source::System => jiff::Timestamp::now().as_millisecond(),
            Source::Manual(m) => m.wall_ms.load(Relaxed),
        }
    }

    /// Monotonic time: never goes back, whatever the wall clock does.
    pub fn monotonic(&self) -> Instant {
        match &self.0 {
            Source::System => Instant::now(),
            Source::Manual(m) => {
                let elapsed = u64::try_from(m.elapsed_ms.load(Relaxed)).unwrap_or(0);
                m.origin + Duration::from_millis(elapsed)
            }
        }
    }

    /// Moves a manual clock forward, both wall and monotonic time; a
    /// system clock is left alone.
    pub fn advance(&self, by: Duration) {
        if let Source::Manual(m) = &self.0 {
            let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            m.wall_ms.fetch_add(ms, Relaxed);
            m.elapsed_ms.fetch_add(ms, Relaxed);
        }
    }

    /// Sets a manual clock's wall time (a jump, as when NTP syncs); its
    /// monotonic time does not move.
    pub fn set_wall_ms(&self, wall_ms: i64) {
        if let Source::Manual(m) = &self.0 {
            m.wall_ms.store(wall_ms, Relaxed);
        }
    }
}

/// A wall-clock time after which something must not happen any more (a
/// command's `expires_at`), checked by whoever is about to do it.
#[derive(Debug, Clone, Default)]
pub struct Deadline {
    clock: Clock,
    /// Unix epoch milliseconds; `None`: never.
    at_ms: Option<i64>,
}

impl Deadline {
    pub fn new(clock: Clock, at_ms: Option<i64>) -> Deadline {
        Deadline { clock, at_ms }
    }

    /// No deadline at all.
    pub fn never() -> Deadline {
        Deadline::default()
    }

    pub fn passed(&self) -> bool {
        self.at_ms.is_some_and(|at| self.clock.now_ms() >= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_reads_the_current_time() {
        let clock = Clock::system();
        let before = jiff::Timestamp::now().as_millisecond();
        let now = clock.now_ms();
        let after = jiff::Timestamp::now().as_millisecond();
        assert!((before..=after).contains(&now));
        let t0 = clock.monotonic();
        assert!(clock.monotonic() >= t0);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = Clock::manual(1_000);
        let t0 = clock.monotonic();
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(Duration::from_millis(250));
        assert_eq!(clock.now_ms(), 1_250);
        assert_eq!(clock.monotonic() - t0, Duration::from_millis(250));
        // A wall clock jump backwards leaves monotonic time alone.
        clock.set_wall_ms(10);
        assert_eq!(clock.now_ms(), 10);
        assert_eq!(clock.monotonic() - t0, Duration::from_millis(250));
        // Clones share the same time.
        let other = clock.clone();
        other.advance(Duration::from_secs(1));
        assert_eq!(clock.now_ms(), 1_010);
    }

    #[test]
    fn a_deadline_passes_with_the_wall_clock() {
        let clock = Clock::manual(1_000);
        let deadline = Deadline::new(clock.clone(), Some(1_500));
        assert!(!deadline.passed());
        clock.advance(Duration::from_millis(500));
        assert!(deadline.passed());
        assert!(!Deadline::never().passed());
    }
}
