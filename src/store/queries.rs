//! What the `queue` command asks of a store, possibly next to a running
//! daemon: statistics per device, a look at the next rows, and purges.
//! These read whole tables; none of them is on the daemon's hot path.

use rusqlite::params;

use super::outbox::row;
use super::{Outbox, Row, StoreError};
use crate::reading::Priority;

/// One line of `queue stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceStats {
    pub device: String,
    pub priority: Priority,
    pub rows: u64,
    pub bytes: u64,
    pub oldest_ts_ms: i64,
}

impl Outbox {
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

    /// The next `limit` rows the uplink would send, optionally of one device.
    pub fn peek(&self, limit: usize, device: Option<&str>) -> Result<Vec<Row>, StoreError> {
        let mut rows = Vec::new();
        for priority in Priority::ALL {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, qos, ts_ms, device, quality, vals, error, topic, correlation, unsynced, kind FROM outbox
                 WHERE priority = ?1 AND (?2 IS NULL OR device = ?2) ORDER BY seq LIMIT ?3",
            )?;
            let found = stmt.query_map(
                params![priority as i64, device, (limit - rows.len()) as i64],
                |r| row(r, priority),
            )?;
            for r in found {
                rows.push(r?);
            }
            if rows.len() >= limit {
                break;
            }
        }
        Ok(rows)
    }

    /// Rows of `device` (all when `None`) taken before `before_ms` (any time
    /// when `None`): what `purge` would delete.
    pub fn count(&self, device: Option<&str>, before_ms: Option<i64>) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM outbox WHERE (?1 IS NULL OR device = ?1) AND (?2 IS NULL OR ts_ms < ?2)",
            params![device, before_ms],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    /// Deletes the rows of `device` (all devices when `None`) taken before
    /// `before_ms` (any time when `None`). Not counted as evictions: a
    /// person asked for it.
    pub fn purge(
        &mut self,
        device: Option<&str>,
        before_ms: Option<i64>,
    ) -> Result<usize, StoreError> {
        let deleted = self.conn.execute(
            "DELETE FROM outbox WHERE (?1 IS NULL OR device = ?1) AND (?2 IS NULL OR ts_ms < ?2)",
            params![device, before_ms],
        )?;
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::super::outbox::tests::{append, open, reading, seqs};
    use super::super::{Evicted, Limits, Outbox};
    use crate::reading::{Priority, Qos};

    #[test]
    fn make_room_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir, Limits::default());
        let mut batch = Vec::new();
        for i in 0..5 {
            let mut r = reading("a", Priority::Normal, Qos::AtLeastOnce, i.into());
            r.ts_ms = 1_000 * i64::from(i);
            batch.push(r);
            batch.push(reading("b", Priority::High, Qos::AtLeastOnce, i.into()));
        }
        append(&mut store, &batch);
        let a = store.fetch(Priority::Normal, 0, 5).unwrap();
        // a's first row is delivered, its second on its way: the delivered
        // one is deleted uncounted, the one in flight stays, and the next
        // two oldest are evicted.
        let mut in_flight = [0; 3];
        in_flight[Priority::Normal as usize] = a[1].seq;
        assert_eq!(
            store.make_room(&[a[0].key()], 2, in_flight).unwrap(),
            Evicted::from([("a".into(), 2)])
        );
        assert_eq!(
            seqs(&store.fetch(Priority::Normal, 0, 5).unwrap()),
            [a[1].seq, a[4].seq]
        );
        // Purge: by device and by age, not counted as evictions.
        // a's row taken at 1s goes; the one of 4s stays.
        assert_eq!(store.purge(Some("a"), Some(4_000)).unwrap(), 1);
        assert_eq!(store.purge(Some("b"), None).unwrap(), 5);
        assert_eq!(store.purge(None, None).unwrap(), 1);
        assert_eq!(store.totals().unwrap().rows, 0);
        assert_eq!(store.evictions().unwrap(), Evicted::from([("a".into(), 2)]));
    }

    #[test]
    fn the_queue_command_can_read_while_the_daemon_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut daemon = Outbox::open(&path, Limits::default()).unwrap();
        append(
            &mut daemon,
            &[reading("a", Priority::Low, Qos::AtMostOnce, 1.0)],
        );
        let reader = Outbox::open_read_only(&path).unwrap();
        assert_eq!(reader.totals().unwrap().rows, 1);
        append(
            &mut daemon,
            &[reading("a", Priority::Low, Qos::AtMostOnce, 2.0)],
        );
        assert_eq!(reader.totals().unwrap().rows, 2);
        let mut purger = Outbox::open_for_changes(&path).unwrap();
        assert_eq!(purger.purge(None, None).unwrap(), 2);
        append(
            &mut daemon,
            &[reading("a", Priority::Low, Qos::AtMostOnce, 3.0)],
        );
        assert_eq!(seqs(&reader.peek(10, None).unwrap()), [3]);
    }
}
