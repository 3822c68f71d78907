//! The gateway's time: wall time (what a reading is stamped with) and
//! monotonic time (what timeouts and schedules measure) behind one handle.
//!
//! Every stamp goes through a [`Clock`] so that a test can run the gateway
//! at a chosen date, and so that a Pi whose wall clock is wrong until NTP
//! syncs can be detected and corrected in one place. A Pi has no real-time
//! clock: until NTP syncs, its wall clock says whatever fake-hwclock saved
//! at the last shutdown. So a reading also keeps the time since boot
//! (`CLOCK_BOOTTIME`, which keeps counting through a suspend) and the id of
//! the boot; once the clock syncs, `wall = mono + (wall_now - mono_now)`
//! gives the true time of every reading taken since this boot.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A cheap, cloneable handle: the system's clocks, or a manual one.
#[derive(Debug, Clone)]
pub struct Clock(Source);

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

#[derive(Debug, Clone)]
enum Source {
    System(Arc<System>),
    Manual(Arc<Manual>),
}

/// The system's clocks, and what the last sync check found.
#[derive(Debug)]
struct System {
    synced: AtomicBool,
    /// Added to the wall clock: 0, except under the test hook.
    wall_offset_ms: AtomicI64,
    /// The test hook's file, when set.
    hook: Option<std::path::PathBuf>,
    boot_id: OnceLock<Arc<str>>,
}

/// A clock that moves only when told, for tests.
#[derive(Debug)]
struct Manual {
    /// Milliseconds since the Unix epoch.
    wall_ms: AtomicI64,
    /// Milliseconds since `origin`.
    elapsed_ms: AtomicI64,
    origin: Instant,
    synced: AtomicBool,
    boot_id: Arc<str>,
}

/// A reading's time, taken once: the wall time, the monotonic time at the
/// same instant, and whether the wall clock could be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Milliseconds since the Unix epoch, UTC (as the wall clock says).
    pub wall_ms: i64,
    /// Milliseconds since boot ([`Clock::mono_ms`]).
    pub mono_ms: i64,
    /// The wall clock was not synchronised: `wall_ms` may be far off.
    pub unsynced: bool,
}

/// Names a file that stands in for the kernel's sync state, so that an
/// integration test can make the gateway believe its clock is unsynced
/// and off by a given amount without changing the system time (which
/// needs root). A test hook only; not for production use.
pub const TEST_CLOCK_HOOK_ENV: &str = "FIELDGATE_TEST_CLOCK_HOOK";

impl Clock {
    /// The system's wall clock, `Instant`, `CLOCK_BOOTTIME` and sync state.
    /// Unsynced until [`Clock::check_sync`] says otherwise, so that the
    /// first readings after a boot are marked rather than trusted.
    pub fn system() -> Clock {
        let hook = std::env::var_os(TEST_CLOCK_HOOK_ENV).map(std::path::PathBuf::from);
        let clock = Clock(Source::System(Arc::new(System {
            synced: AtomicBool::new(false),
            wall_offset_ms: AtomicI64::new(0),
            hook,
            boot_id: OnceLock::new(),
        })));
        clock.check_sync();
        clock
    }

    /// A clock that reads `wall_ms` (Unix epoch milliseconds) until
    /// [`Clock::advance`] moves it. It counts as synchronised until
    /// [`Clock::set_synced`] says otherwise.
    pub fn manual(wall_ms: i64) -> Clock {
        Clock(Source::Manual(Arc::new(Manual {
            wall_ms: AtomicI64::new(wall_ms),
            elapsed_ms: AtomicI64::new(0),
            origin: Instant::now(),
            synced: AtomicBool::new(true),
            boot_id: Arc::from("manual"),
        })))
    }

    /// Wall time in milliseconds since the Unix epoch, UTC.
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            Source::System(s) => {
                jiff::Timestamp::now().as_millisecond() + s.wall_offset_ms.load(Relaxed)
            }
            Source::Manual(m) => m.wall_ms.load(Relaxed),
        }
    }

    /// Monotonic time: never goes back, whatever the wall clock does.
    pub fn monotonic(&self) -> Instant {
        match &self.0 {
            Source::System(_) => Instant::now(),
            Source::Manual(m) => {
                let elapsed = u64::try_from(m.elapsed_ms.load(Relaxed)).unwrap_or(0);
                m.origin + Duration::from_millis(elapsed)
            }
        }
    }

    /// Milliseconds since boot, counting time suspended (`CLOCK_BOOTTIME`):
    /// comparable between processes of the same boot, meaningless across
    /// boots.
    pub fn mono_ms(&self) -> i64 {
        match &self.0 {
            Source::System(_) => boottime_ms(),
            Source::Manual(m) => m.elapsed_ms.load(Relaxed),
        }
    }

    /// The kernel's id of this boot, read once.
    pub fn boot_id(&self) -> Arc<str> {
        match &self.0 {
            Source::System(s) => s.boot_id.get_or_init(read_boot_id).clone(),
            Source::Manual(m) => m.boot_id.clone(),
        }
    }

    /// Whether the wall clock was synchronised at the last check.
    pub fn synced(&self) -> bool {
        match &self.0 {
            Source::System(s) => s.synced.load(Relaxed),
            Source::Manual(m) => m.synced.load(Relaxed),
        }
    }

    /// Wall time, monotonic time and sync state, taken together.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            wall_ms: self.now_ms(),
            mono_ms: self.mono_ms(),
            unsynced: !self.synced(),
        }
    }

    /// Asks the kernel (or the test hook) whether the wall clock is
    /// synchronised, remembers it and returns it. A manual clock keeps
    /// what it was told.
    pub fn check_sync(&self) -> bool {
        let Source::System(s) = &self.0 else {
            return self.synced();
        };
        let synced = match &s.hook {
            Some(path) => {
                let hook = read_hook(path);
                s.wall_offset_ms.store(hook.offset_ms, Relaxed);
                hook.synced
            }
            None => kernel_synced(),
        };
        s.synced.store(synced, Relaxed);
        synced
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

    /// Sets a manual clock's sync state.
    pub fn set_synced(&self, synced: bool) {
        if let Source::Manual(m) = &self.0 {
            m.synced.store(synced, Relaxed);
        }
    }
}

fn boottime_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on
    // every Linux since 2.6.39.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    // `time_t` and `c_long` are 32 bits on armv7 (a Pi 2/3 on a 32-bit OS).
    #[allow(clippy::useless_conversion)]
    let ms = i64::from(ts.tv_sec) * 1_000 + i64::from(ts.tv_nsec) / 1_000_000;
    ms
}

/// `adjtimex` with `modes = 0` only reads: no privilege needed. A seccomp
/// filter may still refuse it (systemd's `ProtectClock=`); then the flag
/// file of systemd-timesyncd is the next best witness.
fn kernel_synced() -> bool {
    // SAFETY: an all-zero `timex` is valid (plain integers), and with
    // `modes == 0` the kernel only fills it in.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return std::path::Path::new(TIMESYNCD_SYNCHRONIZED).exists();
    }
    state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0
}

/// Created by systemd-timesyncd once it has synchronised the clock.
const TIMESYNCD_SYNCHRONIZED: &str = "/run/systemd/timesync/synchronized";

fn read_boot_id() -> Arc<str> {
    match std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        Ok(id) if !id.trim().is_empty() => Arc::from(id.trim()),
        // Without /proc every start counts as a new boot: monotonic times
        // are then never compared across processes.
        _ => Arc::from(format!("unknown-{}", std::process::id())),
    }
}

/// What the test hook's file says.
#[derive(Debug, PartialEq, Eq)]
struct Hook {
    synced: bool,
    offset_ms: i64,
}

/// `unsynced offset_ms=-259200000` or `synced`; an unreadable file reads
/// as unsynced with no offset.
fn read_hook(path: &std::path::Path) -> Hook {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    parse_hook(&text)
}

fn parse_hook(text: &str) -> Hook {
    let mut hook = Hook {
        synced: false,
        offset_ms: 0,
    };
    for word in text.split_whitespace() {
        match word {
            "synced" => hook.synced = true,
            "unsynced" => hook.synced = false,
            _ => {
                if let Some(v) = word.strip_prefix("offset_ms=") {
                    hook.offset_ms = v.parse().unwrap_or(0);
                }
            }
        }
    }
    hook
}

/// A time after which something must not happen any more (a command's
/// `expires_at`), checked by whoever is about to do it. Given as wall
/// time, it is kept as monotonic time from then on, so that the wall
/// clock jumping meanwhile (NTP syncing a Pi's clock by days) neither
/// expires a command at once nor keeps it alive for days.
#[derive(Debug, Clone)]
pub struct Deadline {
    clock: Clock,
    /// `None`: never.
    at: Option<Instant>,
}

impl Deadline {
    /// `at_ms` in Unix epoch milliseconds, read against the wall clock now.
    pub fn new(clock: Clock, at_ms: Option<i64>) -> Deadline {
        let at = at_ms.map(|at_ms| {
            let now = clock.monotonic();
            let left = u64::try_from(at_ms.saturating_sub(clock.now_ms())).unwrap_or(0);
            now.checked_add(Duration::from_millis(left)).unwrap_or(now)
        });
        Deadline { clock, at }
    }

    /// No deadline at all (no clock consulted).
    pub fn never() -> Deadline {
        Deadline {
            clock: Clock::manual(0),
            at: None,
        }
    }

    pub fn passed(&self) -> bool {
        self.at.is_some_and(|at| self.clock.monotonic() >= at)
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
    fn boottime_and_boot_id_are_read() {
        let clock = Clock::system();
        let a = clock.mono_ms();
        assert!(a > 0);
        assert!(clock.mono_ms() >= a);
        let id = clock.boot_id();
        assert!(!id.is_empty());
        assert_eq!(clock.boot_id(), id, "read once, the same every time");
    }

    #[test]
    fn the_test_hook_says_synced_or_unsynced_with_an_offset() {
        assert_eq!(
            parse_hook("unsynced offset_ms=-259200000\n"),
            Hook {
                synced: false,
                offset_ms: -259_200_000
            }
        );
        assert_eq!(
            parse_hook("synced"),
            Hook {
                synced: true,
                offset_ms: 0
            }
        );
        assert!(!parse_hook("").synced);
    }

    #[test]
    fn a_manual_stamp_follows_its_sync_state() {
        let clock = Clock::manual(5_000);
        clock.advance(Duration::from_millis(20));
        assert_eq!(
            clock.stamp(),
            Stamp {
                wall_ms: 5_020,
                mono_ms: 20,
                unsynced: false
            }
        );
        clock.set_synced(false);
        assert!(clock.stamp().unsynced);
        assert!(!clock.check_sync());
    }

    #[test]
    fn a_deadline_passes_with_the_wall_clock() {
        let clock = Clock::manual(1_000);
        let deadline = Deadline::new(clock.clone(), Some(1_500));
        assert!(!deadline.passed());
        clock.advance(Duration::from_millis(500));
        assert!(deadline.passed());
        assert!(!Deadline::never().passed());
        assert!(Deadline::new(clock.clone(), Some(0)).passed());
    }

    #[test]
    fn a_deadline_ignores_jumps_of_the_wall_clock() {
        let clock = Clock::manual(1_000);
        let deadline = Deadline::new(clock.clone(), Some(61_000));
        // NTP moves the wall clock three days forward: 60 s are still left.
        clock.set_wall_ms(3 * 86_400_000);
        assert!(!deadline.passed());
        clock.advance(Duration::from_secs(59));
        assert!(!deadline.passed());
        clock.advance(Duration::from_secs(1));
        assert!(deadline.passed());
    }
}
