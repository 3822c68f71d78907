//! Rows the broker refused: moved out of the outbox with the reason, kept
//! (the newest ones, bounded) for `queue` and `P/status`, never sent again.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, Transaction, params};

use super::{Outbox, RowKey, StoreError};

/// Dead letters kept at most; the oldest go first.
const MAX_DEAD_LETTERS: i64 = 10_000;

/// A row that will not be sent again, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub seq: i64,
    pub device: String,
    /// When the reading was taken.
    pub ts_ms: i64,
    pub reason: String,
}

/// Moves `refused` rows from the outbox to the dead letters, inside the
/// commit's transaction.
pub(super) fn bury(
    tx: &Transaction<'_>,
    refused: &[(RowKey, String)],
    now_ms: i64,
) -> rusqlite::Result<()> {
    if refused.is_empty() {
        return Ok(());
    }
    let mut dead = tx.prepare_cached(
        "INSERT OR IGNORE INTO dead_letter
            (seq, priority, qos, ts_ms, device, quality, vals, error, reason, at_ms, topic, correlation,
             mono_ms, boot, unsynced, kind)
         SELECT seq, priority, qos, ts_ms, device, quality, vals, error, ?3, ?4, topic, correlation,
             mono_ms, boot, unsynced, kind
         FROM outbox WHERE priority = ?1 AND seq = ?2",
    )?;
    let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE priority = ?1 AND seq = ?2")?;
    for (key, reason) in refused {
        dead.execute(params![key.priority as i64, key.seq, reason, now_ms])?;
        delete.execute(params![key.priority as i64, key.seq])?;
    }
    // The dead letters keep the newest MAX_DEAD_LETTERS rows.
    tx.prepare_cached(
        "DELETE FROM dead_letter WHERE seq <= (SELECT seq FROM dead_letter ORDER BY seq DESC LIMIT 1 OFFSET ?1)",
    )?
    .execute([MAX_DEAD_LETTERS])?;
    Ok(())
}

impl Outbox {
    /// Counts a failed attempt on the rows of one publish (the broker
    /// closed the connection right after it); at `max_attempts` they move
    /// to the dead letters with `reason`. One transaction; returns whether
    /// they were moved.
    pub fn suspect(
        &mut self,
        keys: &[RowKey],
        reason: &str,
        max_attempts: u32,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let mut most = 0;
        {
            let mut bump = tx.prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1 WHERE priority = ?1 AND seq = ?2
                 RETURNING attempts",
            )?;
            for key in keys {
                let attempts: Option<i64> = bump
                    .query_row(params![key.priority as i64, key.seq], |r| r.get(0))
                    .optional()?;
                most = most.max(attempts.unwrap_or(0));
            }
        }
        let buried = most >= i64::from(max_attempts);
        if buried {
            let refused: Vec<(RowKey, String)> = keys
                .iter()
                .map(|k| (*k, format!("{reason} ({most} attempts)")))
                .collect();
            bury(&tx, &refused, now_ms)?;
        }
        tx.commit()?;
        Ok(buried)
    }

    /// Rows the broker refused, per device.
    pub fn dead_letters(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT device, count(*) FROM dead_letter GROUP BY device ORDER BY device",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Puts the dead letters (of `device`, or all) back into the outbox with
    /// their seq and no attempts counted; returns how many. A running
    /// gateway sends them from its next connection on.
    pub fn retry_dead(&mut self, device: Option<&str>) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let moved = tx.execute(
            "INSERT OR IGNORE INTO outbox
                (priority, seq, qos, ts_ms, device, quality, vals, error, topic, correlation,
                 mono_ms, boot, unsynced, kind)
             SELECT priority, seq, qos, ts_ms, device, quality, vals, error, topic, correlation,
                 mono_ms, boot, unsynced, kind
             FROM dead_letter WHERE ?1 IS NULL OR device = ?1",
            [device],
        )?;
        tx.execute(
            "DELETE FROM dead_letter WHERE ?1 IS NULL OR device = ?1",
            [device],
        )?;
        tx.commit()?;
        Ok(moved)
    }

    /// The newest `limit` dead letters (of `device`, or all), newest first.
    pub fn dead_letter_list(
        &self,
        limit: usize,
        device: Option<&str>,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, device, ts_ms, reason FROM dead_letter
             WHERE ?2 IS NULL OR device = ?2 ORDER BY seq DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64, device], |r| {
            Ok(DeadLetter {
                seq: r.get(0)?,
                device: r.get(1)?,
                ts_ms: r.get(2)?,
                reason: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::outbox::tests::{append, open, reading, seqs};
    use super::super::{Changes, Limits, RowKey};
    use super::*;
    use crate::reading::{Priority, Qos};

    #[test]
    fn refused_rows_move_to_the_dead_letters_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir, Limits::default());
        let batch = [
            reading("secret", Priority::Normal, Qos::AtLeastOnce, 1.0),
            reading("open", Priority::Normal, Qos::AtLeastOnce, 2.0),
        ];
        append(&mut store, &batch);
        let refused = [(
            RowKey {
                priority: Priority::Normal,
                seq: 1,
            },
            "0x87 not authorized".to_owned(),
        )];
        store
            .commit(
                &Changes {
                    refused: &refused,
                    ..Changes::default()
                },
                5,
            )
            .unwrap();
        assert_eq!(seqs(&store.peek(10, None).unwrap()), [2]);
        assert_eq!(
            store.dead_letters().unwrap(),
            BTreeMap::from([("secret".into(), 1)])
        );
        let listed = store.dead_letter_list(5, None).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (
                listed[0].seq,
                listed[0].device.as_str(),
                listed[0].reason.as_str()
            ),
            (1, "secret", "0x87 not authorized")
        );
        assert!(store.dead_letter_list(5, Some("open")).unwrap().is_empty());
        assert_eq!(store.totals().unwrap().rows, 1);

        // Put back: the same seq, sent again like any row.
        assert_eq!(store.retry_dead(Some("open")).unwrap(), 0);
        assert_eq!(store.retry_dead(None).unwrap(), 1);
        assert!(store.dead_letters().unwrap().is_empty());
        assert_eq!(seqs(&store.peek(10, None).unwrap()), [1, 2]);
        assert_eq!(store.totals().unwrap().rows, 2);
    }

    #[test]
    fn a_row_the_broker_keeps_closing_on_is_dead_lettered_after_max_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir, Limits::default());
        append(
            &mut store,
            &[
                reading("big", Priority::Normal, Qos::AtLeastOnce, 1.0),
                reading("small", Priority::Normal, Qos::AtLeastOnce, 2.0),
            ],
        );
        let big = [RowKey {
            priority: Priority::Normal,
            seq: 1,
        }];
        let why = "the broker closed the connection after it";
        assert!(!store.suspect(&big, why, 3, 5).unwrap());
        drop(store);
        // Attempts survive a restart.
        let mut store = open(&dir, Limits::default());
        assert!(!store.suspect(&big, why, 3, 6).unwrap());
        assert!(store.suspect(&big, why, 3, 7).unwrap());
        assert_eq!(seqs(&store.fetch(Priority::Normal, 0, 10).unwrap()), [2]);
        let dead = store.dead_letter_list(10, None).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].seq, dead[0].device.as_str()), (1, "big"));
        assert!(dead[0].reason.contains("(3 attempts)"), "{dead:?}");
        // A row already gone counts nothing and moves nothing.
        assert!(!store.suspect(&big, why, 1, 8).unwrap());
        assert_eq!(store.dead_letters().unwrap().get("big"), Some(&1));
    }
}
