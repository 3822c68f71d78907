//! Honest time in the store: which boot the gateway runs in, and the
//! correction of wall times taken before the clock synchronised.
//!
//! A row keeps its time since boot (`mono_ms`) and a small boot number
//! beside its wall time; the 36-character boot id is kept once, in the
//! one-row `boot` table, not per row, since every byte of a row is written
//! to the SD card again with each page it shares.

use rusqlite::{OptionalExtension, params};

use super::{Outbox, StoreError};

/// Through the partial index `outbox_unsynced`: a test checks the plan.
const CORRECT_OUTBOX: &str = "UPDATE outbox SET ts_ms = mono_ms + ?1, unsynced = 0
     WHERE unsynced = 1 AND boot = ?2 AND mono_ms IS NOT NULL";

impl Outbox {
    /// Records the boot the gateway runs in (the kernel's boot id) and
    /// returns its number: the same as last time for the same boot, the
    /// next one for a new boot. Only the current boot is kept: rows only
    /// ever ask "was I taken in this boot?".
    pub fn enter_boot(&mut self, boot_id: &str) -> Result<i64, StoreError> {
        let last: Option<(String, i64)> = self
            .conn
            .query_row("SELECT boot_id, n FROM boot WHERE one = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let n = match last {
            Some((id, n)) if id == boot_id => n,
            Some((_, n)) => n + 1,
            None => 1,
        };
        self.conn.execute(
            "INSERT OR REPLACE INTO boot (one, boot_id, n) VALUES (1, ?1, ?2)",
            params![boot_id, n],
        )?;
        self.boot = n;
        Ok(n)
    }

    /// Corrects the wall time of the unsynchronised rows of this boot from
    /// their monotonic time, `ts = mono + offset_ms` where `offset_ms` is
    /// `wall_now - mono_now` of a synchronised clock, and clears their
    /// mark. Rows of an earlier boot keep theirs: their monotonic time
    /// counted from another start. One statement; returns the rows changed.
    pub fn correct_times(&mut self, offset_ms: i64) -> Result<usize, StoreError> {
        if self.boot == 0 {
            return Ok(0);
        }
        let tx = self.conn.transaction()?;
        let rows = tx.execute(CORRECT_OUTBOX, params![offset_ms, self.boot])?;
        // A dead letter keeps its mark until it is corrected or sent.
        tx.execute(
            "UPDATE dead_letter SET ts_ms = mono_ms + ?1, unsynced = 0
             WHERE unsynced = 1 AND boot = ?2 AND mono_ms IS NOT NULL",
            params![offset_ms, self.boot],
        )?;
        // The journal's ages too, so retention counts from the true time.
        tx.execute(
            "UPDATE command_journal SET received_ms = mono_ms + ?1, unsynced = 0
             WHERE unsynced = 1 AND boot = ?2 AND mono_ms IS NOT NULL",
            params![offset_ms, self.boot],
        )?;
        tx.commit()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Limits;
    use super::super::outbox::tests::{append, open, reading};
    use crate::reading::{Priority, Qos};

    const DAY_MS: i64 = 86_400_000;

    fn times(store: &super::Outbox) -> Vec<(i64, bool)> {
        (store.fetch(Priority::Normal, 0, 100).unwrap())
            .iter()
            .map(|r| (r.ts_ms, r.unsynced))
            .collect()
    }

    #[test]
    fn a_sync_corrects_this_boots_rows_and_leaves_an_earlier_boots() {
        let dir = tempfile::tempdir().unwrap();
        let true_start = 1_800_000_000_000;
        // Boot A: the clock says three days too early, unsynced; one row.
        let mut store = open(&dir, Limits::default());
        assert_eq!(store.enter_boot("boot-a").unwrap(), 1);
        let mut r = reading("t", Priority::Normal, Qos::AtLeastOnce, 1.0);
        r.unsynced = true;
        r.mono_ms = 5_000;
        r.ts_ms = true_start - 3 * DAY_MS;
        append(&mut store, &[r.clone()]);
        drop(store);

        // Boot B: three unsynced rows 1.5 s apart, then one taken synced.
        let mut store = open(&dir, Limits::default());
        assert_eq!(store.enter_boot("boot-b").unwrap(), 2);
        let wrong = true_start - 3 * DAY_MS;
        let rows: Vec<_> = [0, 1_500, 3_000]
            .iter()
            .map(|d| {
                let mut r = r.clone();
                r.mono_ms = 10_000 + d;
                r.ts_ms = wrong + d;
                r
            })
            .collect();
        append(&mut store, &rows);
        let mut synced = r.clone();
        synced.unsynced = false;
        synced.mono_ms = 20_000;
        synced.ts_ms = true_start + 10_000;
        append(&mut store, &[synced]);

        // Synced: mono 0 of boot B was at `true_start`.
        assert_eq!(store.correct_times(true_start).unwrap(), 3);
        assert_eq!(
            times(&store),
            [
                (true_start - 3 * DAY_MS, true), // boot A: untouched, still marked
                (true_start + 10_000, false),
                (true_start + 11_500, false),
                (true_start + 13_000, false),
                (true_start + 10_000, false), // already right: untouched
            ]
        );
        // Nothing left to correct; a second sync changes nothing.
        assert_eq!(store.correct_times(true_start + 7).unwrap(), 0);
        drop(store);

        // A restart in the same boot keeps the boot number.
        let mut store = open(&dir, Limits::default());
        assert_eq!(store.enter_boot("boot-b").unwrap(), 2);
        let kept: i64 = store
            .conn
            .query_row("SELECT count(*) FROM boot", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 1, "only the current boot is kept");
    }

    #[test]
    fn max_age_ages_this_boots_rows_by_their_monotonic_time() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_age_ms: Some(60_000),
            ..Limits::default()
        };
        let mut store = open(&dir, limits);
        store.enter_boot("boot-b").unwrap();
        // Taken while the wall clock was three days behind: by wall time
        // they look three days old once it syncs, but they are 30 s old.
        let mut r = reading("t", Priority::Normal, Qos::AtLeastOnce, 1.0);
        r.unsynced = true;
        r.mono_ms = 100_000;
        r.ts_ms = 1_000;
        let now_wall = 3 * DAY_MS;
        let first = [store.stage(&r)];
        let report = store
            .commit(
                &super::super::Changes {
                    readings: &first,
                    ..Default::default()
                },
                super::super::Now {
                    wall_ms: now_wall,
                    mono_ms: Some(130_000),
                    unsynced: false,
                },
            )
            .unwrap();
        assert!(report.evicted.is_empty(), "{:?}", report.evicted);
        // Without the monotonic time, the wall clock decides: evicted.
        let report = store
            .commit(&super::super::Changes::default(), now_wall)
            .unwrap();
        assert_eq!(report.evicted.get("t"), Some(&1));
        // Kept again while 59 s old; evicted at 61 s, wall time alike.
        let young = super::super::Now {
            wall_ms: now_wall,
            mono_ms: Some(159_000),
            unsynced: false,
        };
        let staged = [store.stage(&r)];
        let changes = super::super::Changes {
            readings: &staged,
            ..Default::default()
        };
        assert!(store.commit(&changes, young).unwrap().evicted.is_empty());
        let report = store
            .commit(
                &super::super::Changes::default(),
                super::super::Now {
                    wall_ms: now_wall,
                    mono_ms: Some(161_000),
                    unsynced: false,
                },
            )
            .unwrap();
        assert_eq!(report.evicted.get("t"), Some(&1));
    }

    #[test]
    fn the_journal_keeps_this_boots_ids_through_a_clock_jump() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir, Limits::default());
        store.enter_boot("boot-b").unwrap();
        let keep = super::super::JournalLimits {
            retention_ms: DAY_MS,
            max_rows: 100,
        };
        let true_start = 1_800_000_000_000;
        // Received 10 s after boot, while the clock was 3 days behind.
        let unsynced = crate::clock::Stamp {
            wall_ms: true_start - 3 * DAY_MS + 10_000,
            mono_ms: 10_000,
            unsynced: true,
        };
        let new = super::super::Journaled::New;
        assert_eq!(store.journal_command("c-1", unsynced, keep).unwrap(), new);
        // NTP has set the clock, the store not yet corrected: by wall time
        // c-1 is 3 days old, by its time since boot 20 s.
        let synced = crate::clock::Stamp {
            wall_ms: true_start + 30_000,
            mono_ms: 30_000,
            unsynced: false,
        };
        assert_eq!(store.journal_command("c-2", synced, keep).unwrap(), new);
        assert_eq!(
            store.journal_command("c-1", synced, keep).unwrap(),
            super::super::Journaled::Received,
            "kept, so a redelivery does not run it again"
        );
        // The correction gives it its true time.
        store.correct_times(true_start).unwrap();
        let received: i64 = store
            .conn
            .query_row(
                "SELECT received_ms FROM command_journal WHERE id = 'c-1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(received, true_start + 10_000);
        // And the retention still ends: a day and a minute later, by
        // either clock, it goes.
        let later = crate::clock::Stamp {
            wall_ms: true_start + DAY_MS + 70_000,
            mono_ms: DAY_MS + 70_000,
            unsynced: false,
        };
        assert_eq!(store.journal_command("c-3", later, keep).unwrap(), new);
        assert_eq!(store.journal_command("c-1", later, keep).unwrap(), new);
    }

    #[test]
    fn a_dead_letter_keeps_its_mark_and_is_corrected_like_a_queued_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir, Limits::default());
        store.enter_boot("boot-b").unwrap();
        let mut r = reading("t", Priority::Normal, Qos::AtLeastOnce, 1.0);
        (r.unsynced, r.mono_ms, r.ts_ms) = (true, 4_000, 77);
        append(&mut store, &[r.clone(), r]);
        let keys: Vec<_> = (store.fetch(Priority::Normal, 0, 10).unwrap())
            .iter()
            .map(|r| (r.key(), "refused".to_string()))
            .collect();
        let changes = super::super::Changes {
            refused: &keys,
            ..Default::default()
        };
        store.commit(&changes, 0).unwrap();
        assert!(times(&store).is_empty());
        // One comes back before the sync: still marked.
        store
            .conn
            .execute("UPDATE dead_letter SET device = 'u' WHERE seq = 2", [])
            .unwrap();
        assert_eq!(store.retry_dead(Some("t")).unwrap(), 1);
        assert_eq!(times(&store), [(77, true)]);
        // The sync corrects both, the one still dead too.
        assert_eq!(store.correct_times(1_000_000).unwrap(), 1);
        assert_eq!(store.retry_dead(None).unwrap(), 1);
        assert_eq!(times(&store), [(1_004_000, false), (1_004_000, false)]);
    }

    /// A queue of a million rows must not be read whole at every start.
    #[test]
    fn the_correction_seeks_the_marked_rows_and_scans_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, Limits::default());
        let plan: Vec<String> = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", super::CORRECT_OUTBOX))
            .unwrap()
            .query_map([1, 1], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert!(plan[0].starts_with("SEARCH"), "{plan:?}");
        assert!(plan[0].contains("outbox_unsynced"), "{plan:?}");
    }

    /// Readings still in memory (not yet committed, or stamped just before
    /// the sync and appended after it) are corrected like stored rows.
    #[tokio::test]
    async fn readings_not_yet_stored_are_corrected_too() {
        use crate::clock::Clock;
        use crate::config::{Bounded, Duration, StoreConfig};
        let dir = tempfile::tempdir().unwrap();
        // Commits only on request.
        let lazy = StoreConfig {
            flush_interval: Duration::from_secs(3_600),
            flush_rows: Bounded(100_000),
            ..StoreConfig::default()
        };
        let clock = Clock::manual(1_000);
        clock.set_synced(false);
        let path = dir.path().join("s.db");
        let (store, thread) = super::super::Store::open(&path, &lazy, clock.clone()).unwrap();
        let stamped = |clock: &Clock| {
            let stamp = clock.stamp();
            let mut r = reading("t", Priority::Normal, Qos::AtLeastOnce, 1.0);
            (r.ts_ms, r.mono_ms, r.unsynced) = (stamp.wall_ms, stamp.mono_ms, stamp.unsynced);
            r
        };
        clock.advance(std::time::Duration::from_millis(500));
        store.append(stamped(&clock)).await.unwrap(); // in memory
        clock.advance(std::time::Duration::from_millis(250));
        let late = stamped(&clock); // stamped, not yet appended
        // NTP sets the clock to the true time: mono 0 was at 5,000,000.
        clock.set_wall_ms(5_000_750);
        clock.set_synced(true);
        assert_eq!(store.correct_times().await.unwrap(), 0, "none stored yet");
        store.append(late).await.unwrap();
        store.flush().await.unwrap();
        let rows = store.fetch([0; 3], 10).await.unwrap();
        let times: Vec<_> = rows.iter().map(|r| (r.ts_ms, r.unsynced)).collect();
        assert_eq!(times, [(5_000_500, false), (5_000_750, false)]);
        drop(store);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap();
    }
}
