//! Downstream commands: checked before anything touches a device, journaled
//! before the broker gets its ack, run at most once, and answered exactly
//! once on `P/responses` (or the MQTT 5 response topic) through the store,
//! so that an answer given offline is delivered later.

pub mod message;
mod outcome;
mod running;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Semaphore;

use message::{Action, CommandRefusal};
use outcome::{CommandOutcome, Reply, response};
use running::Running;

use crate::clock::Deadline;
use crate::config::{CommandsConfig, DeviceConfig};
use crate::health::Health;
use crate::reading::{Priority, Qos};
use crate::sources::{Sources, WriteFault};
use crate::store::{CommandAnswer, JournalLimits, Journaled, Store};
use crate::uplink::CommandIn;
use crate::uplink::payload::check_topic;

/// Shown as the "device" of answers in `queue stats`.
const SOURCE: &str = "(commands)";

/// Unreadable commands answered per second, at most: each answer is a row
/// in the store, and junk must not fill the card or the uplink.
const UNREAD_ANSWERS_PER_SECOND: u32 = 10;

/// Writes under way at once, across every device; more are answered busy.
/// Each device's bus bounds its own queue too: this bounds the tasks.
const MAX_WRITES: usize = 64;

#[derive(Clone)]
pub struct Commands {
    store: Store,
    settings: CommandsConfig,
    responses: String,
    health: Arc<Health>,
    /// Answers to unreadable commands in the current second.
    unread: Arc<Mutex<(Instant, u32)>>,
    running: Running,
    writes: Arc<Semaphore>,
}

impl Commands {
    pub fn new(
        store: Store,
        settings: CommandsConfig,
        responses: String,
        health: Arc<Health>,
    ) -> Self {
        let unread = Arc::new(Mutex::new((store.clock().monotonic(), 0)));
        Commands {
            store,
            settings,
            responses,
            health,
            unread,
            running: Running::default(),
            writes: Arc::new(Semaphore::new(MAX_WRITES)),
        }
    }

    /// Journals the command (and lets the uplink acknowledge it), checks it
    /// against the running devices, and starts it. Answers come later,
    /// through the store.
    pub async fn receive(&self, incoming: CommandIn, devices: &[DeviceConfig], sources: &Sources) {
        // A response topic we may not publish to is answered on
        // `P/responses` instead, and the command is not run.
        let (topic, bad_topic) = match incoming.response_topic {
            Some(topic) => match check_topic(&topic) {
                Ok(()) => (topic, None),
                Err(why) => (self.responses.clone(), Some(why)),
            },
            None => (self.responses.clone(), None),
        };
        let reply = Reply {
            topic,
            correlation: incoming.correlation,
        };
        let max_payload = self.settings.max_payload.0 as usize;
        let command = match message::parse(&incoming.payload, max_payload) {
            Ok(command) => command,
            Err((id, why)) => {
                // Without a readable id there is nothing to journal; the
                // answer says why all the same.
                let _ = incoming.journaled.send(true);
                self.health.commands_unreadable.fetch_add(1, Relaxed);
                if !self.may_answer_unread() {
                    let n = self.health.commands_unanswered.fetch_add(1, Relaxed) + 1;
                    if n.is_power_of_two() {
                        tracing::warn!("{n} unreadable command(s) not answered (rate limit)");
                    }
                    return;
                }
                tracing::warn!("command rejected: {why}");
                let id = id.unwrap_or_default();
                self.answer(&id, CommandOutcome::Rejected(why), &[reply])
                    .await;
                return;
            }
        };
        if let Some(why) = bad_topic {
            let _ = incoming.journaled.send(true);
            let why = format!("response {why}");
            tracing::warn!("command {} rejected: {why}", command.id);
            self.answer(&command.id, CommandOutcome::Rejected(why), &[reply])
                .await;
            return;
        }
        // A duplicate of a command this process is running waits for the
        // original's answer: it is journaled already.
        if !incoming.first_delivery && self.running.join(&command.id, reply.clone()) {
            let _ = incoming.journaled.send(true);
            tracing::info!("command {} is running: answered when it ends", command.id);
            return;
        }
        let limits = JournalLimits {
            retention_ms: self.settings.journal_retention.get().as_millis() as i64,
            max_rows: i64::try_from(self.settings.journal_max).unwrap_or(i64::MAX),
        };
        match (self.store)
            .journal_command(command.id.clone(), incoming.first_delivery, limits)
            .await
        {
            Err(e) => {
                tracing::error!(
                    "command {} not journaled ({e}): left unacknowledged",
                    command.id
                );
                let _ = incoming.journaled.send(false);
                return;
            }
            Ok(seen) => {
                let _ = incoming.journaled.send(true);
                match seen {
                    Journaled::New => {}
                    Journaled::Received => tracing::info!(
                        "command {} was received before a stop and never started: running it now",
                        command.id
                    ),
                    Journaled::Answered(response) => {
                        tracing::info!(
                            "command {} seen before: answered again, not run",
                            command.id
                        );
                        let now_ms = self.store.clock().now_ms();
                        self.send(&command.id, response, reply, now_ms).await;
                        return;
                    }
                    Journaled::Running => {
                        let why = "the gateway stopped while this command ran; it is not run again";
                        self.answer(&command.id, CommandOutcome::Failed(why.into()), &[reply])
                            .await;
                        return;
                    }
                }
            }
        }
        self.running.start(&command.id, reply);
        let max_age = self.settings.max_age.get().as_millis() as i64;
        let checked = match message::check(&command, devices, self.store.clock().now_ms(), max_age)
        {
            Ok(checked) => checked,
            Err(refusal) => {
                let outcome = match refusal {
                    CommandRefusal::Rejected(why) => CommandOutcome::Rejected(why),
                    CommandRefusal::Expired(why) => CommandOutcome::Expired(why),
                };
                tracing::warn!("command {} not run: {outcome:?}", command.id);
                self.finish(&command.id, outcome).await;
                return;
            }
        };
        let point = checked.point;
        if command.action == Action::Read {
            let latest = self.health.device(&command.device).latest(&point.name);
            let outcome = match latest {
                Some((ts, value)) => CommandOutcome::Ok(Some((value, ts))),
                None => CommandOutcome::Failed(format!("no value of `{}` read yet", point.name)),
            };
            self.finish(&command.id, outcome).await;
            return;
        }
        let Some(writer) = sources.writer(&command.device) else {
            let why = format!("device `{}` is not running", command.device);
            self.finish(&command.id, CommandOutcome::Failed(why)).await;
            return;
        };
        let Ok(permit) = self.writes.clone().try_acquire_owned() else {
            let why = format!("busy: {MAX_WRITES} writes are under way");
            self.finish(&command.id, CommandOutcome::Rejected(why))
                .await;
            return;
        };
        // From here on a stop may cut the write off: never start it again.
        if let Err(e) = self.store.command_running(command.id.clone()).await {
            let why = format!("not run: the journal could not record it ({e})");
            self.finish(&command.id, CommandOutcome::Failed(why)).await;
            return;
        }
        let deadline = Deadline::new(self.store.clock().clone(), checked.expires_ms);
        // The write waits for its turn on the bus: not in the gateway's loop.
        let this = self.clone();
        tokio::spawn(async move {
            let value = command.value.clone().unwrap_or(Value::Null);
            let written = writer
                .write(&command.device, &command.point, &value, deadline)
                .await;
            drop(permit);
            let outcome = match written {
                Ok(()) => CommandOutcome::Ok(None),
                Err(e) => match e.fault {
                    WriteFault::Rejected | WriteFault::Busy => CommandOutcome::Rejected(e.reason),
                    WriteFault::Expired => CommandOutcome::Expired(e.reason),
                    WriteFault::Failed => CommandOutcome::Failed(e.reason),
                },
            };
            tracing::info!(
                "command {} ({}.{} = {value}): {outcome:?}",
                command.id,
                command.device,
                command.point
            );
            this.finish(&command.id, outcome).await;
        });
    }

    /// Whether another unreadable command may be answered this second.
    fn may_answer_unread(&self) -> bool {
        let mut window = self.unread.lock().unwrap_or_else(PoisonError::into_inner);
        let now = self.store.clock().monotonic();
        if now.duration_since(window.0) >= Duration::from_secs(1) {
            *window = (now, 0);
        }
        window.1 += 1;
        window.1 <= UNREAD_ANSWERS_PER_SECOND
    }

    /// Answers a running command, and every duplicate that waits for it.
    async fn finish(&self, id: &str, outcome: CommandOutcome) {
        let replies = self.running.finish(id);
        self.answer(id, outcome, &replies).await;
    }

    async fn answer(&self, id: &str, outcome: CommandOutcome, replies: &[Reply]) {
        let now_ms = self.store.clock().now_ms();
        let payload = response(id, &outcome, now_ms);
        for reply in replies {
            self.send(id, payload.clone(), reply.clone(), now_ms).await;
        }
    }

    /// Keeps the answer in the journal and queues it, in one transaction.
    async fn send(&self, id: &str, payload: String, reply: Reply, now_ms: i64) {
        let message = CommandAnswer {
            source: SOURCE.into(),
            topic: reply.topic,
            payload,
            correlation: reply.correlation,
            qos: Qos::AtLeastOnce,
            priority: Priority::High,
            ts_ms: now_ms,
        };
        if let Err(e) = self.store.answer_command(id.to_owned(), message).await {
            tracing::error!("the answer to command {id} could not be stored: {e}");
        }
    }
}
