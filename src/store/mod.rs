//! The store-and-forward queue between sources and the uplink.
//!
//! One thread owns the SQLite connection. Sources append readings and the
//! uplink acknowledges rows through a channel; the thread gathers both into
//! one transaction every `flush_interval` or `flush_rows`, whichever comes
//! first, so the card sees few, large writes. The uplink reads committed
//! rows only, and learns about new ones through a watch channel.

mod outbox;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};

pub use outbox::{DeviceStats, Outbox, Row, RowKey, SCHEMA_VERSION, StoreError, Totals};

use crate::config::{Priority, StoreConfig};
use crate::sources::Reading;

/// Name of the database file inside `gateway.state_dir`.
pub const DB_FILE: &str = "fieldgate.db";

pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join(DB_FILE)
}

enum Command {
    Append(Reading),
    Ack(Vec<RowKey>),
    Fetch {
        after: [i64; 3],
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Row>, StoreError>>,
    },
    Totals(oneshot::Sender<Result<Totals, StoreError>>),
    Flush(oneshot::Sender<Result<(), StoreError>>),
}

/// A cheap, cloneable handle to the store thread.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Command>,
    committed: watch::Receiver<u64>,
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
    /// Opens the database and starts the store thread. Must be called from
    /// within a tokio runtime.
    pub fn open(path: &Path, settings: &StoreConfig) -> Result<(Store, StoreThread), StoreError> {
        let outbox = Outbox::open(path)?;
        let (tx, rx) = mpsc::channel(8_192);
        let (committed_tx, committed) = watch::channel(0);
        let batch = Batcher {
            outbox,
            rx,
            committed: committed_tx,
            flush_interval: settings.flush_interval.get(),
            flush_rows: settings.flush_rows.get() as usize,
            readings: Vec::new(),
            acks: Vec::new(),
            acked: HashSet::new(),
            oldest: None,
            failing: false,
        };
        let runtime = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name("fieldgate-store".into())
            .spawn(move || batch.run(&runtime))
            .map_err(|source| StoreError::StateDir {
                path: "store thread".into(),
                source,
            })?;
        Ok((Store { tx, committed }, StoreThread(thread)))
    }

    /// Queues a reading for the next commit; waits when the queue is full.
    pub async fn append(&self, reading: Reading) -> Result<(), StoreError> {
        self.tx
            .send(Command::Append(reading))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Marks rows as delivered; they are deleted with the next commit.
    pub async fn ack(&self, keys: Vec<RowKey>) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.tx
            .send(Command::Ack(keys))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Committed, unacknowledged rows: highest priority first, then by
    /// `seq`, skipping each priority's rows up to `after[priority]`.
    pub async fn fetch(&self, after: [i64; 3], limit: usize) -> Result<Vec<Row>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.request(
            Command::Fetch {
                after,
                limit,
                reply,
            },
            rx,
        )
        .await
    }

    pub async fn totals(&self) -> Result<Totals, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.request(Command::Totals(reply), rx).await
    }

    /// Commits everything queued so far.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.request(Command::Flush(reply), rx).await
    }

    /// Changes (the value counts commits) whenever new rows are committed.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    async fn request<T>(
        &self,
        command: Command,
        rx: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.tx
            .send(command)
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// State of the store thread.
struct Batcher {
    outbox: Outbox,
    rx: mpsc::Receiver<Command>,
    committed: watch::Sender<u64>,
    flush_interval: std::time::Duration,
    flush_rows: usize,
    readings: Vec<Reading>,
    acks: Vec<RowKey>,
    /// The same keys as `acks`, so fetches skip delivered rows not yet deleted.
    acked: HashSet<RowKey>,
    /// When the oldest uncommitted change arrived.
    oldest: Option<Instant>,
    /// The last commit failed (logged once until it succeeds again).
    failing: bool,
}

impl Batcher {
    fn run(mut self, runtime: &tokio::runtime::Handle) {
        loop {
            let deadline = self.oldest.map(|t| t + self.flush_interval);
            let next = runtime.block_on(async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d.into(), self.rx.recv()).await.ok(),
                    None => Some(self.rx.recv().await),
                }
            });
            match next {
                None => {
                    // The flush interval is up; a failure is logged and retried.
                    let _ = self.commit();
                }
                Some(None) => break, // every handle dropped
                Some(Some(command)) => self.handle(command),
            }
        }
        if self.commit().is_err() {
            tracing::error!(
                "{} readings could not be committed at shutdown",
                self.readings.len()
            );
        }
        if let Err(e) = self.outbox.checkpoint() {
            tracing::warn!("store checkpoint at shutdown failed: {e}");
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Append(reading) => {
                self.readings.push(reading);
                self.oldest.get_or_insert_with(Instant::now);
            }
            Command::Ack(keys) => {
                for key in keys {
                    if self.acked.insert(key) {
                        self.acks.push(key);
                    }
                }
                self.oldest.get_or_insert_with(Instant::now);
            }
            Command::Fetch {
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(self.fetch(after, limit));
            }
            Command::Totals(reply) => {
                let _ = reply.send(self.outbox.totals());
            }
            Command::Flush(reply) => {
                let _ = reply.send(self.commit());
            }
        }
        // After a failed commit, retry on the interval rather than on every message.
        if !self.failing && self.readings.len() + self.acks.len() >= self.flush_rows {
            let _ = self.commit();
        }
    }

    fn fetch(&self, after: [i64; 3], limit: usize) -> Result<Vec<Row>, StoreError> {
        let mut rows = Vec::new();
        for priority in Priority::ALL {
            let mut after = after[priority as usize];
            // Delivered rows wait for the next commit to be deleted; page
            // past them so that they never hide the rows behind them.
            while rows.len() < limit {
                let want = limit - rows.len();
                let page = self.outbox.fetch(priority, after, want)?;
                let full = page.len() == want;
                let Some(last) = page.last() else { break };
                after = last.seq;
                rows.extend(page.into_iter().filter(|r| !self.acked.contains(&r.key())));
                if !full {
                    break;
                }
            }
        }
        Ok(rows)
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        if self.readings.is_empty() && self.acks.is_empty() {
            self.oldest = None;
            return Ok(());
        }
        match self.outbox.commit(&self.readings, &self.acks) {
            Ok(_) => {
                if self.failing {
                    tracing::info!("store writes succeed again");
                    self.failing = false;
                }
                let inserted = !self.readings.is_empty();
                self.readings.clear();
                self.acks.clear();
                self.acked.clear();
                self.oldest = None;
                if inserted {
                    self.committed.send_modify(|n| *n += 1);
                }
                Ok(())
            }
            Err(e) => {
                // Keep the batch and try again after another interval.
                if !self.failing {
                    tracing::error!(
                        "store commit failed, keeping {} readings in memory: {e}",
                        self.readings.len()
                    );
                    self.failing = true;
                }
                self.oldest = Some(Instant::now());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Bounded, Delivery, Duration, Name, Qos};
    use crate::sources::{Quality, Reading};

    fn reading(v: f64) -> Reading {
        let mut values = serde_json::Map::new();
        values.insert("v".into(), v.into());
        Reading {
            device: Name::parse("d").unwrap(),
            ts_ms: 0,
            values,
            quality: Quality::Good,
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
        }
    }

    #[tokio::test]
    async fn delivered_rows_never_hide_the_rows_behind_them() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread) = Store::open(&dir.path().join("s.db"), &lazy()).unwrap();
        for v in 0..5 {
            store.append(reading(v.into())).await.unwrap();
        }
        // Not visible before the commit.
        assert!(store.fetch([0; 3], 10).await.unwrap().is_empty());
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
        assert_eq!(store.totals().await.unwrap().rows, 5);

        store.flush().await.unwrap();
        assert_eq!(store.totals().await.unwrap().rows, 2);
        drop(store);
        thread.join();
    }

    #[tokio::test]
    async fn dropping_every_handle_commits_the_last_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let (store, thread) = Store::open(&path, &lazy()).unwrap();
        store.append(reading(1.0)).await.unwrap();
        store.append(reading(2.0)).await.unwrap();
        drop(store);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap();
        assert_eq!(Outbox::open(&path).unwrap().totals().unwrap().rows, 2);
    }
}
