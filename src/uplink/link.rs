//! One MQTT connection through rumqttc, in MQTT 3.1.1 or 5. The rest of the
//! uplink sees the same [`Event`]s whichever protocol is spoken.
//!
//! The rumqttc event loop runs on a task of its own and forwards its events
//! through a channel, so that nothing ever cancels `poll()` halfway (an ack
//! it was writing could be lost).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as v5b;
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::mpsc;

use crate::config::{BrokerUrl, Protocol};
use crate::reading::Qos;

/// Everything one connection attempt needs.
pub struct Options<'a> {
    pub broker: &'a BrokerUrl,
    pub protocol: Protocol,
    pub client_id: &'a str,
    pub keep_alive: Duration,
    /// Packet ids rumqttc may have in flight, and where its packet id
    /// counter wraps (see `inflight.rs`).
    pub inflight: u16,
    /// Requests the client channel holds.
    pub capacity: usize,
    /// The last will at QoS 1, if any.
    pub will: Option<Will>,
    /// Whether the broker keeps the session (and what it queued for us)
    /// after this connection ends.
    pub session: SessionKind,
    pub credentials: Option<(String, String)>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A last will, at QoS 1: the retained `P/status` offline message, or a
/// Sparkplug NDEATH (not retained).
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// What the broker does with the session when the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// Forgotten (MQTT 3.1.1 `clean_session`, MQTT 5 `clean_start` and no
    /// expiry): nothing survives the connection.
    Clean,
    /// Kept, with the subscriptions and the QoS 1 messages that arrive
    /// meanwhile (MQTT 3.1.1 `clean_session=false`; MQTT 5 `clean_start=false`
    /// and this session expiry, in seconds).
    Kept { expiry_s: u32 },
}

/// A message from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub topic: String,
    pub payload: Vec<u8>,
    /// MQTT 5: where the sender wants the answer, and what to send with it.
    pub response_topic: Option<String>,
    pub correlation: Option<Vec<u8>>,
    ack: Ack,
}

impl Incoming {
    /// The message's packet id (0 at QoS 0, where there is none) and
    /// whether the broker marked it as a redelivery (DUP).
    pub fn delivery(&self) -> (u16, bool) {
        let (pkid, dup) = match &self.ack {
            Ack::V4(p) => (p.pkid, p.dup),
            Ack::V5(p) => (p.pkid, p.dup),
        };
        // MQTT 3.1.1 §3.3.1.1: DUP is 0 on every QoS 0 message.
        (pkid, dup && pkid != 0)
    }
}

/// What rumqttc needs to acknowledge a message: its packet id and QoS
/// (topic and payload are taken out).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ack {
    V4(rumqttc::Publish),
    V5(v5b::Publish),
}

/// A broker's refusal of one message (MQTT 5 reason code >= 0x80).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerRefusal {
    pub code: u8,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// CONNACK; MQTT 5: with the broker's receive maximum and the largest
    /// packet it takes, if it said.
    Connected {
        receive_max: Option<u16>,
        max_packet_size: Option<u32>,
        /// The broker still had our session (only with [`SessionKind::Kept`]).
        session_present: bool,
    },
    /// `Outgoing::Publish(pkid)`: a request is on the wire.
    Published(u16),
    /// `Outgoing::AwaitAck(pkid)`: a request waits for a busy packet id.
    AwaitAck(u16),
    PubAck(u16, Option<BrokerRefusal>),
    PubRec(u16, Option<BrokerRefusal>),
    PubComp(u16),
    /// SUBACK, and whether the broker refused any of its filters.
    SubAck(u16, bool),
    /// Our DISCONNECT is on the wire.
    Disconnecting,
    /// The broker closed the session, with its MQTT 5 reason code.
    Disconnected(Option<u8>),
    /// A message on a topic we subscribed to; acknowledge it with
    /// [`Client::ack`] once it is safe.
    Message(Box<Incoming>),
    /// Any other packet from the broker (a PINGRESP, say): the link lives.
    Incoming,
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    V4(#[source] Box<rumqttc::ConnectionError>),
    #[error("{0}")]
    V5(#[source] Box<rumqttc::v5::ConnectionError>),
    #[error("cannot hand a message to the MQTT client: {0}")]
    Client(String),
}

impl LinkError {
    /// A cause an operator can act on.
    pub fn describe(&self) -> String {
        if let Some(tls) = super::tls::describe(self) {
            return tls;
        }
        match self {
            LinkError::V4(e) => match e.as_ref() {
                rumqttc::ConnectionError::ConnectionRefused(code) => refused(&format!("{code:?}")),
                rumqttc::ConnectionError::MqttState(rumqttc::StateError::AwaitPingResp) => {
                    UNANSWERED_PING.into()
                }
                other => other.to_string(),
            },
            LinkError::V5(e) => match e.as_ref() {
                rumqttc::v5::ConnectionError::ConnectionRefused(code) => {
                    refused(&format!("{code:?}"))
                }
                rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::AwaitPingResp) => {
                    UNANSWERED_PING.into()
                }
                other => other.to_string(),
            },
            LinkError::Client(e) => e.clone(),
        }
    }

    /// Whether the broker (or something on the way) closed the connection,
    /// as opposed to a timeout, a refusal or a TLS problem.
    pub fn closed_by_peer(&self) -> bool {
        use std::io::ErrorKind as K;
        let io = |e: &std::io::Error| {
            matches!(
                e.kind(),
                K::ConnectionAborted | K::ConnectionReset | K::UnexpectedEof | K::BrokenPipe
            )
        };
        match self {
            LinkError::V4(e) => match e.as_ref() {
                rumqttc::ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted) => true,
                rumqttc::ConnectionError::MqttState(rumqttc::StateError::Io(e)) => io(e),
                // A read that failed half-way through a packet.
                rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                    rumqttc::mqttbytes::Error::Io(e),
                )) => io(e),
                rumqttc::ConnectionError::Io(e) => io(e),
                _ => false,
            },
            LinkError::V5(e) => match e.as_ref() {
                rumqttc::v5::ConnectionError::MqttState(
                    rumqttc::v5::StateError::ConnectionAborted,
                ) => true,
                rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::Io(e)) => io(e),
                rumqttc::v5::ConnectionError::MqttState(
                    rumqttc::v5::StateError::Deserialization(rumqttc::v5::mqttbytes::Error::Io(e)),
                ) => io(e),
                rumqttc::v5::ConnectionError::Io(e) => io(e),
                _ => false,
            },
            LinkError::Client(_) => false,
        }
    }
}

/// MQTT 5 DISCONNECT reason: the session was taken over by another
/// connection with the same client id.
pub const SESSION_TAKEN_OVER: u8 = 0x8E;

const UNANSWERED_PING: &str = "no answer to the keep-alive ping: the link is dead";

fn refused(code: &str) -> String {
    let hint = match code {
        "BadUserNamePassword" | "BadUserNameOrPassword" => "bad user name or password",
        "NotAuthorized" => "not authorized",
        "ServiceUnavailable" | "ServerUnavailable" | "ServerBusy" => "the broker is unavailable",
        "BadClientId" | "ClientIdentifierNotValid" | "RefusedIdentifierRejected" => {
            "client id rejected"
        }
        _ => "",
    };
    if hint.is_empty() {
        format!("the broker refused the connection ({code})")
    } else {
        format!("the broker refused the connection: {hint} ({code})")
    }
}

pub enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    pub fn try_publish(
        &self,
        topic: String,
        qos: Qos,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), LinkError> {
        let failed = |e: &dyn std::fmt::Display| LinkError::Client(e.to_string());
        match self {
            Client::V4(c) => c
                .try_publish(topic, v4_qos(qos), retain, payload)
                .map_err(|e| failed(&e)),
            Client::V5(c) => c
                .try_publish(topic, v5_qos(qos), retain, payload)
                .map_err(|e| failed(&e)),
        }
    }

    /// Publishes with MQTT 5 correlation data (dropped on 3.1.1, which has none).
    pub fn try_publish_correlated(
        &self,
        topic: String,
        qos: Qos,
        payload: Vec<u8>,
        correlation: Vec<u8>,
    ) -> Result<(), LinkError> {
        let failed = |e: &dyn std::fmt::Display| LinkError::Client(e.to_string());
        match self {
            Client::V4(c) => c
                .try_publish(topic, v4_qos(qos), false, payload)
                .map_err(|e| failed(&e)),
            Client::V5(c) => {
                let properties = v5b::PublishProperties {
                    correlation_data: Some(correlation.into()),
                    ..Default::default()
                };
                c.try_publish_with_properties(topic, v5_qos(qos), false, payload, properties)
                    .map_err(|e| failed(&e))
            }
        }
    }

    /// Acknowledges a message from the broker (we ack by hand, after the
    /// message is safe). Waits for room in the client's request queue: a
    /// flood of incoming messages makes as many acks, more than the queue
    /// sized for our publishes holds, and a full queue is no broken link.
    pub async fn ack(&self, message: &Incoming) -> Result<(), LinkError> {
        let failed = |e: &dyn std::fmt::Display| LinkError::Client(e.to_string());
        match (self, &message.ack) {
            (Client::V4(c), Ack::V4(p)) => c.ack(p).await.map_err(|e| failed(&e)),
            (Client::V5(c), Ack::V5(p)) => c.ack(p).await.map_err(|e| failed(&e)),
            _ => Err(LinkError::Client("an ack for the other protocol".into())),
        }
    }

    /// Queues the ack of `message` without waiting; false when rumqttc's
    /// request queue has no room now (or the connection is gone).
    pub fn try_ack(&self, message: &Incoming) -> bool {
        match (self, &message.ack) {
            (Client::V4(c), Ack::V4(p)) => c.try_ack(p).is_ok(),
            (Client::V5(c), Ack::V5(p)) => c.try_ack(p).is_ok(),
            _ => false,
        }
    }

    pub fn try_subscribe(&self, topic: String, qos: Qos) -> Result<(), LinkError> {
        let failed = |e: &dyn std::fmt::Display| LinkError::Client(e.to_string());
        match self {
            Client::V4(c) => c.try_subscribe(topic, v4_qos(qos)).map_err(|e| failed(&e)),
            Client::V5(c) => c.try_subscribe(topic, v5_qos(qos)).map_err(|e| failed(&e)),
        }
    }

    pub fn try_disconnect(&self) -> Result<(), LinkError> {
        let failed = |e: &dyn std::fmt::Display| LinkError::Client(e.to_string());
        match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| failed(&e)),
            Client::V5(c) => c.try_disconnect().map_err(|e| failed(&e)),
        }
    }
}

/// Publishes already queued for rumqttc go out in one write with the one
/// that woke it, up to this many: a write per wake-up, not per message, is
/// most of the CPU a reading costs (see `vendor/README.md`).
const REQUEST_BATCH: usize = 64;

/// A connection being made: its client, its events, and the task polling
/// rumqttc (aborted when this is dropped).
pub struct MqttLink {
    pub client: Client,
    pub events: mpsc::Receiver<Result<Event, LinkError>>,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for MqttLink {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl MqttLink {
    /// Starts connecting; the first event is `Connected` or an error.
    pub fn open(o: Options<'_>) -> MqttLink {
        let (tx, events) = mpsc::channel(1_024);
        let transport = match &o.tls {
            Some(config) => Transport::tls_with_config(TlsConfiguration::Rustls(config.clone())),
            None => Transport::tcp(),
        };
        let (client, poller) = match o.protocol {
            Protocol::V311 => {
                let mut options =
                    rumqttc::MqttOptions::new(o.client_id, &o.broker.host, o.broker.port);
                options
                    .set_clean_session(o.session == SessionKind::Clean)
                    .set_manual_acks(true)
                    .set_keep_alive(o.keep_alive)
                    .set_inflight(o.inflight)
                    .set_max_request_batch(REQUEST_BATCH)
                    .set_max_packet_size(1 << 20, 1 << 20)
                    .set_transport(transport);
                if let Some(will) = &o.will {
                    options.set_last_will(rumqttc::LastWill::new(
                        &will.topic,
                        will.payload.clone(),
                        rumqttc::QoS::AtLeastOnce,
                        will.retain,
                    ));
                }
                if let Some((user, password)) = &o.credentials {
                    options.set_credentials(user, password);
                }
                let (client, eventloop) = rumqttc::AsyncClient::new(options, o.capacity);
                (Client::V4(client), tokio::spawn(poll_v4(eventloop, tx)))
            }
            Protocol::V5 => {
                let mut options =
                    rumqttc::v5::MqttOptions::new(o.client_id, &o.broker.host, o.broker.port);
                options
                    .set_clean_start(o.session == SessionKind::Clean)
                    .set_manual_acks(true)
                    .set_keep_alive(match keep_alive(o.protocol, o.keep_alive) {
                        // Off: the longest period MQTT can say (about 18 h).
                        k if k.is_zero() => Duration::from_secs(u16::MAX.into()),
                        k => k,
                    })
                    .set_outgoing_inflight_upper_limit(o.inflight)
                    .set_max_request_batch(REQUEST_BATCH)
                    .set_max_packet_size(Some(1 << 20))
                    .set_transport(transport);
                if let SessionKind::Kept { expiry_s } = o.session {
                    options.set_session_expiry_interval(Some(expiry_s));
                }
                if let Some(will) = &o.will {
                    options.set_last_will(v5b::LastWill::new(
                        &will.topic,
                        will.payload.clone(),
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        will.retain,
                        None,
                    ));
                }
                if let Some((user, password)) = &o.credentials {
                    options.set_credentials(user, password);
                }
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, o.capacity);
                (Client::V5(client), tokio::spawn(poll_v5(eventloop, tx)))
            }
        };
        MqttLink {
            client,
            events,
            poller,
        }
    }
}

/// The keep-alive period rumqttc keeps with `configured`: it refuses (with
/// a panic) an MQTT 5 period under 5 s, so one is raised to 5 s there. The
/// silence watchdog must count with the period that pings actually follow.
pub fn keep_alive(protocol: Protocol, configured: Duration) -> Duration {
    const V5_MIN: Duration = Duration::from_secs(5);
    match protocol {
        Protocol::V5 if !configured.is_zero() => configured.max(V5_MIN),
        _ => configured,
    }
}

/// Any packet from the broker answers the keep-alive ping as well as a
/// PINGRESP would: the link lives. rumqttc fails the connection when its
/// next ping is due and the last PINGRESP has not come, even while acks
/// keep arriving; on a slow link the PINGREQ (and so its answer) waits
/// behind our queued publishes for longer than a period. Pings still go
/// out every period (the broker needs to hear from us); only a period
/// with nothing at all from the broker fails the link here, and the
/// session's own watchdog (1.5 periods of silence) usually comes first.
fn heard(await_pingresp: &mut bool) {
    *await_pingresp = false;
}

async fn poll_v4(mut eventloop: rumqttc::EventLoop, tx: mpsc::Sender<Result<Event, LinkError>>) {
    use rumqttc::{Event as E, Incoming as I, Outgoing as O};
    loop {
        let polled = eventloop.poll().await;
        if let Ok(E::Incoming(_)) = polled {
            heard(&mut eventloop.state.await_pingresp);
        }
        let event = match polled {
            Ok(E::Incoming(I::ConnAck(c))) => Ok(Event::Connected {
                receive_max: None,
                max_packet_size: None,
                session_present: c.session_present,
            }),
            Ok(E::Incoming(I::PubAck(a))) => Ok(Event::PubAck(a.pkid, None)),
            Ok(E::Incoming(I::PubRec(r))) => Ok(Event::PubRec(r.pkid, None)),
            Ok(E::Incoming(I::PubComp(c))) => Ok(Event::PubComp(c.pkid)),
            Ok(E::Incoming(I::SubAck(s))) => {
                let refused = s
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                Ok(Event::SubAck(s.pkid, refused))
            }
            Ok(E::Incoming(I::Disconnect)) => Ok(Event::Disconnected(None)),
            Ok(E::Incoming(I::Publish(mut p))) => Ok(Event::Message(Box::new(Incoming {
                topic: std::mem::take(&mut p.topic),
                // Copied out, and the original dropped: it shares the read
                // buffer, which each message still queued would keep alive.
                payload: std::mem::take(&mut p.payload).to_vec(),
                response_topic: None,
                correlation: None,
                ack: Ack::V4(p),
            }))),
            Ok(E::Incoming(_)) => Ok(Event::Incoming),
            Ok(E::Outgoing(O::Publish(pkid))) => Ok(Event::Published(pkid)),
            Ok(E::Outgoing(O::AwaitAck(pkid))) => Ok(Event::AwaitAck(pkid)),
            Ok(E::Outgoing(O::Disconnect)) => Ok(Event::Disconnecting),
            Ok(E::Outgoing(_)) => Ok(Event::Other),
            Err(e) => Err(LinkError::V4(Box::new(e))),
        };
        let failed = event.is_err();
        if tx.send(event).await.is_err() || failed {
            return;
        }
    }
}

async fn poll_v5(
    mut eventloop: rumqttc::v5::EventLoop,
    tx: mpsc::Sender<Result<Event, LinkError>>,
) {
    use rumqttc::Outgoing as O;
    use rumqttc::v5::Event as E;
    use v5b::Packet as P;
    loop {
        let polled = eventloop.poll().await;
        if let Ok(E::Incoming(_)) = polled {
            heard(&mut eventloop.state.await_pingresp);
        }
        let event = match polled {
            Ok(E::Incoming(P::ConnAck(c))) => Ok(Event::Connected {
                receive_max: c.properties.as_ref().and_then(|p| p.receive_max),
                max_packet_size: c.properties.as_ref().and_then(|p| p.max_packet_size),
                session_present: c.session_present,
            }),
            Ok(E::Incoming(P::PubAck(a))) => {
                let reason = a.properties.and_then(|p| p.reason_string);
                Ok(Event::PubAck(a.pkid, puback_refusal(&a.reason, reason)))
            }
            Ok(E::Incoming(P::PubRec(r))) => {
                let reason = r.properties.and_then(|p| p.reason_string);
                Ok(Event::PubRec(r.pkid, pubrec_refusal(&r.reason, reason)))
            }
            Ok(E::Incoming(P::PubComp(c))) => Ok(Event::PubComp(c.pkid)),
            Ok(E::Incoming(P::SubAck(s))) => {
                let refused = s
                    .return_codes
                    .iter()
                    .any(|c| !matches!(c, v5b::SubscribeReasonCode::Success(_)));
                Ok(Event::SubAck(s.pkid, refused))
            }
            Ok(E::Incoming(P::Disconnect(d))) => Ok(Event::Disconnected(Some(d.reason_code as u8))),
            Ok(E::Incoming(P::Publish(mut p))) => {
                let properties = p.properties.take().unwrap_or_default();
                Ok(Event::Message(Box::new(Incoming {
                    topic: String::from_utf8_lossy(&std::mem::take(&mut p.topic)).into_owned(),
                    // As for MQTT 3.1.1: nothing of the read buffer is kept.
                    payload: std::mem::take(&mut p.payload).to_vec(),
                    response_topic: properties.response_topic,
                    correlation: properties.correlation_data.map(|c| c.to_vec()),
                    ack: Ack::V5(p),
                })))
            }
            Ok(E::Incoming(_)) => Ok(Event::Incoming),
            Ok(E::Outgoing(O::Publish(pkid))) => Ok(Event::Published(pkid)),
            Ok(E::Outgoing(O::AwaitAck(pkid))) => Ok(Event::AwaitAck(pkid)),
            Ok(E::Outgoing(O::Disconnect)) => Ok(Event::Disconnecting),
            Ok(E::Outgoing(_)) => Ok(Event::Other),
            Err(e) => Err(LinkError::V5(Box::new(e))),
        };
        let failed = event.is_err();
        if tx.send(event).await.is_err() || failed {
            return;
        }
    }
}

/// The refusal in an MQTT 5 PUBACK or PUBREC reason, if it is one (0x10,
/// no matching subscribers, is a success). Both reason enums have the same
/// variants, so one macro maps both.
macro_rules! refusal {
    ($fn:ident, $reason:ty) => {
        fn $fn(reason: &$reason, text: Option<String>) -> Option<BrokerRefusal> {
            type R = $reason;
            let code = match reason {
                R::Success | R::NoMatchingSubscribers => return None,
                R::UnspecifiedError => 0x80,
                R::ImplementationSpecificError => 0x83,
                R::NotAuthorized => 0x87,
                R::TopicNameInvalid => 0x90,
                R::PacketIdentifierInUse => 0x91,
                R::QuotaExceeded => 0x97,
                R::PayloadFormatInvalid => 0x99,
            };
            Some(BrokerRefusal {
                code,
                reason: text.unwrap_or_else(|| format!("{reason:?}")),
            })
        }
    };
}

refusal!(puback_refusal, v5b::PubAckReason);
refusal!(pubrec_refusal, v5b::PubRecReason);

fn v4_qos(q: Qos) -> rumqttc::QoS {
    match q {
        Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
        Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        Qos::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

fn v5_qos(q: Qos) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS;
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
        Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt5_keep_alive_is_never_below_what_rumqttc_accepts() {
        let s = Duration::from_secs;
        assert_eq!(keep_alive(Protocol::V5, s(2)), s(5));
        assert_eq!(keep_alive(Protocol::V5, s(30)), s(30));
        assert_eq!(keep_alive(Protocol::V5, Duration::ZERO), Duration::ZERO);
        assert_eq!(keep_alive(Protocol::V311, s(2)), s(2));
        assert_eq!(keep_alive(Protocol::V311, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn any_packet_answers_the_ping() {
        let mut awaiting = true;
        heard(&mut awaiting);
        assert!(!awaiting);
    }
}
