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
                "# gateway, store, mqtt, log, commands, metrics, ble: the local file {}",
                file.display()
            )?;
            let overrides = environment();
            if !overrides.is_empty() {
                outln!("# ... with these environment variables over it:")?;
                for (name, value) in &overrides {
                    outln!("#   {name}={value}")?;
                }
            }
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
            out!("{}", redacted(&text))?;
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

/// The `FIELDGATE__…` variables of this process, sorted, secrets hidden.
/// (The service's own, from /etc/fieldgate/environment, are not seen here
/// unless they are set for this command too.)
fn environment() -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            if !name.to_ascii_uppercase().starts_with("FIELDGATE__") {
                return None;
            }
            let value = if is_secret(&name) {
                "(hidden)".to_owned()
            } else {
                value.to_string_lossy().into_owned()
            };
            Some((name, value))
        })
        .collect();
    found.sort();
    found
}

fn is_secret(variable: &str) -> bool {
    variable.to_ascii_uppercase().ends_with("__PASSWORD")
}

/// The file as written, with the value of every `password:` key hidden,
/// in block (`password: x`) and flow (`{ password: x }`) style.
fn redacted(text: &str) -> String {
    let value = r#""(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[^,}#\n]*[^,}#\s]"#;
    match regex::Regex::new(&format!(r"\bpassword([ \t]*):([ \t]*)(?:{value})")) {
        Ok(re) => re
            .replace_all(text, "password${1}:${2}(hidden)")
            .into_owned(),
        // A fixed pattern: cannot fail; if it did, show nothing rather than a secret.
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_the_file_are_hidden_and_the_rest_stays() {
        let text =
            "mqtt:\n  username: gw\n  password: \"s3, cret\" # old\n  password_file: /etc/p\n";
        assert_eq!(
            redacted(text),
            "mqtt:\n  username: gw\n  password: (hidden) # old\n  password_file: /etc/p\n"
        );
        let flow =
            "mqtt: { url: mqtt://h, password: s3cret, qos: 1 }\n# FIELDGATE__MQTT__PASSWORD=…\n";
        assert_eq!(
            redacted(flow),
            "mqtt: { url: mqtt://h, password: (hidden), qos: 1 }\n# FIELDGATE__MQTT__PASSWORD=…\n"
        );
    }
}
