//! The MQTT side of the gateway, on two connections to the same broker.
//!
//! The telemetry connection ([`run`]) drains the store to the broker and
//! deletes a row only once the broker has it. Every connection starts from
//! scratch (a new rumqttc client, a clean session, empty bookkeeping) and
//! re-sends every row still in the store, oldest of the highest priority
//! first. That costs duplicates after a reconnect (each reading carries
//! `seq`, so the cloud can drop them) and buys the guarantee: nothing
//! committed is lost, whatever rumqttc drops on a reconnect. It subscribes
//! to nothing.
//!
//! The downstream connection ([`run_downstream`], in `downstream.rs`)
//! takes commands and configurations on a session the broker keeps, so
//! that what is sent while the gateway is offline waits at the broker. It
//! cannot share the telemetry connection: on a kept session rumqttc and the
//! broker would carry our unacknowledged publishes and their packet ids
//! across reconnects, beside the store that already re-sends them.

mod credentials;
mod downstream;
mod drain;
pub mod homeassistant;
mod inflight;
mod link;
mod pace;
pub mod payload;
mod poison;
mod reconnect;
mod session;
pub mod sparkplug;
mod throttle;
mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use downstream::{Inbox, run as run_downstream};
pub use payload::ConfigInfo;
use payload::Topics;
use poison::PoisonWatch;
use reconnect::{Attempts, Next, Role};
use session::Session;

use crate::config::{
    BatchConfig, BrokerUrl, ClientIdError, Config, Credentials, Protocol, TlsConfig,
};
use crate::health::Health;
use crate::store::{Store, StoreError};

/// What the uplink needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Tried in order; the first again after a connection ends.
    pub brokers: Vec<BrokerUrl>,
    pub protocol: Protocol,
    pub client_id: String,
    /// The downstream connection's client id (`commands.client_id`).
    pub downstream_client_id: String,
    /// MQTT 5: how long the broker keeps the downstream session.
    pub session_expiry: Duration,
    pub credentials: Credentials,
    pub tls: Option<TlsConfig>,
    pub keep_alive: Duration,
    pub max_inflight: usize,
    pub max_messages_per_second: u32,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long a connection must stay up (and see an ack) to reset the backoff.
    pub stable_after: Duration,
    /// The first connection after a start waits a random part of this.
    pub connect_jitter: Duration,
    /// Backlog publishes per second at most (`mqtt.drain_rate`); 0: no limit.
    pub drain_rate: u32,
    /// Bytes per packet at most (`mqtt.max_packet_size`).
    pub max_packet_size: usize,
    /// Clean closes right after a row before it is dead-lettered.
    pub max_attempts: u32,
    pub topics: Topics,
    /// `mqtt.format: sparkplug`: the edge node's group, id and QoS.
    pub sparkplug: Option<sparkplug::Settings>,
    /// Home Assistant discovery, with a `homeassistant:` section.
    pub homeassistant: Option<homeassistant::Settings>,
    /// How often the retained status is refreshed.
    pub status_interval: Duration,
    /// How long a shutdown waits for outstanding acks.
    pub drain_grace: Duration,
}

impl Settings {
    /// Fails when `mqtt.client_id` needs a machine id that cannot be read.
    pub fn from_config(config: &Config) -> Result<Settings, ClientIdError> {
        let mqtt = &config.mqtt;
        Ok(Settings {
            brokers: mqtt.brokers(),
            protocol: mqtt.protocol,
            client_id: mqtt.resolve_client_id(config.gateway.id.as_str())?,
            downstream_client_id: mqtt.resolve_downstream_client_id(
                config.commands.client_id.as_deref(),
                config.gateway.id.as_str(),
            )?,
            session_expiry: config.commands.session_expiry.get(),
            credentials: mqtt.credentials(),
            tls: mqtt.tls.clone(),
            keep_alive: mqtt.keep_alive.get(),
            max_inflight: mqtt.max_inflight.get() as usize,
            max_messages_per_second: mqtt.max_messages_per_second,
            backoff_min: mqtt.backoff_min.get(),
            backoff_max: mqtt.backoff_max.get(),
            stable_after: mqtt.stable_after.get(),
            connect_jitter: mqtt.connect_jitter.get(),
            max_packet_size: usize::try_from(mqtt.max_packet_size.0).unwrap_or(usize::MAX),
            drain_rate: mqtt.drain_rate,
            max_attempts: mqtt.max_attempts.get() as u32,
            topics: Topics::new(mqtt.topic_prefix.as_str(), config.gateway.id.as_str()),
            sparkplug: sparkplug::Settings::from_config(config),
            homeassistant: homeassistant::Settings::from_config(config),
            status_interval: config.gateway.status_interval.get(),
            drain_grace: Duration::from_secs(3),
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum UplinkError {
    #[error("{}", .0.describe())]
    MqttLink(#[from] link::LinkError),
    #[error("credentials: {0}")]
    Credentials(#[from] credentials::CredentialError),
    #[error("{0}")]
    Tls(#[from] tls::TlsSetupError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("delivery bookkeeping lost track: {0}")]
    Mismatch(#[from] inflight::Mismatch),
    #[error("the broker closed the session")]
    Disconnected,
    #[error("the broker closed the session (reason 0x{0:02x})")]
    DisconnectedBecause(u8),
    #[error(
        "the broker handed our session to another client with the same client id (0x8e, session taken over)"
    )]
    TakenOver,
    #[error("nothing heard from the broker for {0:.1?} (keep-alive): the link is dead")]
    Silent(Duration),
    #[error("reconnecting to reclaim packet ids held by refused QoS 2 messages")]
    Leaked,
    #[error("the Sparkplug primary host went offline: NDEATH sent, connecting again")]
    HostOffline,
}

/// A command received on `P/commands`, for the gateway to journal and run.
#[derive(Debug)]
pub struct CommandIn {
    pub payload: Vec<u8>,
    /// MQTT 5: where to answer instead of `P/responses`, and what to send back.
    pub response_topic: Option<String>,
    pub correlation: Option<Vec<u8>>,
    /// The command's id was made by the gateway (Home Assistant's
    /// `P/set`) from the packet id of a first delivery: whatever the
    /// journal holds under it is an older message's. A redelivery keeps
    /// the id, so the journal still answers it instead of running it again.
    pub first_delivery: bool,
    /// `true` once journaled: only then is it acknowledged to the broker.
    pub journaled: tokio::sync::oneshot::Sender<bool>,
}

/// What the telemetry connection is told by the rest of the gateway.
#[derive(Clone)]
pub struct Channels {
    /// Which configuration runs, for `P/status`.
    pub info: watch::Receiver<ConfigInfo>,
    /// The retained `P/config/state` to publish, once there is one.
    pub state: watch::Receiver<Option<String>>,
    /// Devices whose readings travel in batches.
    pub batches: watch::Receiver<HashMap<String, BatchConfig>>,
    /// The metrics Sparkplug births declare.
    pub model: watch::Receiver<sparkplug::Model>,
    /// Sparkplug rebirths asked for by hosts (NCMD), counted.
    pub rebirth: watch::Receiver<u64>,
    /// Sparkplug: whether the primary host is online (`None`: not heard).
    pub host: watch::Receiver<Option<bool>>,
    /// The devices Home Assistant discovery announces.
    pub ha_model: watch::Receiver<homeassistant::Model>,
    /// Each `online` Home Assistant says on `{prefix}/status` adds one.
    pub ha_online: watch::Receiver<u64>,
}

/// Runs until `shutdown`: connect, drain, and reconnect with backoff,
/// going through the brokers in order.
pub async fn run(
    settings: Settings,
    store: Store,
    health: Arc<Health>,
    config: Channels,
    shutdown: CancellationToken,
) {
    let mut link = LinkLog::default();
    let mut clones = CloneWatch::default();
    let mut poison = PoisonWatch::default();
    let mut attempts = Attempts::new(&settings, Role::Telemetry);
    let mut node = (settings.sparkplug.clone())
        .map(|s| sparkplug::Node::new(s, config.model.borrow().clone()));
    let mut discovery = (settings.homeassistant.clone())
        .map(|s| homeassistant::Discovery::new(s, config.ha_model.borrow().clone()));
    loop {
        let broker = match attempts.next(&shutdown).await {
            Next::Connect(broker) => broker,
            Next::Stop => return,
            Next::NoBroker => {
                tracing::error!("no MQTT broker configured");
                return;
            }
        };
        let mut session = Session::new(
            &settings,
            &store,
            &health,
            config.clone(),
            &mut poison,
            node.as_mut(),
            discovery.as_mut(),
        );
        let Err(e) = session.run(broker, &shutdown, &mut link).await else {
            return;
        };
        link.down(broker, &e);
        // A broker closing on a packet it will not take often resets the
        // socket (the rest of the packet is unread), so a reset counts too;
        // the timing rule in `poison` keeps a flapping link from blaming
        // good rows.
        if closed_by_broker(&e) {
            session.pin_suspects().await;
        }
        if let Some(up_for) = session.up_for() {
            let stable = attempts.backoff.connection_ended(up_for, session.acked());
            let ending = Ending::of(&e, stable);
            if let Some(why) = clones.ended(ending, &settings.client_id) {
                tracing::error!("{why}");
                health.set_uplink_problem(Some(why));
            } else if stable {
                health.set_uplink_problem(None);
            }
        }
        attempts.lost(session.was_connected());
    }
}

/// Logs the link state once per change, not once per retry.
#[derive(Default)]
struct LinkLog {
    last_problem: Option<String>,
    was_up: bool,
}

impl LinkLog {
    /// Returns true for a reconnection (not the first connection).
    fn up(&mut self, broker: &BrokerUrl) -> bool {
        if !self.was_up || self.last_problem.is_some() {
            tracing::info!("connected to {broker}");
        }
        let again = self.was_up;
        self.was_up = true;
        self.last_problem = None;
        again
    }

    fn down(&mut self, broker: &BrokerUrl, error: &UplinkError) {
        let problem = format!("{broker}: {error}");
        if self.last_problem.as_deref() != Some(problem.as_str()) {
            tracing::warn!("MQTT link down: {problem}; readings stay queued");
            self.last_problem = Some(problem);
        } else {
            tracing::debug!("MQTT link still down: {problem}");
        }
    }
}

/// How a connection the broker had accepted ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// It stayed up long enough and saw acks: whatever ended it, the link works.
    Stable,
    /// MQTT 5: the broker said another client took the session over.
    TakenOver,
    /// The broker closed it (DISCONNECT, or the socket) before it was stable.
    ClosedEarly,
    /// Anything else (a keep-alive timeout, a store problem, ...).
    Other,
}

impl Ending {
    fn of(error: &UplinkError, stable: bool) -> Ending {
        match error {
            UplinkError::TakenOver => Ending::TakenOver,
            _ if stable => Ending::Stable,
            _ if closed_by_broker(error) => Ending::ClosedEarly,
            _ => Ending::Other,
        }
    }
}

/// Whether the broker ended the connection on purpose (a DISCONNECT, or
/// closing the socket), as opposed to a network fault or our own error.
fn closed_by_broker(error: &UplinkError) -> bool {
    match error {
        UplinkError::Disconnected | UplinkError::DisconnectedBecause(_) => true,
        UplinkError::MqttLink(e) => e.closed_by_peer(),
        _ => false,
    }
}

/// Connections closed early, in a row, before the gateway suspects that
/// another client uses its client id.
const EARLY_CLOSES: u32 = 3;

/// Notices another client using our client id (a cloned SD card): the
/// broker then closes each connection soon after accepting it, or says
/// "session taken over" (MQTT 5). Says so once per episode.
#[derive(Debug, Default)]
struct CloneWatch {
    early_closes: u32,
    suspected: bool,
}

impl CloneWatch {
    /// Returns the message to log (and show on `P/status`) when the
    /// suspicion is new.
    fn ended(&mut self, ending: Ending, client_id: &str) -> Option<String> {
        let why = match ending {
            Ending::Stable | Ending::Other => {
                self.early_closes = 0;
                if ending == Ending::Stable {
                    self.suspected = false;
                }
                return None;
            }
            Ending::TakenOver => {
                "the broker says another connection took over the session".to_owned()
            }
            Ending::ClosedEarly => {
                self.early_closes += 1;
                if self.early_closes < EARLY_CLOSES {
                    return None;
                }
                format!(
                    "the broker closed {} connections in a row soon after accepting them",
                    self.early_closes
                )
            }
        };
        if self.suspected {
            return None;
        }
        self.suspected = true;
        Some(format!(
            "{why}: another client probably uses the same client id `{client_id}` \
             (a cloned SD card?); give each gateway its own mqtt.client_id \
             (e.g. \"{{machine_id}}\") or gateway.id"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_closes_in_a_row_name_a_duplicate_client_id_once() {
        let mut w = CloneWatch::default();
        assert_eq!(w.ended(Ending::ClosedEarly, "gw"), None);
        assert_eq!(w.ended(Ending::ClosedEarly, "gw"), None);
        let why = w.ended(Ending::ClosedEarly, "gw").unwrap_or_default();
        assert!(why.contains("same client id `gw`"), "{why}");
        assert_eq!(w.ended(Ending::ClosedEarly, "gw"), None, "said once");
        assert_eq!(w.ended(Ending::TakenOver, "gw"), None, "said once");
        // A stable connection ends the episode; a takeover is said at once.
        assert_eq!(w.ended(Ending::Stable, "gw"), None);
        let why = w.ended(Ending::TakenOver, "gw").unwrap_or_default();
        assert!(why.contains("took over the session"), "{why}");
    }

    #[test]
    fn other_endings_break_the_run() {
        let mut w = CloneWatch::default();
        w.ended(Ending::ClosedEarly, "gw");
        w.ended(Ending::ClosedEarly, "gw");
        assert_eq!(w.ended(Ending::Other, "gw"), None);
        assert_eq!(w.ended(Ending::ClosedEarly, "gw"), None);
        assert_eq!(w.ended(Ending::ClosedEarly, "gw"), None);
        assert!(w.ended(Ending::ClosedEarly, "gw").is_some());
    }

    #[test]
    fn endings_are_classified() {
        assert_eq!(Ending::of(&UplinkError::TakenOver, true), Ending::TakenOver);
        assert_eq!(
            Ending::of(&UplinkError::Disconnected, false),
            Ending::ClosedEarly
        );
        assert_eq!(Ending::of(&UplinkError::Disconnected, true), Ending::Stable);
        assert_eq!(
            Ending::of(&UplinkError::Silent(Duration::from_secs(9)), false),
            Ending::Other
        );
    }
}
