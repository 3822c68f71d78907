//! The `homeassistant:` section: MQTT discovery, so that the gateway's
//! devices appear in Home Assistant by themselves.

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistantConfig {
    /// Home Assistant's discovery prefix.
    #[serde(default = "default_prefix", deserialize_with = "topic_levels")]
    pub prefix: String,
    /// How devices are named; `{device}` and `{gateway}` are replaced.
    /// The device's name when unset.
    #[serde(default)]
    pub device_name: Option<String>,
}

fn default_prefix() -> String {
    "homeassistant".into()
}

/// One or more topic levels without wildcards.
fn topic_levels<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    let bad =
        text.is_empty() || text.contains(['+', '#', '\0']) || text.split('/').any(str::is_empty);
    if bad {
        return Err(serde::de::Error::custom(format!(
            "invalid discovery prefix `{text}`, expected topic levels without `+`, `#` or empty levels"
        )));
    }
    Ok(text)
}
