//! The gateway's store seen from outside: through `fieldgate queue` while it
//! runs, and through the library once it has stopped.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::Gateway;

/// Runs `fieldgate queue --config <config> <args>`: (exit code, stdout).
pub fn queue(config: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fieldgate"))
        .args(["queue", "--config"])
        .arg(config)
        .args(args)
        .output()
        .expect("run fieldgate queue");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

/// The `rows` figure of `queue stats`.
pub fn queued_rows(config: &Path) -> u64 {
    let (code, text) = queue(config, &["stats"]);
    assert_eq!(code, 0, "{text}");
    if text.starts_with("no store at") {
        return 0;
    }
    text.lines()
        .find_map(|l| l.strip_prefix("rows"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rows line in {text}"))
}

/// Waits until the queue of `gw` (which cannot reach its broker) holds
/// `rows`, or panics with its log after `timeout`.
#[track_caller]
pub fn wait_for_queued(config: &Path, gw: &Gateway, rows: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let queued = queued_rows(config);
        if queued >= rows {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the queue holds {queued} rows, not {rows}, after {timeout:?}\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Rows left in the store of a stopped gateway.
pub fn stored_rows(dir: &Path) -> u64 {
    let db = dir.join("state").join("fieldgate.db");
    fieldgate::store::Outbox::open(&db, Default::default())
        .and_then(|o| o.totals())
        .expect("open store")
        .rows
}

/// The seq the store would give next: it never goes back.
pub fn next_seq(dir: &Path) -> i64 {
    let db = dir.join("state").join("fieldgate.db");
    fieldgate::store::Outbox::open_read_only(&db)
        .expect("open store")
        .next_seq()
}

/// The seqs of the readings in the store of a stopped gateway: committed and
/// not yet acknowledged (those acknowledged before their commit never
/// were written).
pub fn stored_seqs(dir: &Path) -> BTreeSet<i64> {
    use fieldgate::store::RowKind;
    let db = dir.join("state").join("fieldgate.db");
    let outbox = fieldgate::store::Outbox::open_read_only(&db).expect("open store");
    let mut seqs = BTreeSet::new();
    for priority in fieldgate::reading::Priority::ALL {
        let mut after = 0;
        loop {
            let rows = outbox.fetch(priority, after, 10_000).expect("read store");
            let Some(last) = rows.last() else { break };
            after = last.seq;
            // Readings only: answers and availability go to other topics.
            let readings = rows
                .iter()
                .filter(|r| r.kind == RowKind::Reading && r.topic.is_none());
            seqs.extend(readings.map(|r| r.seq));
        }
    }
    seqs
}
