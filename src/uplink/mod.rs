//! The only MQTT client: drains the store to the broker and deletes a row
//! only once the broker has it.
//!
//! Every connection starts from scratch (a new rumqttc client, a clean
//! session, empty bookkeeping) and re-sends every row still in the store,
//! oldest of the highest priority first. That costs duplicates after a
//! reconnect (each reading carries `seq`, so the cloud can drop them) and
//! buys the guarantee: nothing committed is lost, whatever rumqttc drops
//! on a reconnect.

pub(crate) mod backoff;
mod inflight;
pub mod payload;

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use backoff::Backoff;
use inflight::{Inflight, Mismatch, Tracked};
use payload::Topics;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use crate::config::{Config, Qos};
use crate::health::Health;
use crate::store::{RowKey, Store, StoreError};

/// What the uplink needs from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub keep_alive: Duration,
    pub max_inflight: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub topics: Topics,
    pub config_version: String,
    /// How often the retained status is refreshed.
    pub status_interval: Duration,
    /// How long a shutdown waits for outstanding acks.
    pub drain_grace: Duration,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        let mqtt = &config.mqtt;
        Settings {
            url: mqtt.url.to_string(),
            host: mqtt.url.host.clone(),
            port: mqtt.url.port,
            client_id: mqtt
                .client_id
                .clone()
                .unwrap_or_else(|| config.gateway.id.to_string()),
            credentials: mqtt
                .username
                .clone()
                .map(|u| (u, mqtt.password.clone().unwrap_or_default())),
            keep_alive: mqtt.keep_alive.get(),
            max_inflight: mqtt.max_inflight.get() as usize,
            backoff_min: mqtt.backoff_min.get(),
            backoff_max: mqtt.backoff_max.get(),
            topics: Topics::new(mqtt.topic_prefix.as_str(), config.gateway.id.as_str()),
            config_version: config.version.clone(),
            status_interval: config.gateway.status_interval.get(),
            drain_grace: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum UplinkError {
    #[error("{0}")]
    Connection(Box<ConnectionError>),
    #[error("cannot hand a message to the MQTT client: {0}")]
    Client(#[from] rumqttc::ClientError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("delivery bookkeeping lost track: {0}")]
    Mismatch(#[from] Mismatch),
    #[error("the broker closed the session")]
    Disconnected,
}

impl From<ConnectionError> for UplinkError {
    fn from(e: ConnectionError) -> Self {
        UplinkError::Connection(Box::new(e))
    }
}

/// Runs until `shutdown`: connect, drain, and reconnect with backoff.
pub async fn run(
    settings: Settings,
    store: Store,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(settings.backoff_min, settings.backoff_max);
    let mut link = LinkLog::default();
    loop {
        let mut connection = Connection::new(&settings, &store, &health);
        match connection.run(&shutdown, &mut backoff, &mut link).await {
            Ok(()) => return,
            Err(e) => link.down(&settings.url, &e),
        }
        let delay = backoff.next_delay();
        tracing::debug!("reconnecting in {delay:?}");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
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
    fn up(&mut self, url: &str) -> bool {
        if !self.was_up || self.last_problem.is_some() {
            tracing::info!("connected to {url}");
        }
        let again = self.was_up;
        self.was_up = true;
        self.last_problem = None;
        again
    }

    fn down(&mut self, url: &str, error: &UplinkError) {
        let problem = error.to_string();
        if self.last_problem.as_deref() != Some(problem.as_str()) {
            tracing::warn!("MQTT link to {url} down: {problem}; readings stay queued");
            self.last_problem = Some(problem);
        } else {
            tracing::debug!("MQTT link to {url} still down: {problem}");
        }
    }
}

/// One MQTT connection and its delivery state.
struct Connection<'a> {
    settings: &'a Settings,
    store: &'a Store,
    health: &'a Health,
    client: AsyncClient,
    events: mpsc::Receiver<Result<Event, ConnectionError>>,
    poller: tokio::task::JoinHandle<()>,
    flight: Inflight,
    /// Per priority, the highest `seq` handed to the client.
    cursors: [i64; 3],
    connected: bool,
    /// The last fetch found no more rows; wait for a commit.
    caught_up: bool,
    /// Delivered rows not yet reported to the store.
    delivered: Vec<RowKey>,
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl<'a> Connection<'a> {
    fn new(settings: &'a Settings, store: &'a Store, health: &'a Health) -> Connection<'a> {
        let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
        options
            .set_clean_session(true)
            .set_keep_alive(settings.keep_alive)
            .set_inflight(u16::try_from(settings.max_inflight + 2).unwrap_or(u16::MAX))
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_last_will(LastWill::new(
                settings.topics.status(),
                payload::offline(),
                QoS::AtLeastOnce,
                true,
            ));
        if let Some((user, password)) = &settings.credentials {
            options.set_credentials(user, password);
        }
        // Room for a full window plus the status messages and a disconnect,
        // so `try_publish` never finds the channel full.
        let (client, eventloop) = AsyncClient::new(options, settings.max_inflight + 8);
        let (events_tx, events) = mpsc::channel(1_024);
        let poller = tokio::spawn(poll(eventloop, events_tx));
        Connection {
            settings,
            store,
            health,
            client,
            events,
            poller,
            flight: Inflight::default(),
            cursors: [0; 3],
            connected: false,
            caught_up: false,
            delivered: Vec::new(),
        }
    }

    async fn run(
        &mut self,
        shutdown: &CancellationToken,
        backoff: &mut Backoff,
        link: &mut LinkLog,
    ) -> Result<(), UplinkError> {
        let mut committed = self.store.committed();
        let period = self.settings.status_interval;
        let mut status_tick =
            tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            self.refill().await?;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return self.close().await,
                event = self.events.recv() => {
                    let event = event.ok_or(UplinkError::Disconnected)??;
                    if self.handle(event).await? {
                        backoff.reset();
                        if link.up(&self.settings.url) {
                            self.health.reconnects.fetch_add(1, Relaxed);
                        }
                    }
                    // Take whatever else is ready before telling the store.
                    while let Ok(event) = self.events.try_recv() {
                        self.handle(event?).await?;
                    }
                    self.report_delivered().await?;
                }
                _ = status_tick.tick(), if self.connected => self.publish_status().await?,
                changed = committed.changed(), if self.connected && self.caught_up => {
                    if changed.is_err() {
                        return Err(StoreError::Closed.into());
                    }
                    self.caught_up = false;
                }
            }
        }
    }

    /// Hands the client more rows once half the window is free.
    async fn refill(&mut self) -> Result<(), UplinkError> {
        let window = self.settings.max_inflight;
        let outstanding = self.flight.outstanding();
        if !self.connected || self.caught_up || outstanding * 2 > window {
            return Ok(());
        }
        let budget = window - outstanding;
        let rows = self.store.fetch(self.cursors, budget).await?;
        self.caught_up = rows.len() < budget;
        tracing::trace!(fetched = rows.len(), budget, outstanding, "refill");
        for row in rows {
            self.cursors[row.priority as usize] = row.seq;
            self.client.try_publish(
                self.settings.topics.telemetry(&row.device),
                qos(row.qos),
                false,
                payload::telemetry(&row),
            )?;
            self.flight.requested(Tracked::Row(row.key(), row.qos));
        }
        Ok(())
    }

    /// Applies one event; returns true when it completed a connection.
    async fn handle(&mut self, event: Event) -> Result<bool, UplinkError> {
        let done = match event {
            Event::Incoming(Incoming::ConnAck(_)) => {
                self.connected = true;
                self.caught_up = false;
                self.publish_status().await?;
                return Ok(true);
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => self.flight.published(pkid)?,
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                self.flight.await_ack_event(pkid)?;
                None
            }
            Event::Incoming(Incoming::PubAck(ack)) => self.flight.puback(ack.pkid)?,
            Event::Incoming(Incoming::PubRec(rec)) => {
                self.flight.pubrec(rec.pkid)?;
                None
            }
            Event::Incoming(Incoming::PubComp(comp)) => self.flight.pubcomp(comp.pkid)?,
            Event::Incoming(Incoming::Disconnect) => return Err(UplinkError::Disconnected),
            _ => None,
        };
        if let Some(key) = done {
            self.health.published.fetch_add(1, Relaxed);
            self.delivered.push(key);
        }
        Ok(false)
    }

    async fn report_delivered(&mut self) -> Result<(), UplinkError> {
        let keys = std::mem::take(&mut self.delivered);
        Ok(self.store.ack(keys).await?)
    }

    /// The retained online status, with the queue and the counters.
    async fn publish_status(&mut self) -> Result<(), UplinkError> {
        let queue = self.store.status().await?;
        let body = payload::status(
            crate::VERSION,
            &self.settings.config_version,
            &queue,
            &self.health.snapshot(),
        );
        self.publish_control(body)
    }

    fn publish_control(&mut self, body: String) -> Result<(), UplinkError> {
        self.client
            .try_publish(self.settings.topics.status(), QoS::AtLeastOnce, true, body)?;
        self.flight.requested(Tracked::Control(Qos::AtLeastOnce));
        Ok(())
    }

    /// Clean shutdown: for up to `drain_grace`, keep sending and collect
    /// acks; then replace the retained birth with `offline` and disconnect.
    async fn close(&mut self) -> Result<(), UplinkError> {
        if !self.connected {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + self.settings.drain_grace;
        let mut offline_sent = false;
        let mut disconnect_sent = false;
        // The final commit may have brought rows not fetched yet.
        self.caught_up = false;
        loop {
            if !offline_sent {
                self.refill().await?;
            }
            if self.flight.outstanding() == 0 && self.caught_up {
                if !offline_sent {
                    self.publish_control(payload::offline())?;
                    offline_sent = true;
                } else if !disconnect_sent {
                    self.client.try_disconnect()?;
                    disconnect_sent = true;
                }
            }
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(event))) => event,
                // Timed out, or the connection ended (as a disconnect does).
                _ => break,
            };
            if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
            self.handle(event).await?;
        }
        self.report_delivered().await?;
        let left = self.flight.outstanding();
        if left > 0 {
            tracing::info!(
                "{left} messages unacknowledged at shutdown; they are sent again at the next start"
            );
        }
        Ok(())
    }
}

/// Drives the rumqttc event loop on its own task, so that nothing ever
/// cancels `poll()` halfway (an ack it was writing could be lost).
async fn poll(mut eventloop: EventLoop, events: mpsc::Sender<Result<Event, ConnectionError>>) {
    loop {
        let event = eventloop.poll().await;
        let failed = event.is_err();
        if events.send(event).await.is_err() || failed {
            return;
        }
    }
}

fn qos(q: Qos) -> QoS {
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
        Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}
