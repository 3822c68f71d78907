//! The YAML of the `ble:` section and of `kind: ble` devices.

use std::fmt;

use serde::{Deserialize, Deserializer};

use crate::config::report::{self, Aggregate, Deadband, PointReport, Report};
use crate::config::{BatchConfig, DeviceSpec, Duration, PointSpec, duplicate_names};
use crate::reading::{Name, Priority, Qos};

/// `ble:` at the top of the file: the Bluetooth adapter that scans for
/// every BLE device.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BleConfig {
    /// The BlueZ adapter (`hci0`, `hci1`, …); the first one BlueZ lists when
    /// unset.
    pub adapter: Option<String>,
    /// How often to try again while there is no adapter, no BlueZ or no D-Bus.
    pub retry_interval: Duration,
    /// When no advertisement at all arrives for this long although devices
    /// that advertise are configured, discovery is restarted, then the
    /// adapter power-cycled (BlueZ scans are known to stop silently after
    /// hours on a Raspberry Pi). `0s` turns the watchdog off.
    pub watchdog: Duration,
}

impl Default for BleConfig {
    fn default() -> Self {
        BleConfig {
            adapter: None,
            retry_interval: Duration::from_secs(10),
            watchdog: Duration::from_secs(120),
        }
    }
}

/// A `kind: ble` device: a sensor that advertises its readings, or one the
/// gateway connects to and reads over GATT.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BleDevice {
    pub name: Name,
    /// The device's Bluetooth address (`A4:C1:38:12:34:56`); this or `local_name`.
    #[serde(default)]
    pub address: Option<MacAddress>,
    /// The name the device advertises (its local name), when its address is
    /// random or unknown; this or `address`.
    #[serde(default)]
    pub local_name: Option<String>,
    /// How to read it: `bthome`, `ruuvi`, `atc`, `pvvx` (advertisements) or
    /// `gatt` (a connection).
    pub decoder: Decoder,
    /// `bthome` only: the device's 16-byte encryption key, as 32 hex digits.
    /// With a key, only encrypted advertisements are accepted.
    #[serde(default)]
    pub bindkey: Option<BindKey>,
    /// At most one reading per interval (advertisements repeat every second
    /// or faster); `0s` keeps every new measurement.
    #[serde(default = "BleDevice::default_min_interval")]
    pub min_interval: Duration,
    /// The deadband of every measurement of the device (advertisements do
    /// not list their points; a characteristic's own `deadband` wins).
    #[serde(default)]
    pub deadband: Option<Deadband>,
    /// Measurements held back by a deadband are sent at least this often.
    #[serde(default = "BleDevice::default_heartbeat")]
    pub heartbeat: Duration,
    /// A device silent for this long is reported stale (a bad reading and a
    /// problem on `P/status`).
    #[serde(default = "BleDevice::default_stale_after")]
    pub stale_after: Duration,
    /// Reported `offline` when no reading carried a value for this long;
    /// for `gatt` three polls, for advertisements three `min_interval`s
    /// but at least 60 s (adverts are lost in radio noise) when unset.
    #[serde(default)]
    pub offline_after: Option<Duration>,
    /// `gatt` only: how often the `mode: read` characteristics are read.
    #[serde(default = "BleDevice::default_poll")]
    pub poll: Duration,
    /// `gatt` only: the characteristics to read, one point each.
    #[serde(default)]
    pub characteristics: Vec<Characteristic>,
    /// MQTT QoS of this device's readings; `mqtt.qos` when unset.
    #[serde(default)]
    pub qos: Option<Qos>,
    #[serde(default)]
    pub priority: Priority,
    /// Several readings per publish, as a JSON array.
    #[serde(default)]
    pub batch: Option<BatchConfig>,
}

impl BleDevice {
    fn default_min_interval() -> Duration {
        Duration::from_secs(10)
    }
    fn default_stale_after() -> Duration {
        Duration::from_secs(300)
    }
    fn default_poll() -> Duration {
        Duration::from_secs(30)
    }
    fn default_heartbeat() -> Duration {
        report::DEFAULT_HEARTBEAT
    }

    /// Whether an advertised address and local name are this device's.
    pub fn matches(&self, address: [u8; 6], local_name: Option<&str>) -> bool {
        match (&self.address, &self.local_name) {
            (Some(mac), _) => mac.0 == address,
            (None, Some(name)) => local_name == Some(name.as_str()),
            (None, None) => false,
        }
    }

    /// How the device is found, for logs: its address or its name.
    pub fn identity(&self) -> String {
        match (&self.address, &self.local_name) {
            (Some(mac), _) => mac.to_string(),
            (None, Some(name)) => format!("name {name:?}"),
            (None, None) => "nothing".into(),
        }
    }
}

impl DeviceSpec for BleDevice {
    crate::common_device_fields!();
    /// The characteristics of a `gatt` device; advertisements have no
    /// points to write (their names come from the decoder).
    fn points(&self) -> Vec<PointSpec> {
        self.characteristics
            .iter()
            .map(|c| PointSpec {
                name: c.point.to_string(),
                writable: c.writable,
                min: None,
                max: None,
            })
            .collect()
    }

    fn offline_after(&self) -> Duration {
        if self.decoder == Decoder::Gatt {
            return report::offline_after_polls(self.offline_after, self.poll);
        }
        let adverts = report::offline_after_polls(None, self.min_interval);
        let unset = adverts.max(report::DEFAULT_OFFLINE_AFTER);
        self.offline_after.unwrap_or(unset)
    }

    fn report(&self) -> Report {
        let report = |c: &Characteristic| PointReport {
            deadband: c.deadband.or(self.deadband),
            aggregate: c.aggregate.clone(),
        };
        Report {
            heartbeat: self.heartbeat,
            deadband: self.deadband,
            points: (self.characteristics.iter())
                .map(|c| (c.point.to_string(), report(c)))
                .collect(),
        }
    }

    fn problems(&self) -> Vec<(String, String)> {
        let mut found = report::heartbeat_problems(self.heartbeat);
        found.extend(report::offline_after_problems(self.offline_after));
        match (&self.address, &self.local_name) {
            (Some(_), Some(_)) => found.push((
                "local_name".into(),
                "set either address or local_name, not both".into(),
            )),
            (None, None) => found.push((
                "address".into(),
                "expected the device's address (or its advertised local_name)".into(),
            )),
            _ => {}
        }
        if self.local_name.as_deref() == Some("") {
            found.push(("local_name".into(), "must not be empty".into()));
        }
        if self.bindkey.is_some() && self.decoder != Decoder::Bthome {
            found.push((
                "bindkey".into(),
                format!(
                    "only decoder bthome reads encrypted advertisements; {} has no bindkey",
                    self.decoder
                ),
            ));
        }
        if self.stale_after.get().is_zero() {
            found.push(("stale_after".into(), "must be at least 1ms".into()));
        }
        if self.decoder == Decoder::Gatt {
            if self.characteristics.is_empty() {
                found.push((
                    "characteristics".into(),
                    "decoder gatt needs at least one characteristic".into(),
                ));
            }
            let reads = self.characteristics.iter().any(|c| c.mode == Mode::Read);
            if reads && self.poll.get().is_zero() {
                found.push(("poll".into(), "must be at least 1ms".into()));
            }
        } else if !self.characteristics.is_empty() {
            found.push((
                "characteristics".into(),
                format!(
                    "only decoder gatt reads characteristics; {} reads advertisements",
                    self.decoder
                ),
            ));
        }
        let points = self.characteristics.iter().map(|c| &c.point);
        found.extend(duplicate_names("characteristics", "point", points));
        for (i, c) in self.characteristics.iter().enumerate() {
            for (key, v) in [("scale", c.scale), ("offset", c.offset)] {
                if !v.is_finite() {
                    found.push((
                        format!("characteristics[{i}].{key}"),
                        "expected a finite number".into(),
                    ));
                }
            }
            let rules = PointReport {
                deadband: c.deadband,
                aggregate: c.aggregate.clone(),
            };
            // Every characteristic type is a number.
            found.extend(report::point_problems(
                &format!("characteristics[{i}]"),
                &rules,
                true,
            ));
            if c.scale == 0.0 {
                found.push((
                    format!("characteristics[{i}].scale"),
                    "must not be 0".into(),
                ));
            }
        }
        found
    }
}

/// How a device's data is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decoder {
    /// BTHome v2 service data (UUID 0xFCD2); encrypted with `bindkey`.
    Bthome,
    /// RuuviTag manufacturer data (id 0x0499), data format 5 (RAWv2) and the
    /// other formats the Ruuvi protocol crate reads.
    Ruuvi,
    /// The ATC1441 format of the ATC_MiThermometer firmware (UUID 0x181A).
    Atc,
    /// The pvvx custom format of the ATC_MiThermometer firmware (UUID 0x181A).
    Pvvx,
    /// A connection: characteristics read or subscribed to.
    Gatt,
}

impl Decoder {
    pub fn as_str(self) -> &'static str {
        match self {
            Decoder::Bthome => "bthome",
            Decoder::Ruuvi => "ruuvi",
            Decoder::Atc => "atc",
            Decoder::Pvvx => "pvvx",
            Decoder::Gatt => "gatt",
        }
    }
}

impl fmt::Display for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One GATT characteristic, read as one point.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Characteristic {
    /// The point this characteristic's value becomes.
    pub point: Name,
    /// The characteristic's UUID: 16-bit (`2a37`) or full
    /// (`00002a37-0000-1000-8000-00805f9b34fb`).
    pub uuid: BleUuid,
    /// The UUID of the service that holds it.
    pub service: BleUuid,
    /// `notify` (subscribe; the device sends changes) or `read` (read every
    /// `poll`).
    #[serde(default)]
    pub mode: Mode,
    /// How the value is encoded.
    #[serde(rename = "type", default)]
    pub value_type: ValueType,
    /// Byte order of multi-byte values: `little` (the Bluetooth default) or `big`.
    #[serde(default)]
    pub endian: Endian,
    /// Bytes to skip before the value (for example a flags byte).
    #[serde(default)]
    pub skip: u16,
    /// value = raw × scale + offset
    #[serde(default = "Characteristic::default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Commands may write this characteristic (the value is encoded back
    /// through offset, scale and type).
    #[serde(default)]
    pub writable: bool,
    /// Sent only when it moved beyond this; the device's `deadband` when
    /// unset.
    #[serde(default)]
    pub deadband: Option<Deadband>,
    /// Sent as one summary per window instead.
    #[serde(default)]
    pub aggregate: Option<Aggregate>,
}

impl Characteristic {
    fn default_scale() -> f64 {
        1.0
    }
}

/// How a characteristic is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Notify,
    Read,
}

/// The encoding of a characteristic's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    #[default]
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Endian {
    #[default]
    Little,
    Big,
}

/// A BTHome encryption key (16 bytes). A secret: its `Debug` shows no
/// byte of it, and errors about it never repeat the text they were given,
/// so it cannot reach a log or an answer on MQTT.
#[derive(Clone, PartialEq, Eq)]
pub struct BindKey([u8; 16]);

impl BindKey {
    pub fn new(bytes: [u8; 16]) -> BindKey {
        BindKey(bytes)
    }

    /// 32 hex digits (blanks and dashes between them are allowed, as some
    /// tools print keys in groups).
    pub fn parse(text: &str) -> Option<BindKey> {
        let digits: Vec<u8> = text
            .bytes()
            .filter(|b| !matches!(b, b' ' | b'-' | b':'))
            .collect();
        if digits.len() != 32 {
            return None;
        }
        let mut key = [0u8; 16];
        for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(BindKey(key))
    }

    pub fn bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for BindKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BindKey(<redacted>)")
    }
}

const BINDKEY_EXPECTED: &str = "invalid bindkey, expected 32 hex digits (16 bytes) such as the one the device's firmware shows";

impl<'de> Deserialize<'de> for BindKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Takes any scalar, so that a key YAML reads as a number is not
        /// echoed by serde's "invalid type" message.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = BindKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 hex digits")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BindKey, E> {
                BindKey::parse(v).ok_or_else(|| E::custom(BINDKEY_EXPECTED))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<BindKey, E> {
                Err(E::custom(BINDKEY_EXPECTED))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<BindKey, E> {
                Err(E::custom(BINDKEY_EXPECTED))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<BindKey, E> {
                Err(E::custom(BINDKEY_EXPECTED))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<BindKey, E> {
                Err(E::custom(BINDKEY_EXPECTED))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A Bluetooth device address, written `A4:C1:38:12:34:56`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    pub fn parse(text: &str) -> Option<MacAddress> {
        let mut bytes = [0u8; 6];
        let mut parts = text.split([':', '-']);
        for byte in &mut bytes {
            let part = parts.next()?;
            if part.len() != 2 {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        parts.next().is_none().then_some(MacAddress(bytes))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02X}:{b:02X}:{c:02X}:{d:02X}:{e:02X}:{g:02X}")
    }
}

impl<'de> Deserialize<'de> for MacAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        MacAddress::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid Bluetooth address `{text}`, expected six hex bytes such as A4:C1:38:12:34:56"
            ))
        })
    }
}

/// A service or characteristic UUID: 16-bit (`180d`, `0x180d`) or full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BleUuid(pub uuid::Uuid);

impl BleUuid {
    /// The Bluetooth base UUID with a 16-bit value in it.
    pub const fn from_u16(short: u16) -> BleUuid {
        BleUuid(uuid::Uuid::from_u128(
            ((short as u128) << 96) | 0x0000_0000_0000_1000_8000_0080_5f9b_34fb,
        ))
    }

    pub fn parse(text: &str) -> Option<BleUuid> {
        let short = text.strip_prefix("0x").unwrap_or(text);
        if short.len() == 4 {
            return u16::from_str_radix(short, 16).ok().map(BleUuid::from_u16);
        }
        uuid::Uuid::parse_str(text).ok().map(BleUuid)
    }
}

impl fmt::Display for BleUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for BleUuid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        BleUuid::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid UUID `{text}`, expected a 16-bit UUID such as 2a37 or a full one such as 00002a37-0000-1000-8000-00805f9b34fb"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_uuids_parse() {
        let mac = MacAddress::parse("a4:c1:38:12:34:5F").unwrap();
        assert_eq!(mac.0, [0xA4, 0xC1, 0x38, 0x12, 0x34, 0x5F]);
        assert_eq!(mac.to_string(), "A4:C1:38:12:34:5F");
        for bad in [
            "",
            "A4:C1:38:12:34",
            "A4:C1:38:12:34:56:78",
            "A4C1:38:12:34:56",
            "G4:C1:38:12:34:56",
        ] {
            assert!(MacAddress::parse(bad).is_none(), "{bad}");
        }
        let hr = BleUuid::parse("2a37").unwrap();
        assert_eq!(hr.to_string(), "00002a37-0000-1000-8000-00805f9b34fb");
        assert_eq!(BleUuid::parse("0x2A37"), Some(hr));
        assert_eq!(
            BleUuid::parse("00002a37-0000-1000-8000-00805f9b34fb"),
            Some(hr)
        );
        assert!(BleUuid::parse("2a3").is_none());
    }

    use crate::config::{ConfigError, DeviceConfig, Problem, load_str};

    const HEAD: &str = "gateway: { id: gw }\nmqtt: { url: mqtt://127.0.0.1 }\n";

    fn problems(text: &str) -> Vec<Problem> {
        match load_str(&format!("{HEAD}{text}"), "f.yaml") {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn a_ble_device_and_the_adapter_load_with_defaults() {
        let text = format!(
            "{HEAD}ble: {{ adapter: hci1 }}\ndevices:\n  - {{ name: t, kind: ble, address: 'A4:C1:38:00:00:01', decoder: atc }}\n"
        );
        let config = load_str(&text, "f.yaml").unwrap();
        assert_eq!(config.ble.adapter.as_deref(), Some("hci1"));
        assert_eq!(config.ble.retry_interval, Duration::from_secs(10));
        let DeviceConfig::Ble(d) = &config.devices[0] else {
            panic!("{:?}", config.devices[0]);
        };
        assert_eq!(d.decoder, Decoder::Atc);
        assert_eq!(d.min_interval, Duration::from_secs(10));
        assert_eq!(d.stale_after, Duration::from_secs(300));
        assert!(d.matches([0xA4, 0xC1, 0x38, 0, 0, 1], None));
        assert!(!d.matches([0xA4, 0xC1, 0x38, 0, 0, 2], Some("t")));
        let defaults = load_str(&format!("{HEAD}devices:\n"), "f.yaml").unwrap();
        assert_eq!(defaults.ble, BleConfig::default());
        let empty = load_str(&format!("{HEAD}ble:\ndevices:\n"), "f.yaml").unwrap();
        assert_eq!(empty.ble, BleConfig::default());
    }

    fn positioned(found: &[Problem]) -> Vec<(String, Option<usize>, String)> {
        found
            .iter()
            .map(|p| (p.path.clone(), p.mark.map(|m| m.line), p.message.clone()))
            .collect()
    }

    #[test]
    fn type_errors_name_the_key_and_its_position() {
        let found = positioned(&problems(
            "ble: { adaptor: hci0 }
devices:
  - name: bad
    kind: ble
    address: A4:C1:38
    decoder: ruuvi
    characteristics: [{ point: x, uuid: 2a3, service: 180d, type: u64 }]
",
        ));
        let expected = [
            ("ble.adaptor", 3, "unknown key `adaptor`"),
            (
                "devices[0].address",
                7,
                "invalid Bluetooth address `A4:C1:38`",
            ),
            (
                "devices[0].characteristics[0].uuid",
                9,
                "invalid UUID `2a3`",
            ),
            (
                "devices[0].characteristics[0].type",
                9,
                "unknown value `u64`",
            ),
        ];
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        for ((path, line, message), (p, l, m)) in found.iter().zip(expected) {
            assert_eq!((path.as_str(), *line), (p, Some(l)), "{found:#?}");
            assert!(message.contains(m), "{message}");
        }
    }

    #[test]
    fn address_or_local_name_and_gatt_needs_characteristics() {
        let found = positioned(&problems(
            "devices:
  - name: both
    kind: ble
    address: 'A4:C1:38:00:00:01'
    local_name: ATC_000001
    decoder: atc
  - name: neither
    kind: ble
    decoder: bthome
  - name: gatt
    kind: ble
    local_name: HR
    decoder: gatt
",
        ));
        let at: Vec<(&str, Option<usize>)> =
            found.iter().map(|(p, l, _)| (p.as_str(), *l)).collect();
        // A missing key is reported where its device starts.
        assert_eq!(
            at,
            [
                ("devices[0].local_name", Some(7)),
                ("devices[1].address", Some(9)),
                ("devices[2].characteristics", Some(12)),
            ],
            "{found:#?}"
        );
        assert!(found[0].2.contains("not both"));
        assert!(found[1].2.contains("address"));
        assert!(found[2].2.contains("at least one characteristic"));
    }

    #[test]
    fn a_bindkey_loads_and_never_shows() {
        let text = format!(
            "{HEAD}ble: {{ watchdog: 30s }}\ndevices:\n  - {{ name: t, kind: ble, address: 'A4:C1:38:00:00:01', decoder: bthome, bindkey: 231D39C1D7CC1AB1AEE224CD096DB932 }}\n"
        );
        let config = load_str(&text, "f.yaml").unwrap();
        assert_eq!(config.ble.watchdog, Duration::from_secs(30));
        let DeviceConfig::Ble(d) = &config.devices[0] else {
            panic!("{:?}", config.devices[0]);
        };
        let key = d.bindkey.as_ref().expect("a key");
        assert_eq!(key.bytes()[..3], [0x23, 0x1D, 0x39]);
        assert_eq!(key.bytes()[15], 0x32);
        assert_eq!(
            BindKey::parse("231d39c1-d7cc1ab1-aee224cd-096db932"),
            Some(key.clone())
        );
        let shown = format!("{d:?}");
        assert!(shown.contains("BindKey(<redacted>)"), "{shown}");
        for secret in ["231d", "231D", "35, 29", "0x23", "[35"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert_eq!(BleConfig::default().watchdog, Duration::from_secs(120));
    }

    #[test]
    fn a_bad_bindkey_is_refused_without_being_repeated() {
        let found = problems(
            "devices:
  - { name: a, kind: ble, address: 'A4:C1:38:00:00:01', decoder: bthome, bindkey: 231d39c1d7cc1ab1aee224cd096db9 }
  - { name: b, kind: ble, address: 'A4:C1:38:00:00:02', decoder: bthome, bindkey: 231d39c1d7cc1ab1aee224cd096db9zz }
  - { name: c, kind: ble, address: 'A4:C1:38:00:00:03', decoder: bthome, bindkey: 12345678901234567890 }
",
        );
        let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "devices[0].bindkey",
                "devices[1].bindkey",
                "devices[2].bindkey",
            ],
            "{found:#?}"
        );
        for p in &found {
            for secret in ["231d39", "1234567890"] {
                assert!(!p.message.contains(secret), "{}", p.message);
            }
        }
        assert!(
            found[0].message.contains("32 hex digits"),
            "{}",
            found[0].message
        );
        // Checked once the file reads: the key belongs to bthome.
        let found = problems(
            "devices:
  - { name: d, kind: ble, address: 'A4:C1:38:00:00:04', decoder: atc, bindkey: 231d39c1d7cc1ab1aee224cd096db932 }
",
        );
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].path, "devices[0].bindkey");
        assert!(
            found[0].message.contains("only decoder bthome"),
            "{}",
            found[0].message
        );
        assert!(!found[0].message.contains("231d39"), "{}", found[0].message);
    }

    #[test]
    fn characteristics_belong_to_gatt_and_are_checked() {
        let found = problems(
            "devices:
  - name: hr
    kind: ble
    address: 'AA:BB:CC:DD:EE:03'
    decoder: gatt
    poll: 0s
    characteristics:
      - { point: bpm, uuid: 2a37, service: 180d, skip: 1 }
      - { point: bpm, uuid: 2a19, service: 180f, mode: read, scale: 0 }
  - name: t
    kind: ble
    address: 'A4:C1:38:00:00:01'
    decoder: bthome
    characteristics: [{ point: x, uuid: 2a37, service: 180d }]
",
        );
        let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "devices[0].poll",
                "devices[0].characteristics[1].point",
                "devices[0].characteristics[1].scale",
                "devices[1].characteristics",
            ],
            "{found:#?}"
        );
        assert!(found[3].message.contains("only decoder gatt"));
    }
}
