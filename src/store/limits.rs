//! Keeping the queue within `store.max_rows`, `store.max_bytes` and
//! `store.max_age`: the lowest priority goes first, oldest first within a
//! priority, and every dropped reading is counted against its device.

use std::collections::BTreeMap;

use rusqlite::{Connection, params};

use crate::config::StoreConfig;
use crate::reading::Priority;

/// Readings dropped, per device.
pub type Evicted = BTreeMap<String, u64>;

/// Per priority, the highest seq handed to the uplink: rows up to it are
/// on their way to the broker (or delivered and waiting for their delete),
/// so the size limits and a full disk never evict them; their ack, or
/// their resend after a reconnect, decides. Evicting them would count as
/// lost a reading the broker then acknowledges. At most the uplink's
/// window is held this way.
pub type InFlight = [i64; 3];

/// Nothing handed out: every row may be evicted.
pub const NONE_IN_FLIGHT: InFlight = [0; 3];

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_rows: Option<u64>,
    pub max_bytes: Option<u64>,
    pub max_age_ms: Option<i64>,
}

impl Limits {
    pub fn from_config(store: &StoreConfig) -> Limits {
        Limits {
            max_rows: store.max_rows,
            max_bytes: store.max_bytes.map(|b| b.0),
            max_age_ms: store.max_age.map(|a| a.get().as_millis() as i64),
        }
    }
}

/// The time the store acts at: the wall clock, and, when known, the
/// monotonic time of this boot, which ages this boot's rows even when the
/// wall clock jumps (as it does when NTP first syncs on a Pi), and
/// whether the wall clock was synchronised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub wall_ms: i64,
    pub mono_ms: Option<i64>,
    pub unsynced: bool,
}

impl From<i64> for Now {
    fn from(wall_ms: i64) -> Now {
        Now {
            wall_ms,
            mono_ms: None,
            unsynced: false,
        }
    }
}

impl From<crate::clock::Stamp> for Now {
    fn from(stamp: crate::clock::Stamp) -> Now {
        Now {
            wall_ms: stamp.wall_ms,
            mono_ms: Some(stamp.mono_ms),
            unsynced: stamp.unsynced,
        }
    }
}

/// How old a row is deemed: by the monotonic clock when the row was taken
/// in this boot and the commit knows its monotonic time, else by the wall
/// clock.
#[derive(Debug, Clone, Copy)]
struct Cutoff {
    wall_ms: i64,
    /// This boot's number and the monotonic cutoff.
    mono: Option<(i64, i64)>,
}

impl Cutoff {
    fn older(&self, ts_ms: i64, mono_ms: Option<i64>, boot: Option<i64>) -> bool {
        match (self.mono, mono_ms, boot) {
            (Some((this_boot, cutoff)), Some(mono), Some(b)) if b == this_boot => mono < cutoff,
            _ => ts_ms < self.wall_ms,
        }
    }

    /// Every row counts as old (eviction by count, not by age).
    const ANY_ROW: Cutoff = Cutoff {
        wall_ms: i64::MAX,
        mono: None,
    };
}

/// Rows read per step while evicting: bounds the work of one step.
const STEP: i64 = 512;

/// Drops what the limits no longer allow. Runs inside the commit's
/// transaction, so the queue is never seen above its limits.
pub fn enforce(
    conn: &Connection,
    limits: &Limits,
    now: Now,
    boot: i64,
    in_flight: InFlight,
) -> rusqlite::Result<Evicted> {
    let mut evicted = Evicted::new();
    if let Some(age) = limits.max_age_ms {
        let cutoff = Cutoff {
            wall_ms: now.wall_ms - age,
            mono: now.mono_ms.filter(|_| boot != 0).map(|m| (boot, m - age)),
        };
        // Expired rows go even when handed out: an expired reading must
        // not be resent after a reconnect.
        for priority in Priority::ALL {
            evict_older_than(conn, priority, cutoff, &mut evicted)?;
        }
    }
    // Each pass frees at least one row, so this ends; the bound only guards
    // against a misestimate looping for long inside one commit.
    for _ in 0..10_000 {
        let (rows, used) = (row_count(conn)?, used_bytes(conn)?);
        let over_rows = limits.max_rows.map_or(0, |max| rows.saturating_sub(max));
        let over_bytes = limits.max_bytes.map_or(0, |max| used.saturating_sub(max));
        if rows == 0 || (over_rows == 0 && over_bytes == 0) {
            break;
        }
        // Whole pages are freed only once every row on them is gone, so
        // free bytes in slices of at least 1/64 of the queue.
        let per_row = (used / rows).max(1);
        let for_bytes = if over_bytes > 0 {
            (over_bytes / per_row + 1).max(rows / 64)
        } else {
            0
        };
        let wanted = over_rows.max(for_bytes);
        if evict_oldest(conn, wanted, in_flight, &mut evicted)? == 0 {
            break;
        }
    }
    record(conn, &evicted)?;
    Ok(evicted)
}

/// Drops up to `count` of the lowest-priority, oldest rows not in flight
/// (to make room on a full disk); counted like any eviction.
pub fn make_room(conn: &Connection, count: u64, in_flight: InFlight) -> rusqlite::Result<Evicted> {
    let mut evicted = Evicted::new();
    evict_oldest(conn, count, in_flight, &mut evicted)?;
    record(conn, &evicted)?;
    Ok(evicted)
}

/// Adds to the per-device eviction counters.
pub fn record(conn: &Connection, evicted: &Evicted) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO evictions (device, rows) VALUES (?1, ?2)
         ON CONFLICT (device) DO UPDATE SET rows = rows + excluded.rows",
    )?;
    for (device, rows) in evicted {
        stmt.execute(params![device, *rows as i64])?;
    }
    Ok(())
}

/// The lowest priority first: `low`, then `normal`, then `high`.
fn evict_oldest(
    conn: &Connection,
    mut count: u64,
    in_flight: InFlight,
    evicted: &mut Evicted,
) -> rusqlite::Result<u64> {
    let mut total = 0;
    for priority in Priority::ALL.into_iter().rev() {
        let after = in_flight[priority as usize];
        while count > 0 {
            let take = count.min(STEP as u64) as i64;
            let n = evict_prefix(conn, priority, after, take, Cutoff::ANY_ROW, evicted)?;
            total += n;
            count -= n;
            if (n as i64) < take {
                break;
            }
        }
    }
    Ok(total)
}

/// Rows are in `seq` order, which is arrival order: the old ones are a
/// prefix, found without reading the rest of the table.
fn evict_older_than(
    conn: &Connection,
    priority: Priority,
    cutoff: Cutoff,
    evicted: &mut Evicted,
) -> rusqlite::Result<()> {
    while evict_prefix(conn, priority, 0, STEP, cutoff, evicted)? == STEP as u64 {}
    Ok(())
}

/// Deletes the first rows of `priority` after seq `after`, at most `take`,
/// stopping at the first one not older than `cutoff`. Returns how many went.
fn evict_prefix(
    conn: &Connection,
    priority: Priority,
    after: i64,
    take: i64,
    cutoff: Cutoff,
    evicted: &mut Evicted,
) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, ts_ms, device, mono_ms, boot FROM outbox WHERE priority = ?1 AND seq > ?2
         ORDER BY seq LIMIT ?3",
    )?;
    let mut last = None;
    let mut n = 0;
    let mut rows = stmt.query(params![priority as i64, after, take])?;
    while let Some(row) = rows.next()? {
        let (seq, ts_ms): (i64, i64) = (row.get(0)?, row.get(1)?);
        if !cutoff.older(ts_ms, row.get(3)?, row.get(4)?) {
            break;
        }
        *evicted.entry(row.get(2)?).or_default() += 1;
        last = Some(seq);
        n += 1;
    }
    drop(rows);
    if let Some(last) = last {
        conn.prepare_cached("DELETE FROM outbox WHERE priority = ?1 AND seq > ?2 AND seq <= ?3")?
            .execute(params![priority as i64, after, last])?;
    }
    Ok(n)
}

fn row_count(conn: &Connection) -> rusqlite::Result<u64> {
    let rows: i64 = conn.query_row("SELECT value FROM meta WHERE key = 'rows'", [], |r| {
        r.get(0)
    })?;
    Ok(rows.max(0) as u64)
}

/// Bytes of the database file in use: pages minus free pages. No scan.
pub fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pragma =
        |name: &str| -> rusqlite::Result<i64> { conn.pragma_query_value(None, name, |r| r.get(0)) };
    let pages = pragma("page_count")? - pragma("freelist_count")?;
    Ok((pages.max(0) * pragma("page_size")?) as u64)
}
