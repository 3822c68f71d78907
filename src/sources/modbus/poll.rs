//! Polling one device: reads planned around what its map refuses, a block
//! the device refuses split until the refusing points are found, and a
//! unit that stays silent polled less often, so that it costs the devices
//! sharing its bus less.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;

use super::link::ModbusLink;
use super::plan::{Block, Learned, plan_around};
use super::publish::{PointResult, Publisher};
use super::read::{Reader, describe, is_map_refusal, read};
use super::value::{Layout, RegisterKind};
use crate::config::modbus::ModbusDevice;
use crate::health::DeviceHealth;
use crate::reading::{Delivery, Reading};
use crate::sources::Ingest;

/// What a map taught is forgotten this long after it was learned, and the
/// whole map tried again: the device may have been updated or replaced.
const REPROBE_AFTER: Duration = Duration::from_secs(3_600);

/// Polls in a row without any answer before the unit is polled less often.
const SILENT_POLLS_BEFORE_BACKOFF: u32 = 3;

/// The longest time between two polls of a silent unit.
const SILENT_POLL_MAX: Duration = Duration::from_secs(60);

/// One device on the bus and its polling state.
pub struct Poller {
    pub device: Arc<ModbusDevice>,
    layouts: Vec<Layout>,
    blocks: Vec<Block>,
    delivery: Delivery,
    health: Arc<DeviceHealth>,
    publisher: Publisher,
    /// The last poll got no answer at all: poll once, without retries.
    silent: bool,
    /// Polls in a row that got no answer at all.
    silent_polls: u32,
    learned: Learned,
    /// Reads refused whole when split too: not split again (a device that
    /// refuses everything would cost a bisection every poll) until one
    /// reads, or the map is tried afresh.
    refused_whole: BTreeSet<(RegisterKind, u16, u16)>,
    /// When `learned` started to fill.
    learned_at: Instant,
    pub next_due: Instant,
}

impl Poller {
    pub fn new(device: Arc<ModbusDevice>, delivery: Delivery, health: Arc<DeviceHealth>) -> Poller {
        let layouts = device.layouts();
        let learned = Learned::default();
        let blocks = plan_around(&layouts, device.limits(), &learned);
        let names = device.points.iter().map(|p| p.name.to_string());
        let publisher = Publisher::new(names, device.heartbeat.get());
        tracing::debug!(device = %device.name, reads = blocks.len(), "register map planned");
        Poller {
            device,
            layouts,
            blocks,
            delivery,
            health,
            publisher,
            silent: false,
            silent_polls: 0,
            learned,
            refused_whole: BTreeSet::new(),
            learned_at: Instant::now(),
            next_due: Instant::now(),
        }
    }

    /// Reads every block once; a device that does not answer costs one
    /// timeout (times `1 + retries` if it answered the poll before).
    async fn poll(&mut self, link: &mut ModbusLink) -> Vec<Option<PointResult>> {
        if !self.learned.is_empty() && self.learned_at.elapsed() >= REPROBE_AFTER {
            tracing::info!(device = %self.device.name, "reading the whole register map again");
            self.replan(Learned::default());
        }
        let mut outcomes: Vec<Option<PointResult>> = (0..self.layouts.len())
            .map(|i| (!self.learned.holes.contains_key(&i)).then(|| Err(String::new())))
            .collect();
        let mut learned = self.learned.clone();
        let mut reader = Reader {
            link,
            unit: self.device.unit,
            wait: self.device.timeout.get(),
            attempts: if self.silent {
                1
            } else {
                1 + self.device.retries.get()
            },
            layouts: &self.layouts,
            health: &self.health,
        };
        // Once the device is silent, the rest of the poll would only wait
        // for more timeouts.
        let mut silence: Option<String> = None;
        for block in &self.blocks {
            if let Some(reason) = &silence {
                fail(block, reason, &mut outcomes);
                continue;
            }
            let (unit, wait, attempts) = (reader.unit, reader.wait, reader.attempts);
            let mut failure = match read(reader.link, unit, wait, block, attempts).await {
                Ok(answer) => {
                    reader.fill(block, &answer, &mut outcomes);
                    self.refused_whole.remove(&key(block));
                    continue;
                }
                Err(failure) => failure,
            };
            // Split a coalesced read the device refuses; learn from it only
            // if part of it reads: a device that refuses everything is
            // faulty (or the wrong unit), not a map with holes.
            if is_map_refusal(&failure)
                && block.points.len() > 1
                && !self.refused_whole.contains(&key(block))
            {
                let mut probed = learned.clone();
                match reader
                    .probe(block.clone(), &mut outcomes, &mut probed)
                    .await
                {
                    Ok(_)
                        if block
                            .points
                            .iter()
                            .any(|&i| matches!(outcomes[i], Some(Ok(_)))) =>
                    {
                        learned = probed;
                        continue;
                    }
                    Ok(_) => {
                        self.refused_whole.insert(key(block));
                        for &i in &block.points {
                            outcomes[i] = Some(Err(String::new()));
                        }
                    }
                    Err(stopped) => failure = stopped,
                }
            }
            self.health.errors.fetch_add(1, Relaxed);
            if failure.is_bad_input() {
                self.health.bad_input.fetch_add(1, Relaxed);
            }
            let reason = if failure.is_silence() {
                silence = Some(failure.to_string());
                failure.to_string()
            } else {
                format!("{}: {failure}", describe(block))
            };
            // Points a probe read before the device stopped answering keep
            // their values.
            for &i in &block.points {
                if matches!(&outcomes[i], Some(Err(e)) if e.is_empty()) {
                    outcomes[i] = Some(Err(reason.clone()));
                }
            }
        }
        self.silent = silence.is_some();
        if learned != self.learned {
            self.learn(learned);
        }
        outcomes
    }

    /// Plans the reads around what the last poll found out, and says so.
    fn learn(&mut self, learned: Learned) {
        if self.learned.is_empty() {
            self.learned_at = Instant::now();
        }
        let before = self.blocks.len();
        self.replan(learned);
        let holes: Vec<&str> = self.learned.holes.values().map(String::as_str).collect();
        tracing::warn!(
            device = %self.device.name,
            reads = self.blocks.len(),
            "the device refuses part of a read ({}); reading around it from now on ({before} reads per poll before), trying again in {}",
            if holes.is_empty() { "unmapped registers between points".to_owned() } else { holes.join("; ") },
            crate::config::Duration(REPROBE_AFTER)
        );
    }

    fn replan(&mut self, learned: Learned) {
        self.learned = learned;
        self.refused_whole.clear();
        self.blocks = plan_around(&self.layouts, self.device.limits(), &self.learned);
    }

    /// The points left out of every read, if any, for the device's health.
    fn skipped(&self) -> Option<String> {
        if self.learned.holes.is_empty() {
            return None;
        }
        let names: Vec<&str> = self
            .learned
            .holes
            .keys()
            .filter_map(|&i| self.device.points.get(i).map(|p| p.name.as_str()))
            .collect();
        Some(format!(
            "not read, the device refuses them: {}",
            names.join(", ")
        ))
    }

    /// Polls, publishes what is due, and logs a change of fault.
    pub async fn poll_and_publish(&mut self, link: &mut ModbusLink, ingest: &Ingest) -> bool {
        let stamp = ingest.clock().stamp();
        let outcomes = self.poll(link).await;
        let publication = self.publisher.publish(outcomes, Instant::now());
        let fault = self.publisher.fault().map(str::to_owned);
        let problem = fault.clone().or_else(|| self.skipped());
        if self.health.set_problem(problem) {
            let (device, bus) = (&self.device.name, link.endpoint());
            match fault {
                Some(fault) => tracing::warn!(%device, %bus, "{fault}"),
                None => tracing::info!(%device, %bus, "reading again"),
            }
        }
        let Some(publication) = publication else {
            return true;
        };
        let reading = Reading {
            device: self.device.name.clone(),
            ts_ms: stamp.wall_ms,
            mono_ms: stamp.mono_ms,
            unsynced: stamp.unsynced,
            values: publication.values,
            quality: publication.quality,
            error: publication.error,
            delivery: self.delivery,
        };
        ingest.append(reading).await.is_ok()
    }

    /// The next poll: one period after this one started, so that a poll
    /// made late by a slow bus is not followed by a hurried one. A unit
    /// that stays silent waits longer each time, up to a minute.
    pub fn schedule_next(&mut self, started: Instant) {
        let poll = self.device.poll.get();
        self.silent_polls = if self.silent {
            self.silent_polls.saturating_add(1)
        } else {
            0
        };
        let wait = match self.silent_polls.checked_sub(SILENT_POLLS_BEFORE_BACKOFF) {
            None => poll,
            Some(extra) => {
                let grown = poll.saturating_mul(2u32.saturating_pow(extra + 1));
                grown.min(SILENT_POLL_MAX.max(poll))
            }
        };
        if self.silent_polls == SILENT_POLLS_BEFORE_BACKOFF {
            tracing::info!(
                device = %self.device.name,
                "no answer for {SILENT_POLLS_BEFORE_BACKOFF} polls: polled less often (up to every {}) until it answers",
                crate::config::Duration(SILENT_POLL_MAX.max(poll))
            );
        }
        self.next_due = started + wait;
    }
}

fn key(block: &Block) -> (RegisterKind, u16, u16) {
    (block.register, block.start, block.count)
}

/// Marks the points of `block` that have no value yet as failed.
fn fail(block: &Block, reason: &str, outcomes: &mut [Option<PointResult>]) {
    for &i in &block.points {
        if outcomes[i].is_some() {
            outcomes[i] = Some(Err(reason.to_owned()));
        }
    }
}
