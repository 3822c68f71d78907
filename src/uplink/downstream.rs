//! The downstream connection: `P/commands` and `P/config/set` at QoS 1 on
//! a session the broker keeps (MQTT 3.1.1 `clean_session=false`, MQTT 5
//! `clean_start=false` with a session expiry), so that what the cloud sends
//! while the gateway is offline waits at the broker and arrives on the
//! next connection.
//!
//! It has its own client id, no will, and publishes nothing: the answers
//! go through the store and the telemetry connection. Acks are manual: a
//! command is acknowledged once the gateway has journaled it, a
//! configuration once the gateway has taken it. Whatever is not
//! acknowledged when a connection ends comes again on the next one (the
//! journal answers a repeated command instead of running it again).
//!
//! Since this connection does nothing else, it waits for the gateway when
//! the command queue is full rather than dropping commands; the wait is
//! bounded, and rumqttc keeps pinging meanwhile (it polls on a task of its
//! own, see `link.rs`). A gateway that takes nothing for [`HANDOVER_WAIT`]
//! ends the connection, so that the broker keeps what is left and sends it
//! again later.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::link::{self, Event, Incoming, LinkError, MqttLink, SessionKind};
use super::reconnect::{Attempts, Next, Role};
use super::{CommandIn, Settings, credentials, sparkplug, tls};
use crate::config::BrokerUrl;
use crate::health::Health;
use crate::reading::Qos;

/// How long a command may take to be journaled before it goes
/// unacknowledged (and the connection is renewed, so it comes again).
const JOURNAL_WAIT: Duration = Duration::from_secs(10);

/// How long a message waits for room in the gateway's queue.
const HANDOVER_WAIT: Duration = Duration::from_secs(10);

/// How long acks may wait for room in rumqttc's request queue without any
/// going out before the connection is renewed.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// How often acks that found no room are offered again. They are never
/// awaited: rumqttc takes requests only while its events are read, and
/// this task is the one that reads them.
const ACK_RETRY: Duration = Duration::from_millis(10);

/// Acks waiting for room, at most, before the connection is renewed.
const MAX_UNACKED: usize = 4_096;

/// Requests rumqttc's channel holds: acks, two subscriptions, a
/// disconnect. Acks beyond it wait (see [`ACK_WAIT`]).
const REQUESTS: usize = 256;

/// Commands handed over and waiting for their journal entry, at most;
/// beyond it, no message is read until one is journaled.
const MAX_JOURNALING: usize = 64;

/// How long a shutdown waits for the DISCONNECT to go out.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Where the downstream connection hands over what it receives.
#[derive(Clone)]
pub struct Inbox {
    /// Commands from `P/commands`, to be journaled and run.
    pub commands: mpsc::Sender<CommandIn>,
    /// Documents from `P/config/set`.
    pub documents: mpsc::Sender<Vec<u8>>,
    /// Sparkplug: each NCMD rebirth adds one.
    pub rebirth: watch::Sender<u64>,
    /// Sparkplug: the declared metrics, whose aliases a DCMD may use.
    pub model: watch::Receiver<sparkplug::Model>,
    /// Sparkplug: whether the primary host says it is online (`None`:
    /// not heard yet).
    pub host: watch::Sender<Option<bool>>,
    /// Home Assistant said `online` on its status topic: discovery again.
    pub ha_online: watch::Sender<u64>,
}

#[derive(Debug, thiserror::Error)]
enum DownstreamError {
    #[error("{}", .0.describe())]
    Link(#[from] LinkError),
    #[error("credentials: {0}")]
    Credentials(#[from] credentials::CredentialError),
    #[error("{0}")]
    Tls(#[from] tls::TlsSetupError),
    #[error("the broker closed the session")]
    Disconnected,
    #[error("the broker closed the session (reason 0x{0:02x})")]
    DisconnectedBecause(u8),
    #[error(
        "the broker refused the subscription to {0}: the broker's ACL must let this client id subscribe to it"
    )]
    Refused(String),
    #[error("the gateway took no {0} for {HANDOVER_WAIT:?}; the broker sends it again")]
    GatewayBusy(&'static str),
    #[error("a command was not journaled within {JOURNAL_WAIT:?}; the broker sends it again")]
    NotJournaled,
    #[error("an acknowledgement waited {ACK_WAIT:?} for the MQTT client")]
    AckStuck,
}

/// Runs until `shutdown`: connect, subscribe, hand over what arrives, and
/// reconnect with backoff, going through the brokers in order.
pub async fn run(
    settings: Settings,
    health: Arc<Health>,
    inbox: Inbox,
    shutdown: CancellationToken,
) {
    let mut log = StateLog::default();
    let mut attempts = Attempts::new(&settings, Role::Commands);
    loop {
        let Next::Connect(broker) = attempts.next(&shutdown).await else {
            return;
        };
        let mut connection = Connection::new(&settings, &inbox);
        let result = connection.run(broker, &shutdown, &mut log, &health).await;
        health.downstream_up.store(false, Relaxed);
        let Err(e) = result else {
            return;
        };
        log.down(broker, &e);
        if let Some(up_for) = connection.up_for() {
            attempts
                .backoff
                .connection_ended(up_for, connection.subscribed);
        }
        attempts.lost(connection.connected_at.is_some());
    }
}

/// Logs the state of the connection once per change, not once per retry.
#[derive(Default)]
struct StateLog {
    last_problem: Option<String>,
    was_up: bool,
}

impl StateLog {
    fn up(&mut self, broker: &BrokerUrl, resumed: bool) {
        if !self.was_up || self.last_problem.is_some() {
            let session = if resumed {
                "resumed"
            } else {
                "new: nothing was kept from before"
            };
            tracing::info!("commands: subscribed at {broker} (session {session})");
        }
        self.was_up = true;
        self.last_problem = None;
    }

    /// Returns whether it said so (once per change of problem).
    fn down(&mut self, broker: &BrokerUrl, error: &DownstreamError) -> bool {
        let problem = format!("{broker}: {error}");
        // A reset reads differently depending on where rumqttc was when it
        // came; it is one problem however it reads.
        let key = match error {
            DownstreamError::Link(e) if e.closed_by_peer() => format!("{broker}: closed"),
            _ => problem.clone(),
        };
        if self.last_problem.as_deref() == Some(key.as_str()) {
            tracing::debug!("commands link still down: {problem}");
            return false;
        }
        tracing::warn!("commands link down: {problem}; commands wait at the broker");
        self.last_problem = Some(key);
        true
    }
}

/// A command handed over, waiting for its journal entry: the message, and
/// whether it was journaled (only then is it acknowledged to the broker).
type Journaling = Pin<Box<dyn Future<Output = (Box<Incoming>, bool)> + Send>>;

/// One connection of the downstream session.
struct Connection<'a> {
    settings: &'a Settings,
    inbox: &'a Inbox,
    link: Option<MqttLink>,
    connected_at: Option<Instant>,
    /// The broker has acknowledged the subscriptions.
    subscribed: bool,
    /// The timestamp of the newest primary host STATE seen.
    host_seen: u64,
    /// Home Assistant settings so far: part of their commands' ids.
    set_count: u64,
    /// Whether the CONNACK said the broker still had our session.
    resumed: bool,
    /// Commands handed over, acknowledged once journaled; at most
    /// [`MAX_JOURNALING`].
    journaling: FuturesUnordered<Journaling>,
    /// Journaled or handed over, waiting for room to be acknowledged.
    unacked: VecDeque<Box<Incoming>>,
    /// Since when acks wait without any going out.
    acks_stuck_since: Option<Instant>,
}

impl<'a> Connection<'a> {
    fn new(settings: &'a Settings, inbox: &'a Inbox) -> Self {
        Connection {
            settings,
            inbox,
            link: None,
            connected_at: None,
            subscribed: false,
            host_seen: 0,
            set_count: 0,
            resumed: false,
            journaling: FuturesUnordered::new(),
            unacked: VecDeque::new(),
            acks_stuck_since: None,
        }
    }

    fn up_for(&self) -> Option<Duration> {
        self.connected_at.map(|at| at.elapsed())
    }

    async fn run(
        &mut self,
        broker: &BrokerUrl,
        shutdown: &CancellationToken,
        log: &mut StateLog,
        health: &Health,
    ) -> Result<(), DownstreamError> {
        self.open(broker).await?;
        loop {
            let Some(link) = self.link.as_mut() else {
                return Err(DownstreamError::Disconnected);
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.close().await;
                    return Ok(());
                }
                // Acks first: under a flood, messages are always ready, and
                // acks left waiting would pile up here and at the broker.
                Some((message, journaled)) = self.journaling.next(), if !self.journaling.is_empty() => {
                    if !journaled {
                        // Unacknowledged, it would hold a slot of the
                        // broker's window until the next connection: renew
                        // the connection now, and the broker sends it again.
                        return Err(DownstreamError::NotJournaled);
                    }
                    self.ack(message)?;
                }
                event = link.events.recv(), if self.journaling.len() < MAX_JOURNALING => {
                    let event = event.ok_or(DownstreamError::Disconnected)??;
                    if self.handle(event, shutdown, health).await? {
                        log.up(broker, self.resumed);
                        health.downstream_up.store(true, Relaxed);
                    }
                    self.flush_acks()?;
                }
                _ = tokio::time::sleep(ACK_RETRY), if !self.unacked.is_empty() => {
                    self.flush_acks()?;
                }
            }
        }
    }

    /// Credentials and TLS are read again for every attempt, as for the
    /// telemetry connection.
    async fn open(&mut self, broker: &BrokerUrl) -> Result<(), DownstreamError> {
        let s = self.settings;
        let credentials = credentials::resolve(&s.credentials).await?;
        let tls = match broker.tls {
            true => Some(tls::client_config(s.tls.as_ref())?),
            false => None,
        };
        self.link = Some(MqttLink::open(link::Options {
            broker,
            protocol: s.protocol,
            client_id: &s.downstream_client_id,
            keep_alive: s.keep_alive,
            // Two subscriptions are all this connection sends with an id.
            inflight: 8,
            capacity: REQUESTS,
            will: None,
            session: SessionKind::Kept {
                expiry_s: u32::try_from(s.session_expiry.as_secs()).unwrap_or(u32::MAX),
            },
            credentials,
            tls,
        }));
        Ok(())
    }

    /// Applies one event; returns true when the subscriptions are in place.
    async fn handle(
        &mut self,
        event: Event,
        shutdown: &CancellationToken,
        health: &Health,
    ) -> Result<bool, DownstreamError> {
        match event {
            Event::Connected {
                session_present, ..
            } => {
                self.connected_at = Some(Instant::now());
                self.resumed = session_present;
                // Every time: cheap, and the broker may have lost the
                // session (a restart without persistence, an expiry).
                let topics = &self.settings.topics;
                let client = self.client()?;
                client.try_subscribe(topics.commands(), Qos::AtLeastOnce)?;
                client.try_subscribe(topics.config_set(), Qos::AtLeastOnce)?;
                // Hosts send NCMD and DCMD at QoS 0: nothing waits for us.
                if let Some(spb) = &self.settings.sparkplug {
                    client.try_subscribe(spb.commands_filter(false), Qos::AtMostOnce)?;
                    client.try_subscribe(spb.commands_filter(true), Qos::AtMostOnce)?;
                    if let Some(state) = spb.state_topic() {
                        client.try_subscribe(state, Qos::AtLeastOnce)?;
                    }
                }
                // Home Assistant's birth, and the controls it sets.
                if let Some(ha) = &self.settings.homeassistant {
                    client.try_subscribe(ha.status_topic(), Qos::AtLeastOnce)?;
                    client.try_subscribe(topics.set_filter(), Qos::AtLeastOnce)?;
                }
            }
            Event::SubAck(_, true) => {
                let topics = &self.settings.topics;
                return Err(DownstreamError::Refused(format!(
                    "{} or {}",
                    topics.commands(),
                    topics.config_set()
                )));
            }
            Event::SubAck(..) => {
                let first = !self.subscribed;
                self.subscribed = true;
                // Two SUBACKs; the first says the connection works.
                return Ok(first);
            }
            Event::Message(message) => self.receive(message, shutdown, health).await?,
            Event::Disconnected(Some(code)) => {
                return Err(DownstreamError::DisconnectedBecause(code));
            }
            Event::Disconnected(None) => return Err(DownstreamError::Disconnected),
            // This connection publishes nothing; rumqttc's own pings and
            // acks need no bookkeeping here.
            _ => {}
        }
        Ok(false)
    }

    /// Hands a message to the gateway, waiting (a bounded time) for room.
    async fn receive(
        &mut self,
        message: Box<Incoming>,
        shutdown: &CancellationToken,
        health: &Health,
    ) -> Result<(), DownstreamError> {
        let topics = &self.settings.topics;
        let ha = self.settings.homeassistant.as_ref();
        if ha.is_some_and(|ha| message.topic == ha.status_topic()) {
            if message.payload.as_slice() == b"online" {
                self.inbox.ha_online.send_modify(|n| *n += 1);
                let n = *self.inbox.ha_online.borrow();
                if n.is_power_of_two() {
                    // A flood of them (the uplink paces the passes) must
                    // not flood the log too.
                    tracing::info!(
                        "Home Assistant is online: discovery again ({n} time(s) since start, logged at powers of two)"
                    );
                }
            }
            return self.ack(message);
        }
        // A control in Home Assistant: a bare value, as a command.
        let set = (ha.and_then(|_| topics.set_target(&message.topic)))
            .map(|(device, point)| self.set_command(device, point, &message));
        if message.topic == topics.commands() || set.is_some() {
            let (payload, first_delivery) =
                set.unwrap_or_else(|| (message.payload.to_vec(), false));
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                permit = tokio::time::timeout(HANDOVER_WAIT, self.inbox.commands.reserve()) => permit,
            };
            let permit = match permit {
                Ok(Ok(permit)) => permit,
                Ok(Err(_closed)) => {
                    tracing::debug!("a command arrived while shutting down; not acknowledged");
                    return Ok(());
                }
                Err(_elapsed) => {
                    health.commands_dropped.fetch_add(1, Relaxed);
                    return Err(DownstreamError::GatewayBusy("command"));
                }
            };
            let (journaled, answer) = oneshot::channel();
            permit.send(CommandIn {
                payload,
                response_topic: message.response_topic.clone(),
                correlation: message.correlation.clone(),
                first_delivery,
                journaled,
            });
            self.journaling.push(Box::pin(async move {
                let journaled = matches!(
                    tokio::time::timeout(JOURNAL_WAIT, answer).await,
                    Ok(Ok(true))
                );
                (message, journaled)
            }));
            return Ok(());
        }
        let state = (self.settings.sparkplug.as_ref()).and_then(|s| s.state_topic());
        if state.as_deref() == Some(message.topic.as_str()) {
            self.host_state(&message.payload);
            return self.ack(message);
        }
        if let Some(target) =
            (self.settings.sparkplug.as_ref()).and_then(|spb| spb.command_target(&message.topic))
        {
            self.sparkplug(target.as_deref(), &message.payload, shutdown, health)
                .await?;
            return self.ack(message);
        }
        if message.topic == topics.config_set() {
            let sent = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                sent = tokio::time::timeout(
                    HANDOVER_WAIT,
                    self.inbox.documents.send(message.payload.clone()),
                ) => sent,
            };
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(_closed)) => {
                    tracing::debug!(
                        "a configuration arrived while shutting down; not acknowledged"
                    );
                    return Ok(());
                }
                Err(_elapsed) => return Err(DownstreamError::GatewayBusy("configuration")),
            }
        } else {
            tracing::warn!("ignored a message on {}", message.topic);
        }
        self.ack(message)
    }

    /// What Home Assistant sends to `P/set/{device}/{point}` (a bare
    /// value: `22.5`, `true`, or text) as a command, with an id of its
    /// own, and whether that id is new to the journal.
    ///
    /// At QoS 1 and 2 the id is the packet id, which the broker keeps when
    /// it delivers the message again (DUP) after a lost ack, so the
    /// journal answers the copy instead of writing the point twice. A
    /// first delivery replaces what the journal holds under that id: an
    /// older message's, from before the packet ids went round. At QoS 0
    /// there is no copy, and the id only has to be unique.
    fn set_command(&mut self, device: &str, point: &str, message: &Incoming) -> (Vec<u8>, bool) {
        let value =
            serde_json::from_slice::<serde_json::Value>(&message.payload).unwrap_or_else(|_| {
                String::from_utf8_lossy(&message.payload)
                    .into_owned()
                    .into()
            });
        let (id, first) = match message.delivery() {
            (0, _) => {
                self.set_count += 1;
                let at = jiff::Timestamp::now().as_millisecond();
                (format!("ha-{device}-{point}-{at}-{}", self.set_count), true)
            }
            (pkid, dup) => (format!("ha-{device}-{point}-m{pkid}"), !dup),
        };
        let command =
            serde_json::json!({"id": id, "device": device, "point": point, "value": value});
        (command.to_string().into_bytes(), first)
    }

    /// The primary host's STATE, `{"online": bool, "timestamp": ms}`: an
    /// older one than the last seen is stale (Sparkplug 3.0) and ignored.
    fn host_state(&mut self, payload: &[u8]) {
        let Some((online, timestamp)) = sparkplug::host_state(payload) else {
            tracing::warn!(
                "Sparkplug: ignored a STATE that is not {{\"online\":…,\"timestamp\":…}}: {:?}",
                String::from_utf8_lossy(payload)
            );
            return;
        };
        if timestamp < self.host_seen {
            return;
        }
        self.host_seen = timestamp;
        tracing::info!(
            "Sparkplug: the primary host is {}",
            if online { "online" } else { "offline" }
        );
        self.inbox.host.send_replace(Some(online));
    }

    /// An NCMD (`device` `None`) or a DCMD: a rebirth for the telemetry
    /// connection, or commands for the gateway, which answers them on
    /// `P/responses`. Refused ones are logged and counted.
    async fn sparkplug(
        &mut self,
        device: Option<&str>,
        payload: &[u8],
        shutdown: &CancellationToken,
        health: &Health,
    ) -> Result<(), DownstreamError> {
        let model = self.inbox.model.borrow().clone();
        let commands = match sparkplug::request(device, payload, &model) {
            Ok(sparkplug::Request::Rebirth) => {
                self.inbox.rebirth.send_modify(|n| *n += 1);
                let n = *self.inbox.rebirth.borrow();
                if n.is_power_of_two() {
                    tracing::info!(
                        "Sparkplug: rebirth requested by a host ({n} time(s) since start, logged at powers of two)"
                    );
                }
                return Ok(());
            }
            Ok(sparkplug::Request::Commands(commands)) => commands,
            Err(why) => {
                health.commands_unreadable.fetch_add(1, Relaxed);
                tracing::warn!("Sparkplug: ignored a command for {device:?}: {why}");
                return Ok(());
            }
        };
        for command in commands {
            let sent = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                permit = tokio::time::timeout(HANDOVER_WAIT, self.inbox.commands.reserve()) => permit,
            };
            match sent {
                Ok(Ok(permit)) => permit.send(CommandIn {
                    payload: command.to_string().into_bytes(),
                    response_topic: None,
                    correlation: None,
                    first_delivery: false,
                    // At QoS 0 there is no ack to hold back.
                    journaled: oneshot::channel().0,
                }),
                Ok(Err(_closed)) => return Ok(()),
                Err(_elapsed) => {
                    health.commands_dropped.fetch_add(1, Relaxed);
                    return Err(DownstreamError::GatewayBusy("command"));
                }
            }
        }
        Ok(())
    }

    /// Acknowledges `message` as soon as rumqttc has room, in order.
    fn ack(&mut self, message: Box<Incoming>) -> Result<(), DownstreamError> {
        self.unacked.push_back(message);
        self.flush_acks()
    }

    /// Hands rumqttc the acks it has room for; fails when they have made
    /// no progress for [`ACK_WAIT`] or pile up past [`MAX_UNACKED`].
    fn flush_acks(&mut self) -> Result<(), DownstreamError> {
        let client = self
            .link
            .as_ref()
            .map(|l| &l.client)
            .ok_or(DownstreamError::Disconnected)?;
        let mut sent = false;
        while let Some(message) = self.unacked.front() {
            if !client.try_ack(message) {
                break;
            }
            self.unacked.pop_front();
            sent = true;
        }
        if sent || self.unacked.is_empty() {
            self.acks_stuck_since = None;
        } else {
            let since = *self.acks_stuck_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= ACK_WAIT {
                return Err(DownstreamError::AckStuck);
            }
        }
        if self.unacked.len() > MAX_UNACKED {
            return Err(DownstreamError::AckStuck);
        }
        Ok(())
    }

    fn client(&self) -> Result<&link::Client, DownstreamError> {
        self.link
            .as_ref()
            .map(|l| &l.client)
            .ok_or(DownstreamError::Disconnected)
    }

    /// A clean DISCONNECT: the broker keeps the session (and sends again
    /// what was not acknowledged) whether or not it arrives, but a clean
    /// one spares the broker a keep-alive's wait.
    async fn close(&mut self) {
        if self.connected_at.is_none() {
            return;
        }
        let Some(link) = self.link.as_mut() else {
            return;
        };
        if link.client.try_disconnect().is_err() {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Some(Ok(event)) = link.events.recv().await {
                if event == Event::Disconnecting {
                    break;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    use super::*;

    fn reset(inside_state: bool) -> DownstreamError {
        let io = Error::from(ErrorKind::ConnectionReset);
        let e = match inside_state {
            true => rumqttc::ConnectionError::MqttState(rumqttc::StateError::Io(io)),
            false => rumqttc::ConnectionError::Io(io),
        };
        DownstreamError::Link(LinkError::V4(Box::new(e)))
    }

    #[test]
    fn a_loss_is_said_once_however_rumqttc_words_a_reset() {
        let broker = BrokerUrl::parse("mqtt://127.0.0.1:1883").unwrap_or_else(|e| panic!("{e}"));
        let mut log = StateLog::default();
        log.up(&broker, false);
        assert!(log.down(&broker, &reset(true)));
        assert!(!log.down(&broker, &reset(false)), "the same reset");
        assert!(!log.down(&broker, &reset(true)));
        assert!(
            log.down(&broker, &DownstreamError::NotJournaled),
            "a new problem"
        );
        assert!(!log.down(&broker, &DownstreamError::NotJournaled));
        // Back up, then down again: a new loss.
        log.up(&broker, true);
        assert!(log.down(&broker, &reset(false)));
    }
}
