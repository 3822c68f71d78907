//! `fieldgate config`: which configuration a gateway runs, and dropping a
//! cached remote one.

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;
use fieldgate::config::{self, Config};
use fieldgate::store::{self, Outbox, StoreError};
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
            outln!(
                "# gateway, store, mqtt, log: the local file {}",
                file.display()
            )?;
            match &cached {
                Some(remote) => match config::load_remote(&remote.text, local) {
                    Ok(_) => outln!(
                        "# devices: the remote configuration {:?}, applied {} (cached in {}); the local devices are not in use",
                        remote.version,
                        timestamp(remote.at_ms),
                        path.display()
                    )?,
                    Err(e) => outln!(
                        "# devices: the local file, because the cached remote configuration {:?} no longer passes the checks:\n# {}",
                        remote.version,
                        e.to_string().replace('\n', "\n# ")
                    )?,
                },
                None => outln!("# devices: the local file (no remote configuration cached)")?,
            }
            outln!("--- {}", file.display())?;
            out!("{text}")?;
            if let Some(remote) = &cached {
                outln!("--- remote configuration {}", remote.version)?;
                outln!("{}", remote.text.trim_end())?;
            }
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
