//! The `mqtt:` section: where the broker is, how to prove who we are, and
//! how hard we may push.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use super::{Bounded, ByteSize, Duration, Qos, TopicSegment};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883, TLS).
    #[serde(default)]
    pub url: Option<BrokerUrl>,
    /// Several brokers for failover, tried in order; instead of `url`.
    #[serde(default)]
    pub urls: Vec<BrokerUrl>,
    /// `"3.1.1"` or `"5"`.
    #[serde(default)]
    pub protocol: Protocol,
    /// Defaults to `gateway.id`. `{machine_id}` is replaced by the content
    /// of `machine_id_file`, so that one image serves many gateways.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Where `{machine_id}` comes from.
    #[serde(default = "MqttConfig::default_machine_id_file")]
    pub machine_id_file: PathBuf,
    #[serde(default)]
    pub username: Option<String>,
    /// At most one of `password`, `password_file`, `token_file`, `token_command`.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A short-lived token (OAuth 2.0, JWT) used as the password, read again
    /// before every connection.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// A command printing the token on stdout, run before every connection.
    #[serde(default)]
    pub token_command: Option<String>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// `0` (or `0s`) turns keep-alive off.
    #[serde(
        default = "MqttConfig::default_keep_alive",
        deserialize_with = "keep_alive"
    )]
    pub keep_alive: Duration,
    /// QoS of devices that do not set their own.
    #[serde(default = "MqttConfig::default_qos")]
    pub qos: Qos,
    #[serde(default = "MqttConfig::default_topic_prefix")]
    pub topic_prefix: TopicSegment,
    /// Readings published and not yet acknowledged, at most.
    #[serde(default = "MqttConfig::default_max_inflight")]
    pub max_inflight: Bounded<1, 65_000>,
    /// Publishes per second at most; 0 means no limit.
    #[serde(default)]
    pub max_messages_per_second: u32,
    /// First reconnect delay; doubles on every failure up to `backoff_max`.
    #[serde(default = "MqttConfig::default_backoff_min")]
    pub backoff_min: Duration,
    #[serde(default = "MqttConfig::default_backoff_max")]
    pub backoff_max: Duration,
    /// A connection resets the backoff only once it stayed up this long
    /// and the broker acknowledged something on it.
    #[serde(default = "MqttConfig::default_stable_after")]
    pub stable_after: Duration,
    /// The first connection after a start waits a random delay up to this.
    #[serde(default = "MqttConfig::default_connect_jitter")]
    pub connect_jitter: Duration,
    /// Backlog publishes per second at most (rows stored before the
    /// connection came up; live readings are not paced); 0 = no limit.
    #[serde(default = "MqttConfig::default_drain_rate")]
    pub drain_rate: u32,
    /// The largest packet the broker takes (MQTT 3.1.1 brokers do not say;
    /// an MQTT 5 broker's own limit wins when lower). Larger batches are
    /// split, larger single readings go to the dead letters unsent.
    #[serde(default = "MqttConfig::default_max_packet_size")]
    pub max_packet_size: ByteSize,
    /// Times the broker may close the connection right after a row before
    /// the row goes to the dead letters.
    #[serde(default = "MqttConfig::default_max_attempts")]
    pub max_attempts: Bounded<1, 100>,
    /// `json` (the gateway's own topics) or `sparkplug` (Sparkplug B 3.0,
    /// set up in the `sparkplug:` section).
    #[serde(default)]
    pub format: super::Format,
}

impl MqttConfig {
    fn default_drain_rate() -> u32 {
        1_000
    }
    fn default_max_packet_size() -> ByteSize {
        ByteSize(256 << 10)
    }
    fn default_max_attempts() -> Bounded<1, 100> {
        Bounded(3)
    }
    fn default_keep_alive() -> Duration {
        Duration::from_secs(30)
    }
    fn default_qos() -> Qos {
        Qos::AtLeastOnce
    }
    fn default_topic_prefix() -> TopicSegment {
        TopicSegment("fieldgate".into())
    }
    fn default_max_inflight() -> Bounded<1, 65_000> {
        Bounded(100)
    }
    fn default_backoff_min() -> Duration {
        Duration::from_millis(500)
    }
    fn default_backoff_max() -> Duration {
        Duration::from_secs(60)
    }
    fn default_machine_id_file() -> PathBuf {
        PathBuf::from("/etc/machine-id")
    }
    fn default_stable_after() -> Duration {
        Duration::from_secs(30)
    }
    fn default_connect_jitter() -> Duration {
        Duration::from_secs(1)
    }

    /// The client id: `client_id` with `{machine_id}` replaced, or
    /// `gateway_id` when it is not set.
    pub fn resolve_client_id(&self, gateway_id: &str) -> Result<String, ClientIdError> {
        match &self.client_id {
            Some(template) => self.substitute(template),
            None => Ok(gateway_id.to_owned()),
        }
    }

    /// The client id of the downstream connection (`commands.client_id`):
    /// `template` with `{machine_id}` replaced, or the telemetry
    /// connection's id with `-cmd` appended.
    pub fn resolve_downstream_client_id(
        &self,
        template: Option<&str>,
        gateway_id: &str,
    ) -> Result<String, ClientIdError> {
        match template {
            Some(template) => self.substitute(template),
            None => Ok(format!("{}-cmd", self.resolve_client_id(gateway_id)?)),
        }
    }

    /// `template` with `{machine_id}` replaced; the file is read only when
    /// the placeholder is there.
    fn substitute(&self, template: &str) -> Result<String, ClientIdError> {
        if !template.contains(MACHINE_ID) {
            return Ok(template.to_owned());
        }
        let id = machine_id(&self.machine_id_file)?;
        Ok(template.replace(MACHINE_ID, &id))
    }

    /// The brokers in the order they are tried.
    pub fn brokers(&self) -> Vec<BrokerUrl> {
        self.url.iter().chain(&self.urls).cloned().collect()
    }

    /// How the gateway proves who it is, if at all.
    pub fn credentials(&self) -> Credentials {
        let secret = if let Some(p) = &self.password {
            Secret::Password(p.clone())
        } else if let Some(f) = &self.password_file {
            Secret::PasswordFile(f.clone())
        } else if let Some(f) = &self.token_file {
            Secret::TokenFile(f.clone())
        } else if let Some(c) = &self.token_command {
            Secret::TokenCommand(c.clone())
        } else {
            Secret::None
        };
        Credentials {
            username: self.username.clone(),
            secret,
        }
    }

    /// Checks across keys, as (path, message).
    pub(super) fn problems(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        let mut push = |key: &str, message: String| found.push((format!("mqtt.{key}"), message));
        match (&self.url, self.urls.is_empty()) {
            (None, true) => push("url", "missing: set `url` (or `urls` for failover)".into()),
            (Some(_), false) => push("urls", "set either `url` or `urls`, not both".into()),
            _ => {}
        }
        // The password keys are checked by the loader, which knows which
        // of them a variable set.
        let brokers = self.brokers();
        if let Some(tls) = &self.tls {
            if brokers.iter().any(|b| !b.tls) {
                push("tls", "TLS settings need mqtts:// broker URLs".into());
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                push(
                    "tls",
                    "cert_file and key_file go together (mutual TLS)".into(),
                );
            }
        }
        if let Some(id) = &self.client_id {
            if id.replace(MACHINE_ID, "").contains(['{', '}']) {
                push(
                    "client_id",
                    format!("`{id}`: only {MACHINE_ID} is substituted"),
                );
            } else if id.is_empty() {
                push("client_id", "must not be empty".into());
            }
        }
        if self.backoff_min > self.backoff_max {
            push(
                "backoff_min",
                format!("must not exceed mqtt.backoff_max ({})", self.backoff_max),
            );
        }
        if self.backoff_min.get().is_zero() {
            push("backoff_min", "must be at least 1ms".into());
        }
        let keep_alive = self.keep_alive.get();
        if !keep_alive.is_zero() && keep_alive < std::time::Duration::from_secs(1) {
            push("keep_alive", "expected 0 (off) or at least 1s".into());
        }
        found
    }
}

/// `keep_alive` takes a duration, or a bare `0` for off: every other key
/// refuses bare numbers because their unit would be a guess, but zero is
/// zero in any unit, and `0` is what MQTT itself uses for off.
fn keep_alive<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("0 (off) or a duration such as 30s")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            if v.trim() == "0" {
                return Ok(Duration::from_millis(0));
            }
            v.parse().map_err(E::custom)
        }
        /// A bare `30` is refused with the same words as in any other key.
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            self.visit_str(&v.to_string())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
            self.visit_str(&v.to_string())
        }
    }
    d.deserialize_any(Visitor)
}

/// The placeholder in `mqtt.client_id` for the machine id.
pub const MACHINE_ID: &str = "{machine_id}";

/// Why `{machine_id}` could not be filled in.
#[derive(Debug, thiserror::Error)]
pub enum ClientIdError {
    #[error(
        "the MQTT client id uses {MACHINE_ID}, but {} cannot be read: {source} (set mqtt.machine_id_file or a fixed client_id)",
        path.display()
    )]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the MQTT client id uses {MACHINE_ID}, but {} is empty (run systemd-machine-id-setup, or set a fixed client_id)",
        path.display()
    )]
    Empty { path: PathBuf },
    #[error(
        "the MQTT client id uses {MACHINE_ID}, but {} does not hold a machine id (expected one line of letters and digits)",
        path.display()
    )]
    Invalid { path: PathBuf },
}

/// The machine id in `path` (`/etc/machine-id`: 32 hex digits and a newline).
pub fn machine_id(path: &Path) -> Result<String, ClientIdError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClientIdError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let id = text.trim();
    if id.is_empty() {
        return Err(ClientIdError::Empty {
            path: path.to_owned(),
        });
    }
    if id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(ClientIdError::Invalid {
            path: path.to_owned(),
        });
    }
    Ok(id.to_owned())
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    V311,
    V5,
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Written as a string ("3.1.1", "5") or a bare 5 / 3.1.1.
        let text = String::deserialize(d)?;
        match text.as_str() {
            "3.1.1" | "311" | "4" => Ok(Protocol::V311),
            "5" | "5.0" => Ok(Protocol::V5),
            _ => Err(serde::de::Error::invalid_value(
                serde::de::Unexpected::Str(&text),
                &"\"3.1.1\" or \"5\"",
            )),
        }
    }
}

/// Server verification (always on) and, for mutual TLS, our certificate.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificates (PEM) to verify the broker; the system's trust roots
    /// when unset.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM), for brokers that require one.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, RSA or EC).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// Username and where the password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: Option<String>,
    pub secret: Secret,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    None,
    Password(String),
    PasswordFile(PathBuf),
    TokenFile(PathBuf),
    TokenCommand(String),
}

// Never print a password into a log.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::None => f.write_str("None"),
            Secret::Password(_) => f.write_str("Password(…)"),
            Secret::PasswordFile(p) => write!(f, "PasswordFile({})", p.display()),
            Secret::TokenFile(p) => write!(f, "TokenFile({})", p.display()),
            Secret::TokenCommand(c) => write!(f, "TokenCommand({c})"),
        }
    }
}

/// Where a broker is, and whether to speak TLS to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerUrl {
    pub fn parse(text: &str) -> Result<BrokerUrl, String> {
        let expected = "expected mqtt://host[:port] or mqtts://host[:port]";
        let (tls, rest) = match text.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => (false, rest),
            Some(("mqtts" | "ssl" | "tls", rest)) => (true, rest),
            Some((scheme, _)) => {
                return Err(format!(
                    "unsupported scheme `{scheme}` in `{text}`, {expected}"
                ));
            }
            None => return Err(format!("invalid broker URL `{text}`, {expected}")),
        };
        let rest = rest.trim_end_matches('/');
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = match rest.rsplit_once(':') {
            // An IPv6 literal keeps its colons inside brackets.
            Some((host, port)) if !port.contains(']') => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("invalid port `{port}` in `{text}`, {expected}"))?;
                (host, port)
            }
            _ => (rest, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '@', '?', '#']) {
            return Err(format!("invalid host in `{text}`, {expected}"));
        }
        Ok(BrokerUrl {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for BrokerUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BrokerUrl::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mqtt(client_id: Option<&str>, machine_id_file: &Path) -> MqttConfig {
        let mut json = serde_json::json!({
            "url": "mqtt://127.0.0.1",
            "machine_id_file": machine_id_file,
        });
        if let Some(c) = client_id {
            json["client_id"] = c.into();
        }
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn machine_id_is_substituted_into_the_client_id() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("machine-id");
        std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").unwrap();
        let id = |c| mqtt(c, &file).resolve_client_id("pi-boiler-01").unwrap();
        assert_eq!(id(None), "pi-boiler-01");
        assert_eq!(id(Some("fixed")), "fixed");
        assert_eq!(
            id(Some("gw-{machine_id}")),
            "gw-0123456789abcdef0123456789abcdef"
        );
        assert!(mqtt(Some("gw-{machine_id}"), &file).problems().is_empty());
        let downstream = |t, c| {
            mqtt(c, &file)
                .resolve_downstream_client_id(t, "pi-boiler-01")
                .unwrap()
        };
        assert_eq!(downstream(None, None), "pi-boiler-01-cmd");
        assert_eq!(downstream(None, Some("fixed")), "fixed-cmd");
        assert_eq!(
            downstream(Some("cmd-{machine_id}"), Some("fixed")),
            "cmd-0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn a_missing_or_empty_machine_id_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("machine-id");
        let config = mqtt(Some("{machine_id}"), &file);
        let missing = config.resolve_client_id("gw").unwrap_err().to_string();
        assert!(missing.contains("cannot be read"), "{missing}");
        assert!(missing.contains(&file.display().to_string()), "{missing}");
        std::fs::write(&file, "\n").unwrap();
        let empty = config.resolve_client_id("gw").unwrap_err().to_string();
        assert!(empty.contains("is empty"), "{empty}");
        std::fs::write(&file, "not a / machine id\n").unwrap();
        let bad = config.resolve_client_id("gw").unwrap_err().to_string();
        assert!(bad.contains("does not hold a machine id"), "{bad}");
        // Without the placeholder the file is never read.
        assert_eq!(mqtt(Some("x"), &file).resolve_client_id("gw").unwrap(), "x");
    }

    #[test]
    fn other_placeholders_are_config_errors() {
        let file = Path::new("/nonexistent");
        let problems = mqtt(Some("gw-{hostname}"), file).problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].1.contains("only {machine_id}"), "{problems:?}");
    }

    #[test]
    fn broker_urls() {
        let url = |t: &str| BrokerUrl::parse(t).map(|u| (u.host, u.port, u.tls));
        assert_eq!(
            url("mqtt://127.0.0.1:1884"),
            Ok(("127.0.0.1".into(), 1884, false))
        );
        assert_eq!(
            url("mqtt://broker.local"),
            Ok(("broker.local".into(), 1883, false))
        );
        assert_eq!(
            url("mqtts://broker.local"),
            Ok(("broker.local".into(), 8883, true))
        );
        assert_eq!(url("mqtt://[::1]:1885"), Ok(("::1".into(), 1885, false)));
        assert!(
            url("http://x")
                .unwrap_err()
                .contains("unsupported scheme `http`")
        );
        assert!(url("mqtt://x:0").unwrap_err().contains("invalid port"));
        assert!(
            url("broker:1883")
                .unwrap_err()
                .contains("invalid broker URL")
        );
        assert_eq!(
            BrokerUrl::parse("mqtts://h").unwrap().to_string(),
            "mqtts://h:8883"
        );
    }

    #[test]
    fn keep_alive_takes_a_bare_zero_for_off_and_durations_otherwise() {
        let load = |value: &str| {
            let text = format!(
                "gateway: {{ id: t, state_dir: /tmp/t }}\nmqtt:\n  url: mqtt://127.0.0.1\n  keep_alive: {value}\n"
            );
            crate::config::load_str(&text, "f.yaml").map(|c| c.mqtt.keep_alive.get())
        };
        let s = std::time::Duration::from_secs;
        assert_eq!(load("0").unwrap(), s(0));
        assert_eq!(load("\"0\"").unwrap(), s(0));
        assert_eq!(load("0s").unwrap(), s(0));
        assert_eq!(load("45s").unwrap(), s(45));
        for bad in ["30", "1.5", "soon", "500ms"] {
            let err = load(bad).unwrap_err().to_string();
            assert!(err.contains("mqtt.keep_alive"), "{bad}: {err}");
        }
        let err = load("30").unwrap_err().to_string();
        assert!(err.contains("invalid duration `30`"), "{err}");
    }
}
