//! Rows the broker refused: moved out of the outbox with the reason, kept
//! (the newest ones, bounded) for `queue` and `P/status`, never sent again.

use std::collections::BTreeMap;

use rusqlite::{Transaction, params};

use super::{Outbox, RowKey, StoreError};

/// Dead letters kept at most; the oldest go first.
const MAX_DEAD_LETTERS: i64 = 10_000;

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
         SELECT seq, priority, qos, ts_ms, device, quality, vals, error, ?3, ?4
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
    /// Rows the broker refused, per device.
    pub fn dead_letters(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT device, count(*) FROM dead_letter GROUP BY device ORDER BY device",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest dead letters: (seq, device, reason), newest first.
    pub fn dead_letter_reasons(
        &self,
        limit: usize,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, device, reason FROM dead_letter ORDER BY seq DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
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
        assert_eq!(
            store.dead_letter_reasons(5).unwrap(),
            [(1, "secret".to_owned(), "0x87 not authorized".to_owned())]
        );
        assert_eq!(store.totals().unwrap().rows, 1);
    }
}
