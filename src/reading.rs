//! The vocabulary every layer speaks: a [`Reading`] of a device, its
//! [`Quality`], and how it travels ([`Delivery`]: QoS and priority). It sits
//! below the configuration, the store, the sources and the uplink, so that
//! each of them can name a reading without naming the others.

use std::fmt;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// One sample of a device: the values of its points at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device: Name,
    /// Milliseconds since the Unix epoch, UTC, as the wall clock said.
    pub ts_ms: i64,
    /// Milliseconds since boot at the same instant (`Clock::mono_ms`): what
    /// corrects `ts_ms` once the wall clock syncs. The boot is the one the
    /// gateway runs in (`Clock::boot_id`); the store records it per row.
    pub mono_ms: i64,
    /// The wall clock was not synchronised when `ts_ms` was taken.
    pub unsynced: bool,
    /// Point name → value (number, bool or string).
    pub values: Map<String, Value>,
    pub quality: Quality,
    /// Why the quality is bad (a timeout, an exception code, …).
    pub error: Option<String>,
    pub delivery: Delivery,
}

/// Writes whole numbers as integers (`65`, not `65.0`), so that a value
/// reads the same from every kind of source: serial lines give integers
/// for `65`, while scaled Modbus registers, BLE factors and simulated
/// signals compute floats. JSON does not tell the two apart, but consumers
/// that compare payloads or infer a column type from the first one do.
/// Beyond 2^53 a float is not exact, and stays a float.
pub fn whole_numbers_as_integers(values: &mut Map<String, Value>) {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    for value in values.values_mut() {
        let Value::Number(n) = value else { continue };
        if !n.is_f64() {
            continue;
        }
        if let Some(x) = n.as_f64().filter(|x| x.fract() == 0.0 && x.abs() < EXACT) {
            *value = Value::from(x as i64);
        }
    }
}

/// Whether the values can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    Good = 0,
    Bad = 1,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Bad => "bad",
        }
    }

    pub fn from_code(code: i64) -> Quality {
        if code == 0 {
            Quality::Good
        } else {
            Quality::Bad
        }
    }
}

/// How a device's readings travel: MQTT QoS and store priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub qos: Qos,
    pub priority: Priority,
}

/// MQTT quality of service, written 0, 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qos {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl Qos {
    pub fn from_u8(v: u8) -> Option<Qos> {
        match v {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            2 => Some(Qos::ExactlyOnce),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Qos {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        u8::try_from(v).ok().and_then(Qos::from_u8).ok_or_else(|| {
            serde::de::Error::invalid_value(serde::de::Unexpected::Unsigned(v), &"0, 1 or 2")
        })
    }
}

/// Which readings leave first when a backlog drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High = 0,
    #[default]
    Normal = 1,
    Low = 2,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn from_rank(rank: i64) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| *p as i64 == rank)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }
}

/// A device or point name: `[a-z0-9_-]+`, at most 64 characters, so it is
/// safe as an MQTT topic segment and a JSON key without escaping.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn parse(text: &str) -> Result<Name, String> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Name(text.to_owned()))
        } else {
            Err(format!(
                "invalid name `{text}`, expected 1 to 64 characters of a-z, 0-9, `_` or `-`"
            ))
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Name::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_floats_become_integers_and_the_rest_stays() {
        let mut values = serde_json::json!({
            "scaled": 65.0, "negative": -3.0, "zero": -0.0, "fraction": 230.5,
            "int": 12, "big": 1e300, "u64": u64::MAX, "on": true, "model": "X1"
        });
        let map = values.as_object_mut().unwrap();
        whole_numbers_as_integers(map);
        assert_eq!(
            serde_json::to_string(map).unwrap(),
            r#"{"big":1e+300,"fraction":230.5,"int":12,"model":"X1","negative":-3,"on":true,"scaled":65,"u64":18446744073709551615,"zero":0}"#
        );
    }

    #[test]
    fn names_are_topic_safe() {
        assert!(Name::parse("boiler_01-a").is_ok());
        for bad in ["", "Boiler", "a/b", "a b", "#", &"x".repeat(65)] {
            assert!(Name::parse(bad).is_err(), "{bad}");
        }
    }
}
