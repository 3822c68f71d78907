//! The SQLite outbox: the readings (and answers) waiting for the broker.
//! With its neighbours (`dead_letters.rs`, `journal.rs`,
//! `remote_config.rs`, `queries.rs`), the only code that speaks SQL.
//!
//! Rows live in one table clustered by `(priority, seq)`, so "the oldest
//! rows of the highest priority" is a range read and no secondary index
//! doubles the writes on an SD card. `seq` comes from a counter kept in
//! `meta` and committed with the rows, so it never repeats, even after the
//! table has been emptied. The counter on disk runs a block ahead of the
//! seqs handed out ([`Outbox::is_reserved`]), so that a reading can be
//! published, and acknowledged, before it is ever written: a crash then
//! skips the rest of the block rather than handing out its seq again. Row and byte totals are kept by triggers, so
//! opening a store of a million rows reads a few pages, not the table.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::limits::{self, Evicted, InFlight, Limits, Now};
use super::{StoreError, dead_letters, recover, schema};
use crate::reading::{Priority, Qos};
use crate::reading::{Quality, Reading};

/// A stored reading, ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub seq: i64,
    pub priority: Priority,
    pub qos: Qos,
    pub ts_ms: i64,
    pub device: String,
    /// The reading's values as a JSON object.
    pub values: String,
    pub quality: Quality,
    pub error: Option<String>,
    /// `ts_ms` was taken while the wall clock was not synchronised, and
    /// has not been corrected since.
    pub unsynced: bool,
    /// Set for a message that is not a reading (an answer to a command):
    /// `values` is then its whole payload, sent as it is to this topic.
    pub topic: Option<String>,
    /// MQTT 5 correlation data to send with it.
    pub correlation: Option<Vec<u8>>,
    pub kind: RowKind,
}

/// What a row is, besides a reading or an answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RowKind {
    /// A reading, or a message with its own `topic` (an answer).
    #[default]
    Reading = 0,
    /// The retained availability of `device`: `values` is the whole
    /// payload (`online`, `offline`, or empty when the device is gone).
    Availability = 1,
}

impl RowKind {
    fn from_code(code: i64) -> RowKind {
        match code {
            1 => RowKind::Availability,
            _ => RowKind::Reading,
        }
    }
}

impl Row {
    pub fn key(&self) -> RowKey {
        RowKey {
            priority: self.priority,
            seq: self.seq,
        }
    }
}

/// A reading numbered and serialized, waiting for its commit.
#[derive(Debug, Clone, PartialEq)]
pub struct Staged {
    pub row: Row,
    /// Its time since boot: what corrects `row.ts_ms` once the clock syncs.
    pub mono_ms: i64,
    /// When it was staged: it is committed within a flush interval of it.
    pub arrived: std::time::Instant,
}

/// What identifies a row in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RowKey {
    pub priority: Priority,
    pub seq: i64,
}

/// Totals kept by triggers; cheap to read at any size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub rows: u64,
    pub bytes: u64,
}

pub struct Outbox {
    pub(super) conn: Connection,
    pub(super) next_seq: i64,
    /// This boot's number in the `boot` table; 0 until [`Outbox::enter_boot`].
    pub(super) boot: i64,
    /// The counter on disk: no seq below it is ever handed out again.
    pub(super) reserved: i64,
    /// Rows of readings inserted since the store was opened.
    written: u64,
    limits: Limits,
    recovered_from: Option<PathBuf>,
}

/// Seqs the counter on disk runs ahead by; it moves once half of them are
/// handed out. At 1,000 readings/s, one small write every 5 s.
const SEQ_BLOCK: i64 = 10_000;

/// What one commit writes.
#[derive(Debug, Clone, Copy)]
pub struct Changes<'a> {
    /// Readings numbered by [`Outbox::stage`], in `seq` order.
    pub readings: &'a [Staged],
    /// Delivered rows, to delete.
    pub acks: &'a [RowKey],
    /// Rows the broker refused, with its reason: moved to the dead letters.
    pub refused: &'a [(RowKey, String)],
    /// Readings dropped from memory while the disk was full, per device.
    pub dropped: &'a Evicted,
    /// What the limits must not evict.
    pub in_flight: InFlight,
}

impl Default for Changes<'_> {
    fn default() -> Self {
        static NONE: Evicted = Evicted::new();
        Changes {
            readings: &[],
            acks: &[],
            refused: &[],
            dropped: &NONE,
            in_flight: limits::NONE_IN_FLIGHT,
        }
    }
}

/// What one commit did besides appending.
#[derive(Debug, Default, PartialEq)]
pub struct CommitReport {
    /// Acknowledged rows deleted.
    pub deleted: usize,
    /// Rows dropped to stay within the limits.
    pub evicted: Evicted,
}

impl Outbox {
    /// Opens (creating when needed) the store at `path` for the daemon.
    /// A damaged file is moved aside and replaced by an empty store.
    pub fn open(path: &Path, limits: Limits) -> Result<Outbox, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::StateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let (conn, recovered_from) = recover::open_checked(path)?;
        schema::migrate(&conn)?;
        let next_seq = next_seq(&conn)?;
        let mut outbox = Outbox {
            conn,
            next_seq,
            boot: 0,
            reserved: next_seq,
            written: 0,
            limits,
            recovered_from,
        };
        // A block at once, so that the first readings can go before their
        // commit too.
        let tx = outbox.conn.transaction()?;
        let reserved = reserve(&tx, outbox.next_seq, outbox.reserved)?;
        tx.commit()?;
        outbox.reserved = reserved.unwrap_or(outbox.reserved);
        Ok(outbox)
    }

    /// Opens an existing store for the `queue` command, next to a running
    /// daemon: no check, no migration.
    pub fn open_read_only(path: &Path) -> Result<Outbox, StoreError> {
        Self::open_existing(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
    }

    /// Opens an existing store to change it (purge rows, drop the cached
    /// remote configuration) next to a running daemon.
    pub fn open_for_changes(path: &Path) -> Result<Outbox, StoreError> {
        Self::open_existing(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
    }

    fn open_existing(path: &Path, flags: OpenFlags) -> Result<Outbox, StoreError> {
        let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        match schema::ensure_readable(&conn)? {
            // Created a moment ago, tables not yet made.
            0 => return Err(StoreError::Uninitialized),
            // The daemon migrates at start; until then, refuse to guess.
            v if v < schema::SCHEMA_VERSION => return Err(StoreError::OlderSchema { found: v }),
            _ => {}
        }
        let next_seq = next_seq(&conn)?;
        Ok(Outbox {
            conn,
            next_seq,
            boot: 0,
            reserved: next_seq,
            written: 0,
            limits: Limits::default(),
            recovered_from: None,
        })
    }

    /// Where a damaged store was moved when this one was opened.
    pub fn recovered_from(&self) -> Option<&Path> {
        self.recovered_from.as_deref()
    }

    /// The `seq` the next appended reading will get.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// Numbers a reading with the next `seq` and serializes it: the row it
    /// will be, published from memory or written by the next commit.
    pub fn stage(&mut self, reading: &Reading) -> Staged {
        let seq = self.next_seq;
        self.next_seq += 1;
        let row = Row {
            seq,
            priority: reading.delivery.priority,
            qos: reading.delivery.qos,
            ts_ms: reading.ts_ms,
            device: reading.device.to_string(),
            // Serialized in place, not cloned into a Value; a map with
            // string keys always serializes.
            values: serde_json::to_string(&reading.values).unwrap_or_default(),
            quality: reading.quality,
            error: reading.error.clone(),
            unsynced: reading.unsynced,
            topic: None,
            correlation: None,
            kind: RowKind::Reading,
        };
        Staged {
            row,
            mono_ms: reading.mono_ms,
            arrived: std::time::Instant::now(),
        }
    }

    /// Whether `seq` is below the counter on disk: it may be published
    /// before it is written, since no restart can hand it out again.
    pub fn is_reserved(&self, seq: i64) -> bool {
        seq < self.reserved
    }

    /// Whether the next commit must move the counter on disk ahead.
    pub fn needs_reserve(&self) -> bool {
        needs_reserve(self.next_seq, self.reserved)
    }

    /// Rows of readings inserted since the store was opened: those
    /// acknowledged before their commit are not.
    pub fn rows_written(&self) -> u64 {
        self.written
    }

    /// One transaction: append `readings` (staged, in `seq` order), delete
    /// the acknowledged rows `acks`, move refused rows to the dead letters,
    /// count `dropped` (readings lost from memory while the
    /// disk was full) and apply the limits.
    pub fn commit(
        &mut self,
        changes: &Changes<'_>,
        now: impl Into<Now>,
    ) -> Result<CommitReport, StoreError> {
        let now = now.into();
        let Changes {
            readings,
            acks,
            refused,
            dropped,
            in_flight,
        } = *changes;
        let tx = self.conn.transaction()?;
        let mut report = CommitReport::default();
        let reserved;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO outbox (priority, seq, qos, ts_ms, device, quality, vals, error,
                                     mono_ms, boot, unsynced)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for r in readings {
                insert.execute(params![
                    r.row.priority as i64,
                    r.row.seq,
                    r.row.qos as i64,
                    r.row.ts_ms,
                    r.row.device,
                    r.row.quality as i64,
                    r.row.values,
                    r.row.error,
                    r.mono_ms,
                    (self.boot != 0).then_some(self.boot),
                    r.row.unsynced
                ])?;
            }
            let mut delete =
                tx.prepare_cached("DELETE FROM outbox WHERE priority = ?1 AND seq = ?2")?;
            for key in acks {
                report.deleted += delete.execute(params![key.priority as i64, key.seq])?;
            }
            reserved = reserve(&tx, self.next_seq, self.reserved)?;
            dead_letters::bury(&tx, refused, now.wall_ms)?;
            limits::record(&tx, dropped)?;
            report.evicted = limits::enforce(&tx, &self.limits, now, self.boot, in_flight)?;
        }
        tx.commit()?;
        self.written += readings.len() as u64;
        if let Some(r) = reserved {
            self.reserved = r;
        }
        Ok(report)
    }

    /// Room for a batch on a full disk, in a transaction of its own:
    /// deletes the delivered rows `acks` (which a delivered reading must
    /// leave before anything is evicted), then drops up to `count` of the
    /// lowest-priority, oldest rows not in flight.
    pub fn make_room(
        &mut self,
        acks: &[RowKey],
        count: u64,
        in_flight: InFlight,
    ) -> Result<Evicted, StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut delete =
                tx.prepare_cached("DELETE FROM outbox WHERE priority = ?1 AND seq = ?2")?;
            for key in acks {
                delete.execute(params![key.priority as i64, key.seq])?;
            }
        }
        let evicted = limits::make_room(&tx, count, in_flight)?;
        tx.commit()?;
        Ok(evicted)
    }

    /// Up to `limit` rows of `priority` with `seq > after`, oldest first.
    pub fn fetch(
        &self,
        priority: Priority,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, qos, ts_ms, device, quality, vals, error, topic, correlation, unsynced, kind
             FROM outbox WHERE priority = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![priority as i64, after, limit as i64], |r| {
            row(r, priority)
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn totals(&self) -> Result<Totals, StoreError> {
        let get = |key: &str| -> Result<u64, StoreError> {
            let v: i64 = self.conn.query_row(READ_META, [key], |r| r.get(0))?;
            Ok(v.max(0) as u64)
        };
        Ok(Totals {
            rows: get("rows")?,
            bytes: get("bytes")?,
        })
    }

    /// Readings dropped by limits or a full disk since the store was
    /// created, per device.
    pub fn evictions(&self) -> Result<Evicted, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT device, rows FROM evictions ORDER BY device")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Bytes of the database file in use.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        Ok(limits::used_bytes(&self.conn)?)
    }

    /// Moves the WAL back into the database file (at clean shutdown).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

// What opening a store and reading its totals asks of SQLite. A test
// checks that none of these scans a table.
const READ_NEXT_SEQ: &str = "SELECT value FROM meta WHERE key = 'next_seq'";
const READ_MAX_SEQ: &str = "SELECT max(seq) FROM outbox WHERE priority = ?1";
const READ_META: &str = "SELECT value FROM meta WHERE key = ?1";

pub(super) fn row(r: &rusqlite::Row<'_>, priority: Priority) -> rusqlite::Result<Row> {
    Ok(Row {
        seq: r.get(0)?,
        priority,
        qos: Qos::from_u8(r.get(1)?).unwrap_or(Qos::AtLeastOnce),
        ts_ms: r.get(2)?,
        device: r.get(3)?,
        quality: Quality::from_code(r.get(4)?),
        values: r.get(5)?,
        error: r.get(6)?,
        topic: r.get(7)?,
        correlation: r.get(8)?,
        unsynced: r.get(9)?,
        kind: RowKind::from_code(r.get(10)?),
    })
}

fn needs_reserve(next_seq: i64, reserved: i64) -> bool {
    next_seq + SEQ_BLOCK / 2 > reserved
}

/// Within `tx`: the counter on disk a block ahead of `next_seq`, when half
/// of the block is handed out. Returns the new value, to keep once `tx`
/// commits.
pub(super) fn reserve(
    tx: &rusqlite::Transaction<'_>,
    next_seq: i64,
    reserved: i64,
) -> Result<Option<i64>, StoreError> {
    if !needs_reserve(next_seq, reserved) {
        return Ok(None);
    }
    let reserved = next_seq + SEQ_BLOCK;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
        [reserved],
    )?;
    Ok(Some(reserved))
}

/// The stored counter, or one past the highest row should the counter ever
/// lag behind (three index seeks, one per priority; no scan).
fn next_seq(conn: &Connection) -> Result<i64, StoreError> {
    let counter: i64 = conn
        .query_row(READ_NEXT_SEQ, [], |r| r.get(0))
        .optional()?
        .unwrap_or(1);
    let mut next = counter;
    for p in Priority::ALL {
        let max: Option<i64> = conn.query_row(READ_MAX_SEQ, [p as i64], |r| r.get(0))?;
        next = next.max(max.unwrap_or(0) + 1);
    }
    Ok(next)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::reading::{Delivery, Name};

    pub(crate) fn reading(device: &str, priority: Priority, qos: Qos, v: f64) -> Reading {
        let mut values = serde_json::Map::new();
        values.insert("v".into(), v.into());
        Reading {
            device: Name::parse(device).unwrap(),
            ts_ms: 1_700_000_000_000,
            mono_ms: 0,
            unsynced: false,
            values,
            quality: Quality::Good,
            error: None,
            delivery: Delivery { qos, priority },
        }
    }

    pub(crate) fn open(dir: &tempfile::TempDir, limits: Limits) -> Outbox {
        Outbox::open(&dir.path().join("s.db"), limits).unwrap()
    }

    pub(crate) fn append(store: &mut Outbox, readings: &[Reading]) -> CommitReport {
        let rows: Vec<Staged> = readings.iter().map(|r| store.stage(r)).collect();
        store
            .commit(
                &Changes {
                    readings: &rows,
                    ..Changes::default()
                },
                1_700_000_000_000,
            )
            .unwrap()
    }

    pub(crate) fn seqs(rows: &[Row]) -> Vec<i64> {
        rows.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn seq_keeps_increasing_across_reopen_even_when_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir, Limits::default());
        let r = reading("a", Priority::Normal, Qos::AtLeastOnce, 1.0);
        append(&mut store, &[r.clone(), r.clone(), r.clone()]);
        let rows = store.fetch(Priority::Normal, 0, 10).unwrap();
        assert_eq!(seqs(&rows), [1, 2, 3]);
        let keys: Vec<_> = rows.iter().map(Row::key).collect();
        let report = store
            .commit(
                &Changes {
                    acks: &keys,
                    ..Changes::default()
                },
                0,
            )
            .unwrap();
        assert_eq!(report.deleted, 3);
        drop(store);

        let mut store = open(&dir, Limits::default());
        assert_eq!(store.totals().unwrap(), Totals::default());
        append(&mut store, &[r]);
        // The counter on disk ran ahead: the rest of its block is skipped.
        assert!(store.fetch(Priority::Normal, 0, 10).unwrap()[0].seq > 3);
    }

    #[test]
    fn fetch_is_per_priority_and_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir, Limits::default());
        let batch = [
            reading("low", Priority::Low, Qos::AtMostOnce, 1.0),
            reading("high", Priority::High, Qos::ExactlyOnce, 2.0),
            reading("low", Priority::Low, Qos::AtMostOnce, 3.0),
            reading("high", Priority::High, Qos::ExactlyOnce, 4.0),
        ];
        append(&mut store, &batch);
        let high = store.fetch(Priority::High, 0, 10).unwrap();
        assert_eq!(seqs(&high), [2, 4]);
        assert_eq!(high[0].qos, Qos::ExactlyOnce);
        assert_eq!(high[0].values, r#"{"v":2.0}"#);
        assert_eq!(store.fetch(Priority::High, 2, 10).unwrap().len(), 1);
        assert_eq!(store.fetch(Priority::Low, 0, 1).unwrap()[0].seq, 1);
        assert_eq!(store.fetch(Priority::Normal, 0, 10).unwrap(), []);
        // Peek shows what the uplink would send next, in that order.
        assert_eq!(seqs(&store.peek(3, None).unwrap()), [2, 4, 1]);
        assert_eq!(seqs(&store.peek(10, Some("low")).unwrap()), [1, 3]);
    }

    #[test]
    fn totals_follow_inserts_and_only_real_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir, Limits::default());
        let r = reading("dev", Priority::Normal, Qos::AtLeastOnce, 1.5);
        append(&mut store, &[r.clone(), r]);
        let totals = store.totals().unwrap();
        assert_eq!(totals.rows, 2);
        assert_eq!(totals.bytes, 2 * (r#"{"v":1.5}"#.len() as u64 + 3 + 32));
        // Deleting a row twice, or one that never existed, changes nothing.
        let key = RowKey {
            priority: Priority::Normal,
            seq: 1,
        };
        let ghost = RowKey {
            priority: Priority::High,
            seq: 1,
        };
        let report = store
            .commit(
                &Changes {
                    acks: &[key, key, ghost],
                    ..Changes::default()
                },
                0,
            )
            .unwrap();
        assert_eq!(report.deleted, 1);
        assert_eq!(store.totals().unwrap().rows, 1);
        let stats = store.device_stats().unwrap();
        assert_eq!(stats.len(), 1);
        assert_eq!((stats[0].device.as_str(), stats[0].rows), ("dev", 1));
    }

    /// max_rows with mixed priorities: the oldest `low` rows go first,
    /// then `normal`; `high` rows survive; every eviction is counted.
    #[test]
    fn max_rows_evicts_lowest_priority_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_rows: Some(10),
            ..Limits::default()
        };
        let mut store = open(&dir, limits);
        let mut batch = Vec::new();
        for i in 0..6 {
            batch.push(reading("alarm", Priority::High, Qos::AtLeastOnce, i.into()));
            batch.push(reading(
                "meter",
                Priority::Normal,
                Qos::AtLeastOnce,
                i.into(),
            ));
            batch.push(reading("weather", Priority::Low, Qos::AtMostOnce, i.into()));
        }
        let report = append(&mut store, &batch);
        // 18 rows, 10 allowed: all 6 low and the 2 oldest normal go.
        assert_eq!(
            report.evicted,
            Evicted::from([("meter".into(), 2), ("weather".into(), 6)])
        );
        assert_eq!(store.totals().unwrap().rows, 10);
        assert_eq!(store.fetch(Priority::High, 0, 100).unwrap().len(), 6);
        let normal = store.fetch(Priority::Normal, 0, 100).unwrap();
        assert_eq!(seqs(&normal), [8, 11, 14, 17]);
        assert_eq!(store.fetch(Priority::Low, 0, 100).unwrap(), []);

        // Counters add up across commits and survive a reopen.
        append(
            &mut store,
            &[reading("weather", Priority::Low, Qos::AtMostOnce, 9.0)],
        );
        drop(store);
        let store = open(&dir, limits);
        assert_eq!(
            store.evictions().unwrap(),
            Evicted::from([("meter".into(), 2), ("weather".into(), 7)])
        );
    }

    /// Rows handed to the uplink are not evicted by the size limits: their
    /// ack may be on its way, and a reading both delivered and counted as
    /// lost would make the counts lie. The next rows go instead.
    #[test]
    fn max_rows_leaves_the_rows_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_rows: Some(3),
            ..Limits::default()
        };
        let mut store = open(&dir, limits);
        let low = |v: f64| reading("weather", Priority::Low, Qos::AtLeastOnce, v);
        append(&mut store, &[low(0.0), low(1.0), low(2.0)]);
        let first = seqs(&store.fetch(Priority::Low, 0, 10).unwrap());
        let mut in_flight = [0; 3];
        in_flight[Priority::Low as usize] = first[1];
        let rows: Vec<Staged> = [low(3.0), low(4.0)]
            .iter()
            .map(|r| store.stage(r))
            .collect();
        let report = store
            .commit(
                &Changes {
                    readings: &rows,
                    in_flight,
                    ..Changes::default()
                },
                1_700_000_000_000,
            )
            .unwrap();
        assert_eq!(report.evicted, Evicted::from([("weather".into(), 2)]));
        let left = seqs(&store.fetch(Priority::Low, 0, 10).unwrap());
        assert_eq!(left, [first[0], first[1], rows[1].row.seq]);
    }

    #[test]
    fn max_age_drops_old_readings_of_every_priority() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_age_ms: Some(60_000),
            ..Limits::default()
        };
        let mut store = open(&dir, limits);
        let now = 1_700_000_000_000;
        let mut old = reading("a", Priority::High, Qos::AtLeastOnce, 1.0);
        old.ts_ms = now - 120_000;
        let mut fresh = old.clone();
        fresh.ts_ms = now - 1_000;
        let rows: Vec<Staged> = [&old, &old, &fresh].map(|r| store.stage(r)).into();
        let report = store
            .commit(
                &Changes {
                    readings: &rows,
                    ..Changes::default()
                },
                now,
            )
            .unwrap();
        assert_eq!(report.evicted, Evicted::from([("a".into(), 2)]));
        assert_eq!(seqs(&store.fetch(Priority::High, 0, 10).unwrap()), [3]);
    }

    #[test]
    fn max_bytes_bounds_the_pages_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: Some(1 << 20),
            ..Limits::default()
        };
        let mut store = open(&dir, limits);
        let mut big = reading("cam", Priority::Normal, Qos::AtLeastOnce, 0.0);
        big.values.insert("blob".into(), "x".repeat(1_000).into());
        let mut evicted = 0;
        for _ in 0..40 {
            let report = append(&mut store, &vec![big.clone(); 100]);
            evicted += report.evicted.values().sum::<u64>();
            assert!(store.used_bytes().unwrap() <= 1 << 20);
        }
        // 4,000 rows of ~1 KB cannot fit in 1 MiB: most were evicted, the
        // newest kept, and the budget is used, not emptied by over-eviction.
        let rows = store.totals().unwrap().rows;
        assert_eq!(rows + evicted, 4_000);
        let used = store.used_bytes().unwrap();
        assert!(used > 700 << 10, "{rows} rows kept in {used} bytes");
        let newest = store.peek(10_000, None).unwrap();
        assert_eq!(newest.last().unwrap().seq, 4_000);
    }

    /// Opening a store of a million rows must not read them all: every
    /// query run at open, and for the totals, is an index seek.
    #[test]
    fn opening_and_totals_never_scan_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, Limits::default());
        for query in [READ_NEXT_SEQ, READ_MAX_SEQ, READ_META] {
            let explain = format!("EXPLAIN QUERY PLAN {query}");
            let mut stmt = store.conn.prepare(&explain).unwrap();
            let params = stmt.parameter_count();
            let plan: Vec<String> = stmt
                .query_map(
                    rusqlite::params_from_iter(std::iter::repeat_n(1, params)),
                    |r| r.get::<_, String>(3),
                )
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(!plan.is_empty(), "{query}");
            for step in plan {
                assert!(step.starts_with("SEARCH"), "{query}: {step}");
            }
        }
    }
}
