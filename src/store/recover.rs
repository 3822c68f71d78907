//! Opening the database file, and what to do when it is damaged.
//!
//! An SD card that lost power mid-write, or simply wore out, can leave a
//! file SQLite cannot trust. The gateway must still start: the damaged file
//! is moved aside (never deleted: someone may want to rescue its rows) and
//! a fresh store takes its place.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode};

use super::StoreError;

/// Opens `path` with the daemon's settings and checks it with
/// `PRAGMA quick_check`. Returns where a corrupt file was moved, if one was.
pub fn open_checked(path: &Path) -> Result<(Connection, Option<PathBuf>), StoreError> {
    match open_and_check(path) {
        Ok(conn) => Ok((conn, None)),
        Err(e) if is_corruption(&e) => {
            let moved = move_aside(path)?;
            tracing::error!(
                "the store {} is damaged ({e}); it was moved to {} and a new, empty store was created",
                path.display(),
                moved.display()
            );
            Ok((open_and_check(path)?, Some(moved)))
        }
        Err(e) => Err(e),
    }
}

fn open_and_check(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // WAL: readers (the `queue` command) never block the daemon. FULL: each
    // commit (one per flush interval, never one per reading) is on the card
    // before the next batch starts, so pulled power loses at most the
    // readings of one flush interval.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Keep the WAL file from growing without bound after a long backlog.
    conn.pragma_update(None, "journal_size_limit", 8 << 20)?;
    let verdict: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if verdict != "ok" {
        return Err(StoreError::Corrupt(verdict));
    }
    Ok(conn)
}

fn is_corruption(e: &StoreError) -> bool {
    match e {
        StoreError::Corrupt(_) => true,
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
            matches!(f.code, ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
        }
        _ => false,
    }
}

/// Renames the database and its WAL and shared-memory files to
/// `<name>.corrupt-<UTC timestamp>[-wal|-shm]`.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let target = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        let to = PathBuf::from(format!("{}{suffix}", target.display()));
        if from.exists() {
            std::fs::rename(&from, &to).map_err(|source| StoreError::MoveAside {
                path: from.display().to_string(),
                source,
            })?;
        }
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_database_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let (conn, moved) = open_checked(&path).unwrap();
        let moved = moved.expect("moved aside");
        assert!(
            moved
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("s.db.corrupt-")
        );
        assert_eq!(
            std::fs::read(&moved).unwrap(),
            vec![0x5a; 8192],
            "kept as it was"
        );
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }

    #[test]
    fn damaged_pages_are_found_by_quick_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
                 INSERT INTO t SELECT i, hex(randomblob(40)) FROM n;",
            )
            .unwrap();
        }
        // Scribble over the middle of the file, past the header page.
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 16_384);
        for b in &mut bytes[8_192..12_288] {
            *b = 0xff;
        }
        std::fs::write(&path, &bytes).unwrap();

        let (_, moved) = open_checked(&path).unwrap();
        assert!(moved.is_some(), "the damage must be detected");
    }

    #[test]
    fn a_healthy_store_stays_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(open_checked(&path).unwrap());
        let (_, moved) = open_checked(&path).unwrap();
        assert_eq!(moved, None);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("corrupt")), "{names:?}");
    }
}
