//! Honest time on a Pi without a real-time clock: readings taken while
//! the wall clock is unsynchronised are marked, and those still queued
//! when it syncs are corrected from their time since boot. The kernel's
//! sync state and a wrong wall clock are simulated through the gateway's
//! test hook, so no test changes the system time.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(60);
/// The wall clock the gateway believes until NTP syncs: three days behind.
const BEHIND_MS: i64 = 3 * 86_400_000;

fn true_now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn ts_ms(message: &serde_json::Value) -> i64 {
    let ts = message["ts"].as_str().expect("ts");
    ts.parse::<jiff::Timestamp>()
        .unwrap_or_else(|e| panic!("{ts}: {e}"))
        .as_millisecond()
}

/// A stored row's clock columns.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stored {
    seq: i64,
    ts_ms: i64,
    mono_ms: i64,
    unsynced: bool,
}

/// The rows of the running gateway's store, read beside it (WAL); none
/// before the gateway has created it.
fn stored(dir: &Path) -> Vec<Stored> {
    let db = dir.join("state").join("fieldgate.db");
    let read = || -> rusqlite::Result<Vec<Stored>> {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let conn = rusqlite::Connection::open_with_flags(&db, flags)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mut stmt =
            // Readings only: a device's availability is a row too.
            conn.prepare("SELECT seq, ts_ms, mono_ms, unsynced FROM outbox WHERE kind = 0 ORDER BY seq")?;
        stmt.query_map([], |r| {
            Ok(Stored {
                seq: r.get(0)?,
                ts_ms: r.get(1)?,
                mono_ms: r.get(2)?,
                unsynced: r.get(3)?,
            })
        })?
        .collect()
    };
    read().unwrap_or_default()
}

fn wait_for(what: &str, gw: &Gateway, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn set_hook(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write clock hook");
}

#[test]
fn queued_readings_get_their_true_time_once_the_clock_syncs() {
    // 8 s of readings: most are still to come when the broker goes.
    let count = 40;
    let mut rig = Rig::new(
        "check-clock",
        TELEMETRY,
        &sim_device("t", "200ms", count, ""),
    );
    let status = Subscriber::connect(rig.broker.port, "check-clock-status", "fieldgate/gw/status");
    let hook = rig.dir.path().join("clock-hook");
    set_hook(&hook, &format!("unsynced offset_ms=-{BEHIND_MS}"));
    let hook_env = hook.to_str().unwrap();
    let gw = Gateway::start_with_env(
        &rig.config,
        rig.dir.path(),
        "fieldgate=info",
        &[(CLOCK_HOOK_ENV, hook_env)],
    );

    // While the broker is there, marked readings go out as they are.
    rig.expect(&gw, LONG, |m| telemetry(m).len() >= 3);
    let now = true_now_ms();
    let sent: Vec<serde_json::Value> = rig.sub.messages().iter().map(|m| m.json()).collect();
    for m in &sent {
        assert_eq!(m["clock"], "unsynced", "{m}");
        let off = now - BEHIND_MS - ts_ms(m);
        assert!(
            (0..30_000).contains(&off),
            "{m}: {off} ms from the clock it was told"
        );
    }

    let unsynced = |m: &[Message]| latest_status(m).is_some_and(|s| s["clock"] == "unsynced");
    assert!(status.wait_until(LONG, unsynced), "{}", gw.log());

    // Then the rest queue, still marked.
    rig.broker.stop();
    let dir = rig.dir.path();
    // The device's `online` took one seq too.
    wait_for("every reading stored", &gw, || {
        stored(dir)
            .last()
            .is_some_and(|r| r.seq == count as i64 + 1)
    });
    let before = stored(dir);
    assert!(before.len() >= 5, "{before:?}");
    let now = true_now_ms();
    for r in &before {
        assert!(r.unsynced, "{r:?}");
        assert!((now - BEHIND_MS - r.ts_ms) < 30_000, "{r:?}");
    }

    // NTP syncs: the wall clock is right from here on.
    set_hook(&hook, "synced");
    assert!(
        gw.wait_for_log(
            &format!("corrected the time of {} queued readings", before.len()),
            LONG
        ),
        "{}",
        gw.log()
    );
    let boot_offset = true_now_ms() - boottime_ms();
    let after = stored(dir);
    assert_eq!(after.len(), before.len(), "nothing delivered meanwhile");
    let mut worst = 0;
    for (a, b) in after.iter().zip(&before) {
        assert_eq!((a.seq, a.mono_ms), (b.seq, b.mono_ms));
        assert!(!a.unsynced, "{a:?}");
        // The true time of each: its monotonic time on this boot's clock.
        let error = a.ts_ms - (a.mono_ms + boot_offset);
        assert!(error.abs() < 1_000, "{a:?}: {error} ms off the true time");
        worst = worst.max(error.abs());
    }
    eprintln!(
        "{} queued readings corrected, at most {worst} ms off the true time",
        after.len()
    );
    // Consecutive readings keep exactly their monotonic distance.
    for pair in after.windows(2) {
        assert_eq!(
            pair[1].ts_ms - pair[0].ts_ms,
            pair[1].mono_ms - pair[0].mono_ms,
            "{pair:?}"
        );
    }

    // And that is what the broker gets: corrected, unmarked.
    rig.broker.restart();
    rig.expect(&gw, LONG, |m| distinct_seqs(m).len() >= count as usize);
    let synced = |m: &[Message]| {
        latest_status(m).is_some_and(|s| s["state"] == "online" && s.get("clock").is_none())
    };
    assert!(status.wait_until(LONG, synced), "{}", gw.log());
    let messages = rig.sub.messages();
    for r in &after {
        // The last copy: a row sent just before the broker went, and not
        // acknowledged, came once marked and again after the restart.
        let m = messages
            .iter()
            .map(|m| m.json())
            .rfind(|m| m["seq"] == r.seq)
            .unwrap_or_else(|| panic!("seq {} not received", r.seq));
        assert!(m.get("clock").is_none(), "{m}");
        assert_eq!(ts_ms(&m), r.ts_ms, "{m}");
    }
}

#[test]
fn readings_of_an_earlier_boot_keep_their_mark() {
    let mut rig = Rig::new(
        "check-clock-boot",
        TELEMETRY,
        &sim_device("t", "100ms", 5, ""),
    );
    rig.broker.stop();
    let hook = rig.dir.path().join("clock-hook");
    set_hook(&hook, &format!("unsynced offset_ms=-{BEHIND_MS}"));
    let hook_env = hook.to_str().unwrap();
    let env = [(CLOCK_HOOK_ENV, hook_env)];
    let mut gw = Gateway::start_with_env(&rig.config, rig.dir.path(), "fieldgate=info", &env);
    let dir = rig.dir.path();
    wait_for("every reading stored", &gw, || stored(dir).len() == 5);
    assert!(gw.sigterm_and_wait(LONG).success());
    let first_boot: Vec<i64> = stored(dir).iter().map(|r| r.seq).collect();

    // The Pi reboots (a new boot id), and this time NTP syncs.
    let db = dir.join("state").join("fieldgate.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute("UPDATE boot SET boot_id = 'an-earlier-boot'", [])
        .unwrap();
    drop(conn);
    set_hook(&hook, "synced");
    let gw = Gateway::start_with_env(&rig.config, rig.dir.path(), "fieldgate=info", &env);
    assert!(
        gw.wait_for_log("wall clock synchronised", LONG),
        "{}",
        gw.log()
    );
    rig.broker.restart();
    let all_arrived = |m: &[Message]| {
        let seqs = distinct_seqs(m);
        first_boot.iter().all(|s| seqs.contains(s))
    };
    rig.expect(&gw, LONG, all_arrived);
    let now = true_now_ms();
    let queued = rig.sub.messages().into_iter().map(|m| m.json());
    // The new boot's own readings are taken synced.
    let of_first_boot =
        |m: &serde_json::Value| m["seq"].as_i64().is_some_and(|s| first_boot.contains(&s));
    for m in queued.filter(of_first_boot) {
        // Their time since boot counted from another start: left as the
        // wrong wall clock said, and said to be so.
        assert_eq!(m["clock"], "unsynced", "{m}");
        assert!((now - BEHIND_MS - ts_ms(&m)) < 60_000, "{m}");
    }
}

/// `CLOCK_BOOTTIME` in ms, as the gateway reads it: from `/proc/uptime`
/// (the same clock, to 10 ms).
fn boottime_ms() -> i64 {
    let text = std::fs::read_to_string("/proc/uptime").expect("read /proc/uptime");
    let secs: f64 = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("uptime");
    (secs * 1_000.0) as i64
}
