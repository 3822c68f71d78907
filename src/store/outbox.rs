//! The SQLite outbox: the only code that speaks SQL.
//!
//! Rows live in one table clustered by `(priority, seq)`, so "the oldest
//! rows of the highest priority" is a range read and no secondary index
//! doubles the writes on an SD card. `seq` comes from a counter kept in
//! `meta` and committed with the rows, so it never repeats, even after the
//! table has been emptied. Row and byte totals are kept by triggers, so
//! opening a store of a million rows reads a few pages, not the table.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use crate::config::{Priority, Qos};
use crate::sources::{Quality, Reading};

/// Schema version this binary writes; older stores are migrated forward.
pub const SCHEMA_VERSION: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the store has schema version {found}, newer than this binary's {SCHEMA_VERSION}: upgrade fieldgate or move the store aside"
    )]
    NewerSchema { found: i64 },
    #[error("the store is shut down")]
    Closed,
}

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
}

impl Row {
    pub fn key(&self) -> RowKey {
        RowKey {
            priority: self.priority,
            seq: self.seq,
        }
    }
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

/// One line of `queue stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStats {
    pub device: String,
    pub priority: Priority,
    pub rows: u64,
    pub bytes: u64,
    pub oldest_ts_ms: i64,
}

pub struct Outbox {
    conn: Connection,
    next_seq: i64,
}

const SCHEMA: &str = "
CREATE TABLE outbox (
    priority INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    qos      INTEGER NOT NULL,
    ts_ms    INTEGER NOT NULL,
    device   TEXT NOT NULL,
    quality  INTEGER NOT NULL,
    vals     TEXT NOT NULL,
    PRIMARY KEY (priority, seq)
) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta VALUES ('next_seq', 1), ('rows', 0), ('bytes', 0);
CREATE TRIGGER outbox_count_insert AFTER INSERT ON outbox BEGIN
    UPDATE meta SET value = value + 1 WHERE key = 'rows';
    UPDATE meta SET value = value + length(NEW.vals) + length(NEW.device) + 32 WHERE key = 'bytes';
END;
CREATE TRIGGER outbox_count_delete AFTER DELETE ON outbox BEGIN
    UPDATE meta SET value = value - 1 WHERE key = 'rows';
    UPDATE meta SET value = value - length(OLD.vals) - length(OLD.device) - 32 WHERE key = 'bytes';
END;
";

impl Outbox {
    /// Opens (creating when needed) the store at `path` for the daemon.
    pub fn open(path: &Path) -> Result<Outbox, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::StateDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let conn = Connection::open(path)?;
        // WAL: readers (the `queue` command) never block the daemon.
        // NORMAL: a commit survives a process crash; pulled power can lose
        // the commits since the last checkpoint, never corrupt the file.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&conn)?;
        let next_seq = next_seq(&conn)?;
        Ok(Outbox { conn, next_seq })
    }

    /// Opens an existing store without writing to it (for inspection while
    /// the daemon runs).
    pub fn open_read_only(path: &Path) -> Result<Outbox, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { found: version });
        }
        let next_seq = next_seq(&conn)?;
        Ok(Outbox { conn, next_seq })
    }

    /// The `seq` the next appended reading will get.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// One transaction: append `readings` (in order, each with the next
    /// `seq`) and delete the acknowledged rows `acks`. Returns the number
    /// of rows actually deleted.
    pub fn commit(&mut self, readings: &[Reading], acks: &[RowKey]) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let mut seq = self.next_seq;
        let mut deleted = 0;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO outbox (priority, seq, qos, ts_ms, device, quality, vals)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for r in readings {
                let vals = serde_json::Value::Object(r.values.clone()).to_string();
                insert.execute(params![
                    r.delivery.priority as i64,
                    seq,
                    r.delivery.qos as i64,
                    r.ts_ms,
                    r.device.as_str(),
                    r.quality as i64,
                    vals
                ])?;
                seq += 1;
            }
            let mut delete =
                tx.prepare_cached("DELETE FROM outbox WHERE priority = ?1 AND seq = ?2")?;
            for key in acks {
                deleted += delete.execute(params![key.priority as i64, key.seq])?;
            }
            if seq != self.next_seq {
                tx.execute("UPDATE meta SET value = ?1 WHERE key = 'next_seq'", [seq])?;
            }
        }
        tx.commit()?;
        self.next_seq = seq;
        Ok(deleted)
    }

    /// Up to `limit` rows of `priority` with `seq > after`, oldest first.
    pub fn fetch(
        &self,
        priority: Priority,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, qos, ts_ms, device, quality, vals FROM outbox
             WHERE priority = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![priority as i64, after, limit as i64], |r| {
            Ok(Row {
                seq: r.get(0)?,
                priority,
                qos: Qos::from_u8(r.get(1)?).unwrap_or(Qos::AtLeastOnce),
                ts_ms: r.get(2)?,
                device: r.get(3)?,
                quality: Quality::from_code(r.get(4)?),
                values: r.get(5)?,
            })
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

    /// Rows, bytes and oldest reading per device and priority. Reads the
    /// whole table: for the `queue` command, not the daemon's hot path.
    pub fn device_stats(&self) -> Result<Vec<DeviceStats>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT device, priority, count(*), sum(length(vals) + length(device) + 32), min(ts_ms)
             FROM outbox GROUP BY device, priority ORDER BY priority, device",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(DeviceStats {
                device: r.get(0)?,
                priority: Priority::from_rank(r.get(1)?).unwrap_or(Priority::Low),
                rows: r.get::<_, i64>(2)?.max(0) as u64,
                bytes: r.get::<_, i64>(3)?.max(0) as u64,
                oldest_ts_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
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

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema { found: version });
    }
    if version == 0 {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
    }
    Ok(())
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
mod tests {
    use super::*;
    use crate::config::{Delivery, Name};

    pub(crate) fn reading(device: &str, priority: Priority, qos: Qos, v: f64) -> Reading {
        let mut values = serde_json::Map::new();
        values.insert("v".into(), v.into());
        Reading {
            device: Name::parse(device).unwrap(),
            ts_ms: 1_700_000_000_000,
            values,
            quality: Quality::Good,
            delivery: Delivery { qos, priority },
        }
    }

    #[test]
    fn seq_keeps_increasing_across_reopen_even_when_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut store = Outbox::open(&path).unwrap();
        let r = reading("a", Priority::Normal, Qos::AtLeastOnce, 1.0);
        store
            .commit(&[r.clone(), r.clone(), r.clone()], &[])
            .unwrap();
        let rows = store.fetch(Priority::Normal, 0, 10).unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let keys: Vec<_> = rows.iter().map(Row::key).collect();
        assert_eq!(store.commit(&[], &keys).unwrap(), 3);
        drop(store);

        let mut store = Outbox::open(&path).unwrap();
        assert_eq!(store.totals().unwrap(), Totals::default());
        store.commit(&[r], &[]).unwrap();
        assert_eq!(store.fetch(Priority::Normal, 0, 10).unwrap()[0].seq, 4);
    }

    #[test]
    fn fetch_is_per_priority_and_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Outbox::open(&dir.path().join("s.db")).unwrap();
        let batch = [
            reading("low", Priority::Low, Qos::AtMostOnce, 1.0),
            reading("high", Priority::High, Qos::ExactlyOnce, 2.0),
            reading("low", Priority::Low, Qos::AtMostOnce, 3.0),
            reading("high", Priority::High, Qos::ExactlyOnce, 4.0),
        ];
        store.commit(&batch, &[]).unwrap();
        let high = store.fetch(Priority::High, 0, 10).unwrap();
        assert_eq!(high.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(high[0].qos, Qos::ExactlyOnce);
        assert_eq!(high[0].values, r#"{"v":2.0}"#);
        assert_eq!(store.fetch(Priority::High, 2, 10).unwrap().len(), 1);
        assert_eq!(store.fetch(Priority::Low, 0, 1).unwrap()[0].seq, 1);
        assert_eq!(store.fetch(Priority::Normal, 0, 10).unwrap(), []);
    }

    #[test]
    fn totals_follow_inserts_and_only_real_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Outbox::open(&dir.path().join("s.db")).unwrap();
        let r = reading("dev", Priority::Normal, Qos::AtLeastOnce, 1.5);
        store.commit(&[r.clone(), r], &[]).unwrap();
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
        assert_eq!(store.commit(&[], &[key, key, ghost]).unwrap(), 1);
        assert_eq!(store.totals().unwrap().rows, 1);
        let stats = store.device_stats().unwrap();
        assert_eq!(stats.len(), 1);
        assert_eq!((stats[0].device.as_str(), stats[0].rows), ("dev", 1));
    }

    /// Opening a store of a million rows must not read them all: every
    /// query run at open, and for the totals, is an index seek.
    #[test]
    fn opening_and_totals_never_scan_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = Outbox::open(&dir.path().join("s.db")).unwrap();
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

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(Outbox::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        assert!(matches!(
            Outbox::open(&path),
            Err(StoreError::NewerSchema { found }) if found == SCHEMA_VERSION + 1
        ));
    }
}
