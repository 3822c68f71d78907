//! Downstream commands: checked before anything touches a device, journaled
//! before the broker gets its ack, run at most once, and answered exactly
//! once on `P/responses` (or the MQTT 5 response topic) through the store,
//! so that an answer given offline is delivered later.

pub mod message;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use message::{Action, CommandRefusal};

use crate::config::{CommandsConfig, DeviceConfig};
use crate::health::Health;
use crate::reading::{Priority, Qos};
use crate::sources::Sources;
use crate::store::{CommandAnswer, Journaled, Store};
use crate::uplink::CommandIn;
use crate::uplink::payload::{check_topic, timestamp};

/// Shown as the "device" of answers in `queue stats`.
const SOURCE: &str = "(commands)";

/// Unreadable commands answered per second, at most: each answer is a row
/// in the store, and junk must not fill the card or the uplink.
const UNREAD_ANSWERS_PER_SECOND: u32 = 10;

#[derive(Clone)]
pub struct Commands {
    store: Store,
    settings: CommandsConfig,
    responses: String,
    health: Arc<Health>,
    /// Answers to unreadable commands in the current second.
    unread: Arc<Mutex<(Instant, u32)>>,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq)]
enum CommandOutcome {
    Ok(Option<(Value, i64)>),
    Rejected(String),
    Failed(String),
    Expired(String),
}

/// Where the answer goes.
struct Reply {
    topic: String,
    correlation: Option<Vec<u8>>,
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
                if !self.may_answer_unread() {
                    let n = self.health.commands_unanswered.fetch_add(1, Relaxed) + 1;
                    if n.is_power_of_two() {
                        tracing::warn!("{n} unreadable command(s) not answered (rate limit)");
                    }
                    return;
                }
                tracing::warn!("command rejected: {why}");
                self.answer(id.unwrap_or_default(), CommandOutcome::Rejected(why), reply)
                    .await;
                return;
            }
        };
        if let Some(why) = bad_topic {
            let _ = incoming.journaled.send(true);
            let why = format!("response {why}");
            tracing::warn!("command {} rejected: {why}", command.id);
            self.answer(command.id, CommandOutcome::Rejected(why), reply)
                .await;
            return;
        }
        let retention = self.settings.journal_retention.get().as_millis() as i64;
        match self
            .store
            .journal_command(command.id.clone(), retention)
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
                    Journaled::Answered(response) => {
                        tracing::info!(
                            "command {} seen before: answered again, not run",
                            command.id
                        );
                        let now_ms = self.store.clock().now_ms();
                        self.send(command.id, response, reply, now_ms).await;
                        return;
                    }
                    Journaled::Unanswered => {
                        let why = "the gateway stopped while this command ran; it is not run again";
                        self.answer(command.id, CommandOutcome::Failed(why.into()), reply)
                            .await;
                        return;
                    }
                }
            }
        }
        let max_age = self.settings.max_age.get().as_millis() as i64;
        let point = match message::check(&command, devices, self.store.clock().now_ms(), max_age) {
            Ok(point) => point,
            Err(refusal) => {
                let outcome = match refusal {
                    CommandRefusal::Rejected(why) => CommandOutcome::Rejected(why),
                    CommandRefusal::Expired(why) => CommandOutcome::Expired(why),
                };
                tracing::warn!("command {} not run: {outcome:?}", command.id);
                self.answer(command.id, outcome, reply).await;
                return;
            }
        };
        if command.action == Action::Read {
            let latest = self.health.device(&command.device).latest(&point.name);
            let outcome = match latest {
                Some((ts, value)) => CommandOutcome::Ok(Some((value, ts))),
                None => CommandOutcome::Failed(format!("no value of `{}` read yet", point.name)),
            };
            self.answer(command.id, outcome, reply).await;
            return;
        }
        let Some(writer) = sources.writer(&command.device) else {
            let why = format!("device `{}` is not running", command.device);
            self.answer(command.id, CommandOutcome::Failed(why), reply)
                .await;
            return;
        };
        // The write waits for its turn on the bus: not in the gateway's loop.
        let this = self.clone();
        tokio::spawn(async move {
            let value = command.value.clone().unwrap_or(Value::Null);
            let outcome = match writer.write(&command.device, &command.point, &value).await {
                Ok(()) => CommandOutcome::Ok(None),
                Err(e) if e.rejected => CommandOutcome::Rejected(e.reason),
                Err(e) => CommandOutcome::Failed(e.reason),
            };
            tracing::info!(
                "command {} ({}.{} = {value}): {outcome:?}",
                command.id,
                command.device,
                command.point
            );
            this.answer(command.id, outcome, reply).await;
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

    async fn answer(&self, id: String, outcome: CommandOutcome, reply: Reply) {
        let now_ms = self.store.clock().now_ms();
        self.send(id.clone(), response(&id, &outcome, now_ms), reply, now_ms)
            .await;
    }

    /// Keeps the answer in the journal and queues it, in one transaction.
    async fn send(&self, id: String, payload: String, reply: Reply, now_ms: i64) {
        let message = CommandAnswer {
            source: SOURCE.into(),
            topic: reply.topic,
            payload,
            correlation: reply.correlation,
            qos: Qos::AtLeastOnce,
            priority: Priority::High,
            ts_ms: now_ms,
        };
        if let Err(e) = self.store.answer_command(id.clone(), message).await {
            tracing::error!("the answer to command {id} could not be stored: {e}");
        }
    }
}

/// `{"id":"c-17","status":"ok"|"rejected"|"failed"|"expired","error":"…","value":…,"ts":"…"}`
fn response(id: &str, outcome: &CommandOutcome, now_ms: i64) -> String {
    let (status, error) = match outcome {
        CommandOutcome::Ok(_) => ("ok", None),
        CommandOutcome::Rejected(why) => ("rejected", Some(why)),
        CommandOutcome::Failed(why) => ("failed", Some(why)),
        CommandOutcome::Expired(why) => ("expired", Some(why)),
    };
    let mut body = json!({ "id": id, "status": status, "ts": timestamp(now_ms) });
    if let Some(error) = error {
        body["error"] = error.as_str().into();
    }
    if let CommandOutcome::Ok(Some((value, ts))) = outcome {
        body["value"] = value.clone();
        body["value_ts"] = timestamp(*ts).into();
    }
    body.to_string()
}
