//! `mqtt.format: sparkplug` and the `sparkplug:` section: the gateway as a
//! Sparkplug B 3.0 edge node.

use serde::{Deserialize, Deserializer};

use super::Qos;

/// How telemetry travels: the gateway's own JSON topics, or Sparkplug B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Sparkplug,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkplugConfig {
    /// The Sparkplug group: `spBv1.0/{group_id}/…`.
    pub group_id: SparkplugId,
    /// The edge node id; `gateway.id` when not set.
    #[serde(default)]
    pub edge_node: Option<SparkplugId>,
    /// The primary host application whose `spBv1.0/STATE/{host}` gates
    /// the births.
    #[serde(default)]
    pub primary_host: Option<SparkplugId>,
    /// QoS of births, data and DDEATH: 0 as the specification says, or 1
    /// for brokers and hosts that take it (delivery then survives a
    /// reconnect, not only a connection).
    #[serde(default)]
    pub qos: SparkplugQos,
}

/// 0 or 1 (QoS 2 is not Sparkplug).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparkplugQos(pub Qos);

impl Default for SparkplugQos {
    fn default() -> SparkplugQos {
        SparkplugQos(Qos::AtMostOnce)
    }
}

impl<'de> Deserialize<'de> for SparkplugQos {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        match v {
            0 => Ok(SparkplugQos(Qos::AtMostOnce)),
            1 => Ok(SparkplugQos(Qos::AtLeastOnce)),
            _ => Err(serde::de::Error::invalid_value(
                serde::de::Unexpected::Unsigned(v),
                &"0 or 1",
            )),
        }
    }
}

/// A Sparkplug id (group, edge node, host): one topic level, UTF-8
/// without `/`, `+` or `#`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparkplugId(pub String);

impl SparkplugId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for SparkplugId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() || text.contains(['/', '+', '#', '\0']) {
            return Err(serde::de::Error::custom(format!(
                "invalid Sparkplug id `{text}`, expected a non-empty topic level without `/`, `+` or `#`"
            )));
        }
        Ok(SparkplugId(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_single_topic_levels() {
        let id: Result<SparkplugId, _> = serde_json::from_str(r#""plant/a""#);
        assert!(id.is_err());
        let id: SparkplugId = serde_json::from_str(r#""Plant A""#).unwrap();
        assert_eq!(id.as_str(), "Plant A");
        let q: Result<SparkplugQos, _> = serde_json::from_str("2");
        assert!(q.is_err());
    }
}
