//! The gateway's configuration: typed sections, and the loader that turns a
//! YAML file (plus `FIELDGATE__…` environment overrides) into them.
//!
//! Each device kind's settings have a file here (`modbus.rs`, `serial.rs`,
//! `ble.rs`, `simulated.rs`) beside the sections shared by the whole
//! gateway, so that everything the YAML can say is checked in one layer,
//! below the sources that act on it.

pub mod ble;
mod device;
pub mod entity;
mod env;
pub mod homeassistant;
mod load;
pub mod modbus;
mod mqtt;
pub mod report;
pub mod serial;
pub mod simulated;
pub mod sparkplug;
mod trust;
pub mod units;
pub mod yaml;

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use crate::reading::{Delivery, Name, Priority, Qos};
pub use ble::BleConfig;
pub use entity::EntityHints;

pub use device::{
    BatchConfig, DEVICE_KINDS, DeviceConfig, DeviceSpec, PointShape, PointSpec, WriteRange,
    duplicate_names, duplicate_point_names,
};
pub use load::{Checked, Warnings, check, remote_warnings};
pub use load::{ConfigError, Problem, load, load_remote, load_str};
pub use load::{HIDDEN, RemoteDevices, show};
pub use mqtt::{
    BrokerUrl, ClientIdError, Credentials, MACHINE_ID, MqttConfig, Protocol, Secret, TlsConfig,
};
pub use sparkplug::{Format, SparkplugConfig, SparkplugId};
pub use trust::{Endpoint, RemoteTrust};
pub use units::{ByteSize, Duration};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub gateway: GatewayConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    pub store: StoreConfig,
    pub mqtt: MqttConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    pub log: LogConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    pub commands: CommandsConfig,
    #[serde(default, deserialize_with = "null_as_default")]
    pub metrics: MetricsConfig,
    /// The Bluetooth adapter of the BLE devices.
    #[serde(default, deserialize_with = "null_as_default")]
    pub ble: BleConfig,
    /// What a remote configuration may change beyond read-only devices;
    /// local only.
    #[serde(default, deserialize_with = "null_as_default")]
    pub remote_config: RemoteTrust,
    /// Home Assistant MQTT discovery; off when absent.
    #[serde(default)]
    pub homeassistant: Option<homeassistant::HomeAssistantConfig>,
    /// The Sparkplug B edge node, with `mqtt.format: sparkplug`.
    #[serde(default)]
    pub sparkplug: Option<SparkplugConfig>,
    /// `devices:` with nothing under it is an empty list, not an error.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub devices: Vec<DeviceConfig>,
    /// Identifies this configuration in the birth message: `local-` and a
    /// hash of the file text, or the version of a remote configuration.
    #[serde(skip)]
    pub version: String,
    /// Where the devices come from.
    #[serde(skip)]
    pub origin: Origin,
}

/// Where the running devices came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Origin {
    /// The local file.
    #[default]
    Local,
    /// A configuration received on `P/config/set` (cached in the store).
    Remote,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Local => "local",
            Origin::Remote => "remote",
        }
    }
}

fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    null_as_default(d)
}

/// A section written with nothing under it (`metrics:` with its keys
/// commented out) takes its defaults.
fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Identity of this gateway: the default MQTT client id and a topic segment.
    pub id: Name,
    /// Where the store and caches live.
    #[serde(default = "GatewayConfig::default_state_dir")]
    pub state_dir: PathBuf,
    /// How often the retained `P/status` is refreshed with the counters.
    #[serde(default = "GatewayConfig::default_status_interval")]
    pub status_interval: Duration,
}

impl GatewayConfig {
    fn default_state_dir() -> PathBuf {
        PathBuf::from("/var/lib/fieldgate")
    }
    fn default_status_interval() -> Duration {
        Duration::from_secs(60)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Readings wait at most this long in memory before they are committed:
    /// the most a power cut or a crash can lose.
    pub flush_interval: Duration,
    /// A batch is committed early once it holds this many changes.
    pub flush_rows: Bounded<1, 100_000>,
    /// Disk space the queue may use (pages in use in the database file).
    pub max_bytes: Option<ByteSize>,
    /// Readings the queue may hold.
    pub max_rows: Option<u64>,
    /// Readings older than this are dropped.
    pub max_age: Option<Duration>,
    /// Readings held in memory while the disk refuses writes (disk full).
    pub memory_buffer: Bounded<1, 10_000_000>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            flush_interval: Duration::from_millis(200),
            flush_rows: Bounded(1_000),
            max_bytes: Some(ByteSize(512 << 20)),
            max_rows: None,
            max_age: None,
            memory_buffer: Bounded(100_000),
        }
    }
}

/// `metrics:` the optional Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve `GET /metrics`, e.g. `127.0.0.1:9464`; off when unset.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

/// How downstream commands are taken.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    /// A command issued longer ago than this (its `issued_at`) is answered
    /// `expired` instead of run.
    pub max_age: Duration,
    /// Larger command payloads are rejected unread.
    pub max_payload: ByteSize,
    /// How long command ids are remembered, so a repeated one is answered
    /// again rather than run again.
    pub journal_retention: Duration,
    /// Command ids kept at most; past it the oldest answered ones go first,
    /// so a flood of commands cannot fill the card.
    pub journal_max: u64,
    /// The client id of the second MQTT connection, the one that takes
    /// commands and configurations on a session the broker keeps. Defaults
    /// to the MQTT client id with `-cmd` appended; `{machine_id}` is
    /// replaced as in `mqtt.client_id`. It must differ from the telemetry
    /// connection's id, or each connection would push the other off.
    pub client_id: Option<String>,
    /// MQTT 5: how long the broker keeps that session (and the commands
    /// queued in it) while the gateway is offline. MQTT 3.1.1 says nothing
    /// of it: the broker's own setting decides (mosquitto:
    /// `persistent_client_expiration`).
    pub session_expiry: Duration,
}

impl CommandsConfig {
    /// Checks across keys, as (path, message); `telemetry_id` is what
    /// `mqtt.client_id` (or `gateway.id`) says, before substitution.
    fn problems(&self, telemetry_id: &str) -> Vec<(String, String)> {
        let mut found = Vec::new();
        if let Some(id) = &self.client_id {
            let key = "commands.client_id".to_owned();
            if id.is_empty() {
                found.push((key, "must not be empty".into()));
            } else if id.replace(MACHINE_ID, "").contains(['{', '}']) {
                found.push((key, format!("`{id}`: only {MACHINE_ID} is substituted")));
            } else if id == telemetry_id {
                found.push((
                    key,
                    format!(
                        "`{id}` is the telemetry connection's client id too: the broker would \
                         close one connection whenever the other connects"
                    ),
                ));
            }
        }
        let expiry = self.session_expiry.get();
        if expiry < std::time::Duration::from_secs(1) {
            found.push((
                "commands.session_expiry".into(),
                "must be at least 1s".into(),
            ));
        } else if expiry.as_secs() > u64::from(u32::MAX) {
            found.push((
                "commands.session_expiry".into(),
                format!("must be at most {}s (MQTT 5's largest)", u32::MAX),
            ));
        }
        found
    }
}

impl Default for CommandsConfig {
    fn default() -> Self {
        CommandsConfig {
            max_age: Duration::from_secs(300),
            max_payload: ByteSize(16 << 10),
            journal_retention: Duration::from_secs(7 * 86_400),
            journal_max: 100_000,
            client_id: None,
            session_expiry: Duration::from_secs(86_400),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `fieldgate=debug`; `RUST_LOG` wins.
    #[serde(default)]
    pub level: Option<String>,
}

/// A piece of an MQTT topic: no wildcards, no `/` at either end, not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSegment(String);

impl TopicSegment {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for TopicSegment {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bad = text.is_empty()
            || text.starts_with('/')
            || text.ends_with('/')
            || text.contains(['+', '#', '\0']);
        if bad {
            return Err(serde::de::Error::custom(format!(
                "invalid topic prefix `{text}`, expected topic levels without `+`, `#` or a leading or trailing `/`"
            )));
        }
        Ok(TopicSegment(text))
    }
}

/// An integer that must lie in `MIN..=MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounded<const MIN: u64, const MAX: u64>(pub u64);

impl<const MIN: u64, const MAX: u64> Bounded<MIN, MAX> {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if (MIN..=MAX).contains(&v) {
            Ok(Bounded(v))
        } else {
            Err(serde::de::Error::invalid_value(
                serde::de::Unexpected::Unsigned(v),
                &format!("an integer from {MIN} to {MAX}").as_str(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands(json: serde_json::Value) -> CommandsConfig {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_downstream_client_id_and_session_expiry_are_checked() {
        let defaults = CommandsConfig::default();
        assert_eq!(defaults.session_expiry.get().as_secs(), 86_400);
        assert!(defaults.problems("gw").is_empty());
        let paths = |c: CommandsConfig| -> Vec<String> {
            c.problems("gw").into_iter().map(|(path, _)| path).collect()
        };
        assert!(paths(commands(serde_json::json!({ "client_id": "gw-commands" }))).is_empty());
        // The telemetry connection's id would make the two push each other off.
        let same = commands(serde_json::json!({ "client_id": "gw" }));
        let found = same.problems("gw");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].1.contains("close one connection"), "{found:?}");
        for bad in ["", "cmd-{hostname}"] {
            assert_eq!(
                paths(commands(serde_json::json!({ "client_id": bad }))),
                ["commands.client_id"],
                "{bad:?}"
            );
        }
        for bad in ["0s", "200ms", "60000d"] {
            assert_eq!(
                paths(commands(serde_json::json!({ "session_expiry": bad }))),
                ["commands.session_expiry"],
                "{bad}"
            );
        }
    }
}
