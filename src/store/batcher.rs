//! The store thread: batches appends and acks into transactions, and keeps
//! readings in memory, bounded, while the disk refuses to take them.
//!
//! A reading is numbered when it arrives and, while the uplink has caught
//! up with the store, handed to it at once ([`Batcher::forward`]) while it
//! waits for its commit. When its ack comes first, it leaves the batch and
//! is never written: with a healthy broker most readings never touch the
//! card. The commit at the end of a flush interval leaves out the readings
//! staged in its second half ([`Batcher::commit_due`]): their acks are
//! still on their way. Commits stay in `seq` order, so the table always holds a prefix
//! of what was handed out, which the uplink's cursors rely on.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::limits::{Evicted, InFlight};
use super::wait::{Next, Waiter};
use super::{Changes, Command, Outbox, QueueStatus, Row, RowKey, Staged, StoreError};
use crate::clock::Clock;
use crate::config::StoreConfig;
use crate::reading::Priority;

/// Commands handled per wake-up of the store thread, at most: what the
/// channel holds.
const DRAIN_AT_ONCE: usize = super::CHANNEL_CAPACITY;

pub(super) struct Batcher {
    outbox: Outbox,
    rx: mpsc::Receiver<Command>,
    committed: watch::Sender<u64>,
    clock: Clock,
    flush_interval: Duration,
    flush_rows: usize,
    memory_buffer: usize,
    /// Staged readings waiting for the next commit, in `seq` order.
    readings: Vec<Staged>,
    /// Where new readings go as they arrive, while the uplink is caught up.
    live: Option<mpsc::Sender<Row>>,
    /// Rows of this round for `live`, in `seq` order.
    forwarded: Vec<Row>,
    /// Per priority, the highest seq handed to the uplink (stored or
    /// staged): those up to it may be on their way, so neither the memory
    /// bound nor the store's limits drop them.
    handed: InFlight,
    acks: Vec<RowKey>,
    /// Rows the broker refused, with its reason.
    refused: Vec<(RowKey, String)>,
    /// The same keys as `acks` and `refused`, so fetches skip delivered rows not yet deleted.
    acked: HashSet<RowKey>,
    /// Readings dropped from memory while the disk was full, to be counted
    /// with the next commit.
    dropped: Evicted,
    /// When the oldest uncommitted change arrived.
    oldest: Option<Instant>,
    /// The last commit failed (logged once until one succeeds again).
    failing: bool,
    /// The last commit evicted rows (logged once per episode).
    evicting: bool,
}

impl Batcher {
    pub(super) fn new(
        outbox: Outbox,
        rx: mpsc::Receiver<Command>,
        committed: watch::Sender<u64>,
        settings: &StoreConfig,
        clock: Clock,
    ) -> Batcher {
        Batcher {
            outbox,
            rx,
            committed,
            clock,
            flush_interval: settings.flush_interval.get(),
            flush_rows: settings.flush_rows.get() as usize,
            memory_buffer: settings.memory_buffer.get() as usize,
            readings: Vec::new(),
            live: None,
            forwarded: Vec::new(),
            handed: [0; 3],
            acks: Vec::new(),
            refused: Vec::new(),
            acked: HashSet::new(),
            dropped: Evicted::new(),
            oldest: None,
            failing: false,
            evicting: false,
        }
    }

    pub(super) fn run(mut self) {
        let waiter = Waiter::for_this_thread();
        loop {
            let deadline = self.oldest.map(|t| t + self.flush_interval);
            match waiter.recv(&mut self.rx, deadline) {
                // The flush interval is up; a failure is logged and retried.
                Next::TimedOut => {
                    let _ = self.commit_due();
                }
                Next::Closed => break, // every handle dropped
                Next::Item(command) => {
                    self.handle(command);
                    // Take what else is queued without parking again, so
                    // that under load one commit (one fsync) takes all
                    // that arrived during the last one. Bounded, so that
                    // the interval still commits.
                    for _ in 0..DRAIN_AT_ONCE {
                        let Ok(command) = self.rx.try_recv() else {
                            break;
                        };
                        self.handle(command);
                    }
                    self.send_forwarded();
                    // After a failed commit, retry on the interval rather
                    // than on every message.
                    let pending = self.readings.len() + self.acks.len() + self.refused.len();
                    if !self.failing && pending >= self.flush_rows {
                        let _ = self.commit();
                    }
                }
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
        if !matches!(command, Command::Append(_)) {
            // The uplink's view stays in order with what comes next.
            self.send_forwarded();
        }
        match command {
            Command::Append(reading) => {
                let mut staged = self.outbox.stage(&reading);
                // Stamped just before the clock synced and the stored rows
                // were corrected: correct it the same way.
                if staged.row.unsynced && self.clock.synced() {
                    correct(&mut staged, self.clock_offset());
                }
                self.forward(&staged.row);
                self.readings.push(staged);
                self.oldest.get_or_insert_with(Instant::now);
                if self.failing {
                    self.bound_memory();
                }
            }
            Command::Ack(keys) => {
                for key in keys {
                    // Acknowledged before its commit: never written.
                    if let Ok(i) = self.readings.binary_search_by_key(&key.seq, |s| s.row.seq) {
                        self.readings.remove(i);
                    } else if self.acked.insert(key) {
                        self.acks.push(key);
                        self.oldest.get_or_insert_with(Instant::now);
                    }
                }
            }
            Command::Refused(keys, reason) => {
                for key in keys {
                    if self.acked.insert(key) {
                        self.refused.push((key, reason.clone()));
                    }
                }
                self.oldest.get_or_insert_with(Instant::now);
            }
            Command::Suspect {
                keys,
                reason,
                max_attempts,
                reply,
            } => {
                // Attempts are counted on rows in the table.
                if keys.iter().any(|k| self.is_staged(k.seq)) {
                    let _ = self.commit();
                }
                let now_ms = self.clock.now_ms();
                let _ = reply.send(self.outbox.suspect(&keys, &reason, max_attempts, now_ms));
            }
            Command::Fetch {
                after,
                limit,
                live,
                reply,
            } => {
                let rows = self.fetch(after, limit);
                // Caught up: from here on, new readings go to the uplink as
                // they arrive. A fetch always ends the previous forwarding.
                self.live = match &rows {
                    Ok(rows) if rows.len() < limit => live,
                    _ => None,
                };
                let _ = reply.send(rows);
            }
            Command::NextSeq(reply) => {
                let _ = reply.send(self.outbox.next_seq());
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Journal {
                id,
                first,
                limits,
                reply,
            } => {
                let now = self.clock.stamp();
                let forgot = match first {
                    true => self.outbox.forget_command(&id),
                    false => Ok(()),
                };
                let _ =
                    reply.send(forgot.and_then(|()| self.outbox.journal_command(&id, now, limits)));
            }
            Command::Running(id, reply) => {
                let _ = reply.send(self.outbox.command_running(&id));
            }
            Command::Answer(id, answer, reply) => {
                // Readings staged before the answer are committed first, so
                // that the table stays a prefix of the seqs handed out.
                let _ = self.commit();
                let result = self.outbox.answer_command(&id, &answer);
                if result.is_ok() {
                    // The answer is in the table only: the uplink fetches it.
                    self.end_forwarding();
                    self.committed.send_modify(|n| *n += 1);
                }
                let _ = reply.send(result);
            }
            Command::SetAvailability(device, state, reply) => {
                // As for answers: the table stays a prefix of the seqs, and
                // the uplink fetches what only the table has.
                let _ = self.commit();
                let now_ms = self.clock.now_ms();
                let result = self.outbox.set_availability(&device, state, now_ms);
                if matches!(result, Ok(true)) {
                    self.end_forwarding();
                    self.committed.send_modify(|n| *n += 1);
                }
                let _ = reply.send(result);
            }
            Command::ForgetAvailability(keep, reply) => {
                let now_ms = self.clock.now_ms();
                let _ = self.commit();
                let result = self.outbox.forget_availability(&keep, now_ms);
                if result.as_ref().is_ok_and(|gone| !gone.is_empty()) {
                    self.end_forwarding();
                    self.committed.send_modify(|n| *n += 1);
                }
                let _ = reply.send(result);
            }
            Command::Availability(reply) => {
                let _ = reply.send(self.outbox.availability());
            }
            Command::LoadConfig(reply) => {
                let _ = reply.send(self.outbox.remote_config());
            }
            Command::SaveConfig(config, reply) => {
                let _ = reply.send(self.outbox.save_remote_config(&config));
            }
            Command::CorrectTimes(reply) => {
                let offset = self.clock_offset();
                for staged in &mut self.readings {
                    correct(staged, offset);
                }
                let _ = reply.send(self.outbox.correct_times(offset));
            }
            Command::BdSeq(reply) => {
                let _ = reply.send(self.outbox.next_bd_seq());
            }
            Command::Flush(reply) => {
                let _ = reply.send(self.commit());
            }
        }
    }

    /// `wall - mono` now: what turns a monotonic time of this boot into
    /// wall time.
    fn clock_offset(&self) -> i64 {
        let stamp = self.clock.stamp();
        stamp.wall_ms - stamp.mono_ms
    }

    fn fetch(&mut self, after: [i64; 3], limit: usize) -> Result<Vec<Row>, StoreError> {
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
            // Then what waits for its commit: all of it is newer than the
            // table's rows. Not while the disk refuses writes: memory is
            // bounded then, and what the uplink holds must not be dropped.
            if rows.len() < limit && !self.failing {
                let staged = (self.readings.iter().map(|s| &s.row))
                    .filter(|r| r.priority == priority && r.seq > after)
                    .take_while(|r| self.outbox.is_reserved(r.seq));
                rows.extend(staged.take(limit - rows.len()).cloned());
            }
        }
        // Every row handed out is either acknowledged soon or resent first
        // after a reconnect.
        for row in &rows {
            let top = &mut self.handed[row.priority as usize];
            *top = (*top).max(row.seq);
        }
        Ok(rows)
    }

    /// Hands a staged reading to the uplink, while it is caught up: queued
    /// for [`Batcher::send_forwarded`], so that a round wakes the uplink once.
    fn forward(&mut self, row: &Row) {
        if self.live.is_none() {
            return;
        }
        if self.failing || !self.outbox.is_reserved(row.seq) {
            self.end_forwarding();
        } else {
            self.forwarded.push(row.clone());
            self.handed[row.priority as usize] = row.seq;
        }
    }

    /// Sends what [`Batcher::forward`] queued. A full or closed channel
    /// ends the forwarding: the uplink fetches again.
    fn send_forwarded(&mut self) {
        let Some(live) = &self.live else { return };
        let sent = self
            .forwarded
            .drain(..)
            .try_for_each(|row| live.try_send(row).map_err(drop));
        if sent.is_err() {
            self.end_forwarding();
        }
    }

    /// Whatever comes next, the uplink fetches.
    fn end_forwarding(&mut self) {
        self.live = None;
        self.forwarded.clear();
    }

    fn is_staged(&self, seq: i64) -> bool {
        self.readings
            .binary_search_by_key(&seq, |s| s.row.seq)
            .is_ok()
    }

    fn status(&self) -> Result<QueueStatus, StoreError> {
        let totals = self.outbox.totals()?;
        let mut evicted = self.outbox.evictions()?;
        for (device, n) in &self.dropped {
            *evicted.entry(device.clone()).or_default() += n;
        }
        Ok(QueueStatus {
            rows: totals.rows,
            bytes: totals.bytes,
            evicted,
            dead_letters: self.outbox.dead_letters()?,
            buffered: if self.failing { self.readings.len() } else { 0 },
            written: self.outbox.rows_written(),
            recovered_from: self
                .outbox
                .recovered_from()
                .map(|p| p.display().to_string()),
        })
    }

    /// The commit of the flush interval: the staged readings that have
    /// waited half of it or more, and every ack. The younger ones wait for
    /// the next, due when the oldest of them has waited the whole interval:
    /// most are acknowledged by then and never written, and none waits
    /// longer than the interval.
    fn commit_due(&mut self) -> Result<(), StoreError> {
        // A refused row is moved to the dead letters from the table.
        if !self.refused.is_empty() {
            return self.commit();
        }
        let Some(young) = Instant::now().checked_sub(self.flush_interval / 2) else {
            return self.commit();
        };
        let due = self.readings.partition_point(|s| s.arrived <= young);
        self.commit_upto(due)
    }

    /// Commits every staged reading, ack and refusal.
    fn commit(&mut self) -> Result<(), StoreError> {
        self.commit_upto(self.readings.len())
    }

    /// Commits the first `due` staged readings (the table stays a prefix of
    /// the seqs handed out) and every ack and refusal.
    fn commit_upto(&mut self, due: usize) -> Result<(), StoreError> {
        if due == 0
            && self.acks.is_empty()
            && self.refused.is_empty()
            && self.dropped.is_empty()
            && !self.outbox.needs_reserve()
        {
            self.oldest = self.readings.first().map(|s| s.arrived);
            return Ok(());
        }
        let mut result = self.try_commit(due);
        if matches!(&result, Err(e) if e.is_disk_full()) {
            // Make room and try once more: a checkpoint lets the WAL be
            // reused, and evicting the lowest-priority rows frees pages.
            let _ = self.outbox.checkpoint();
            let room = self.readings.len().max(self.flush_rows) as u64;
            if let Ok(evicted) = self.outbox.make_room(&self.acks, room, self.handed) {
                for key in self.acks.drain(..) {
                    self.acked.remove(&key);
                }
                self.note_evictions(&evicted);
            }
            result = self.try_commit(due);
        }
        match result {
            Ok(()) => {
                if self.failing {
                    tracing::info!("store writes succeed again");
                    self.failing = false;
                }
                Ok(())
            }
            Err(e) => {
                if !self.failing {
                    tracing::error!(
                        "store commit failed, holding up to {} readings in memory: {e}",
                        self.memory_buffer
                    );
                    self.failing = true;
                }
                self.bound_memory();
                self.oldest = Some(Instant::now());
                Err(e)
            }
        }
    }

    fn try_commit(&mut self, due: usize) -> Result<(), StoreError> {
        let report = self.outbox.commit(
            &Changes {
                readings: &self.readings[..due],
                acks: &self.acks,
                refused: &self.refused,
                dropped: &self.dropped,
                in_flight: self.handed,
            },
            self.clock.stamp(),
        )?;
        self.note_evictions(&report.evicted);
        let inserted = due > 0;
        self.readings.drain(..due);
        self.acks.clear();
        self.refused.clear();
        self.acked.clear();
        self.dropped.clear();
        self.oldest = self.readings.first().map(|s| s.arrived);
        if inserted {
            self.committed.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// Logs the start and the end of an eviction episode, not every commit.
    fn note_evictions(&mut self, evicted: &Evicted) {
        let n: u64 = evicted.values().sum();
        match (n > 0, self.evicting) {
            (true, false) => tracing::warn!(
                "store limit reached: dropping the oldest lowest-priority readings ({n} so far: {evicted:?})"
            ),
            (false, true) => tracing::info!("store back within its limits"),
            _ => {}
        }
        self.evicting = n > 0;
    }

    /// While the disk refuses writes, memory holds at most `memory_buffer`
    /// readings; beyond that the oldest of the lowest priority go, counted,
    /// but for those already handed to the uplink (a window's worth at
    /// most: nothing is handed out while writes fail).
    fn bound_memory(&mut self) {
        let mut excess = self.readings.len().saturating_sub(self.memory_buffer);
        for priority in Priority::ALL.into_iter().rev() {
            if excess == 0 {
                break;
            }
            let dropped = &mut self.dropped;
            let handed = self.handed[priority as usize];
            self.readings.retain(|s| {
                if excess > 0 && s.row.priority == priority && s.row.seq > handed {
                    excess -= 1;
                    *dropped.entry(s.row.device.clone()).or_default() += 1;
                    false
                } else {
                    true
                }
            });
        }
    }
}

/// Corrects a reading taken while the wall clock was unsynchronised, as
/// [`super::Outbox::correct_times`] does for stored rows.
fn correct(staged: &mut Staged, offset_ms: i64) {
    if staged.row.unsynced {
        staged.row.ts_ms = staged.mono_ms + offset_ms;
        staged.row.unsynced = false;
    }
}
