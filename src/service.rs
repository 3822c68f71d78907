//! The systemd side of `fieldgate run`: readiness, stopping, the watchdog,
//! and whether stderr goes to the journal. Outside systemd (no
//! `NOTIFY_SOCKET`, no `WATCHDOG_USEC`) every call here does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// A store that does not answer within this long counts as hung, so that
/// systemd restarts the gateway instead of leaving a silent zombie.
const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Tells systemd that the store is open and the sources are running.
pub fn ready() {
    notify(NotifyState::Ready);
}

/// Tells systemd that shutdown has begun, so it does not count the
/// seconds spent draining acks against the watchdog.
pub fn stopping() {
    notify(NotifyState::Stopping);
}

fn notify(state: NotifyState) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// The ping interval for a `WATCHDOG_USEC` (and `WATCHDOG_PID`) as systemd
/// sets them: half the timeout, as sd_watchdog_enabled(3) recommends, or
/// `None` when the watchdog is off or meant for another process.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    let for_us = pid.is_none_or(|p| p.trim().parse::<u32>() == Ok(own_pid));
    if usec == 0 || !for_us {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

/// Pings the systemd watchdog until `stop`, but only while the uplink task
/// lives and the store thread answers: an uplink that died (a panic) or a
/// hung store (a stuck SD card, a deadlock) stops the pings, and systemd
/// restarts the service. A stalled runtime stops them too, since this runs
/// on it.
pub fn spawn_watchdog(store: Store, uplink: AbortHandle, stop: CancellationToken) {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    let Some(every) = watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id()) else {
        return;
    };
    let check_timeout = STORE_CHECK_TIMEOUT.min(every);
    tracing::debug!("systemd watchdog: pinging every {every:?}");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if uplink.is_finished() {
                tracing::warn!("watchdog: the uplink task has ended; not pinging");
                continue;
            }
            match tokio::time::timeout(check_timeout, store.status()).await {
                Ok(Ok(_)) => notify(NotifyState::Watchdog),
                Ok(Err(e)) => tracing::warn!("watchdog: the store fails ({e}); not pinging"),
                Err(_) => tracing::warn!(
                    "watchdog: the store did not answer within {check_timeout:?}; not pinging"
                ),
            }
        }
    });
}

/// True when stderr is the journal stream systemd set up for this process,
/// not merely inherited by a child started from a service's shell.
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let meta = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| std::fs::File::from(fd).metadata());
    match (stream.to_str(), meta) {
        (Some(stream), Ok(meta)) => is_journal_stream(stream, meta.dev(), meta.ino()),
        _ => false,
    }
}

/// Whether `JOURNAL_STREAM` ("device:inode", in decimal) names the file
/// with this device and inode number.
pub fn is_journal_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_pings_at_half_the_timeout() {
        let me = 4242;
        assert_eq!(
            watchdog_interval(Some("30000000"), None, me),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(Some("3000000"), Some("4242"), me),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn watchdog_off_when_unset_invalid_zero_or_for_another_process() {
        let me = 4242;
        assert_eq!(watchdog_interval(None, None, me), None);
        assert_eq!(watchdog_interval(Some("0"), None, me), None);
        assert_eq!(watchdog_interval(Some("30s"), None, me), None);
        assert_eq!(watchdog_interval(Some("-5"), None, me), None);
        assert_eq!(watchdog_interval(Some("30000000"), Some("1"), me), None);
        assert_eq!(watchdog_interval(Some("30000000"), Some("x"), me), None);
    }

    #[test]
    fn journal_stream_must_match_device_and_inode() {
        assert!(is_journal_stream("8:123456", 8, 123456));
        assert!(!is_journal_stream("8:123456", 8, 123457));
        assert!(!is_journal_stream("9:123456", 8, 123456));
        assert!(!is_journal_stream("", 8, 123456));
        assert!(!is_journal_stream("8", 8, 123456));
        assert!(!is_journal_stream("a:b", 8, 123456));
    }

    #[test]
    fn outside_systemd_notifications_are_no_ops() {
        // Tests share the environment, so only assert when it is clean.
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            ready();
            stopping();
        }
    }
}
