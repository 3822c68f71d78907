//! The store-and-forward queue between sources and the uplink.
//!
//! One thread owns the SQLite connection. Sources append readings and the
//! uplink acknowledges rows through a channel; the thread gathers both into
//! one transaction every `flush_interval` or `flush_rows`, whichever comes
//! first, so the card sees few, large writes. A commit takes whatever is
//! already queued as well: under load, one fsync serves everything that
//! arrived during the last one. The uplink reads committed rows only, and
//! learns about new ones through a watch channel.

mod availability;
mod batcher;
mod dead_letters;
mod error;
mod gather;
mod journal;
mod limits;
mod outbox;
mod queries;
mod recover;
mod remote_config;
mod schema;
mod sparkplug;
mod times;
mod wait;

use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, oneshot, watch};

pub use availability::DeviceState;
pub use dead_letters::DeadLetter;
pub use error::StoreError;
pub use gather::gather_wakes;
pub use journal::{CommandAnswer, JournalLimits, Journaled};
pub use limits::{Evicted, Limits, Now};
pub use outbox::{Changes, CommitReport, Outbox, Row, RowKey, RowKind, Staged, Totals};
pub use queries::DeviceStats;
pub use remote_config::RemoteConfig;
pub use schema::SCHEMA_VERSION;

use crate::clock::Clock;
use crate::config::StoreConfig;
use crate::reading::Reading;

/// Commands (readings, acks, requests) queued for the store thread at most.
const CHANNEL_CAPACITY: usize = 8_192;

/// Name of the database file inside `gateway.state_dir`.
pub const DB_FILE: &str = "fieldgate.db";

pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join(DB_FILE)
}

/// The queue as reported on `P/status`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueueStatus {
    pub rows: u64,
    pub bytes: u64,
    /// Readings dropped by the limits or a full disk, per device.
    pub evicted: Evicted,
    /// Rows the broker refused (MQTT 5), per device.
    pub dead_letters: Evicted,
    /// Readings held in memory because the disk refuses writes.
    pub buffered: usize,
    /// Readings written to the card since the start: those the broker
    /// acknowledged before their commit never are.
    pub written: u64,
    /// Where a damaged store was moved at start, if it was.
    pub recovered_from: Option<String>,
}

enum Command {
    Append(Reading),
    Ack(Vec<RowKey>),
    Refused(Vec<RowKey>, String),
    Suspect {
        keys: Vec<RowKey>,
        reason: String,
        max_attempts: u32,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    Fetch {
        after: [i64; 3],
        limit: usize,
        live: Option<mpsc::Sender<Row>>,
        reply: oneshot::Sender<Result<Vec<Row>, StoreError>>,
    },
    Status(oneshot::Sender<Result<QueueStatus, StoreError>>),
    NextSeq(oneshot::Sender<i64>),
    LoadConfig(oneshot::Sender<Result<Option<RemoteConfig>, StoreError>>),
    Journal {
        id: String,
        /// The id is the gateway's own, for a first delivery: forget what
        /// the journal holds under it first.
        first: bool,
        limits: JournalLimits,
        reply: oneshot::Sender<Result<Journaled, StoreError>>,
    },
    Running(String, oneshot::Sender<Result<(), StoreError>>),
    Answer(
        String,
        CommandAnswer,
        oneshot::Sender<Result<(), StoreError>>,
    ),
    SaveConfig(RemoteConfig, oneshot::Sender<Result<(), StoreError>>),
    CorrectTimes(oneshot::Sender<Result<usize, StoreError>>),
    SetAvailability(
        String,
        DeviceState,
        oneshot::Sender<Result<bool, StoreError>>,
    ),
    ForgetAvailability(
        Vec<String>,
        oneshot::Sender<Result<Vec<String>, StoreError>>,
    ),
    Availability(oneshot::Sender<Result<Vec<(String, DeviceState)>, StoreError>>),
    BdSeq(oneshot::Sender<Result<i64, StoreError>>),
    Flush(oneshot::Sender<Result<(), StoreError>>),
}

/// A cheap, cloneable handle to the store thread.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Command>,
    committed: watch::Receiver<u64>,
    clock: Clock,
}

/// Joins the store thread: the last batch is committed when every handle
/// is gone.
pub struct StoreThread(std::thread::JoinHandle<()>);

impl StoreThread {
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("the store thread panicked");
        }
    }
}

impl Store {
    /// Opens the database and starts the store thread. `clock` stamps what
    /// the store dates (commits, ages, the journal) and is handed to
    /// everyone who holds the store.
    pub fn open(
        path: &Path,
        settings: &StoreConfig,
        clock: Clock,
    ) -> Result<(Store, StoreThread), StoreError> {
        let mut outbox = Outbox::open(path, Limits::from_config(settings))?;
        outbox.enter_boot(&clock.boot_id())?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (committed_tx, committed) = watch::channel(0);
        let batcher = batcher::Batcher::new(outbox, rx, committed_tx, settings, clock.clone());
        let thread = std::thread::Builder::new()
            .name("fieldgate-store".into())
            .spawn(move || batcher.run())
            .map_err(|source| StoreError::StateDir {
                path: "store thread".into(),
                source,
            })?;
        Ok((
            Store {
                tx,
                committed,
                clock,
            },
            StoreThread(thread),
        ))
    }

    /// Queues a reading for the next commit; waits when the queue is full.
    pub async fn append(&self, reading: Reading) -> Result<(), StoreError> {
        self.send(Command::Append(reading)).await
    }

    /// Marks rows as delivered; they are deleted with the next commit.
    pub async fn ack(&self, keys: Vec<RowKey>) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.send(Command::Ack(keys)).await
    }

    /// Rows the broker refused: moved to the dead letters with `reason`
    /// with the next commit, never sent again.
    pub async fn refused(&self, keys: Vec<RowKey>, reason: String) -> Result<(), StoreError> {
        self.send(Command::Refused(keys, reason)).await
    }

    /// The broker closed the connection right after the rows of one
    /// publish: counts an attempt on them (it survives restarts), and at
    /// `max_attempts` moves them to the dead letters. Says whether it did.
    pub async fn suspect(
        &self,
        keys: Vec<RowKey>,
        reason: String,
        max_attempts: u32,
    ) -> Result<bool, StoreError> {
        self.request(|reply| Command::Suspect {
            keys,
            reason,
            max_attempts,
            reply,
        })
        .await
    }

    /// Committed, undelivered rows: highest priority first, then by `seq`,
    /// skipping each priority's rows up to `after[priority]`.
    pub async fn fetch(&self, after: [i64; 3], limit: usize) -> Result<Vec<Row>, StoreError> {
        self.fetch_live(after, limit, None).await
    }

    /// [`Store::fetch`], and when it returns fewer than `limit` rows (the
    /// caller has caught up), every reading appended from then on is also
    /// sent to `live` as it arrives, before its commit, until `live` is full
    /// or closed, or the next fetch. Rows in `live` are newer than those
    /// returned; an ack before the commit means the row is never written.
    pub async fn fetch_live(
        &self,
        after: [i64; 3],
        limit: usize,
        live: Option<mpsc::Sender<Row>>,
    ) -> Result<Vec<Row>, StoreError> {
        self.request(|reply| Command::Fetch {
            after,
            limit,
            live,
            reply,
        })
        .await
    }

    pub async fn status(&self) -> Result<QueueStatus, StoreError> {
        self.request(Command::Status).await
    }

    /// The `seq` the next committed row gets: rows below it are stored.
    pub async fn next_seq(&self) -> Result<i64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::NextSeq(reply)).await?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// The cached remote configuration.
    pub async fn remote_config(&self) -> Result<Option<RemoteConfig>, StoreError> {
        self.request(Command::LoadConfig).await
    }

    /// Caches a remote configuration; done when it is on disk.
    pub async fn save_remote_config(&self, config: RemoteConfig) -> Result<(), StoreError> {
        self.request(|reply| Command::SaveConfig(config, reply))
            .await
    }

    /// The Sparkplug `bdSeq` of the next CONNECT, counted on disk.
    pub async fn next_bd_seq(&self) -> Result<i64, StoreError> {
        self.request(Command::BdSeq).await
    }

    /// Records a command id before it is acknowledged; says whether it was
    /// seen before. With `first`, the id is the gateway's own for a
    /// message delivered for the first time, and an entry under it is an
    /// older message's: it is replaced.
    pub async fn journal_command(
        &self,
        id: String,
        first: bool,
        limits: JournalLimits,
    ) -> Result<Journaled, StoreError> {
        self.request(|reply| Command::Journal {
            id,
            first,
            limits,
            reply,
        })
        .await
    }

    /// Marks a command as handed to its device; done when it is on disk.
    pub async fn command_running(&self, id: String) -> Result<(), StoreError> {
        self.request(|reply| Command::Running(id, reply)).await
    }

    /// Keeps the answer to a command and queues it for the uplink.
    pub async fn answer_command(
        &self,
        id: String,
        answer: CommandAnswer,
    ) -> Result<(), StoreError> {
        self.request(|reply| Command::Answer(id, answer, reply))
            .await
    }

    /// The wall clock is synchronised now: corrects the times of this
    /// boot's readings taken before, queued or stored, from their
    /// monotonic time, and clears their mark. Returns the stored rows
    /// corrected.
    pub async fn correct_times(&self) -> Result<usize, StoreError> {
        self.request(Command::CorrectTimes).await
    }

    /// Records a device's availability and queues its retained message,
    /// in a transaction of its own, unless it is the state stored already;
    /// says whether it changed.
    pub async fn set_availability(
        &self,
        device: String,
        state: DeviceState,
    ) -> Result<bool, StoreError> {
        self.request(|reply| Command::SetAvailability(device, state, reply))
            .await
    }

    /// Forgets the availability of every device not in `keep`, queueing
    /// an empty retained message for each; returns those forgotten.
    pub async fn forget_availability(&self, keep: Vec<String>) -> Result<Vec<String>, StoreError> {
        self.request(|reply| Command::ForgetAvailability(keep, reply))
            .await
    }

    /// Every device's current availability, as stored.
    pub async fn availability(&self) -> Result<Vec<(String, DeviceState)>, StoreError> {
        self.request(Command::Availability).await
    }

    /// Commits everything queued so far.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.request(Command::Flush).await
    }

    /// The gateway's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Changes (the value counts commits) whenever new rows are committed.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    /// Sends the command `make` builds around a reply channel, and waits
    /// for the store thread's answer.
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(make(reply)).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn send(&self, command: Command) -> Result<(), StoreError> {
        self.tx.send(command).await.map_err(|_| StoreError::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Bounded, Duration};
    use crate::reading::{Delivery, Name, Priority, Qos};
    use crate::reading::{Quality, Reading};

    fn reading(v: f64) -> Reading {
        let mut values = serde_json::Map::new();
        values.insert("v".into(), v.into());
        Reading {
            device: Name::parse("d").unwrap(),
            ts_ms: 0,
            mono_ms: 0,
            unsynced: false,
            values,
            quality: Quality::Good,
            error: None,
            delivery: Delivery {
                qos: Qos::AtLeastOnce,
                priority: Priority::Normal,
            },
        }
    }

    /// Commits only on request, so acks stay pending.
    fn lazy() -> StoreConfig {
        StoreConfig {
            flush_interval: Duration::from_secs(3_600),
            flush_rows: Bounded(100_000),
            ..StoreConfig::default()
        }
    }

    #[tokio::test]
    async fn delivered_rows_never_hide_the_rows_behind_them() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) =
            Store::open(&dir.path().join("s.db"), &lazy(), Clock::system()).unwrap();
        for v in 0..5 {
            store.append(reading(v.into())).await.unwrap();
        }
        store.flush().await.unwrap();
        let rows = store.fetch([0; 3], 10).await.unwrap();
        assert_eq!(
            rows.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );

        // Acked but not yet deleted: skipped, and the page still fills.
        store
            .ack(rows[..3].iter().map(Row::key).collect())
            .await
            .unwrap();
        let rows = store.fetch([0; 3], 2).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(store.status().await.unwrap().rows, 5);

        store.flush().await.unwrap();
        assert_eq!(store.status().await.unwrap().rows, 2);
        drop(store);
        thread.join();
    }

    #[tokio::test]
    async fn readings_acked_before_their_commit_are_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) =
            Store::open(&dir.path().join("s.db"), &lazy(), Clock::system()).unwrap();
        for v in 0..3 {
            store.append(reading(v.into())).await.unwrap();
        }
        // Staged rows are fetched before their commit, after the table's.
        let rows = store.fetch([0; 3], 10).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);

        // Caught up: from here on, readings come as they are appended.
        let (live, mut fresh) = mpsc::channel(16);
        let none = store.fetch_live([0, 3, 0], 10, Some(live)).await.unwrap();
        assert!(none.is_empty());
        for v in 3..6 {
            store.append(reading(v.into())).await.unwrap();
        }
        let mut forwarded = Vec::new();
        for _ in 0..3 {
            forwarded.push(fresh.recv().await.unwrap());
        }
        assert_eq!(
            forwarded.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [4, 5, 6]
        );
        assert_eq!(forwarded[0].values, r#"{"v":3.0}"#);

        // Five acked before the commit, one not: one row is written.
        let mut keys: Vec<RowKey> = rows.iter().map(Row::key).collect();
        keys.extend(forwarded[..2].iter().map(Row::key));
        store.ack(keys).await.unwrap();
        store.flush().await.unwrap();
        let status = store.status().await.unwrap();
        assert_eq!((status.rows, status.written), (1, 1));
        let left = store.fetch([0; 3], 10).await.unwrap();
        assert_eq!(left.iter().map(|r| r.seq).collect::<Vec<_>>(), [6]);

        // Its ack deletes it from the table, as for any committed row.
        store.ack(vec![left[0].key()]).await.unwrap();
        store.flush().await.unwrap();
        assert_eq!(store.status().await.unwrap().rows, 0);
        drop(store);
        thread.join();
    }

    #[tokio::test]
    async fn the_interval_commit_leaves_young_readings_for_their_acks() {
        let dir = tempfile::tempdir().unwrap();
        let settings = StoreConfig {
            flush_interval: Duration::from_secs(1),
            ..lazy()
        };
        let (store, thread) =
            Store::open(&dir.path().join("s.db"), &settings, Clock::system()).unwrap();
        let (live, mut fresh) = mpsc::channel(16);
        assert!(
            store
                .fetch_live([0; 3], 10, Some(live))
                .await
                .unwrap()
                .is_empty()
        );
        // Never acked: committed when the interval is up.
        store.append(reading(1.0)).await.unwrap();
        fresh.recv().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(900)).await;
        // Staged a tenth of an interval before that commit: left out of
        // it, and acked before the next.
        store.append(reading(2.0)).await.unwrap();
        let young = fresh.recv().await.unwrap();
        let written = || async { store.status().await.unwrap().written };
        for _ in 0..100 {
            if written().await > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        store.ack(vec![young.key()]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        let status = store.status().await.unwrap();
        assert_eq!((status.written, status.rows), (1, 1), "{status:?}");
        let rows = store.fetch([0; 3], 10).await.unwrap();
        let values: Vec<&str> = rows.iter().map(|r| r.values.as_str()).collect();
        assert_eq!(values, [r#"{"v":1.0}"#]);
        drop(store);
        thread.join();
    }

    #[tokio::test]
    async fn a_full_live_channel_ends_forwarding_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) =
            Store::open(&dir.path().join("s.db"), &lazy(), Clock::system()).unwrap();
        let (live, mut fresh) = mpsc::channel(2);
        assert!(
            store
                .fetch_live([0; 3], 10, Some(live))
                .await
                .unwrap()
                .is_empty()
        );
        for v in 0..5 {
            store.append(reading(v.into())).await.unwrap();
        }
        // A round trip: the store thread has taken all five.
        store.status().await.unwrap();
        // Two fit; the third found the channel full and ended it.
        assert_eq!(fresh.recv().await.unwrap().seq, 1);
        assert_eq!(fresh.recv().await.unwrap().seq, 2);
        assert!(fresh.recv().await.is_none());
        // The rest comes with the next fetch, from the cursor on.
        let rows = store.fetch([0, 2, 0], 10).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4, 5]);
        drop(store);
        thread.join();
    }

    #[tokio::test]
    async fn dropping_every_handle_commits_the_last_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (store, thread) = Store::open(&path, &lazy(), Clock::system()).unwrap();
        store.append(reading(1.0)).await.unwrap();
        store.append(reading(2.0)).await.unwrap();
        drop(store);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap();
        assert_eq!(
            Outbox::open(&path, Limits::default())
                .unwrap()
                .totals()
                .unwrap()
                .rows,
            2
        );
    }
}
