//! One MQTT session: what to send next, what the broker has acknowledged,
//! and whether the link still lives.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::drain::{Candidate, Drain};
use super::homeassistant::Discovery;
use super::inflight::{Inflight, Mismatch, Tracked};
use super::link::{self, BrokerRefusal, Event, MqttLink, SessionKind};
use super::pace::Pace;
use super::poison::{self, PoisonWatch};
use super::sparkplug::{self, Node};
use super::throttle::Throttle;
use super::{Channels, LinkLog, Settings, UplinkError, credentials, payload, tls};
use crate::config::{BatchConfig, BrokerUrl, Protocol};
use crate::health::Health;
use crate::reading::Qos;
use crate::store::{DeviceState, Row, RowKey, RowKind, Store, StoreError};

/// A link is declared dead after this many keep-alive periods of silence.
/// rumqttc pings once per period, so a live broker is never silent for
/// much more than one.
const SILENCE_FACTOR: f64 = 1.5;

/// Rows fetched per message of room, at most, when devices batch.
const FETCH_CAP: usize = 5_000;

/// Status messages in flight beyond a full window of rows, at most: the
/// client's channel has room for the window and 8 more (see `open`), and
/// a connection may carry one availability message per device.
const CONTROL_ROOM: usize = 4;

/// Windows' worth of messages fetched from the store at once; also how
/// many fresh readings wait in the ready queue at most.
const FETCH_AHEAD: usize = 4;

/// Fresh readings the store hands over ahead of their commit, waiting to be
/// taken; when the channel is full the store stops, and they are fetched.
const LIVE_CAPACITY: usize = 1_024;

/// One publish waiting for room in the window (or for the throttle).
enum Pending {
    Single(Row),
    Batch(Vec<Row>),
}

/// A message of the gateway's own, waiting for a free packet id.
enum Control {
    /// A retained status message, at QoS 1.
    Status(String, String),
    /// A Sparkplug birth or death, at the node's QoS, not retained.
    Sparkplug(sparkplug::Message),
    /// A Sparkplug DDATA and the rows it carries: it waits behind the
    /// births queued before it, so that `seq` goes out in order.
    Data(sparkplug::Message, Vec<RowKey>, Qos),
}

impl Pending {
    /// Its (first) row and its QoS.
    fn head(&self) -> (Option<&Row>, Qos) {
        match self {
            Pending::Single(row) => (Some(row), row.qos),
            Pending::Batch(rows) => (
                rows.first(),
                rows.first().map_or(Qos::AtMostOnce, |r| r.qos),
            ),
        }
    }
}

/// A batch still filling.
struct OpenBatch {
    rows: Vec<Row>,
    bytes: usize,
    due: Instant,
}

pub(super) struct Session<'a> {
    settings: &'a Settings,
    store: &'a Store,
    health: &'a Health,
    config: Channels,
    /// Suspected rows and learned limits, kept across connections.
    poison: &'a mut PoisonWatch,
    /// MQTT 5: the largest packet the broker said it takes.
    broker_max: Option<u32>,
    /// Wire size of each row publish awaiting its ack, and when it was
    /// handed to the client, by its first row.
    sizes: HashMap<RowKey, (usize, Instant)>,
    /// The row publishes among those that answer a command, so that they
    /// are not counted as readings.
    answers: HashSet<RowKey>,
    /// The row publishes that say a device's availability, neither
    /// readings nor answers.
    availability: HashSet<RowKey>,
    link: Option<MqttLink>,
    flight: Inflight,
    /// Per priority, the highest `seq` fetched.
    cursors: [i64; 3],
    connected: bool,
    /// The last fetch found no more rows; wait for a commit.
    caught_up: bool,
    /// Fetched, ready to publish, in fetch order.
    ready: VecDeque<Pending>,
    /// Fresh readings from the store, before their commit, once caught up.
    live: Option<mpsc::Receiver<Row>>,
    /// Status messages, sent before any reading.
    controls: VecDeque<Control>,
    open_batches: BTreeMap<String, OpenBatch>,
    throttle: Option<Throttle>,
    /// Paces the backlog (`mqtt.drain_rate`).
    drain: Drain,
    /// Delivered rows not yet reported to the store.
    delivered: Vec<RowKey>,
    /// Refused rows not yet reported, with the broker's reason.
    refused: Vec<(Vec<RowKey>, String)>,
    last_heard: Instant,
    /// Packet ids rumqttc keeps after a refused PUBREC (MQTT 5).
    leaked: usize,
    /// When the broker accepted this connection.
    connected_at: Option<Instant>,
    /// Whether the broker acknowledged anything on this connection.
    acked: bool,
    /// `mqtt.format: sparkplug`: the edge node, and this connection's NDEATH.
    node: Option<&'a mut Node>,
    death: Option<sparkplug::Message>,
    /// Home Assistant discovery, with a `homeassistant:` section.
    discovery: Option<&'a mut Discovery>,
    /// Discovery passes asked for by Home Assistant ("online").
    discovery_pace: Pace,
    /// Births asked for by Sparkplug hosts (NCMD rebirth).
    rebirth_pace: Pace,
}

/// How many asks a watched counter got since `seen`, which it updates.
fn asked(counter: &mut tokio::sync::watch::Receiver<u64>, seen: &mut u64) -> u64 {
    let now = *counter.borrow_and_update();
    let asks = now.wrapping_sub(*seen);
    *seen = now;
    asks
}

/// At most one discovery pass for Home Assistant's "online" messages per
/// period, and one set of births for NCMD rebirths (`pace.rs`).
const DISCOVERY_EVERY: Duration = Duration::from_secs(2);
const REBIRTH_EVERY: Duration = Duration::from_secs(1);

impl<'a> Session<'a> {
    pub(super) fn new(
        settings: &'a Settings,
        store: &'a Store,
        health: &'a Health,
        config: Channels,
        poison: &'a mut PoisonWatch,
        node: Option<&'a mut Node>,
        discovery: Option<&'a mut Discovery>,
    ) -> Self {
        Session {
            settings,
            store,
            health,
            config,
            poison,
            broker_max: None,
            sizes: HashMap::new(),
            answers: HashSet::new(),
            availability: HashSet::new(),
            link: None,
            flight: Inflight::new(packet_ids(settings.max_inflight)),
            cursors: [0; 3],
            connected: false,
            caught_up: false,
            ready: VecDeque::new(),
            live: None,
            controls: VecDeque::new(),
            open_batches: BTreeMap::new(),
            throttle: Throttle::new(settings.max_messages_per_second, Instant::now().into_std()),
            drain: Drain::new(settings.drain_rate, Instant::now().into_std()),
            delivered: Vec::new(),
            refused: Vec::new(),
            last_heard: Instant::now(),
            leaked: 0,
            connected_at: None,
            acked: false,
            node,
            death: None,
            discovery,
            discovery_pace: Pace::new(DISCOVERY_EVERY),
            rebirth_pace: Pace::new(REBIRTH_EVERY),
        }
    }

    /// Whether the broker accepted this connection at some point.
    pub(super) fn was_connected(&self) -> bool {
        self.connected
    }

    /// How long the broker has had this connection, if it accepted it.
    pub(super) fn up_for(&self) -> Option<Duration> {
        self.connected_at.map(|at| at.elapsed())
    }

    /// Whether the broker acknowledged anything on this connection.
    pub(super) fn acked(&self) -> bool {
        self.acked
    }

    /// Runs the session until shutdown (`Ok`) or until the link fails.
    pub(super) async fn run(
        &mut self,
        broker: &BrokerUrl,
        shutdown: &CancellationToken,
        log: &mut LinkLog,
    ) -> Result<(), UplinkError> {
        self.open(broker).await?;
        let mut committed = self.store.committed();
        let period = self.settings.status_interval;
        let mut status_tick = tokio::time::interval_at(Instant::now() + period, period);
        let keep_alive = link::keep_alive(self.settings.protocol, self.settings.keep_alive);
        let check = (keep_alive / 4).max(Duration::from_millis(100));
        let mut liveness = tokio::time::interval(check);
        let mut config_state = self.config.state.clone();
        // Sparkplug: a new configuration or a host's NCMD means births again.
        let mut model = self.config.model.clone();
        let mut rebirth = self.config.rebirth.clone();
        let mut host = self.config.host.clone();
        model.mark_unchanged();
        let mut rebirths_seen = *rebirth.borrow_and_update();
        host.mark_unchanged();
        let sparkplug = self.node.is_some();
        // Home Assistant: a new configuration, or Home Assistant (re)started.
        let mut ha_model = self.config.ha_model.clone();
        let mut ha_online = self.config.ha_online.clone();
        ha_model.mark_unchanged();
        let mut onlines_seen = *ha_online.borrow_and_update();
        let discovery = self.discovery.is_some();
        loop {
            self.refill().await?;
            self.owed_passes().await?;
            let wake = self.next_wake();
            let room = self.connected && self.ready.len() < self.ahead();
            let Some(link) = self.link.as_mut() else {
                return Err(UplinkError::Disconnected);
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return self.close().await,
                event = link.events.recv() => {
                    let event = event.ok_or(UplinkError::Disconnected)??;
                    if self.handle(event).await? {
                        // The backoff is reset only once this connection
                        // proves stable (see `Backoff::connection_ended`).
                        if log.up(broker) {
                            self.health.reconnects.fetch_add(1, Relaxed);
                        }
                    }
                    // Take whatever else is ready before telling the store.
                    while let Some(Ok(event)) = self.link.as_mut().map(|l| l.events.try_recv()) {
                        self.handle(event?).await?;
                    }
                    self.report().await?;
                }
                _ = status_tick.tick(), if self.connected => self.publish_status().await?,
                changed = config_state.changed(), if self.connected => {
                    if changed.is_ok() {
                        // The status names the running configuration too.
                        self.publish_status().await?;
                        self.publish_config_state()?;
                    }
                }
                Ok(()) = model.changed(), if self.connected && sparkplug => {
                    self.publish_births().await?;
                }
                Ok(()) = rebirth.changed(), if self.connected && sparkplug => {
                    let asks = asked(&mut rebirth, &mut rebirths_seen);
                    let now = self.rebirth_pace.ask(Instant::now());
                    if now {
                        self.publish_births().await?;
                    }
                    let later = asks.saturating_sub(u64::from(now));
                    self.health.rebirths_coalesced.fetch_add(later, Relaxed);
                }
                Ok(()) = ha_model.changed(), if self.connected && discovery => {
                    self.publish_discovery()?;
                }
                Ok(()) = ha_online.changed(), if self.connected && discovery => {
                    let asks = asked(&mut ha_online, &mut onlines_seen);
                    let now = self.discovery_pace.ask(Instant::now());
                    if now {
                        self.publish_discovery()?;
                    }
                    let later = asks.saturating_sub(u64::from(now));
                    self.health.discovery_coalesced.fetch_add(later, Relaxed);
                }
                Ok(()) = host.changed(), if self.connected && sparkplug => {
                    let alive = self.node.as_ref().is_some_and(|n| n.alive());
                    match (self.host_online(), alive) {
                        (true, false) => self.publish_births().await?,
                        (false, true) => return self.die().await,
                        _ => {}
                    }
                }
                _ = liveness.tick(), if self.connected && !keep_alive.is_zero() => {
                    let silent = self.last_heard.elapsed();
                    if silent.as_secs_f64() > keep_alive.as_secs_f64() * SILENCE_FACTOR {
                        return Err(UplinkError::Silent(silent));
                    }
                }
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
                row = next_live(&mut self.live), if room => {
                    self.take_live(row);
                }
                // While fresh readings arrive on `live`, commits bring nothing new.
                changed = committed.changed(), if self.connected && self.caught_up && self.live.is_none() => {
                    if changed.is_err() {
                        return Err(StoreError::Closed.into());
                    }
                    self.caught_up = false;
                }
            }
        }
    }

    /// Credentials and TLS are read again for every attempt, so that a
    /// rotated token or certificate is picked up without a restart.
    async fn open(&mut self, broker: &BrokerUrl) -> Result<(), UplinkError> {
        let credentials = credentials::resolve(&self.settings.credentials).await?;
        let tls = match broker.tls {
            true => Some(tls::client_config(self.settings.tls.as_ref())?),
            false => None,
        };
        let window = self.settings.max_inflight;
        // Sparkplug: the NDEATH of this CONNECT's bdSeq, counted on disk
        // first; `P/status` then has no will of its own.
        let will = match self.node.as_deref_mut() {
            Some(node) => {
                let bd_seq = self.store.next_bd_seq().await?;
                let death = node.will(bd_seq, self.store.clock().now_ms());
                self.death = Some(death.clone());
                link::Will {
                    topic: death.topic,
                    payload: death.payload,
                    retain: false,
                }
            }
            None => link::Will {
                topic: self.settings.topics.status(),
                payload: payload::offline().into_bytes(),
                retain: true,
            },
        };
        self.link = Some(MqttLink::open(link::Options {
            broker,
            protocol: self.settings.protocol,
            client_id: &self.settings.client_id,
            keep_alive: self.settings.keep_alive,
            inflight: packet_ids(window),
            // Room for a full window plus status messages and a disconnect,
            // so `try_publish` never finds the channel full.
            capacity: window + 8,
            will: Some(will),
            // The store is the only truth: whatever rumqttc or the broker
            // held of an earlier connection is sent again from the store.
            session: SessionKind::Clean,
            credentials,
            tls,
        }));
        Ok(())
    }

    fn client(&self) -> Result<&link::Client, UplinkError> {
        self.link
            .as_ref()
            .map(|l| &l.client)
            .ok_or(UplinkError::Disconnected)
    }

    /// Publishes what the window and the throttle allow, and keeps a
    /// window's worth of rows fetched ahead. A slot freed by an ack is
    /// refilled at once, before the store is asked for more: a link that
    /// waits for a whole round of acks lets Nagle's algorithm on the
    /// broker meet our delayed TCP acks, and stalls for 40 ms a round
    /// (3,000 instead of 50,000 messages/s against a default mosquitto).
    async fn refill(&mut self) -> Result<(), UplinkError> {
        if !self.connected {
            return Ok(());
        }
        let window = self.window();
        let now = Instant::now();
        self.close_due_batches(now);
        self.publish_ready(now)?;
        if !self.caught_up && self.ready.len() < window {
            let per_message = self
                .config
                .batches
                .borrow()
                .values()
                .map(|b| b.max_readings.get() as usize)
                .max();
            let limit = (FETCH_AHEAD * window * per_message.unwrap_or(1))
                .min(FETCH_CAP)
                .max(window);
            // A fetch ends the forwarding of the last one: what its channel
            // still held is newer than the cursors, so it comes again.
            let (live, rx) = mpsc::channel(LIVE_CAPACITY);
            let rows = self
                .store
                .fetch_live(self.cursors, limit, Some(live))
                .await?;
            self.caught_up = rows.len() < limit;
            self.live = self.caught_up.then_some(rx);
            for row in rows {
                self.cursors[row.priority as usize] = row.seq;
                self.enqueue(row, now);
            }
            self.publish_ready(now)?;
        }
        Ok(())
    }

    /// Fresh readings from the store: queued like fetched ones. The end of
    /// the channel means the store stopped forwarding: fetch again.
    fn take_live(&mut self, first: Option<Row>) {
        let Some(first) = first else {
            self.live = None;
            self.caught_up = false;
            return;
        };
        let now = Instant::now();
        let mut row = Some(first);
        while let Some(r) = row.take() {
            self.cursors[r.priority as usize] = r.seq;
            self.enqueue(r, now);
            if self.ready.len() < self.ahead() {
                row = self.live.as_mut().and_then(|l| l.try_recv().ok());
            }
        }
    }

    /// Messages waiting in the ready queue at most.
    fn ahead(&self) -> usize {
        FETCH_AHEAD * self.window()
    }

    /// Publishes in flight at most: one while suspects are probed.
    fn window(&self) -> usize {
        if self.poison.probe > 0 {
            1
        } else {
            self.settings.max_inflight
        }
    }

    /// Bytes a packet may have on this connection.
    fn packet_limit(&self) -> usize {
        self.poison
            .limit(self.settings.max_packet_size, self.broker_max)
    }

    /// Sends a row publish, or refuses it unsent when it is too large.
    fn send_rows(
        &mut self,
        topic: String,
        body: Vec<u8>,
        correlation: Option<Vec<u8>>,
        keys: Vec<RowKey>,
        qos: Qos,
        retain: bool,
    ) -> Result<(), UplinkError> {
        let size =
            poison::packet_size(&topic, body.len(), correlation.as_ref().map_or(0, Vec::len));
        let limit = self.packet_limit();
        if size > limit {
            let why = format!("{size} bytes exceed the broker's maximum packet size ({limit})");
            self.refused.push((keys, why));
            return Ok(());
        }
        let client = self.client()?;
        match correlation {
            Some(c) => client.try_publish_correlated(topic, qos, body, c)?,
            None => client.try_publish(topic, qos, retain, body)?,
        }
        if let Some(first) = keys.first() {
            self.sizes.insert(*first, (size, Instant::now()));
        }
        self.flight.requested(Tracked::Rows(keys, qos));
        Ok(())
    }

    /// The broker closed the connection cleanly: count an attempt on the
    /// oldest unacknowledged publish, or probe them one at a time next.
    pub(super) async fn pin_suspects(&mut self) {
        let suspects = self
            .flight
            .unacknowledged()
            .into_iter()
            .map(|keys| {
                let (size, at) = keys
                    .first()
                    .and_then(|k| self.sizes.get(k))
                    .copied()
                    .unwrap_or((0, Instant::now()));
                (keys, size, at.elapsed())
            })
            .collect();
        tracing::debug!(
            "closed by the broker: suspects {suspects:?}, {} requested",
            self.flight.outstanding()
        );
        let max = self.settings.max_attempts;
        for (keys, size) in self.poison.after_close(suspects) {
            // A batch is not blamed on its readings: it is split from now on.
            if keys.len() > 1 {
                self.poison.learned_oversize(size);
                continue;
            }
            let why =
                format!("the broker closed the connection after this publish of {size} bytes");
            match self.store.suspect(keys, why, max).await {
                Ok(true) => {
                    tracing::warn!(
                        "the broker closed the connection {max} times right after the same {size}-byte publish: moved to the dead letters; publishes of {size} bytes or more are not sent from now on"
                    );
                    self.poison.learned_oversize(size);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("could not count a failed attempt: {e}"),
            }
        }
    }

    fn publish_ready(&mut self, now: Instant) -> Result<(), UplinkError> {
        self.send_controls()?;
        // Sparkplug: no data before NBIRTH (the primary host may not be
        // online yet); the rows wait in the store.
        let unborn = self.node.as_ref().is_some_and(|n| !n.alive());
        if !self.controls.is_empty() || unborn {
            return Ok(());
        }
        while self.flight.outstanding() < self.window() && !self.ready.is_empty() {
            if let Some(t) = self.throttle.as_mut()
                && t.take(1, now.into_std()) == 0
            {
                break;
            }
            let candidates = self.ready.iter().map(|m| {
                let (row, qos) = m.head();
                Candidate {
                    seq: row.map_or(i64::MAX, |r| r.seq),
                    device: row.map_or("", |r| r.device.as_str()),
                    can_send: self.flight.can_send(qos),
                }
            });
            let Some(i) = self.drain.pick(candidates, now.into_std()) else {
                if let Some(t) = self.throttle.as_mut() {
                    t.refund();
                }
                break;
            };
            let Some(message) = self.ready.remove(i) else {
                break;
            };
            self.publish(message)?;
        }
        Ok(())
    }

    /// Whether the first ready message may be handed to rumqttc: the
    /// packet id it would get is free (see `inflight.rs`). Messages wait
    /// in order behind it, which keeps each device's readings in order.
    fn front_can_go(&self) -> bool {
        match self.ready.front() {
            None => false,
            Some(m) => self.flight.can_send(m.head().1),
        }
    }

    /// Sends status messages, in order, while packet ids are free.
    fn send_controls(&mut self) -> Result<(), UplinkError> {
        let room = self.settings.max_inflight + CONTROL_ROOM;
        while !self.controls.is_empty()
            && self.flight.can_send(Qos::AtLeastOnce)
            && self.flight.outstanding() < room
        {
            let Some(control) = self.controls.pop_front() else {
                break;
            };
            match control {
                Control::Status(topic, body) => {
                    self.client()?
                        .try_publish(topic, Qos::AtLeastOnce, true, body.into_bytes())?;
                    self.flight.requested(Tracked::Control(Qos::AtLeastOnce));
                }
                Control::Sparkplug(m) => {
                    let qos = self.node.as_ref().map_or(Qos::AtMostOnce, |n| n.qos());
                    self.client()?.try_publish(m.topic, qos, false, m.payload)?;
                    self.flight.requested(Tracked::Control(qos));
                }
                // Too large for the broker, it is refused unsent, which
                // leaves a gap in `seq`: hosts then ask for a rebirth.
                Control::Data(m, keys, qos) => {
                    self.send_rows(m.topic, m.payload, None, keys, qos, false)?;
                }
            }
        }
        Ok(())
    }

    /// Readings as Sparkplug: a DDATA, after the DBIRTH its device needs.
    /// Readings without a value (failed polls) send nothing and are done.
    fn publish_sparkplug(&mut self, rows: Vec<Row>) -> Result<(), UplinkError> {
        let Some(node) = self.node.as_deref_mut() else {
            return Ok(());
        };
        let keys: Vec<RowKey> = rows.iter().map(Row::key).collect();
        let historical = rows.first().is_some_and(|r| self.drain.is_backlog(r.seq));
        let mut messages = node.data(&rows, historical, self.store.clock().now_ms());
        let Some(data) = messages.pop() else {
            self.deliver(keys);
            return Ok(());
        };
        let qos = node.qos();
        self.controls
            .extend(messages.into_iter().map(Control::Sparkplug));
        self.controls.push_back(Control::Data(data, keys, qos));
        self.send_controls()
    }

    /// A device's availability as Sparkplug: DDEATH when it goes offline,
    /// DBIRTH when it comes back (its data would bear it too).
    fn sparkplug_availability(&mut self, device: &str, state: &str) -> Result<(), UplinkError> {
        let Some(node) = self.node.as_deref_mut() else {
            return Ok(());
        };
        let now_ms = self.store.clock().now_ms();
        let message = match state {
            "online" if !node.is_born(device) => Some(node.birth(device, now_ms)),
            "online" => None,
            _ => node.death(device, now_ms),
        };
        if let Some(m) = message {
            self.controls.push_back(Control::Sparkplug(m));
        }
        self.send_controls()
    }

    /// Whether births may go out: there is no primary host, or it said
    /// it is online.
    fn host_online(&self) -> bool {
        let primary = (self.settings.sparkplug.as_ref()).is_some_and(|s| s.primary_host.is_some());
        !primary || *self.config.host.borrow() == Some(true)
    }

    /// The primary host went offline: NDEATH, and a clean disconnect, as
    /// Sparkplug 3.0 says; the next connection waits for it to be online.
    async fn die(&mut self) -> Result<(), UplinkError> {
        if let Some(node) = self.node.as_deref_mut() {
            node.dead();
        }
        if let Some(death) = self.death.clone() {
            self.controls.push_back(Control::Sparkplug(death));
        }
        self.send_controls()?;
        self.client()?.try_disconnect()?;
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Some(link) = self.link.as_mut() {
            match tokio::time::timeout_at(deadline, link.events.recv()).await {
                Ok(Some(Ok(Event::Disconnecting))) | Ok(None) | Err(_) => break,
                Ok(Some(Ok(event))) => {
                    self.handle(event).await?;
                }
                Ok(Some(Err(e))) => return Err(e.into()),
            }
        }
        self.report().await?;
        Err(UplinkError::HostOffline)
    }

    /// Every Home Assistant discovery message, retained: on every
    /// connection (the broker may have lost them), on a new configuration,
    /// and when Home Assistant says it started.
    fn publish_discovery(&mut self) -> Result<(), UplinkError> {
        let Some(discovery) = self.discovery.as_deref_mut() else {
            return Ok(());
        };
        discovery.set_model(self.config.ha_model.borrow().clone());
        for (topic, body) in discovery.all() {
            self.publish_control(topic, body)?;
        }
        self.discovery_pace.done(Instant::now());
        Ok(())
    }

    /// The passes owed to asks that came too soon after the last one.
    async fn owed_passes(&mut self) -> Result<(), UplinkError> {
        if !self.connected {
            return Ok(());
        }
        let now = Instant::now();
        if self.discovery_pace.take_due(now) {
            self.publish_discovery()?;
        }
        if self.rebirth_pace.take_due(now) {
            self.publish_births().await?;
        }
        Ok(())
    }

    /// Home Assistant: a device removed from the configuration is removed
    /// there too; a BLE sensor's new measurement is announced before the
    /// reading that carries it.
    fn discovery_follows(&mut self, row: &Row) -> Result<(), UplinkError> {
        let Some(discovery) = self.discovery.as_deref_mut() else {
            return Ok(());
        };
        let message = match row.kind {
            RowKind::Availability if row.values.is_empty() => Some(discovery.removed(&row.device)),
            RowKind::Availability => None,
            RowKind::Reading if row.topic.is_none() => discovery.learn(&row.device, &row.values),
            RowKind::Reading => None,
        };
        match message {
            Some((topic, body)) => self.publish_control(topic, body),
            None => Ok(()),
        }
    }

    /// NBIRTH and the DBIRTHs, first on every connection.
    async fn publish_births(&mut self) -> Result<(), UplinkError> {
        if self.node.is_none() || !self.host_online() {
            return Ok(());
        }
        let offline = (self.store.availability().await?.into_iter())
            .filter(|(_, state)| *state == DeviceState::Offline)
            .map(|(device, _)| device)
            .collect();
        let rows = self.store.status().await?.rows;
        let now_ms = self.store.clock().now_ms();
        if let Some(node) = self.node.as_deref_mut() {
            node.set_model(self.config.model.borrow().clone());
            let births = node.births(now_ms, crate::VERSION, rows, &offline);
            self.controls
                .extend(births.into_iter().map(Control::Sparkplug));
        }
        self.rebirth_pace.done(Instant::now());
        self.send_controls()
    }

    /// Routes a fetched row: straight to `ready`, or into its device's batch.
    fn enqueue(&mut self, row: Row, now: Instant) {
        let config = match row.kind {
            RowKind::Reading => self.config.batches.borrow().get(&row.device).copied(),
            RowKind::Availability => None,
        };
        let Some(config) = config else {
            self.ready.push_back(Pending::Single(row));
            return;
        };
        let size = payload::telemetry(&row).len() + 1;
        // A row that would overflow the open batch closes it first.
        if self
            .open_batches
            .get(&row.device)
            .is_some_and(|open| open.bytes + size > config.max_bytes.0 as usize)
        {
            self.ship_batch(&row.device);
        }
        let device = row.device.clone();
        let batch = self
            .open_batches
            .entry(device.clone())
            .or_insert_with(|| OpenBatch {
                rows: Vec::new(),
                bytes: 2,
                due: due(&row, &config, now, self.store.clock().now_ms()),
            });
        batch.bytes += size;
        batch.rows.push(row);
        if batch.rows.len() >= config.max_readings.get() as usize {
            self.ship_batch(&device);
        }
    }

    /// Moves a device's open batch to the ready queue.
    fn ship_batch(&mut self, device: &str) {
        if let Some(batch) = self.open_batches.remove(device) {
            self.ready.push_back(Pending::Batch(batch.rows));
        }
    }

    /// Batches whose first reading has waited `max_delay` go as they are.
    fn close_due_batches(&mut self, now: Instant) {
        let due: Vec<String> = self
            .open_batches
            .iter()
            .filter(|(_, b)| b.due <= now)
            .map(|(device, _)| device.clone())
            .collect();
        for device in due {
            self.ship_batch(&device);
        }
    }

    /// When the loop must look again without an event: a batch falls due,
    /// or the throttle lets the next message go.
    fn next_wake(&self) -> Option<Instant> {
        let batch = self.open_batches.values().map(|b| b.due).min();
        let could_send = self.controls.is_empty()
            && self.front_can_go()
            && self.flight.outstanding() < self.window();
        let now = Instant::now().into_std();
        let throttled = match &self.throttle {
            Some(t) if could_send => Some(Instant::from_std(t.next_at(now))),
            _ => None,
        };
        let first_seq = self.ready.front().and_then(|m| m.head().0).map(|r| r.seq);
        let drained = match first_seq {
            Some(seq) if could_send => self.drain.next_at(seq, now).map(Instant::from_std),
            _ => None,
        };
        let owed = [self.discovery_pace.due(), self.rebirth_pace.due()];
        batch
            .into_iter()
            .chain(throttled)
            .chain(drained)
            .chain(owed.into_iter().flatten())
            .min()
    }

    fn publish(&mut self, message: Pending) -> Result<(), UplinkError> {
        if self.discovery.is_some() {
            match &message {
                Pending::Single(row) => self.discovery_follows(row)?,
                Pending::Batch(rows) => {
                    for row in rows {
                        self.discovery_follows(row)?;
                    }
                }
            }
        }
        let (device, qos, keys, body) = match message {
            // Not a reading: an answer to a command, to its own topic.
            Pending::Single(row) if row.topic.is_some() => {
                let key = row.key();
                let (qos, keys) = (row.qos, vec![key]);
                let topic = row.topic.unwrap_or_default();
                // Stored before topics were checked, or by hand: refused
                // here rather than by the client, which would drop the link.
                if let Err(why) = payload::check_topic(&topic) {
                    self.refused.push((keys, why));
                    return Ok(());
                }
                let body = row.values.into_bytes();
                self.send_rows(topic, body, row.correlation, keys, qos, false)?;
                // Sent, not refused for its size.
                if self.sizes.contains_key(&key) {
                    self.answers.insert(key);
                }
                return Ok(());
            }
            Pending::Single(row) if row.kind == RowKind::Availability => {
                let key = row.key();
                let topic = self.settings.topics.availability(&row.device);
                self.sparkplug_availability(&row.device, &row.values)?;
                let body = row.values.into_bytes();
                self.send_rows(topic, body, None, vec![key], row.qos, true)?;
                if self.sizes.contains_key(&key) {
                    self.availability.insert(key);
                }
                return Ok(());
            }
            Pending::Single(row) if self.node.is_some() => {
                return self.publish_sparkplug(vec![row]);
            }
            Pending::Batch(rows) if self.node.is_some() => {
                return self.publish_sparkplug(rows);
            }
            Pending::Single(row) => {
                let body = payload::telemetry(&row);
                (row.device.clone(), row.qos, vec![row.key()], body)
            }
            Pending::Batch(rows) => {
                let Some(first) = rows.first() else {
                    return Ok(());
                };
                // Too large together: each reading on its own, in order.
                let bytes: usize = rows.iter().map(|r| r.values.len() + 96).sum();
                if rows.len() > 1 && bytes > self.packet_limit() {
                    for row in rows.into_iter().rev() {
                        self.ready.push_front(Pending::Single(row));
                    }
                    return Ok(());
                }
                let (device, qos) = (first.device.clone(), first.qos);
                let body = format!(
                    "[{}]",
                    rows.iter()
                        .map(payload::telemetry)
                        .collect::<Vec<_>>()
                        .join(",")
                );
                (device, qos, rows.iter().map(Row::key).collect(), body)
            }
        };
        let topic = self.settings.topics.telemetry(&device);
        self.send_rows(topic, body.into_bytes(), None, keys, qos, false)
    }

    /// Applies one event; returns true when it completed a connection.
    async fn handle(&mut self, event: Event) -> Result<bool, UplinkError> {
        if !matches!(
            event,
            Event::Published(_) | Event::AwaitAck(_) | Event::Disconnecting | Event::Other
        ) {
            self.last_heard = Instant::now();
        }
        match event {
            Event::Connected {
                receive_max,
                max_packet_size,
                ..
            } => {
                self.broker_max = max_packet_size;
                // What is stored from here on is live, not backlog.
                self.drain.connected(self.store.next_seq().await?);
                self.connected = true;
                self.connected_at = Some(Instant::now());
                self.caught_up = false;
                if let Some(max) = receive_max {
                    self.flight.receive_maximum(max);
                }
                self.publish_status().await?;
                self.publish_config_state()?;
                self.publish_availability().await?;
                self.publish_discovery()?;
                self.publish_births().await?;
                return Ok(true);
            }
            // Nothing is subscribed on this connection (commands and
            // configurations come on the downstream one); a message can only
            // be the broker's mistake: acknowledged, so it holds nothing up.
            Event::Message(message) => {
                tracing::warn!(
                    "ignored a message on {} (the telemetry connection subscribes to nothing)",
                    message.topic
                );
                self.client()?.ack(&message).await?;
            }
            Event::Published(pkid) => {
                let done = self.flight.published(pkid)?;
                self.deliver(done);
            }
            Event::AwaitAck(pkid) => self.flight.await_ack_event(pkid)?,
            Event::PubAck(pkid, refusal) => {
                self.acked = true;
                let done = self.flight.puback(pkid)?;
                self.settle(done, refusal);
            }
            Event::PubRec(pkid, None) => {
                self.acked = true;
                self.flight.pubrec(pkid)?;
            }
            Event::PubRec(pkid, Some(refusal)) => {
                let done = self.flight.pubrec_refused(pkid)?;
                self.settle(done, Some(refusal));
                // rumqttc keeps the packet id of a refused QoS 2 message
                // busy; reconnect before they run out.
                if self.settings.protocol == Protocol::V5 {
                    self.leaked += 1;
                    if self.leaked * 2 >= self.settings.max_inflight.max(2) {
                        return Err(UplinkError::Leaked);
                    }
                }
            }
            Event::PubComp(pkid) => {
                self.acked = true;
                let done = self.flight.pubcomp(pkid)?;
                self.deliver(done);
            }
            Event::SubAck(pkid, _) => return Err(Mismatch("SUBACK", pkid).into()),
            Event::Disconnected(Some(link::SESSION_TAKEN_OVER)) => {
                return Err(UplinkError::TakenOver);
            }
            Event::Disconnected(Some(code)) => return Err(UplinkError::DisconnectedBecause(code)),
            Event::Disconnected(None) => return Err(UplinkError::Disconnected),
            Event::Disconnecting | Event::Incoming | Event::Other => {}
        }
        Ok(false)
    }

    /// A row publish is done with (acked or refused): forgets its size.
    /// Returns whether it was one.
    fn finished(&mut self, rows: &[RowKey]) -> bool {
        let Some(first) = rows.first() else {
            return false;
        };
        self.answers.remove(first);
        self.availability.remove(first);
        self.sizes.remove(first).is_some()
    }

    fn deliver(&mut self, rows: Vec<RowKey>) {
        match rows.first() {
            Some(k) if self.availability.contains(k) => {}
            Some(k) if self.answers.contains(k) => {
                self.health.answers_published.fetch_add(1, Relaxed);
            }
            _ => {
                self.health.published.fetch_add(rows.len() as u64, Relaxed);
            }
        }
        if self.finished(&rows) {
            self.poison.probe = self.poison.probe.saturating_sub(1);
        }
        self.delivered.extend(rows);
    }

    fn settle(&mut self, rows: Vec<RowKey>, refusal: Option<BrokerRefusal>) {
        match refusal {
            None => self.deliver(rows),
            Some(r) if rows.is_empty() => {
                tracing::warn!(
                    "the broker refused a status message: 0x{:02x} {}",
                    r.code,
                    r.reason
                );
            }
            Some(r) => {
                self.finished(&rows);
                self.refused
                    .push((rows, format!("0x{:02x} {}", r.code, r.reason)));
            }
        }
    }

    async fn report(&mut self) -> Result<(), UplinkError> {
        self.store.ack(std::mem::take(&mut self.delivered)).await?;
        for (rows, reason) in std::mem::take(&mut self.refused) {
            let now = std::time::Instant::now();
            if let Some(line) = self.poison.refusals.refused(rows.len(), &reason, now) {
                tracing::warn!("{line}");
            }
            self.store.refused(rows, reason).await?;
        }
        Ok(())
    }

    /// The retained online status, with the queue and the counters.
    async fn publish_status(&mut self) -> Result<(), UplinkError> {
        let queue = self.store.status().await?;
        let info = self.config.info.borrow().clone();
        let synced = self.store.clock().synced();
        let body = payload::status(
            crate::VERSION,
            &info,
            &queue,
            &self.health.snapshot(),
            synced,
        );
        self.publish_control(self.settings.topics.status(), body)
    }

    /// Every device's current availability, retained, on every connection:
    /// the broker may have lost its retained messages (a restart without
    /// persistence), and a subscriber that clears one by mistake gets it
    /// back. Queued changes, sent after these, end on the same states.
    async fn publish_availability(&mut self) -> Result<(), UplinkError> {
        for (device, state) in self.store.availability().await? {
            let topic = self.settings.topics.availability(&device);
            self.publish_control(topic, state.as_str().to_owned())?;
        }
        Ok(())
    }

    /// The retained outcome of the last configuration received, if any.
    fn publish_config_state(&mut self) -> Result<(), UplinkError> {
        let state = self.config.state.borrow().clone();
        match state {
            Some(body) => self.publish_control(self.settings.topics.config_state(), body),
            None => Ok(()),
        }
    }

    /// Queues a status message; it goes as soon as a packet id is free. A
    /// newer one replaces one still waiting for the same (retained) topic.
    fn publish_control(&mut self, topic: String, body: String) -> Result<(), UplinkError> {
        let waiting = self.controls.iter_mut().find_map(|c| match c {
            Control::Status(t, b) if *t == topic => Some(b),
            _ => None,
        });
        match waiting {
            Some(waiting) => *waiting = body,
            None => self.controls.push_back(Control::Status(topic, body)),
        }
        self.send_controls()
    }

    /// Clean shutdown: for up to `drain_grace`, keep sending and collect
    /// acks; then replace the retained status with `offline` and disconnect.
    async fn close(&mut self) -> Result<(), UplinkError> {
        if !self.connected {
            return Ok(());
        }
        let deadline = Instant::now() + self.settings.drain_grace;
        let mut offline_sent = false;
        let mut disconnect_sent = false;
        // The final commit may have brought rows not fetched yet, and open
        // batches go as they are.
        self.caught_up = false;
        loop {
            if !offline_sent {
                let open: Vec<String> = self.open_batches.keys().cloned().collect();
                for device in open {
                    self.ship_batch(&device);
                }
                self.refill().await?;
            }
            self.send_controls()?;
            // Sparkplug before NBIRTH: the rows wait for the next start.
            let unborn = self.node.as_ref().is_some_and(|n| !n.alive());
            if self.flight.outstanding() == 0
                && ((self.caught_up && self.ready.is_empty()) || unborn)
                && self.controls.is_empty()
            {
                if !offline_sent {
                    self.publish_control(self.settings.topics.status(), payload::offline())?;
                    // A clean end says what the will would have said.
                    if let Some(death) = self.death.take() {
                        self.controls.push_back(Control::Sparkplug(death));
                    }
                    offline_sent = true;
                } else if !disconnect_sent {
                    self.client()?.try_disconnect()?;
                    disconnect_sent = true;
                }
            }
            let Some(link) = self.link.as_mut() else {
                break;
            };
            let event = match tokio::time::timeout_at(deadline, link.events.recv()).await {
                Ok(Some(Ok(event))) => event,
                // Timed out, or the connection ended (as a disconnect does).
                _ => break,
            };
            if event == Event::Disconnecting {
                break;
            }
            self.handle(event).await?;
        }
        self.report().await?;
        let left = self.flight.outstanding();
        if left > 0 {
            tracing::info!(
                "{left} messages unacknowledged at shutdown; they are sent again at the next start"
            );
        }
        Ok(())
    }
}

/// The next fresh reading, or never when none are forwarded.
async fn next_live(live: &mut Option<mpsc::Receiver<Row>>) -> Option<Row> {
    match live {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// rumqttc's inflight setting for a window of `window` messages: its
/// packet id counter wraps there. Twice the window, so that one slow
/// QoS 2 exchange rarely holds the next publish up (it waits until the
/// counter comes round to a free id).
fn packet_ids(window: usize) -> u16 {
    u16::try_from(window.saturating_mul(2).saturating_add(16)).unwrap_or(u16::MAX)
}

/// When a batch starting with `row` must go: `max_delay` after the reading
/// was taken, and never later than `max_delay` from now.
fn due(row: &Row, config: &BatchConfig, now: Instant, now_ms: i64) -> Instant {
    let delay = config.max_delay.get();
    let age = Duration::from_millis((now_ms - row.ts_ms).max(0) as u64);
    now + delay.saturating_sub(age)
}
