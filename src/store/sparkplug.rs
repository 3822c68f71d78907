//! The Sparkplug `bdSeq`: one number per MQTT CONNECT, kept across
//! restarts so that a host never takes a new session's NDEATH for an old
//! one's.

use rusqlite::params;

use super::{Outbox, StoreError};

impl Outbox {
    /// The `bdSeq` for the next CONNECT (0 to 255, then 0 again), counted
    /// on disk before it is used.
    pub fn next_bd_seq(&mut self) -> Result<i64, StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('spb_bdseq', 0)",
            [],
        )?;
        let current: i64 =
            tx.query_row("SELECT value FROM meta WHERE key = 'spb_bdseq'", [], |r| {
                r.get(0)
            })?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'spb_bdseq'",
            params![(current + 1) % 256],
        )?;
        tx.commit()?;
        Ok(current.rem_euclid(256))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::limits::Limits;

    #[test]
    fn bd_seq_counts_every_connect_across_reopens_and_wraps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut outbox = Outbox::open(&path, Limits::default()).unwrap();
        assert_eq!(outbox.next_bd_seq().unwrap(), 0);
        assert_eq!(outbox.next_bd_seq().unwrap(), 1);
        drop(outbox);
        let mut outbox = Outbox::open(&path, Limits::default()).unwrap();
        assert_eq!(outbox.next_bd_seq().unwrap(), 2);
        for _ in 3..256 {
            outbox.next_bd_seq().unwrap();
        }
        assert_eq!(outbox.next_bd_seq().unwrap(), 0, "wraps after 255");
    }
}
