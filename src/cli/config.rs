//! `fieldgate config`: which configuration a gateway runs, and dropping a
//! cached remote one.

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use fieldgate::config::{self, Config};
use fieldgate::store::{self, Outbox, RemoteConfig, StoreError};
use fieldgate::uplink::payload::timestamp;

#[derive(Subcommand)]
pub enum Action {
    /// The effective configuration and where each part comes from.
    Show,
    /// Forget the cached remote configuration: the local devices run again
    /// at the next start (or SIGHUP).
    ClearRemote,
}

pub fn run(local: &Config, file: &Path, action: Action) -> anyhow::Result<()> {
    let path = store::db_path(&local.gateway.state_dir);
    let cached = match Outbox::open_read_only(&path) {
        Ok(outbox) => outbox.remote_config()?,
        // No store yet, or one a starting gateway is creating: nothing cached.
        Err(StoreError::Uninitialized) => None,
        Err(StoreError::Sqlite(_)) if !path.exists() => None,
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    match action {
        Action::Show => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            show(local, file, &text, cached.as_ref(), &path)?;
        }
        Action::ClearRemote => {
            let Some(remote) = cached else {
                outln!("no remote configuration is cached")?;
                return Ok(());
            };
            let mut outbox = Outbox::open_for_changes(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            outbox.clear_remote_config()?;
            outln!(
                "dropped the remote configuration {}; a running gateway keeps its devices until it restarts or gets SIGHUP",
                remote.version
            )?;
        }
    }
    Ok(())
}

/// The header (what is in effect, and why these devices), then every
/// value with its origin: the file's line, a variable's name or the
/// remote configuration's line.
fn show(
    local: &Config,
    file: &Path,
    text: &str,
    cached: Option<&RemoteConfig>,
    db: &Path,
) -> anyhow::Result<()> {
    outln!(
        "# the effective configuration: the local file {}, the FIELDGATE__… variables of this command over it, secrets shown as {}",
        file.display(),
        config::HIDDEN
    )?;
    // The service's own variables (/etc/fieldgate/environment) are not
    // seen here unless they are set for this command too.
    let client_id = local
        .mqtt
        .resolve_client_id(local.gateway.id.as_str())
        .unwrap_or_else(|e| format!("none ({e})"));
    let brokers: Vec<String> = local.mqtt.brokers().iter().map(|b| b.to_string()).collect();
    outln!(
        "# in effect: gateway.id {}, client id {client_id}, broker {}, topics {}/{}/…, state_dir {}",
        local.gateway.id,
        brokers.join(" then "),
        local.mqtt.topic_prefix.as_str(),
        local.gateway.id,
        local.gateway.state_dir.display()
    )?;
    let about;
    let remote = match cached {
        Some(remote) => match config::load_remote(&remote.text, local) {
            Ok(_) => {
                about = format!(
                    "the remote configuration {:?}, applied {} (cached in {})",
                    remote.version,
                    timestamp(remote.at_ms),
                    db.display()
                );
                outln!("# devices: {about}; the local devices are not in use")?;
                Some(config::RemoteDevices {
                    text: &remote.text,
                    version: &remote.version,
                    about: &about,
                })
            }
            Err(e) => {
                outln!(
                    "# devices: the local file, because the cached remote configuration {:?} no longer passes the checks:\n# {}",
                    remote.version,
                    e.to_string().replace('\n', "\n# ")
                )?;
                None
            }
        },
        None => {
            outln!("# devices: the local file (no remote configuration cached)")?;
            None
        }
    };
    let shown = config::show(text, &file.display().to_string(), remote.as_ref())?;
    out!("{shown}")?;
    Ok(())
}
