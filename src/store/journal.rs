//! The command journal: every command id is recorded before the broker
//! gets its ack, and its answer is kept with it, so a redelivered command
//! is answered again from here and never run twice.

use rusqlite::{OptionalExtension, params};

use super::limits::Now;
use super::{Outbox, StoreError};
use crate::reading::{Priority, Qos};

/// A message for the outbox that is not a reading: an answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandAnswer {
    /// Shown where a device's name would be (`queue stats`, `peek`).
    pub source: String,
    pub topic: String,
    pub payload: String,
    pub correlation: Option<Vec<u8>>,
    pub qos: Qos,
    pub priority: Priority,
    pub ts_ms: i64,
}

/// What the journal knows of a command id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Journaled {
    /// First seen now: execute it.
    New,
    /// Seen before, answered with this response.
    Answered(String),
    /// Seen before and handed to its device, never answered: running now,
    /// or cut off by a stop of the gateway.
    Running,
    /// Seen before, never started (the gateway stopped before it ran).
    Received,
}

/// How long and how many command ids the journal keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalLimits {
    pub retention_ms: i64,
    /// Rows at most; past it the oldest answered ids go first.
    pub max_rows: i64,
}

const RECEIVED: i64 = 0;
const RUNNING: i64 = 1;
const ANSWERED: i64 = 2;

impl Outbox {
    /// Records command `id` as received, unless it was seen before; prunes
    /// what is older than the retention or over the row cap. One
    /// transaction, on disk when this returns: only then may the broker
    /// get its ack.
    ///
    /// An id is kept for the retention by its time since boot when it was
    /// received in this boot, so that the jump of the wall clock when NTP
    /// syncs (days, on a Pi that was off for days) does not prune the ids
    /// of the last minutes and let a redelivered command run twice.
    pub fn journal_command(
        &mut self,
        id: &str,
        now: impl Into<Now>,
        limits: JournalLimits,
    ) -> Result<Journaled, StoreError> {
        let now = now.into();
        let now_ms = now.wall_ms;
        let boot = (self.boot != 0).then_some(self.boot);
        let tx = self.conn.transaction()?;
        let seen: Option<(i64, Option<String>)> = tx
            .query_row(
                "SELECT state, response FROM command_journal WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let outcome = match seen {
            Some((_, Some(response))) => Journaled::Answered(response),
            Some((RECEIVED, None)) => Journaled::Received,
            Some(_) => Journaled::Running,
            None => {
                tx.execute(
                    "INSERT INTO command_journal (id, received_ms, state, mono_ms, boot, unsynced)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![id, now_ms, RECEIVED, now.mono_ms, boot, now.unsynced],
                )?;
                Journaled::New
            }
        };
        // A range read of the age index, as before; this boot's young ids
        // are spared whatever their wall time says.
        let mono_cutoff = now.mono_ms.map(|m| m - limits.retention_ms);
        tx.execute(
            "DELETE FROM command_journal WHERE received_ms < ?1
             AND NOT coalesce(boot = ?2 AND mono_ms >= ?3, 0)",
            params![now_ms - limits.retention_ms, boot, mono_cutoff],
        )?;
        let rows: i64 = tx.query_row(
            "SELECT value FROM meta WHERE key = 'journal_rows'",
            [],
            |r| r.get(0),
        )?;
        let over = rows - limits.max_rows;
        if over > 0 {
            // Answered ids first: an unanswered one still has work to do.
            let removed = tx.execute(
                "DELETE FROM command_journal WHERE id IN (SELECT id FROM command_journal
                 WHERE state = ?1 AND id <> ?2 ORDER BY received_ms LIMIT ?3)",
                params![ANSWERED, id, over],
            )?;
            let left = over - removed as i64;
            if left > 0 {
                tx.execute(
                    "DELETE FROM command_journal WHERE id IN (SELECT id FROM command_journal
                     WHERE id <> ?1 ORDER BY received_ms LIMIT ?2)",
                    params![id, left],
                )?;
            }
        }
        tx.commit()?;
        Ok(outcome)
    }

    /// Forgets command `id`: the id was made by the gateway for a message
    /// the broker delivers for the first time, so what the journal holds
    /// under it belongs to an older message that happened to share it.
    pub fn forget_command(&mut self, id: &str) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM command_journal WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Marks command `id` as handed to its device: from here on, a stop of
    /// the gateway may have cut it off, so it is never started again.
    pub fn command_running(&mut self, id: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE command_journal SET state = ?2 WHERE id = ?1",
            params![id, RUNNING],
        )?;
        Ok(())
    }

    /// Records the answer to command `id` and queues it, in one
    /// transaction: an answer is never lost, nor sent without being kept.
    pub fn answer_command(&mut self, id: &str, answer: &CommandAnswer) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE command_journal SET response = ?2, state = ?3 WHERE id = ?1",
            params![id, answer.payload, ANSWERED],
        )?;
        tx.execute(
            "INSERT INTO outbox (priority, seq, qos, ts_ms, device, quality, vals, topic, correlation)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8)",
            params![
                answer.priority as i64,
                self.next_seq,
                answer.qos as i64,
                answer.ts_ms,
                answer.source,
                answer.payload,
                answer.topic,
                answer.correlation
            ],
        )?;
        self.next_seq += 1;
        match super::outbox::reserve(&tx, self.next_seq, self.reserved)
            .and_then(|r| Ok((tx.commit()?, r)))
        {
            Ok(((), reserved)) => {
                if let Some(r) = reserved {
                    self.reserved = r;
                }
                Ok(())
            }
            Err(e) => {
                // Not written: the seq may be handed out again.
                self.next_seq -= 1;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Limits;
    use super::super::outbox::tests::open;
    use super::*;
    use crate::reading::{Priority, Qos};

    const KEEP: JournalLimits = JournalLimits {
        retention_ms: 60_000,
        max_rows: 100,
    };

    fn answer(id: &str) -> CommandAnswer {
        CommandAnswer {
            source: "(commands)".into(),
            topic: "p/responses".into(),
            payload: format!(r#"{{"id":"{id}","status":"ok"}}"#),
            correlation: Some(vec![1, 2]),
            qos: Qos::AtLeastOnce,
            priority: Priority::High,
            ts_ms: 1_002,
        }
    }

    /// The row count the triggers keep, which the cap reads.
    fn counted_rows(store: &Outbox) -> i64 {
        store
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'journal_rows'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn journal_rows(store: &Outbox) -> i64 {
        store
            .conn
            .query_row("SELECT count(*) FROM command_journal", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn commands_are_journaled_once_and_answers_queued_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir, Limits::default());
        assert_eq!(
            store.journal_command("c-1", 1_000, KEEP).unwrap(),
            Journaled::New
        );
        assert_eq!(
            store.journal_command("c-1", 1_001, KEEP).unwrap(),
            Journaled::Received
        );
        store.command_running("c-1").unwrap();
        assert_eq!(
            store.journal_command("c-1", 1_001, KEEP).unwrap(),
            Journaled::Running
        );
        let answer = answer("c-1");
        store.answer_command("c-1", &answer).unwrap();
        assert_eq!(
            store.journal_command("c-1", 1_003, KEEP).unwrap(),
            Journaled::Answered(answer.payload.clone())
        );
        let queued = store.fetch(Priority::High, 0, 10).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].topic.as_deref(), Some("p/responses"));
        assert_eq!(queued[0].values, answer.payload);
        assert_eq!(queued[0].correlation, Some(vec![1, 2]));
        // Pruned once older than the retention.
        assert_eq!(
            store.journal_command("c-2", 100_000, KEEP).unwrap(),
            Journaled::New
        );
        assert_eq!(
            store.journal_command("c-1", 100_001, KEEP).unwrap(),
            Journaled::New
        );
    }

    #[test]
    fn a_forgotten_id_is_new_again_and_leaves_the_count_right() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir, Limits::default());
        store.journal_command("ha-m7", 1_000, KEEP).unwrap();
        store.answer_command("ha-m7", &answer("ha-m7")).unwrap();
        store.forget_command("ha-m7").unwrap();
        store.forget_command("never-seen").unwrap();
        assert_eq!(journal_rows(&store), 0);
        assert_eq!(
            store.journal_command("ha-m7", 2_000, KEEP).unwrap(),
            Journaled::New
        );
        let counted = counted_rows(&store);
        assert_eq!(counted, 1);
    }

    #[test]
    fn the_row_cap_removes_the_oldest_answered_ids_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir, Limits::default());
        let cap = JournalLimits {
            retention_ms: i64::MAX / 2,
            max_rows: 10,
        };
        // The oldest id is still unanswered: it outlives answered ones.
        store.journal_command("waiting", 0, cap).unwrap();
        for i in 1..=30 {
            let id = format!("c-{i}");
            store.journal_command(&id, i, cap).unwrap();
            store.answer_command(&id, &answer(&id)).unwrap();
        }
        assert_eq!(journal_rows(&store), 10);
        assert_eq!(
            store.journal_command("waiting", 31, cap).unwrap(),
            Journaled::Received
        );
        assert_eq!(
            store.journal_command("c-30", 32, cap).unwrap(),
            Journaled::Answered(answer("c-30").payload)
        );
        assert_eq!(
            store.journal_command("c-5", 33, cap).unwrap(),
            Journaled::New
        );
        assert_eq!(journal_rows(&store), 10);
        // The counter the cap reads agrees with the table.
        let counted = counted_rows(&store);
        assert_eq!(counted, 10);
    }

    #[test]
    fn pruning_by_age_reads_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, Limits::default());
        let plan: String = store
            .conn
            .query_row(
                "EXPLAIN QUERY PLAN DELETE FROM command_journal WHERE received_ms < 5",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("command_journal_age"), "{plan}");
    }
}
