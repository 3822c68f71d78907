//! `fieldgate run`: wires sources, store and uplink together, changes the
//! devices while running (a remote configuration, or SIGHUP for the local
//! file), and takes everything down in order on SIGINT/SIGTERM, so that
//! nothing a source produced before the signal is lost.

use std::collections::HashMap;
use std::path::PathBuf;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::commands::Commands;
use crate::config::{self, BatchConfig, Config};
use crate::health::Health;
use crate::service;
use crate::sources::{Ingest, Sources};
use crate::store::{self, RemoteConfig, Store, StoreError};
use crate::uplink::{self, Channels, ConfigInfo, Inbox, payload};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open the store at {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("{0}")]
    ClientId(#[from] crate::config::ClientIdError),
}

/// Runs the gateway until SIGINT or SIGTERM. `file` is where `local` was
/// read, for SIGHUP.
pub async fn run(local: Config, file: PathBuf) -> Result<(), RunError> {
    let signal = |kind| signal(kind).map_err(RunError::Signals);
    let (mut sigterm, mut sigint, mut sighup) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
        signal(SignalKind::hangup())?,
    );

    // Before anything else: a client id that cannot be made is fatal.
    let uplink_settings = uplink::Settings::from_config(&local)?;
    let path = store::db_path(&local.gateway.state_dir);
    let gather = tokio::spawn(store::gather_wakes());
    let (store, store_thread) =
        Store::open(&path, &local.store, Clock::system()).map_err(|source| RunError::Store {
            path: path.display().to_string(),
            source,
        })?;
    // A Pi that reboots offline comes up with its last good configuration.
    let running = effective(&local, &store).await;
    // Devices removed while the gateway was stopped.
    forget_removed(&store, &running).await;
    let queued = store.status().await.map(|s| s.rows).unwrap_or_default();
    tracing::info!(
        gateway = %local.gateway.id,
        devices = running.devices.len(),
        config = %running.version,
        origin = running.origin.as_str(),
        queued,
        store = %path.display(),
        "fieldgate {} running", crate::VERSION
    );

    let health = Health::new();
    let (info, info_rx) = watch::channel(info_of(&running));
    let (batches, batches_rx) = watch::channel(batches_of(&running));
    let (model, model_rx) = watch::channel(uplink::sparkplug::Model::of(&running));
    let (rebirth_tx, rebirth_rx) = watch::channel(0);
    let (host_tx, host_rx) = watch::channel(None);
    let (ha_model, ha_model_rx) = watch::channel(uplink::homeassistant::Model::of(&running));
    let (ha_online_tx, ha_online_rx) = watch::channel(0);
    // Retained from an earlier run, `P/config/state` may name a remote
    // configuration dropped since (`config clear-remote`): say what runs.
    let (state, state_rx) = watch::channel(Some(state_of(&running, store.clock().now_ms())));
    let (received_tx, mut received) = mpsc::channel(8);
    let mut gateway = Gateway {
        local,
        running,
        file,
        store: store.clone(),
        info,
        batches,
        model,
        ha_model,
        state,
    };

    let (commands_tx, mut incoming_commands) = mpsc::channel(32);
    let topics = uplink::payload::Topics::new(
        gateway.local.mqtt.topic_prefix.as_str(),
        gateway.local.gateway.id.as_str(),
    );
    let commands = Commands::new(
        store.clone(),
        gateway.local.commands.clone(),
        topics.responses(),
        health.clone(),
    );
    let ingest = Ingest::new(store.clone(), health.clone());
    let mut sources = Sources::start(
        &gateway.running.devices,
        gateway.local.mqtt.qos,
        gateway.local.ble.clone(),
        ingest,
    );
    let stop_uplink = CancellationToken::new();
    let channels = Channels {
        info: info_rx,
        state: state_rx,
        batches: batches_rx,
        model: model_rx,
        rebirth: rebirth_rx,
        host: host_rx,
        ha_model: ha_model_rx,
        ha_online: ha_online_rx,
    };
    // Commands and configurations come on a connection of their own, on a
    // session the broker keeps (see `uplink/downstream.rs`).
    let stop_downstream = CancellationToken::new();
    let inbox = Inbox {
        commands: commands_tx,
        documents: received_tx,
        rebirth: rebirth_tx,
        host: host_tx,
        ha_online: ha_online_tx,
        model: gateway.model.subscribe(),
    };
    let downstream_task = tokio::spawn(uplink::run_downstream(
        uplink_settings.clone(),
        health.clone(),
        inbox,
        stop_downstream.clone(),
    ));
    let uplink_task = tokio::spawn(uplink::run(
        uplink_settings,
        store.clone(),
        health.clone(),
        channels,
        stop_uplink.clone(),
    ));
    service::spawn_watchdog(
        store.clone(),
        uplink_task.abort_handle(),
        stop_uplink.clone(),
    );
    let metrics =
        gateway.local.metrics.listen.map(|listen| {
            tokio::spawn(crate::metrics::serve(listen, store.clone(), health.clone()))
        });
    let stop_time_sync = CancellationToken::new();
    let time_sync = tokio::spawn(crate::time_sync::watch(
        store.clone(),
        stop_time_sync.clone(),
    ));
    service::ready();
    let trim = tokio::spawn(crate::resident::keep_trim());

    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break }
            _ = sighup.recv() => gateway.reload(&mut sources).await,
            Some(document) = received.recv() => gateway.apply_remote(document, &mut sources).await,
            Some(command) = incoming_commands.recv() => {
                commands.receive(command, &gateway.running.devices, &sources).await
            }
        }
    }
    service::stopping();
    trim.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    stop_time_sync.cancel();
    if time_sync.await.is_err() {
        tracing::error!("the clock watch panicked");
    }
    // Nothing more is taken: what is unacknowledged waits at the broker
    // for the next start.
    stop_downstream.cancel();
    if downstream_task.await.is_err() {
        tracing::error!("the downstream task panicked");
    }
    drop(incoming_commands);

    // Sources first, so that their last readings are in the final commit.
    sources.stop_all().await;
    if let Err(e) = store.flush().await {
        tracing::error!("final store commit failed: {e}");
    }
    stop_uplink.cancel();
    if uplink_task.await.is_err() {
        tracing::error!("the uplink task panicked");
    }
    drop((store, gateway, sources, commands));
    // The store thread commits the last acks and checkpoints the WAL.
    let _ = tokio::task::spawn_blocking(move || store_thread.join()).await;
    gather.abort();
    tracing::info!("stopped");
    Ok(())
}

/// The configuration that runs and what the rest of the gateway is told.
struct Gateway {
    /// The local file, as last read.
    local: Config,
    /// The local file with the remote devices, if any.
    running: Config,
    file: PathBuf,
    store: Store,
    info: watch::Sender<ConfigInfo>,
    batches: watch::Sender<HashMap<String, BatchConfig>>,
    /// The metrics Sparkplug births declare.
    model: watch::Sender<uplink::sparkplug::Model>,
    /// The devices Home Assistant discovery announces.
    ha_model: watch::Sender<uplink::homeassistant::Model>,
    state: watch::Sender<Option<String>>,
}

impl Gateway {
    /// A document from `P/config/set`: checked like the local file, cached,
    /// applied, and answered on `P/config/state`. A rejected one changes
    /// nothing.
    async fn apply_remote(&mut self, document: Vec<u8>, sources: &mut Sources) {
        let text = String::from_utf8_lossy(&document).into_owned();
        let version = version_of(&text);
        let checked = config::load_remote(&text, &self.local);
        let outcome = match checked {
            Ok(new)
                if new.version == self.running.version && new.devices == self.running.devices =>
            {
                tracing::info!("remote configuration {} is the one running", new.version);
                Ok(())
            }
            Ok(new) => {
                let cached = RemoteConfig {
                    version: new.version.clone(),
                    text,
                    at_ms: self.store.clock().now_ms(),
                };
                match self.store.save_remote_config(cached).await {
                    Ok(()) => {
                        self.switch(new, sources).await;
                        Ok(())
                    }
                    Err(e) => Err(format!(
                        "cannot cache the configuration, nothing changed: {e}"
                    )),
                }
            }
            Err(e) => {
                tracing::warn!("remote configuration {version} rejected, nothing changed:\n{e}");
                Err(e.to_string())
            }
        };
        let running = info_of(&self.running);
        let body = payload::config_state(
            &version,
            outcome.as_ref().map(|_| ()).map_err(String::as_str),
            &running,
            self.store.clock().now_ms(),
        );
        self.state.send_replace(Some(body));
    }

    /// SIGHUP: read the local file again. Devices change at once (unless a
    /// remote configuration is cached: it wins); other sections need a restart.
    async fn reload(&mut self, sources: &mut Sources) {
        let new = match config::load(&self.file) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(
                    "SIGHUP: keeping the running configuration, the file is invalid:\n{e}"
                );
                return;
            }
        };
        let fixed = |c: &Config| format!("{:?}{:?}{:?}{:?}", c.gateway, c.mqtt, c.store, c.log);
        if fixed(&new) != fixed(&self.local) {
            tracing::warn!(
                "SIGHUP: changes outside `devices` ({}) take effect at the next restart",
                self.file.display()
            );
        }
        self.local = new;
        let running = effective(&self.local, &self.store).await;
        tracing::info!("SIGHUP: {} reloaded", self.file.display());
        self.switch(running, sources).await;
        // The cached remote configuration may be gone (`config clear-remote`):
        // the retained state must not go on naming it.
        let state = state_of(&self.running, self.store.clock().now_ms());
        self.state.send_replace(Some(state));
    }

    async fn switch(&mut self, new: Config, sources: &mut Sources) {
        let change = sources.apply(&new.devices).await;
        tracing::info!(
            "configuration {} ({}) applied: added {:?}, removed {:?}, restarted {:?}",
            new.version,
            new.origin.as_str(),
            change.added,
            change.removed,
            change.restarted
        );
        self.running = new;
        forget_removed(&self.store, &self.running).await;
        self.info.send_replace(info_of(&self.running));
        self.batches.send_replace(batches_of(&self.running));
        (self.model).send_replace(uplink::sparkplug::Model::of(&self.running));
        (self.ha_model).send_replace(uplink::homeassistant::Model::of(&self.running));
    }
}

/// The local file, or its devices replaced by the cached remote ones.
async fn effective(local: &Config, store: &Store) -> Config {
    let cached = match store.remote_config().await {
        Ok(cached) => cached,
        Err(e) => {
            tracing::error!(
                "cannot read the cached remote configuration: {e}; running the local devices"
            );
            None
        }
    };
    let Some(cached) = cached else {
        return local.clone();
    };
    match config::load_remote(&cached.text, local) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(
                "the cached remote configuration {} no longer passes the checks; running the local devices:\n{e}",
                cached.version
            );
            local.clone()
        }
    }
}

/// Clears the availability of devices `running` no longer has: their
/// state goes, and an empty retained message removes it at the broker.
async fn forget_removed(store: &Store, running: &Config) {
    let keep = running
        .devices
        .iter()
        .map(|d| d.name().to_string())
        .collect();
    match store.forget_availability(keep).await {
        Ok(gone) if !gone.is_empty() => {
            tracing::info!("availability cleared for removed devices {gone:?}");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot clear the availability of removed devices: {e}"),
    }
}

fn info_of(config: &Config) -> ConfigInfo {
    ConfigInfo {
        version: config.version.clone(),
        origin: config.origin,
    }
}

/// `P/config/state` for the configuration that runs, applied.
fn state_of(running: &Config, now_ms: i64) -> String {
    let info = info_of(running);
    payload::config_state(&info.version, Ok(()), &info, now_ms)
}

fn batches_of(config: &Config) -> HashMap<String, BatchConfig> {
    config
        .devices
        .iter()
        .filter_map(|d| Some((d.name().to_string(), *d.spec().batch()?)))
        .collect()
}

/// The `version` of a document, for the answer to a broken one.
fn version_of(text: &str) -> String {
    config::yaml::parse(text)
        .ok()
        .and_then(|root| match root.get("version").map(|v| v.value.clone()) {
            Some(config::yaml::Value::Scalar { text, .. }) => Some(text),
            _ => None,
        })
        .unwrap_or_else(|| "unknown".into())
}
