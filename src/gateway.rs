//! `fieldgate run`: wires sources, store and uplink together and takes
//! them down in order on SIGINT/SIGTERM, so that nothing a source produced
//! before the signal is lost.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::{self, Store, StoreError};
use crate::{service, sources, uplink};

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
}

/// Runs the gateway until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), RunError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;

    let path = store::db_path(&config.gateway.state_dir);
    let (store, store_thread) =
        Store::open(&path, &config.store).map_err(|source| RunError::Store {
            path: path.display().to_string(),
            source,
        })?;
    let queued = store.totals().await.map(|t| t.rows).unwrap_or_default();
    tracing::info!(
        gateway = %config.gateway.id,
        devices = config.devices.len(),
        queued,
        store = %path.display(),
        "fieldgate {} running", crate::VERSION
    );

    let stop_sources = CancellationToken::new();
    let stop_uplink = CancellationToken::new();
    let mut source_tasks = sources::spawn_all(&config, &store, &stop_sources);
    let uplink_task = tokio::spawn(uplink::run(
        uplink::Settings::from_config(&config),
        store.clone(),
        stop_uplink.clone(),
    ));
    service::spawn_watchdog(
        store.clone(),
        uplink_task.abort_handle(),
        stop_uplink.clone(),
    );
    service::ready();

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    service::stopping();

    // Sources first, so that their last readings are in the final commit.
    stop_sources.cancel();
    while source_tasks.join_next().await.is_some() {}
    if let Err(e) = store.flush().await {
        tracing::error!("final store commit failed: {e}");
    }
    stop_uplink.cancel();
    if uplink_task.await.is_err() {
        tracing::error!("the uplink task panicked");
    }
    drop(store);
    // The store thread commits the last acks and checkpoints the WAL.
    let _ = tokio::task::spawn_blocking(move || store_thread.join()).await;
    tracing::info!("stopped");
    Ok(())
}
