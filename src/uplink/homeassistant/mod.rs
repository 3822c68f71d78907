//! Home Assistant MQTT discovery (the `homeassistant:` section): one
//! retained device-based discovery message per device,
//! `{prefix}/device/{gateway}_{device}/config`, and one for the gateway.
//!
//! Entities read the device's telemetry topic through a value template,
//! so that nothing is published twice: a reading that does not carry a
//! point (its deadband held it back, or it is in a batch without it)
//! renders empty, which Home Assistant ignores. Each entity is available
//! while its device is (`P/availability/{device}`) and the gateway is
//! (`P/status`). Writable points are controls whose command topic is
//! `P/set/{device}/{point}`; the downstream connection turns what arrives
//! there into a command on the normal path.

pub mod component;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::payload::Topics;
use crate::config::{Config, PointShape};

pub use component::template_for;

/// Points a device may learn from its readings (BLE measurements), at most.
const MAX_LEARNED: usize = 64;

/// What the uplink needs of the `homeassistant:` section.
#[derive(Debug, Clone)]
pub struct Settings {
    pub prefix: String,
    /// `{device}` and `{gateway}` are replaced.
    pub device_name: Option<String>,
    pub gateway_id: String,
    pub topics: Topics,
}

impl Settings {
    pub fn from_config(config: &Config) -> Option<Settings> {
        let ha = config.homeassistant.as_ref()?;
        Some(Settings {
            prefix: ha.prefix.clone(),
            device_name: ha.device_name.clone(),
            gateway_id: config.gateway.id.to_string(),
            topics: Topics::new(
                config.mqtt.topic_prefix.as_str(),
                config.gateway.id.as_str(),
            ),
        })
    }

    /// Where Home Assistant says it (re)started.
    pub fn status_topic(&self) -> String {
        format!("{}/status", self.prefix)
    }
}

/// One device as the configuration declares it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceModel {
    /// `modbus`, `ble`, ... (the model Home Assistant shows).
    pub kind: String,
    pub points: Vec<PointShape>,
}

/// Every device of the configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    pub devices: BTreeMap<String, DeviceModel>,
}

impl Model {
    pub fn of(config: &Config) -> Model {
        let devices = (config.devices.iter())
            .map(|d| {
                let model = DeviceModel {
                    kind: d.kind().to_owned(),
                    points: d.shapes(),
                };
                (d.name().to_string(), model)
            })
            .collect();
        Model { devices }
    }
}

/// A retained discovery message (an empty payload removes).
pub type Message = (String, String);

/// What was announced, kept across connections: what a new announcement
/// must take back.
#[derive(Debug)]
pub struct Discovery {
    settings: Settings,
    model: Model,
    /// Per device, points seen in readings that the model does not list.
    learned: BTreeMap<String, BTreeSet<String>>,
    /// Per device, the components (id → platform) last announced.
    announced: BTreeMap<String, BTreeMap<String, &'static str>>,
}

impl Discovery {
    pub fn new(settings: Settings, model: Model) -> Discovery {
        Discovery {
            settings,
            model,
            learned: BTreeMap::new(),
            announced: BTreeMap::new(),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A new configuration; the caller announces everything again.
    pub fn set_model(&mut self, model: Model) {
        self.learned.retain(|d, _| model.devices.contains_key(d));
        self.model = model;
    }

    /// The gateway's and every device's discovery message.
    pub fn all(&mut self) -> Vec<Message> {
        let mut out = vec![self.gateway()];
        let devices: Vec<String> = self.model.devices.keys().cloned().collect();
        out.extend(devices.iter().map(|d| self.device(d)));
        out
    }

    /// The empty retained message that removes a device.
    pub fn removed(&mut self, device: &str) -> Message {
        self.announced.remove(device);
        (self.config_topic(device), String::new())
    }

    /// Learns the points of a reading the configuration does not list (a
    /// BLE sensor's measurements); returns the device's new announcement
    /// when there were any.
    pub fn learn(&mut self, device: &str, values: &str) -> Option<Message> {
        let model = self.model.devices.get(device)?;
        // Only a decoder's points are not listed in the configuration.
        if model.kind != "ble" {
            return None;
        }
        let Ok(Value::Object(values)) = serde_json::from_str::<Value>(values) else {
            return None;
        };
        let known: BTreeSet<&str> = model.points.iter().map(|p| p.name.as_str()).collect();
        let learned = self.learned.entry(device.to_owned()).or_default();
        let mut new = false;
        for name in values.keys() {
            if !known.contains(name.as_str())
                && !learned.contains(name)
                && learned.len() < MAX_LEARNED
            {
                learned.insert(name.clone());
                new = true;
            }
        }
        new.then(|| self.device(device))
    }

    fn config_topic(&self, device: &str) -> String {
        let Settings {
            prefix, gateway_id, ..
        } = &self.settings;
        format!("{prefix}/device/{gateway_id}_{device}/config")
    }

    fn origin() -> Value {
        json!({
            "name": "fieldgate",
            "sw": crate::VERSION,
            "url": "https://github.com/fieldgate/fieldgate",
        })
    }

    /// A device's message: its points as components, with what earlier
    /// announcements had and this one has not cut to `{"p": …}` (which
    /// removes that entity).
    fn device(&mut self, device: &str) -> Message {
        let Settings {
            gateway_id, topics, ..
        } = &self.settings;
        let name = match &self.settings.device_name {
            Some(t) => t
                .replace("{device}", device)
                .replace("{gateway}", gateway_id),
            None => device.to_owned(),
        };
        let model = self.model.devices.get(device).cloned().unwrap_or_default();
        let mut points = model.points.clone();
        for learned in self.learned.get(device).into_iter().flatten() {
            points.push(component::learned(learned));
        }
        let context = component::Context {
            unique: format!("{gateway_id}_{device}"),
            state_topic: topics.telemetry(device),
            set_topic: |point: &str| topics.set(device, point),
        };
        let mut cmps = serde_json::Map::new();
        let mut now: BTreeMap<String, &'static str> = BTreeMap::new();
        for point in &points {
            for (id, platform, body) in component::of(point, &context) {
                now.insert(id.clone(), platform);
                cmps.insert(id, body);
            }
        }
        let before = self.announced.insert(device.to_owned(), now.clone());
        for (id, platform) in before.into_iter().flatten() {
            if !now.contains_key(&id) {
                cmps.insert(id, json!({ "p": platform }));
            }
        }
        let body = json!({
            "dev": {
                "ids": [format!("{gateway_id}_{device}")],
                "name": name,
                "mdl": model.kind,
                "mf": "fieldgate",
                "via_device": gateway_id,
            },
            "o": Self::origin(),
            "avty": [
                { "t": topics.availability(device) },
                { "t": topics.status(), "val_tpl": "{{ value_json.state }}" },
            ],
            "avty_mode": "all",
            "cmps": cmps,
        });
        (self.config_topic(device), body.to_string())
    }

    /// The gateway as a device: its queue, rate and uptime as diagnostic
    /// sensors, read from `P/status`.
    fn gateway(&self) -> Message {
        let Settings {
            prefix,
            gateway_id,
            topics,
            ..
        } = &self.settings;
        let sensor = |id: &str, name: &str, template: &str, extra: Value| {
            let mut body = json!({
                "p": "sensor",
                "unique_id": format!("{gateway_id}_{id}"),
                "name": name,
                "stat_t": topics.status(),
                "val_tpl": template,
                "ent_cat": "diagnostic",
            });
            if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
                body.extend(extra);
            }
            (id.to_owned(), body)
        };
        let cmps: serde_json::Map<String, Value> = [
            sensor(
                "queue_rows",
                "Queue rows",
                "{{ value_json.queue.rows }}",
                json!({"stat_cla": "measurement", "unit_of_meas": "rows"}),
            ),
            sensor(
                "readings_per_s",
                "Readings per second",
                "{{ value_json.rates.readings_per_s }}",
                json!({"stat_cla": "measurement", "unit_of_meas": "readings/s"}),
            ),
            sensor(
                "uptime",
                "Uptime",
                "{{ value_json.uptime_s }}",
                json!({"dev_cla": "duration", "unit_of_meas": "s", "stat_cla": "measurement"}),
            ),
        ]
        .into_iter()
        .collect();
        let body = json!({
            "dev": {
                "ids": [gateway_id],
                "name": format!("fieldgate {gateway_id}"),
                "mf": "fieldgate",
                "mdl": "gateway",
                "sw": crate::VERSION,
            },
            "o": Self::origin(),
            "avty": [{ "t": topics.status(), "val_tpl": "{{ value_json.state }}" }],
            "cmps": cmps,
        });
        (
            format!("{prefix}/device/{gateway_id}/config"),
            body.to_string(),
        )
    }
}

#[cfg(test)]
mod tests;
