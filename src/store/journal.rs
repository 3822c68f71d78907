//! The command journal: every command id is recorded before the broker
//! gets its ack, and its answer is kept with it, so a redelivered command
//! is answered again from here and never run twice.

use rusqlite::{OptionalExtension, params};

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
    /// Seen before, never answered (the gateway stopped while it ran).
    Unanswered,
}

impl Outbox {
    /// Records command `id` as received, unless it was seen before; prunes
    /// entries older than `retention_ms`. One transaction, on disk when
    /// this returns: only then may the broker get its ack.
    pub fn journal_command(
        &mut self,
        id: &str,
        now_ms: i64,
        retention_ms: i64,
    ) -> Result<Journaled, StoreError> {
        let tx = self.conn.transaction()?;
        let seen: Option<Option<String>> = tx
            .query_row(
                "SELECT response FROM command_journal WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?;
        let outcome = match seen {
            Some(Some(response)) => Journaled::Answered(response),
            Some(None) => Journaled::Unanswered,
            None => {
                tx.execute(
                    "INSERT INTO command_journal (id, received_ms) VALUES (?1, ?2)",
                    params![id, now_ms],
                )?;
                Journaled::New
            }
        };
        tx.execute(
            "DELETE FROM command_journal WHERE received_ms < ?1",
            [now_ms - retention_ms],
        )?;
        tx.commit()?;
        Ok(outcome)
    }

    /// Records the answer to command `id` and queues it, in one
    /// transaction: an answer is never lost, nor sent without being kept.
    pub fn answer_command(&mut self, id: &str, answer: &CommandAnswer) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE command_journal SET response = ?2 WHERE id = ?1",
            params![id, answer.payload],
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
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'next_seq'",
            [self.next_seq + 1],
        )?;
        tx.commit()?;
        self.next_seq += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Limits;
    use super::super::outbox::tests::open;
    use super::*;
    use crate::reading::{Priority, Qos};

    #[test]
    fn commands_are_journaled_once_and_answers_queued_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir, Limits::default());
        assert_eq!(
            store.journal_command("c-1", 1_000, 60_000).unwrap(),
            Journaled::New
        );
        assert_eq!(
            store.journal_command("c-1", 1_001, 60_000).unwrap(),
            Journaled::Unanswered
        );
        let answer = CommandAnswer {
            source: "(commands)".into(),
            topic: "p/responses".into(),
            payload: r#"{"id":"c-1","status":"ok"}"#.into(),
            correlation: Some(vec![1, 2]),
            qos: Qos::AtLeastOnce,
            priority: Priority::High,
            ts_ms: 1_002,
        };
        store.answer_command("c-1", &answer).unwrap();
        assert_eq!(
            store.journal_command("c-1", 1_003, 60_000).unwrap(),
            Journaled::Answered(answer.payload.clone())
        );
        let queued = store.fetch(Priority::High, 0, 10).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].topic.as_deref(), Some("p/responses"));
        assert_eq!(queued[0].values, answer.payload);
        assert_eq!(queued[0].correlation, Some(vec![1, 2]));
        // Pruned once older than the retention.
        assert_eq!(
            store.journal_command("c-2", 100_000, 60_000).unwrap(),
            Journaled::New
        );
        assert_eq!(
            store.journal_command("c-1", 100_001, 60_000).unwrap(),
            Journaled::New
        );
    }
}
