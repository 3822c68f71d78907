//! The store's tables and how an older store is brought up to date.
//!
//! `PRAGMA user_version` records the schema version. A newer binary
//! migrates an older store in place, all steps in one transaction; a store
//! written by a newer binary is refused rather than misread.

use rusqlite::Connection;

use super::StoreError;

/// `MIGRATIONS[i]` takes a store from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the outbox, clustered by (priority, seq) so that "oldest rows of
    // the highest priority" is a range read with no secondary index; the
    // seq counter; row and byte totals kept by triggers.
    "
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
        UPDATE meta SET value = value + length(NEW.vals) + length(NEW.device) + 32
            WHERE key = 'bytes';
    END;
    CREATE TRIGGER outbox_count_delete AFTER DELETE ON outbox BEGIN
        UPDATE meta SET value = value - 1 WHERE key = 'rows';
        UPDATE meta SET value = value - length(OLD.vals) - length(OLD.device) - 32
            WHERE key = 'bytes';
    END;
    ",
    // 2: readings dropped by the limits or a full disk, per device.
    "
    CREATE TABLE evictions (device TEXT PRIMARY KEY, rows INTEGER NOT NULL) WITHOUT ROWID;
    ",
    // 3: why a reading's quality is bad.
    "
    ALTER TABLE outbox ADD COLUMN error TEXT;
    ",
    // 4: rows the broker refused (MQTT 5 reason code >= 0x80), kept with the
    // reason instead of being retried forever.
    "
    CREATE TABLE dead_letter (
        seq      INTEGER PRIMARY KEY,
        priority INTEGER NOT NULL,
        qos      INTEGER NOT NULL,
        ts_ms    INTEGER NOT NULL,
        device   TEXT NOT NULL,
        quality  INTEGER NOT NULL,
        vals     TEXT NOT NULL,
        error    TEXT,
        reason   TEXT NOT NULL,
        at_ms    INTEGER NOT NULL
    );
    ",
    // 5: the last good remote configuration, replaced in one transaction so
    // that a power cut leaves the old one or the new one.
    "
    CREATE TABLE config_cache (
        slot    TEXT PRIMARY KEY,
        version TEXT NOT NULL,
        text    TEXT NOT NULL,
        at_ms   INTEGER NOT NULL
    ) WITHOUT ROWID;
    ",
    // 6: messages other than readings (answers to commands) travel through
    // the outbox too, to their own topic; and the command journal that
    // makes commands idempotent.
    "
    ALTER TABLE outbox ADD COLUMN topic TEXT;
    ALTER TABLE outbox ADD COLUMN correlation BLOB;
    CREATE TABLE command_journal (
        id          TEXT PRIMARY KEY,
        received_ms INTEGER NOT NULL,
        response    TEXT
    ) WITHOUT ROWID;
    ",
    // 7: how often the broker closed the connection right after a row was
    // sent, so that a row it will never take goes to the dead letters
    // instead of stopping every row behind it.
    // A dead letter keeps the topic and correlation data of an answer, so
    // that `queue retry-dead` can send it where it was going.
    "
    ALTER TABLE outbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE dead_letter ADD COLUMN topic TEXT;
    ALTER TABLE dead_letter ADD COLUMN correlation BLOB;
    ",
    // 8: where each command is (0 received, 1 running, 2 answered), so a
    // duplicate of one still running waits for its answer and only a
    // command cut off while running is answered "the gateway stopped"; the
    // journal's age index and its row count, so pruning and the row cap
    // cost a range read, not a scan. Unanswered rows of older stores were
    // running when the gateway stopped.
    "
    ALTER TABLE command_journal ADD COLUMN state INTEGER NOT NULL DEFAULT 1;
    UPDATE command_journal SET state = 2 WHERE response IS NOT NULL;
    CREATE INDEX command_journal_age ON command_journal (received_ms);
    INSERT INTO meta VALUES ('journal_rows', (SELECT count(*) FROM command_journal));
    CREATE TRIGGER command_journal_count_insert AFTER INSERT ON command_journal BEGIN
        UPDATE meta SET value = value + 1 WHERE key = 'journal_rows';
    END;
    CREATE TRIGGER command_journal_count_delete AFTER DELETE ON command_journal BEGIN
        UPDATE meta SET value = value - 1 WHERE key = 'journal_rows';
    END;
    ",
    // 9: honest time. Each reading (in the outbox or the dead letters,
    // and each journaled command) keeps its time since boot and the boot
    // it was taken in, and whether the wall clock was unsynchronised then,
    // so that its wall time can be corrected once the clock syncs. The
    // boot id (36 characters) is kept once, in `boot`; a row holds a small
    // boot number (1 byte) and a flag that costs no payload byte (SQLite
    // stores 0 and 1 in the record header), so a row grows by about 8
    // bytes. Rows of older stores have no boot: they are never corrected.
    // The partial index holds only marked rows, so the correction at each
    // start and sync is a seek, not a scan of the queue, and a gateway
    // whose clock is synchronised writes no index entry at all.
    "
    ALTER TABLE outbox ADD COLUMN mono_ms INTEGER;
    ALTER TABLE outbox ADD COLUMN boot INTEGER;
    ALTER TABLE outbox ADD COLUMN unsynced INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX outbox_unsynced ON outbox (boot) WHERE unsynced = 1;
    CREATE TABLE boot (
        one     INTEGER PRIMARY KEY CHECK (one = 1),
        boot_id TEXT NOT NULL,
        n       INTEGER NOT NULL
    );
    ALTER TABLE command_journal ADD COLUMN mono_ms INTEGER;
    ALTER TABLE command_journal ADD COLUMN boot INTEGER;
    ALTER TABLE command_journal ADD COLUMN unsynced INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE dead_letter ADD COLUMN mono_ms INTEGER;
    ALTER TABLE dead_letter ADD COLUMN boot INTEGER;
    ALTER TABLE dead_letter ADD COLUMN unsynced INTEGER NOT NULL DEFAULT 0;
    ",
    // 10: device availability. An outbox row of kind 1 is a device's
    // retained availability message (its topic follows from the device);
    // `availability` keeps each device's current state, so that every
    // connection can publish it again and a restart starts from it.
    "
    ALTER TABLE outbox ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE dead_letter ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE availability (
        device TEXT PRIMARY KEY,
        state  TEXT NOT NULL,
        at_ms  INTEGER NOT NULL
    ) WITHOUT ROWID;
    ",
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub fn version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}

/// Refuses a store from a newer binary.
pub fn ensure_readable(conn: &Connection) -> Result<i64, StoreError> {
    let found = version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema { found });
    }
    Ok(found)
}

/// Brings the store up to `SCHEMA_VERSION`.
pub fn migrate(conn: &Connection) -> Result<(), StoreError> {
    migrate_to(conn, SCHEMA_VERSION)
}

/// All steps in one transaction, so that a reader (the `queue` command)
/// sees the old schema or the new one, never one in between.
fn migrate_to(conn: &Connection, target: i64) -> Result<(), StoreError> {
    let from = ensure_readable(conn)?;
    if from >= target {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    for sql in &MIGRATIONS[from as usize..target as usize] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", target)?;
    tx.commit()?;
    if from > 0 {
        tracing::info!("store schema upgraded from version {from} to {target}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_store_is_upgraded_in_place_keeping_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let conn = Connection::open(&path).unwrap();
        migrate_to(&conn, 1).unwrap();
        conn.execute(
            "INSERT INTO outbox VALUES (1, 7, 1, 0, 'pump', 0, '{\"v\":1}')",
            [],
        )
        .unwrap();
        assert_eq!(version(&conn).unwrap(), 1);

        migrate(&conn).unwrap();
        assert_eq!(version(&conn).unwrap(), SCHEMA_VERSION);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        let evictions: i64 = conn
            .query_row("SELECT count(*) FROM evictions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(evictions, 0);
        // Running it again changes nothing.
        migrate(&conn).unwrap();
    }

    #[test]
    fn a_store_from_a_newer_binary_is_refused() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = migrate(&conn).unwrap_err();
        assert!(matches!(err, StoreError::NewerSchema { found } if found == SCHEMA_VERSION + 1));
        assert!(err.to_string().contains("newer than this binary"));
    }
}
