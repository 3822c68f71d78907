//! Watches whether the wall clock is synchronised, and corrects the queued
//! readings of this boot once it is.
//!
//! A Pi without a real-time clock boots with the time fake-hwclock saved
//! at the last shutdown, and NTP may set it right minutes later, or days
//! later on a site without network. Until then readings are marked
//! (`"clock":"unsynced"`); the moment the clock syncs, the store rewrites
//! their wall time from their time since boot. The check is a cheap
//! read-only `adjtimex`, polled often while unsynced (the sooner the marks
//! are cleared, the fewer marked readings leave), rarely once synced (the
//! kernel sets `STA_UNSYNC` again only after hours without NTP).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// How often the sync state is checked while the clock is unsynchronised.
const WHILE_UNSYNCED: Duration = Duration::from_secs(2);
/// And once it is synchronised.
const WHILE_SYNCED: Duration = Duration::from_secs(60);

/// Runs until `stop`. At start, a clock already synchronised still
/// corrects the rows an earlier process of this boot left marked.
pub async fn watch(store: Store, stop: CancellationToken) {
    let clock = store.clock().clone();
    // `None` before the first check.
    let mut was_synced: Option<bool> = None;
    // A failed correction is retried at every check, and logged once.
    let mut failing = false;
    loop {
        let synced = clock.check_sync();
        let mut corrected = true;
        match (was_synced, synced) {
            (Some(true), true) => {}
            (_, true) => match store.correct_times().await {
                Ok(0) => tracing::info!("wall clock synchronised"),
                Ok(n) => tracing::info!(
                    "wall clock synchronised: corrected the time of {n} queued readings"
                ),
                Err(e) => {
                    // The store is shutting down, or failing: again at the
                    // next check.
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(
                            "wall clock synchronised, queued times not corrected yet: {e}"
                        );
                    }
                    corrected = false;
                }
            },
            (None | Some(true), false) => tracing::warn!(
                "wall clock not synchronised (NTP): readings are marked \"clock\":\"unsynced\" until it is"
            ),
            (Some(false), false) => {}
        }
        failing &= !corrected;
        was_synced = Some(synced && corrected);
        let wait = if synced && corrected {
            WHILE_SYNCED
        } else {
            WHILE_UNSYNCED
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
